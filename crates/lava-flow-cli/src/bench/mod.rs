//! `lava-flow bench`: each case measured through lava-flow and through the raw API calls it stands
//! on, in the same run on the same device, with their ratio.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lava_flow::VulkanContext;
use serde::{Deserialize, Serialize};

use crate::table::Table;
use crate::CmdResult;

mod vulkan;

#[derive(clap::Args)]
pub struct Args {
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Fewer sizes and iterations: a smoke run, not figures to publish.
    #[arg(long)]
    quick: bool,
    /// Also draw the figures as SVG into this directory (latency by size, bandwidth imported vs
    /// native).
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Measure nothing: show (and plot) the results of an earlier `--json` run instead.
    #[arg(long, value_name = "PATH")]
    from_json: Option<PathBuf>,
    /// Print the results as markdown tables, one per group, each with the command that
    /// reproduces it (docs/BENCHMARKS.md is made of these).
    #[arg(long)]
    markdown: bool,
    /// Name the machine in the plots' titles (beside its device, where the run recorded it),
    /// for example "GPU machine".
    #[arg(long, value_name = "TEXT")]
    label: Option<String>,
    /// Run only these groups: vulkan, pool, cuda, opencl, gl (repeat to name several).
    #[arg(long, value_name = "GROUP", value_parser = clap::builder::PossibleValuesParser::new(GROUPS))]
    only: Vec<String>,
}

/// The groups, in the order they run.
pub const GROUPS: [&str; 5] = ["vulkan", "pool", "cuda", "opencl", "gl"];

pub use lava_flow_diag::bench::Row;

/// A group that did not run, and why.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Skipped {
    pub group: String,
    pub reason: String,
    /// True when it started and failed (exit code 1), false when the machine cannot run it.
    pub failed: bool,
}

/// What the bench groups add to.
#[derive(Default)]
pub struct Bench {
    pub quick: bool,
    pub rows: Vec<Row>,
    pub skipped: Vec<Skipped>,
}

impl Bench {
    /// Records a group's error: "cannot run here" is a skip, anything else a failure.
    pub fn group_error(&mut self, group: &'static str, e: lava_flow::Error) {
        let failed = !e.is_unavailable();
        self.skipped.push(Skipped { group: group.into(), reason: e.to_string(), failed });
    }

    #[cfg_attr(all(feature = "cuda", feature = "gl", feature = "opencl"), allow(dead_code))]
    pub fn skip(&mut self, group: &'static str, reason: impl Into<String>) {
        self.skipped.push(Skipped { group: group.into(), reason: reason.into(), failed: false });
    }
}

/// Microseconds, the unit of the latency rows.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Where the figures were measured, for the published tables.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Machine {
    /// The Vulkan device the groups ran on.
    #[serde(default)]
    pub vulkan_device: Option<String>,
    /// Its type and driver ("discrete GPU, NVIDIA").
    #[serde(default)]
    pub vulkan_driver: Option<String>,
    /// The CPU model (from /proc/cpuinfo) and how many CPUs this process may use.
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub cpus: usize,
    /// "release" or "debug": only release figures are worth quoting.
    #[serde(default)]
    pub profile: String,
}

impl Machine {
    fn here() -> Machine {
        let ctx = VulkanContext::new().ok();
        let vulkan_device = ctx.as_ref().map(|c| c.info().name.clone());
        let vulkan_driver = ctx.as_ref().map(|c| format!("{}, driver {}", c.info().device_type, c.info().driver_name));
        let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        Machine {
            vulkan_device,
            vulkan_driver,
            cpu,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            profile: if cfg!(debug_assertions) { "debug" } else { "release" }.into(),
        }
    }
}

/// What `--json` writes and `--from-json` reads.
#[derive(Serialize, Deserialize)]
pub struct Report {
    pub lava_flow_version: String,
    pub quick: bool,
    /// Absent in files written before it was recorded.
    #[serde(default)]
    pub machine: Option<Machine>,
    pub rows: Vec<Row>,
    pub skipped: Vec<Skipped>,
}

