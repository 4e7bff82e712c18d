//! Whole runs of a channel end, as `lava-flow channel` and the tests drive them: the producer
//! writes a pattern that differs for every frame and every word, each consumer checks every
//! frame it gets, word by word, and measures the hand-off latency (from the producer sending the
//! frame to the consumer taking it).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Channel, ChannelOptions, FrameMemory, Metadata, ProducerStats, ViewApi};
use crate::ipc::shm;
use crate::{Error, Result};

/// Word `j` of frame `k`: differs for every frame and every position, so a stale, torn or
/// misplaced frame is caught.
pub fn frame_word(k: u64, j: usize) -> u64 {
    k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (j as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ 0x5555
}

/// Fills `out` with frame `k`'s pattern (little-endian words; a tail shorter than a word holds
/// the word's first bytes).
pub fn fill_pattern(out: &mut [u8], k: u64) {
    let last = out.len() / 8;
    let mut words = out.chunks_exact_mut(8);
    for (j, chunk) in (&mut words).enumerate() {
        chunk.copy_from_slice(&frame_word(k, j).to_le_bytes());
    }
    let tail = words.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&frame_word(k, last).to_le_bytes()[..n]);
}

/// Checks that `bytes` hold frame `k`'s pattern, naming the first wrong word.
pub fn check_pattern(bytes: &[u8], k: u64) -> Result<()> {
    let wrong = |j: usize| {
        let w = frame_word(k, j).to_le_bytes();
        let have = &bytes[j * 8..(j * 8 + 8).min(bytes.len())];
        Err(Error::Mismatch {
            what: format!("channel frame {k}"),
            detail: format!("word {j} is {have:02x?}, expected {:02x?}", &w[..have.len()]),
        })
    };
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    // Whole words first, compared as integers (the hot loop of every consumer).
    if let Some(j) =
        words.enumerate().position(|(j, c)| u64::from_le_bytes(c.try_into().expect("8 bytes")) != frame_word(k, j))
    {
        return wrong(j);
    }
    if tail != &frame_word(k, bytes.len() / 8).to_le_bytes()[..tail.len()] {
        return wrong(bytes.len() / 8);
    }
    Ok(())
}

/// What one end of a run does.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The channel's socket.
    pub socket: PathBuf,
    /// The channel's settings (the producer's; a consumer uses `timeout` and `context`).
    pub options: ChannelOptions,
    /// Frames to send (producer) or to take before stopping (consumer; `None`: until the
    /// producer ends the channel).
    pub frames: Option<u64>,
    /// Producer: consumers to wait for before the first frame.
    pub consumers: usize,
    /// Consumer: how long to hold each frame before releasing it (a slow consumer).
    pub hold: Duration,
    /// Consumer: check every word of every frame (else only the first and last word).
    pub check_all: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            socket: PathBuf::from("/tmp/lava-flow-channel.sock"),
            options: ChannelOptions::default(),
            frames: Some(10_000),
            consumers: 1,
            hold: Duration::ZERO,
            check_all: true,
        }
    }
}

/// Latency percentiles over a run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Frames measured.
    pub samples: u64,
    /// Median, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: u64,
    /// Largest, nanoseconds.
    pub max_ns: u64,
}

impl Latency {
    /// The percentiles of `samples` (nanoseconds); `None` for no samples.
    pub fn of(mut samples: Vec<u64>) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        Some(Latency { samples: samples.len() as u64, p50_ns: at(0.5), p99_ns: at(0.99), max_ns: at(1.0) })
    }
}

