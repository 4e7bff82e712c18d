//! Shared by the sync_* tests: lava-flow buffers for sharing and reading back, the ping-pong
//! rounds two devices or processes play on one shared buffer, and fd passing over a Unix socket.

#![allow(dead_code)]

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ash::vk;
use lava_flow::ipc::fd_passing;
use lava_flow::vulkan::sync::{OwnershipTransfer, RecordedCommands, Semaphore, StageAccess, Submission};
use lava_flow::vulkan::{Buffer, BufferOptions, MemoryKind};
use lava_flow::VulkanContext;

/// Long enough for any real GPU, short enough that a broken test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// An exportable (opaque fd) device-local buffer: what two devices or processes share.
pub fn shared_buffer(ctx: &VulkanContext, size: u64) -> Buffer {
    Buffer::new(ctx, &BufferOptions::new(size)).expect("an exportable device-local buffer")
}

/// A host-visible buffer that stays on its device, for reading results back.
pub fn readback(ctx: &VulkanContext, size: u64) -> Buffer {
    Buffer::new(ctx, &BufferOptions::new(size).memory(MemoryKind::HostVisible).export(None))
        .expect("a host-visible readback buffer")
}

/// Every word of a host-visible buffer. Call only once the device finished writing it.
pub fn words(buffer: &Buffer) -> Vec<u32> {
    let bytes = buffer.read(0, buffer.size()).expect("reading a readback buffer");
    bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect()
}

/// Sets every word of a host-visible buffer from the host (fresh memory holds garbage).
pub fn set_words(buffer: &mut Buffer, value: u32) {
    let bytes: Vec<u8> = std::iter::repeat_n(value.to_le_bytes(), (buffer.size() / 4) as usize).flatten().collect();
    buffer.write(0, &bytes).expect("writing a readback buffer");
}

/// Asserts every word of `words` is `expected`, naming the first that is not.
#[track_caller]
pub fn assert_all(words: &[u32], expected: u32, what: &str) {
    if let Some((i, w)) = words.iter().enumerate().find(|(_, w)| **w != expected) {
        let wrong = words.iter().filter(|w| **w != expected).count();
        panic!("{what}: word {i} is {w:#010x}, expected {expected:#010x} ({wrong} of {} words wrong)", words.len());
    }
}

/// What the writer (side A) fills the shared buffer with in round `r`.
pub fn writer_pattern(r: u64) -> u32 {
    0xA000_0000 | (r as u32 & 0x0fff_ffff)
}

/// What the reader (side B) fills it with in round `r` (0: the initial contents).
pub fn reader_pattern(r: u64) -> u32 {
    0xB000_0000 | (r as u32 & 0x0fff_ffff)
}

/// One side's turn: acquire the shared buffer from the external queue family (unless this side
/// still owns it), copy it to `readback`, fill it with `fill`, release it again.
pub fn record_turn(
    ctx: &VulkanContext,
    shared: &Buffer,
    readback: &Buffer,
    fill: u32,
    acquire: bool,
) -> RecordedCommands {
    let family = ctx.queue_family_index();
    let (buf, size) = (shared.handle(), shared.size());
    let acquire_t = OwnershipTransfer::new().acquire_buffer(family, buf, 0, size, StageAccess::TRANSFER_READ);
    let release_t = OwnershipTransfer::new().release_buffer(family, buf, 0, size, StageAccess::TRANSFER_WRITE);
    acquire_t.validate().unwrap();
    release_t.validate().unwrap();
    let readback_buf = readback.handle();
    RecordedCommands::record(ctx, |dev, cmd| {
        // SAFETY: cmd is recording on ctx's family; the shared and readback buffers are live buffers of
        // ctx's device with the transfer usages, kept alive until every submission completed; the
        // transfers passed validate() above; the barrier array is a local.
        unsafe {
            if acquire {
                acquire_t.record(dev, cmd);
            }
            dev.cmd_copy_buffer(cmd, buf, readback_buf, &[vk::BufferCopy::default().size(size)]);
            // The copy reads the shared buffer before the fill overwrites it; the readback
            // buffer's contents become visible to the host.
            let read_then_write = vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::TRANSFER_WRITE | vk::AccessFlags::HOST_READ);
            dev.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::TRANSFER | vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &[read_then_write],
                &[],
                &[],
            );
            dev.cmd_fill_buffer(cmd, buf, 0, size, fill);
            release_t.record(dev, cmd);
        }
    })
    .expect("recording a turn")
}

