//! Nothing lava-flow makes outlives its last user: after a round of allocating, exporting,
//! importing (plain, pooled through a block cache, images, shared host memory) and submitting,
//! the live-object counters that `selftest --soak` checks after every round are back where they
//! started. One test in its own binary, so no other test's objects are counted.

mod common;

use common::{pattern, two_devices};
use lava_flow::pool::{AllocationStrategy, BlockImporter};
use lava_flow::raw_gpu_handle::TextureFormat;
use lava_flow::vulkan::sync::{RecordedCommands, Submission};
use lava_flow::vulkan::{live_objects, LiveObjects, MemoryKind};
use lava_flow::{Buffer, BufferOptions, Image, ImageOptions, MemoryAllocator};

/// One round of the soak's Vulkan work, on two fresh devices; returns the counters while
/// everything is still alive.
fn round() -> Option<LiveObjects> {
    let (a, b) = two_devices()?;
    let mut exporter = Buffer::new(&a, &BufferOptions::new(1 << 20)).unwrap();
    exporter.write(0, &pattern(1 << 20, 1)).unwrap();
    let importer = Buffer::import(&b, exporter.export_fd().unwrap()).unwrap();
    assert_eq!(importer.read(0, 1 << 20).unwrap(), pattern(1 << 20, 1));

    let host = Buffer::new(&a, &BufferOptions::new(1 << 16).memory(MemoryKind::SharedHost)).ok();
    let host_import = host.as_ref().map(|h| Buffer::import(&b, h.export_fd().unwrap()).unwrap());

    let image = Image::new(&a, &ImageOptions::d2(TextureFormat::Rgba8Unorm, 64, 64)).unwrap();
    let image_import = Image::import(&b, image.export_fd().unwrap()).unwrap();

    let allocator = MemoryAllocator::with_context(a.clone());
    let options = BufferOptions::new(64 << 10).strategy(AllocationStrategy::Pooled);
    let pooled: Vec<Buffer> = (0..3).map(|_| allocator.allocate_buffer(a.info().index, &options).unwrap()).collect();
    let cache = BlockImporter::new(&b);
    let pooled_imports: Vec<Buffer> =
        pooled.iter().map(|p| cache.import_buffer(p.export_fd().unwrap()).unwrap()).collect();

    // A submission tracked by the queue's private timeline (which holds its context).
    let commands = RecordedCommands::record(&b, |_, _| {}).ok();
    let submitted = commands.as_ref().map(|c| Submission::new().commands(c).submit(&b).unwrap());
    if let Some(s) = &submitted {
        s.wait(std::time::Duration::from_secs(10)).unwrap();
    }

    let live = live_objects();
    drop((submitted, commands, pooled_imports, cache, pooled, allocator));
    drop((image_import, image, host_import, host, importer, exporter, a, b));
    Some(live)
}

#[test]
fn every_context_and_allocation_is_gone_after_a_round() {
    let baseline = live_objects();
    for i in 0..3 {
        let Some(during) = round() else { return };
        assert!(
            during.vulkan_contexts >= baseline.vulkan_contexts + 2
                && during.device_memories >= baseline.device_memories + 4,
            "the counters count: {during:?} during round {i}, {baseline:?} before"
        );
        assert_eq!(live_objects(), baseline, "after round {i} (during it: {during:?})");
    }
}
