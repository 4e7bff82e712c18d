//! Semaphores and fences shared between two VkDevices and between two processes, ordering real
//! GPU work on shared memory, every round checked on the data. These need external semaphores
//! (VK_KHR_external_semaphore_fd, VK_KHR_external_fence_fd): they skip with the capability
//! query's answer where the driver has none (lavapipe) and fail instead with
//! `LAVA_FLOW_REQUIRE=semaphores` (the GPU machine).

mod sync_common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ash::vk;
use lava_flow::raw_gpu_handle::{
    ExportedBuffer, ExportedFence, ExportedSemaphore, FenceDescription, FenceHandleKind, MemoryHandle,
    SemaphoreDescription, SemaphoreHandleKind, SemaphoreKind,
};
use lava_flow::vulkan::sync::{
    fence_capabilities, ping_pong, semaphore_capabilities, Fence, OwnershipTransfer, RecordedCommands, Semaphore,
    StageAccess, Submission, Turn,
};
use lava_flow::vulkan::Buffer;
use lava_flow::{Error, VulkanContext};
use lava_flow_diag::testing;
use lava_flow_diag::testing::Cases;
use lava_flow_diag::turns;
use sync_common::*;

const ROUNDS: u64 = 64;
const SIZE: u64 = 4 << 20;
const ROLE: &str = "LAVA_FLOW_CHILD_ROLE";
const SOCKET: &str = "LAVA_FLOW_SYNC_SOCKET";

/// The first device, when it can share timeline semaphores and memory as opaque fds; else skips
/// with the query's reason.
fn shared_device() -> Option<VulkanContext> {
    let ctx = testing::or_skip("vulkan", VulkanContext::new())?;
    let caps = semaphore_capabilities(&ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd);
    if !(caps.exportable && caps.importable) {
        testing::skip("semaphores", caps.limitation.unwrap_or_default());
        return None;
    }
    if !ctx.extensions().external_memory_fd {
        testing::skip("vulkan", format!("{} lacks VK_KHR_external_memory_fd", ctx.info().name));
        return None;
    }
    Some(ctx)
}

/// Two VkDevices on one physical device.
fn two_devices() -> Option<(VulkanContext, VulkanContext)> {
    let a = shared_device()?;
    let b = VulkanContext::with_uuid(a.identity().device_uuid).expect("a second device on the same GPU");
    Some((a, b))
}

/// A shared buffer exported by `a` and imported by `b`.
fn share_buffer(a: &VulkanContext, b: &VulkanContext) -> (Buffer, Buffer) {
    let on_a = shared_buffer(a, SIZE);
    let on_b = Buffer::import(b, on_a.export_fd().unwrap()).expect("importing the shared buffer on B");
    (on_a, on_b)
}

#[test]
fn timeline_semaphore_orders_two_devices() {
    let Some((a, b)) = two_devices() else { return };
    let sem_a = Semaphore::exportable(&a, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).unwrap();
    let exported = sem_a.export().unwrap();
    assert_eq!(exported.description.kind, SemaphoreKind::Timeline);
    assert_eq!(exported.description.handle_kind, SemaphoreHandleKind::OpaqueFd);
    assert_eq!(exported.description.device, a.identity());
    let sem_b = Semaphore::import(&b, exported).unwrap();
    assert_eq!(sem_b.imported_from(), Some(SemaphoreHandleKind::OpaqueFd));
    let (shared_a, shared_b) = share_buffer(&a, &b);
    let read_a = readback(&a, SIZE);
    let read_b = readback(&b, SIZE);
    initialize_shared(&a, &shared_a);

    let mut in_flight = Vec::new();
    // Declared after `in_flight`, so on a failed assertion it signals the timeline far ahead
    // before the command buffers are dropped: no queue stays blocked.
    let _unblock = Unblock(&sem_a);
    for r in 1..=ROUNDS {
        // The reader is queued first, behind a value only the writer's device signals.
        in_flight.push(submit_reader_turn(&b, &sem_b, &shared_b, &read_b, r));
        in_flight.push(submit_writer_turn(&a, &sem_a, &shared_a, &read_a, r));
        sem_a.wait(2 * r, WAIT).unwrap_or_else(|e| panic!("round {r}: {e}"));
        assert_all(&words(&read_b), writer_pattern(r), &format!("round {r}: device B read the shared buffer"));
        assert_all(&words(&read_a), reader_pattern(r - 1), &format!("round {r}: device A read the shared buffer"));
        in_flight.clear();
    }
    assert_eq!(sem_a.value().unwrap(), 2 * ROUNDS);
    assert_eq!(sem_b.value().unwrap(), 2 * ROUNDS, "both devices see one payload");
    println!("{ROUNDS} rounds between two devices on {} verified", a.info().name);
    a.check_deferred().unwrap();
    b.check_deferred().unwrap();
}

