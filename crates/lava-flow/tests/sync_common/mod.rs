//! Shared by the sync_* tests: lava-flow buffers for sharing and reading back, the ping-pong
//! rounds two devices or processes play on one shared buffer, and fd passing over a Unix socket.

#![allow(dead_code)]

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use lava_flow::ipc::fd_passing;
use lava_flow::vulkan::sync::{RecordedCommands, Semaphore};
use lava_flow::vulkan::{Buffer, BufferOptions};
use lava_flow::VulkanContext;
use lava_flow_diag::turns;
#[allow(unused_imports)] // not every sync test names the patterns
pub use lava_flow_diag::turns::{reader_pattern, writer_pattern};

/// Long enough for any real GPU, short enough that a broken test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// An exportable (opaque fd) device-local buffer: what two devices or processes share.
pub fn shared_buffer(ctx: &VulkanContext, size: u64) -> Buffer {
    Buffer::new(ctx, &BufferOptions::new(size)).expect("an exportable device-local buffer")
}

/// A host-visible buffer that stays on its device, for reading results back.
pub fn readback(ctx: &VulkanContext, size: u64) -> Buffer {
    turns::readback(ctx, size).expect("a host-visible readback buffer")
}

/// Every word of a host-visible buffer. Call only once the device finished writing it.
pub fn words(buffer: &Buffer) -> Vec<u32> {
    turns::read_words(buffer).expect("reading a readback buffer")
}

/// Sets every word of a host-visible buffer from the host (fresh memory holds garbage).
pub fn set_words(buffer: &mut Buffer, value: u32) {
    let bytes: Vec<u8> = std::iter::repeat_n(value.to_le_bytes(), (buffer.size() / 4) as usize).flatten().collect();
    buffer.write(0, &bytes).expect("writing a readback buffer");
}

/// Asserts every word of `words` is `expected`, naming the first that is not.
#[track_caller]
pub fn assert_all(words: &[u32], expected: u32, what: &str) {
    if let Some(message) = turns::wrong_words(words, expected, what) {
        panic!("{message}");
    }
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
    turns::record_turn(ctx, shared, readback, fill, acquire, false).expect("recording a turn")
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
    turns::submit_writer_turn(ctx, sem, shared, readback, r).expect("submitting the writer's turn")
}

/// Side B's part of round `r`: wait for A's write, read it, write the reader pattern, signal `2r`.
pub fn submit_reader_turn(
    ctx: &VulkanContext,
    sem: &Semaphore,
    shared: &Buffer,
    readback: &Buffer,
    r: u64,
) -> RecordedCommands {
    turns::submit_reader_turn(ctx, sem, shared, readback, r, false).expect("submitting the reader's turn")
}

/// Fills the shared buffer with `reader_pattern(0)` on its owner's queue before round 1.
pub fn initialize_shared(ctx: &VulkanContext, shared: &Buffer) {
    turns::initialize_shared(ctx, shared).expect("initializing the shared buffer");
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
