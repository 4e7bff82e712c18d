//! A two-level segregated fit (TLSF) suballocator for ranges of a device allocation.
//!
//! It manages offsets only (the memory itself may not be host-visible), so bookkeeping lives in
//! a side table of nodes instead of headers inside the memory. Every range of the managed space,
//! free or used, is one node in a doubly linked list in address order; free nodes are also on one
//! of `FL_COUNT * SL_COUNT` segregated free lists, found in O(1) through two levels of bitmaps.
//! Freed ranges merge with free neighbours at once, so the space never holds two adjacent free
//! nodes and returns to one free range when the last allocation goes.
//!
//! Why TLSF rather than a buddy allocator: buffers in a pool have arbitrary sizes (a 96 KiB
//! buffer would take 128 KiB from a buddy allocator, up to half of every block wasted), and
//! Vulkan's alignments are smaller than the sizes; TLSF splits exactly, merges with any
//! neighbour, and keeps allocate and free O(1) with a bounded search (see `allocate`).

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// log2 of the number of second-level lists per first-level (power of two) size class.
const SL_LOG2: u32 = 5;
const SL_COUNT: usize = 1 << SL_LOG2;
/// First-level classes: 0 holds sizes below `SL_COUNT` linearly, then one per power of two.
const FL_COUNT: usize = 64 - SL_LOG2 as usize + 1;
const NIL: u32 = u32::MAX;

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// Why an allocation could not be made or released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuballocError {
    /// A zero-byte allocation was asked for.
    ZeroSize,
    /// The alignment is not a power of two.
    BadAlignment {
        /// The alignment asked for.
        align: u64,
    },
    /// No free range can hold the request (fragmentation or lack of space).
    NoFit {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
        /// The largest free range at the time.
        largest_free: u64,
    },
    /// The allocation handed to `free` does not belong to this suballocator or was freed already.
    NotAllocated {
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u64,
    },
}

impl fmt::Display for SuballocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuballocError::ZeroSize => f.write_str("a zero-byte suballocation was asked for"),
            SuballocError::BadAlignment { align } => write!(f, "alignment {align} is not a power of two"),
            SuballocError::NoFit { size, align, largest_free } => write!(
                f,
                "no free range holds {size} bytes aligned to {align} (largest free range: {largest_free} bytes)"
            ),
            SuballocError::NotAllocated { offset, size } => {
                write!(f, "the range at offset {offset} ({size} bytes) is not a live allocation of this suballocator")
            }
        }
    }
}

impl std::error::Error for SuballocError {}

/// A live range handed out by [`Tlsf::allocate`]. Not `Clone`: it is given back exactly once.
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "an allocation that is dropped without `free` stays reserved"]
pub struct Allocation {
    offset: u64,
    size: u64,
    instance: u64,
    slot: u32,
    generation: u32,
}

impl Allocation {
    /// Start of the range; a multiple of the alignment asked for.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The size asked for (the space reserved may be rounded up to the granularity).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `offset .. offset + size`.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.size
    }
}

/// Occupancy figures of one suballocator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SuballocStats {
    /// Bytes managed.
    pub capacity: u64,
    /// Bytes reserved by live allocations (sizes rounded up to the granularity).
    pub used: u64,
    /// Bytes in free ranges, alignment gaps included: `capacity - used`.
    pub free: u64,
    /// The largest free range: the largest allocation (with alignment 1) that would succeed now.
    pub largest_free: u64,
    /// Live allocations.
    pub allocation_count: usize,
    /// Free ranges (1 when empty, more when fragmented).
    pub free_range_count: usize,
}

#[derive(Clone, Debug)]
struct Node {
    offset: u64,
    size: u64,
    prev_phys: u32,
    next_phys: u32,
    prev_free: u32,
    next_free: u32,
    free: bool,
    /// Bumped whenever the slot changes owner, so stale [`Allocation`]s are refused.
    generation: u32,
    /// Whether the slot holds a node at all (slots are recycled).
    live: bool,
}

/// The TLSF suballocator itself: single-threaded; see [`Suballocator`](super::Suballocator) for
/// the `Sync` wrapper.
#[derive(Clone)]
pub struct Tlsf {
    capacity: u64,
    granularity: u64,
    instance: u64,
    nodes: Vec<Node>,
    spare_slots: Vec<u32>,
    /// The node at offset 0; never changes (merges keep the lower node).
    first: u32,
    heads: Vec<u32>,
    fl_bitmap: u64,
    sl_bitmaps: [u32; FL_COUNT],
    used: u64,
    allocation_count: usize,
    free_range_count: usize,
}

