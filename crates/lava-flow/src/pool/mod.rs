//! Pooled exportable memory: small buffers carved from large exportable blocks, and the
//! importer's cache that imports each block once.
//!
//! Creating and importing exportable memory costs tens of microseconds to milliseconds per
//! allocation; a pool pays that once per block. The pieces:
//!
//! - [`Tlsf`] / [`Suballocator`]: the range allocator inside one block (two-level segregated
//!   fit; the module docs of [`tlsf`] say why not a buddy allocator).
//! - [`BufferPool`]: exportable Vulkan blocks per (device, memory type, handle kind), each a
//!   [`Suballocator`]; [`MemoryAllocator`] routes buffers through
//!   it ([`AllocationStrategy`], [`PoolConfig`]). A pooled buffer's export names its block
//!   (the block's fd and description, whose `allocation_id` is the block id) plus offset and size.
//! - [`ImportCache`]: keyed by exporter identity and block id, generic over what an API's
//!   import produces, so Vulkan, CUDA, GL and OpenCL importers share one implementation;
//!   [`BlockImporter`] is the Vulkan one.
//!
//! A block's fd maps the whole block, so the buffers of an ordinary pool never reach another
//! process: the IPC server and client refuse them ([`check_publishable`]). A pool made for peers
//! ([`PoolConfig::share_blocks_with_peers`]) holds buffers that may be published, and never
//! hands a freed range of a block out again while the block lives.
//!
//! See `docs/POOLS.md` for the policy (block sizes, dedicated allocations) and the lifetime rules.

mod allocator;
pub mod cache;
pub mod tlsf;
pub mod vulkan;

use std::sync::Mutex;

pub use allocator::MemoryAllocator;
pub use cache::{BlockKey, CacheOutcome, CacheStats, ImportCache};
pub use tlsf::{Allocation, SuballocError, SuballocStats, Tlsf};
pub use vulkan::{check_publishable, is_private_block, BlockImporter, BufferPool, PoolConfig, PoolStats};

pub use crate::vulkan::AllocationStrategy;

use crate::Error;

/// A [`Tlsf`] behind a lock: `Send + Sync`, shared by the threads that allocate from one block.
/// Allocate and free are O(1) and hold the lock for well under a microsecond.
#[derive(Debug)]
pub struct Suballocator {
    inner: Mutex<Tlsf>,
}

impl Suballocator {
    /// Manages `0 .. capacity` with byte granularity.
    pub fn new(capacity: u64) -> Suballocator {
        Suballocator { inner: Mutex::new(Tlsf::new(capacity)) }
    }

    /// Manages `0 .. capacity`, rounding sizes to `granularity` (a power of two).
    pub fn with_granularity(capacity: u64, granularity: u64) -> Result<Suballocator, SuballocError> {
        Ok(Suballocator { inner: Mutex::new(Tlsf::with_granularity(capacity, granularity)?) })
    }

    /// See [`Tlsf::allocate`].
    pub fn allocate(&self, size: u64, align: u64) -> Result<Allocation, SuballocError> {
        self.lock().allocate(size, align)
    }

    /// See [`Tlsf::free`].
    pub fn free(&self, allocation: Allocation) -> Result<(), SuballocError> {
        self.lock().free(allocation)
    }

    /// See [`Tlsf::stats`].
    pub fn stats(&self) -> SuballocStats {
        self.lock().stats()
    }

    /// Bytes managed.
    pub fn capacity(&self) -> u64 {
        self.lock().capacity()
    }

    /// Whether no allocation is live.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A copy of the current state (for inspecting the range map with [`Tlsf::ranges`]).
    pub fn snapshot(&self) -> Tlsf {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tlsf> {
        // The TLSF state is consistent between calls (no call panics halfway), so a poisoned
        // lock only means another thread panicked elsewhere.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl From<SuballocError> for Error {
    fn from(e: SuballocError) -> Error {
        match e {
            SuballocError::ZeroSize | SuballocError::BadAlignment { .. } => Error::invalid(
                "suballocation request",
                e.to_string(),
                "ask for a non-zero size and a power-of-two alignment",
            ),
            SuballocError::NoFit { .. } => Error::OutOfMemory {
                code: None,
                what: e.to_string(),
                advice: "free buffers of this pool, or use a larger block size or a dedicated allocation".into(),
            },
            SuballocError::NotAllocated { .. } => Error::invalid(
                "suballocation to free",
                e.to_string(),
                "free each allocation once, to the pool it came from",
            ),
        }
    }
}
