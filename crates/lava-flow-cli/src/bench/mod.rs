//! `lava-flow bench`: each case measured through lava-flow and through the raw API calls it stands
//! on, in the same run on the same device, with their ratio.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lava_flow::VulkanContext;
use serde::Serialize;

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
}

/// Whether a bigger figure is better (bandwidth) or a smaller one (latency).
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// One measured case.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    /// "vulkan", "cuda", "pool", "gl", "opencl".
    pub group: &'static str,
    pub case: String,
    /// lava-flow's figure (median); absent when the case could not be measured.
    pub lava_flow: Option<f64>,
    /// The raw API's figure for the same work, where there is one.
    pub raw: Option<f64>,
    pub unit: &'static str,
    /// lava_flow / raw.
    pub ratio: Option<f64>,
    pub better: Better,
    /// Iterations behind each median (0 where the source does not say).
    pub iterations: u32,
    /// Why the case could not be measured (the figures are then absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Row {
    pub fn new(
        group: &'static str,
        case: impl Into<String>,
        lava_flow: f64,
        raw: Option<f64>,
        unit: &'static str,
    ) -> Row {
        Row {
            group,
            case: case.into(),
            lava_flow: Some(lava_flow),
            raw,
            unit,
            ratio: raw.filter(|r| *r > 0.0).map(|r| lava_flow / r),
            better: if unit.ends_with("/s") { Better::Higher } else { Better::Lower },
            iterations: 0,
            error: None,
        }
    }

    /// A case that could not be measured, and why.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn not_measured(group: &'static str, case: impl Into<String>, unit: &'static str, error: String) -> Row {
        Row { lava_flow: None, error: Some(error), ..Row::new(group, case, 0.0, None, unit) }
    }

    pub fn iterations(mut self, n: u32) -> Row {
        self.iterations = n;
        self
    }
}

/// A group that did not run, and why.
#[derive(Serialize, Clone, Debug)]
pub struct Skipped {
    pub group: &'static str,
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
        self.skipped.push(Skipped { group, reason: e.to_string(), failed });
    }

    #[cfg_attr(all(feature = "cuda", feature = "gl", feature = "opencl"), allow(dead_code))]
    pub fn skip(&mut self, group: &'static str, reason: impl Into<String>) {
        self.skipped.push(Skipped { group, reason: reason.into(), failed: false });
    }
}

/// Microseconds, the unit of the latency rows.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn run(args: &Args) -> CmdResult {
    let mut bench = Bench { quick: args.quick, ..Bench::default() };
    vulkan_rows(&mut bench);
    pool_rows(&mut bench);
    cuda_rows(&mut bench);
    opencl_rows(&mut bench);
    gl_rows(&mut bench);

    crate::emit(&render(&bench))?;
    if let Some(path) = &args.json {
        #[derive(Serialize)]
        struct Json<'a> {
            lava_flow_version: &'static str,
            quick: bool,
            rows: &'a [Row],
            skipped: &'a [Skipped],
        }
        let json = Json {
            lava_flow_version: env!("CARGO_PKG_VERSION"),
            quick: bench.quick,
            rows: &bench.rows,
            skipped: &bench.skipped,
        };
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(if bench.skipped.iter().any(|s| s.failed) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Pooled allocate + export against an allocation of its own, and a cached import against a
/// fresh one, each beside the raw Vulkan calls (`lava_flow::pool::bench`).
fn pool_rows(bench: &mut Bench) {
    let rows = VulkanContext::new()
        .and_then(|a| VulkanContext::with_uuid(a.identity().device_uuid).map(|b| (a, b)))
        .and_then(|(a, b)| lava_flow::pool::bench::run(&a, &b, bench.quick));
    match rows {
        Ok(rows) => bench.rows.extend(
            rows.into_iter()
                .map(|r| Row::new("pool", r.case, r.lava_flow, Some(r.raw), r.unit).iterations(r.iterations)),
        ),
        Err(e) => bench.group_error("pool", e),
    }
}

/// Bandwidth on imported memory against cuMemAlloc memory, export + import + map latency by size,
/// the timeline semaphore round trip and what sharing saves over copies (`lava_flow::cuda::bench`).
#[cfg(feature = "cuda")]
fn cuda_rows(bench: &mut Bench) {
    use lava_flow::cuda::bench::{run, BenchConfig};
    let config = if bench.quick { BenchConfig::quick() } else { BenchConfig::default() };
    match run(&config) {
        Ok(rows) => {
            for r in rows {
                let unit = r.unit;
                bench.rows.push(match r.error {
                    Some(e) => Row::not_measured("cuda", r.case, unit, e),
                    None => Row::new("cuda", r.case, r.lava_flow, Some(r.raw), unit),
                });
            }
        }
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
/// (`lava_flow::gl::bench`).
#[cfg(feature = "gl")]
fn gl_rows(bench: &mut Bench) {
    let (sizes, iterations) = import_sizes(bench.quick);
    let rows = VulkanContext::new().and_then(|vk| lava_flow::gl::bench::import_latency(&vk, sizes, iterations));
    match rows {
        Ok(rows) => bench.rows.extend(
            rows.into_iter().map(|r| Row::new("gl", r.case, r.lava_flow, Some(r.raw), r.unit).iterations(r.iterations)),
        ),
        Err(e) => bench.group_error("gl", e),
    }
}

#[cfg(not(feature = "gl"))]
fn gl_rows(bench: &mut Bench) {
    bench.skip("gl", "built without the `gl` feature");
}

/// OpenCL import latency against the bare clCreateBufferWithProperties, and copy bandwidth on
/// imported memory against clCreateBuffer memory (`lava_flow::opencl::bench`).
#[cfg(feature = "opencl")]
fn opencl_rows(bench: &mut Bench) {
    use lava_flow::opencl::bench::{copy_bandwidth, import_latency};
    let (sizes, iterations) = import_sizes(bench.quick);
    let (bandwidth_bytes, bandwidth_iterations) = if bench.quick { (64 << 20, 5) } else { (1 << 30, 20) };
    let rows = VulkanContext::new().and_then(|vk| {
        let mut rows = import_latency(&vk, sizes, iterations)?;
        rows.extend(copy_bandwidth(&vk, bandwidth_bytes, bandwidth_iterations)?);
        Ok(rows)
    });
    match rows {
        Ok(rows) => bench.rows.extend(
            rows.into_iter()
                .map(|r| Row::new("opencl", r.case, r.lava_flow, Some(r.raw), r.unit).iterations(r.iterations)),
        ),
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

    #[test]
    fn rows_show_ratio_and_cases_not_measured_say_why() {
        let bench = Bench {
            quick: true,
            rows: vec![
                Row::new("vulkan", "export 64 KiB buffer", 3.0, Some(2.0), "us").iterations(10),
                Row::new("cuda", "copy-bandwidth/kernel/1GiB", 3800.0, Some(3850.0), "GB/s"),
                Row::not_measured("cuda", "export-import-map/4GiB", "us", "too big for free memory".into()),
            ],
            skipped: vec![Skipped { group: "gl", reason: "no libEGL".into(), failed: false }],
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
}