#[test]
fn ping_pong_between_two_devices() {
    let Some((a, b)) = two_devices() else { return };
    let sem_a = Semaphore::exportable(&a, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).unwrap();
    let sem_b = Semaphore::import(&b, sem_a.export().unwrap()).unwrap();
    let rounds = 1000;
    let (first, second) = std::thread::scope(|s| {
        let second = s.spawn(|| ping_pong(&sem_b, Turn::Second, 0, rounds, WAIT));
        let first = ping_pong(&sem_a, Turn::First, 0, rounds, WAIT);
        (first, second.join().unwrap())
    });
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!((first.final_value, second.final_value), (2 * rounds, 2 * rounds));
    assert_eq!(sem_a.value().unwrap(), 2 * rounds);
    println!(
        "ping-pong between two devices: {rounds} rounds in {:?} ({:?} per round trip)",
        first.elapsed,
        first.elapsed / rounds as u32
    );
    a.check_deferred().unwrap();
    b.check_deferred().unwrap();
}

/// Kills the child (started by this test) if the parent side fails.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn timeline_semaphore_orders_two_processes() {
    if std::env::var(ROLE).as_deref() == Ok("sync-reader") {
        return reader_process();
    }
    let Some(a) = shared_device() else { return };
    let dir = std::env::temp_dir().join(format!("lava-flow-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("reader.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let log_path = dir.join("reader.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "timeline_semaphore_orders_two_processes", "--nocapture"])
        .env(ROLE, "sync-reader")
        .env(SOCKET, &socket)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(Some(child));
    let child_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let deadline = Instant::now() + WAIT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = guard.0.as_mut().unwrap().try_wait().unwrap() {
                    panic!("the reader process exited ({status}) before connecting:\n{}", child_log());
                }
                assert!(Instant::now() < deadline, "the reader process did not connect:\n{}", child_log());
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();

    let sem_a = Semaphore::exportable(&a, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).unwrap();
    let shared_a = shared_buffer(&a, SIZE);
    let read_a = readback(&a, SIZE);
    initialize_shared(&a, &shared_a);
    let exported = sem_a.export().unwrap();
    let buffer = shared_a.export_fd().unwrap();
    let message = serde_json::json!({
        "semaphore": exported.description,
        "memory": buffer.memory.description,
        "buffer": buffer.buffer,
        "rounds": ROUNDS,
    });
    send_with_fds(&stream, message.to_string().as_bytes(), &[buffer.memory.handle, exported.handle]);

    let mut in_flight = Vec::new();
    let _unblock = Unblock(&sem_a);
    for r in 1..=ROUNDS {
        in_flight.push(submit_writer_turn(&a, &sem_a, &shared_a, &read_a, r));
        sem_a.wait(2 * r - 1, WAIT).unwrap_or_else(|e| panic!("round {r}: {e}\nreader:\n{}", child_log()));
        assert_all(&words(&read_a), reader_pattern(r - 1), &format!("round {r}: the writer process read"));
        in_flight.clear();
    }
    sem_a.wait(2 * ROUNDS, WAIT).unwrap_or_else(|e| panic!("last round: {e}\nreader:\n{}", child_log()));
    let mut verdict = String::new();
    BufReader::new(&stream).read_line(&mut verdict).unwrap();
    let mut child = guard.0.take().unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the reader process did not exit:\n{}", child_log());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "reader process failed ({status}):\n{}", child_log());
    assert_eq!(verdict.trim(), format!("ok {ROUNDS}"), "reader process:\n{}", child_log());
    println!("{ROUNDS} rounds between two processes on {} verified", a.info().name);
    let _ = std::fs::remove_dir_all(&dir);
    a.check_deferred().unwrap();
}

/// The child side: import the semaphore and the memory, read what the writer wrote each round,
/// write back, signal.
fn reader_process() {
    let stream = UnixStream::connect(std::env::var(SOCKET).expect("socket path")).expect("connect to the writer");
    let (body, mut fds) = recv_with_fds(&stream);
    assert_eq!(fds.len(), 2, "the memory fd and the semaphore fd");
    let message: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let description: SemaphoreDescription = serde_json::from_value(message["semaphore"].clone()).unwrap();
    let b = VulkanContext::with_uuid(description.device.device_uuid).expect("the writer's device");
    let sem_fd = fds.pop().unwrap();
    let memory_fd = fds.pop().unwrap();
    let sem_b = Semaphore::import(&b, ExportedSemaphore::new(sem_fd, description)).unwrap();
    let exported_buffer = ExportedBuffer::new(
        MemoryHandle::new(memory_fd, serde_json::from_value(message["memory"].clone()).expect("memory description")),
        serde_json::from_value(message["buffer"].clone()).expect("buffer description"),
    );
    let shared_b = Buffer::import(&b, exported_buffer).expect("importing the writer's buffer");
    let read_b = readback(&b, shared_b.size());
    let rounds = message["rounds"].as_u64().unwrap();
    let mut in_flight = Vec::new();
    let _unblock = Unblock(&sem_b);
    for r in 1..=rounds {
        in_flight.push(submit_reader_turn(&b, &sem_b, &shared_b, &read_b, r));
        sem_b.wait(2 * r, WAIT).unwrap_or_else(|e| panic!("round {r}: {e}"));
        assert_all(&words(&read_b), writer_pattern(r), &format!("round {r}: the reader process read"));
        in_flight.clear();
    }
    b.check_deferred().unwrap();
    send_line(&stream, &format!("ok {rounds}"));
}

/// Records: acquire the shared buffer from the external queue family (when the other side had
/// it), fill it with `value`, release it to the external queue family.
fn fill_and_release(ctx: &VulkanContext, shared: &Buffer, value: u32, acquire_first: bool) -> RecordedCommands {
    let acquire = OwnershipTransfer::new().acquire_whole_buffer(shared, StageAccess::TRANSFER_WRITE);
    let release = OwnershipTransfer::new().release_whole_buffer(shared, StageAccess::TRANSFER_WRITE);
    let (buf, size) = (shared.handle(), shared.size());
    RecordedCommands::record(ctx, |dev, cmd| {
        // SAFETY: cmd is recording on ctx's queue family (RecordedCommands::record); `shared` is a live
        // exportable buffer of ctx's device with the transfer usages, kept alive until every submission
        // of the commands completed; the whole-buffer transfers are valid by construction.
        unsafe {
            if acquire_first {
                acquire.record(dev, cmd);
            }
            dev.cmd_fill_buffer(cmd, buf, 0, size, value);
            release.record(dev, cmd);
        }
    })
    .unwrap()
}

/// Acquires the shared buffer from the external queue family and copies it to `out`, waiting.
fn acquire_and_read(ctx: &VulkanContext, shared: &Buffer, out: &Buffer) -> Vec<u32> {
    let acquire = OwnershipTransfer::new().acquire_whole_buffer(shared, StageAccess::TRANSFER_READ);
    // A fence wait covers device accesses only: cmd_acquire_and_copy makes the copy visible to the host.
    ctx.run_commands(|dev, cmd| {
        // SAFETY: cmd is recording on ctx's family (run_commands, which waits), the family the
        // whole-buffer acquire names; both buffers are live buffers of ctx's device with the transfer
        // usages, `out` at least as large as `shared`.
        unsafe { turns::cmd_acquire_and_copy(dev, cmd, &acquire, shared, out) }
    })
    .unwrap();
    words(out)
}

#[test]
fn exported_fence_is_waited_on_another_device() {
    let Some((a, b)) = two_devices() else { return };
    let caps = fence_capabilities(&a, FenceHandleKind::OpaqueFd);
    if !(caps.exportable && caps.importable) {
        testing::skip("semaphores", caps.limitation.unwrap_or_default());
        return;
    }
    let (shared_a, shared_b) = share_buffer(&a, &b);
    let out = readback(&b, SIZE);

    let fence_a = Fence::exportable(&a, FenceHandleKind::OpaqueFd).unwrap();
    let exported = fence_a.export().unwrap();
    assert_eq!(exported.description, FenceDescription { handle_kind: FenceHandleKind::OpaqueFd, device: a.identity() });
    let fence_b = Fence::import(&b, exported).unwrap();
    assert!(matches!(fence_b.wait(Duration::from_millis(50)), Err(Error::Timeout { .. })), "nothing submitted yet");

    let cmds = fill_and_release(&a, &shared_a, 0xFE7C_E001, false);
    Submission::new().commands(&cmds).fence(&fence_a).submit(&a).unwrap();
    fence_b.wait(WAIT).expect("the imported fence signals with the exporter's submission");
    assert!(fence_a.is_signaled().unwrap());
    assert_all(&acquire_and_read(&b, &shared_b, &out), 0xFE7C_E001, "read on B after its imported fence signalled");
    println!("opaque-fd fence: exported by A, waited on B, data verified");
    let mut kinds = Cases::new("fence handle kinds", 2);
    kinds.ran();

    // The sync-fd form: a copy of the pending signal, imported temporarily. Vulkan leaves sync
    // fds optional, so a driver without them is a capability skip even under
    // LAVA_FLOW_REQUIRE=semaphores.
    let sync_a = fence_capabilities(&a, FenceHandleKind::SyncFd);
    let sync_b = fence_capabilities(&b, FenceHandleKind::SyncFd);
    if !(sync_a.exportable && sync_b.importable) {
        kinds.skip_capability("vulkan", "sync-fd fence", sync_a.limitation.or(sync_b.limitation).unwrap_or_default());
        kinds.finish();
        return;
    }
    // B acquired the buffer last: hand it back before A writes again.
    let give_back = fill_and_release(&b, &shared_b, 0, false);
    Submission::new().commands(&give_back).submit(&b).unwrap().wait(WAIT).unwrap();
    let sync_fence = Fence::exportable(&a, FenceHandleKind::SyncFd).unwrap();
    let cmds = fill_and_release(&a, &shared_a, 0x5F5F_0002, true);
    let e = sync_fence.export_as(FenceHandleKind::SyncFd).unwrap_err();
    assert!(e.to_string().contains("neither signalled nor signalled by a pending submission"), "{e}");
    Submission::new().commands(&cmds).fence(&sync_fence).submit(&a).unwrap();
    match sync_fence.export_sync_fd().unwrap() {
        Some(exported) => {
            let imported = Fence::import(&b, exported).unwrap();
            assert_eq!(imported.imported_from(), Some(FenceHandleKind::SyncFd));
            imported.wait(WAIT).unwrap();
            imported.reset().unwrap();
            assert!(!imported.is_signaled().unwrap(), "a temporary import ends with the reset");
            println!("sync-fd fence: exported while pending, waited on B");
        }
        None => println!("sync-fd fence: the driver reported it already signalled (nothing to wait for)"),
    }
    cmds.wait(WAIT).unwrap();
    assert_all(&acquire_and_read(&b, &shared_b, &out), 0x5F5F_0002, "read on B after the sync-fd fence");
    kinds.ran();
    kinds.finish();
    a.check_deferred().unwrap();
    b.check_deferred().unwrap();
}

#[test]
fn binary_semaphore_sync_fd_orders_two_devices() {
    let Some((a, b)) = two_devices() else { return };
    let caps_a = semaphore_capabilities(&a, SemaphoreKind::Binary, SemaphoreHandleKind::SyncFd);
    let caps_b = semaphore_capabilities(&b, SemaphoreKind::Binary, SemaphoreHandleKind::SyncFd);
    if !(caps_a.exportable && caps_b.importable) {
        // Sync fds are optional in Vulkan: a capability skip, even under LAVA_FLOW_REQUIRE=semaphores.
        return testing::skip_capability("vulkan", caps_a.limitation.or(caps_b.limitation).unwrap_or_default());
    }
    let (shared_a, shared_b) = share_buffer(&a, &b);
    let out = readback(&b, SIZE);
    let binary = Semaphore::exportable(&a, SemaphoreKind::Binary, SemaphoreHandleKind::SyncFd).unwrap();
    let e = binary.export().unwrap_err();
    assert!(e.to_string().contains("no signal of it was submitted"), "{e}");

    let write = fill_and_release(&a, &shared_a, 0xB1A2_0003, false);
    Submission::new().commands(&write).signal(&binary, 0).submit(&a).unwrap();
    let done_b = Semaphore::new(&b).unwrap();
    let read = turns::acquire_and_copy(&b, &shared_b, &out).unwrap();
    match binary.export_sync_fd().unwrap() {
        Some(exported) => {
            assert_eq!(exported.description.kind, SemaphoreKind::Binary);
            let imported = Semaphore::import(&b, exported).unwrap();
            Submission::new()
                .wait(&imported, 0, vk::PipelineStageFlags::TRANSFER)
                .commands(&read)
                .signal(&done_b, 1)
                .submit(&b)
                .unwrap();
            done_b.wait(1, WAIT).unwrap();
            println!("sync-fd binary semaphore: B's copy waited on A's fill");
        }
        None => {
            write.wait(WAIT).unwrap();
            Submission::new().commands(&read).signal(&done_b, 1).submit(&b).unwrap();
            done_b.wait(1, WAIT).unwrap();
            println!("sync-fd binary semaphore: the driver reported it already signalled");
        }
    }
    assert_all(&words(&out), 0xB1A2_0003, "read on B after the sync-fd semaphore");
    a.check_deferred().unwrap();
    b.check_deferred().unwrap();
}

#[test]
fn imported_semaphore_wait_times_out_then_sees_signals() {
    let Some((a, b)) = two_devices() else { return };
    let sem_a = Semaphore::exportable(&a, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).unwrap();
    let sem_b = Semaphore::import(&b, sem_a.export().unwrap()).unwrap();
    let timeout = Duration::from_millis(50);
    match sem_b.wait(5, timeout) {
        Err(Error::Timeout { timeout: t, action }) => {
            assert_eq!(t, timeout);
            assert!(action.contains("reach 5"), "{action}");
        }
        other => panic!("an unsignalled imported semaphore must time out, got {other:?}"),
    }
    // A device signal on A is seen by B's host wait and by B's queue.
    Submission::new().signal(&sem_a, 5).submit(&a).unwrap();
    sem_b.wait(5, WAIT).unwrap();
    assert_eq!(sem_b.value().unwrap(), 5);
    Submission::new().wait(&sem_b, 5, vk::PipelineStageFlags::ALL_COMMANDS).signal(&sem_b, 6).submit(&b).unwrap();
    sem_a.wait(6, WAIT).expect("B's device signal reaches A");
    assert!(matches!(sem_a.wait(7, timeout), Err(Error::Timeout { .. })));
    a.check_deferred().unwrap();
    b.check_deferred().unwrap();
}

#[test]
fn wrong_kind_imports_are_refused_without_leaking() {
    let Some((a, b)) = two_devices() else { return };
    let timeline = Semaphore::exportable(&a, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).unwrap();
    // One successful export and import of each first, so fds a driver opens for itself on first
    // use are open before counting.
    let _warm = Semaphore::import(&b, timeline.export().unwrap()).unwrap();
    if fence_capabilities(&a, FenceHandleKind::OpaqueFd).exportable {
        let fence = Fence::exportable(&a, FenceHandleKind::OpaqueFd).unwrap();
        let _warm_fence = Fence::import(&b, fence.export().unwrap()).unwrap();
    }
    let before = testing::open_fd_count();

    // A semaphore's fd offered as a fence: refused by the driver (or the query), closed once.
    let exported = timeline.export().unwrap();
    assert_eq!(testing::open_fd_count(), before + 1, "an export is one fresh fd");
    let forged = ExportedFence::new(
        exported.handle,
        FenceDescription { handle_kind: FenceHandleKind::OpaqueFd, device: exported.description.device },
    );
    // The types keep the two apart (Fence::import takes an ExportedFence; see the compile_fail
    // example on Fence::import), so this takes a forged description. Opaque fds carry no kind:
    // NVIDIA's are all the same character device, and its driver accepts a semaphore's fd as a
    // fence (seen on an H200, driver 580). Where a driver refuses, the fd is closed once; where
    // it accepts, the fence is released cleanly and nothing leaks.
    let left_open = lava_flow::fd::failed_import_fds().left_open;
    match Fence::import(&b, forged) {
        Err(e) => {
            assert!(matches!(e, Error::InvalidHandle { .. } | Error::Unsupported { .. } | Error::Vulkan { .. }), "{e}");
            println!("semaphore fd as fence: refused: {e}");
            // The caller's fd is closed once; the driver's copy is closed by the driver or, where
            // lava-flow cannot prove it its own, left open and counted (docs/OWNERSHIP.md).
            let leaked = (lava_flow::fd::failed_import_fds().left_open - left_open) as usize;
            assert_eq!(testing::open_fd_count(), before + leaked, "the refused fd is closed, exactly once");
        }
        Ok(accepted) => {
            println!("semaphore fd as fence: accepted by {} (opaque fds carry no kind)", b.info().name);
            drop(accepted);
            assert!(testing::open_fd_count() <= before, "the accepted fd is released with the fence");
        }
    }
    // A copy left open above stays open: later counts start from there.
    let before = before + (lava_flow::fd::failed_import_fds().left_open - left_open) as usize;

    // A timeline semaphore imported as binary.
    let e = Semaphore::import_as(&b, timeline.export().unwrap(), SemaphoreKind::Binary).unwrap_err();
    assert!(matches!(e, Error::InvalidHandle { .. }) && e.to_string().contains("timeline"), "{e}");
    assert_eq!(testing::open_fd_count(), before);

    // A binary semaphore imported as timeline.
    let mut kinds = Cases::new("semaphore kinds imported as the other", 2);
    kinds.ran();
    let binary_caps = semaphore_capabilities(&a, SemaphoreKind::Binary, SemaphoreHandleKind::OpaqueFd);
    if binary_caps.exportable {
        let binary = Semaphore::exportable(&a, SemaphoreKind::Binary, SemaphoreHandleKind::OpaqueFd).unwrap();
        let exported = binary.export().unwrap();
        assert_eq!(exported.description.kind, SemaphoreKind::Binary);
        let e = Semaphore::import_as(&b, exported, SemaphoreKind::Timeline).unwrap_err();
        assert!(matches!(e, Error::InvalidHandle { .. }), "{e}");
        assert!(e.to_string().contains("says it is a binary semaphore"), "{e}");
        println!("binary as timeline: {e}");
        assert_eq!(testing::open_fd_count(), before);
        // Imported as what it is, it works.
        let ok = Semaphore::import(&b, binary.export().unwrap()).unwrap();
        assert_eq!(ok.kind(), SemaphoreKind::Binary);
        kinds.ran();
    } else {
        kinds.skip("semaphores", "binary as timeline", binary_caps.limitation.unwrap_or_default());
    }
    kinds.finish();

    // The same fd twice is not possible (it is moved); a clone is an explicit second fd.
    let exported = timeline.export().unwrap();
    let clone = exported.try_clone().unwrap();
    let first = Semaphore::import(&b, exported).unwrap();
    let second = Semaphore::import(&b, clone).unwrap();
    timeline.signal(3).unwrap();
    first.wait(3, WAIT).unwrap();
    second.wait(3, WAIT).unwrap();
    a.check_deferred().unwrap();
    b.check_deferred().unwrap();
}
