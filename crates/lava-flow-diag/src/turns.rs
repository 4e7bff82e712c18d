//! The turn-taking rounds two Vulkan devices or processes play on one shared buffer, ordered by
//! shared semaphores: the patterns each side writes, the recorded turn (acquire from the
//! external queue family, copy to a readback buffer, fill, release), and the word check. Used by
//! `lava-flow selftest`'s semaphore paths and by lava-flow's sync tests.

use ash::vk;
use lava_flow::vulkan::sync::{OwnershipTransfer, RecordedCommands, Semaphore, StageAccess, Submission};
use lava_flow::vulkan::MemoryKind;
use lava_flow::{Buffer, BufferOptions, Result, VulkanContext};

/// What the writer (side A) fills the shared buffer with in round `r`.
pub fn writer_pattern(r: u64) -> u32 {
    0xA000_0000 | (r as u32 & 0x0fff_ffff)
}

/// What the reader (side B) fills it with in round `r` (0: the contents before round 1).
pub fn reader_pattern(r: u64) -> u32 {
    0xB000_0000 | (r as u32 & 0x0fff_ffff)
}

/// A host-visible buffer of `size` bytes that stays on its device, to read results back.
pub fn readback(ctx: &VulkanContext, size: u64) -> Result<Buffer> {
    Buffer::new(ctx, &BufferOptions::new(size).memory(MemoryKind::HostVisible).export(None))
}

/// Every word of a host-visible buffer. Call only once the device finished writing it.
pub fn read_words(buffer: &Buffer) -> Result<Vec<u32>> {
    let bytes = buffer.read(0, buffer.size())?;
    Ok(bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect())
}

/// `None` where every word of `words` is `expected`, else a message naming `what`, the first
/// wrong word and how many are wrong.
pub fn wrong_words(words: &[u32], expected: u32, what: &str) -> Option<String> {
    let (i, w) = words.iter().enumerate().find(|(_, w)| **w != expected)?;
    let wrong = words.iter().filter(|w| **w != expected).count();
    Some(format!("{what}: word {i} is {w:#010x}, expected {expected:#010x} ({wrong} of {} words wrong)", words.len()))
}

/// Fills the shared buffer with `reader_pattern(0)` on its owner's queue before round 1.
pub fn initialize_shared(ctx: &VulkanContext, shared: &Buffer) -> Result<()> {
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
}

/// Records a global memory barrier from the transfer stage's `src` accesses to `dst` accesses
/// at `dst_stage` (transfer and/or host): between a copy and a fill of the same buffer, or to
/// make transfer writes visible to the host once the submission is waited for.
///
/// # Safety
/// `cmd` is a command buffer of `dev` in the recording state; `dst_stage` is a stage its queue
/// family supports (transfer and host are supported by every family).
pub unsafe fn cmd_transfer_barrier(
    dev: &ash::Device,
    cmd: vk::CommandBuffer,
    src: vk::AccessFlags,
    dst: vk::AccessFlags,
    dst_stage: vk::PipelineStageFlags,
) {
    let barrier = vk::MemoryBarrier::default().src_access_mask(src).dst_access_mask(dst);
    // SAFETY: the caller guarantees cmd is recording on dev with a supported dst_stage; the barrier
    // array is a local that outlives the call.
    unsafe {
        dev.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER,
            dst_stage,
            vk::DependencyFlags::empty(),
            &[barrier],
            &[],
            &[],
        )
    };
}

/// One side's turn: acquire the shared buffer from the external queue family (unless this side
/// still owns it), copy it to `readback`, fill it with `fill`, release it. `corrupt` spoils one
/// word of the fill (the self-test's `--corrupt`).
pub fn record_turn(
    ctx: &VulkanContext,
    shared: &Buffer,
    readback: &Buffer,
    fill: u32,
    acquire: bool,
    corrupt: bool,
) -> Result<RecordedCommands> {
    let family = ctx.queue_family_index();
    let (buf, size) = (shared.handle(), shared.size());
    let acquire_t = OwnershipTransfer::new().acquire_buffer(family, buf, 0, size, StageAccess::TRANSFER_READ);
    let release_t = OwnershipTransfer::new().release_buffer(family, buf, 0, size, StageAccess::TRANSFER_WRITE);
    acquire_t.validate()?;
    release_t.validate()?;
    let readback_buf = readback.handle();
    RecordedCommands::record(ctx, |dev, cmd| {
        let transfer_barrier = |src: vk::AccessFlags, dst: vk::AccessFlags, dst_stage: vk::PipelineStageFlags| {
            // SAFETY: cmd is recording on ctx's family (RecordedCommands::record); the stages are transfer
            // and host, which every queue family accepts.
            unsafe { cmd_transfer_barrier(dev, cmd, src, dst, dst_stage) };
        };
        // SAFETY: cmd is recording on ctx's family; the shared and readback buffers are live buffers of
        // ctx's device with the transfer usages, kept alive by the caller until the turn's submissions
        // completed; the acquire passed validate() above.
        unsafe {
            if acquire {
                acquire_t.record(dev, cmd);
            }
            dev.cmd_copy_buffer(cmd, buf, readback_buf, &[vk::BufferCopy::default().size(size)]);
        }
        // The copy reads the buffer before the fill overwrites it; the readback becomes visible
        // to the host once the submission is waited for.
        transfer_barrier(
            vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE,
            vk::AccessFlags::TRANSFER_WRITE | vk::AccessFlags::HOST_READ,
            vk::PipelineStageFlags::TRANSFER | vk::PipelineStageFlags::HOST,
        );
        // SAFETY: as above; `shared` has TRANSFER_DST and a size that is a multiple of 4.
        unsafe { dev.cmd_fill_buffer(cmd, buf, 0, size, fill) };
        if corrupt {
            transfer_barrier(
                vk::AccessFlags::TRANSFER_WRITE,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::PipelineStageFlags::TRANSFER,
            );
            // SAFETY: as above; one aligned word at (size / 2) & !3, inside the buffer.
            unsafe { dev.cmd_fill_buffer(cmd, buf, (size / 2) & !3, 4, fill ^ 0x5a5a_5a5a) };
        }
        // SAFETY: as above; the release passed validate() above.
        unsafe { release_t.record(dev, cmd) };
    })
}

