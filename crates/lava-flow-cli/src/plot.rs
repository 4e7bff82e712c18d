//! The benchmark figures as SVG (`lava-flow bench --plots DIR`): latency by size, lava-flow beside
//! the raw API for each case measured at several sizes, and bandwidth on imported memory beside
//! native memory. Drawn with plotters' SVG backend: no fonts or image libraries are needed.

use std::path::{Path, PathBuf};

use plotters::element::DashedPathElement;
use plotters::prelude::*;

use lava_flow_diag::bench::Row;

/// File name of the latency plot.
pub const LATENCY: &str = "latency-by-size.svg";
/// File name of the bandwidth plot.
pub const BANDWIDTH: &str = "bandwidth.svg";

/// Units of a size written in a case name, longest first so "KiB" is not read as "B".
const UNITS: [(&str, u64); 6] =
    [("bytes", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40), ("B", 1)];

/// Finds a size in a case name ("export 64 KiB buffer", "GL buffer import, 65536 bytes",
/// "export-import-map/64KiB") and returns it with the name that is left without it ("export
/// buffer", "GL buffer import", "export-import-map").
pub fn size_in_case(case: &str) -> Option<(u64, String)> {
    let bytes = case.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if !(bytes[i].is_ascii_digit() && starts_word) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number: f64 = case[start..i].parse().ok()?;
        let unit_at = if bytes.get(i) == Some(&b' ') { i + 1 } else { i };
        for (unit, scale) in UNITS {
            let end = unit_at + unit.len();
            let ends_word = bytes.get(end).is_none_or(|b| !b.is_ascii_alphanumeric());
            if case.get(unit_at..end) == Some(unit) && ends_word {
                let rest = format!("{}{}", &case[..start], &case[end..]);
                return Some(((number * scale as f64).round() as u64, tidy(&rest)));
            }
        }
    }
    None
}

/// Collapses what removing a size leaves behind: double spaces, " :", "//", ", " at the end.
fn tidy(s: &str) -> String {
    let mut out = s.split_whitespace().collect::<Vec<_>>().join(" ");
    for (from, to) in [(" :", ":"), ("//", "/"), (" ,", ","), (", :", ":")] {
        out = out.replace(from, to);
    }
    out.trim_matches(|c: char| c == ' ' || c == ',' || c == '/' || c == ':').to_string()
}

/// One curve of the latency plot: a case measured at several sizes.
#[derive(Debug, PartialEq)]
pub struct Series {
    /// "group: case without its size".
    pub name: String,
    /// (size, lava-flow, raw) in microseconds, by size.
    pub points: Vec<(u64, f64, Option<f64>)>,
}

/// The latency rows (unit "us") whose case names a size, grouped into curves of two or more sizes.
pub fn latency_series(rows: &[Row]) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for r in rows.iter().filter(|r| r.unit == "us") {
        let (Some(value), Some((size, name))) = (r.lava_flow, size_in_case(&r.case)) else { continue };
        let name = format!("{}: {name}", r.group);
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push((size, value, r.raw)),
            None => series.push(Series { name, points: vec![(size, value, r.raw)] }),
        }
    }
    series.retain(|s| s.points.len() >= 2);
    for s in &mut series {
        s.points.sort_by_key(|p| p.0);
    }
    series
}

/// The bandwidth rows (units ending in "/s") that were measured.
pub fn bandwidth_rows(rows: &[Row]) -> Vec<&Row> {
    rows.iter().filter(|r| r.unit.ends_with("/s") && r.lava_flow.is_some()).collect()
}

fn size_label(bytes: u64) -> String {
    crate::table::bytes(bytes)
}

fn plot_error(what: &str, e: impl std::fmt::Display) -> String {
    format!("drawing the {what} plot: {e}")
}

