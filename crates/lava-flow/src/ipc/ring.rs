//! A zero-copy producer/consumer ring across processes.
//!
//! The producer shares N slots and a control block through a [`Server`]; the consumer fetches
//! them with a [`Client`] and maps the same pages. Frame `k` goes into slot `k mod N`: the producer
//! waits until the consumer has released frame `k - N`, writes the frame in place, stamps it and
//! signals; the consumer waits for the signal, checks every word of the frame, and releases the
//! slot. Nothing is copied between the processes: both touch the same memory.
//!
//! How the two sides signal each other is a [`RingSignal`]. On CPU machines it is a pair of
//! counters in the shared control block, waited on with a short spin and then a process-shared
//! futex ([`HostCounters`]). Where the GPU driver exports Vulkan timeline semaphores as opaque fds,
//! the producer can share two of them instead ([`TimelineSemaphores`]): `ring.filled` reaches
//! `k + 1` once frame `k` is in its slot, `ring.released` reaches `k + 1` once the consumer is done
//! with it. Both sides wait on the host (`vkWaitSemaphores` with a timeout): the slots are host
//! memory that the CPU writes and reads, so there is no device work to order. A GPU consumer
//! (a Vulkan queue, a CUDA stream) that imports the same semaphores can wait for `ring.filled` on
//! the device and signal `ring.released` there; the values mean the same.
//!
//! Control block layout (little endian, one 4096-byte sealed memfd, `ring.control`):
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `LVFRING1` |
//! | 8 | u32 version (1) |
//! | 12 | u32 slot count |
//! | 16 | u64 slot size in bytes |
//! | 24 | u64 frames planned (0: until stopped) |
//! | 32 | u32 signal: 0 host counters, 1 timeline semaphores (`ring.filled`, `ring.released`) |
//! | 64 | u64 frames published; 72: u32 futex word; 76: u32 consumer sleeping |
//! | 128 | u64 frames released; 136: u32 futex word; 140: u32 producer sleeping |
//! | 192 | u32 flags: 1 consumer attached, 2 producer finished, 4 consumer stopped, 8 failed |
//! | 256 + 64 i | slot i: u64 frame index, u64 publish time (`CLOCK_MONOTONIC` ns) |
//!
//! With timeline semaphores the counters at 64 and 128 still follow the semaphores' values
//! (each is stored after its semaphore is signalled), so the control block shows progress
//! either way; the futex words are then unused.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raw_gpu_handle::{ExportedSemaphore, SemaphoreHandleKind, SemaphoreKind};

use super::object::NamedObject;
use super::shm;
use super::{Client, Server, ServerConfig};
use crate::vulkan::sync::{semaphore_capabilities, Semaphore};
use crate::{Error, Result, SharedHostMemory, VulkanContext};

const MAGIC: u64 = u64::from_le_bytes(*b"LVFRING1");
const VERSION: u32 = 1;
const CONTROL_LEN: usize = 4096;
const SIGNAL_KIND: usize = 32;
const PUBLISHED: usize = 64;
const PUBLISHED_SEQ: usize = 72;
const CONSUMER_SLEEPING: usize = 76;
const RELEASED: usize = 128;
const RELEASED_SEQ: usize = 136;
const PRODUCER_SLEEPING: usize = 140;
const FLAGS: usize = 192;
const SLOT_META: usize = 256;
const SLOT_META_STRIDE: usize = 64;

const FLAG_ATTACHED: u32 = 1;
const FLAG_FINISHED: u32 = 2;
const FLAG_STOPPED: u32 = 4;
const FLAG_FAILED: u32 = 8;

/// Control block value at offset 32: the ring is signalled through its counters.
const SIGNAL_HOST_COUNTERS: u32 = 0;
/// Control block value at offset 32: the ring is signalled through `ring.filled` and `ring.released`.
const SIGNAL_TIMELINE: u32 = 1;

/// Most slots a ring may have.
pub const MAX_SLOTS: u32 = 32;

/// The name the control block is shared under.
pub const CONTROL_NAME: &str = "ring.control";
/// The name the "frames filled" timeline semaphore is shared under (timeline rings).
pub const FILLED_NAME: &str = "ring.filled";
/// The name the "frames released" timeline semaphore is shared under (timeline rings).
pub const RELEASED_NAME: &str = "ring.released";

/// The name slot `i` is shared under.
pub fn slot_name(i: u32) -> String {
    format!("ring.slot.{i}")
}

/// Which mechanism signals frames and free slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RingSync {
    /// Producer: timeline semaphores where the default Vulkan device exports and imports them
    /// as opaque fds, else host counters. Consumer: whatever the producer chose.
    #[default]
    Auto,
    /// Counters in shared host memory with a futex wait.
    HostCounters,
    /// Vulkan timeline semaphores exported by the producer, imported by the consumer
    /// ([`TimelineSemaphores`]); an error where the driver cannot share them.
    TimelineSemaphore,
}

