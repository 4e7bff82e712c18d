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
//!   free from cuMemGetInfo): the growth per round over the second half of the rounds may not
//!   exceed a fixed floor. The first half is warm-up: drivers keep filling caches and pools for
//!   several rounds (NVIDIA's GL driver for 12). A leak grows in the second half as in the first,
//!   so a steady leak of any size above the floor fails, however small against the level.
//!
//! The growth per round is the median of the slopes between every pair of samples of the second
//! half (Theil-Sen, [`median_slope`]): a steady leak gives exactly its rate, and so does a leak
//! that grows in chunks once the half holds a few of them, while a single sample off its
//! neighbours or one chunk a driver's pool takes once moves few of the pairs and so not the
//! median. A least-squares slope is reported beside it; it follows such one-offs. The resident set
//! is read with glibc's mmap threshold pinned ([`steady_allocator`]), without which lavapipe's GL
//! rounds read 3 MiB more or less from one round to the next.
//!
//! The floors sit well above what was measured on levels that do not leak (see the soak section
//! of docs/RELIABILITY.md): device memory is flat to the byte from round to round once warm; the
//! resident set creeps by a few KiB a round with the C allocator's arenas (median slopes of 0 to
//! 15 KiB a round over the second half, on an H200 and on lavapipe).

use std::time::Duration;

use serde::Serialize;

use super::{required_or, Outcome, PathResult, Runner};

/// Largest growth of the resident set per round over the second half that passes: four times the
/// largest measured on a level that does not leak (15 KiB a round), and below a leak of 0.1 MiB a
/// round.
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
    /// Growth per round of the judged samples: the median of the slopes between every pair of
    /// them (Theil-Sen). This is what is judged.
    pub slope_per_round: f64,
    /// The least-squares slope of the same samples, per round: shown, not judged (one-off steps
    /// and spikes move it).
    pub least_squares_per_round: f64,
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

/// Makes the resident set follow live memory, for a soak: called before the warm-up round.
///
/// glibc raises its mmap threshold whenever a block above it is freed (up to 32 MiB), so later
/// blocks of that size come from the heap instead, and whether the heap's top is trimmed depends
/// on what was freed last: the resident set of a GL soak on lavapipe stood 3 MiB higher or lower
/// from one round to the next. A threshold set with `mallopt` is fixed (the trim threshold too), so
/// every block of 128 KiB or more is mapped when allocated and unmapped when freed. Nothing else
/// changes for the paths; other C libraries are left as they are.
pub fn steady_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        /// `M_MMAP_THRESHOLD` of glibc's <malloc.h>.
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: mallopt is glibc's tuning call with this prototype (<malloc.h>); it takes the
        // allocator's own locks, so other threads may allocate meanwhile, and the value is
        // glibc's default threshold, within its documented range (0 to 32 MiB on 64-bit).
        unsafe { mallopt(M_MMAP_THRESHOLD, 128 * 1024) };
    }
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