/// What one end of a run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    /// "producer" or "consumer".
    pub role: &'static str,
    /// "vulkan" or "host".
    pub memory: &'static str,
    /// Consumer: the API every frame was read back and checked through: "gl", "cuda" or
    /// "opencl" (the first of `options.views`), else the frame's memory ("vulkan", "host").
    pub view: &'static str,
    /// "messages" or "messages + timeline semaphore".
    pub sync: &'static str,
    /// Slots in the pool.
    pub slots: u32,
    /// Bytes per frame.
    pub frame_size: u64,
    /// Frames sent (producer) or received and checked (consumer).
    pub frames: u64,
    /// Frames dropped (consumer: sequence gaps and frames taken back; producer: deliveries taken
    /// back or skipped).
    pub dropped: u64,
    /// From the first frame to the last.
    pub elapsed_s: f64,
    /// Frames per second.
    pub frames_per_second: f64,
    /// Bytes per second (frames times frame size).
    pub bytes_per_second: f64,
    /// Hand-off latency over every frame, queueing behind earlier frames included (consumer).
    pub latency: Option<Latency>,
    /// Hand-off latency over the frames the consumer was already waiting for: the cost of the
    /// hand-off itself, wake-up included (consumer).
    pub wake_latency: Option<Latency>,
    /// The producer's counters (producer).
    pub producer: Option<ProducerStats>,
    /// Why it ended: "count", "peer-finished".
    pub ended_by: &'static str,
    /// Memory imports the consumer made (all at connect; none per frame).
    pub imports: Option<u64>,
    /// This process's open fds and resident memory (KiB) after the first frame and after the
    /// last: flat over a long run when nothing leaks.
    pub resources: Option<Resources>,
}

/// Open fds and resident set size of this process at two points of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Resources {
    /// Open fds after the first frame.
    pub fds_first: u64,
    /// Open fds after the last frame.
    pub fds_last: u64,
    /// Resident memory after the first frame, KiB.
    pub rss_kib_first: u64,
    /// Resident memory after the last frame, KiB.
    pub rss_kib_last: u64,
}

/// This process's open fds and resident set size in KiB (Linux `/proc/self`); `None` where
/// `/proc` cannot be read.
pub fn process_resources() -> Option<(u64, u64)> {
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some((fds, rss))
}

fn resources(first: Option<(u64, u64)>) -> Option<Resources> {
    let (fds_first, rss_kib_first) = first?;
    let (fds_last, rss_kib_last) = process_resources()?;
    Some(Resources { fds_first, fds_last, rss_kib_first, rss_kib_last })
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} frames of {} bytes ({} memory, {} slots, {}) in {:.3} s: {:.0} frames/s, {:.2} GB/s",
            self.role,
            self.frames,
            self.frame_size,
            self.memory,
            self.slots,
            self.sync,
            self.elapsed_s,
            self.frames_per_second,
            self.bytes_per_second / 1e9
        )?;
        if self.dropped > 0 {
            write!(f, ", {} dropped", self.dropped)?;
        }
        if let Some(l) = &self.latency {
            write!(
                f,
                "; hand-off latency p50 {:.1} us p99 {:.1} us max {:.1} us",
                l.p50_ns as f64 / 1e3,
                l.p99_ns as f64 / 1e3,
                l.max_ns as f64 / 1e3
            )?;
        }
        if let Some(l) = &self.wake_latency {
            write!(
                f,
                "; waiting consumer ({} frames) p50 {:.1} us p99 {:.1} us",
                l.samples,
                l.p50_ns as f64 / 1e3,
                l.p99_ns as f64 / 1e3
            )?;
        }
        if let Some(r) = &self.resources {
            write!(f, "; fds {} -> {}, RSS {} -> {} KiB", r.fds_first, r.fds_last, r.rss_kib_first, r.rss_kib_last)?;
        }
        write!(f, "; ended by {}", self.ended_by)
    }
}

fn memory_name(memory: FrameMemory) -> &'static str {
    match memory {
        FrameMemory::Host => "host",
        FrameMemory::Vulkan(_) => "vulkan",
    }
}

fn sync_name(timeline: bool) -> &'static str {
    if timeline {
        "messages + timeline semaphore"
    } else {
        "messages"
    }
}

