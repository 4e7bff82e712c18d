//! Semaphore and fence paths: GPU work on a shared buffer ordered by semaphores and fences that
//! one Vulkan device exports and a second device (or a second process) imports.
//!
//! The turn-taking paths share one device-local buffer between side A (the exporter) and side B.
//! In round `r`, A waits on the device for B's previous turn, copies the buffer to a readback
//! buffer, fills it with A's pattern for round `r`, and signals; B waits for that, copies, fills
//! its own pattern and signals. Every turn acquires the buffer from and releases it to
//! `VK_QUEUE_FAMILY_EXTERNAL`. The host checks after every round what each side read: B must
//! see A's round `r`, A must see B's round `r - 1`; without the semaphore's ordering a side reads
//! a stale or half-written buffer.
//!
//! Paths needing what `LAVA_FLOW_REQUIRE=semaphores` requires (timeline and binary semaphores and
//! fences as opaque fds) are listed as `semaphores`: where the capability query says no, they are
//! skipped with its answer, or fail when semaphores are required. Sync fds are optional in Vulkan
//! (a driver may share opaque fds only), so their paths are listed as `vulkan` and stay skipped
//! where the query says no.

use std::os::fd::OwnedFd;
use std::process::Child;
use std::time::{Duration, Instant};

use ash::vk;
use lava_flow::raw_gpu_handle::{
    BufferDescription, ExportedBuffer, ExportedSemaphore, FenceHandleKind, MemoryDescription, MemoryHandle,
    SemaphoreDescription, SemaphoreHandleKind, SemaphoreKind,
};
use lava_flow::vulkan::sync::{
    ping_pong, Fence, OwnershipTransfer, RecordedCommands, Semaphore, StageAccess, Submission, SyncCapabilities, Turn,
};
use lava_flow::{Buffer, BufferOptions, Error, VulkanContext};

use lava_flow_diag::turns::{
    self, acquire_and_copy, initialize_shared, read_words, readback, reader_pattern, record_turn, writer_pattern,
    wrong_words,
};

use super::peer::{start_peer, wait_peer, Shared};
use super::{fail, PathError, Runner, Step};

/// Bytes of the shared buffer.
const SIZE: u64 = 1 << 20;
/// Turns each side takes on the timeline paths.
const ROUNDS: u64 = 64;
/// Turns each side takes on the binary path.
const BINARY_ROUNDS: u64 = 16;
/// Round trips of the ping-pong path.
const PING_PONG_ROUNDS: u64 = 1000;
/// Longest wait for one turn: long enough for any GPU, short enough that a broken path fails
/// instead of hanging.
const WAIT: Duration = Duration::from_secs(20);

pub const TIMELINE_DEVICES: &str =
    "semaphores: timeline opaque-fd, device A <-> device B, 64 rounds on a shared buffer";
pub const TIMELINE_PROCESSES: &str =
    "semaphores: timeline opaque-fd <-> other process, fds over SCM_RIGHTS, 64 rounds on a shared buffer";
pub const PING_PONG: &str = "semaphores: timeline ping-pong, device A <-> device B, 1000 round trips";
pub const BINARY_DEVICES: &str = "semaphores: binary opaque-fd, device A <-> device B, 16 rounds on a shared buffer";
pub const BINARY_SYNC_FD: &str = "semaphores: binary sync-fd, device A -> device B";
pub const FENCE_OPAQUE: &str = "semaphores: fence opaque-fd, exported by device A, waited on device B";
pub const FENCE_SYNC_FD: &str = "semaphores: fence sync-fd, exported by device A, waited on device B";

/// Every path: what it needs (for `LAVA_FLOW_REQUIRE`), its name, bytes it moves.
const PATHS: [(&str, &str, u64); 7] = [
    ("semaphores", TIMELINE_DEVICES, SIZE),
    ("semaphores", TIMELINE_PROCESSES, SIZE),
    ("semaphores", PING_PONG, 0),
    ("semaphores", BINARY_DEVICES, SIZE),
    ("vulkan", BINARY_SYNC_FD, SIZE),
    ("semaphores", FENCE_OPAQUE, SIZE),
    ("vulkan", FENCE_SYNC_FD, SIZE),
];

