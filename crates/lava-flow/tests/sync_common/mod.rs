//! Shared by the sync_* tests: small raw-ash buffers (host-visible readback buffers and
//! exportable device-local ones), the ping-pong rounds two devices or processes play on one
//! shared buffer, and fd passing over a Unix socket.

#![allow(dead_code)]

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ash::vk;
use lava_flow::vulkan::sync::{OwnershipTransfer, RecordedCommands, Semaphore, StageAccess, Submission};
use lava_flow::VulkanContext;

/// Long enough for any real GPU, short enough that a broken test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// A buffer and its own memory, made with raw ash for tests.
pub struct TestBuffer {
    pub ctx: VulkanContext,
    pub buffer: vk::Buffer,
    pub memory: vk::DeviceMemory,
    /// Bytes the buffer covers.
    pub size: u64,
    /// Bytes of the whole allocation (what an importer must be told).
    pub allocation_size: u64,
    pub memory_type_index: u32,
    mapped: Option<*mut u32>,
}

fn pick_type(ctx: &VulkanContext, bits: u32, required: vk::MemoryPropertyFlags, avoid: vk::MemoryPropertyFlags) -> u32 {
    let props = ctx.memory_properties();
    let ok = |i: u32| bits & (1 << i) != 0 && props.memory_types[i as usize].property_flags.contains(required);
    (0..props.memory_type_count)
        .find(|i| ok(*i) && !props.memory_types[*i as usize].property_flags.intersects(avoid))
        .or_else(|| (0..props.memory_type_count).find(|i| ok(*i)))
        .unwrap_or_else(|| panic!("no memory type with {required:?} in bits {bits:#b} on {}", ctx.info().name))
}

const USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::TRANSFER_SRC.as_raw() | vk::BufferUsageFlags::TRANSFER_DST.as_raw(),
);

impl TestBuffer {
    fn create_buffer(ctx: &VulkanContext, size: u64, external: bool) -> vk::Buffer {
        let mut ext =
            vk::ExternalMemoryBufferCreateInfo::default().handle_types(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
        let mut info = vk::BufferCreateInfo::default().size(size).usage(USAGE).sharing_mode(vk::SharingMode::EXCLUSIVE);
        if external {
            info = info.push_next(&mut ext);
        }
        // SAFETY: info and its chain live across the call.
        unsafe { ctx.device().create_buffer(&info, None) }.expect("vkCreateBuffer")
    }

    /// A host-visible, coherent, persistently mapped buffer for reading results back.
    pub fn readback(ctx: &VulkanContext, size: u64) -> TestBuffer {
        let buffer = Self::create_buffer(ctx, size, false);
        // SAFETY: buffer belongs to the device.
        let req = unsafe { ctx.device().get_buffer_memory_requirements(buffer) };
        let host = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let memory_type_index = pick_type(ctx, req.memory_type_bits, host, vk::MemoryPropertyFlags::empty());
        let alloc = vk::MemoryAllocateInfo::default().allocation_size(req.size).memory_type_index(memory_type_index);
        // SAFETY: alloc lives across the call.
        let memory = unsafe { ctx.device().allocate_memory(&alloc, None) }.expect("vkAllocateMemory (readback)");
        // SAFETY: fresh buffer and memory of one device, offset 0 satisfies alignment.
        unsafe { ctx.device().bind_buffer_memory(buffer, memory, 0) }.expect("vkBindBufferMemory");
        // SAFETY: host-visible memory, mapped once, whole range.
        let ptr = unsafe { ctx.device().map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) }
            .expect("vkMapMemory");
        TestBuffer {
            ctx: ctx.clone(),
            buffer,
            memory,
            size,
            allocation_size: req.size,
            memory_type_index,
            mapped: Some(ptr.cast()),
        }
    }

    /// A device-local buffer in a dedicated allocation exportable as an opaque fd (the memory
    /// type that is not host-visible where there is one: NVIDIA exports only that one).
    pub fn exportable(ctx: &VulkanContext, size: u64) -> TestBuffer {
        let buffer = Self::create_buffer(ctx, size, true);
        // SAFETY: buffer belongs to the device.
        let req = unsafe { ctx.device().get_buffer_memory_requirements(buffer) };
        let memory_type_index = pick_type(
            ctx,
            req.memory_type_bits,
            vk::MemoryPropertyFlags::DEVICE_LOCAL,
            vk::MemoryPropertyFlags::HOST_VISIBLE,
        );
        let mut export =
            vk::ExportMemoryAllocateInfo::default().handle_types(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
        let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer);
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(memory_type_index)
            .push_next(&mut export)
            .push_next(&mut dedicated);
        // SAFETY: alloc and its chain live across the call.
        let memory = unsafe { ctx.device().allocate_memory(&alloc, None) }.expect("vkAllocateMemory (exportable)");
        // SAFETY: dedicated allocation of this buffer, offset 0.
        unsafe { ctx.device().bind_buffer_memory(buffer, memory, 0) }.expect("vkBindBufferMemory");
        TestBuffer {
            ctx: ctx.clone(),
            buffer,
            memory,
            size,
            allocation_size: req.size,
            memory_type_index,
            mapped: None,
        }
    }

