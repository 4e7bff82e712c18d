//! The CUDA importer's block cache: pooled buffers of one block imported once and mapped once,
//! later buffers as views at their offsets. Data through two buffers of one block (host copies
//! and a cudarc copy), hit/miss statistics, release with the last buffer, buffers sent without
//! fds, fd counts on hits and refusals, concurrent first uses, and no CUDA memory or fd leak over
//! 1,000 cycles (cuMemGetInfo). GPU only: skipped with the reason elsewhere.

mod cuda_common;

use cuda_common::devices;
use lava_flow::cuda::CudaDevice;
use lava_flow::pool::{AllocationStrategy, CacheOutcome, PoolConfig};
use lava_flow::raw_gpu_handle::Uuid;
use lava_flow::vulkan::DedicatedPolicy;
use lava_flow::{Buffer, BufferOptions, Error, MemoryAllocator, VulkanContext};
use lava_flow_diag::selftest::cuda as selftest;
use lava_flow_diag::testing;

const SIZE: u64 = 64 << 10;

/// `count` pooled buffers of `size` bytes from one block of a fresh allocator (its own pool).
fn pooled(ctx: &VulkanContext, config: PoolConfig, size: u64, count: usize) -> (MemoryAllocator, Vec<Buffer>) {
    let allocator = MemoryAllocator::with_context(ctx.clone()).with_pool_config(config);
    let options = BufferOptions::new(size).strategy(AllocationStrategy::Pooled);
    let buffers: Vec<Buffer> =
        (0..count).map(|_| allocator.allocate_buffer(ctx.info().index, &options).expect("a pooled buffer")).collect();
    let id = buffers[0].memory().allocation_id();
    assert!(buffers.iter().all(|b| b.memory().allocation_id() == id), "the buffers share one block");
    (allocator, buffers)
}

#[test]
fn two_buffers_of_one_block_share_one_import_and_each_others_bytes() {
    let Some((ctx, cuda)) = devices() else { return };
    let (_allocator, mut vk) = pooled(&ctx, PoolConfig::default(), SIZE, 2);
    let (a, b) = vk.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    assert_ne!(a.offset(), b.offset());
    let (pa, pb) = (selftest::pattern(SIZE as usize, 21), selftest::pattern(SIZE as usize, 22));
    a.write(0, &pa).unwrap();
    b.write(0, &pb).unwrap();

    let before = cuda.block_cache_stats();
    let ea = a.export_fd().unwrap();
    let eb = b.export_fd().unwrap();
    assert_eq!(ea.memory.description.allocation_id, eb.memory.description.allocation_id);
    let (ca, outcome_a) = cuda.import_buffer_cached(ea).unwrap();
    let (mut cb, outcome_b) = cuda.import_buffer_cached(eb).unwrap();
    assert_eq!((outcome_a, outcome_b), (CacheOutcome::Miss, CacheOutcome::Hit));
    let stats = cuda.block_cache_stats();
    assert_eq!(stats.misses, before.misses + 1, "{stats:?}");
    assert_eq!(stats.hits, before.hits + 1, "{stats:?}");
    assert_eq!(stats.duplicate_fds_closed, before.duplicate_fds_closed + 1, "{stats:?}");
    assert_eq!(stats.live_blocks, 1, "{stats:?}");

    // One import, one mapping: the second buffer is the first's pointer plus the offsets' distance.
    assert_eq!(ca.memory().raw(), cb.memory().raw(), "both buffers come from one cuImportExternalMemory");
    assert_eq!(ca.offset_in_allocation(), a.offset());
    assert_eq!(cb.offset_in_allocation(), b.offset());
    assert_eq!(
        i128::from(cb.device_ptr_raw()) - i128::from(ca.device_ptr_raw()),
        i128::from(b.offset()) - i128::from(a.offset())
    );
    assert_eq!((ca.len(), cb.len()), (SIZE as usize, SIZE as usize));

    // Vulkan -> CUDA through both views.
    assert_eq!(ca.copy_to_host().unwrap(), pa);
    assert_eq!(cb.copy_to_host().unwrap(), pb);
    // CUDA -> Vulkan through the second view, leaving the first buffer's bytes alone.
    let nb = selftest::pattern(SIZE as usize, 23);
    cb.copy_from_host(&nb).unwrap();
    assert_eq!(b.read(0, SIZE).unwrap(), nb);
    assert_eq!(a.read(0, SIZE).unwrap(), pa, "a write through one view reached another buffer");
    // cudarc takes the views as device memory: copy a into b on the device.
    let stream = cuda.stream().clone();
    stream.memcpy_dtod(&ca, &mut cb).unwrap();
    stream.synchronize().unwrap();
    assert_eq!(b.read(0, SIZE).unwrap(), pa);
    assert_eq!(cb.copy_to_host().unwrap(), pa);
    cuda.check_deferred().unwrap();
}