pub fn run(args: &Args) -> CmdResult {
    let report = match &args.from_json {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            serde_json::from_str::<Report>(&text)
                .map_err(|e| format!("{} is not `bench --json` output: {e}", path.display()))?
        }
        None => measure(args),
    };
    let bench = Bench { quick: report.quick, rows: report.rows.clone(), skipped: report.skipped.clone() };
    if args.markdown {
        crate::emit(&markdown(&report))?;
    } else {
        crate::emit(&render(&bench))?;
    }
    if let Some(path) = args.json.as_ref().filter(|_| args.from_json.is_none()) {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(dir) = &args.plots {
        let device = report.machine.as_ref().and_then(|m| m.vulkan_device.as_deref()).map(short_device);
        let title = match (&args.label, device) {
            (Some(label), Some(device)) => format!("{label} ({device})"),
            (Some(label), None) => label.clone(),
            (None, Some(device)) => device,
            (None, None) => "this machine".into(),
        };
        for path in crate::plot::write_plots(&report.rows, dir, &title)? {
            eprintln!("bench: wrote {}", path.display());
        }
    }
    Ok(if bench.skipped.iter().any(|s| s.failed) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The device name without the driver details in parentheses, for plot titles.
fn short_device(name: &str) -> String {
    name.split(" (").next().unwrap_or(name).to_string()
}

/// Measures one group into the bench.
type GroupFn = fn(&mut Bench);

/// Runs the groups `args` asks for.
fn measure(args: &Args) -> Report {
    let mut bench = Bench { quick: args.quick, ..Bench::default() };
    let wanted = |g: &str| args.only.is_empty() || args.only.iter().any(|o| o == g);
    let groups: [(&str, GroupFn); 5] =
        [("vulkan", vulkan_rows), ("pool", pool_rows), ("cuda", cuda_rows), ("opencl", opencl_rows), ("gl", gl_rows)];
    for (name, group) in groups {
        if wanted(name) {
            group(&mut bench);
        }
    }
    Report {
        lava_flow_version: env!("CARGO_PKG_VERSION").into(),
        quick: bench.quick,
        machine: Some(Machine::here()),
        rows: bench.rows,
        skipped: bench.skipped,
    }
}

/// Markdown: a line on the machine, then per group a table and the command that reproduces it.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    if let Some(m) = &report.machine {
        let device = match (&m.vulkan_device, &m.vulkan_driver) {
            (Some(d), Some(driver)) => format!("{d} ({driver})"),
            (Some(d), None) => d.clone(),
            _ => "no Vulkan device".into(),
        };
        let cpu = m.cpu.as_deref().unwrap_or("unknown CPU");
        out.push_str(&format!(
            "Measured on {device}; {cpu}, {} CPUs available; lava-flow {} ({} build{}).\n\n",
            m.cpus,
            report.lava_flow_version,
            m.profile,
            if report.quick { ", `--quick`" } else { "" }
        ));
    }
    out.push_str("ratio = lava-flow / raw; latency: lower is better, bandwidth: higher is better; medians.\n");
    for group in GROUPS {
        let rows: Vec<&Row> = report.rows.iter().filter(|r| r.group == group).collect();
        let skipped: Vec<&Skipped> = report.skipped.iter().filter(|s| s.group == group).collect();
        if rows.is_empty() && skipped.is_empty() {
            continue;
        }
        out.push_str(&format!("\n#### {group}\n\n"));
        if !rows.is_empty() {
            out.push_str("| case | lava-flow | raw API | unit | ratio | iterations |\n|---|--:|--:|---|--:|--:|\n");
            for r in &rows {
                let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), figure);
                let ratio = match (&r.error, r.ratio) {
                    (Some(e), _) => format!("not measured: {}", e.replace('|', "/")),
                    (None, Some(x)) => format!("{x:.2}"),
                    (None, None) => "-".into(),
                };
                let iterations = if r.iterations == 0 { "-".to_string() } else { r.iterations.to_string() };
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {ratio} | {iterations} |\n",
                    r.case.replace('|', "/"),
                    cell(r.lava_flow),
                    cell(r.raw),
                    r.unit
                ));
            }
        }
        for (i, s) in skipped.iter().enumerate() {
            let verb = if s.failed { "Failed" } else { "Not run on this machine" };
            let gap = if rows.is_empty() && i == 0 { "" } else { "\n" };
            out.push_str(&format!("{gap}{verb}: {}\n", s.reason));
        }
        out.push_str(&format!(
            "\nReproduce: `lava-flow bench --only {group}{}` (release build)\n",
            if report.quick { " --quick" } else { "" }
        ));
    }
    out
}

