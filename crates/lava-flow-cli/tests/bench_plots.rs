//! `lava-flow bench --plots` and `--from-json --markdown`: the SVG figures and the markdown tables
//! of docs/BENCHMARKS.md come from a real (quick) run and render again from its JSON alone.

use std::path::PathBuf;
use std::process::{Command, Output};

fn lava_flow(args: &[&str]) -> Output {
    let bin = std::env::var_os("LAVA_FLOW_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lava-flow").into());
    let out = Command::new(bin).args(args).output().expect("run lava-flow");
    assert!(
        out.status.success(),
        "lava-flow {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lava-flow-bench-plots-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn quick_bench_draws_svg_plots_and_renders_markdown_from_its_json() {
    let Some(_ctx) = lava_flow_diag::testing::or_skip("vulkan", lava_flow::VulkanContext::new()) else { return };
    let dir = scratch("run");
    let json = dir.join("bench.json");
    let plots = dir.join("plots");
    lava_flow(&[
        "bench",
        "--quick",
        "--only",
        "vulkan",
        "--json",
        json.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]);
    let latency = std::fs::read_to_string(plots.join("latency-by-size.svg")).expect("the latency plot");
    assert!(latency.starts_with("<svg") && latency.contains("vulkan: import buffer on a 2nd device (raw API)"));
    let bandwidth = std::fs::read_to_string(plots.join("bandwidth.svg")).expect("the bandwidth plot");
    assert!(bandwidth.contains("GB/s (lava-flow, imported)") && bandwidth.contains("GB/s (raw API, native)"));

    // The same figures again from the JSON alone, as `cargo xtask bench-doc` does.
    let again = dir.join("again");
    let out =
        lava_flow(&["bench", "--from-json", json.to_str().unwrap(), "--markdown", "--plots", again.to_str().unwrap()]);
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(
        md.contains("#### vulkan") && md.contains("| case | lava-flow | raw API | unit | ratio | iterations |"),
        "{md}"
    );
    assert!(md.contains("Reproduce: `lava-flow bench --only vulkan --quick`"), "{md}");
    assert!(!md.contains("#### gl"), "only the vulkan group ran: {md}");
    assert_eq!(std::fs::read_to_string(again.join("latency-by-size.svg")).unwrap(), latency);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_groups_and_unreadable_json_are_refused() {
    let bin = std::env::var_os("LAVA_FLOW_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lava-flow").into());
    let out = Command::new(&bin).args(["bench", "--only", "metal"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad command line");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'metal'") && err.contains("possible values: vulkan, pool, cuda, opencl, gl"), "{err}");
    let dir = scratch("bad");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"rows\": 3}").unwrap();
    let out = Command::new(&bin).args(["bench", "--from-json", bad.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not `bench --json` output"));
    std::fs::remove_dir_all(&dir).ok();
}
