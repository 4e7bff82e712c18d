//! Vulkan blocks: exportable `DeviceMemory` suballocated into buffers, and the importer that
//! imports each block once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ash::vk;
use raw_gpu_handle::{
    AllocationId, BufferDescription, BufferHandle, ExportedBuffer, MemoryDescription, MemoryHandle, MemoryHandleKind,
    Uuid,
};

use super::{Allocation, BlockKey, CacheOutcome, CacheStats, ImportCache, Suballocator};
use crate::vulkan::caps::{buffer_capabilities, DEFAULT_BUFFER_USAGE};
use crate::vulkan::{
    allocation_id_prefix, candidate_types, next_allocation_id, vk_memory_handle_type, AllocateParams,
    AllocationStrategy, Buffer, BufferOptions, DedicatedPolicy, DeviceMemory, MemoryKind,
};
use crate::{Error, Result, VulkanContext};

/// Sizes are rounded to this inside a block: at most 255 bytes lost per buffer, fewer and larger
/// free fragments, and every offset already meets the usual buffer alignments (<= 256).
const GRANULARITY: u64 = 256;

/// How a [`BufferPool`] sizes blocks and decides between pooled and own allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolConfig {
    /// Size of a new block. A buffer larger than this (forced pooled) gets a block of its size
    /// rounded up to 1 MiB.
    pub block_size: u64,
    /// Largest buffer `AllocationStrategy::Auto` pools. At 1/16 of a block, one buffer cannot
    /// pin a mostly empty block, and the cost a pool saves matters most for small buffers.
    pub dedicated_threshold: u64,
    /// Empty blocks kept per (device, memory type, handle kind) for the next allocations; the
    /// rest are released as soon as their last buffer is dropped. 0 by default: memory goes back
    /// with the last buffer. 1 avoids allocate/release churn where a single buffer comes and goes
    /// ([`BufferPool::trim`] releases retained blocks).
    pub retain_empty_blocks: usize,
    /// Whether this pool's buffers may be handed to other processes (`false` by default).
    ///
    /// A pooled buffer's export is the fd of its whole block, so a peer that receives one buffer
    /// can read and write every buffer of the block. Blocks of a pool without this flag are
    /// private: [`Server::publish`](crate::ipc::Server::publish) and
    /// [`Client::publish`](crate::ipc::Client::publish) refuse their buffers (give a buffer you
    /// publish its own allocation, [`AllocationStrategy::Dedicated`], or take it from a pool with
    /// this flag). Set it on a pool that holds only buffers every peer of any of them may see:
    /// its blocks are then publishable, and since a peer may map any range of a block for as long
    /// as it likes, a freed range of such a block is never handed out again; the block is
    /// released (never retained) once its last buffer is gone. See docs/POOLS.md.
    pub share_blocks_with_peers: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            block_size: 64 << 20,
            dedicated_threshold: 4 << 20,
            retain_empty_blocks: 0,
            share_blocks_with_peers: false,
        }
    }
}

impl PoolConfig {
    /// The default configuration with [`share_blocks_with_peers`](Self::share_blocks_with_peers)
    /// set: a pool for buffers that are published to other processes.
    pub fn for_peers() -> PoolConfig {
        PoolConfig { share_blocks_with_peers: true, ..PoolConfig::default() }
    }
}

/// What a pool holds and has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Blocks held (with buffers, or retained empty).
    pub blocks: usize,
    /// Of those, the empty ones.
    pub empty_blocks: usize,
    /// Bytes of device memory in blocks.
    pub block_bytes: u64,
    /// Bytes of blocks reserved by live buffers (sizes rounded to the memory requirements).
    pub used_bytes: u64,
    /// Bytes of blocks shared with peers that buffers no longer use but that are not handed out
    /// again while their block lives (a peer may still map them).
    pub retired_bytes: u64,
    /// Live pooled buffers.
    pub live_buffers: usize,
    /// Blocks allocated so far.
    pub blocks_created: u64,
    /// Blocks given back so far.
    pub blocks_released: u64,
    /// Buffers carved from blocks so far.
    pub pooled_allocations: u64,
    /// Buffers given their own allocation so far (by this pool's `allocate_buffer`).
    pub dedicated_allocations: u64,
}