#[test]
fn the_cache_lets_go_with_the_last_buffer_and_serves_buffers_sent_without_fds() {
    let Some((ctx, cuda)) = devices() else { return };
    let (_allocator, mut vk) = pooled(&ctx, PoolConfig::default(), SIZE, 4);
    let patterns: Vec<Vec<u8>> = (0..4).map(|i| selftest::pattern(SIZE as usize, 30 + i)).collect();
    for (b, p) in vk.iter_mut().zip(&patterns) {
        b.write(0, p).unwrap();
    }
    let start = cuda.block_cache_stats();
    let mut imported = Vec::new();
    for (i, b) in vk.iter().take(3).enumerate() {
        let (buffer, outcome) = cuda.import_buffer_cached(b.export_fd().unwrap()).unwrap();
        assert_eq!(outcome, if i == 0 { CacheOutcome::Miss } else { CacheOutcome::Hit });
        imported.push(buffer);
    }
    // The fourth arrives as descriptions alone (a peer sent the block's fd before): a hit, no fd.
    let e3 = vk[3].export_fd().unwrap();
    let (memory, place) = (e3.memory.description, e3.buffer);
    drop(e3);
    let fourth = cuda.import_buffer_from_cache(&memory, place).unwrap().expect("the block is imported");
    assert_eq!(fourth.copy_to_host().unwrap(), patterns[3]);
    let stats = cuda.block_cache_stats();
    assert_eq!((stats.misses - start.misses, stats.hits - start.hits), (1, 3), "{stats:?}");
    assert_eq!(stats.live_blocks, 1);

    // Dropping all but one keeps the block; the last one still sees its bytes.
    let keep = imported.pop().unwrap();
    drop(imported);
    drop(fourth);
    assert_eq!(cuda.block_cache_stats().live_blocks, 1);
    assert_eq!(keep.copy_to_host().unwrap(), patterns[2]);

    // The last buffer lets go of the mapping. A clone of the import outlives it but is not the
    // cache's entry: the next buffer of the block imports it afresh.
    let memory_handle = keep.memory().clone();
    drop(keep);
    assert_eq!(cuda.block_cache_stats().live_blocks, 0);
    assert!(cuda.import_buffer_from_cache(&memory, place).unwrap().is_none(), "the block was released");
    let (again, outcome) = cuda.import_buffer_cached(vk[1].export_fd().unwrap()).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_ne!(again.memory().raw(), memory_handle.raw(), "a fresh import, not the released one");
    assert_eq!(again.copy_to_host().unwrap(), patterns[1]);
    drop(memory_handle);
    let stats = cuda.block_cache_stats();
    assert_eq!((stats.misses - start.misses, stats.hits - start.hits), (2, 3), "{stats:?}");
    assert_eq!(stats.failed_imports, start.failed_imports);
}