    /// A fresh opaque fd of the allocation.
    pub fn export_fd(&self) -> OwnedFd {
        let loader = ash::khr::external_memory_fd::Device::new(self.ctx.instance(), self.ctx.device());
        let info = vk::MemoryGetFdInfoKHR::default()
            .memory(self.memory)
            .handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
        // SAFETY: the memory was allocated exportable as opaque fd.
        let fd = unsafe { loader.get_memory_fd(&info) }.expect("vkGetMemoryFdKHR");
        // SAFETY: the driver made a new fd and gave it to us.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// Imports an exporter's allocation (`fd`, its allocation size and memory type) as a buffer
    /// of `size` bytes on `ctx`.
    pub fn import(
        ctx: &VulkanContext,
        fd: OwnedFd,
        size: u64,
        allocation_size: u64,
        memory_type_index: u32,
    ) -> TestBuffer {
        let buffer = Self::create_buffer(ctx, size, true);
        // SAFETY: buffer belongs to the device.
        let req = unsafe { ctx.device().get_buffer_memory_requirements(buffer) };
        assert!(req.memory_type_bits & (1 << memory_type_index) != 0, "exporter's memory type not allowed here");
        let mut import = vk::ImportMemoryFdInfoKHR::default()
            .handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD)
            .fd(fd.as_raw_fd());
        let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer);
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(allocation_size)
            .memory_type_index(memory_type_index)
            .push_next(&mut import)
            .push_next(&mut dedicated);
        // SAFETY: alloc and its chain live across the call; fd is an opaque-fd export of a
        // dedicated allocation of an identical buffer.
        let memory = unsafe { ctx.device().allocate_memory(&alloc, None) }.expect("vkAllocateMemory (import)");
        // The driver owns the fd after a successful import.
        std::mem::forget(fd);
        // SAFETY: dedicated allocation of this buffer, offset 0.
        unsafe { ctx.device().bind_buffer_memory(buffer, memory, 0) }.expect("vkBindBufferMemory");
        TestBuffer { ctx: ctx.clone(), buffer, memory, size, allocation_size, memory_type_index, mapped: None }
    }

    /// Sets every word of a readback buffer from the host (fresh memory holds garbage).
    pub fn set_words(&self, value: u32) {
        let ptr = self.mapped.expect("set_words() needs a readback buffer");
        // SAFETY: the mapping covers `size` bytes; no device access is in flight (the caller
        // has nothing submitted that uses it).
        unsafe { std::slice::from_raw_parts_mut(ptr, (self.size / 4) as usize) }.fill(value);
    }

    /// The mapped words of a readback buffer. Call only once the device finished writing.
    pub fn words(&self) -> Vec<u32> {
        let ptr = self.mapped.expect("words() needs a readback buffer");
        // SAFETY: the mapping covers `size` bytes, is host-coherent, and no device write is in
        // flight (the caller waited).
        unsafe { std::slice::from_raw_parts(ptr, (self.size / 4) as usize) }.to_vec()
    }
}

impl Drop for TestBuffer {
    fn drop(&mut self) {
        // SAFETY: tests drop buffers only after the work using them finished.
        unsafe {
            self.ctx.device().destroy_buffer(self.buffer, None);
            self.ctx.device().free_memory(self.memory, None);
        }
    }
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
    shared: &TestBuffer,
    readback: &TestBuffer,
    fill: u32,
    acquire: bool,
) -> RecordedCommands {
    let family = ctx.queue_family_index();
    let (buf, size) = (shared.buffer, shared.size);
    let acquire_t = OwnershipTransfer::new().acquire_buffer(family, buf, 0, size, StageAccess::TRANSFER_READ);
    let release_t = OwnershipTransfer::new().release_buffer(family, buf, 0, size, StageAccess::TRANSFER_WRITE);
    acquire_t.validate().unwrap();
    release_t.validate().unwrap();
    let readback_buf = readback.buffer;
    RecordedCommands::record(ctx, |dev, cmd| {
        // SAFETY: every handle is a live object of ctx's device; cmd is recording on its family.
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
    shared: &TestBuffer,
    readback: &TestBuffer,
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
    shared: &TestBuffer,
    readback: &TestBuffer,
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
pub fn initialize_shared(ctx: &VulkanContext, shared: &TestBuffer) {
    let (buf, size) = (shared.buffer, shared.size);
    ctx.run_commands(|dev, cmd| {
        let written = vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE);
        // SAFETY: live buffer of ctx's device; cmd is recording. The barrier orders the fill
        // before the first turn's copy, which comes later in submission order.
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

/// Sends `message` (one line of JSON) and `fds` in one SCM_RIGHTS message.
pub fn send_with_fds(stream: &UnixStream, message: &[u8], fds: &[OwnedFd]) {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&borrowed)));
    let len = (message.len() as u32).to_le_bytes();
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&len), IoSlice::new(message)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .expect("sendmsg");
    assert_eq!(sent, 4 + message.len(), "short sendmsg");
}

/// Receives what [`send_with_fds`] sent.
pub fn recv_with_fds(stream: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut len = [0u8; 4];
    let mut body = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut len), IoSliceMut::new(&mut body)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    let n = u32::from_le_bytes(len) as usize;
    assert!(got.bytes >= 4 && n <= body.len(), "malformed message");
    let mut have = got.bytes - 4;
    let mut stream_ref = stream;
    while have < n {
        have += stream_ref.read(&mut body[have..n]).expect("reading the rest of the message");
    }
    body.truncate(n);
    (body, fds)
}

/// Writes one status line (the child's verdict) to the parent.
pub fn send_line(mut stream: &UnixStream, line: &str) {
    stream.write_all(format!("{line}\n").as_bytes()).expect("writing a status line");
}