impl fmt::Debug for Tlsf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tlsf").field("granularity", &self.granularity).field("stats", &self.stats()).finish()
    }
}

/// (first level, second level) of the list whose ranges all lie in the size class of `size`.
fn mapping_insert(size: u64) -> (usize, usize) {
    debug_assert!(size > 0);
    let l = 63 - size.leading_zeros();
    if l < SL_LOG2 {
        (0, size as usize)
    } else {
        let fl = (l - SL_LOG2 + 1) as usize;
        let sl = ((size >> (l - SL_LOG2)) as usize) ^ SL_COUNT;
        (fl, sl)
    }
}

/// The first list whose every range is at least `size` bytes (rounds `size` up to the next class
/// boundary); `None` past the largest class.
fn mapping_search(size: u64) -> Option<(usize, usize)> {
    let l = 63 - size.leading_zeros();
    let rounded = if l < SL_LOG2 { size } else { size.checked_add((1u64 << (l - SL_LOG2)) - 1)? };
    Some(mapping_insert(rounded))
}

#[cfg(test)]
fn class_lower_bound(fl: usize, sl: usize) -> u64 {
    if fl == 0 {
        sl as u64
    } else {
        let l = fl as u32 + SL_LOG2 - 1;
        (1u64 << l) | ((sl as u64) << (l - SL_LOG2))
    }
}

