//! `selftest --soak N`: every path that passed the first round runs N more times (each round
//! allocates, exports, imports into every API present, checks the data and frees), then the
//! process's open fds, resident memory and device memory must be back where they were after the
//! first round, which serves as warm-up (drivers open files and fill caches on first use).
//!
//! Tolerances, stated so a failure is unambiguous:
//! - open fds: exactly the baseline;
//! - host memory (VmRSS): at most [`RSS_SLACK_KIB`] above the baseline;
//! - Vulkan device memory (`heapUsage` summed over heaps, VK_EXT_memory_budget): at most
//!   [`DEVICE_SLACK_BYTES`] above the baseline, where the device has the extension;
//! - CUDA device memory (total - free from cuMemGetInfo): at most [`DEVICE_SLACK_BYTES`] above the
//!   baseline, where CUDA is present.
//!
//! Each round allocates several MiB on each API, so a leak of one allocation per round exceeds the
//! device tolerance within a few rounds, and the host one within a few dozen.

use std::time::Duration;

use serde::Serialize;

use super::{required_or, Outcome, PathResult, Runner};

/// Growth of the resident set a soak may show: allocator arenas and driver caches settle after the
/// warm-up round, but not to the byte.
pub const RSS_SLACK_KIB: u64 = 16 * 1024;

/// Growth of device memory in use a soak may show: drivers keep a little for their own pools.
pub const DEVICE_SLACK_BYTES: u64 = 8 << 20;

/// The levels compared before and after the soak rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Levels {
    pub open_fds: usize,
    pub rss_kib: u64,
    /// Bytes of device memory in use by this process (Vulkan), where measurable.
    pub vulkan_heap_usage: Option<u64>,
    /// Bytes of CUDA device memory in use (total - free), where CUDA is present.
    pub cuda_used: Option<u64>,
}

/// What `--soak` measured.
#[derive(Serialize)]
pub struct SoakReport {
    pub rounds: u32,
    pub open_fds_before: usize,
    pub open_fds_after: usize,
    pub rss_kib_before: u64,
    pub rss_kib_after: u64,
    /// Levels after the warm-up round, half-way through and at the end.
    pub before: Levels,
    pub middle: Option<Levels>,
    pub after: Levels,
    pub rss_slack_kib: u64,
    pub device_slack_bytes: u64,
    /// Why the Vulkan or CUDA device memory could not be measured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_measured: Vec<String>,
}

/// Resident set size of this process in KiB (from /proc/self/status).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// What reads the device memory levels: a context of each API, opened before the baseline so
/// that its own fds and memory count in it.
struct Probe {
    vulkan: Result<lava_flow::VulkanContext, String>,
    #[cfg(feature = "cuda")]
    cuda: Result<lava_flow::cuda::CudaDevice, String>,
}

impl Probe {
    fn open() -> Probe {
        let vulkan = lava_flow::VulkanContext::new().map_err(|e| e.to_string()).and_then(|ctx| {
            if ctx.extensions().memory_budget {
                Ok(ctx)
            } else {
                Err(format!(
                    "{} lacks VK_EXT_memory_budget{}",
                    ctx.info().name,
                    if ctx.info().device_type == "CPU" {
                        " (its device memory is host memory: the RSS row covers it)"
                    } else {
                        ""
                    }
                ))
            }
        });
        #[cfg(feature = "cuda")]
        let cuda = match &vulkan {
            Ok(ctx) => lava_flow::cuda::CudaDevice::for_identity(&ctx.identity()),
            Err(_) => lava_flow::VulkanContext::new()
                .and_then(|ctx| lava_flow::cuda::CudaDevice::for_identity(&ctx.identity())),
        }
        .map_err(|e| e.to_string());
        Probe {
            vulkan,
            #[cfg(feature = "cuda")]
            cuda,
        }
    }