/// One exportable allocation and the ranges handed out of it.
struct Block {
    memory: Arc<DeviceMemory>,
    sub: Suballocator,
    /// The pool shares its blocks with peers: freed ranges stay allocated in `sub` (retired)
    /// instead of going back to the free lists.
    peer_shared: bool,
    /// Live buffers in the block (placing one takes the class lock, so under that lock a block
    /// with none stays without).
    live: AtomicUsize,
    /// Bytes of retired ranges (`peer_shared` blocks only).
    retired: AtomicU64,
}

impl Block {
    fn unused(&self) -> bool {
        self.live.load(Ordering::Acquire) == 0
    }
}

/// The upper half of a private block's allocation id is this process's id prefix XOR this tag,
/// so that every export of a private block, even one kept after the block is gone, is recognized
/// by [`check_publishable`] without a table that grows with every block.
const PRIVATE_BLOCK_TAG: u64 = 0x7072_6976_2d62_6c6b; // "priv-blk"

fn private_block_id() -> AllocationId {
    AllocationId(next_allocation_id().0 ^ (u128::from(PRIVATE_BLOCK_TAG) << 64))
}

/// Whether `id` names a block of a private pool (one without
/// [`PoolConfig::share_blocks_with_peers`]) allocated in this process.
pub fn is_private_block(id: AllocationId) -> bool {
    (id.0 >> 64) as u64 == allocation_id_prefix() ^ PRIVATE_BLOCK_TAG
}

/// Refuses memory that must not reach another process: a buffer (or the memory) of a private
/// pool block of this process, whose fd would let the peer read every other buffer of the block.
/// The server and the client run it on every object they publish.
pub fn check_publishable(name: &str, memory: &MemoryDescription) -> Result<()> {
    match memory.allocation_id {
        Some(id) if is_private_block(id) => Err(Error::invalid(
            format!("publishing {name:?} to other processes"),
            format!(
                "it lies in pool block {id} ({} bytes), whose fd maps every buffer of the block, and the pool is \
                 private (PoolConfig::share_blocks_with_peers is off; docs/POOLS.md, \"Sharing blocks with other \
                 processes\")",
                memory.allocation_size
            ),
            "give the buffer its own allocation (AllocationStrategy::Dedicated), or allocate it from a \
             MemoryAllocator whose pool is made for peers (PoolConfig::for_peers()), whose blocks hold only \
             buffers that peers may see",
        )),
        _ => Ok(()),
    }
}

/// The blocks of one (device, memory type, handle kind). Its lock is held while a buffer is
/// placed, so two threads do not both allocate a new block for one class.
#[derive(Default)]
struct Class {
    blocks: Mutex<Vec<Arc<Block>>>,
}

impl Class {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Block>>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct ClassKey {
    device: u64,
    memory_type: u32,
    export: Option<MemoryHandleKind>,
}

/// Requirements depend on the physical device, driver and creation parameters only (Vulkan spec,
/// VkMemoryRequirements: identical for identical creation parameters), so they are memoized and
/// a pooled allocation does not create a probe buffer each time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct ReqKey {
    device_uuid: Uuid,
    driver_uuid: Uuid,
    size: u64,
    usage: u32,
    export: Option<MemoryHandleKind>,
}

#[derive(Clone, Copy, Debug)]
struct Requirements {
    size: u64,
    alignment: u64,
    type_bits: u32,
    requires_dedicated: bool,
    dedicated_only: bool,
    exportable: bool,
}

const REQUIREMENTS_MEMO_LIMIT: usize = 1024;

struct Shared {
    config: PoolConfig,
    classes: Mutex<HashMap<ClassKey, Arc<Class>>>,
    requirements: Mutex<HashMap<ReqKey, Requirements>>,
    blocks_created: AtomicU64,
    blocks_released: AtomicU64,
    pooled_allocations: AtomicU64,
    dedicated_allocations: AtomicU64,
}