#[test]
fn hits_close_their_duplicate_fd_and_refusals_close_it_once() {
    let Some((ctx, cuda)) = devices() else { return };
    // Warm up: the first import may open driver files that stay open.
    selftest::buffer_vulkan_to_cuda(&ctx, &cuda, 1 << 16).unwrap();
    let (_allocator, vk) = pooled(&ctx, PoolConfig::default(), SIZE, 3);
    let anchor = cuda.import_buffer(vk[0].export_fd().unwrap()).unwrap();

    let before = testing::open_fd_count();
    let hits_before = cuda.block_cache_stats().hits;
    for i in 0..100 {
        let exported = vk[1 + i % 2].export_fd().unwrap();
        let (buffer, outcome) = cuda.import_buffer_cached(exported).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);
        drop(buffer);
    }
    assert_eq!(testing::open_fd_count(), before, "each hit closes the duplicate fd it was given");
    assert_eq!(cuda.block_cache_stats().hits, hits_before + 100);

    // A description that disagrees with the cached block (two allocations claiming one id).
    let mut exported = vk[1].export_fd().unwrap();
    exported.memory.description.allocation_size += 1 << 20;
    let err = cuda.import_buffer(exported).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("two allocations claim one id"), "{err}");
    assert_eq!(testing::open_fd_count(), before, "the refused hit's fd is closed exactly once");

    // A buffer outside its block, and another device's block: refused before the cache.
    let mut exported = vk[1].export_fd().unwrap();
    exported.buffer.offset = exported.memory.description.allocation_size - SIZE / 2;
    let err = cuda.import_buffer(exported).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let mut exported = vk[2].export_fd().unwrap();
    let bogus = Uuid([0x42; 16]);
    exported.memory.description.device.device_uuid = bogus;
    let err = cuda.import_buffer(exported).unwrap_err();
    assert!(matches!(err, Error::IncompatibleDevice(_)), "{err}");
    assert_eq!(testing::open_fd_count(), before, "refused fds are closed exactly once");

    // A failed miss (a block nobody imported, with a wrong size) closes its fd once and is not cached.
    let (_other_allocator, other) = pooled(&ctx, PoolConfig::default(), SIZE, 1);
    // The block's first export opens the fd the block keeps for later exports: before counting.
    drop(other[0].export_fd().unwrap());
    let failed_before = cuda.block_cache_stats().failed_imports;
    let before = testing::open_fd_count();
    let mut exported = other[0].export_fd().unwrap();
    exported.memory.description.allocation_size += 64 << 20;
    let err = cuda.import_buffer(exported).unwrap_err();
    assert!(!err.is_unavailable(), "a wrong size is an error, not a missing feature: {err}");
    assert_eq!(testing::open_fd_count(), before, "the failed import's fd is closed exactly once");
    assert_eq!(cuda.block_cache_stats().failed_imports, failed_before + 1);
    // The refusals disturbed neither the cached block nor the device.
    let (buffer, outcome) = cuda.import_buffer_cached(other[0].export_fd().unwrap()).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    drop(buffer);
    assert_eq!(anchor.copy_to_host().unwrap().len(), SIZE as usize);
    cuda.check_deferred().unwrap();
}

#[test]
fn dedicated_and_unnamed_exports_are_imported_on_their_own() {
    let Some((ctx, cuda)) = devices() else { return };
    let start = cuda.block_cache_stats();
    let mut dedicated = Buffer::new(&ctx, &BufferOptions::new(1 << 20).dedicated(DedicatedPolicy::Always)).unwrap();
    let data = selftest::pattern(1 << 20, 41);
    dedicated.write(0, &data).unwrap();
    let (x, ox) = cuda.import_buffer_cached(dedicated.export_fd().unwrap()).unwrap();
    let (y, oy) = cuda.import_buffer_cached(dedicated.export_fd().unwrap()).unwrap();
    assert_eq!((ox, oy), (CacheOutcome::Miss, CacheOutcome::Miss));
    assert_ne!(x.memory().raw(), y.memory().raw(), "dedicated allocations are imported one by one");
    assert_eq!(y.copy_to_host().unwrap(), data);

    let mut own = Buffer::new(&ctx, &BufferOptions::new(1 << 20).strategy(AllocationStrategy::Dedicated)).unwrap();
    own.write(0, &data).unwrap();
    let mut unnamed = own.export_fd().unwrap();
    unnamed.memory.description.allocation_id = None;
    let (z, oz) = cuda.import_buffer_cached(unnamed).unwrap();
    assert_eq!(oz, CacheOutcome::Miss);
    assert_eq!(z.copy_to_host().unwrap(), data);
    let stats = cuda.block_cache_stats();
    assert_eq!((stats.hits, stats.misses), (start.hits, start.misses), "the cache was not involved: {stats:?}");
}

