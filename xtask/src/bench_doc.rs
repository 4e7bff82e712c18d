//! `cargo xtask bench-doc CPU.json [GPU.json]`: turns `lava-flow bench --json` files into the
//! tables and plots of docs/BENCHMARKS.md. The CLI renders them (`bench --from-json --markdown
//! --plots`); this copies each JSON to `docs/bench/<machine>.json`, writes the SVGs beside it and
//! replaces the text between the machine's markers in the document:
//! `<!-- bench-doc:cpu begin -->` ... `<!-- bench-doc:cpu end -->` (and `gpu`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run::{self, cargo};

const DOC: &str = "docs/BENCHMARKS.md";

pub fn bench_doc(args: &[String]) -> Result<(), String> {
    let inputs: Vec<(&str, PathBuf)> = ["cpu", "gpu"].into_iter().zip(args.iter().map(PathBuf::from)).collect();
    if inputs.is_empty() || args.len() > 2 {
        return Err(
            "usage: cargo xtask bench-doc CPU.json [GPU.json]  (files written by `lava-flow bench --json`)".into()
        );
    }
    let root = run::root();
    let status = cargo(&["build", "--package", "lava-flow-cli", "--bin", "lava-flow"])
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err("building lava-flow failed".into());
    }
    let bin = run::target_dir().join("debug").join("lava-flow");
    let doc_path = root.join(DOC);
    let mut doc = std::fs::read_to_string(&doc_path).map_err(|e| format!("reading {DOC}: {e}"))?;
    for (label, input) in inputs {
        let input = if input.is_absolute() { input } else { std::env::current_dir().unwrap_or_default().join(input) };
        let kept = root.join("docs/bench").join(format!("{label}.json"));
        let plots = root.join("docs/bench").join(label);
        std::fs::create_dir_all(&plots).map_err(|e| format!("creating {}: {e}", plots.display()))?;
        if !same_file(&input, &kept) {
            std::fs::copy(&input, &kept)
                .map_err(|e| format!("copying {} to {}: {e}", input.display(), kept.display()))?;
        }
        let out = Command::new(&bin)
            .arg("bench")
            .arg("--from-json")
            .arg(&kept)
            .arg("--markdown")
            .arg("--plots")
            .arg(&plots)
            .arg("--label")
            .arg(format!("{} machine", label.to_uppercase()))
            .output()
            .map_err(|e| format!("running {}: {e}", bin.display()))?;
        if !out.status.success() && out.stdout.is_empty() {
            return Err(format!(
                "lava-flow bench --from-json {}: {}",
                kept.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut section = String::from_utf8_lossy(&out.stdout).into_owned();
        section.push_str(&format!(
            "\nThe figures as plots, drawn by `lava-flow bench --from-json docs/bench/{label}.json --plots docs/bench/{label}`:\n\n\
             ![latency by size, {label}](bench/{label}/latency-by-size.svg)\n\n\
             ![bandwidth imported vs native, {label}](bench/{label}/bandwidth.svg)\n"
        ));
        doc = splice(&doc, label, &section)?;
        println!("bench-doc: {label}: {} -> {DOC}, docs/bench/{label}/*.svg", kept.display());
    }
    std::fs::write(&doc_path, doc).map_err(|e| format!("writing {DOC}: {e}"))?;
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Replaces what lies between the label's markers with `section`.
fn splice(doc: &str, label: &str, section: &str) -> Result<String, String> {
    let begin = format!("<!-- bench-doc:{label} begin -->");
    let end = format!("<!-- bench-doc:{label} end -->");
    let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) else {
        return Err(format!("{DOC} lacks the markers `{begin}` and `{end}`"));
    };
    if e < b {
        return Err(format!("{DOC}: `{end}` comes before `{begin}`"));
    }
    Ok(format!("{}{begin}\n{}\n{}", &doc[..b], section.trim_end(), &doc[e..]))
}

#[cfg(test)]
mod tests {
    use super::splice;

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let doc = "a\n<!-- bench-doc:cpu begin -->\nold\n<!-- bench-doc:cpu end -->\nb\n";
        let out = splice(doc, "cpu", "new\n").unwrap();
        assert_eq!(out, "a\n<!-- bench-doc:cpu begin -->\nnew\n<!-- bench-doc:cpu end -->\nb\n");
        assert!(splice(doc, "gpu", "x").is_err());
    }
}