/// What a producer or consumer does.
#[derive(Clone, Debug)]
pub struct RingConfig {
    /// The socket the producer serves the ring on and the consumer connects to.
    pub socket: PathBuf,
    /// Number of slots N (producer; the consumer reads it from the control block).
    pub slots: u32,
    /// Bytes per slot, a multiple of 8 (producer).
    pub slot_size: usize,
    /// Frames to pass; `None` runs until `stop` is set (or, for the consumer, the producer finishes).
    pub frames: Option<u64>,
    /// Set it to end the run early; the other side is told and ends too.
    pub stop: Option<Arc<AtomicBool>>,
    /// The signalling mechanism.
    pub sync: RingSync,
    /// Longest wait for the peer: to attach, for a frame, for a free slot.
    pub timeout: Duration,
    /// The producer's server settings.
    pub server: ServerConfig,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            socket: PathBuf::from("/tmp/lava-flow-ring.sock"),
            slots: 4,
            slot_size: 1 << 20,
            frames: Some(10_000),
            stop: None,
            sync: RingSync::Auto,
            timeout: Duration::from_secs(10),
            server: ServerConfig::default(),
        }
    }
}

/// Hand-off latency percentiles: from the producer's signal to the consumer seeing the frame.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Frames measured.
    pub samples: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
    /// Mean.
    pub mean: Duration,
}

/// What one side of a ring run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RingReport {
    /// "producer" or "consumer".
    pub role: &'static str,
    /// The signalling mechanism used.
    pub sync: String,
    /// Slots in the ring.
    pub slots: u32,
    /// Bytes per slot (and per frame).
    pub slot_size: usize,
    /// Frames produced or consumed (the consumer checked every one).
    pub frames: u64,
    /// From the consumer attaching (or the first frame) to the last frame.
    pub elapsed: Duration,
    /// Frames per second over `elapsed`.
    pub frames_per_second: f64,
    /// Bytes per second over `elapsed`.
    pub bytes_per_second: f64,
    /// Hand-off latency over every frame: from the producer's signal to the consumer taking the
    /// frame, queueing behind earlier frames included (the consumer measures it; `None` for the
    /// producer).
    pub latency: Option<LatencySummary>,
    /// Hand-off latency over the frames the consumer was already waiting for: the cost of the
    /// signal itself (wake-up included), without queueing.
    pub wake_latency: Option<LatencySummary>,
    /// Times the producer found every slot busy and had to wait.
    pub producer_waits: u64,
    /// Why the run ended: "count", "stopped", "peer-stopped", "peer-finished".
    pub ended_by: &'static str,
}

impl std::fmt::Display for RingReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} frames of {} bytes through {} slots ({}) in {:.3} s: {:.0} frames/s, {:.2} GB/s",
            self.role,
            self.frames,
            self.slot_size,
            self.slots,
            self.sync,
            self.elapsed.as_secs_f64(),
            self.frames_per_second,
            self.bytes_per_second / 1e9
        )?;
        if let Some(l) = &self.latency {
            write!(f, "; hand-off latency p50 {:?} p99 {:?} max {:?}", l.p50, l.p99, l.max)?;
        }
        if let Some(l) = &self.wake_latency {
            write!(f, "; waiting consumer ({} frames) p50 {:?} p99 {:?}", l.samples, l.p50, l.p99)?;
        }
        write!(f, "; ended by {}", self.ended_by)
    }
}

/// How the producer and consumer tell each other that frames are ready and slots are free.
///
/// Counts are of frames: `publish(n)` says frames `0..n` are in their slots; `release(n)` says
/// frames `0..n` have been consumed and their slots may be reused.
pub trait RingSignal: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> String;
    /// Producer: frames `0..count` are ready.
    fn publish(&self, count: u64) -> Result<()>;
    /// Consumer: waits until at least `count` frames are ready; returns how many are.
    /// `abort` is polled while waiting; when it returns true the wait ends with `Ok` of the
    /// current count.
    fn wait_published(&self, count: u64, timeout: Duration, abort: &dyn Fn() -> bool) -> Result<u64>;
    /// Consumer: frames `0..count` are consumed.
    fn release(&self, count: u64) -> Result<()>;
    /// Producer: waits until at least `count` frames are released; as `wait_published`.
    fn wait_released(&self, count: u64, timeout: Duration, abort: &dyn Fn() -> bool) -> Result<u64>;
}

/// The CPU [`RingSignal`]: counters in the shared control block; a waiter spins briefly, then
/// sleeps on a process-shared futex that the other side wakes only when someone sleeps.
pub struct HostCounters {
    control: Arc<SharedHostMemory>,
}

struct Counter<'a> {
    value: &'a AtomicU64,
    seq: &'a AtomicU32,
    sleeping: &'a AtomicU32,
}

impl HostCounters {
    /// Signals through `control`, a ring control block.
    pub fn new(control: Arc<SharedHostMemory>) -> HostCounters {
        HostCounters { control }
    }

    fn counter(&self, value: usize, seq: usize, sleeping: usize) -> Result<Counter<'_>> {
        Ok(Counter {
            value: shm::atomic_u64(&self.control, value)?,
            seq: shm::atomic_u32(&self.control, seq)?,
            sleeping: shm::atomic_u32(&self.control, sleeping)?,
        })
    }
}

