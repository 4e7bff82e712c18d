//! The CUDA importer's block cache: each exported block is imported and mapped once per
//! [`CudaDevice`], and every buffer of it is a view at its offset.
//!
//! Pooled buffers (`crate::pool`) export their whole block's fd, with the block's
//! `allocation_id`, plus their offset and size. [`CudaDevice::import_buffer`] keys the pool's
//! generic [`ImportCache`] by (exporter identity, allocation id):
//!
//! - the first buffer of a block (a miss) calls `cuImportExternalMemory` on the whole block and
//!   maps the whole block once (`cuExternalMemoryGetMappedBuffer` at offset 0, the block's size);
//! - a further buffer (a hit) closes its fd (a duplicate of the block's) and becomes a view into
//!   that mapping: the mapping's pointer plus the buffer's offset. No driver call at all.
//!
//! Why one whole-block mapping rather than a `cuExternalMemoryGetMappedBuffer` per buffer: a hit
//! then costs a hash lookup, an `Arc` clone and the `close` of the duplicate fd (well under a
//! microsecond), where a per-buffer mapping would pay the driver's mapping call (address space
//! reservation and page-table updates) for every buffer; it also needs no offset alignment beyond
//! what Vulkan gave the buffer, and one mapping per block uses fewer driver objects. What it gives
//! up is isolation between buffers of a block inside this process, which the fd never gave
//! anyway: whoever holds a pooled buffer's fd can map its whole block (docs/POOLS.md). The mapping
//! reserves address space for the whole block, not memory: the memory is Vulkan's.
//!
//! Lifetimes: every buffer holds an `Arc` of the block's mapping, the mapping holds an `Arc` of
//! the import, the import holds the [`CudaDevice`]. The cache holds only a `Weak`, so the mapping
//! is freed (`cuMemFree`) with the block's last buffer, then the import (`cuDestroyExternalMemory`)
//! unless [`CudaBuffer::memory`] clones keep it; a later buffer of the block imports it afresh.
//! Exports without an allocation id, and dedicated allocations (one resource each, imported with
//! `CUDA_EXTERNAL_MEMORY_DEDICATED`), are imported one by one as before.

use raw_gpu_handle::{BufferDescription, ExportedBuffer, MemoryDescription, MemoryHandle};

use super::memory::{check_range, Mapping};
use super::{CudaBuffer, CudaDevice, ImportedMemory};
use crate::pool::{BlockKey, CacheOutcome, CacheStats, ImportCache};
use crate::{Error, Result};

/// One cache per [`CudaDevice`] (shared by its clones): block key to the block's whole-block
/// mapping.
pub(crate) type BlockCache = ImportCache<Mapping>;

impl CudaDevice {
    /// Imports a buffer, through the block cache where the export names its block (see the
    /// module docs), saying whether the block was found. [`CacheOutcome::Miss`] also stands for
    /// exports the cache does not take (dedicated, or without an allocation id), which are
    /// imported on their own. The fd is consumed in every case (docs/OWNERSHIP.md): by the import
    /// on a miss, closed as a duplicate on a hit, closed exactly once on failure.
    pub fn import_buffer_cached(&self, buffer: ExportedBuffer) -> Result<(CudaBuffer<u8>, CacheOutcome)> {
        // Every early return drops `buffer`, closing its fd exactly once.
        let place = buffer.buffer;
        let d = buffer.memory.description;
        let key = match BlockKey::of(&d) {
            Some(key) if !d.dedicated => key,
            _ => {
                let memory = self.import_memory(buffer.memory)?;
                return Ok((memory.map_buffer(place.offset, place.size)?, CacheOutcome::Miss));
            }
        };
        self.check_deferred()?;
        self.check_pooled(&d, &place)?;
        let (mapping, outcome) = self.inner.block_cache.get_or_import(key, buffer.memory.handle, |fd| {
            let memory = ImportedMemory::import(self, MemoryHandle::new(fd, d))?;
            memory.map_range(0, d.allocation_size)
        })?;
        check_same_block(&mapping, &d)?;
        Ok((CudaBuffer::in_mapping(mapping, place.offset, place.size)?, outcome))
    }

    /// A buffer of a block this device holds imported already, from its descriptions alone (no
    /// fd): a peer that sent a block's fd once can send later buffers of the block without one.
    /// `Ok(None)`: the block is not imported here (never, or released since), so its fd is
    /// needed. Counted as a hit when found.
    pub fn import_buffer_from_cache(
        &self,
        memory: &MemoryDescription,
        buffer: BufferDescription,
    ) -> Result<Option<CudaBuffer<u8>>> {
        let Some(key) = BlockKey::of(memory).filter(|_| !memory.dedicated) else { return Ok(None) };
        self.check_deferred()?;
        self.check_pooled(memory, &buffer)?;
        let Some(mapping) = self.inner.block_cache.lookup(&key) else { return Ok(None) };
        check_same_block(&mapping, memory)?;
        CudaBuffer::in_mapping(mapping, buffer.offset, buffer.size).map(Some)
    }

    /// The block cache's hits, misses, duplicate fds closed, failed imports and live blocks.
    pub fn block_cache_stats(&self) -> CacheStats {
        self.inner.block_cache.stats()
    }

    /// What a fresh import would refuse, refused before the cache too (so a hit cannot bypass
    /// it): another handle kind, another device, an empty block, a buffer outside its block.
    fn check_pooled(&self, d: &MemoryDescription, place: &BufferDescription) -> Result<()> {
        ImportedMemory::check_description(self, d)?;
        check_range(place.offset, place.size, d.allocation_size, "its block")
    }
}

/// A cached block must be the allocation the description names (size and memory type): otherwise
/// two allocations claim one id, and a view into the cached one would show the wrong bytes.
fn check_same_block(mapping: &Mapping, d: &MemoryDescription) -> Result<()> {
    let cached = mapping.memory().description();
    if cached.allocation_size == d.allocation_size && cached.memory_type_index == d.memory_type_index {
        return Ok(());
    }
    Err(Error::invalid(
        format!(
            "a buffer of block {:#x} ({} bytes, memory type {})",
            d.allocation_id.map_or(0, |a| a.0),
            d.allocation_size,
            d.memory_type_index
        ),
        format!(
            "that block was imported into CUDA as {} bytes of memory type {}: two allocations claim one id",
            cached.allocation_size, cached.memory_type_index
        ),
        "pass descriptions exactly as the exporter gave them",
    ))
}