/// Runs the producer: waits for `config.consumers` consumers, sends `config.frames` frames of
/// the pattern, waits for them to be released and ends the channel.
pub fn run_producer(config: &RunConfig) -> Result<RunReport> {
    let frames = config.frames.ok_or_else(|| {
        Error::invalid("channel run length", "a producer run needs a frame count", "give a number of frames")
    })?;
    let mut producer = Channel::producer(&config.socket, config.options.clone())?;
    producer.wait_for_consumers(config.consumers, config.options.timeout)?;
    let size = usize::try_from(config.options.frame_size)
        .map_err(|_| Error::invalid("channel frame size", "exceeds the address space", "use smaller frames"))?;
    let mut pattern = vec![0u8; size];
    let start = Instant::now();
    let mut first = None;
    for k in 0..frames {
        if k == 1 {
            first = process_resources();
        }
        let mut frame = producer.acquire()?;
        let sequence = frame.sequence();
        match frame.host_memory() {
            // Host frames: the words are written in place with atomic stores, as the ring does
            // (consumers of this run read them with atomic loads, never with plain copies).
            Some(memory) if size % 8 == 0 => {
                for (j, w) in shm::atomic_u64_slice(memory, 0, size / 8)?.iter().enumerate() {
                    w.store(frame_word(sequence, j).to_le(), Ordering::Relaxed);
                }
            }
            _ => {
                fill_pattern(&mut pattern, sequence);
                frame.write(0, &pattern)?;
            }
        }
        frame.send(Metadata { timestamp: k, ..Metadata::bytes(size as u64) })?;
    }
    producer.drain(config.options.timeout)?;
    let resources = resources(first);
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let stats = producer.stats();
    let timeline = producer.uses_timeline();
    drop(producer);
    Ok(RunReport {
        role: "producer",
        memory: memory_name(config.options.memory),
        view: memory_name(config.options.memory),
        sync: sync_name(timeline),
        slots: config.options.slots,
        frame_size: size as u64,
        frames,
        dropped: stats.dropped,
        elapsed_s: elapsed,
        frames_per_second: frames as f64 / elapsed,
        bytes_per_second: frames as f64 * size as f64 / elapsed,
        latency: None,
        wake_latency: None,
        producer: Some(stats),
        ended_by: "count",
        imports: None,
        resources,
    })
}

/// Reads frame `frame`'s first `len` bytes back through its view in `api` (GL, CUDA or
/// OpenCL: a copy made by that API, never by Vulkan or the host mapping) into `buf`.
#[cfg_attr(not(any(feature = "gl", feature = "cuda", feature = "opencl")), allow(unused_variables, clippy::ptr_arg))]
fn read_through_view(frame: &super::ReadFrame<'_>, api: ViewApi, len: usize, buf: &mut Vec<u8>) -> Result<()> {
    let missing = || {
        Error::invalid(
            format!("channel frame {}", frame.sequence()),
            format!("the consumer has no {} view of slot {}", api.name(), frame.slot()),
            "connect with ChannelOptions::views naming that API",
        )
    };
    match api {
        #[cfg(feature = "gl")]
        ViewApi::Gl => {
            *buf = frame.gl_buffer().ok_or_else(missing)?.read(0, len)?;
            Ok(())
        }
        #[cfg(feature = "cuda")]
        ViewApi::Cuda => {
            let view = frame.cuda_buffer().ok_or_else(missing)?;
            // A CUDA copy moves the whole buffer (the frame's slot): read it, keep `len` bytes.
            buf.resize(view.len(), 0);
            view.copy_to_host_into(buf)?;
            buf.truncate(len);
            Ok(())
        }
        #[cfg(feature = "opencl")]
        ViewApi::OpenCl => {
            *buf = frame.opencl_buffer().ok_or_else(missing)?.read(0, len)?;
            Ok(())
        }
        #[allow(unreachable_patterns)]
        _ => Err(missing()),
    }
}

