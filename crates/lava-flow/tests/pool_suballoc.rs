//! The pool's suballocator as a data structure: property tests against a model of the space,
//! and a multi-threaded stress test that detects any overlap between threads' allocations.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use lava_flow::pool::{Allocation, SuballocError, Suballocator, Tlsf};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: u64,
        align_log2: u32,
    },
    /// Frees the live allocation at this index modulo the live count.
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![1u64..64, 1u64..4096, 1u64..(1 << 17), Just(65536u64)];
    prop_oneof![
        3 => (size, 0u32..14).prop_map(|(size, align_log2)| Op::Alloc { size, align_log2 }),
        2 => any::<usize>().prop_map(Op::Free),
    ]
}

fn round_up(v: u64, g: u64) -> u64 {
    v.div_ceil(g) * g
}

/// Checks everything the public API lets us see against the list of live allocations.
fn check(t: &Tlsf, live: &[(Allocation, u64)]) -> Result<(), TestCaseError> {
    let g = t.granularity();
    let cap = t.capacity();
    // No overlap, inside the space, alignment honoured.
    let mut spans: Vec<(u64, u64)> =
        live.iter().map(|(a, _)| (a.offset(), a.offset() + round_up(a.size(), g))).collect();
    spans.sort();
    for w in spans.windows(2) {
        prop_assert!(w[0].1 <= w[1].0, "allocations overlap: {:?} and {:?}", w[0], w[1]);
    }
    for (a, align) in live {
        prop_assert_eq!(a.offset() % align, 0, "offset {} not aligned to {}", a.offset(), align);
        prop_assert_eq!(a.offset() % g, 0);
        prop_assert!(a.range().end <= cap);
    }
    // The range map: contiguous from 0 to capacity, free ranges merged, used ranges = live set.
    let ranges: Vec<_> = t.ranges().collect();
    let mut end = 0;
    let mut prev_free = false;
    let mut used_spans = Vec::new();
    for (r, free) in &ranges {
        prop_assert_eq!(r.start, end);
        prop_assert!(r.end > r.start);
        prop_assert!(!(prev_free && *free), "adjacent free ranges at {}", r.start);
        if !free {
            used_spans.push((r.start, r.end));
        }
        prev_free = *free;
        end = r.end;
    }
    prop_assert_eq!(end, cap);
    prop_assert_eq!(&used_spans, &spans);
    // Statistics add up.
    let s = t.stats();
    let used: u64 = spans.iter().map(|(a, b)| b - a).sum();
    prop_assert_eq!(s.capacity, cap);
    prop_assert_eq!(s.used, used);
    prop_assert_eq!(s.free, cap - used);
    prop_assert_eq!(s.allocation_count, live.len());
    prop_assert_eq!(s.free_range_count, ranges.iter().filter(|(_, f)| *f).count());
    let largest = ranges.iter().filter(|(_, f)| *f).map(|(r, _)| r.end - r.start).max().unwrap_or(0);
    prop_assert_eq!(s.largest_free, largest);
    prop_assert_eq!(t.is_empty(), live.is_empty());
    Ok(())
}

