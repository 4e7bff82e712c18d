//! Pooled exportable buffers on a real Vulkan driver (lavapipe here, the GPU's driver on the GPU
//! machine): buffers carved from one block, exports that name the block, imports into a second
//! device and a second process that import the block once, and memory returned after all frees.

mod common;

use std::sync::Arc;

use common::{pattern, two_devices, vulkan};
use lava_flow::ipc::{Client, NamedObject, Server, ServerConfig};
use lava_flow::pool::{AllocationStrategy, BlockImporter, BufferPool, CacheOutcome, PoolConfig};
use lava_flow::raw_gpu_handle::{
    BufferDescription, ExportedBuffer, MemoryDescription, MemoryHandle, MemoryHandleKind, Uuid,
};
use lava_flow::vulkan::{DedicatedPolicy, MemoryKind};
use lava_flow::{Buffer, BufferOptions, Error, MemoryAllocator, VulkanContext};
use lava_flow_diag::testing::open_fd_count;

const KIB64: u64 = 64 << 10;

fn allocator(ctx: &VulkanContext, config: PoolConfig) -> MemoryAllocator {
    MemoryAllocator::with_context(ctx.clone()).with_pool_config(config)
}

fn device_id(ctx: &VulkanContext) -> usize {
    ctx.info().index
}

/// Shared mappings of this process (`/proc/self/maps` entries with `s` permission): where a
/// driver maps device memory into the process (lavapipe maps each allocation's memfd), a block
/// that is still alive in the exporter or an importer shows here.
fn shared_mappings() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|perms| perms.ends_with('s'))).count()
}

fn pooled(size: u64) -> BufferOptions {
    BufferOptions::new(size).strategy(AllocationStrategy::Pooled)
}

#[test]
fn small_buffers_share_a_block_and_exports_name_it() {
    let Some(ctx) = vulkan() else { return };
    let alloc = allocator(&ctx, PoolConfig::default());
    let id = device_id(&ctx);
    let a = alloc.allocate_buffer(id, &BufferOptions::new(KIB64)).unwrap();
    let b = alloc.allocate_buffer(id, &BufferOptions::new(1000)).unwrap();
    assert!(Arc::ptr_eq(a.memory(), b.memory()), "Auto pools small buffers into one block");
    assert_eq!(a.memory().size(), PoolConfig::default().block_size);
    assert!(a.offset() + KIB64 <= b.offset() || b.offset() + 1000 <= a.offset(), "ranges overlap");
    for buf in [&a, &b] {
        assert_eq!(buf.offset() % buf.description().alignment, 0, "offset honours the buffer's alignment");
    }
    let ea = a.export_fd().unwrap();
    let eb = b.export_fd().unwrap();
    let (da, db) = (ea.memory.description, eb.memory.description);
    assert_eq!(da.allocation_id, Some(a.memory().allocation_id()), "the export names the block");
    assert_eq!(da.allocation_id, db.allocation_id);
    assert_eq!(da.allocation_size, a.memory().size(), "the whole block's size, as importers need");
    assert!(!da.dedicated);
    assert_eq!(da.device, ctx.identity());
    assert_eq!((ea.buffer.offset, ea.buffer.size), (a.offset(), KIB64));
    assert_eq!((eb.buffer.offset, eb.buffer.size), (b.offset(), 1000));
    let s = alloc.pool().stats();
    assert_eq!((s.blocks, s.live_buffers, s.blocks_created, s.pooled_allocations), (1, 2, 1, 2));
    assert!(s.used_bytes >= KIB64 + 1000 && s.used_bytes < s.block_bytes);
    // Every export is a fresh fd (a duplicate of the block's), closed on drop.
    let before = open_fd_count();
    let again = a.export_fd().unwrap();
    assert_eq!(open_fd_count(), before + 1);
    drop(again);
    assert_eq!(open_fd_count(), before);
}

