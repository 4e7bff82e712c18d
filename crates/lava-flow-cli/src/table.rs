//! Plain-text tables: a header, a rule, rows; columns as wide as their widest cell.

use std::fmt::Write;

/// A table being built.
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles; a title starting with `>` is right-aligned (numbers).
    pub fn new(header: &[&str]) -> Table {
        Table {
            right: header.iter().map(|h| h.starts_with('>')).collect(),
            header: header.iter().map(|h| h.trim_start_matches('>').to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are kept (the last column may be long).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Renders the table, each line indented by `indent` spaces.
    pub fn render(&self, indent: usize) -> String {
        let columns = self.rows.iter().map(Vec::len).chain([self.header.len()]).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let pad = " ".repeat(indent);
        let line = |out: &mut String, row: &[String]| {
            let mut text = pad.clone();
            for (i, cell) in row.iter().enumerate() {
                let last = i + 1 == row.len();
                let w = widths[i];
                if self.right.get(i).copied().unwrap_or(false) {
                    let _ = write!(text, "{cell:>w$}");
                } else if last {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell:<w$}");
                }
                if !last {
                    text.push_str("  ");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, &self.header);
        let rule: Vec<String> = widths.iter().take(self.header.len()).map(|w| "-".repeat(*w)).collect();
        line(&mut out, &rule);
        for row in &self.rows {
            line(&mut out, row);
        }
        out
    }
}

/// A byte count in the largest binary unit that divides it evenly ("64 KiB", "1 MiB", "1000 B").
pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1)];
    for (name, unit) in UNITS {
        if n >= unit && n % unit == 0 {
            return format!("{} {name}", n / unit);
        }
    }
    format!("{n} B")
}

/// A duration in a unit that keeps three significant figures.
pub fn duration(d: std::time::Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} us")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let mut t = Table::new(&["name", ">size", "result"]);
        t.row(["a", "1", "PASS"]);
        t.row(["longer", "1000", "skipped: no driver"]);
        let text = t.render(0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "name    size  result");
        assert_eq!(lines[1], "------  ----  ------------------");
        assert_eq!(lines[2], "a          1  PASS");
        assert_eq!(lines[3], "longer  1000  skipped: no driver");
    }

    #[test]
    fn byte_counts_use_exact_units() {
        assert_eq!(bytes(64 << 10), "64 KiB");
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes(3 << 19), "1536 KiB");
    }
}