impl Counter<'_> {
    fn signal(&self, value: u64) {
        self.value.store(value, Ordering::SeqCst);
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) != 0 {
            let _ = rustix::thread::futex::wake(self.seq, rustix::thread::futex::Flags::empty(), u32::MAX);
        }
    }

    fn wait(&self, target: u64, timeout: Duration, what: &str, abort: &dyn Fn() -> bool) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut round = 0u32;
        loop {
            let v = self.value.load(Ordering::Acquire);
            if v >= target || abort() {
                return Ok(v);
            }
            round += 1;
            if round < 256 {
                std::hint::spin_loop();
                continue;
            }
            if round < 320 {
                std::thread::yield_now();
                continue;
            }
            let seen = self.seq.load(Ordering::SeqCst);
            self.sleeping.store(1, Ordering::SeqCst);
            let v = self.value.load(Ordering::SeqCst);
            if v >= target {
                self.sleeping.store(0, Ordering::SeqCst);
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                self.sleeping.store(0, Ordering::SeqCst);
                return Err(Error::Timeout { action: what.to_owned(), timeout });
            }
            // Sleep in short slices so `abort` and the deadline are looked at.
            let slice = (deadline - now).min(Duration::from_millis(10));
            let ts = rustix::thread::futex::Timespec { tv_sec: 0, tv_nsec: slice.subsec_nanos() as _ };
            let _ = rustix::thread::futex::wait(self.seq, rustix::thread::futex::Flags::empty(), seen, Some(&ts));
            self.sleeping.store(0, Ordering::SeqCst);
        }
    }
}

impl RingSignal for HostCounters {
    fn name(&self) -> String {
        "host counters + futex".into()
    }
    fn publish(&self, count: u64) -> Result<()> {
        self.counter(PUBLISHED, PUBLISHED_SEQ, CONSUMER_SLEEPING)?.signal(count);
        Ok(())
    }
    fn wait_published(&self, count: u64, timeout: Duration, abort: &dyn Fn() -> bool) -> Result<u64> {
        let what = format!("waiting for the producer to publish frame {}", count.saturating_sub(1));
        self.counter(PUBLISHED, PUBLISHED_SEQ, CONSUMER_SLEEPING)?.wait(count, timeout, &what, abort)
    }
    fn release(&self, count: u64) -> Result<()> {
        self.counter(RELEASED, RELEASED_SEQ, PRODUCER_SLEEPING)?.signal(count);
        Ok(())
    }
    fn wait_released(&self, count: u64, timeout: Duration, abort: &dyn Fn() -> bool) -> Result<u64> {
        let what = format!("waiting for the consumer to release frame {}", count.saturating_sub(1));
        self.counter(RELEASED, RELEASED_SEQ, PRODUCER_SLEEPING)?.wait(count, timeout, &what, abort)
    }
}

/// The [`RingSignal`] over Vulkan timeline semaphores: `filled` counts frames published,
/// `released` frames consumed. The producer creates and exports both; the consumer imports them.
/// Each side signals one of them from the host after it wrote or read a slot, and waits on the
/// other from the host, in short slices so that stop flags are looked at.
pub struct TimelineSemaphores {
    filled: Semaphore,
    released: Semaphore,
    control: Arc<SharedHostMemory>,
    /// The last values signalled from this side, so that a repeated count is not signalled
    /// twice (timeline values only grow).
    last_filled: AtomicU64,
    last_released: AtomicU64,
}

/// Opens the default Vulkan device and checks that it exports and imports timeline semaphores
/// as opaque fds; else the capability query's answer as [`Error::Unsupported`].
fn timeline_context() -> Result<VulkanContext> {
    let ctx = VulkanContext::new()?;
    let caps = semaphore_capabilities(&ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd);
    caps.require_export()?;
    caps.require_import()?;
    Ok(ctx)
}

impl TimelineSemaphores {
    /// The producer's side: two exportable timeline semaphores on `ctx`, both at 0. `control` is
    /// the ring's control block, whose counters follow the semaphores.
    pub fn create(ctx: &VulkanContext, control: Arc<SharedHostMemory>) -> Result<TimelineSemaphores> {
        let filled = Semaphore::exportable(ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd)?;
        let released = Semaphore::exportable(ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd)?;
        Ok(Self::from_parts(filled, released, control))
    }

    /// The consumer's side: imports what the producer shared as [`FILLED_NAME`] and
    /// [`RELEASED_NAME`] into the exporter's device (found by its device UUID).
    pub fn import(
        filled: ExportedSemaphore,
        released: ExportedSemaphore,
        control: Arc<SharedHostMemory>,
    ) -> Result<TimelineSemaphores> {
        for s in [&filled, &released] {
            if s.description.kind != SemaphoreKind::Timeline {
                return Err(Error::Protocol {
                    reason: format!(
                        "the ring shares a {:?} semaphore where a timeline one belongs",
                        s.description.kind
                    ),
                    advice: "the producer does not follow the ring protocol".into(),
                });
            }
        }
        let ctx = VulkanContext::with_uuid(filled.description.device.device_uuid)?;
        let filled = Semaphore::import(&ctx, filled)?;
        let released = Semaphore::import(&ctx, released)?;
        Ok(Self::from_parts(filled, released, control))
    }

    fn from_parts(filled: Semaphore, released: Semaphore, control: Arc<SharedHostMemory>) -> TimelineSemaphores {
        TimelineSemaphores {
            filled,
            released,
            control,
            last_filled: AtomicU64::new(0),
            last_released: AtomicU64::new(0),
        }
    }

    /// Fresh exports of both semaphores, to share as [`FILLED_NAME`] and [`RELEASED_NAME`].
    pub fn export(&self) -> Result<(ExportedSemaphore, ExportedSemaphore)> {
        Ok((self.filled.export()?, self.released.export()?))
    }