#[test]
fn strategy_and_threshold_choose_the_allocation() {
    let Some(ctx) = vulkan() else { return };
    let config = PoolConfig {
        block_size: 8 << 20,
        dedicated_threshold: 1 << 20,
        retain_empty_blocks: 0,
        ..PoolConfig::default()
    };
    let alloc = allocator(&ctx, config);
    let id = device_id(&ctx);
    let small = alloc.allocate_buffer(id, &BufferOptions::new(KIB64)).unwrap();
    let large = alloc.allocate_buffer(id, &BufferOptions::new(2 << 20)).unwrap();
    assert_eq!(small.memory().size(), 8 << 20, "at or under the threshold: pooled");
    assert!(large.memory().size() < 8 << 20 && large.offset() == 0, "above the threshold: its own allocation");
    let forced_own =
        alloc.allocate_buffer(id, &BufferOptions::new(KIB64).strategy(AllocationStrategy::Dedicated)).unwrap();
    assert!(!Arc::ptr_eq(forced_own.memory(), small.memory()));
    assert!(forced_own.memory().size() < 8 << 20);
    let forced_pool = alloc.allocate_buffer(id, &pooled(2 << 20)).unwrap();
    assert!(Arc::ptr_eq(forced_pool.memory(), small.memory()), "forced pooling of a large buffer");
    let huge = alloc.allocate_buffer(id, &pooled(12 << 20)).unwrap();
    assert_eq!(huge.memory().size(), 12 << 20, "a block sized to a buffer larger than the block size");
    // DedicatedPolicy::Always under Auto: its own (Vulkan dedicated) allocation.
    let dedicated = alloc.allocate_buffer(id, &BufferOptions::new(KIB64).dedicated(DedicatedPolicy::Always)).unwrap();
    assert!(dedicated.memory().dedicated());
    // Shared host memory under Auto: its own memfd.
    if ctx.extensions().external_memory_host {
        let host = alloc.allocate_buffer(id, &BufferOptions::new(KIB64).memory(MemoryKind::SharedHost)).unwrap();
        assert!(host.memory().host_memory().is_some());
    }
    let s = alloc.pool().stats();
    assert_eq!(s.blocks, 2);
    assert_eq!(s.pooled_allocations, 3);
    assert!(s.dedicated_allocations >= 3);

    // Forcing pooling where it cannot be: typed errors that say what to do.
    for (options, why) in [
        (pooled(KIB64).memory(MemoryKind::SharedHost), "shared host"),
        (pooled(KIB64).dedicated(DedicatedPolicy::Always), "DedicatedPolicy::Always"),
        (pooled(0), "0 bytes"),
        (pooled(KIB64).export(Some(MemoryHandleKind::HostMemfd)), "host-memfd"),
    ] {
        let err = alloc.allocate_buffer(id, &options).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{why}: {err}");
    }
}

#[test]
fn second_device_imports_a_block_once() {
    let Some((a, b)) = two_devices() else { return };
    let alloc = allocator(&a, PoolConfig::default());
    let id = device_id(&a);
    let mut bufs: Vec<Buffer> = (0..3).map(|_| alloc.allocate_buffer(id, &pooled(KIB64)).unwrap()).collect();
    for (i, buf) in bufs.iter_mut().enumerate() {
        buf.write(0, &pattern(KIB64 as usize, i as u32 + 1)).unwrap();
    }
    let importer = BlockImporter::new(&b);
    let usage = lava_flow::vulkan::caps::DEFAULT_BUFFER_USAGE;

    let (first, outcome) = importer.import_buffer_with_usage(bufs[0].export_fd().unwrap(), usage).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    let before_export = open_fd_count();
    let exported = bufs[1].export_fd().unwrap();
    assert_eq!(open_fd_count(), before_export + 1);
    let (second, outcome) = importer.import_buffer_with_usage(exported, usage).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit, "the second buffer of the block costs only an offset");
    assert_eq!(open_fd_count(), before_export, "the duplicate fd of a cache hit is closed");
    let third = importer.import_buffer(bufs[2].export_fd().unwrap()).unwrap();
    assert!(Arc::ptr_eq(first.memory(), second.memory()) && Arc::ptr_eq(first.memory(), third.memory()));
    assert_eq!(second.offset(), bufs[1].offset(), "imported at the exporter's offset");
    let s = importer.stats();
    assert_eq!((s.misses, s.hits, s.duplicate_fds_closed, s.live_blocks), (1, 2, 2, 1));

    // Data both ways, through the shared block.
    for (i, imported) in [&first, &second, &third].into_iter().enumerate() {
        assert_eq!(imported.read(0, KIB64).unwrap(), pattern(KIB64 as usize, i as u32 + 1));
    }
    second.fill(0x0102_0304).unwrap();
    let back = bufs[1].read(0, KIB64).unwrap();
    assert!(back.chunks(4).all(|c| c == [4, 3, 2, 1]), "the exporter sees the importer's GPU fill");
    assert_eq!(bufs[0].read(0, KIB64).unwrap(), pattern(KIB64 as usize, 1), "the neighbour is untouched");
    assert_eq!(bufs[2].read(0, KIB64).unwrap(), pattern(KIB64 as usize, 3), "the neighbour is untouched");

    // The import goes when its last buffer goes; the next buffer imports the block afresh.
    drop((first, second, third));
    assert_eq!(importer.stats().live_blocks, 0);
    let (_again, outcome) = importer.import_buffer_with_usage(bufs[0].export_fd().unwrap(), usage).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
}