#[test]
fn a_view_outlives_the_exporter_and_the_other_buffers_of_its_block() {
    let Some((ctx, cuda)) = devices() else { return };
    let (allocator, mut vk) = pooled(&ctx, PoolConfig::default(), SIZE, 2);
    let pb = selftest::pattern(SIZE as usize, 51);
    vk[1].write(0, &pb).unwrap();
    let ca = cuda.import_buffer(vk[0].export_fd().unwrap()).unwrap();
    let cb = cuda.import_buffer(vk[1].export_fd().unwrap()).unwrap();
    drop(vk);
    drop(allocator);
    drop(ctx);
    drop(ca);
    // The block's CUDA import holds the memory, and the mapping holds the import.
    assert_eq!(cb.copy_to_host().unwrap(), pb);
    assert_eq!(cuda.block_cache_stats().live_blocks, 1);
    drop(cb);
    assert_eq!(cuda.block_cache_stats().live_blocks, 0);
}

#[test]
fn eight_threads_importing_one_block_import_it_once() {
    let Some((ctx, cuda)) = devices() else { return };
    let (_allocator, mut vk) = pooled(&ctx, PoolConfig::default(), SIZE, 8);
    let patterns: Vec<Vec<u8>> = (0..8).map(|i| selftest::pattern(SIZE as usize, 60 + i)).collect();
    for (b, p) in vk.iter_mut().zip(&patterns) {
        b.write(0, p).unwrap();
    }
    let start = cuda.block_cache_stats();
    let barrier = std::sync::Barrier::new(8);
    let imported: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = vk
            .iter()
            .zip(&patterns)
            .map(|(b, p)| {
                let exported = b.export_fd().unwrap();
                let cuda: CudaDevice = cuda.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let (buffer, _) = cuda.import_buffer_cached(exported).unwrap();
                    assert_eq!(&buffer.copy_to_host().unwrap(), p);
                    buffer
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stats = cuda.block_cache_stats();
    assert_eq!((stats.misses - start.misses, stats.hits - start.hits), (1, 7), "{stats:?}");
    assert!(imported.iter().all(|b| b.memory().raw() == imported[0].memory().raw()));
}

#[test]
fn no_cuda_memory_or_fd_leak_across_1000_pooled_import_cycles() {
    let Some((ctx, cuda)) = devices() else { return };
    // Small blocks, none kept empty: each cycle's block is allocated, then freed by Vulkan before
    // CUDA lets go, so only CUDA's release returns the memory.
    let block = 4u64 << 20;
    let config = PoolConfig { block_size: block, dedicated_threshold: 1 << 20, ..PoolConfig::default() };
    let allocator = MemoryAllocator::with_context(ctx.clone()).with_pool_config(config);
    let options = BufferOptions::new(SIZE).strategy(AllocationStrategy::Pooled);
    let cycle = || {
        let a = allocator.allocate_buffer(ctx.info().index, &options).unwrap();
        let b = allocator.allocate_buffer(ctx.info().index, &options).unwrap();
        let (ca, oa) = cuda.import_buffer_cached(a.export_fd().unwrap()).unwrap();
        let (cb, ob) = cuda.import_buffer_cached(b.export_fd().unwrap()).unwrap();
        assert_eq!((oa, ob), (CacheOutcome::Miss, CacheOutcome::Hit));
        assert_eq!(ca.len() + cb.len(), 2 * SIZE as usize);
        drop((a, b));
        drop((ca, cb));
    };
    for _ in 0..10 {
        cycle();
    }
    let start = cuda.block_cache_stats();
    let (free_before, _) = cuda.mem_get_info().unwrap();
    let fds_before = testing::open_fd_count();
    for _ in 0..1000 {
        cycle();
    }
    cuda.check_deferred().unwrap();
    let (free_after, _) = cuda.mem_get_info().unwrap();
    assert_eq!(testing::open_fd_count(), fds_before, "fds leaked");
    // Slack for the driver's bookkeeping; a leaked import would hold a 4 MiB block per cycle.
    assert!(
        free_after + 4 * block >= free_before,
        "CUDA free memory fell from {free_before} to {free_after} over 1,000 cycles"
    );
    let stats = cuda.block_cache_stats();
    assert_eq!((stats.misses - start.misses, stats.hits - start.hits), (1000, 1000), "{stats:?}");
    assert_eq!(stats.live_blocks, 0, "{stats:?}");
    assert!(stats.entries <= 128, "released entries are swept: {stats:?}");
    assert_eq!(allocator.pool().stats().blocks, 0, "Vulkan gave every block back");
}
