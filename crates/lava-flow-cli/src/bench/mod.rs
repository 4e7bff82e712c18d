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
    /// "vulkan", "cuda", "pool", "gl", "opencl", "ipc".
    pub group: &'static str,
    pub case: String,
    /// lava-flow's figure (median).
    pub lava_flow: f64,
    /// The raw API's figure for the same work, where there is one.
    pub raw: Option<f64>,
    pub unit: &'static str,
    /// lava_flow / raw.
    pub ratio: Option<f64>,
    pub better: Better,
    /// Iterations behind each median.
    pub iterations: u32,
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
            lava_flow,
            raw,
            unit,
            ratio: raw.filter(|r| *r > 0.0).map(|r| lava_flow / r),
            better: if unit.ends_with("/s") { Better::Higher } else { Better::Lower },
            iterations: 0,
        }
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
    bench.skip(
        "cuda",
        if cfg!(feature = "cuda") {
            "lava-flow's CUDA importer is not part of this build yet"
        } else {
            "built without the `cuda` feature"
        },
    );
    bench.skip(
        "opencl",
        if cfg!(feature = "opencl") {
            "lava-flow's OpenCL importer is not part of this build yet"
        } else {
            "built without the `opencl` feature"
        },
    );
    bench.skip(
        "gl",
        if cfg!(feature = "gl") {
            "lava-flow's OpenGL importer is not part of this build yet"
        } else {
            "built without the `gl` feature"
        },
    );
    bench.skip("ipc", "lava-flow's cross-process protocol is not part of this build yet");

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
        t.row([
            format!("{}: {}", r.group, r.case),
            figure(r.lava_flow),
            r.raw.map_or_else(|| "-".into(), figure),
            r.unit.to_string(),
            ratio,
        ]);
    }
    let mut out = t.render(0);
    out.push_str("\nratio = lava-flow / raw (latency: lower is better, bandwidth: higher is better); medians\n");
    for s in &bench.skipped {
        let verb = if s.failed { "FAILED" } else { "skipped" };
        out.push_str(&format!("{}: {verb}: {}\n", s.group, s.reason));
    }
    out
}
