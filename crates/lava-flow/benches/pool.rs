//! Pooled against own exportable allocations (allocate + export of 64 KiB buffers) and cached
//! against fresh imports of a further buffer of a block, each beside the raw Vulkan calls.
//! `lava-flow bench` runs the same fixtures (`lava_flow_diag::bench::pool::run`) and prints ratios.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use lava_flow::VulkanContext;
use lava_flow_diag::bench::pool::{AllocExportFixture, ImportFixture};
use lava_flow_diag::testing;

const SIZE: u64 = 64 << 10;
/// Outputs (buffers and their fds) live until their batch ends and are dropped untimed: small
/// batches keep the open fds far below the process limit.
const BATCH: BatchSize = BatchSize::NumIterations(64);

fn contexts() -> Option<(VulkanContext, VulkanContext)> {
    let a = testing::or_skip("vulkan", VulkanContext::new())?;
    let b = VulkanContext::with_uuid(a.identity().device_uuid).expect("a second device on the same GPU");
    Some((a, b))
}

fn pool(c: &mut Criterion) {
    let Some((exporter, importer)) = contexts() else { return };

    let alloc = AllocExportFixture::new(&exporter, SIZE).expect("allocation fixture");
    let mut group = c.benchmark_group("pool/allocate_export_64KiB");
    group.bench_function("pooled", |b| b.iter_batched(|| (), |_| alloc.pooled().unwrap(), BATCH));
    group.bench_function("lava_flow_own_allocation", |b| {
        b.iter_batched(|| (), |_| alloc.own_allocation().unwrap(), BATCH)
    });
    group.bench_function("raw_own_allocation", |b| b.iter_batched(|| (), |_| alloc.raw().unwrap(), BATCH));
    group.finish();

    let imports = ImportFixture::new(&exporter, &importer, SIZE).expect("import fixture");
    let mut group = c.benchmark_group("pool/import_further_buffer_64KiB");
    group.bench_function("cached", |b| {
        b.iter_batched(|| imports.export().unwrap(), |e| imports.cached(e).unwrap(), BATCH)
    });
    group.bench_function("lava_flow_uncached", |b| {
        b.iter_batched(|| imports.export().unwrap(), |e| imports.uncached(e).unwrap(), BATCH)
    });
    group.bench_function("raw_fresh_import", |b| {
        // SAFETY: every export handed to `raw` comes from the fixture's own `export`, unchanged.
        b.iter_batched(|| imports.export().unwrap(), |e| unsafe { imports.raw(e) }.unwrap(), BATCH)
    });
    group.finish();
}

criterion_group!(benches, pool);
criterion_main!(benches);