/// Draws the latency plot: one colour per case, lava-flow solid with dots, the raw API dashed.
pub fn latency_svg(series: &[Series], title: &str) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error("latency", e))?;
        let all = || series.iter().flat_map(|s| s.points.iter());
        let (min_x, max_x) = all().fold((u64::MAX, 0), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
        let values = || all().flat_map(|p| std::iter::once(p.1).chain(p.2)).filter(|v| *v > 0.0);
        let (min_y, max_y) = values().fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if series.is_empty() || min_y > max_y {
            root.draw(&Text::new("no latency measured at several sizes", (40, 300), ("sans-serif", 20)))
                .map_err(|e| plot_error("latency", e))?;
        } else {
            // Sizes go along log2(bytes), so the ticks fall on powers of two ("64 KiB", "1 MiB").
            let x_range = ((min_x as f64).log2() - 0.5)..((max_x as f64).log2() + 0.5);
            // Room above the curves for the legend.
            let y_range = (min_y / 1.6)..(max_y * 12.0);
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(16)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(x_range, y_range.log_scale())
                .map_err(|e| plot_error("latency", e))?;
            let x_fmt = |v: &f64| {
                if (v - v.round()).abs() < 1e-6 && (0.0..63.0).contains(v) {
                    size_label(1u64 << v.round() as u32)
                } else {
                    String::new()
                }
            };
            let y_fmt = |v: &f64| if *v >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") };
            chart
                .configure_mesh()
                .x_desc("size (log scale)")
                .x_labels(16)
                .y_desc("latency (us, median)")
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&y_fmt)
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(|e| plot_error("latency", e))?;
            for (i, s) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let ours: Vec<(f64, f64)> = s.points.iter().map(|p| ((p.0 as f64).log2(), p.1)).collect();
                chart
                    .draw_series(LineSeries::new(ours.clone(), color.stroke_width(2)))
                    .map_err(|e| plot_error("latency", e))?
                    .label(format!("{} (lava-flow)", s.name))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
                chart
                    .draw_series(ours.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| plot_error("latency", e))?;
                let raw: Vec<(f64, f64)> =
                    s.points.iter().filter_map(|p| p.2.map(|r| ((p.0 as f64).log2(), r))).collect();
                if !raw.is_empty() {
                    chart
                        .draw_series(DashedLineSeries::new(raw, 6, 4, color.stroke_width(1)))
                        .map_err(|e| plot_error("latency", e))?
                        .label(format!("{} (raw API)", s.name))
                        .legend(move |(x, y)| {
                            DashedPathElement::new([(x, y), (x + 20, y)], 6, 4, color.stroke_width(1))
                        });
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(|e| plot_error("latency", e))?;
        }
        root.present().map_err(|e| plot_error("latency", e))?;
    }
    Ok(svg)
}

/// Draws the bandwidth plot: per case, a bar for lava-flow (imported memory) and one for the raw
/// API (native memory), with their figures.
pub fn bandwidth_svg(rows: &[&Row], title: &str) -> Result<String, String> {
    let mut svg = String::new();
    {
        let height = 140 + 70 * rows.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error("bandwidth", e))?;
        let max = rows.iter().flat_map(|r| r.lava_flow.into_iter().chain(r.raw)).fold(0.0f64, f64::max);
        if rows.is_empty() || max <= 0.0 {
            root.draw(&Text::new("no bandwidth measured", (40, 80), ("sans-serif", 20)))
                .map_err(|e| plot_error("bandwidth", e))?;
        } else {
            let n = rows.len() as f64;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(16)
                .x_label_area_size(40)
                .y_label_area_size(10)
                .build_cartesian_2d(0.0..max * 1.3, 0.0..n)
                .map_err(|e| plot_error("bandwidth", e))?;
            let unit = rows[0].unit.clone();
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(0)
                .x_desc(format!("{unit} (median; higher is better)"))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(|e| plot_error("bandwidth", e))?;
            let ours = RGBColor(214, 96, 32);
            let raw = RGBColor(120, 120, 120);
            for (i, r) in rows.iter().enumerate() {
                // Row i from the top: its label, then lava-flow's bar, then the raw API's.
                let top = n - i as f64;
                let label = format!("{}: {}", r.group, r.case);
                let text = |s: String, x: f64, y: f64| Text::new(s, (x, y), ("sans-serif", 13));
                chart.draw_series([text(label, 0.0, top - 0.04)]).map_err(|e| plot_error("bandwidth", e))?;
                let bars = [(r.lava_flow, ours, "lava-flow, imported", 0.30), (r.raw, raw, "raw API, native", 0.62)];
                for (value, color, what, y) in bars {
                    let Some(v) = value else { continue };
                    let (y0, y1) = (top - y - 0.28, top - y);
                    chart
                        .draw_series([Rectangle::new([(0.0, y0), (v, y1)], color.filled())])
                        .map_err(|e| plot_error("bandwidth", e))?;
                    chart
                        .draw_series([text(format!("{v:.2} {unit} ({what})"), v + max * 0.01, y1 - 0.04)])
                        .map_err(|e| plot_error("bandwidth", e))?;
                }
            }
        }
        root.present().map_err(|e| plot_error("bandwidth", e))?;
    }
    Ok(svg)
}

