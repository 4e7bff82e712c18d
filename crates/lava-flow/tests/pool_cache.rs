//! The importer's block cache with real fds (no GPU): one import per block, duplicate fds
//! closed on hits, failed imports close their fd once, blocks released with their last user.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use lava_flow::pool::{BlockKey, CacheOutcome, ImportCache};
use lava_flow::raw_gpu_handle::{AllocationId, DeviceIdentity, Uuid};
use lava_flow::Error;
use lava_flow_diag::testing;

fn fd() -> OwnedFd {
    std::fs::File::open("/dev/null").expect("/dev/null opens").into()
}

fn key(device: u8, id: u128) -> BlockKey {
    BlockKey {
        exporter: DeviceIdentity { device_uuid: Uuid([device; 16]), driver_uuid: Uuid([7; 16]), luid: None },
        allocation_id: AllocationId(id),
    }
}

/// What a test import produces: it owns the fd, as a real import would own the driver object.
struct Imported {
    _fd: OwnedFd,
    id: u128,
}

#[test]
fn second_lookup_hits_and_closes_the_duplicate_fd() {
    let cache: ImportCache<Imported> = ImportCache::new();
    let imports = AtomicUsize::new(0);
    let import = |fd: OwnedFd| {
        imports.fetch_add(1, Ordering::SeqCst);
        Ok(Imported { _fd: fd, id: 1 })
    };
    let baseline = testing::open_fd_count();
    let (first, outcome) = cache.get_or_import(key(1, 1), fd(), import).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(testing::open_fd_count(), baseline + 1, "the import keeps its fd");
    let (second, outcome) = cache.get_or_import(key(1, 1), fd(), import).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(testing::open_fd_count(), baseline + 1, "the duplicate fd was closed");
    assert_eq!(imports.load(Ordering::SeqCst), 1);
    // Another exporter's block with the same id is another block.
    let (third, outcome) = cache.get_or_import(key(2, 1), fd(), import).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    assert!(!Arc::ptr_eq(&first, &third));
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.duplicate_fds_closed, s.live_blocks), (1, 2, 1, 2));
    assert_eq!(cache.get(&key(1, 1)).map(|b| b.id), Some(1));

    // Released with its last user: the cache holds no strong reference.
    drop((first, second, third));
    assert_eq!(testing::open_fd_count(), baseline, "every fd closed once the imports are gone");
    assert_eq!(cache.stats().live_blocks, 0);
    assert!(cache.get(&key(1, 1)).is_none());
    let (_again, outcome) = cache.get_or_import(key(1, 1), fd(), import).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss, "a released block is imported afresh");
    assert_eq!(imports.load(Ordering::SeqCst), 3);
}

#[test]
fn failed_import_closes_its_fd_once_and_is_not_cached() {
    let cache: ImportCache<Imported> = ImportCache::new();
    let baseline = testing::open_fd_count();
    let err = cache
        .get_or_import(key(1, 9), fd(), |fd| {
            drop(fd); // a failed import closes the fd
            Err(Error::InvalidHandle { what: "block".into(), reason: "test refusal".into(), advice: "none".into() })
        })
        .err()
        .expect("the import fails");
    assert!(matches!(err, Error::InvalidHandle { .. }));
    assert_eq!(testing::open_fd_count(), baseline);
    assert_eq!(cache.stats().failed_imports, 1);
    let (_b, outcome) = cache.get_or_import(key(1, 9), fd(), |fd| Ok(Imported { _fd: fd, id: 9 })).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(testing::open_fd_count(), baseline + 1);
}

#[test]
fn concurrent_first_uses_import_once() {
    const THREADS: usize = 8;
    let cache: Arc<ImportCache<Imported>> = Arc::new(ImportCache::new());
    let imports = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let hold = Arc::new(Barrier::new(THREADS));
    let baseline = testing::open_fd_count();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (cache, imports, start, hold) = (cache.clone(), imports.clone(), start.clone(), hold.clone());
            std::thread::spawn(move || {
                let fd = fd();
                start.wait();
                let (block, outcome) = cache
                    .get_or_import(key(3, 42), fd, |fd| {
                        imports.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        Ok(Imported { _fd: fd, id: 42 })
                    })
                    .unwrap();
                assert_eq!(block.id, 42);
                hold.wait(); // every thread holds the block until all have looked it up
                outcome
            })
        })
        .collect();
    let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(imports.load(Ordering::SeqCst), 1, "one import for {THREADS} concurrent first uses");
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Miss).count(), 1);
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.duplicate_fds_closed), (THREADS as u64 - 1, 1, THREADS as u64 - 1));
    assert_eq!(s.live_blocks, 0, "released after the last thread let go");
    assert_eq!(testing::open_fd_count(), baseline);
}

#[test]
fn many_released_blocks_are_swept() {
    let cache: ImportCache<Imported> = ImportCache::new();
    let keep = cache.get_or_import(key(1, 0), fd(), |fd| Ok(Imported { _fd: fd, id: 0 })).unwrap().0;
    for id in 1..1000 {
        let (b, _) = cache.get_or_import(key(1, id), fd(), |fd| Ok(Imported { _fd: fd, id })).unwrap();
        drop(b);
        assert!(cache.stats().entries <= 128, "released entries are swept as lookups go");
    }
    cache.sweep();
    assert_eq!((cache.stats().live_blocks, cache.stats().entries), (1, 1));
    assert_eq!(cache.get(&key(1, 0)).map(|b| b.id), Some(keep.id));
}
