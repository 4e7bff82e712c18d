//! Criterion benchmarks of the CUDA importer against the raw driver calls (same cases as
//! `lava-flow bench`, see `lava_flow_diag::bench::cuda`). Without CUDA it prints why and measures
//! nothing.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lava_flow_diag::bench::cuda::{size_name, Fixture, PooledImports, Side};

fn fixture() -> Option<Fixture> {
    match Fixture::new(None) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("SKIPPED (cuda unavailable): {e}");
            None
        }
    }
}

fn export_import_map(c: &mut Criterion) {
    let Some(fx) = fixture() else { return };
    let mut group = c.benchmark_group("export-import-map");
    for size in [64u64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30] {
        let buffer = fx.buffer(size).expect("an exportable buffer");
        for (name, side) in [("lava-flow", Side::LavaFlow), ("raw", Side::Raw)] {
            group.bench_with_input(BenchmarkId::new(name, size_name(size)), &side, |b, side| {
                b.iter_custom(|iters| fx.export_import_map(&buffer, *side, iters).expect("export + import + map"))
            });
        }
    }
    group.finish();
}

fn semaphore_round_trip(c: &mut Criterion) {
    let Some(fx) = fixture() else { return };
    let mut group = c.benchmark_group("semaphore-round-trip");
    for (name, side) in [("lava-flow", Side::LavaFlow), ("raw", Side::Raw)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                fx.semaphore_round_trips(side, iters).expect("round trips").into_iter().sum::<Duration>()
            })
        });
    }
    group.finish();
}

fn pooled_import(c: &mut Criterion) {
    let Some(fx) = fixture() else { return };
    let imports = fx.pooled_imports().expect("pooled buffers");
    let mut group = c.benchmark_group("pooled-import-64KiB");
    type Sample = fn(&PooledImports) -> lava_flow::Result<Duration>;
    let cases: [(&str, Sample); 4] = [
        ("lava-flow-cached", PooledImports::cached),
        ("lava-flow-uncached", PooledImports::uncached),
        ("raw-import-map", PooledImports::raw_fresh),
        ("raw-map-only", PooledImports::raw_offset_map),
    ];
    for (name, sample) in cases {
        group.bench_function(name, |b| b.iter_custom(|iters| (0..iters).map(|_| sample(&imports).expect(name)).sum()));
    }
    group.finish();
}

fn copy_bandwidth(c: &mut Criterion) {
    let Some(fx) = fixture() else { return };
    let bytes = 256u64 << 20;
    let mut group = c.benchmark_group("copy-bandwidth");
    group.throughput(Throughput::Bytes(2 * bytes));
    group.sample_size(10);
    for kernel in [false, true] {
        let name = if kernel { "kernel" } else { "memcpy" };
        group.bench_function(BenchmarkId::new(name, "lava-flow-vs-raw"), |b| {
            b.iter_custom(|iters| {
                // One figure per side; criterion times the imported side, the raw one is printed.
                let (lava, raw) = fx.copy_bandwidth(bytes, kernel, iters as usize, 1).expect("copies");
                eprintln!("{name}: imported {lava:.1} GB/s, native {raw:.1} GB/s");
                Duration::from_secs_f64(2.0 * bytes as f64 * iters as f64 / (lava * 1e9))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = export_import_map, semaphore_round_trip, pooled_import, copy_bandwidth
}
criterion_main!(benches);