/// Checks one frame: every word, or the first and last where `all` is false; through the
/// view in `view` where one is given (every word, whatever `all` says).
fn check(frame: &super::ReadFrame<'_>, buf: &mut Vec<u8>, all: bool, view: Option<ViewApi>) -> Result<()> {
    let len = usize::try_from(frame.len()).expect("frames fit the address space (checked by the producer)");
    if let Some(api) = view {
        read_through_view(frame, api, len, buf)?;
        if buf.len() != len {
            return Err(Error::Mismatch {
                what: format!("channel frame {} read through {}", frame.sequence(), api.name()),
                detail: format!("{} bytes came back, {len} expected", buf.len()),
            });
        }
        return check_pattern(buf, frame.sequence());
    }
    if let (Some(memory), true, true) = (frame.host_memory(), len % 8 == 0, all) {
        // Host frames of this run hold words written with atomic stores: check them in place.
        let words = shm::atomic_u64_slice(memory, 0, len / 8)?;
        return match words
            .iter()
            .enumerate()
            .find(|(j, w)| u64::from_le(w.load(Ordering::Relaxed)) != frame_word(frame.sequence(), *j))
        {
            None => Ok(()),
            Some((j, w)) => Err(Error::Mismatch {
                what: format!("channel frame {}", frame.sequence()),
                detail: format!(
                    "word {j} is {:#018x}, expected {:#018x}",
                    u64::from_le(w.load(Ordering::Relaxed)),
                    frame_word(frame.sequence(), j)
                ),
            }),
        };
    }
    if all {
        buf.resize(len, 0);
        frame.read_into(0, buf)?;
        return check_pattern(buf, frame.sequence());
    }
    let mut word = [0u8; 8];
    for j in [0, len.saturating_sub(1) / 8] {
        let n = 8.min(len - j * 8);
        frame.read_into((j * 8) as u64, &mut word[..n])?;
        if word[..n] != frame_word(frame.sequence(), j).to_le_bytes()[..n] {
            return Err(Error::Mismatch {
                what: format!("channel frame {}", frame.sequence()),
                detail: format!("word {j}"),
            });
        }
    }
    Ok(())
}

/// Runs a consumer: takes frames until the producer ends the channel (or `config.frames` were
/// taken), checks each one, holds it `config.hold`, releases it. Frames must arrive in order;
/// gaps are counted as dropped (drop-oldest).
pub fn run_consumer(config: &RunConfig) -> Result<RunReport> {
    let consumer = Channel::consumer(&config.socket, config.options.clone())?;
    let view = config.options.views.apis().first().copied();
    let mut first = None;
    let mut latencies = Vec::new();
    let mut wake_latencies = Vec::new();
    let mut buf = Vec::new();
    let mut start = None;
    let mut last_at = Instant::now();
    let mut taken = 0u64;
    let ended_by = loop {
        if config.frames.is_some_and(|f| taken >= f) {
            break "count";
        }
        let frame = match consumer.recv() {
            Ok(frame) => frame,
            Err(Error::Closed { clean: true, .. }) => break "peer-finished",
            Err(e) => return Err(e),
        };
        latencies.push(frame.handoff_ns());
        if frame.waited() {
            wake_latencies.push(frame.handoff_ns());
        }
        start.get_or_insert_with(Instant::now);
        check(&frame, &mut buf, config.check_all, view)?;
        if !config.hold.is_zero() {
            std::thread::sleep(config.hold);
        }
        drop(frame);
        if taken == 0 {
            first = process_resources();
        }
        taken += 1;
        last_at = Instant::now();
    };
    let elapsed = start.map_or(0.0, |s| last_at.duration_since(s).as_secs_f64()).max(1e-9);
    let stats = consumer.stats();
    let memory = if consumer.is_vulkan() { "vulkan" } else { "host" };
    Ok(RunReport {
        role: "consumer",
        memory,
        view: view.map_or(memory, ViewApi::name),
        sync: sync_name(consumer.uses_timeline()),
        slots: consumer.slots(),
        frame_size: consumer.frame_size(),
        frames: stats.frames,
        dropped: stats.dropped,
        elapsed_s: elapsed,
        frames_per_second: stats.frames as f64 / elapsed,
        bytes_per_second: stats.frames as f64 * consumer.frame_size() as f64 / elapsed,
        latency: Latency::of(latencies),
        wake_latency: Latency::of(wake_latencies),
        producer: None,
        ended_by,
        imports: Some(stats.imports),
        resources: resources(first),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_per_frame_and_catch_a_changed_byte() {
        let mut a = vec![0u8; 100];
        fill_pattern(&mut a, 7);
        check_pattern(&a, 7).unwrap();
        assert!(check_pattern(&a, 8).is_err());
        a[97] ^= 1;
        assert!(check_pattern(&a, 7).unwrap_err().to_string().contains("word 12"));
        let l = Latency::of((1..=100).collect()).unwrap();
        assert_eq!((l.p50_ns, l.p99_ns, l.max_ns), (51, 99, 100));
    }
}