/// Whether any free range could hold `size` (rounded) at an `align`ed offset.
fn some_range_fits(t: &Tlsf, size: u64, align: u64) -> bool {
    let need = round_up(size, t.granularity());
    let align = align.max(t.granularity());
    t.ranges().filter(|(_, free)| *free).any(|(r, _)| {
        let start = round_up(r.start, align);
        start <= r.end && r.end - start >= need
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn tlsf_model(
        capacity in prop_oneof![1u64..4096, 4096u64..(1 << 22)],
        granularity in prop_oneof![Just(1u64), Just(16), Just(256)],
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let mut t = Tlsf::with_granularity(capacity, granularity).unwrap();
        let mut live: Vec<(Allocation, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { size, align_log2 } => {
                    let align = 1u64 << align_log2;
                    let could = some_range_fits(&t, size, align);
                    match t.allocate(size, align) {
                        Ok(a) => {
                            prop_assert!(could, "allocated although no range fits");
                            prop_assert_eq!(a.size(), size);
                            live.push((a, align));
                        }
                        Err(SuballocError::NoFit { largest_free, .. }) => {
                            prop_assert!(!could, "refused {} aligned to {} though a free range fits", size, align);
                            prop_assert_eq!(largest_free, t.stats().largest_free);
                        }
                        Err(e) => prop_assert!(false, "unexpected error {e}"),
                    }
                }
                Op::Free(i) => {
                    if !live.is_empty() {
                        let (a, _) = live.swap_remove(i % live.len());
                        t.free(a).unwrap();
                    }
                }
            }
            check(&t, &live)?;
        }
        // Free the rest in a shuffled order: everything coalesces back into one range.
        while !live.is_empty() {
            let i = (live.len() * 7919) % live.len().max(1);
            let (a, _) = live.swap_remove(i);
            t.free(a).unwrap();
            check(&t, &live)?;
        }
        prop_assert_eq!(t.ranges().collect::<Vec<_>>(), vec![(0..capacity, true)]);
        let s = t.stats();
        prop_assert_eq!((s.used, s.free, s.largest_free, s.allocation_count, s.free_range_count), (0, capacity, capacity, 0, 1));
    }

    #[test]
    fn full_packing_of_equal_sizes(count in 1usize..200, size_log2 in 0u32..12) {
        // Equal power-of-two sizes tile the space exactly with no gaps.
        let size = 1u64 << size_log2;
        let mut t = Tlsf::new(size * count as u64);
        let allocs: Vec<_> = (0..count).map(|_| t.allocate(size, size).unwrap()).collect();
        prop_assert_eq!(t.stats().free, 0);
        prop_assert!(matches!(t.allocate(1, 1), Err(SuballocError::NoFit { largest_free: 0, .. })), "a full space refuses");
        for a in allocs {
            t.free(a).unwrap();
        }
        prop_assert_eq!(t.stats().free_range_count, 1);
    }
}

#[test]
fn bad_requests_are_typed_errors() {
    let mut t = Tlsf::new(1 << 20);
    assert_eq!(t.allocate(0, 1), Err(SuballocError::ZeroSize));
    assert_eq!(t.allocate(16, 3), Err(SuballocError::BadAlignment { align: 3 }));
    assert!(matches!(t.allocate(u64::MAX, 1), Err(SuballocError::NoFit { .. })));
    assert_eq!(t.allocate(1, 1 << 63).map(|a| a.offset()), Ok(0), "offset 0 is aligned to anything");
    assert!(Tlsf::with_granularity(16, 12).is_err());
    // An allocation given to the wrong suballocator is refused and leaves both untouched.
    let mut other = Tlsf::new(1 << 20);
    let a = other.allocate(100, 1).unwrap();
    let before = t.stats();
    assert!(matches!(t.free(a), Err(SuballocError::NotAllocated { .. })));
    assert_eq!(t.stats(), before);
    assert_eq!(other.stats().allocation_count, 1);
    // The crate error says what to do.
    let e: lava_flow::Error = SuballocError::NoFit { size: 10, align: 1, largest_free: 4 }.into();
    assert!(matches!(e, lava_flow::Error::OutOfMemory { .. }), "{e}");
    // Zero capacity: nothing fits, nothing breaks.
    let mut empty = Tlsf::new(0);
    assert!(matches!(empty.allocate(1, 1), Err(SuballocError::NoFit { .. })));
    assert_eq!(empty.stats().free_range_count, 0);
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn threads_never_share_a_byte() {
    const GRANULE: u64 = 256;
    const CAPACITY: u64 = 64 << 20;
    const THREADS: u32 = 8;
    const OPS: usize = 4000;
    let sub = Arc::new(Suballocator::with_granularity(CAPACITY, GRANULE).unwrap());
    // One owner cell per granule: an allocation claims its cells with compare-exchange, so two
    // threads holding one byte at once fail the claim.
    let owners: Arc<Vec<AtomicU32>> = Arc::new((0..CAPACITY / GRANULE).map(|_| AtomicU32::new(0)).collect());
    let handles: Vec<_> = (1..=THREADS)
        .map(|id| {
            let (sub, owners) = (sub.clone(), owners.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (u64::from(id) * 0x1234_5678));
                let mut mine: Vec<Allocation> = Vec::new();
                let (mut allocated, mut refused) = (0usize, 0usize);
                for _ in 0..OPS {
                    if mine.is_empty() || rng.next() % 2 == 0 {
                        let size = 1 + rng.next() % (96 << 10);
                        let align = 1u64 << (rng.next() % 13);
                        match sub.allocate(size, align) {
                            Ok(a) => {
                                assert_eq!(a.offset() % align, 0);
                                let cells = a.offset() / GRANULE..(a.offset() + size).div_ceil(GRANULE);
                                for c in cells {
                                    let prev =
                                        owners[c as usize].compare_exchange(0, id, Ordering::AcqRel, Ordering::Acquire);
                                    assert_eq!(
                                        prev,
                                        Ok(0),
                                        "granule {c} already owned when thread {id} got {:?}",
                                        a.range()
                                    );
                                }
                                mine.push(a);
                                allocated += 1;
                            }
                            Err(SuballocError::NoFit { .. }) => refused += 1,
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        let a = mine.swap_remove((rng.next() % mine.len() as u64) as usize);
                        for c in a.offset() / GRANULE..(a.offset() + a.size()).div_ceil(GRANULE) {
                            assert_eq!(owners[c as usize].swap(0, Ordering::AcqRel), id);
                        }
                        sub.free(a).unwrap();
                    }
                }
                for a in mine {
                    for c in a.offset() / GRANULE..(a.offset() + a.size()).div_ceil(GRANULE) {
                        assert_eq!(owners[c as usize].swap(0, Ordering::AcqRel), id);
                    }
                    sub.free(a).unwrap();
                }
                (allocated, refused)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        let (allocated, _refused) = h.join().expect("stress thread");
        total += allocated;
    }
    assert!(total > THREADS as usize * OPS / 3, "only {total} allocations succeeded");
    let s = sub.stats();
    assert_eq!((s.used, s.allocation_count, s.free_range_count, s.largest_free), (0, 0, 1, CAPACITY));
    assert_eq!(sub.snapshot().ranges().collect::<Vec<_>>(), vec![(0..CAPACITY, true)]);
}

#[test]
fn suballocator_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Suballocator>();
    assert_send_sync::<Tlsf>();
    assert_send_sync::<Allocation>();
    assert_send_sync::<lava_flow::pool::ImportCache<Vec<u8>>>();
}