/// Exportable blocks per (device, memory type, handle kind), suballocated into buffers.
///
/// `Send + Sync`; [`MemoryAllocator`](super::MemoryAllocator) owns one and routes
/// `allocate_buffer` through it. A pooled buffer holds its block's memory (an `Arc`) and gives its
/// range back when dropped; a block is released when its last buffer goes (beyond
/// [`PoolConfig::retain_empty_blocks`]), and its memory is freed once no buffer or mapping uses
/// it. Importers hold their own import of the block, so they are unaffected.
pub struct BufferPool {
    shared: Arc<Shared>,
}

impl Default for BufferPool {
    fn default() -> Self {
        BufferPool::new(PoolConfig::default())
    }
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool").field("config", &self.shared.config).field("stats", &self.stats()).finish()
    }
}

/// A pooled buffer's claim on its range; dropping it (after the `VkBuffer` is destroyed) gives
/// the range back and releases the block if it became empty.
struct Lease {
    block: Arc<Block>,
    class: Arc<Class>,
    allocation: Option<Allocation>,
    pool: Weak<Shared>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(a) = self.allocation.take() {
            if self.block.peer_shared {
                // A peer may still map this range: it stays allocated until the block goes.
                self.block.retired.fetch_add(a.size().next_multiple_of(GRANULARITY), Ordering::Relaxed);
            } else if let Err(e) = self.block.sub.free(a) {
                let e = Error::invalid("the range to free", e.to_string(), "report this as a bug in lava-flow's pool");
                let context = "returning a buffer's range to its pool block";
                self.block.memory.context().defer_error(crate::error::DeferredError::new(context, e));
            }
        }
        if self.block.live.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let pool = self.pool.upgrade();
        // A block shared with peers has no range left to reuse that a peer cannot see: never kept.
        let retain = if self.block.peer_shared { 0 } else { pool.as_ref().map_or(0, |p| p.config.retain_empty_blocks) };
        let mut blocks = self.class.lock();
        // Placing a buffer takes this lock, so emptiness cannot change while it is held.
        if !self.block.unused() {
            return;
        }
        if self.block.peer_shared || blocks.iter().filter(|b| b.unused()).count() > retain {
            if let Some(i) = blocks.iter().position(|b| Arc::ptr_eq(b, &self.block)) {
                blocks.remove(i);
                if let Some(p) = pool {
                    p.blocks_released.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl BufferPool {
    /// An empty pool.
    pub fn new(config: PoolConfig) -> BufferPool {
        BufferPool {
            shared: Arc::new(Shared {
                config,
                classes: Mutex::new(HashMap::new()),
                requirements: Mutex::new(HashMap::new()),
                blocks_created: AtomicU64::new(0),
                blocks_released: AtomicU64::new(0),
                pooled_allocations: AtomicU64::new(0),
                dedicated_allocations: AtomicU64::new(0),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> PoolConfig {
        self.shared.config
    }

    /// Creates a buffer on `ctx`'s device as `options.strategy` says: a range of a block, or its
    /// own allocation ([`Buffer::new`]).
    pub fn allocate_buffer(&self, ctx: &VulkanContext, options: &BufferOptions) -> Result<Buffer> {
        ctx.check_deferred()?;
        let pooled = match options.strategy {
            AllocationStrategy::Dedicated => false,
            AllocationStrategy::Pooled => true,
            AllocationStrategy::Auto => {
                options.size > 0
                    && options.size <= self.shared.config.dedicated_threshold
                    && refusal(options).is_none()
                    && self.requirements(ctx, options).map(|r| why_not_pooled(&r, options).is_none()).unwrap_or(false)
            }
        };
        if pooled {
            let buffer = self.allocate_pooled(ctx, options)?;
            self.shared.pooled_allocations.fetch_add(1, Ordering::Relaxed);
            Ok(buffer)
        } else {
            let buffer = Buffer::new(ctx, options)?;
            self.shared.dedicated_allocations.fetch_add(1, Ordering::Relaxed);
            Ok(buffer)
        }
    }

    fn allocate_pooled(&self, ctx: &VulkanContext, options: &BufferOptions) -> Result<Buffer> {
        if options.size == 0 {
            return Err(Error::invalid(
                "a pooled buffer of 0 bytes",
                "Vulkan forbids zero-sized resources (VUID-VkBufferCreateInfo-size-00912)",
                "ask for at least one byte",
            ));
        }
        if let Some(e) = refusal(options) {
            return Err(e);
        }
        let reqs = self.requirements(ctx, options)?;
        if let Some(e) = why_not_pooled(&reqs, options) {
            return Err(e);
        }
        let reserved = reqs.size.checked_add(options.allocation_padding).ok_or_else(|| {
            Error::invalid("allocation padding", "size plus padding overflows", "ask for less padding")
        })?;
        let candidates = candidate_types(ctx, reqs.type_bits, options.memory);
        if candidates.is_empty() {
            return Err(Error::unsupported(
                format!("a pooled {:?} buffer", options.memory),
                "no memory type allowed for it has the needed properties",
                "VkMemoryRequirements::memoryTypeBits",
                "choose another memory kind",
            ));
        }
        let mut last_error = None;
        for memory_type in candidates {
            let key =
                ClassKey { device: vk::Handle::as_raw(ctx.device().handle()), memory_type, export: options.export };
            let class = self.class(key);
            let placed = {
                let mut blocks = class.lock();
                let found = match place(&blocks, reserved, reqs.alignment) {
                    Some(found) => Some(found),
                    None => match self.new_block(ctx, memory_type, options.export, reserved) {
                        Ok(block) => {
                            let a = block.sub.allocate(reserved, reqs.alignment)?;
                            blocks.push(block.clone());
                            Some((block, a))
                        }
                        Err(e @ Error::OutOfMemory { .. }) => return Err(e),
                        Err(e) => {
                            last_error = Some(e);
                            None
                        }
                    },
                };
                // Counted under the class lock, where a lease that drops the count to zero
                // checks it again before releasing the block.
                if let Some((block, _)) = &found {
                    block.live.fetch_add(1, Ordering::AcqRel);
                }
                found
            };
            let Some((block, allocation)) = placed else { continue };
            let offset = allocation.offset();
            let memory = block.memory.clone();
            let lease = Lease { block, class, allocation: Some(allocation), pool: Arc::downgrade(&self.shared) };
            // If binding fails the closure is dropped unrun, and dropping the lease frees the range.
            let on_drop: Box<dyn FnOnce() + Send + Sync> = Box::new(move || drop(lease));
            return Buffer::bind_at(memory, offset, options.size, options.usage, Some(on_drop));
        }
        Err(last_error.expect("at least one memory type was tried"))
    }

    fn new_block(
        &self,
        ctx: &VulkanContext,
        memory_type: u32,
        export: Option<MemoryHandleKind>,
        reserved: u64,
    ) -> Result<Arc<Block>> {
        const MIB: u64 = 1 << 20;
        let size = self.shared.config.block_size.max(reserved.div_ceil(MIB).saturating_mul(MIB));
        let params = AllocateParams { size, type_index: memory_type, export_kind: export, dedicated: None };
        let peer_shared = self.shared.config.share_blocks_with_peers;
        let id = if peer_shared { next_allocation_id() } else { private_block_id() };
        let mut memory = DeviceMemory::allocate_with_id(ctx, params, id)?;
        if export.is_some() {
            memory = memory.keep_exported_fd();
        }
        self.shared.blocks_created.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Block {
            memory: Arc::new(memory),
            sub: Suballocator::with_granularity(size, GRANULARITY).expect("GRANULARITY is a power of two"),
            peer_shared,
            live: AtomicUsize::new(0),
            retired: AtomicU64::new(0),
        }))
    }

    fn class(&self, key: ClassKey) -> Arc<Class> {
        let mut classes = self.shared.classes.lock().unwrap_or_else(|p| p.into_inner());
        classes.entry(key).or_default().clone()
    }

    /// Memory requirements of a buffer like `options` describes, from the memo or a probe buffer.
    fn requirements(&self, ctx: &VulkanContext, options: &BufferOptions) -> Result<Requirements> {
        let id = ctx.identity();
        let key = ReqKey {
            device_uuid: id.device_uuid,
            driver_uuid: id.driver_uuid,
            size: options.size,
            usage: options.usage.as_raw(),
            export: options.export,
        };
        if let Some(r) = self.memo().get(&key) {
            return Ok(*r);
        }
        let caps = options.export.map(|k| buffer_capabilities(ctx, options.usage, k));
        let mut external = vk::ExternalMemoryBufferCreateInfo::default();
        let mut info = vk::BufferCreateInfo::default()
            .size(options.size)
            .usage(options.usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // A handle type the driver cannot export (or whose extension is off) may not be named in
        // vkCreateBuffer; such a request is refused below (`exportable`), whatever the probe says.
        if let Some(kind) = options.export.filter(|_| caps.is_none_or(|c| c.exportable)) {
            external = external.handle_types(vk_memory_handle_type(kind));
            info = info.push_next(&mut external);
        }
        // SAFETY: `info` and its chain are locals that outlive the call; size > 0 and usage non-empty
        // (allocate_pooled, refusal), and the external chain names only a handle type the capability
        // query reports exportable.
        let probe = unsafe { ctx.device().create_buffer(&info, None) }.map_err(|r| {
            Error::vk("vkCreateBuffer", r, format!("creating a {}-byte buffer to learn its requirements", options.size))
        })?;
        let mut dedicated = vk::MemoryDedicatedRequirements::default();
        let mut reqs2 = vk::MemoryRequirements2::default().push_next(&mut dedicated);
        let query = vk::BufferMemoryRequirementsInfo2::default().buffer(probe);
        // SAFETY: `probe` was just created on ctx's device and is alive; the requirements struct and its
        // chain are locals that outlive the call.
        unsafe { ctx.device().get_buffer_memory_requirements2(&query, &mut reqs2) };
        let r = reqs2.memory_requirements;
        let requires_dedicated = dedicated.requires_dedicated_allocation == vk::TRUE;
        // SAFETY: the probe was never bound or used by a command; it is destroyed once, here.
        unsafe { ctx.device().destroy_buffer(probe, None) };
        let reqs = Requirements {
            size: r.size,
            alignment: r.alignment.max(1),
            type_bits: r.memory_type_bits,
            requires_dedicated,
            dedicated_only: caps.is_some_and(|c| c.dedicated_only),
            exportable: caps.is_none_or(|c| c.exportable),
        };
        let mut memo = self.memo();
        if memo.len() >= REQUIREMENTS_MEMO_LIMIT {
            memo.clear();
        }
        memo.insert(key, reqs);
        Ok(reqs)
    }

    fn memo(&self) -> MutexGuard<'_, HashMap<ReqKey, Requirements>> {
        self.shared.requirements.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Occupancy and counters.
    pub fn stats(&self) -> PoolStats {
        let classes: Vec<Arc<Class>> =
            self.shared.classes.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut s = PoolStats {
            blocks_created: self.shared.blocks_created.load(Ordering::Relaxed),
            blocks_released: self.shared.blocks_released.load(Ordering::Relaxed),
            pooled_allocations: self.shared.pooled_allocations.load(Ordering::Relaxed),
            dedicated_allocations: self.shared.dedicated_allocations.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        for class in classes {
            for block in class.lock().iter() {
                let b = block.sub.stats();
                let retired = block.retired.load(Ordering::Relaxed);
                s.blocks += 1;
                s.empty_blocks += usize::from(block.unused());
                s.block_bytes += b.capacity;
                s.used_bytes += b.used.saturating_sub(retired);
                s.retired_bytes += retired;
                s.live_buffers += block.live.load(Ordering::Relaxed);
            }
        }
        s
    }

    /// Releases every empty block now (their memory is freed once no buffer or mapping uses it).
    /// Returns how many were released.
    pub fn trim(&self) -> usize {
        let classes: Vec<Arc<Class>> =
            self.shared.classes.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut released = 0;
        for class in classes {
            let mut blocks = class.lock();
            let before = blocks.len();
            blocks.retain(|b| !b.unused());
            released += before - blocks.len();
        }
        self.shared.blocks_released.fetch_add(released as u64, Ordering::Relaxed);
        released
    }
}

/// The first block (oldest first, so older blocks fill up and newer ones can empty) that fits.
fn place(blocks: &[Arc<Block>], size: u64, align: u64) -> Option<(Arc<Block>, Allocation)> {
    blocks.iter().find_map(|b| b.sub.allocate(size, align).ok().map(|a| (b.clone(), a)))
}

/// Options that rule pooling out whatever the driver says.
fn refusal(options: &BufferOptions) -> Option<Error> {
    let what = || format!("a pooled {}-byte buffer", options.size);
    if options.usage.is_empty() {
        return Some(Error::invalid(
            what(),
            "Vulkan requires at least one usage flag (VUID-VkBufferCreateInfo-None-09500)",
            "give it a usage, for example lava_flow::vulkan::caps::DEFAULT_BUFFER_USAGE",
        ));
    }
    if options.memory == MemoryKind::SharedHost {
        return Some(Error::invalid(
            what(),
            "shared host memory is one memfd per buffer, which pools do not carve",
            "use AllocationStrategy::Dedicated or Auto for MemoryKind::SharedHost",
        ));
    }
    if options.dedicated == DedicatedPolicy::Always {
        return Some(Error::invalid(
            what(),
            "DedicatedPolicy::Always asks for a VkMemoryDedicatedAllocateInfo allocation of its own",
            "use AllocationStrategy::Dedicated, or DedicatedPolicy::Auto to pool",
        ));
    }
    match options.export {
        None | Some(MemoryHandleKind::OpaqueFd) | Some(MemoryHandleKind::DmaBuf) => None,
        Some(kind) => Some(Error::invalid(
            what(),
            format!("{kind} exports are not pooled"),
            "export as opaque-fd or dma-buf, or use AllocationStrategy::Dedicated",
        )),
    }
}

/// What the driver says against sharing memory.
fn why_not_pooled(reqs: &Requirements, options: &BufferOptions) -> Option<Error> {
    let what = || format!("a pooled {}-byte buffer", options.size);
    let kind = options.export.map(|k| k.name()).unwrap_or("private memory");
    if reqs.requires_dedicated {
        return Some(Error::unsupported(
            what(),
            "the driver requires a dedicated allocation for it",
            "VkMemoryDedicatedRequirements::requiresDedicatedAllocation",
            "use AllocationStrategy::Auto or Dedicated",
        ));
    }
    if reqs.dedicated_only {
        return Some(Error::unsupported(
            what(),
            format!("{kind} memory for such buffers must be a dedicated allocation"),
            "VK_EXTERNAL_MEMORY_FEATURE_DEDICATED_ONLY_BIT (vkGetPhysicalDeviceExternalBufferProperties)",
            "use AllocationStrategy::Auto or Dedicated",
        ));
    }
    if !reqs.exportable {
        return Some(Error::unsupported(
            format!("exporting {} as {kind}", what()),
            "the driver does not report VK_EXTERNAL_MEMORY_FEATURE_EXPORTABLE_BIT",
            "vkGetPhysicalDeviceExternalBufferProperties",
            "choose another handle kind (`lava-flow info` lists what this device exports)",
        ));
    }
    None
}

/// Imports buffers into one Vulkan context, importing each exported block once.
///
/// The first buffer of a block imports the block's fd; later buffers of the same block (same
/// exporter identity and allocation id) find it in the cache, close their duplicate fd and cost
/// one `vkCreateBuffer` + `vkBindBufferMemory` at their offset. The import is released when the
/// last buffer made from it is dropped. Dedicated exports, and exports without an allocation id,
/// are imported one by one ([`Buffer::import_with_usage`]). `Send + Sync`.
pub struct BlockImporter {
    ctx: VulkanContext,
    cache: ImportCache<DeviceMemory>,
}

impl std::fmt::Debug for BlockImporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockImporter").field("ctx", &self.ctx).field("cache", &self.cache).finish()
    }
}

impl BlockImporter {
    /// An importer into `ctx`'s device, with an empty cache.
    pub fn new(ctx: &VulkanContext) -> BlockImporter {
        BlockImporter { ctx: ctx.clone(), cache: ImportCache::new() }
    }

    /// The context buffers are imported into.
    pub fn context(&self) -> &VulkanContext {
        &self.ctx
    }

    /// Hits, misses and live imported blocks.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The cache itself.
    pub fn cache(&self) -> &ImportCache<DeviceMemory> {
        &self.cache
    }

    /// Imports a buffer with the default usage (storage, transfer source and destination). The fd
    /// is consumed in every case, as for [`import_buffer_with_usage`](Self::import_buffer_with_usage).
    pub fn import_buffer(&self, exported: ExportedBuffer) -> Result<Buffer> {
        self.import_buffer_with_usage(exported, DEFAULT_BUFFER_USAGE).map(|(b, _)| b)
    }

    /// Imports a buffer with `usage`, saying whether its block was found in the cache. The fd
    /// is consumed in every case (docs/OWNERSHIP.md): by the import on a miss, closed as a
    /// duplicate on a hit, closed exactly once on failure.
    pub fn import_buffer_with_usage(
        &self,
        exported: ExportedBuffer,
        usage: vk::BufferUsageFlags,
    ) -> Result<(Buffer, CacheOutcome)> {
        self.ctx.check_deferred()?;
        let BufferHandle { memory, buffer: desc, .. } = exported;
        let d = memory.description;
        let key = match BlockKey::of(&d) {
            Some(key) if !d.dedicated => key,
            _ => {
                let exported = BufferHandle::new(memory, desc);
                return Buffer::import_with_usage(&self.ctx, exported, usage).map(|b| (b, CacheOutcome::Miss));
            }
        };
        self.check(&d, &desc)?;
        let (block, outcome) = self
            .cache
            .get_or_import(key, memory.handle, |fd| DeviceMemory::import(&self.ctx, MemoryHandle::new(fd, d), None))?;
        check_same_block(&block, &d)?;
        Ok((Buffer::bind_at(block, desc.offset, desc.size, usage, None)?, outcome))
    }

    /// Imports a buffer of a block this importer holds already, from its descriptions alone (no
    /// fd): a peer that sent a block's fd once sends later buffers of the block without one.
    /// `Ok(None)`: the block is not imported here (never, or released since), so its fd is needed.
    pub fn import_from_cache(
        &self,
        memory: &MemoryDescription,
        buffer: BufferDescription,
        usage: vk::BufferUsageFlags,
    ) -> Result<Option<Buffer>> {
        self.ctx.check_deferred()?;
        let Some(key) = BlockKey::of(memory).filter(|_| !memory.dedicated) else { return Ok(None) };
        self.check(memory, &buffer)?;
        let Some(block) = self.cache.lookup(&key) else { return Ok(None) };
        check_same_block(&block, memory)?;
        Buffer::bind_at(block, buffer.offset, buffer.size, usage, None).map(Some)
    }

    /// The buffer lies inside its block, and the block comes from a device this one may import from.
    fn check(&self, d: &MemoryDescription, desc: &BufferDescription) -> Result<()> {
        if desc.size == 0 || desc.offset.checked_add(desc.size).is_none_or(|end| end > d.allocation_size) {
            return Err(Error::invalid(
                format!("a buffer of {} bytes at offset {}", desc.size, desc.offset),
                format!("its block holds {} bytes", d.allocation_size),
                "pass the buffer description the exporter gave, unchanged",
            ));
        }
        raw_gpu_handle::check_compatible(d.handle_kind, &d.device, &self.ctx.identity())?;
        Ok(())
    }
}

/// A cached block must be the allocation the description names (size, and memory type for
/// opaque fds): otherwise two allocations claim one id.
fn check_same_block(block: &DeviceMemory, d: &MemoryDescription) -> Result<()> {
    let same_type = d.handle_kind != MemoryHandleKind::OpaqueFd || block.memory_type_index() == d.memory_type_index;
    if block.size() == d.allocation_size && same_type {
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
            "that block was imported as {} bytes of memory type {}: two allocations claim one id",
            block.size(),
            block.memory_type_index()
        ),
        "pass descriptions exactly as the exporter gave them",
    ))
}