/// Side A's part of round `r` (1-based): wait for B's round `r - 1`, read what B wrote, write
/// the writer pattern, signal `2r - 1`.
pub fn submit_writer_turn(
    ctx: &VulkanContext,
    sem: &Semaphore,
    shared: &Buffer,
    readback: &Buffer,
    r: u64,
) -> RecordedCommands {
    let cmds = record_turn(ctx, shared, readback, writer_pattern(r), r > 1);
    Submission::new()
        .wait(sem, 2 * r - 2, vk::PipelineStageFlags::TRANSFER)
        .commands(&cmds)
        .signal(sem, 2 * r - 1)
        .submit(ctx)
        .expect("submitting the writer's turn");
    cmds
}

/// Side B's part of round `r`: wait for A's write, read it, write the reader pattern, signal `2r`.
pub fn submit_reader_turn(
    ctx: &VulkanContext,
    sem: &Semaphore,
    shared: &Buffer,
    readback: &Buffer,
    r: u64,
) -> RecordedCommands {
    let cmds = record_turn(ctx, shared, readback, reader_pattern(r), true);
    Submission::new()
        .wait(sem, 2 * r - 1, vk::PipelineStageFlags::TRANSFER)
        .commands(&cmds)
        .signal(sem, 2 * r)
        .submit(ctx)
        .expect("submitting the reader's turn");
    cmds
}

/// Fills the shared buffer with `reader_pattern(0)` on its owner's queue before round 1.
pub fn initialize_shared(ctx: &VulkanContext, shared: &Buffer) {
    let (buf, size) = (shared.handle(), shared.size());
    ctx.run_commands(|dev, cmd| {
        let written = vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE);
        // SAFETY: cmd is recording (run_commands, which waits); `shared` is a live buffer of ctx's device
        // with TRANSFER_DST and a size that is a multiple of 4. The barrier orders the fill before the
        // first turn's copy, which comes later in submission order.
        unsafe {
            dev.cmd_fill_buffer(cmd, buf, 0, size, reader_pattern(0));
            dev.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::TRANSFER,
                vk::DependencyFlags::empty(),
                &[written],
                &[],
                &[],
            );
        }
    })
    .expect("initializing the shared buffer");
}

/// Unblocks every queue waiting on `sem` when a test fails mid-round, so dropping the contexts
/// (which wait for their queues) cannot hang: signals the timeline far ahead.
pub struct Unblock<'a>(pub &'a Semaphore);

impl Drop for Unblock<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.signal(1 << 40);
        }
    }
}

/// Sends `message` (length-prefixed) and `fds` in one SCM_RIGHTS message.
pub fn send_with_fds(stream: &UnixStream, message: &[u8], fds: &[OwnedFd]) {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut bytes = (message.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(message);
    fd_passing::send_with_fds(stream.as_fd(), &bytes, &borrowed).expect("sending the message and fds");
}

/// Receives what [`send_with_fds`] sent.
pub fn recv_with_fds(stream: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut len = [0u8; 4];
    let mut fds = fd_passing::recv_exact_with_fds(stream.as_fd(), &mut len).expect("receiving the length");
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    fds.extend(fd_passing::recv_exact_with_fds(stream.as_fd(), &mut body).expect("receiving the message"));
    (body, fds)
}

/// Writes one status line (the child's verdict) to the parent.
pub fn send_line(mut stream: &UnixStream, line: &str) {
    stream.write_all(format!("{line}\n").as_bytes()).expect("writing a status line");
}
