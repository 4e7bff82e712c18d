//! Pooled buffers: small buffers carved from one exportable block, imported by a second device
//! and by a second process through the importer's block cache. Each path checks every buffer's
//! bytes both ways and that only the first buffer of the block was really imported.

use lava_flow::pool::{AllocationStrategy, BlockImporter};
use lava_flow::{Buffer, BufferOptions, MemoryAllocator, VulkanContext};

use super::peer::{hand_to_peer_many, Shared};
use super::vulkan::{gpu_read, gpu_write};
use super::{check_bytes, fail, pattern, spoil, Runner, Step};

/// Size of each pooled buffer.
pub const POOLED_SIZE: u64 = 64 << 10;
/// Buffers carved from the block per path.
pub const POOLED_COUNT: usize = 4;

/// The pool paths' names.
const BETWEEN_DEVICES: &str = "pool: 4 pooled 64 KiB buffers of one block, device A <-> device B, cached imports";
const TO_PEER: &str = "pool: 4 pooled 64 KiB buffers of one block -> other process, fds over SCM_RIGHTS";

// The names above spell out the count and size.
const _: () = assert!(POOLED_COUNT == 4 && POOLED_SIZE == 64 << 10);

pub fn run(runner: &mut Runner) {
    if !runner.wants_any([BETWEEN_DEVICES, TO_PEER, "pool: pooled buffers"]) {
        return;
    }
    let pair = VulkanContext::new().and_then(|a| VulkanContext::with_uuid(a.identity().device_uuid).map(|b| (a, b)));
    let (a, b) = match pair {
        Ok(p) => p,
        Err(e) => {
            let paths = [("vulkan", BETWEEN_DEVICES.to_string()), ("vulkan", TO_PEER.to_string())];
            return runner.skip_all(("vulkan", "pool: pooled buffers"), &paths, e.to_string());
        }
    };
    let size = POOLED_SIZE * POOLED_COUNT as u64;
    runner.run("vulkan", BETWEEN_DEVICES, size, |r| between_devices(&a, &b, r.corrupt(BETWEEN_DEVICES)));
    runner.run("vulkan", TO_PEER, size, |r| to_peer(&a, r.corrupt(TO_PEER)));
}

/// Allocates `POOLED_COUNT` pooled buffers on `ctx` (one block), each written with its own pattern.
fn pooled_buffers(ctx: &VulkanContext, seed: u64) -> Step<(MemoryAllocator, Vec<Buffer>)> {
    let allocator = MemoryAllocator::with_context(ctx.clone());
    let options = BufferOptions::new(POOLED_SIZE).strategy(AllocationStrategy::Pooled);
    let mut buffers = Vec::new();
    for i in 0..POOLED_COUNT {
        let mut buffer = allocator.allocate_buffer(ctx.info().index, &options)?;
        buffer.write(0, &pattern(seed + i as u64, POOLED_SIZE as usize))?;
        buffers.push(buffer);
    }
    let first = buffers[0].memory().allocation_id();
    if buffers.iter().any(|b| b.memory().allocation_id() != first) {
        return fail("the pooled buffers did not come from one block");
    }
    Ok((allocator, buffers))
}

fn between_devices(a: &VulkanContext, b: &VulkanContext, corrupt: bool) -> Step {
    let (_allocator, buffers) = pooled_buffers(a, 40)?;
    let importer = BlockImporter::new(b);
    let mut imported = Vec::new();
    for buffer in &buffers {
        imported.push(importer.import_buffer(buffer.export_fd()?)?);
    }
    let stats = importer.stats();
    if stats.misses != 1 || stats.hits != POOLED_COUNT as u64 - 1 {
        return fail(format!(
            "expected 1 block import and {} cache hits, got {} imports and {} hits",
            POOLED_COUNT - 1,
            stats.misses,
            stats.hits
        ));
    }
    for (i, (theirs, ours)) in imported.iter().zip(&buffers).enumerate() {
        let i = i as u64;
        check_bytes(
            &format!("device B's copy of pooled buffer {i}"),
            &pattern(40 + i, POOLED_SIZE as usize),
            &gpu_read(theirs)?,
        )?;
        let mut reply = pattern(50 + i, POOLED_SIZE as usize);
        if corrupt && i == 1 {
            spoil(&mut reply);
        }
        gpu_write(theirs, &reply)?;
        check_bytes(
            &format!("device A's read of pooled buffer {i}"),
            &pattern(50 + i, POOLED_SIZE as usize),
            &ours.read(0, POOLED_SIZE)?,
        )?;
    }
    Ok(())
}

fn to_peer(ctx: &VulkanContext, corrupt: bool) -> Step {
    let (_allocator, buffers) = pooled_buffers(ctx, 60)?;
    let mut descriptions = Vec::new();
    let mut fds = Vec::new();
    for buffer in &buffers {
        let exported = buffer.export_fd()?;
        descriptions.push((exported.memory.description, exported.buffer));
        fds.push(exported.memory.handle);
    }
    hand_to_peer_many(Shared::PooledBuffers { buffers: descriptions }, fds, 60, 70, corrupt)?;
    for (i, buffer) in buffers.iter().enumerate() {
        let i = i as u64;
        check_bytes(
            &format!("what the other process wrote into pooled buffer {i}"),
            &pattern(70 + i, POOLED_SIZE as usize),
            &gpu_read(buffer)?,
        )?;
    }
    Ok(())
}

/// The peer's side: import every buffer through one block cache, check, write the replies.
pub fn peer_side(
    buffers: Vec<(lava_flow::raw_gpu_handle::MemoryDescription, lava_flow::raw_gpu_handle::BufferDescription)>,
    fds: Vec<std::os::fd::OwnedFd>,
    seed: u64,
    reply_seed: u64,
    corrupt: bool,
) -> Step {
    if buffers.len() != fds.len() || buffers.is_empty() {
        return fail(format!("{} descriptions arrived with {} fds", buffers.len(), fds.len()));
    }
    let ctx = VulkanContext::with_uuid(buffers[0].0.device.device_uuid)?;
    let importer = BlockImporter::new(&ctx);
    let mut imported = Vec::new();
    for ((memory, buffer), fd) in buffers.into_iter().zip(fds) {
        let exported = lava_flow::raw_gpu_handle::ExportedBuffer::new(
            lava_flow::raw_gpu_handle::MemoryHandle::new(fd, memory),
            buffer,
        );
        imported.push(importer.import_buffer(exported)?);
    }
    let stats = importer.stats();
    if stats.misses != 1 {
        return fail(format!("the other process imported the block {} times, expected once", stats.misses));
    }
    for (i, buffer) in imported.iter().enumerate() {
        let i = i as u64;
        let len = buffer.size() as usize;
        check_bytes(&format!("pooled buffer {i} in the other process"), &pattern(seed + i, len), &gpu_read(buffer)?)?;
        let mut reply = pattern(reply_seed + i, len);
        if corrupt && i == 1 {
            spoil(&mut reply);
        }
        gpu_write(buffer, &reply)?;
    }
    Ok(())
}
