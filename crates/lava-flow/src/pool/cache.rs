//! The importer's block cache: one import per exported block, whatever API imports it.
//!
//! Pooled exports name their block (exporter identity plus [`AllocationId`]). The first buffer
//! from a block imports the block's fd; later buffers find the import here and cost only an
//! offset, and their fd (a duplicate of the same block) is closed. Entries are weak: the cache
//! never keeps a block alive, so the imported memory is released when the last buffer made from
//! it is dropped, and a later buffer from the same block imports it afresh.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use raw_gpu_handle::{AllocationId, DeviceIdentity, MemoryDescription};

use crate::Result;

/// What identifies an exported block to an importer: who exported it, and which allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// The exporting device and driver.
    pub exporter: DeviceIdentity,
    /// The allocation's identity, unique per exporter.
    pub allocation_id: AllocationId,
}

impl BlockKey {
    /// The key of an exported allocation; `None` when the exporter gave it no identity (then it
    /// cannot be shared between imports and is imported each time).
    pub fn of(description: &MemoryDescription) -> Option<BlockKey> {
        description.allocation_id.map(|allocation_id| BlockKey { exporter: description.device, allocation_id })
    }
}

/// Whether [`ImportCache::get_or_import`] found the block or imported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Found: the fd passed in was closed, nothing was imported.
    Hit,
    /// Imported now: the fd was consumed by the import.
    Miss,
}

/// Counters of one cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Lookups that found a live import.
    pub hits: u64,
    /// Lookups that imported (first use, or the previous import had been released).
    pub misses: u64,
    /// Duplicate fds closed on hits.
    pub duplicate_fds_closed: u64,
    /// Imports failed.
    pub failed_imports: u64,
    /// Blocks imported and still alive.
    pub live_blocks: usize,
    /// Entries in the map, released ones not yet swept included (bounded: see [`ImportCache::sweep`]).
    pub entries: usize,
}

/// One key's entry. Its own lock serializes imports of the same block, so two threads that
/// both miss don't both import; imports of different blocks run in parallel.
type Slot<T> = Arc<Mutex<Weak<T>>>;

/// A cache of imported blocks, generic over the imported object (a Vulkan `DeviceMemory`, a
/// CUDA external memory, a GL memory object, an OpenCL buffer). One cache belongs to one
/// importing context.
pub struct ImportCache<T> {
    slots: Mutex<HashMap<BlockKey, Slot<T>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    duplicate_fds_closed: AtomicU64,
    failed_imports: AtomicU64,
    /// Map size that triggers the next sweep of dead entries.
    sweep_at: AtomicU64,
}

impl<T> Default for ImportCache<T> {
    fn default() -> Self {
        ImportCache {
            slots: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            duplicate_fds_closed: AtomicU64::new(0),
            failed_imports: AtomicU64::new(0),
            sweep_at: AtomicU64::new(64),
        }
    }
}

impl<T> std::fmt::Debug for ImportCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportCache").field("stats", &self.stats()).finish()
    }
}

impl<T> ImportCache<T> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the live import of `key`, closing `fd` (a duplicate of the block's handle), or
    /// imports the block by calling `import(fd)` and remembers the result.
    ///
    /// `import` follows the ownership rule: it consumes the fd when it succeeds and closes it
    /// when it fails. Concurrent calls for one key wait for each other, so a block is imported
    /// once.
    pub fn get_or_import(
        &self,
        key: BlockKey,
        fd: OwnedFd,
        import: impl FnOnce(OwnedFd) -> Result<T>,
    ) -> Result<(Arc<T>, CacheOutcome)> {
        let slot = {
            let mut slots = self.lock_slots();
            self.sweep_if_due(&mut slots);
            slots.entry(key).or_default().clone()
        };
        let mut entry = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = entry.upgrade() {
            // The fd is a duplicate of the block's handle and is closed here, but only after the
            // same checks a fresh import makes: a closed number must be forgotten, not closed
            // (it may belong to someone else by now), and a pipe or socket is a caller's bug.
            drop(crate::fd::check_memory_fd(fd, "the fd of a pooled buffer's block", 0, false)?);
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.duplicate_fds_closed.fetch_add(1, Ordering::Relaxed);
            return Ok((found, CacheOutcome::Hit));
        }
        match import(fd) {
            Ok(value) => {
                let value = Arc::new(value);
                *entry = Arc::downgrade(&value);
                self.misses.fetch_add(1, Ordering::Relaxed);
                Ok((value, CacheOutcome::Miss))
            }
            Err(e) => {
                self.failed_imports.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The live import of `key`, counted as a hit when found: for a buffer that arrives without
    /// an fd because its peer sent the block's fd before. `None` (not counted): not imported
    /// here, or released since; the block's fd is needed.
    pub fn lookup(&self, key: &BlockKey) -> Option<Arc<T>> {
        let found = self.get(key)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(found)
    }

    /// The live import of `key`, if any, without importing or counting.
    pub fn get(&self, key: &BlockKey) -> Option<Arc<T>> {
        let slot = self.lock_slots().get(key).cloned()?;
        let entry = slot.lock().unwrap_or_else(|p| p.into_inner());
        entry.upgrade()
    }

    /// Counters and the number of live imports.
    pub fn stats(&self) -> CacheStats {
        let (live_blocks, entries) = {
            let slots = self.lock_slots();
            let entries = slots.len();
            // A slot locked right now is mid-lookup or mid-import: it holds (or will) a live block.
            let live = slots
                .values()
                .filter(|s| match s.try_lock() {
                    Ok(w) => w.strong_count() > 0,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().strong_count() > 0,
                    Err(std::sync::TryLockError::WouldBlock) => true,
                })
                .count();
            (live, entries)
        };
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            duplicate_fds_closed: self.duplicate_fds_closed.load(Ordering::Relaxed),
            failed_imports: self.failed_imports.load(Ordering::Relaxed),
            live_blocks,
            entries,
        }
    }

    /// Forgets entries whose import has been released. Lookups do this by themselves whenever
    /// the map has doubled since the last sweep, so the map stays within twice the live blocks.
    pub fn sweep(&self) {
        let mut slots = self.lock_slots();
        Self::remove_dead(&mut slots);
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<BlockKey, Slot<T>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove_dead(slots: &mut HashMap<BlockKey, Slot<T>>) {
        // A slot someone else holds may be mid-import: keep it.
        slots.retain(|_, s| Arc::strong_count(s) > 1 || s.lock().unwrap_or_else(|p| p.into_inner()).strong_count() > 0);
    }

    /// Amortized clean-up: sweeps when the map has doubled since the last sweep.
    fn sweep_if_due(&self, slots: &mut HashMap<BlockKey, Slot<T>>) {
        if slots.len() as u64 >= self.sweep_at.load(Ordering::Relaxed) {
            Self::remove_dead(slots);
            self.sweep_at.store((slots.len() as u64 * 2).max(64), Ordering::Relaxed);
        }
    }
}