#[test]
fn memory_is_returned_after_all_frees() {
    let Some((a, b)) = two_devices() else { return };
    let round = |config: PoolConfig| {
        let alloc = allocator(&a, config);
        let importer = BlockImporter::new(&b);
        let bufs: Vec<Buffer> = (0..4).map(|_| alloc.allocate_buffer(device_id(&a), &pooled(KIB64)).unwrap()).collect();
        let imported: Vec<Buffer> =
            bufs.iter().map(|buf| importer.import_buffer(buf.export_fd().unwrap()).unwrap()).collect();
        (alloc, importer, bufs, imported)
    };
    // Drivers may open device files or map staging memory on first use: one round first (with a
    // read, which stages where memory is not host-visible), so the baseline includes them.
    let warm = round(PoolConfig::default());
    assert_eq!(warm.3[0].read(0, 16).unwrap().len(), 16);
    drop(warm);
    let baseline = open_fd_count();
    let mappings = shared_mappings();
    {
        let (alloc, importer, bufs, imported) = round(PoolConfig { retain_empty_blocks: 0, ..PoolConfig::default() });
        assert_eq!(alloc.pool().stats().blocks, 1);
        assert_eq!(importer.stats().live_blocks, 1);
        // Exporter side first: the block leaves the pool with its last buffer...
        drop(bufs);
        let s = alloc.pool().stats();
        assert_eq!((s.blocks, s.live_buffers, s.blocks_released, s.used_bytes), (0, 0, 1, 0));
        // ...while the importer's buffers still read the block (their import holds it).
        assert_eq!(imported[3].read(0, 16).unwrap().len(), 16);
        drop(imported);
        assert_eq!(importer.stats().live_blocks, 0);
    }
    assert_eq!(open_fd_count(), baseline, "every fd of the block (driver's, kept export, imports) is closed");
    assert_eq!(shared_mappings(), mappings, "no mapping of the block is left in either device");

    // With empty blocks retained, trim gives them back.
    let alloc = allocator(&a, PoolConfig { retain_empty_blocks: 4, ..PoolConfig::default() });
    let bufs: Vec<Buffer> = (0..3).map(|_| alloc.allocate_buffer(device_id(&a), &pooled(32 << 20)).unwrap()).collect();
    drop(bufs);
    let s = alloc.pool().stats();
    assert_eq!((s.blocks, s.empty_blocks), (2, 2));
    assert_eq!(alloc.pool().trim(), 2);
    assert_eq!(alloc.pool().stats().blocks, 0);
    drop(alloc);
    assert_eq!(open_fd_count(), baseline);
    assert_eq!(shared_mappings(), mappings);
}