pub fn run(runner: &mut Runner) {
    if !runner.wants_any(PATHS.map(|(_, path, _)| path)) {
        return;
    }
    let pair = VulkanContext::new().and_then(|a| VulkanContext::with_index(a.info().index).map(|b| (a, b)));
    let (a, b) = match pair {
        Ok(p) => p,
        Err(e) => {
            for (api, path, size) in PATHS {
                runner.skip(api, path, size, e.to_string());
            }
            return;
        }
    };
    let caps = SyncCapabilities::query(&a);
    let timeline = || require_semaphore(&caps, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd);
    runner.run_detailed("semaphores", TIMELINE_DEVICES, SIZE, |r| {
        timeline()?;
        timeline_between_devices(&a, &b, r.corrupt(TIMELINE_DEVICES))
    });
    runner.run_detailed("semaphores", TIMELINE_PROCESSES, SIZE, |r| {
        timeline()?;
        timeline_with_process(&a, r.corrupt(TIMELINE_PROCESSES))
    });
    runner.run_detailed("semaphores", PING_PONG, 0, |_| {
        timeline()?;
        ping_pong_between_devices(&a, &b)
    });
    runner.run_detailed("semaphores", BINARY_DEVICES, SIZE, |r| {
        require_semaphore(&caps, SemaphoreKind::Binary, SemaphoreHandleKind::OpaqueFd)?;
        binary_between_devices(&a, &b, r.corrupt(BINARY_DEVICES))
    });
    runner.run_detailed("vulkan", BINARY_SYNC_FD, SIZE, |r| {
        require_semaphore(&caps, SemaphoreKind::Binary, SemaphoreHandleKind::SyncFd)?;
        binary_sync_fd(&a, &b, r.corrupt(BINARY_SYNC_FD))
    });
    runner.run_detailed("semaphores", FENCE_OPAQUE, SIZE, |r| {
        require_fence(&caps, FenceHandleKind::OpaqueFd)?;
        fence_between_devices(&a, &b, FenceHandleKind::OpaqueFd, r.corrupt(FENCE_OPAQUE))
    });
    runner.run_detailed("vulkan", FENCE_SYNC_FD, SIZE, |r| {
        require_fence(&caps, FenceHandleKind::SyncFd)?;
        fence_between_devices(&a, &b, FenceHandleKind::SyncFd, r.corrupt(FENCE_SYNC_FD))
    });
}

/// `Ok` where the device exports and imports semaphores of `kind` as `handle_kind`, else the
/// capability query's answer as an `Unsupported` (a skip, or a failure where required).
fn require_semaphore(caps: &SyncCapabilities, kind: SemaphoreKind, handle_kind: SemaphoreHandleKind) -> Step {
    let c = caps
        .semaphore(kind, handle_kind)
        .ok_or_else(|| PathError::Failed(format!("the capability query has no answer for {kind:?} {handle_kind}")))?;
    c.require_export()?;
    c.require_import()?;
    Ok(())
}

/// As [`require_semaphore`], for fences.
fn require_fence(caps: &SyncCapabilities, handle_kind: FenceHandleKind) -> Step {
    let c = caps
        .fence(handle_kind)
        .ok_or_else(|| PathError::Failed(format!("the capability query has no answer for {handle_kind} fences")))?;
    c.require_export()?;
    c.require_import()?;
    Ok(())
}

/// Checks that every word of `buffer` (host-visible, its writer finished) is `expected`; the
/// error names the first wrong word and how many are wrong.
fn check_words(what: &str, buffer: &Buffer, expected: u32) -> Step {
    match wrong_words(&read_words(buffer)?, expected, what) {
        None => Ok(()),
        Some(message) => fail(message),
    }
}

