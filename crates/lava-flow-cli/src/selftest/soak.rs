//! `selftest --soak N`: every path that passed the first round runs N more times (each round
//! allocates, exports, imports into every API present, checks the data and frees), and the
//! process's levels are sampled after the first round and after every soak round. Then:
//!
//! - open fds: the level at the end is exactly the level after the first round (drivers open
//!   files on first use, so the first round is the baseline);
//! - live lava-flow Vulkan objects (contexts, which each hold a `VkInstance` and a `VkDevice`, and
//!   `VkDeviceMemory` allocations, counted by [`lava_flow::vulkan::live_objects`]): exactly the
//!   baseline after every round, since every path drops what it made;
//! - memory (VmRSS; Vulkan `heapUsage` summed over heaps with VK_EXT_memory_budget; CUDA total -
//!   free from cuMemGetInfo): the growth per round over the second half of the rounds, a
//!   least-squares slope ([`judge`]), may not exceed a fixed floor. The first half is warm-up:
//!   drivers keep filling caches and pools for several rounds (NVIDIA's GL driver for 12). A leak
//!   grows in the second half as in the first, so a steady leak of any size above the floor fails,
//!   however small against the level. A cache still filling in the second half fails too: the
//!   level has to be flat over the second half, so a soak must be long enough for its warm-up to
//!   fit in the first half.
//!
//! The floors sit well above the noise measured on levels that do not leak (docs/RELIABILITY.md
//! #soak): device memory is flat to the byte from round to round once warm; the resident set moves
//! by a few KiB a round with the C allocator's arenas (second-half slopes of 0 to 7.3 KiB a round
//! on an H200, 0.15 on lavapipe). No allowance is made for the scatter of the samples: memory
//! grows in chunks (NVIDIA's pools in 4 MiB), and a leak that grows in chunks scatters as much as
//! noise would.

use std::time::Duration;

use serde::Serialize;

use super::{required_or, Outcome, PathResult, Runner};

/// Largest growth of the resident set per round over the second half that passes: nine times
/// the largest slope measured on a level that does not leak (7.3 KiB a round), and below a
/// leak of 0.1 MiB a round.
pub const RSS_FLOOR_BYTES: f64 = 64.0 * 1024.0;

/// Largest growth of device memory in use per round over the second half that passes: a quarter
/// of the 64 KiB page NVIDIA places small allocations in (a level that does not leak is flat to
/// the byte).
pub const DEVICE_FLOOR_BYTES: f64 = 16.0 * 1024.0;

/// The levels sampled after each round.
#[derive(Clone, Debug, Serialize)]
pub struct Levels {
    pub open_fds: usize,
    pub rss_kib: u64,
    /// Bytes of device memory in use by this process (Vulkan, summed over heaps), where measurable.
    pub vulkan_heap_usage: Option<u64>,
    /// The same, per heap (`heapUsage[i]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vulkan_heaps: Option<Vec<u64>>,
    /// Bytes of CUDA device memory in use (total - free), where CUDA is present.
    pub cuda_used: Option<u64>,
    /// lava-flow's live Vulkan contexts and memory allocations.
    pub live: lava_flow::vulkan::LiveObjects,
}

/// How one level moved over the soak, and the verdict on it. Memory levels are in bytes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trend {
    /// The level after the warm-up round, at the middle and at the end.
    pub first: f64,
    pub middle: f64,
    pub last: f64,
    /// The first sample judged (0: after the warm-up round; the middle for long soaks).
    pub from_round: usize,
    /// Least-squares slope of the judged samples, per round.
    pub slope_per_round: f64,
    /// Its standard error, from the residuals (0 for samples on a line, or fewer than 3): how
    /// much the samples scatter about the line. Shown, not judged.
    pub slope_stderr: f64,
    /// The largest slope that passes (the level's floor).
    pub bound_per_round: f64,
    pub pass: bool,
}