#[test]
fn an_imported_mapping_outlives_the_exporter() {
    let Some((a, b)) = two_devices() else { return };
    let data = pattern(KIB64 as usize, 9);
    let mut imported = {
        let alloc = allocator(&a, PoolConfig { retain_empty_blocks: 0, ..PoolConfig::default() });
        let mut buf = alloc.allocate_buffer(device_id(&a), &pooled(KIB64).memory(MemoryKind::HostVisible)).unwrap();
        buf.write(0, &data).unwrap();
        let importer = BlockImporter::new(&b);
        importer.import_buffer(buf.export_fd().unwrap()).unwrap()
        // The exporter's buffer, pool, block and importer all go here.
    };
    assert!(imported.is_shared(), "an imported block is shared memory");
    let e = imported.map().map(|_| ()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert_eq!(imported.read(0, KIB64).unwrap(), data, "a copy reads the block after the exporter let go");
    if imported.memory().is_host_visible() {
        // SAFETY: map_unchecked's contract holds: the exporter's buffer, pool and block and the importer
        // were all dropped above, so no other device, process or Buffer can write these bytes while the
        // guard lives.
        let m = unsafe { imported.map_unchecked() }.unwrap();
        assert_eq!(m.as_slice(), &data[..], "the mapping reads the block after the exporter let go");
    }
}

#[test]
fn bad_pooled_imports_are_typed_errors_that_close_the_fd() {
    let Some((a, b)) = two_devices() else { return };
    let alloc = allocator(&a, PoolConfig::default());
    let bufs: Vec<Buffer> = (0..2).map(|_| alloc.allocate_buffer(device_id(&a), &pooled(KIB64)).unwrap()).collect();
    let importer = BlockImporter::new(&b);
    let with = |e: ExportedBuffer, f: &dyn Fn(&mut MemoryDescription, &mut BufferDescription)| {
        let ExportedBuffer { memory: MemoryHandle { handle, mut description, .. }, buffer: mut desc, .. } = e;
        f(&mut description, &mut desc);
        ExportedBuffer::new(MemoryHandle::new(handle, description), desc)
    };
    // The block keeps the fd of its first export (later exports duplicate it): count after it.
    drop(bufs[0].export_fd().unwrap());
    let before = open_fd_count();

    let outside = with(bufs[0].export_fd().unwrap(), &|d, desc| desc.offset = d.allocation_size);
    let err = importer.import_buffer(outside).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(open_fd_count(), before, "refused before import: the fd is closed");

    let stranger = with(bufs[0].export_fd().unwrap(), &|d, _| d.device.driver_uuid = Uuid([0xEE; 16]));
    let err = importer.import_buffer(stranger).unwrap_err();
    assert!(matches!(err, Error::IncompatibleDevice(_)), "{err}");
    assert_eq!(open_fd_count(), before);

    // A hit whose description disagrees with the cached block: the id was misused.
    let _first = importer.import_buffer(bufs[0].export_fd().unwrap()).unwrap();
    let after_first = open_fd_count();
    let liar = with(bufs[1].export_fd().unwrap(), &|d, _| d.allocation_size /= 2);
    let err = importer.import_buffer(liar).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(open_fd_count(), after_first);
    assert_eq!(importer.stats().hits, 1);
}

#[test]
fn threads_share_one_pool() {
    let Some(ctx) = vulkan() else { return };
    let alloc = Arc::new(allocator(&ctx, PoolConfig { block_size: 4 << 20, ..PoolConfig::default() }));
    let id = device_id(&ctx);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let alloc = alloc.clone();
            std::thread::spawn(move || {
                let mut live: Vec<(Buffer, u32)> = Vec::new();
                for i in 0..60u32 {
                    let seed = t * 1000 + i;
                    let size = 256 + (seed.wrapping_mul(2_654_435_761) >> 12) % (192 << 10);
                    let mut buf = alloc.allocate_buffer(id, &pooled(u64::from(size))).unwrap();
                    buf.write(0, &pattern(size as usize, seed)).unwrap();
                    live.push((buf, seed));
                    if i % 3 == 2 {
                        // Check a buffer written a while ago, after the other threads' writes.
                        let (old, old_seed) = live.remove(0);
                        assert_eq!(old.read(0, old.size()).unwrap(), pattern(old.size() as usize, old_seed));
                    }
                }
                for (buf, seed) in live {
                    assert_eq!(buf.read(0, buf.size()).unwrap(), pattern(buf.size() as usize, seed));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a pool thread failed");
    }
    let s = alloc.pool().stats();
    assert_eq!((s.live_buffers, s.used_bytes, s.pooled_allocations), (0, 0, 240));
    assert!(s.blocks_created >= 2, "4 MiB blocks overflowed into more: {s:?}");
    assert_eq!((s.blocks, s.blocks_released), (0, s.blocks_created), "every block went with its last buffer: {s:?}");
}

#[test]
fn pool_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<BufferPool>();
    assert_send_sync::<BlockImporter>();
    assert_send_sync::<MemoryAllocator>();
    assert_send_sync::<Buffer>();
}

/// Environment of the importing child: the two buffers' fds (inherited) and descriptions.
const CHILD_ENV: [(&str, &str); 2] = [("POOL_FD_A", "POOL_DESC_A"), ("POOL_FD_B", "POOL_DESC_B")];

#[test]
fn second_process_imports_a_block_once() {
    if common::child_role().as_deref() == Some("pool-importer") {
        return child_imports();
    }
    let Some(ctx) = vulkan() else { return };
    let alloc = allocator(&ctx, PoolConfig::default());
    let mut bufs: Vec<Buffer> =
        (0..2).map(|_| alloc.allocate_buffer(device_id(&ctx), &pooled(KIB64)).unwrap()).collect();
    for (i, buf) in bufs.iter_mut().enumerate() {
        buf.write(0, &pattern(KIB64 as usize, 20 + i as u32)).unwrap();
    }
    let mut env = Vec::new();
    let mut keep = Vec::new();
    for (buf, (fd_var, desc_var)) in bufs.iter().zip(CHILD_ENV) {
        let e = buf.export_fd().unwrap();
        let (fd, n) = common::inheritable(&e.memory.handle);
        keep.push(fd);
        env.push((fd_var, n.to_string()));
        env.push((desc_var, serde_json::to_string(&(e.memory.description, e.buffer)).unwrap()));
    }
    let out = common::run_child("second_process_imports_a_block_once", "pool-importer", &env);
    drop(keep);
    assert!(String::from_utf8_lossy(&out.stdout).contains("pool child: miss then hit"));
    for (i, buf) in bufs.iter().enumerate() {
        assert_eq!(buf.read(0, KIB64).unwrap(), pattern(KIB64 as usize, 40 + i as u32), "the child's writes");
    }
}

fn child_imports() {
    let Some(ctx) = vulkan() else { panic!("the parent opened Vulkan, the child must too") };
    let importer = BlockImporter::new(&ctx);
    let usage = lava_flow::vulkan::caps::DEFAULT_BUFFER_USAGE;
    let mut imported = Vec::new();
    let mut fds_before_hit = 0;
    for (i, (fd_var, desc_var)) in CHILD_ENV.into_iter().enumerate() {
        let handle = common::take_inherited(fd_var);
        let (description, buffer): (MemoryDescription, BufferDescription) =
            serde_json::from_str(&std::env::var(desc_var).unwrap()).unwrap();
        if i == 1 {
            fds_before_hit = open_fd_count();
        }
        let (buf, outcome) = importer
            .import_buffer_with_usage(ExportedBuffer::new(MemoryHandle::new(handle, description), buffer), usage)
            .unwrap();
        assert_eq!(outcome, if i == 0 { CacheOutcome::Miss } else { CacheOutcome::Hit });
        if i == 1 {
            assert_eq!(open_fd_count(), fds_before_hit - 1, "the second buffer's fd was closed, not imported");
        }
        assert_eq!(buf.read(0, KIB64).unwrap(), pattern(KIB64 as usize, 20 + i as u32), "the parent's data");
        imported.push(buf);
    }
    let s = importer.stats();
    assert_eq!((s.misses, s.hits, s.live_blocks), (1, 1, 1));
    assert!(Arc::ptr_eq(imported[0].memory(), imported[1].memory()));
    for (i, buf) in imported.iter_mut().enumerate() {
        buf.write(0, &pattern(KIB64 as usize, 40 + i as u32)).unwrap();
    }
    println!("pool child: miss then hit");
}

#[test]
fn bench_rows_measure_every_case() {
    let Some((a, b)) = two_devices() else { return };
    let rows = lava_flow_diag::bench::pool::run(&a, &b, true).unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        let (Some(lava_flow), Some(raw), Some(ratio)) = (r.lava_flow, r.raw, r.ratio) else { panic!("{r:?}") };
        assert!(lava_flow > 0.0 && raw > 0.0 && ratio > 0.0, "{r:?}");
        assert!((ratio - lava_flow / raw).abs() < 1e-9, "{r:?}");
        assert_eq!((r.group.as_str(), r.unit.as_str()), ("pool", "us"));
        println!("{:<75} {lava_flow:>10.2} {raw:>10.2} {ratio:>8.3}", r.case);
    }
    let json = serde_json::to_value(&rows[0]).unwrap();
    for field in ["case", "lava_flow", "raw", "unit", "ratio"] {
        assert!(json.get(field).is_some(), "serialized rows carry {field}");
    }
}

#[test]
fn a_block_imported_once_serves_buffers_sent_without_fds() {
    let Some((a, b)) = two_devices() else { return };
    let alloc = allocator(&a, PoolConfig::default());
    let mut bufs: Vec<Buffer> = (0..2).map(|_| alloc.allocate_buffer(device_id(&a), &pooled(KIB64)).unwrap()).collect();
    bufs[1].write(0, &pattern(KIB64 as usize, 77)).unwrap();
    let importer = BlockImporter::new(&b);
    let usage = lava_flow::vulkan::caps::DEFAULT_BUFFER_USAGE;
    let block = bufs[1].memory().description().unwrap();
    assert!(importer.import_from_cache(&block, bufs[1].description(), usage).unwrap().is_none(), "not imported yet");
    let first = importer.import_buffer(bufs[0].export_fd().unwrap()).unwrap();
    let fds = open_fd_count();
    let second = importer.import_from_cache(&block, bufs[1].description(), usage).unwrap().expect("a cache hit");
    assert_eq!(open_fd_count(), fds, "no fd involved");
    assert!(Arc::ptr_eq(first.memory(), second.memory()));
    assert_eq!(second.read(0, KIB64).unwrap(), pattern(KIB64 as usize, 77));
    assert_eq!((importer.stats().hits, importer.stats().misses), (1, 1));
    drop((first, second));
    assert!(importer.import_from_cache(&block, bufs[1].description(), usage).unwrap().is_none(), "released");
}

#[test]
fn shared_host_memory_goes_through_the_cache() {
    let Some((a, b)) = two_devices() else { return };
    if !a.extensions().external_memory_host {
        return lava_flow_diag::testing::skip_capability(
            "vulkan",
            format!("{} lacks VK_EXT_external_memory_host", a.info().name),
        );
    }
    let alloc = allocator(&a, PoolConfig::default());
    let mut buf =
        alloc.allocate_buffer(device_id(&a), &BufferOptions::new(KIB64).memory(MemoryKind::SharedHost)).unwrap();
    buf.write(0, &pattern(KIB64 as usize, 5)).unwrap();
    let importer = BlockImporter::new(&b);
    let usage = lava_flow::vulkan::caps::DEFAULT_BUFFER_USAGE;
    let (one, first) = importer.import_buffer_with_usage(buf.export_fd().unwrap(), usage).unwrap();
    let (two, second) = importer.import_buffer_with_usage(buf.export_fd().unwrap(), usage).unwrap();
    assert_eq!((first, second), (CacheOutcome::Miss, CacheOutcome::Hit), "host memory is one import too");
    assert!(Arc::ptr_eq(one.memory(), two.memory()));
    assert_eq!(two.read(0, KIB64).unwrap(), pattern(KIB64 as usize, 5));
}

/// The bytes of the secret that a peer must never see.
const SECRET_SEED: u32 = 0x5ec7;

fn served_socket() -> std::path::PathBuf {
    std::env::var_os("POOL_TEST_SOCKET").expect("POOL_TEST_SOCKET").into()
}

/// A pooled buffer served to another process shows it nothing that was not published to it:
/// a buffer of an ordinary (private) pool is refused by the server and the client, exports kept
/// after the block is gone included; what is served instead (a buffer of a pool made for peers,
/// a buffer with its own allocation) lets the peer, which reads every byte its fds map, find no
/// byte of the secret that shared a block with the refused buffer.
#[test]
fn a_peer_never_sees_a_sibling_of_a_served_pooled_buffer() {
    if common::child_role().as_deref() == Some("pool-peer") {
        return peer_reads_all_it_was_served();
    }
    let Some(ctx) = vulkan() else { return };
    let id = device_id(&ctx);
    let private = allocator(&ctx, PoolConfig { block_size: 4 << 20, ..PoolConfig::default() });
    let mut secret = private.allocate_buffer(id, &pooled(KIB64)).unwrap();
    secret.write(0, &pattern(KIB64 as usize, SECRET_SEED)).unwrap();
    let sibling = private.allocate_buffer(id, &pooled(KIB64)).unwrap();
    assert!(Arc::ptr_eq(secret.memory(), sibling.memory()), "one block holds both");
    // What serving the sibling would hand out: its fd maps the whole block, secret included (the
    // search the peer runs below finds it there).
    {
        let importer = BlockImporter::new(&ctx);
        let exported = sibling.export_fd().unwrap();
        let block = exported.memory.description;
        let _anchor = importer.import_buffer(exported).unwrap();
        let whole = BufferDescription { offset: 0, size: block.allocation_size, alignment: 0 };
        let usage = lava_flow::vulkan::caps::DEFAULT_BUFFER_USAGE;
        let view = importer.import_from_cache(&block, whole, usage).unwrap().unwrap();
        let needle = &pattern(KIB64 as usize, SECRET_SEED)[..32];
        assert!(view.read(0, block.allocation_size).unwrap().windows(32).any(|w| w == needle));
    }

    let dir = std::env::temp_dir().join(format!("lava-flow-pool-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::bind(dir.join("pool.sock"), ServerConfig::default()).unwrap();
    for (what, object) in [
        ("the sibling buffer", NamedObject::new("sibling", sibling.export_fd().unwrap())),
        ("the block's memory", NamedObject::new("block", sibling.memory().export_fd().unwrap())),
    ] {
        let e = server.publish(object).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{what}: {e}");
        assert!(e.to_string().contains("share_blocks_with_peers"), "{what}: {e}");
    }
    let client = Client::connect(server.path()).unwrap();
    let e = client.publish(&[NamedObject::new("sibling", sibling.export_fd().unwrap())]).unwrap_err();
    assert!(e.to_string().contains("share_blocks_with_peers"), "refused before sending: {e}");
    drop(client);
    assert!(server.objects().is_empty());

    // What may be published: a buffer of a pool made for peers, and one with its own allocation.
    let for_peers = allocator(&ctx, PoolConfig { block_size: 4 << 20, ..PoolConfig::for_peers() });
    let mut shared = for_peers.allocate_buffer(id, &pooled(KIB64)).unwrap();
    shared.write(0, &pattern(KIB64 as usize, 1)).unwrap();
    let mut own =
        private.allocate_buffer(id, &BufferOptions::new(KIB64).strategy(AllocationStrategy::Dedicated)).unwrap();
    own.write(0, &pattern(KIB64 as usize, 2)).unwrap();
    server.publish(NamedObject::new("shared", shared.export_fd().unwrap())).unwrap();
    server.publish(NamedObject::new("own", own.export_fd().unwrap())).unwrap();
    let out = common::run_child(
        "a_peer_never_sees_a_sibling_of_a_served_pooled_buffer",
        "pool-peer",
        &[("POOL_TEST_SOCKET", server.path().to_string_lossy().into_owned())],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("peer: read"), "the peer checked what it got");

    // An export kept after its block is gone still names a private block: refused.
    let kept = sibling.export_fd().unwrap();
    drop((secret, sibling));
    assert_eq!(private.pool().stats().blocks, 0, "the private block was released");
    let e = server.publish(NamedObject::new("kept", kept)).unwrap_err();
    assert!(e.to_string().contains("share_blocks_with_peers"), "{e}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The peer's side: every object it is served, read whole (the whole allocation its fd maps,
/// wherever the import allows it), holds its pattern and no byte of the secret.
fn peer_reads_all_it_was_served() {
    let Some(ctx) = vulkan() else { panic!("the parent opened Vulkan, the child must too") };
    let client = Client::connect(served_socket()).unwrap();
    let objects = client.get_all().unwrap();
    assert_eq!(objects.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["shared", "own"]);
    let needle = &pattern(KIB64 as usize, SECRET_SEED)[..32];
    let importer = BlockImporter::new(&ctx);
    let usage = lava_flow::vulkan::caps::DEFAULT_BUFFER_USAGE;
    let mut read = 0;
    for (seed, object) in (1..).zip(objects) {
        let exported = ExportedBuffer::try_from(object.object).unwrap_or_else(|e| panic!("{}: {e}", object.name));
        let (memory, described) = (exported.memory.description, exported.buffer);
        let buffer = importer.import_buffer(exported).unwrap();
        assert_eq!(buffer.read(0, KIB64).unwrap(), pattern(KIB64 as usize, seed), "{}", object.name);
        // A dedicated allocation can only be bound to its own resource; it holds nothing else.
        let all = if memory.dedicated {
            buffer.read(0, described.size).unwrap()
        } else {
            let whole = BufferDescription { offset: 0, size: memory.allocation_size, alignment: 0 };
            let view = importer.import_from_cache(&memory, whole, usage).unwrap().expect("the block is imported");
            view.read(0, memory.allocation_size).unwrap()
        };
        assert!(!all.windows(needle.len()).any(|w| w == needle), "{}: the secret is readable", object.name);
        read += all.len();
    }
    println!("peer: read {read} bytes of what it was served; no secret among them");
}

/// In a pool made for peers a freed range is never handed out again while its block lives (a
/// peer may still map it), and the block is released with its last buffer, not retained; an
/// ordinary pool reuses the range at once.
#[test]
fn a_block_shared_with_peers_never_hands_a_freed_range_out_again() {
    let Some(ctx) = vulkan() else { return };
    let id = device_id(&ctx);
    let private = allocator(&ctx, PoolConfig::default());
    let keep = private.allocate_buffer(id, &pooled(KIB64)).unwrap();
    let first = private.allocate_buffer(id, &pooled(KIB64)).unwrap();
    let range = first.offset()..first.offset() + KIB64;
    drop(first);
    let again = private.allocate_buffer(id, &pooled(KIB64)).unwrap();
    assert_eq!(again.offset(), range.start, "an ordinary pool reuses the range");
    drop((keep, again));

    let config = PoolConfig { retain_empty_blocks: 2, ..PoolConfig::for_peers() };
    let for_peers = allocator(&ctx, config);
    let keep = for_peers.allocate_buffer(id, &pooled(KIB64)).unwrap();
    let first = for_peers.allocate_buffer(id, &pooled(KIB64)).unwrap();
    let range = first.offset()..first.offset() + KIB64;
    drop(first);
    let s = for_peers.pool().stats();
    assert_eq!((s.live_buffers, s.retired_bytes), (1, KIB64), "{s:?}");
    for _ in 0..8 {
        let next = for_peers.allocate_buffer(id, &pooled(KIB64)).unwrap();
        assert!(next.offset() >= range.end || next.offset() + KIB64 <= range.start, "a retired range came back");
        assert!(Arc::ptr_eq(next.memory(), keep.memory()), "the block's unused space is still used");
    }
    drop(keep);
    let s = for_peers.pool().stats();
    assert_eq!((s.blocks, s.blocks_released), (0, 1), "released with its last buffer, not retained: {s:?}");
}