    /// The "frames filled" semaphore.
    pub fn filled(&self) -> &Semaphore {
        &self.filled
    }

    /// The "frames released" semaphore.
    pub fn released(&self) -> &Semaphore {
        &self.released
    }

    /// Signals `semaphore` to `count` from the host (unless this side already did), then stores
    /// `count` in the control block's counter at `mirror`.
    fn signal(&self, semaphore: &Semaphore, last: &AtomicU64, count: u64, mirror: usize) -> Result<()> {
        // The slot's bytes are written (or read) before the other process can see the signal.
        std::sync::atomic::fence(Ordering::SeqCst);
        if count > last.load(Ordering::Acquire) {
            semaphore.signal(count)?;
            last.store(count, Ordering::Release);
        }
        shm::atomic_u64(&self.control, mirror)?.store(count, Ordering::SeqCst);
        Ok(())
    }

    /// Waits on the host until `semaphore` reaches `count`, `abort` says stop, or `timeout`
    /// passes; returns the value reached.
    fn wait(semaphore: &Semaphore, count: u64, timeout: Duration, what: &str, abort: &dyn Fn() -> bool) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = semaphore.value()?;
            if value >= count || abort() {
                // What the other side wrote before its signal is visible after it.
                std::sync::atomic::fence(Ordering::SeqCst);
                return Ok(value);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout { action: what.to_owned(), timeout });
            }
            match semaphore.wait(count, (deadline - now).min(Duration::from_millis(10))) {
                Ok(()) | Err(Error::Timeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl RingSignal for TimelineSemaphores {
    fn name(&self) -> String {
        format!("Vulkan timeline semaphores on {}", self.filled.context().info().name)
    }
    fn publish(&self, count: u64) -> Result<()> {
        self.signal(&self.filled, &self.last_filled, count, PUBLISHED)
    }
    fn wait_published(&self, count: u64, timeout: Duration, abort: &dyn Fn() -> bool) -> Result<u64> {
        let what = format!("waiting for the producer to fill frame {} (ring.filled)", count.saturating_sub(1));
        Self::wait(&self.filled, count, timeout, &what, abort)
    }
    fn release(&self, count: u64) -> Result<()> {
        self.signal(&self.released, &self.last_released, count, RELEASED)
    }
    fn wait_released(&self, count: u64, timeout: Duration, abort: &dyn Fn() -> bool) -> Result<u64> {
        let what = format!("waiting for the consumer to release frame {} (ring.released)", count.saturating_sub(1));
        Self::wait(&self.released, count, timeout, &what, abort)
    }
}

/// Whether this build and machine can signal a ring with `sync`: `Ok` or the reason it cannot
/// (an error for which [`Error::is_unavailable`] holds: no Vulkan, or a driver whose capability
/// query rules out sharing timeline semaphores).
pub fn check_sync(sync: RingSync) -> Result<()> {
    match sync {
        RingSync::Auto | RingSync::HostCounters => Ok(()),
        RingSync::TimelineSemaphore => timeline_context().map(|_| ()),
    }
}

/// The producer's choice: the device to create timeline semaphores on, or `None` for host
/// counters.
fn producer_sync(sync: RingSync) -> Result<Option<VulkanContext>> {
    match sync {
        RingSync::HostCounters => Ok(None),
        RingSync::TimelineSemaphore => timeline_context().map(Some),
        RingSync::Auto => Ok(timeline_context().ok()),
    }
}

/// The consumer's signal: what the producer chose (control block offset 32), checked against
/// what `sync` asks for.
fn consumer_signal(
    sync: RingSync,
    kind: u32,
    semaphores: Option<(ExportedSemaphore, ExportedSemaphore)>,
    control: &Arc<SharedHostMemory>,
) -> Result<Box<dyn RingSignal>> {
    let mismatch = |producer: &str, asked: &str| {
        Err(Error::invalid(
            "ring signal",
            format!("the producer signals with {producer}, and {asked} were asked for"),
            "consume with RingSync::Auto (`--sync auto`), which follows the producer",
        ))
    };
    match (kind, sync, semaphores) {
        (SIGNAL_HOST_COUNTERS, RingSync::TimelineSemaphore, _) => mismatch("host counters", "timeline semaphores"),
        (SIGNAL_HOST_COUNTERS, _, _) => Ok(Box::new(HostCounters::new(control.clone()))),
        (SIGNAL_TIMELINE, RingSync::HostCounters, _) => mismatch("timeline semaphores", "host counters"),
        (SIGNAL_TIMELINE, _, Some((filled, released))) => {
            Ok(Box::new(TimelineSemaphores::import(filled, released, control.clone())?))
        }
        (SIGNAL_TIMELINE, _, None) => Err(Error::Protocol {
            reason: format!(
                "the control block names timeline semaphores but {FILLED_NAME} or {RELEASED_NAME} is missing"
            ),
            advice: "the producer does not follow the ring protocol".into(),
        }),
        (other, _, _) => Err(Error::Protocol {
            reason: format!("the control block names signal mechanism {other}, which this lava-flow does not know"),
            advice: "use the same lava-flow version on both sides".into(),
        }),
    }
}

/// Monotonic nanoseconds, comparable between processes on one machine.
fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(t.tv_nsec as u64)
}

/// Word `j` of frame `k`: differs for every frame and every position, so a stale, torn or
/// misplaced frame is caught.
pub fn frame_word(k: u64, j: usize) -> u64 {
    k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (j as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ 0x5555
}

/// Fills `slot` with frame `k`. The slot's words are shared with the other process, so they are
/// atomics, stored with relaxed ordering: the hand-off's release (the counter or semaphore signal)
/// orders them.
pub fn write_frame(slot: &[AtomicU64], k: u64) {
    for (j, w) in slot.iter().enumerate() {
        w.store(frame_word(k, j), Ordering::Relaxed);
    }
}

/// Checks that `slot` holds frame `k`, naming the first wrong word. Loads are relaxed: the
/// hand-off's acquire (the wait for the signal) orders them after the producer's stores.
pub fn check_frame(slot: &[AtomicU64], k: u64) -> Result<()> {
    match slot.iter().map(|w| w.load(Ordering::Relaxed)).enumerate().find(|(j, w)| *w != frame_word(k, *j)) {
        None => Ok(()),
        Some((j, w)) => Err(Error::Protocol {
            reason: format!("frame {k}: word {j} is {w:#018x}, expected {:#018x}", frame_word(k, j)),
            advice: "the producer overwrote a slot the consumer had not released, or the memory is not shared".into(),
        }),
    }
}

struct Mapped {
    control: Arc<SharedHostMemory>,
    slots: Vec<SharedHostMemory>,
    slot_len: usize,
}

impl Mapped {
    fn flags(&self) -> &AtomicU32 {
        shm::atomic_u32(&self.control, FLAGS).expect("FLAGS is inside the control block")
    }
    fn meta(&self, slot: usize) -> (&AtomicU64, &AtomicU64) {
        let at = SLOT_META + slot * SLOT_META_STRIDE;
        (
            shm::atomic_u64(&self.control, at).expect("slot metadata is inside the control block"),
            shm::atomic_u64(&self.control, at + 8).expect("slot metadata is inside the control block"),
        )
    }
    /// The slot's words, as atomics: the other process writes them too (the producer before it
    /// publishes a frame, and a faulty or hostile peer at any time), so this process never holds
    /// a `&[u64]` or `&mut [u64]` over them. The ring protocol decides who writes when; a peer
    /// that breaks it makes `check_frame` fail, never this process misbehave.
    fn words(&self, slot: usize) -> &[AtomicU64] {
        shm::atomic_u64_slice(&self.slots[slot], 0, self.slot_len / 8)
            .expect("slots are mapped with at least slot_len bytes, a multiple of 8")
    }
}

fn stopped(stop: &Option<Arc<AtomicBool>>) -> bool {
    stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
}

/// Checks a producer's settings before anything is allocated: the slot count and size, a way
/// for the run to end, and that the ring's shared memory (slots times slot size, and the control
/// block) fits in the host memory this process can still get ([`crate::limits`]). `run_producer`
/// calls it first; a caller that starts a consumer process beside the producer calls it before.
pub fn check_producer_config(config: &RingConfig) -> Result<()> {
    if config.slots == 0 || config.slots > MAX_SLOTS {
        return Err(Error::invalid(
            "ring slot count",
            format!("{} is not in 1..={MAX_SLOTS}", config.slots),
            "choose between 1 and 32 slots",
        ));
    }
    if config.slot_size < 8 || config.slot_size % 8 != 0 {
        return Err(Error::invalid(
            "ring slot size",
            format!("{} bytes is not a positive multiple of 8", config.slot_size),
            "use a multiple of 8 bytes",
        ));
    }
    let total = u64::from(config.slots)
        .checked_mul(config.slot_size as u64)
        .and_then(|t| t.checked_add(CONTROL_LEN as u64))
        .unwrap_or(u64::MAX);
    crate::limits::check_host_memory(
        &format!("a ring of {} slots of {} bytes", config.slots, config.slot_size),
        total,
        "use fewer or smaller slots (the ring's memory is shared host memory, charged to RAM as it is written)",
    )?;
    if config.frames.is_none() && config.stop.is_none() {
        return Err(Error::invalid(
            "ring run length",
            "neither a frame count nor a stop flag was given, so the run could never end",
            "give frames or a stop flag",
        ));
    }
    Ok(())
}

/// Runs the producer: creates and serves the ring at `config.socket`, waits for a consumer, then
/// produces frames until the count is reached, `stop` is set or the consumer stops. Settings that
/// cannot work, a ring larger than the host memory this process can get included, are refused
/// before anything is allocated ([`check_producer_config`]).
pub fn run_producer(config: &RingConfig) -> Result<RingReport> {
    check_producer_config(config)?;
    let timeline = producer_sync(config.sync)?;
    let mut control = shm::create(CONTROL_LEN)?;
    let slots = (0..config.slots).map(|_| shm::create(config.slot_size)).collect::<Result<Vec<_>>>()?;
    let mut header = [0u8; SIGNAL_KIND + 4];
    header[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&config.slots.to_le_bytes());
    header[16..24].copy_from_slice(&(config.slot_size as u64).to_le_bytes());
    header[24..32].copy_from_slice(&config.frames.unwrap_or(0).to_le_bytes());
    let kind = if timeline.is_some() { SIGNAL_TIMELINE } else { SIGNAL_HOST_COUNTERS };
    header[SIGNAL_KIND..SIGNAL_KIND + 4].copy_from_slice(&kind.to_le_bytes());
    // Written before the control block is shared with anyone.
    control.write(0, &header)?;
    let ring = Mapped { control: Arc::new(control), slots, slot_len: config.slot_size };
    let mut shared_semaphores = Vec::new();
    let signal: Box<dyn RingSignal> = match &timeline {
        Some(ctx) => {
            let semaphores = TimelineSemaphores::create(ctx, ring.control.clone())?;
            let (filled, released) = semaphores.export()?;
            shared_semaphores.push(NamedObject::new(FILLED_NAME, filled));
            shared_semaphores.push(NamedObject::new(RELEASED_NAME, released));
            Box::new(semaphores)
        }
        None => Box::new(HostCounters::new(ring.control.clone())),
    };

    let server = Server::bind(&config.socket, config.server.clone())?;
    server.publish(NamedObject::new(CONTROL_NAME, shm::export(&ring.control)?))?;
    for (i, s) in ring.slots.iter().enumerate() {
        server.publish(NamedObject::new(slot_name(i as u32), shm::export(s)?))?;
    }
    for semaphore in shared_semaphores {
        server.publish(semaphore)?;
    }
    let flags = ring.flags();
    let attach_deadline = Instant::now() + config.timeout;
    while flags.load(Ordering::Acquire) & FLAG_ATTACHED == 0 {
        if flags.load(Ordering::Acquire) & FLAG_FAILED != 0 {
            return Err(Error::Protocol {
                reason: format!("the consumer at {} could not set up its side of the ring", config.socket.display()),
                advice: "see the consumer's error".into(),
            });
        }
        if stopped(&config.stop) {
            return Ok(report("producer", &*signal, config, 0, Duration::ZERO, None, 0, "stopped"));
        }
        if Instant::now() >= attach_deadline {
            return Err(Error::Timeout {
                action: format!("waiting for a ring consumer on {}", config.socket.display()),
                timeout: config.timeout,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(server);

    let n = u64::from(config.slots);
    let peer_stopped = || flags.load(Ordering::Acquire) & (FLAG_STOPPED | FLAG_FAILED) != 0;
    let abort = || peer_stopped() || stopped(&config.stop);
    let start = Instant::now();
    let mut k = 0u64;
    let mut waits = 0u64;
    let ended_by = loop {
        if config.frames.is_some_and(|f| k >= f) {
            break "count";
        }
        if stopped(&config.stop) {
            break "stopped";
        }
        if peer_stopped() {
            break "peer-stopped";
        }
        if k >= n {
            let need = k - n + 1;
            let mut released = shm::atomic_u64(&ring.control, RELEASED)?.load(Ordering::Acquire);
            if released < need {
                waits += 1;
                released = signal.wait_released(need, config.timeout, &abort)?;
            }
            if released < need {
                break if peer_stopped() { "peer-stopped" } else { "stopped" };
            }
        }
        let slot = (k % n) as usize;
        // Frame k - N was released, so the consumer no longer reads this slot, and it will not
        // before `publish` below.
        write_frame(ring.words(slot), k);
        let (frame, stamp) = ring.meta(slot);
        frame.store(k, Ordering::Relaxed);
        stamp.store(now_ns(), Ordering::Relaxed);
        signal.publish(k + 1)?;
        k += 1;
    };
    flags.fetch_or(FLAG_FINISHED, Ordering::SeqCst);
    // Wake a consumer asleep waiting for a frame that will not come.
    signal.publish(k)?;
    // Let the consumer drain what was published, so the figures cover whole hand-offs.
    if ended_by == "count" || ended_by == "stopped" {
        let _ = signal.wait_released(k, config.timeout, &peer_stopped);
    }
    let elapsed = start.elapsed();
    Ok(report("producer", &*signal, config, k, elapsed, None, waits, ended_by))
}

#[allow(clippy::too_many_arguments)]
fn report(
    role: &'static str,
    signal: &dyn RingSignal,
    config: &RingConfig,
    frames: u64,
    elapsed: Duration,
    latency: Option<(LatencySummary, Option<LatencySummary>)>,
    producer_waits: u64,
    ended_by: &'static str,
) -> RingReport {
    let secs = elapsed.as_secs_f64().max(1e-9);
    RingReport {
        role,
        sync: signal.name(),
        slots: config.slots,
        slot_size: config.slot_size,
        frames,
        elapsed,
        frames_per_second: frames as f64 / secs,
        bytes_per_second: frames as f64 * config.slot_size as f64 / secs,
        latency: latency.map(|l| l.0),
        wake_latency: latency.and_then(|l| l.1),
        producer_waits,
        ended_by,
    }
}

/// What a consumer attaches to: the mapped ring, the control block's signal kind, and the
/// timeline semaphores where the producer shared them.
type Attached = (Mapped, u32, Option<(ExportedSemaphore, ExportedSemaphore)>);

fn attach_ring(config: &RingConfig) -> Result<Attached> {
    let client = Client::connect_with_timeout(&config.socket, config.timeout)?;
    let mut objects = client.get_all()?;
    let bad = |reason: String| Error::Protocol {
        reason,
        advice: format!("the server at {} is not a lava-flow ring producer", config.socket.display()),
    };
    let take = |objects: &mut Vec<NamedObject>, name: &str| -> Result<raw_gpu_handle::ExportedMemory> {
        let i = objects.iter().position(|o| o.name == name).ok_or_else(|| bad(format!("no object named {name}")))?;
        raw_gpu_handle::ExportedMemory::try_from(objects.swap_remove(i).object)
            .map_err(|e| bad(format!("{name} is a {}, not memory", e.object.kind_name())))
    };
    let control = shm::map_sealed(take(&mut objects, CONTROL_NAME)?.handle, CONTROL_LEN as u64)?;
    // A copy: the producer could still be writing the control block (it must not, but a copy
    // cannot be broken by it).
    let header = control.read(0, SIGNAL_KIND + 4)?;
    let magic = u64::from_le_bytes(header[0..8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let slot_count = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    let slot_size = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    if magic != MAGIC || version != VERSION {
        return Err(bad(format!("control block magic {magic:#x} version {version}")));
    }
    if slot_count == 0 || slot_count > MAX_SLOTS || slot_size == 0 || slot_size % 8 != 0 {
        return Err(bad(format!("{slot_count} slots of {slot_size} bytes")));
    }
    let slot_size = usize::try_from(slot_size).map_err(|_| bad("slot size exceeds the address space".into()))?;
    let slots = (0..slot_count)
        .map(|i| shm::map_sealed(take(&mut objects, &slot_name(i))?.handle, slot_size as u64))
        .collect::<Result<Vec<_>>>()?;
    let signal_kind = u32::from_le_bytes(header[SIGNAL_KIND..SIGNAL_KIND + 4].try_into().expect("4 bytes"));
    let mut take_semaphore = |name: &str| -> Option<ExportedSemaphore> {
        let i = objects.iter().position(|o| o.name == name)?;
        ExportedSemaphore::try_from(objects.swap_remove(i).object).ok()
    };
    let semaphores = match (take_semaphore(FILLED_NAME), take_semaphore(RELEASED_NAME)) {
        (Some(filled), Some(released)) => Some((filled, released)),
        _ => None,
    };
    Ok((Mapped { control: Arc::new(control), slots, slot_len: slot_size }, signal_kind, semaphores))
}

/// Keeps at most `CAP` latency samples (reservoir sampling beyond that) for the percentiles.
struct Latencies {
    samples: Vec<u64>,
    seen: u64,
    sum: u128,
    max: u64,
    rng: u64,
}

impl Latencies {
    const CAP: usize = 1 << 21;

    fn new() -> Self {
        Latencies { samples: Vec::new(), seen: 0, sum: 0, max: 0, rng: 0x2545_F491_4F6C_DD1D }
    }

    fn add(&mut self, ns: u64) {
        self.seen += 1;
        self.sum += u128::from(ns);
        self.max = self.max.max(ns);
        if self.samples.len() < Self::CAP {
            self.samples.push(ns);
        } else {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let i = self.rng % self.seen;
            if (i as usize) < Self::CAP {
                self.samples[i as usize] = ns;
            }
        }
    }

    fn summary(mut self) -> Option<LatencySummary> {
        if self.samples.is_empty() {
            return None;
        }
        self.samples.sort_unstable();
        let at = |q: f64| {
            let i = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
            Duration::from_nanos(self.samples[i])
        };
        Some(LatencySummary {
            samples: self.seen,
            p50: at(0.50),
            p99: at(0.99),
            max: Duration::from_nanos(self.max),
            mean: Duration::from_nanos((self.sum / u128::from(self.seen)) as u64),
        })
    }
}

/// Runs the consumer: attaches to the ring at `config.socket` and consumes frames, checking each
/// one completely, until the producer finishes, the count is reached or `stop` is set.
pub fn run_consumer(config: &RingConfig) -> Result<RingReport> {
    let (ring, signal_kind, semaphores) = attach_ring(config)?;
    let flags = ring.flags();
    let signal = match consumer_signal(config.sync, signal_kind, semaphores, &ring.control) {
        Ok(signal) => signal,
        Err(e) => {
            // Tell the producer, which would otherwise wait for a consumer until its timeout
            // (unless another consumer already runs, which this one must not stop).
            if flags.load(Ordering::Acquire) & FLAG_ATTACHED == 0 {
                flags.fetch_or(FLAG_FAILED, Ordering::SeqCst);
            }
            return Err(e);
        }
    };
    let n = ring.slots.len() as u64;
    let slot_size = ring.slot_len;
    if flags.fetch_or(FLAG_ATTACHED, Ordering::SeqCst) & FLAG_ATTACHED != 0 {
        return Err(Error::Protocol {
            reason: format!("the ring at {} already has a consumer", config.socket.display()),
            advice: "a ring has one producer and one consumer: start another producer".into(),
        });
    }
    let finished = || flags.load(Ordering::Acquire) & FLAG_FINISHED != 0;
    let abort = || finished() || stopped(&config.stop);
    let published = shm::atomic_u64(&ring.control, PUBLISHED)?;
    let mut latencies = Latencies::new();
    let mut wake_latencies = Latencies::new();
    let start = Instant::now();
    let mut k = 0u64;
    let result = (|| {
        loop {
            if config.frames.is_some_and(|f| k >= f) {
                return Ok("count");
            }
            if stopped(&config.stop) {
                return Ok("stopped");
            }
            let queued = published.load(Ordering::Acquire) > k;
            let available = signal.wait_published(k + 1, config.timeout, &abort)?;
            let seen_at = now_ns();
            if available <= k {
                // Woken by the producer finishing or our stop flag: take what was published last.
                if published.load(Ordering::Acquire) > k {
                    continue;
                }
                return Ok(if finished() { "peer-finished" } else { "stopped" });
            }
            let slot = (k % n) as usize;
            let (frame, stamp) = ring.meta(slot);
            let (frame, stamp) = (frame.load(Ordering::Relaxed), stamp.load(Ordering::Relaxed));
            if frame != k {
                return Err(Error::Protocol {
                    reason: format!("slot {slot} holds frame {frame}, expected frame {k}"),
                    advice: "the producer does not follow the ring protocol".into(),
                });
            }
            latencies.add(seen_at.saturating_sub(stamp));
            if !queued {
                wake_latencies.add(seen_at.saturating_sub(stamp));
            }
            // Frame k is published and not yet released: the producer will not write this slot
            // until `release` below.
            check_frame(ring.words(slot), k)?;
            signal.release(k + 1)?;
            k += 1;
        }
    })();
    let elapsed = start.elapsed();
    match result {
        Ok(ended_by) => {
            if ended_by != "peer-finished" {
                flags.fetch_or(FLAG_STOPPED, Ordering::SeqCst);
                // Wake a producer asleep waiting for a slot.
                signal.release(k)?;
            }
            let config = RingConfig { slots: n as u32, slot_size, ..config.clone() };
            let latency = latencies.summary().map(|all| (all, wake_latencies.summary()));
            Ok(report("consumer", &*signal, &config, k, elapsed, latency, 0, ended_by))
        }
        Err(e) => {
            flags.fetch_or(FLAG_FAILED, Ordering::SeqCst);
            let _ = signal.release(k);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_word_is_caught() {
        let slot: Vec<AtomicU64> = (0..1024).map(|_| AtomicU64::new(0)).collect();
        write_frame(&slot, 41);
        check_frame(&slot, 41).unwrap();
        assert!(check_frame(&slot, 42).is_err(), "a stale frame passes");
        slot[777].fetch_xor(1, Ordering::Relaxed);
        let e = check_frame(&slot, 41).unwrap_err().to_string();
        assert!(e.contains("word 777"), "{e}");
    }

    /// The timeline signal's counting, waiting, aborting and timing out, on semaphores that stay
    /// on one device (every Vulkan 1.2 driver has those); sharing them is tested across
    /// processes in tests/ipc_ring.rs where the driver exports them.
    #[test]
    fn timeline_signal_hands_counts_between_threads() {
        // The skip helper's `or_skip` takes lava-flow's error as lava-flow-diag links it, another
        // instance of this crate than the one under unit test: its `skip` takes any reason.
        let ctx = match VulkanContext::new() {
            Ok(ctx) => ctx,
            Err(e) if e.is_unavailable() => return lava_flow_diag::testing::skip("vulkan", e),
            Err(e) => panic!("vulkan: {e}"),
        };
        let control = Arc::new(shm::create(CONTROL_LEN).unwrap());
        let signal = Arc::new(TimelineSemaphores::from_parts(
            Semaphore::new(&ctx).unwrap(),
            Semaphore::new(&ctx).unwrap(),
            control.clone(),
        ));
        let short = Duration::from_millis(30);
        let e = signal.wait_published(1, short, &|| false).unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }) && e.to_string().contains("ring.filled"), "{e}");
        assert_eq!(signal.wait_released(1, Duration::from_secs(10), &|| true).unwrap(), 0, "abort ends the wait");

        const FRAMES: u64 = 500;
        const SLOTS: u64 = 4;
        let producer = {
            let signal = signal.clone();
            std::thread::spawn(move || {
                for k in 0..FRAMES {
                    if k >= SLOTS {
                        assert!(
                            signal.wait_released(k - SLOTS + 1, Duration::from_secs(10), &|| false).unwrap()
                                > k - SLOTS
                        );
                    }
                    signal.publish(k + 1).unwrap();
                }
                // A repeated count (the producer's final wake-up) is not signalled again.
                signal.publish(FRAMES).unwrap();
            })
        };
        for k in 0..FRAMES {
            let available = signal.wait_published(k + 1, Duration::from_secs(10), &|| false).unwrap();
            assert!(available > k && available <= (k + SLOTS).min(FRAMES), "frame {k}: {available} published");
            signal.release(k + 1).unwrap();
        }
        producer.join().unwrap();
        assert_eq!(signal.filled().value().unwrap(), FRAMES);
        assert_eq!(signal.released().value().unwrap(), FRAMES);
        let counter = |at| shm::atomic_u64(&control, at).unwrap().load(Ordering::SeqCst);
        assert_eq!((counter(PUBLISHED), counter(RELEASED)), (FRAMES, FRAMES), "the control block follows");
        ctx.check_deferred().unwrap();
    }

    #[test]
    fn percentiles_come_from_the_samples() {
        let mut l = Latencies::new();
        for ns in 1..=1000 {
            l.add(ns * 1000);
        }
        let s = l.summary().unwrap();
        assert_eq!(s.samples, 1000);
        assert_eq!(s.p50, Duration::from_micros(501));
        assert_eq!(s.p99, Duration::from_micros(990));
        assert_eq!(s.max, Duration::from_millis(1));
    }
}