/// One Vulkan heap's trend.
#[derive(Clone, Debug, Serialize)]
pub struct HeapTrend {
    pub heap: usize,
    /// VK_MEMORY_HEAP_DEVICE_LOCAL_BIT: video memory; otherwise host memory the device reaches.
    pub device_local: bool,
    #[serde(flatten)]
    pub trend: Trend,
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
    /// Levels after the warm-up round (index 0) and after each soak round.
    pub samples: Vec<Levels>,
    /// Resident set, in bytes.
    pub rss: Trend,
    /// Vulkan heap usage summed over heaps, in bytes, where measured.
    pub vulkan: Option<Trend>,
    /// Per heap, where measured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vulkan_heaps: Vec<HeapTrend>,
    /// CUDA memory in use, in bytes, where measured.
    pub cuda: Option<Trend>,
    pub rss_floor_bytes_per_round: f64,
    pub device_floor_bytes_per_round: f64,
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

/// Least-squares line through `ys` at x = 0, 1, 2, ...: its slope and the slope's standard error
/// (0 with fewer than 3 points, where the residuals have no degrees of freedom).
pub fn slope(ys: &[f64]) -> (f64, f64) {
    let n = ys.len();
    if n < 2 {
        return (0.0, 0.0);
    }
    let nf = n as f64;
    let mean_x = (nf - 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / nf;
    let sxx: f64 = (0..n).map(|i| (i as f64 - mean_x).powi(2)).sum();
    let sxy: f64 = ys.iter().enumerate().map(|(i, y)| (i as f64 - mean_x) * (y - mean_y)).sum();
    let b = sxy / sxx;
    if n < 3 {
        return (b, 0.0);
    }
    let rss: f64 = ys.iter().enumerate().map(|(i, y)| (y - (mean_y + b * (i as f64 - mean_x))).powi(2)).sum();
    (b, (rss / (nf - 2.0) / sxx).sqrt())
}

/// The first sample judged for a soak of `rounds` rounds (samples: 0 after the warm-up round,
/// `i` after soak round `i`): the middle, or 0 for a soak of one round.
pub fn first_judged(rounds: usize) -> usize {
    if rounds >= 2 {
        rounds.div_ceil(2)
    } else {
        0
    }
}

/// Judges one level's samples (index 0 after the warm-up round, `i` after soak round `i`): the
/// least-squares slope from the middle sample to the last must not exceed `floor`.
pub fn judge(samples: &[f64], floor: f64) -> Trend {
    let rounds = samples.len().saturating_sub(1);
    let from_round = first_judged(rounds);
    let judged = samples.get(from_round..).unwrap_or(&[]);
    let (slope_per_round, slope_stderr) = slope(judged);
    let bound_per_round = floor;
    let at = |i: usize| samples.get(i).copied().unwrap_or(0.0);
    Trend {
        first: at(0),
        middle: at(rounds.div_ceil(2)),
        last: at(rounds),
        from_round,
        slope_per_round,
        slope_stderr,
        bound_per_round,
        pass: slope_per_round <= bound_per_round,
    }
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
        let heaps = self.vulkan.as_ref().ok().and_then(|c| c.heap_usage());
        Levels {
            open_fds: lava_flow::testing::open_fd_count(),
            rss_kib: rss_kib(),
            vulkan_heap_usage: heaps.as_ref().map(|h| h.iter().sum()),
            vulkan_heaps: heaps,
            cuda_used: self.cuda_used(),
            live: lava_flow::vulkan::live_objects(),
        }
    }

    /// Whether heap `i` of the probed device is device-local.
    fn heap_is_device_local(&self, i: usize) -> bool {
        self.vulkan.as_ref().is_ok_and(|c| {
            let props = c.memory_properties();
            i < props.memory_heap_count as usize
                && props.memory_heaps[i].flags.contains(ash::vk::MemoryHeapFlags::DEVICE_LOCAL)
        })
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

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1 << 20) as f64)
}

/// A slope per round, signed, in the unit that shows it best.
fn per_round(bytes: f64) -> String {
    if bytes.abs() >= (1 << 20) as f64 {
        format!("{:+.2} MiB/round", bytes / (1 << 20) as f64)
    } else {
        format!("{:+.1} KiB/round", bytes / 1024.0)
    }
}