fn next_class(fl: usize, sl: usize) -> Option<(usize, usize)> {
    if sl + 1 < SL_COUNT {
        Some((fl, sl + 1))
    } else if fl + 1 < FL_COUNT {
        Some((fl + 1, 0))
    } else {
        None
    }
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

impl Tlsf {
    /// Manages `0 .. capacity` with byte granularity.
    pub fn new(capacity: u64) -> Tlsf {
        Self::with_granularity(capacity, 1).expect("1 is a power of two")
    }

    /// Manages `0 .. capacity`, rounding every size (and so every offset) to `granularity`, a
    /// power of two: fewer, larger fragments when requests are all multiples of it anyway.
    pub fn with_granularity(capacity: u64, granularity: u64) -> Result<Tlsf, SuballocError> {
        if !granularity.is_power_of_two() {
            return Err(SuballocError::BadAlignment { align: granularity });
        }
        let mut tlsf = Tlsf {
            capacity,
            granularity,
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            nodes: Vec::new(),
            spare_slots: Vec::new(),
            first: NIL,
            heads: vec![NIL; FL_COUNT * SL_COUNT],
            fl_bitmap: 0,
            sl_bitmaps: [0; FL_COUNT],
            used: 0,
            allocation_count: 0,
            free_range_count: 0,
        };
        if capacity > 0 {
            let slot = tlsf.new_node(0, capacity, true);
            tlsf.first = slot;
            tlsf.insert_free(slot);
        }
        Ok(tlsf)
    }

    /// Bytes managed.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The rounding applied to sizes.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Whether no allocation is live.
    pub fn is_empty(&self) -> bool {
        self.allocation_count == 0
    }

    /// Reserves `size` bytes at an offset that is a multiple of `align` (a power of two; 0 means 1).
    ///
    /// Good fit in O(1): takes the first range of the smallest size class whose ranges all fit
    /// `size + align - granularity`. When that finds nothing, the classes that may still hold a
    /// fitting range are searched range by range, so `NoFit` means no free range can hold it.
    pub fn allocate(&mut self, size: u64, align: u64) -> Result<Allocation, SuballocError> {
        let align = align.max(1);
        if !align.is_power_of_two() {
            return Err(SuballocError::BadAlignment { align });
        }
        if size == 0 {
            return Err(SuballocError::ZeroSize);
        }
        let no_fit = |this: &Self| SuballocError::NoFit { size, align, largest_free: this.largest_free() };
        let Some(reserved) = align_up(size, self.granularity) else { return Err(no_fit(self)) };
        if reserved > self.capacity {
            return Err(no_fit(self));
        }
        let align = align.max(self.granularity);
        let slack = align - self.granularity;

        // Fast path: any range of this class fits, whatever its offset.
        let fast = reserved.checked_add(slack).and_then(mapping_search).and_then(|(fl, sl)| self.find_nonempty(fl, sl));
        let found = match fast {
            Some((fl, sl)) => Some(self.heads[fl * SL_COUNT + sl]),
            None => self.scan_for_fit(reserved, align),
        };
        let Some(slot) = found else { return Err(no_fit(self)) };
        Ok(self.take(slot, size, reserved, align))
    }

    /// Gives `allocation` back; it merges with free neighbours.
    pub fn free(&mut self, allocation: Allocation) -> Result<(), SuballocError> {
        let refused = SuballocError::NotAllocated { offset: allocation.offset, size: allocation.size };
        if allocation.instance != self.instance {
            return Err(refused);
        }
        let Some(node) = self.nodes.get(allocation.slot as usize) else { return Err(refused) };
        if !node.live || node.free || node.generation != allocation.generation || node.offset != allocation.offset {
            return Err(refused);
        }
        let mut slot = allocation.slot;
        self.used -= self.nodes[slot as usize].size;
        self.allocation_count -= 1;
        self.nodes[slot as usize].free = true;
        self.nodes[slot as usize].generation = self.nodes[slot as usize].generation.wrapping_add(1);

        let prev = self.nodes[slot as usize].prev_phys;
        if prev != NIL && self.nodes[prev as usize].free {
            self.remove_free(prev);
            self.absorb_next(prev);
            slot = prev;
        }
        let next = self.nodes[slot as usize].next_phys;
        if next != NIL && self.nodes[next as usize].free {
            self.remove_free(next);
            self.absorb_next(slot);
        }
        self.insert_free(slot);
        Ok(())
    }

    /// Occupancy figures.
    pub fn stats(&self) -> SuballocStats {
        SuballocStats {
            capacity: self.capacity,
            used: self.used,
            free: self.capacity - self.used,
            largest_free: self.largest_free(),
            allocation_count: self.allocation_count,
            free_range_count: self.free_range_count,
        }
    }

    /// The largest free range, in bytes.
    pub fn largest_free(&self) -> u64 {
        if self.fl_bitmap == 0 {
            return 0;
        }
        let fl = 63 - self.fl_bitmap.leading_zeros() as usize;
        let sl = 31 - self.sl_bitmaps[fl].leading_zeros() as usize;
        // Every range of a higher class is larger than every range of a lower one.
        let mut best = 0;
        let mut cur = self.heads[fl * SL_COUNT + sl];
        while cur != NIL {
            best = best.max(self.nodes[cur as usize].size);
            cur = self.nodes[cur as usize].next_free;
        }
        best
    }

    /// Every range in address order with whether it is free: the whole map of the space.
    pub fn ranges(&self) -> impl Iterator<Item = (Range<u64>, bool)> + '_ {
        let mut cur = self.first;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let n = &self.nodes[cur as usize];
            cur = n.next_phys;
            Some((n.offset..n.offset + n.size, n.free))
        })
    }

    // --- internals ---

    fn new_node(&mut self, offset: u64, size: u64, free: bool) -> u32 {
        let node = Node {
            offset,
            size,
            prev_phys: NIL,
            next_phys: NIL,
            prev_free: NIL,
            next_free: NIL,
            free,
            generation: 0,
            live: true,
        };
        if let Some(slot) = self.spare_slots.pop() {
            let generation = self.nodes[slot as usize].generation.wrapping_add(1);
            self.nodes[slot as usize] = Node { generation, ..node };
            slot
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    fn release_node(&mut self, slot: u32) {
        let n = &mut self.nodes[slot as usize];
        n.live = false;
        n.generation = n.generation.wrapping_add(1);
        self.spare_slots.push(slot);
    }

    /// The first non-empty list at or above class (fl, sl).
    fn find_nonempty(&self, fl: usize, sl: usize) -> Option<(usize, usize)> {
        let sl_map = self.sl_bitmaps[fl] & (u32::MAX << sl);
        if sl_map != 0 {
            return Some((fl, sl_map.trailing_zeros() as usize));
        }
        let fl_map = if fl + 1 < 64 { self.fl_bitmap & (u64::MAX << (fl + 1)) } else { 0 };
        if fl_map == 0 {
            return None;
        }
        let fl = fl_map.trailing_zeros() as usize;
        Some((fl, self.sl_bitmaps[fl].trailing_zeros() as usize))
    }

    /// Slow path: walks every free range that is large enough before alignment, smallest
    /// classes first, and returns the first one that fits after alignment.
    fn scan_for_fit(&self, reserved: u64, align: u64) -> Option<u32> {
        let (mut fl, mut sl) = mapping_insert(reserved);
        loop {
            let (f, s) = self.find_nonempty(fl, sl)?;
            let mut cur = self.heads[f * SL_COUNT + s];
            while cur != NIL {
                let n = &self.nodes[cur as usize];
                if let Some(start) = align_up(n.offset, align) {
                    if start - n.offset <= n.size && n.size - (start - n.offset) >= reserved {
                        return Some(cur);
                    }
                }
                cur = n.next_free;
            }
            (fl, sl) = next_class(f, s)?;
        }
    }

    /// Carves `reserved` bytes at the first `align`ed offset of free node `slot`.
    fn take(&mut self, slot: u32, size: u64, reserved: u64, align: u64) -> Allocation {
        self.remove_free(slot);
        let (offset, node_size) = (self.nodes[slot as usize].offset, self.nodes[slot as usize].size);
        let start = align_up(offset, align).expect("checked by the search");
        let pad = start - offset;
        let mut alloc_slot = slot;
        if pad > 0 {
            // The gap before the aligned start stays free as its own node.
            self.nodes[slot as usize].size = pad;
            alloc_slot = self.new_node(start, node_size - pad, false);
            self.link_after(slot, alloc_slot);
            self.insert_free(slot);
        }
        let rest = node_size - pad - reserved;
        self.nodes[alloc_slot as usize].size = reserved;
        self.nodes[alloc_slot as usize].free = false;
        if rest > 0 {
            let tail = self.new_node(start + reserved, rest, true);
            self.link_after(alloc_slot, tail);
            self.insert_free(tail);
        }
        self.used += reserved;
        self.allocation_count += 1;
        Allocation {
            offset: start,
            size,
            instance: self.instance,
            slot: alloc_slot,
            generation: self.nodes[alloc_slot as usize].generation,
        }
    }

    fn link_after(&mut self, before: u32, new: u32) {
        let after = self.nodes[before as usize].next_phys;
        self.nodes[new as usize].prev_phys = before;
        self.nodes[new as usize].next_phys = after;
        self.nodes[before as usize].next_phys = new;
        if after != NIL {
            self.nodes[after as usize].prev_phys = new;
        }
    }

    /// Merges the physical successor of `slot` (already off the free lists) into `slot`.
    fn absorb_next(&mut self, slot: u32) {
        let next = self.nodes[slot as usize].next_phys;
        let (next_size, after) = (self.nodes[next as usize].size, self.nodes[next as usize].next_phys);
        self.nodes[slot as usize].size += next_size;
        self.nodes[slot as usize].next_phys = after;
        if after != NIL {
            self.nodes[after as usize].prev_phys = slot;
        }
        self.release_node(next);
    }

    fn insert_free(&mut self, slot: u32) {
        let (fl, sl) = mapping_insert(self.nodes[slot as usize].size);
        let head = self.heads[fl * SL_COUNT + sl];
        {
            let n = &mut self.nodes[slot as usize];
            n.free = true;
            n.prev_free = NIL;
            n.next_free = head;
        }
        if head != NIL {
            self.nodes[head as usize].prev_free = slot;
        }
        self.heads[fl * SL_COUNT + sl] = slot;
        self.fl_bitmap |= 1 << fl;
        self.sl_bitmaps[fl] |= 1 << sl;
        self.free_range_count += 1;
    }

    fn remove_free(&mut self, slot: u32) {
        let (fl, sl) = mapping_insert(self.nodes[slot as usize].size);
        let (prev, next) = (self.nodes[slot as usize].prev_free, self.nodes[slot as usize].next_free);
        if prev != NIL {
            self.nodes[prev as usize].next_free = next;
        } else {
            self.heads[fl * SL_COUNT + sl] = next;
            if next == NIL {
                self.sl_bitmaps[fl] &= !(1 << sl);
                if self.sl_bitmaps[fl] == 0 {
                    self.fl_bitmap &= !(1 << fl);
                }
            }
        }
        if next != NIL {
            self.nodes[next as usize].prev_free = prev;
        }
        self.nodes[slot as usize].prev_free = NIL;
        self.nodes[slot as usize].next_free = NIL;
        self.free_range_count -= 1;
    }

    /// Checks every structural invariant; for tests.
    #[cfg(test)]
    pub(crate) fn validate(&self) -> Result<(), String> {
        let mut expect_offset = 0;
        let mut prev = NIL;
        let mut cur = self.first;
        let (mut used, mut allocs, mut frees) = (0, 0, 0);
        let mut prev_free = false;
        while cur != NIL {
            let n = &self.nodes[cur as usize];
            if !n.live || n.offset != expect_offset || n.prev_phys != prev || n.size == 0 {
                return Err(format!("bad node {cur}: {n:?}, expected offset {expect_offset}"));
            }
            if n.free {
                if prev_free {
                    return Err(format!("two adjacent free nodes at {}", n.offset));
                }
                let (fl, sl) = mapping_insert(n.size);
                let mut c = self.heads[fl * SL_COUNT + sl];
                while c != NIL && c != cur {
                    c = self.nodes[c as usize].next_free;
                }
                if c != cur {
                    return Err(format!("free node {cur} missing from its list"));
                }
                frees += 1;
            } else {
                used += n.size;
                allocs += 1;
            }
            prev_free = n.free;
            expect_offset += n.size;
            prev = cur;
            cur = n.next_phys;
        }
        if expect_offset != self.capacity || used != self.used || allocs != self.allocation_count {
            return Err(format!("totals: end {expect_offset} used {used} allocs {allocs} vs {:?}", self.stats()));
        }
        if frees != self.free_range_count {
            return Err(format!("free count {frees} vs {}", self.free_range_count));
        }
        for fl in 0..FL_COUNT {
            for sl in 0..SL_COUNT {
                let nonempty = self.heads[fl * SL_COUNT + sl] != NIL;
                if nonempty != (self.sl_bitmaps[fl] & (1 << sl) != 0) {
                    return Err(format!("bitmap mismatch at ({fl},{sl})"));
                }
            }
            if (self.sl_bitmaps[fl] != 0) != (self.fl_bitmap & (1 << fl) != 0) {
                return Err(format!("first-level bitmap mismatch at {fl}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_ordered_and_search_rounds_up() {
        let mut last = (0, 0);
        for size in 1..100_000u64 {
            let c = mapping_insert(size);
            assert!(c >= last, "class of {size} went down");
            assert!(class_lower_bound(c.0, c.1) <= size);
            last = c;
            let (fl, sl) = mapping_search(size).unwrap();
            // Every size in the searched class is >= size.
            assert!(class_lower_bound(fl, sl) >= size, "search({size}) -> ({fl},{sl})");
        }
        for shift in 0..64 {
            let size = 1u64 << shift;
            assert_eq!(class_lower_bound(mapping_insert(size).0, mapping_insert(size).1), size);
        }
        assert!(mapping_insert(u64::MAX).0 < FL_COUNT);
        assert_eq!(mapping_search(u64::MAX), None);
    }

    #[test]
    fn split_and_merge_keep_invariants() {
        let mut t = Tlsf::new(1000);
        let a = t.allocate(100, 1).unwrap();
        let b = t.allocate(100, 64).unwrap();
        let c = t.allocate(10, 256).unwrap();
        t.validate().unwrap();
        assert_eq!(b.offset() % 64, 0);
        assert_eq!(c.offset() % 256, 0);
        t.free(b).unwrap();
        t.validate().unwrap();
        t.free(a).unwrap();
        t.validate().unwrap();
        t.free(c).unwrap();
        t.validate().unwrap();
        assert_eq!(t.ranges().collect::<Vec<_>>(), vec![(0..1000, true)]);
    }

    #[test]
    fn exact_fit_is_found_by_the_slow_path() {
        // 4096 free at offset 4096 only: a 4096-aligned 4096-byte request must use it even
        // though the fast path asks for 8191 bytes.
        let mut t = Tlsf::new(8192);
        let a = t.allocate(4096, 1).unwrap();
        let b = t.allocate(4096, 4096).unwrap();
        assert_eq!(b.offset(), 4096);
        t.free(b).unwrap();
        let b = t.allocate(4096, 4096).unwrap();
        assert_eq!(b.offset(), 4096);
        t.free(a).unwrap();
        t.free(b).unwrap();
        t.validate().unwrap();
    }

    proptest::proptest! {
        /// Internal invariants (free lists, bitmaps, links) after every step of a random workload.
        #[test]
        fn internal_invariants_hold(
            capacity in 1u64..(1 << 20),
            ops in proptest::collection::vec((0u64..(1 << 16), 0u32..12, proptest::bool::ANY), 1..200),
        ) {
            let mut t = Tlsf::with_granularity(capacity, 16).unwrap();
            let mut live = Vec::new();
            for (size, align_log2, alloc) in ops {
                if alloc || live.is_empty() {
                    if let Ok(a) = t.allocate(size, 1 << align_log2) {
                        live.push(a);
                    }
                } else {
                    let a = live.swap_remove(size as usize % live.len());
                    t.free(a).unwrap();
                }
                t.validate().map_err(proptest::test_runner::TestCaseError::fail)?;
            }
            for a in live {
                t.free(a).unwrap();
                t.validate().map_err(proptest::test_runner::TestCaseError::fail)?;
            }
            proptest::prop_assert_eq!(t.stats().free_range_count, 1);
        }
    }
}