/// Side A's part of round `r` (1-based): wait on `semaphore` (a timeline) for B's round `r - 1`
/// (`2r - 2`), read what B wrote, write [`writer_pattern`], signal `2r - 1`. The commands must
/// outlive the submission.
pub fn submit_writer_turn(
    ctx: &VulkanContext,
    semaphore: &Semaphore,
    shared: &Buffer,
    readback: &Buffer,
    r: u64,
) -> Result<RecordedCommands> {
    let cmds = record_turn(ctx, shared, readback, writer_pattern(r), r > 1, false)?;
    Submission::new()
        .wait(semaphore, 2 * r - 2, vk::PipelineStageFlags::TRANSFER)
        .commands(&cmds)
        .signal(semaphore, 2 * r - 1)
        .submit(ctx)?;
    Ok(cmds)
}

/// Side B's part of round `r`: wait for A's write (`2r - 1`), read it, write
/// [`reader_pattern`] (one word spoiled where `corrupt`), signal `2r`.
pub fn submit_reader_turn(
    ctx: &VulkanContext,
    semaphore: &Semaphore,
    shared: &Buffer,
    readback: &Buffer,
    r: u64,
    corrupt: bool,
) -> Result<RecordedCommands> {
    let cmds = record_turn(ctx, shared, readback, reader_pattern(r), true, corrupt)?;
    Submission::new()
        .wait(semaphore, 2 * r - 1, vk::PipelineStageFlags::TRANSFER)
        .commands(&cmds)
        .signal(semaphore, 2 * r)
        .submit(ctx)?;
    Ok(cmds)
}

/// Records into `cmd`: `acquire`, a copy of all of `shared` to `out`, and a barrier that makes
/// the copy visible to the host once the submission is waited for.
///
/// # Safety
/// `cmd` is recording on the queue family `acquire` names, on the device both buffers belong to;
/// both are live buffers with the transfer usages, `out` at least `shared.size()` bytes, kept
/// alive until every submission of `cmd` completed; `acquire` is valid for that family.
pub unsafe fn cmd_acquire_and_copy(
    dev: &ash::Device,
    cmd: vk::CommandBuffer,
    acquire: &OwnershipTransfer,
    shared: &Buffer,
    out: &Buffer,
) {
    // SAFETY: the caller guarantees cmd is recording on acquire's family and the buffers are live
    // buffers of that device with the transfer usages, `out` large enough; transfer and host are
    // stages every queue family supports.
    unsafe {
        acquire.record(dev, cmd);
        dev.cmd_copy_buffer(cmd, shared.handle(), out.handle(), &[vk::BufferCopy::default().size(shared.size())]);
        cmd_transfer_barrier(
            dev,
            cmd,
            vk::AccessFlags::TRANSFER_WRITE,
            vk::AccessFlags::HOST_READ,
            vk::PipelineStageFlags::HOST,
        );
    }
}

/// Records, for repeated submission: acquire `shared` from the external queue family, copy it to
/// `out` (at least as large), and make the copy visible to the host. Both buffers must outlive
/// every submission of the commands.
pub fn acquire_and_copy(ctx: &VulkanContext, shared: &Buffer, out: &Buffer) -> Result<RecordedCommands> {
    let acquire = OwnershipTransfer::new().acquire_whole_buffer(shared, StageAccess::TRANSFER_READ);
    acquire.validate()?;
    RecordedCommands::record(ctx, |dev, cmd| {
        // SAFETY: cmd is recording on ctx's family (RecordedCommands::record), the family the acquire
        // names and validate() accepted; both buffers are ctx's, with the transfer usages, and the
        // caller keeps them alive until the submissions completed.
        unsafe { cmd_acquire_and_copy(dev, cmd, &acquire, shared, out) }
    })
}