    fn levels(&self) -> Levels {
        Levels {
            open_fds: lava_flow::testing::open_fd_count(),
            rss_kib: rss_kib(),
            vulkan_heap_usage: self.vulkan.as_ref().ok().and_then(|c| c.heap_usage()).map(|h| h.iter().sum()),
            cuda_used: self.cuda_used(),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_used(&self) -> Option<u64> {
        let dev = self.cuda.as_ref().ok()?;
        dev.synchronize().ok()?;
        dev.mem_get_info().ok().map(|(free, total)| total.saturating_sub(free))
    }

    #[cfg(not(feature = "cuda"))]
    fn cuda_used(&self) -> Option<u64> {
        None
    }

    fn cuda_reason(&self) -> Option<String> {
        #[cfg(feature = "cuda")]
        return self.cuda.as_ref().err().cloned();
        #[cfg(not(feature = "cuda"))]
        Some("built without the `cuda` feature".into())
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn row(path: String, outcome: Outcome) -> PathResult {
    PathResult { api: "vulkan", path, size: 0, outcome, time_ms: Duration::ZERO, runs: 1, detail: None }
}

/// A device level's row: pass within the tolerance, skip where it cannot be measured.
fn device_row(what: &str, rounds: u32, before: Option<u64>, after: Option<u64>, unmeasured: Outcome) -> PathResult {
    match (before, after) {
        (Some(b), Some(a)) => {
            let grown = a.saturating_sub(b);
            let outcome = if grown <= DEVICE_SLACK_BYTES {
                Outcome::Pass
            } else {
                Outcome::Fail(format!("grew by {} (more than {})", mib(grown), mib(DEVICE_SLACK_BYTES)))
            };
            row(format!("soak: {what} after {rounds} rounds ({} -> {} in use)", mib(b), mib(a)), outcome)
        }
        _ => row(format!("soak: {what} after {rounds} rounds"), unmeasured),
    }
}

/// Runs the soak rounds on `runner` (whose first round is in `results`), folds each round into
/// the first round's rows, and appends the level rows.
pub fn run(runner: &mut Runner, results: &mut Vec<PathResult>, rounds: u32, run_all: fn(&mut Runner)) -> SoakReport {
    let probe = Probe::open();
    let before = probe.levels();
    let mut middle = None;
    runner.repeat_of = Some(results.clone());
    for round in 1..=rounds {
        eprintln!("selftest: soak round {round}/{rounds}");
        run_all(runner);
        for r in std::mem::take(&mut runner.results) {
            if let Some(first) = results.iter_mut().find(|f| f.path == r.path) {
                first.runs += 1;
                first.time_ms += r.time_ms;
                if let (Outcome::Pass, Outcome::Fail(m) | Outcome::Skipped(m)) = (&first.outcome, r.outcome) {
                    first.outcome = Outcome::Fail(format!("in soak round {round}: {m}"));
                }
            }
        }
        if round == rounds.div_ceil(2) && rounds > 1 {
            middle = Some(probe.levels());
        }
    }
    let after = probe.levels();

    let fds = if after.open_fds == before.open_fds {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("{} open fds before, {} after", before.open_fds, after.open_fds))
    };
    results.push(row(format!("soak: open fds after {rounds} rounds ({} -> {})", before.open_fds, after.open_fds), fds));
    let grown = after.rss_kib.saturating_sub(before.rss_kib);
    let rss = if grown <= RSS_SLACK_KIB {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("RSS grew by {grown} KiB (more than {RSS_SLACK_KIB} KiB)"))
    };
    results.push(row(
        format!("soak: host memory after {rounds} rounds ({} -> {} KiB RSS)", before.rss_kib, after.rss_kib),
        rss,
    ));

    let mut not_measured = Vec::new();
    let vulkan_unmeasured = match &probe.vulkan {
        Err(reason) => {
            not_measured.push(format!("Vulkan: {reason}"));
            Outcome::Skipped(reason.clone())
        }
        Ok(_) => Outcome::Fail("VK_EXT_memory_budget gave no heap usage".into()),
    };
    results.push(device_row(
        "Vulkan device memory",
        rounds,
        before.vulkan_heap_usage,
        after.vulkan_heap_usage,
        vulkan_unmeasured,
    ));
    let cuda_unmeasured = match probe.cuda_reason() {
        Some(reason) => {
            not_measured.push(format!("CUDA: {reason}"));
            required_or("cuda", Outcome::Skipped(reason))
        }
        None => Outcome::Fail("cuMemGetInfo failed".into()),
    };
    let mut cuda_row = device_row("CUDA device memory", rounds, before.cuda_used, after.cuda_used, cuda_unmeasured);
    cuda_row.api = "cuda";
    results.push(cuda_row);

    SoakReport {
        rounds,
        open_fds_before: before.open_fds,
        open_fds_after: after.open_fds,
        rss_kib_before: before.rss_kib,
        rss_kib_after: after.rss_kib,
        before,
        middle,
        after,
        rss_slack_kib: RSS_SLACK_KIB,
        device_slack_bytes: DEVICE_SLACK_BYTES,
        not_measured,
    }
}