/// Batches queued on a shared timeline, each waiting for one value and signalling the next.
/// When a path stops early (a timeout, a wrong word, a dead peer), the batches still waiting
/// would block their queue, and dropping a context waits for its queue: `release` plays the
/// missing turns from the host, in order (signalling far ahead at once would make a batch
/// behind signal a value below the current one, which Vulkan forbids).
struct Queued<'a> {
    semaphore: &'a Semaphore,
    turns: Vec<(u64, u64)>,
}

impl<'a> Queued<'a> {
    fn new(semaphore: &'a Semaphore) -> Self {
        Queued { semaphore, turns: Vec::new() }
    }

    fn push(&mut self, wait: u64, signal: u64) {
        self.turns.push((wait, signal));
    }

    /// Forgets the batches that finished (their signal is at or below `reached`).
    fn done_up_to(&mut self, reached: u64) {
        self.turns.retain(|(_, signal)| *signal > reached);
    }

    fn release(&mut self) {
        let mut turns = std::mem::take(&mut self.turns);
        // In value order, whatever order the two sides' batches were submitted in.
        turns.sort_unstable();
        for (wait, signal) in turns {
            let Ok(current) = self.semaphore.value() else { return };
            if current >= signal {
                continue;
            }
            if current < wait && self.semaphore.signal(wait).is_err() {
                return;
            }
            if self.semaphore.wait(signal, Duration::from_secs(2)).is_err() {
                return;
            }
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Submits side A's turn of round `r`: wait for `2r - 2`, signal `2r - 1`.
fn submit_writer_turn(
    ctx: &VulkanContext,
    semaphore: &Semaphore,
    shared: &Buffer,
    readback: &Buffer,
    r: u64,
    queued: &mut Queued<'_>,
) -> Step<RecordedCommands> {
    let cmds = turns::submit_writer_turn(ctx, semaphore, shared, readback, r)?;
    queued.push(2 * r - 2, 2 * r - 1);
    Ok(cmds)
}

/// Submits side B's turn of round `r`: wait for `2r - 1`, signal `2r`.
fn submit_reader_turn(
    ctx: &VulkanContext,
    semaphore: &Semaphore,
    shared: &Buffer,
    readback: &Buffer,
    r: u64,
    corrupt: bool,
    queued: &mut Queued<'_>,
) -> Step<RecordedCommands> {
    let cmds = turns::submit_reader_turn(ctx, semaphore, shared, readback, r, corrupt)?;
    queued.push(2 * r - 1, 2 * r);
    Ok(cmds)
}

/// The round whose turn B spoils under `--corrupt`.
const CORRUPT_ROUND: u64 = ROUNDS / 2;

fn timeline_between_devices(a: &VulkanContext, b: &VulkanContext, corrupt: bool) -> Step<Option<String>> {
    let sem_a = Semaphore::exportable(a, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd)?;
    let sem_b = Semaphore::import(b, sem_a.export()?)?;
    let shared_a = Buffer::new(a, &BufferOptions::new(SIZE))?;
    let shared_b = Buffer::import(b, shared_a.export_fd()?)?;
    let (read_a, read_b) = (readback(a, SIZE)?, readback(b, SIZE)?);
    initialize_shared(a, &shared_a)?;
    let started = Instant::now();
    // `queued` is declared after the command buffers, so on an early return it plays the
    // missing turns before they are dropped (dropping one waits for its batch).
    let mut in_flight = Vec::new();
    let mut queued = Queued::new(&sem_a);
    for r in 1..=ROUNDS {
        // B's batch goes in first, waiting on the device for a value only A's device signals.
        let spoil = corrupt && r == CORRUPT_ROUND;
        in_flight.push(submit_reader_turn(b, &sem_b, &shared_b, &read_b, r, spoil, &mut queued)?);
        in_flight.push(submit_writer_turn(a, &sem_a, &shared_a, &read_a, r, &mut queued)?);
        sem_a.wait(2 * r, WAIT)?;
        queued.done_up_to(2 * r);
        in_flight.clear();
        check_words(&format!("round {r}: what device B read"), &read_b, writer_pattern(r))?;
        check_words(&format!("round {r}: what device A read"), &read_a, reader_pattern(r - 1))?;
    }
    // A's last read: B's final round.
    in_flight.push(submit_writer_turn(a, &sem_a, &shared_a, &read_a, ROUNDS + 1, &mut queued)?);
    sem_a.wait(2 * ROUNDS + 1, WAIT)?;
    queued.done_up_to(2 * ROUNDS + 1);
    in_flight.clear();
    check_words("after the last round: what device A read", &read_a, reader_pattern(ROUNDS))?;
    if sem_b.value()? != 2 * ROUNDS + 1 {
        return fail(format!("device B sees value {} on the shared timeline, A {}", sem_b.value()?, 2 * ROUNDS + 1));
    }
    a.check_deferred()?;
    b.check_deferred()?;
    Ok(Some(format!("{ROUNDS} rounds checked on both sides in {:.1} ms", started.elapsed().as_secs_f64() * 1e3)))
}

/// Kills the peer (started by this path) unless it was handed to [`wait_peer`].
struct PeerGuard(Option<Child>);

impl Drop for PeerGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `value` on the shared timeline in short slices, watching the peer: a peer that
/// exits early ends the wait at once (its report says why) instead of after [`WAIT`].
fn wait_watching(semaphore: &Semaphore, value: u64, peer: &mut PeerGuard) -> Step {
    let deadline = Instant::now() + WAIT;
    loop {
        match semaphore.wait(value, Duration::from_millis(100)) {
            Ok(()) => return Ok(()),
            Err(Error::Timeout { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // A peer that finished its turns successfully may exit before this side's last batch
        // completes: only a failed peer ends the wait.
        if let Some(child) = peer.0.as_mut() {
            if child.try_wait()?.is_some_and(|status| !status.success()) {
                let child = peer.0.take().expect("checked above");
                return match wait_peer(child) {
                    Err(e) => Err(e),
                    Ok(()) => fail(format!("the other process failed before value {value} without saying why")),
                };
            }
        }
        if Instant::now() >= deadline {
            return fail(format!(
                "the shared timeline did not reach {value} in {WAIT:?} (it is at {})",
                semaphore.value().map(|v| v.to_string()).unwrap_or_else(|e| e.to_string())
            ));
        }
    }
}

/// Side A here, side B in another process (`lava-flow __selftest-peer`), which gets the buffer's
/// and the semaphore's fds over SCM_RIGHTS.
fn timeline_with_process(a: &VulkanContext, corrupt: bool) -> Step<Option<String>> {
    let sem = Semaphore::exportable(a, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd)?;
    let shared = Buffer::new(a, &BufferOptions::new(SIZE))?;
    let read = readback(a, SIZE)?;
    initialize_shared(a, &shared)?;
    let exported_sem = sem.export()?;
    let exported_buf = shared.export_fd()?;
    let description = Shared::TimelineRounds {
        memory: exported_buf.memory.description,
        buffer: exported_buf.buffer,
        semaphore: exported_sem.description,
        rounds: ROUNDS,
    };
    let started = Instant::now();
    let (child, sent) = start_peer(description, vec![exported_buf.memory.handle, exported_sem.handle], 0, 0, corrupt)?;
    let mut peer = PeerGuard(Some(child));
    sent?;
    let mut in_flight = Vec::new();
    let mut queued = Queued::new(&sem);
    if let Err(e) = writer_rounds(a, &sem, &shared, &read, &mut peer, &mut in_flight, &mut queued) {
        // Kill the peer first, so that it cannot signal while the host plays its missing turns;
        // then the batches finish and their command buffers can go.
        drop(peer);
        queued.release();
        drop(in_flight);
        return Err(e);
    }
    let child = peer.0.take().expect("the peer is only taken when it stopped early, which is an error");
    wait_peer(child)?;
    a.check_deferred()?;
    Ok(Some(format!("{ROUNDS} rounds checked in both processes in {:.1} ms", started.elapsed().as_secs_f64() * 1e3)))
}

/// Side A's turns against the other process: rounds 1 to `ROUNDS + 1` (the last only reads
/// B's final fill), each checked once A's batch finished.
fn writer_rounds(
    a: &VulkanContext,
    sem: &Semaphore,
    shared: &Buffer,
    read: &Buffer,
    peer: &mut PeerGuard,
    in_flight: &mut Vec<RecordedCommands>,
    queued: &mut Queued<'_>,
) -> Step {
    for r in 1..=ROUNDS + 1 {
        in_flight.push(submit_writer_turn(a, sem, shared, read, r, queued)?);
        wait_watching(sem, 2 * r - 1, peer)?;
        queued.done_up_to(2 * r - 1);
        in_flight.clear();
        check_words(&format!("round {r}: what this process read"), read, reader_pattern(r - 1))?;
    }
    Ok(())
}

/// The other process's side of [`timeline_with_process`]: imports the buffer and the semaphore
/// (fds in that order) into the exporter's device and takes B's turns, checking each.
pub fn peer_side(
    memory: MemoryDescription,
    buffer: BufferDescription,
    semaphore: SemaphoreDescription,
    rounds: u64,
    fds: Vec<OwnedFd>,
    corrupt: bool,
) -> Step {
    let [memory_fd, semaphore_fd]: [OwnedFd; 2] =
        fds.try_into().map_err(|fds: Vec<OwnedFd>| PathError::Failed(format!("expected 2 fds, got {}", fds.len())))?;
    let ctx = VulkanContext::with_uuid(semaphore.device.device_uuid)?;
    let sem = Semaphore::import(&ctx, ExportedSemaphore::new(semaphore_fd, semaphore))?;
    let shared = Buffer::import(&ctx, ExportedBuffer::new(MemoryHandle::new(memory_fd, memory), buffer))?;
    let read = readback(&ctx, shared.size())?;
    let mut in_flight = Vec::new();
    let mut queued = Queued::new(&sem);
    let corrupt_round = rounds / 2;
    for r in 1..=rounds {
        let spoil = corrupt && r == corrupt_round;
        in_flight.push(submit_reader_turn(&ctx, &sem, &shared, &read, r, spoil, &mut queued)?);
        sem.wait(2 * r, WAIT)?;
        queued.done_up_to(2 * r);
        in_flight.clear();
        check_words(&format!("round {r}: what the other process read"), &read, writer_pattern(r))?;
    }
    ctx.check_deferred()?;
    Ok(())
}

fn ping_pong_between_devices(a: &VulkanContext, b: &VulkanContext) -> Step<Option<String>> {
    let sem_a = Semaphore::exportable(a, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd)?;
    let sem_b = Semaphore::import(b, sem_a.export()?)?;
    let (first, second) = std::thread::scope(|s| {
        let second = s.spawn(|| ping_pong(&sem_b, Turn::Second, 0, PING_PONG_ROUNDS, WAIT));
        let first = ping_pong(&sem_a, Turn::First, 0, PING_PONG_ROUNDS, WAIT);
        (first, second.join())
    });
    let second = second.map_err(|_| PathError::Failed("device B's side panicked".into()))?;
    let (first, second) = (first?, second?);
    let end = 2 * PING_PONG_ROUNDS;
    if (first.final_value, second.final_value, sem_a.value()?, sem_b.value()?) != (end, end, end, end) {
        return fail(format!(
            "after {PING_PONG_ROUNDS} rounds A saw {}, B saw {}, expected {end}",
            first.final_value, second.final_value
        ));
    }
    a.check_deferred()?;
    b.check_deferred()?;
    let per_round = first.elapsed / PING_PONG_ROUNDS as u32;
    Ok(Some(format!("{PING_PONG_ROUNDS} round trips, {:.1} us each", per_round.as_secs_f64() * 1e6)))
}

/// Two binary semaphores shared as opaque fds, one per direction: A signals `written`, B waits on
/// it and signals `read`, A's next turn waits on that. Binary waits must be submitted after
/// their signals, so each round is submitted A first.
fn binary_between_devices(a: &VulkanContext, b: &VulkanContext, corrupt: bool) -> Step<Option<String>> {
    let written = Semaphore::exportable(a, SemaphoreKind::Binary, SemaphoreHandleKind::OpaqueFd)?;
    let written_b = Semaphore::import(b, written.export()?)?;
    let read = Semaphore::exportable(b, SemaphoreKind::Binary, SemaphoreHandleKind::OpaqueFd)?;
    let read_a = Semaphore::import(a, read.export()?)?;
    let shared_a = Buffer::new(a, &BufferOptions::new(SIZE))?;
    let shared_b = Buffer::import(b, shared_a.export_fd()?)?;
    let (out_a, out_b) = (readback(a, SIZE)?, readback(b, SIZE)?);
    initialize_shared(a, &shared_a)?;
    for r in 1..=BINARY_ROUNDS {
        let turn_a = record_turn(a, &shared_a, &out_a, writer_pattern(r), r > 1, false)?;
        let mut submit_a = Submission::new();
        if r > 1 {
            submit_a = submit_a.wait(&read_a, 0, vk::PipelineStageFlags::TRANSFER);
        }
        let done_a = submit_a.commands(&turn_a).signal(&written, 0).submit(a)?;
        let turn_b = record_turn(b, &shared_b, &out_b, reader_pattern(r), true, corrupt && r == BINARY_ROUNDS / 2)?;
        let done_b = Submission::new()
            .wait(&written_b, 0, vk::PipelineStageFlags::TRANSFER)
            .commands(&turn_b)
            .signal(&read, 0)
            .submit(b)?;
        done_b.wait(WAIT)?;
        done_a.wait(WAIT)?;
        check_words(&format!("round {r}: what device B read"), &out_b, writer_pattern(r))?;
        check_words(&format!("round {r}: what device A read"), &out_a, reader_pattern(r - 1))?;
    }
    // `read` stays signalled after the last round; nothing waits on it, which Vulkan allows.
    a.check_deferred()?;
    b.check_deferred()?;
    Ok(Some(format!("{BINARY_ROUNDS} rounds checked on both sides")))
}

/// Records: fill the shared buffer with `value`, release it to the external queue family.
fn fill_and_release(ctx: &VulkanContext, shared: &Buffer, value: u32, corrupt: bool) -> Step<RecordedCommands> {
    let release = OwnershipTransfer::new().release_whole_buffer(shared, StageAccess::TRANSFER_WRITE);
    release.validate()?;
    let (buf, size) = (shared.handle(), shared.size());
    Ok(RecordedCommands::record(ctx, |dev, cmd| {
        // SAFETY: cmd is recording on ctx's family; `shared` is a live buffer of ctx's device with the
        // transfer usages and a size that is a multiple of 4 (the corrupt word lies inside it), kept alive
        // until the submissions completed; the release passed validate() above.
        unsafe {
            dev.cmd_fill_buffer(cmd, buf, 0, size, value);
            if corrupt {
                turns::cmd_transfer_barrier(
                    dev,
                    cmd,
                    vk::AccessFlags::TRANSFER_WRITE,
                    vk::AccessFlags::TRANSFER_WRITE,
                    vk::PipelineStageFlags::TRANSFER,
                );
                dev.cmd_fill_buffer(cmd, buf, (size / 2) & !3, 4, value ^ 0x5a5a_5a5a);
            }
            release.record(dev, cmd);
        }
    })?)
}

/// A binary semaphore exported as a sync fd (a copy of one pending signal): A fills and signals,
/// B's copy waits on the imported signal.
fn binary_sync_fd(a: &VulkanContext, b: &VulkanContext, corrupt: bool) -> Step<Option<String>> {
    const VALUE: u32 = 0xB1A2_0003;
    let shared_a = Buffer::new(a, &BufferOptions::new(SIZE))?;
    let shared_b = Buffer::import(b, shared_a.export_fd()?)?;
    let out = readback(b, SIZE)?;
    let binary = Semaphore::exportable(a, SemaphoreKind::Binary, SemaphoreHandleKind::SyncFd)?;
    let write = fill_and_release(a, &shared_a, VALUE, corrupt)?;
    let written = Submission::new().commands(&write).signal(&binary, 0).submit(a)?;
    let read = acquire_and_copy(b, &shared_b, &out)?;
    let detail = match binary.export_sync_fd()? {
        Some(exported) => {
            let imported = Semaphore::import(b, exported)?;
            let done =
                Submission::new().wait(&imported, 0, vk::PipelineStageFlags::TRANSFER).commands(&read).submit(b)?;
            done.wait(WAIT)?;
            "device B's copy waited on the imported signal"
        }
        None => {
            // The driver found the signal already done: nothing to wait for on B.
            written.wait(WAIT)?;
            Submission::new().commands(&read).submit(b)?.wait(WAIT)?;
            "the signal had completed before the export (the driver returned no fd)"
        }
    };
    written.wait(WAIT)?;
    check_words("what device B read", &out, VALUE)?;
    a.check_deferred()?;
    b.check_deferred()?;
    Ok(Some(detail.into()))
}

/// A fence exported by A and imported by B: B's host waits for A's fill on it, then B's device
/// reads the buffer.
fn fence_between_devices(
    a: &VulkanContext,
    b: &VulkanContext,
    kind: FenceHandleKind,
    corrupt: bool,
) -> Step<Option<String>> {
    const VALUE: u32 = 0xFE7C_E001;
    let shared_a = Buffer::new(a, &BufferOptions::new(SIZE))?;
    let shared_b = Buffer::import(b, shared_a.export_fd()?)?;
    let out = readback(b, SIZE)?;
    let fence_a = Fence::exportable(a, kind)?;
    let write = fill_and_release(a, &shared_a, VALUE, corrupt)?;
    let detail = match kind {
        FenceHandleKind::SyncFd => {
            // A sync fd copies a pending signal: export after submitting.
            Submission::new().commands(&write).fence(&fence_a).submit(a)?;
            match fence_a.export_sync_fd()? {
                Some(exported) => {
                    let fence_b = Fence::import(b, exported)?;
                    fence_b.wait(WAIT)?;
                    "device B's host waited on the imported sync fd"
                }
                None => {
                    write.wait(WAIT)?;
                    "the fence had signalled before the export (the driver returned no fd)"
                }
            }
        }
        _ => {
            let fence_b = Fence::import(b, fence_a.export()?)?;
            match fence_b.wait(Duration::from_millis(20)) {
                Err(Error::Timeout { .. }) => {}
                Ok(()) => return fail("the imported fence was signalled before anything was submitted"),
                Err(e) => return Err(e.into()),
            }
            Submission::new().commands(&write).fence(&fence_a).submit(a)?;
            fence_b.wait(WAIT)?;
            if !fence_a.is_signaled()? {
                return fail("device B's fence signalled but device A's did not");
            }
            "device B's host waited on the imported fence (it timed out before the submission)"
        }
    };
    // B reads right after the fence: only the fence says A's fill is done.
    let read = acquire_and_copy(b, &shared_b, &out)?;
    Submission::new().commands(&read).submit(b)?.wait(WAIT)?;
    check_words("what device B read after the fence", &out, VALUE)?;
    write.wait(WAIT)?;
    a.check_deferred()?;
    b.check_deferred()?;
    Ok(Some(detail.into()))
}