fn row(path: String, outcome: Outcome) -> PathResult {
    PathResult { api: "vulkan", path, size: 0, outcome, time_ms: Duration::ZERO, runs: 1, detail: None }
}

/// The samples of one level, where every sample has it.
fn series(samples: &[Levels], level: impl Fn(&Levels) -> Option<u64>) -> Option<Vec<f64>> {
    samples.iter().map(|s| level(s).map(|v| v as f64)).collect()
}

/// The verdict on a memory trend, and the text of its row.
fn memory_row(what: &str, rounds: u32, t: &Trend, extra: &str) -> PathResult {
    let outcome = if t.pass {
        Outcome::Pass
    } else {
        Outcome::Fail(format!(
            "grew by {} over rounds {}-{rounds} (least squares; more than {}){extra}: a leak, or a cache \
             still filling in the second half (a longer soak tells them apart: a cache stops growing)",
            per_round(t.slope_per_round),
            t.from_round,
            per_round(t.bound_per_round)
        ))
    };
    row(
        format!(
            "soak: {what} after {rounds} rounds ({} -> {} -> {}, {})",
            mib(t.first),
            mib(t.middle),
            mib(t.last),
            per_round(t.slope_per_round)
        ),
        outcome,
    )
}

/// Runs the soak rounds on `runner` (whose first round is in `results`), folds each round into
/// the first round's rows, and appends the level rows.
pub fn run(runner: &mut Runner, results: &mut Vec<PathResult>, rounds: u32, run_all: fn(&mut Runner)) -> SoakReport {
    let probe = Probe::open();
    let mut samples = vec![probe.levels()];
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
        samples.push(probe.levels());
    }
    let before = samples[0].clone();
    let after = samples[samples.len() - 1].clone();
    let middle = (rounds > 1).then(|| samples[rounds.div_ceil(2) as usize].clone());

    let fds = if after.open_fds == before.open_fds {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("{} open fds before, {} after", before.open_fds, after.open_fds))
    };
    results.push(row(format!("soak: open fds after {rounds} rounds ({} -> {})", before.open_fds, after.open_fds), fds));

    let live_row = |what: &str, level: fn(&Levels) -> usize| {
        let base = level(&before);
        let stray = samples.iter().enumerate().find(|(_, s)| level(s) != base);
        let outcome = match stray {
            None => Outcome::Pass,
            Some((round, s)) => Outcome::Fail(format!(
                "{} after round {round} where the warm-up round left {base}: an object outlived its round",
                level(s)
            )),
        };
        row(format!("soak: live lava-flow {what} after each of {rounds} rounds ({base} -> {})", level(&after)), outcome)
    };
    results.push(live_row("Vulkan contexts", |s| s.live.vulkan_contexts));
    results.push(live_row("device memories", |s| s.live.device_memories));

    let rss = judge(&series(&samples, |s| Some(s.rss_kib * 1024)).unwrap_or_default(), RSS_FLOOR_BYTES);
    results.push(memory_row("host memory (RSS)", rounds, &rss, ""));

    let mut not_measured = Vec::new();
    let vulkan = series(&samples, |s| s.vulkan_heap_usage).map(|v| judge(&v, DEVICE_FLOOR_BYTES));
    let heap_count = samples.iter().filter_map(|s| s.vulkan_heaps.as_ref().map(Vec::len)).min().unwrap_or(0);
    let vulkan_heaps: Vec<HeapTrend> = (0..heap_count)
        .filter_map(|i| {
            let v = series(&samples, |s| s.vulkan_heaps.as_ref().map(|h| h[i]))?;
            Some(HeapTrend {
                heap: i,
                device_local: probe.heap_is_device_local(i),
                trend: judge(&v, DEVICE_FLOOR_BYTES),
            })
        })
        .collect();
    match (&vulkan, &probe.vulkan) {
        (Some(t), _) => {
            let heaps: Vec<String> = vulkan_heaps
                .iter()
                .map(|h| {
                    format!(
                        "heap {} ({}) {}",
                        h.heap,
                        if h.device_local { "device-local" } else { "host" },
                        per_round(h.trend.slope_per_round)
                    )
                })
                .collect();
            let extra = if heaps.is_empty() { String::new() } else { format!("; by heap: {}", heaps.join(", ")) };
            results.push(memory_row("Vulkan device memory", rounds, t, &extra));
        }
        (None, Err(reason)) => {
            not_measured.push(format!("Vulkan: {reason}"));
            results.push(row(
                format!("soak: Vulkan device memory after {rounds} rounds"),
                Outcome::Skipped(reason.clone()),
            ));
        }
        (None, Ok(_)) => results.push(row(
            format!("soak: Vulkan device memory after {rounds} rounds"),
            Outcome::Fail("VK_EXT_memory_budget gave no heap usage".into()),
        )),
    }

    let cuda = series(&samples, |s| s.cuda_used).map(|v| judge(&v, DEVICE_FLOOR_BYTES));
    let mut cuda_row = match (&cuda, probe.cuda_reason()) {
        (Some(t), _) => memory_row("CUDA device memory", rounds, t, ""),
        (None, Some(reason)) => {
            not_measured.push(format!("CUDA: {reason}"));
            row(
                format!("soak: CUDA device memory after {rounds} rounds"),
                required_or("cuda", Outcome::Skipped(reason)),
            )
        }
        (None, None) => {
            row(format!("soak: CUDA device memory after {rounds} rounds"), Outcome::Fail("cuMemGetInfo failed".into()))
        }
    };
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
        samples,
        rss,
        vulkan,
        vulkan_heaps,
        cuda,
        rss_floor_bytes_per_round: RSS_FLOOR_BYTES,
        device_floor_bytes_per_round: DEVICE_FLOOR_BYTES,
        not_measured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: f64 = 1024.0;
    const MIB: f64 = (1 << 20) as f64;

    /// Samples after the warm-up round and each of `rounds` rounds: `level(i)`.
    fn soak(rounds: usize, level: impl Fn(usize) -> f64) -> Vec<f64> {
        (0..=rounds).map(level).collect()
    }

    /// A deterministic noise in [-1, 1) (xorshift), so the tests need no random source.
    fn noise(i: usize, seed: u64) -> f64 {
        let mut x = (seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Vulkan heap usage (MiB) after the warm-up round and each round of `selftest --soak 60 --only
    /// gl:` on an H200 (driver 580.159.04): NVIDIA's GL driver grows a host-memory pool in 1, 4 and
    /// 4 MiB chunks until round 12, then holds it.
    fn h200_gl_pool(rounds: usize) -> Vec<f64> {
        soak(rounds, |i| {
            MIB * match i {
                0..=1 => 5.75,
                2..=4 => 6.75,
                5..=11 => 10.75,
                _ => 14.75,
            }
        })
    }

    #[test]
    fn slope_of_a_line_is_exact_with_no_error() {
        let (b, se) = slope(&[3.0, 5.0, 7.0, 9.0, 11.0]);
        assert!((b - 2.0).abs() < 1e-12 && se.abs() < 1e-9, "{b} {se}");
        assert_eq!(slope(&[4.0]), (0.0, 0.0));
        assert_eq!(slope(&[1.0, 4.0]), (3.0, 0.0));
        let (b, se) = slope(&[0.0, 1.0, 0.0, 1.0]);
        assert!(b.abs() < 0.5 && se > 0.0);
    }

    #[test]
    fn a_steady_leak_of_a_tenth_of_a_mib_a_round_fails() {
        // 20 rounds on top of 500 MiB: 2 MiB in all, well under the 8 MiB the soak used to allow.
        let t = judge(&soak(20, |i| 500.0 * MIB + 0.1 * MIB * i as f64), DEVICE_FLOOR_BYTES);
        assert!(!t.pass, "{t:?}");
        assert_eq!(t.from_round, 10);
        assert!((t.slope_per_round - 0.1 * MIB).abs() < 1.0, "{t:?}");
        // The same leak of the resident set, against its larger floor.
        assert!(!judge(&soak(20, |i| 300.0 * MIB + 0.1 * MIB * i as f64), RSS_FLOOR_BYTES).pass);
        // And under page-sized jitter.
        for seed in 1..20 {
            let t =
                judge(&soak(20, |i| 300.0 * MIB + 0.1 * MIB * i as f64 + 16.0 * KIB * noise(i, seed)), RSS_FLOOR_BYTES);
            assert!(!t.pass, "seed {seed}: {t:?}");
        }
    }

    #[test]
    fn a_leak_that_grows_in_chunks_fails() {
        // 4 MiB chunks, one every ten rounds: 0.4 MiB a round on average.
        let t = judge(&soak(40, |i| (100 + 4 * (i / 10)) as f64 * MIB), DEVICE_FLOOR_BYTES);
        assert!(!t.pass, "{t:?}");
        assert!(t.slope_stderr > 0.0, "chunks scatter about the line: {t:?}");
    }

    #[test]
    fn warm_up_then_flat_passes() {
        // Caches filling for the first rounds, then not a byte more.
        let t = judge(&soak(20, |i| (50.0 + 4.0 * i.min(8) as f64) * MIB), DEVICE_FLOOR_BYTES);
        assert!(t.pass, "{t:?}");
        assert_eq!(t.slope_per_round, 0.0);
        // The resident set settling exponentially, as the H200's did (46 MiB, mostly early).
        let t = judge(&soak(50, |i| 300.0 * MIB + 46.0 * MIB * (1.0 - (-(i as f64) / 3.0).exp())), RSS_FLOOR_BYTES);
        assert!(t.pass, "{t:?}");
    }

    #[test]
    fn nvidia_gl_pool_fails_twenty_rounds_and_passes_forty() {
        // Its last chunk lands in round 12: inside the second half of 20 rounds (which is how the
        // H200's soak showed 5.7 -> 10.7 -> 14.7 MiB), in the warm-up half of 40.
        let t = judge(&h200_gl_pool(20), DEVICE_FLOOR_BYTES);
        assert!(!t.pass, "{t:?}");
        assert!((t.middle - 10.75 * MIB).abs() < 1.0 && (t.last - 14.75 * MIB).abs() < 1.0);
        let t = judge(&h200_gl_pool(40), DEVICE_FLOOR_BYTES);
        assert!(t.pass && t.slope_per_round == 0.0, "{t:?}");
        assert!(judge(&h200_gl_pool(60), DEVICE_FLOOR_BYTES).pass);
    }

    #[test]
    fn noise_passes() {
        for seed in 1..100 {
            // The resident set jittering by up to 128 KiB either way (the H200's moved by about
            // 100 KiB between rounds once settled), about a flat level.
            let t = judge(&soak(20, |i| 300.0 * MIB + 128.0 * KIB * noise(i, seed)), RSS_FLOOR_BYTES);
            assert!(t.pass, "seed {seed}: {t:?}");
            // Device memory moving by a few KiB.
            let t = judge(&soak(20, |i| 500.0 * MIB + 8.0 * KIB * noise(i, seed)), DEVICE_FLOOR_BYTES);
            assert!(t.pass, "seed {seed}: {t:?}");
        }
    }

    #[test]
    fn short_soaks_judge_their_second_half() {
        assert_eq!(first_judged(1), 0);
        assert_eq!(first_judged(2), 1);
        assert_eq!(first_judged(3), 2);
        assert_eq!(first_judged(20), 10);
        assert_eq!(first_judged(21), 11);
        // One round: judged from the warm-up round.
        assert!(!judge(&soak(1, |i| MIB * i as f64), DEVICE_FLOOR_BYTES).pass);
        assert!(judge(&soak(1, |_| MIB), DEVICE_FLOOR_BYTES).pass);
        // Three rounds: a jump in the first soak round is warm-up; growth after it is not.
        assert!(judge(&soak(3, |i| if i == 0 { 0.0 } else { 15.0 * MIB }), RSS_FLOOR_BYTES).pass);
        assert!(!judge(&soak(3, |i| MIB * i as f64), DEVICE_FLOOR_BYTES).pass);
        assert!(judge(&[], DEVICE_FLOOR_BYTES).pass);
    }
}