/// Pooled allocate + export against an allocation of its own, and a cached import against a
/// fresh one, each beside the raw Vulkan calls (`lava_flow_diag::bench::pool`).
fn pool_rows(bench: &mut Bench) {
    let rows = VulkanContext::new()
        .and_then(|a| VulkanContext::with_uuid(a.identity().device_uuid).map(|b| (a, b)))
        .and_then(|(a, b)| lava_flow_diag::bench::pool::run(&a, &b, bench.quick));
    match rows {
        Ok(rows) => bench.rows.extend(rows),
        Err(e) => bench.group_error("pool", e),
    }
}

/// Bandwidth on imported memory against cuMemAlloc memory, export + import + map latency by size,
/// the timeline semaphore round trip and what sharing saves over copies (`lava_flow_diag::bench::cuda`).
#[cfg(feature = "cuda")]
fn cuda_rows(bench: &mut Bench) {
    use lava_flow_diag::bench::cuda::{run, BenchConfig};
    let config = if bench.quick { BenchConfig::quick() } else { BenchConfig::default() };
    match run(&config) {
        Ok(rows) => bench.rows.extend(rows),
        Err(e) => bench.group_error("cuda", e),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_rows(bench: &mut Bench) {
    bench.skip("cuda", "built without the `cuda` feature");
}

/// Buffer sizes and iterations of the GL and OpenCL import-latency rows.
#[cfg(any(feature = "gl", feature = "opencl"))]
fn import_sizes(quick: bool) -> (&'static [u64], usize) {
    if quick {
        (&[64 << 10, 1 << 20], 20)
    } else {
        (&[64 << 10, 1 << 20, 16 << 20, 256 << 20], 100)
    }
}

/// GL import latency (buffers by size, a texture) against the raw GL_EXT_memory_object calls
/// (`lava_flow_diag::bench::gl`).
#[cfg(feature = "gl")]
fn gl_rows(bench: &mut Bench) {
    let (sizes, iterations) = import_sizes(bench.quick);
    let rows = VulkanContext::new().and_then(|vk| lava_flow_diag::bench::gl::import_latency(&vk, sizes, iterations));
    match rows {
        Ok(rows) => bench.rows.extend(rows),
        Err(e) => bench.group_error("gl", e),
    }
}

#[cfg(not(feature = "gl"))]
fn gl_rows(bench: &mut Bench) {
    bench.skip("gl", "built without the `gl` feature");
}

/// OpenCL import latency against the bare clCreateBufferWithProperties, and copy bandwidth on
/// imported memory against clCreateBuffer memory (`lava_flow_diag::bench::opencl`).
#[cfg(feature = "opencl")]
fn opencl_rows(bench: &mut Bench) {
    use lava_flow_diag::bench::opencl::{copy_bandwidth, import_latency};
    let (sizes, iterations) = import_sizes(bench.quick);
    let (bandwidth_bytes, bandwidth_iterations) = if bench.quick { (64 << 20, 5) } else { (1 << 30, 20) };
    let rows = VulkanContext::new().and_then(|vk| {
        let mut rows = import_latency(&vk, sizes, iterations)?;
        rows.extend(copy_bandwidth(&vk, bandwidth_bytes, bandwidth_iterations)?);
        Ok(rows)
    });
    match rows {
        Ok(rows) => bench.rows.extend(rows),
        Err(e) => bench.group_error("opencl", e),
    }
}

#[cfg(not(feature = "opencl"))]
fn opencl_rows(bench: &mut Bench) {
    bench.skip("opencl", "built without the `opencl` feature");
}

fn vulkan_rows(bench: &mut Bench) {
    if let Err(e) = vulkan::rows(bench) {
        bench.group_error("vulkan", e);
    }
}

fn figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table: one row per case, then the groups that did not run.
pub fn render(bench: &Bench) -> String {
    let mut t = Table::new(&["case", ">lava-flow", ">raw", "unit", ">ratio"]);
    for r in &bench.rows {
        let ratio = match r.ratio {
            Some(x) => format!("{x:.2}"),
            None => "-".into(),
        };
        let mut cells = vec![
            format!("{}: {}", r.group, r.case),
            r.lava_flow.map_or_else(|| "-".into(), figure),
            r.raw.map_or_else(|| "-".into(), figure),
            r.unit.to_string(),
            ratio,
        ];
        if let Some(e) = &r.error {
            cells.push(format!("not measured: {e}"));
        }
        t.row(cells);
    }
    let mut out = t.render(0);
    out.push_str("\nratio = lava-flow / raw (latency: lower is better, bandwidth: higher is better); medians\n");
    for s in &bench.skipped {
        let verb = if s.failed { "FAILED" } else { "skipped" };
        out.push_str(&format!("{}: {verb}: {}\n", s.group, s.reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lava_flow_diag::bench::Better;

    #[test]
    fn rows_show_ratio_and_cases_not_measured_say_why() {
        let bench = Bench {
            quick: true,
            rows: vec![
                Row::new("vulkan", "export 64 KiB buffer", 3.0, Some(2.0), "us").iterations(10),
                Row::new("cuda", "copy-bandwidth/kernel/1GiB", 3800.0, Some(3850.0), "GB/s"),
                Row::not_measured("cuda", "export-import-map/4GiB", "us", "too big for free memory".into()),
            ],
            skipped: vec![Skipped { group: "gl".into(), reason: "no libEGL".into(), failed: false }],
        };
        assert_eq!(bench.rows[0].ratio, Some(1.5));
        assert_eq!(bench.rows[0].better, Better::Lower);
        assert_eq!(bench.rows[1].better, Better::Higher);
        let text = render(&bench);
        assert!(text.lines().any(|l| l.starts_with("vulkan: export 64 KiB buffer") && l.ends_with("1.50")), "{text}");
        assert!(text.contains("not measured: too big for free memory"), "{text}");
        assert!(text.contains("gl: skipped: no libEGL"), "{text}");
        let json = serde_json::to_value(&bench.rows[2]).unwrap();
        assert!(json["lava_flow"].is_null() && json["raw"].is_null(), "{json}");
    }

    #[test]
    fn markdown_has_a_table_and_a_command_per_group_and_reads_back_from_json() {
        let report = Report {
            lava_flow_version: "0.1.0".into(),
            quick: false,
            machine: Some(Machine {
                vulkan_device: Some("llvmpipe (LLVM 15.0.6, 256 bits)".into()),
                vulkan_driver: Some("CPU, driver llvmpipe".into()),
                cpu: Some("Some CPU".into()),
                cpus: 2,
                profile: "release".into(),
            }),
            rows: vec![Row::new("vulkan", "export 64 KiB buffer", 0.2, Some(0.1), "us").iterations(200)],
            skipped: vec![Skipped { group: "cuda".into(), reason: "no libcuda".into(), failed: false }],
        };
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        let text = markdown(&back);
        assert!(text.contains("llvmpipe (LLVM 15.0.6, 256 bits) (CPU, driver llvmpipe)"), "{text}");
        assert!(text.contains("| export 64 KiB buffer | 0.20 | 0.10 | us | 2.00 | 200 |"), "{text}");
        assert!(text.contains("#### cuda\n\nNot run on this machine: no libcuda\n"), "{text}");
        assert!(text.contains("Reproduce: `lava-flow bench --only vulkan` (release build)"), "{text}");
        // Files written before `machine` was recorded still load.
        let old = r#"{"lava_flow_version":"0.1.0","quick":true,"rows":[],"skipped":[]}"#;
        assert!(serde_json::from_str::<Report>(old).unwrap().machine.is_none());
    }
}