/// Least-squares slope of `ys` at x = 0, 1, 2, ... (0 with fewer than 2 points).
pub fn least_squares_slope(ys: &[f64]) -> f64 {
    let n = ys.len();
    if n < 2 {
        return 0.0;
    }
    let mean_x = (n as f64 - 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n as f64;
    let sxx: f64 = (0..n).map(|i| (i as f64 - mean_x).powi(2)).sum();
    let sxy: f64 = ys.iter().enumerate().map(|(i, y)| (i as f64 - mean_x) * (y - mean_y)).sum();
    sxy / sxx
}

/// Samples beyond which [`median_slope`] uses every k-th sample (its pairs grow as the square).
const MEDIAN_SLOPE_MAX_SAMPLES: usize = 1000;

/// Theil-Sen slope of `ys` at x = 0, 1, 2, ...: the median of `(ys[j] - ys[i]) / (j - i)` over
/// every pair i < j (0 with fewer than 2 points). Up to 29% of the samples can be arbitrarily off
/// without carrying it outside the range of the others' slopes.
pub fn median_slope(ys: &[f64]) -> f64 {
    let step = ys.len().div_ceil(MEDIAN_SLOPE_MAX_SAMPLES).max(1);
    let points: Vec<(f64, f64)> = ys.iter().enumerate().step_by(step).map(|(i, y)| (i as f64, *y)).collect();
    let slopes: Vec<f64> = points
        .iter()
        .enumerate()
        .flat_map(|(a, (xa, ya))| points[a + 1..].iter().map(move |(xb, yb)| (yb - ya) / (xb - xa)))
        .collect();
    if slopes.is_empty() {
        return 0.0;
    }
    lava_flow_diag::bench::median(slopes)
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
/// median slope ([`median_slope`]) from the middle sample to the last must not exceed `floor`.
pub fn judge(samples: &[f64], floor: f64) -> Trend {
    let rounds = samples.len().saturating_sub(1);
    let from_round = first_judged(rounds);
    let judged = samples.get(from_round..).unwrap_or(&[]);
    let slope_per_round = median_slope(judged);
    let bound_per_round = floor;
    let at = |i: usize| samples.get(i).copied().unwrap_or(0.0);
    Trend {
        first: at(0),
        middle: at(rounds.div_ceil(2)),
        last: at(rounds),
        from_round,
        slope_per_round,
        least_squares_per_round: least_squares_slope(judged),
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
            open_fds: lava_flow_diag::testing::open_fd_count(),
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
            "grew by {} over rounds {}-{rounds} (median of the slopes between rounds; more than {}){extra}: \
             a leak, or a cache still filling in the second half (a longer soak tells them apart: a cache \
             stops growing)",
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

    /// Vulkan heap usage after the warm-up round and each round of `selftest --soak N --only gl:`
    /// on an H200 (driver 580.159.04): NVIDIA's GL driver grows a host-memory pool in 1, 4 and 4
    /// MiB chunks until round 12, then holds it (measured for 60 rounds).
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

    /// Resident set (KiB) of `selftest --soak 10 --only gl:` on lavapipe, two runs with glibc's
    /// mmap threshold left dynamic (before [`steady_allocator`]): single samples stand 3 MiB above
    /// or below their neighbours.
    const LAVAPIPE_GL_RSS_KIB: [[f64; 11]; 2] = [
        [78316.0, 77716.0, 77944.0, 77944.0, 77944.0, 78276.0, 78536.0, 78276.0, 78276.0, 78276.0, 81220.0],
        [79408.0, 79376.0, 81300.0, 78360.0, 81304.0, 78360.0, 78360.0, 78360.0, 81308.0, 78364.0, 78400.0],
    ];

    #[test]
    fn slopes_of_a_line_are_exact() {
        let line = [3.0, 5.0, 7.0, 9.0, 11.0];
        assert!((least_squares_slope(&line) - 2.0).abs() < 1e-12);
        assert_eq!(median_slope(&line), 2.0);
        assert_eq!(median_slope(&[4.0]), 0.0);
        assert_eq!(median_slope(&[]), 0.0);
        assert_eq!(median_slope(&[1.0, 4.0]), 3.0);
        // One spike moves the least-squares slope, not the median one.
        let spiked = [0.0, 0.0, 0.0, 0.0, 0.0, 10.0];
        assert!(least_squares_slope(&spiked) > 1.0);
        assert_eq!(median_slope(&spiked), 0.0);
        // Long series are thinned, not refused.
        let long: Vec<f64> = (0..5000).map(|i| 3.0 * i as f64).collect();
        assert_eq!(median_slope(&long), 3.0);
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
        for seed in 1..20 {
            // Under page-sized jitter.
            let jittered = soak(20, |i| 300.0 * MIB + 0.1 * MIB * i as f64 + 16.0 * KIB * noise(i, seed));
            assert!(!judge(&jittered, RSS_FLOOR_BYTES).pass, "seed {seed}");
            // Under one 3 MiB spike, up or down, anywhere in the second half.
            let at = 10 + seed as usize % 11;
            let sign = if seed % 2 == 0 { 1.0 } else { -1.0 };
            let spiked =
                soak(20, |i| 300.0 * MIB + 0.1 * MIB * i as f64 + if i == at { sign * 3.0 * MIB } else { 0.0 });
            assert!(!judge(&spiked, RSS_FLOOR_BYTES).pass, "seed {seed}");
        }
    }

    #[test]
    fn a_leak_that_grows_in_chunks_fails() {
        // 4 MiB chunks, one every five rounds: 0.8 MiB a round on average.
        let t = judge(&soak(20, |i| (100 + 4 * (i / 5)) as f64 * MIB), DEVICE_FLOOR_BYTES);
        assert!(!t.pass, "{t:?}");
        // One every ten rounds over 40 rounds: three chunks in the second half.
        let t = judge(&soak(40, |i| (100 + 4 * (i / 10)) as f64 * MIB), DEVICE_FLOOR_BYTES);
        assert!(!t.pass, "{t:?}");
        assert!(t.slope_per_round > 0.1 * MIB, "{t:?}");
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
    fn nvidia_gl_pool_is_warm_up_not_a_leak() {
        // Its last chunk lands in round 12, inside the second half of 20 rounds: that is how the
        // H200's soak showed 5.7 -> 10.7 -> 14.7 MiB. One chunk is not a trend: the median slope
        // is 0, where a least-squares line makes it 0.33 MiB a round.
        let t = judge(&h200_gl_pool(20), DEVICE_FLOOR_BYTES);
        assert!(t.pass && t.slope_per_round == 0.0, "{t:?}");
        assert!(t.least_squares_per_round > 0.3 * MIB, "{t:?}");
        assert!((t.middle - 10.75 * MIB).abs() < 1.0 && (t.last - 14.75 * MIB).abs() < 1.0);
        for rounds in [40, 60] {
            let t = judge(&h200_gl_pool(rounds), DEVICE_FLOOR_BYTES);
            assert!(t.pass && t.least_squares_per_round == 0.0, "{t:?}");
        }
    }

    #[test]
    fn noise_passes() {
        for series in LAVAPIPE_GL_RSS_KIB {
            let bytes: Vec<f64> = series.iter().map(|k| k * KIB).collect();
            let t = judge(&bytes, RSS_FLOOR_BYTES);
            assert!(t.pass, "{t:?}");
        }
        for seed in 1..100 {
            // The resident set jittering by up to 128 KiB either way about a flat level.
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
