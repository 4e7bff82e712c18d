//! `selftest --soak N`: every path that passed the first round runs N more times (each round
//! allocates, exports, imports into every API present, checks the data and frees), then the
//! process's open fds must be exactly where they were after the first round, and its resident
//! memory and device memory must have stopped growing.
//!
//! Baselines and tolerances, stated so a failure is unambiguous:
//! - open fds: exactly the level after the first round (drivers open files on first use);
//! - memory (VmRSS; Vulkan `heapUsage` summed over heaps with VK_EXT_memory_budget; CUDA total -
//!   free from cuMemGetInfo): compared from the middle of the soak to its end, so the first half
//!   is warm-up. NVIDIA's drivers keep filling caches for several rounds (a 20-round soak on an
//!   H200 grew 9 MiB of Vulkan heap and 50 MiB of RSS, most of it early), while a leak keeps
//!   growing in the second half as in the first. At most [`RSS_SLACK_KIB`] of RSS and
//!   [`DEVICE_SLACK_BYTES`] of device memory may be added in the second half; the rows also show
//!   the growth over the whole soak. With fewer than 2 rounds the first round is the baseline.
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
            open_fds: lava_flow_diag::testing::open_fd_count(),
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
/// `levels` are after the first round, at the middle and at the end; growth is judged from the
/// middle.
fn device_row(what: &str, rounds: u32, levels: [Option<u64>; 3], unmeasured: Outcome) -> PathResult {
    match levels {
        [Some(b), Some(m), Some(a)] => {
            let grown = a.saturating_sub(m);
            let outcome = if grown <= DEVICE_SLACK_BYTES {
                Outcome::Pass
            } else {
                Outcome::Fail(format!(
                    "grew by {} in the second half (more than {})",
                    mib(grown),
                    mib(DEVICE_SLACK_BYTES)
                ))
            };
            row(format!("soak: {what} after {rounds} rounds ({} -> {} -> {} in use)", mib(b), mib(m), mib(a)), outcome)
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
    let settled = middle.as_ref().unwrap_or(&before);
    let grown = after.rss_kib.saturating_sub(settled.rss_kib);
    let rss = if grown <= RSS_SLACK_KIB {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("RSS grew by {grown} KiB in the second half (more than {RSS_SLACK_KIB} KiB)"))
    };
    results.push(row(
        format!(
            "soak: host memory after {rounds} rounds ({} -> {} -> {} KiB RSS)",
            before.rss_kib, settled.rss_kib, after.rss_kib
        ),
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
        [before.vulkan_heap_usage, settled.vulkan_heap_usage, after.vulkan_heap_usage],
        vulkan_unmeasured,
    ));
    let cuda_unmeasured = match probe.cuda_reason() {
        Some(reason) => {
            not_measured.push(format!("CUDA: {reason}"));
            required_or("cuda", Outcome::Skipped(reason))
        }
        None => Outcome::Fail("cuMemGetInfo failed".into()),
    };
    let mut cuda_row = device_row(
        "CUDA device memory",
        rounds,
        [before.cuda_used, settled.cuda_used, after.cuda_used],
        cuda_unmeasured,
    );
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