/// Writes the plots of `rows` into `dir` (created if missing) and returns the files written.
pub fn write_plots(rows: &[Row], dir: &Path, title: &str) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let latency = latency_svg(&latency_series(rows), &format!("Latency by size: lava-flow vs raw API, {title}"))?;
    let bandwidth = bandwidth_svg(&bandwidth_rows(rows), &format!("Bandwidth: imported vs native memory, {title}"))?;
    let mut written = Vec::new();
    for (name, svg) in [(LATENCY, latency), (BANDWIDTH, bandwidth)] {
        let path = dir.join(name);
        std::fs::write(&path, svg).map_err(|e| format!("writing {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_found_in_every_case_style() {
        assert_eq!(size_in_case("export 64 KiB buffer"), Some((64 << 10, "export buffer".into())));
        assert_eq!(
            size_in_case("import 256 MiB buffer on a 2nd device"),
            Some((256 << 20, "import buffer on a 2nd device".into()))
        );
        assert_eq!(size_in_case("GL buffer import, 65536 bytes"), Some((65536, "GL buffer import".into())));
        assert_eq!(size_in_case("export-import-map/4GiB"), Some((4 << 30, "export-import-map".into())));
        assert_eq!(
            size_in_case("copy bandwidth 16 MiB: imported vs native memory"),
            Some((16 << 20, "copy bandwidth: imported vs native memory".into()))
        );
        assert_eq!(size_in_case("semaphore-round-trip/timeline"), None);
        assert_eq!(size_in_case("GL texture import, RGBA8 1024x1024 optimal"), None);
    }

    fn row(group: &str, case: &str, lf: f64, raw: f64, unit: &str) -> Row {
        let mut r = Row::new("vulkan", case, lf, Some(raw), "us");
        r.group = group.into();
        r.unit = unit.into();
        r
    }

    #[test]
    fn latency_curves_need_two_sizes_and_plots_are_svg() {
        let rows = vec![
            row("vulkan", "export 64 KiB buffer", 0.2, 0.16, "us"),
            row("vulkan", "export 1 MiB buffer", 0.21, 0.16, "us"),
            row("gl", "GL texture import, RGBA8 1024x1024 optimal", 10.7, 5.0, "us"),
            row("cuda", "export-import-map/64KiB", 40.0, 38.0, "us"),
            row("vulkan", "copy bandwidth 16 MiB: imported vs native memory", 9.5, 9.9, "GB/s"),
        ];
        let series = latency_series(&rows);
        assert_eq!(series.len(), 1, "{series:?}");
        assert_eq!(series[0].name, "vulkan: export buffer");
        assert_eq!(series[0].points, vec![(64 << 10, 0.2, Some(0.16)), (1 << 20, 0.21, Some(0.16))]);
        let svg = latency_svg(&series, "test").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("vulkan: export buffer (raw API)"), "{svg}");
        let bw = bandwidth_rows(&rows);
        assert_eq!(bw.len(), 1);
        let svg = bandwidth_svg(&bw, "test").unwrap();
        assert!(
            svg.contains("9.50 GB/s (lava-flow, imported)") && svg.contains("9.90 GB/s (raw API, native)"),
            "{svg}"
        );
        let empty = bandwidth_svg(&[], "none").unwrap();
        assert!(empty.contains("no bandwidth measured"));
        assert!(latency_svg(&[], "none").unwrap().contains("no latency measured"));
    }
}
