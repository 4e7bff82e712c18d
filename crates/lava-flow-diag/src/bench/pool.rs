//! What pools save, measured against the raw Vulkan calls in one run: allocate + export of a
//! 64 KiB buffer (pooled, or its own allocation) and the import of a further buffer of a block
//! (cached, or a fresh import). Used by `lava-flow bench` ([`run`]) and by the criterion bench
//! `benches/pool.rs` (the fixtures), so both measure the same work.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use ash::vk;
use raw_gpu_handle::{ExportedBuffer, MemoryHandleKind};

use lava_flow::pool::{AllocationStrategy, BlockImporter, CacheOutcome, PoolConfig};
use lava_flow::vulkan::caps::DEFAULT_BUFFER_USAGE;
use lava_flow::vulkan::{candidate_types, vk_memory_handle_type, MemoryKind};
use lava_flow::{Buffer, BufferOptions, Error, MemoryAllocator, Result, VulkanContext};

pub use super::Row;

use super::median_time;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A `VkBuffer` and `VkDeviceMemory` made by raw calls, destroyed on drop.
pub struct RawObjects<'a> {
    device: &'a ash::Device,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
}

impl Drop for RawObjects<'_> {
    fn drop(&mut self) {
        // SAFETY: both handles were created on `device` by this module (raw_buffer, raw_allocate_export,
        // raw_import) and no command ever uses them; each is destroyed once, the buffer before its memory.
        unsafe {
            self.device.destroy_buffer(self.buffer, None);
            if self.memory != vk::DeviceMemory::null() {
                self.device.free_memory(self.memory, None);
            }
        }
    }
}

fn raw_buffer(ctx: &VulkanContext, size: u64, kind: MemoryHandleKind) -> Result<RawObjects<'_>> {
    let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(vk_memory_handle_type(kind));
    let info = vk::BufferCreateInfo::default()
        .size(size)
        .usage(DEFAULT_BUFFER_USAGE)
        .sharing_mode(vk::SharingMode::EXCLUSIVE)
        .push_next(&mut external);
    // SAFETY: `info` and its chain are locals that outlive the call; crate-internal callers pass a
    // size the fixture already allocated (> 0) and a handle kind the device exports.
    let buffer = unsafe { ctx.device().create_buffer(&info, None) }
        .map_err(|r| Error::vk("vkCreateBuffer", r, "creating a benchmark buffer"))?;
    Ok(RawObjects { device: ctx.device(), buffer, memory: vk::DeviceMemory::null() })
}

/// Allocate + export by the raw calls: `vkCreateBuffer`, `vkGetBufferMemoryRequirements2`,
/// `vkAllocateMemory` (exportable; dedicated where the driver requires or prefers it, the rule
/// lava-flow follows), `vkBindBufferMemory`, `vkGetMemoryFdKHR`. Returns the objects and the fd.
/// Crate-private: it skips the checks Vulkan's valid usage needs (a size of 0, a device without
/// VK_KHR_external_memory_fd), which the fixture's callers meet.
pub(crate) fn raw_allocate_export(ctx: &VulkanContext, size: u64) -> Result<(RawObjects<'_>, OwnedFd)> {
    let kind = MemoryHandleKind::OpaqueFd;
    let mut objects = raw_buffer(ctx, size, kind)?;
    let mut dedicated_reqs = vk::MemoryDedicatedRequirements::default();
    let mut reqs2 = vk::MemoryRequirements2::default().push_next(&mut dedicated_reqs);
    let query = vk::BufferMemoryRequirementsInfo2::default().buffer(objects.buffer);
    // SAFETY: the buffer was just created on ctx's device and is alive; the requirements struct and
    // its chain are locals that outlive the call.
    unsafe { ctx.device().get_buffer_memory_requirements2(&query, &mut reqs2) };
    let reqs = reqs2.memory_requirements;
    let dedicated = dedicated_reqs.requires_dedicated_allocation == vk::TRUE
        || dedicated_reqs.prefers_dedicated_allocation == vk::TRUE;
    // The type lava-flow's own allocations and pool blocks take (device-local, not host-visible first).
    let type_index =
        *candidate_types(ctx, reqs.memory_type_bits, MemoryKind::DeviceLocal).first().ok_or_else(|| {
            Error::unsupported("a device-local buffer", "no memory type fits", "memoryTypeBits", "see `lava-flow info`")
        })?;
    let mut export = vk::ExportMemoryAllocateInfo::default().handle_types(vk_memory_handle_type(kind));
    let mut dedicated_info = vk::MemoryDedicatedAllocateInfo::default().buffer(objects.buffer);
    let mut info = vk::MemoryAllocateInfo::default()
        .allocation_size(reqs.size)
        .memory_type_index(type_index)
        .push_next(&mut export);
    if dedicated {
        info = info.push_next(&mut dedicated_info);
    }
    // SAFETY: `info` and its chain are locals that outlive the call; the size and memory type come
    // from the buffer's requirements; a dedicated allocation names this very buffer.
    objects.memory = unsafe { ctx.device().allocate_memory(&info, None) }
        .map_err(|r| Error::vk("vkAllocateMemory", r, "allocating benchmark memory"))?;
    // SAFETY: the buffer is fresh and unbound; the memory was allocated for its requirements (size,
    // a type from memory_type_bits), dedicated to it where it is; offset 0 is aligned.
    unsafe { ctx.device().bind_buffer_memory(objects.buffer, objects.memory, 0) }
        .map_err(|r| Error::vk("vkBindBufferMemory", r, "binding benchmark memory"))?;
    let get = vk::MemoryGetFdInfoKHR::default().memory(objects.memory).handle_type(vk_memory_handle_type(kind));
    // SAFETY: the memory was allocated with VkExportMemoryAllocateInfo for this handle type, and the
    // loader (external_memory_fd()?) exists only where the extension is enabled.
    let raw = unsafe { ctx.external_memory_fd()?.get_memory_fd(&get) }
        .map_err(|r| Error::vk("vkGetMemoryFdKHR", r, "exporting benchmark memory"))?;
    // SAFETY: on success vkGetMemoryFdKHR returns a new open fd whose ownership passes to us.
    Ok((objects, unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// A fresh import by the raw calls: `vkCreateBuffer`, `vkAllocateMemory` with
/// `VkImportMemoryFdInfoKHR` (the whole block), `vkBindBufferMemory` at the buffer's offset.
/// Crate-private: it trusts the description (memory type, size, offset, not dedicated) as Vulkan's
/// valid usage requires, which holds for the fixture's own pooled exports only.
pub(crate) fn raw_import(ctx: &VulkanContext, exported: ExportedBuffer) -> Result<RawObjects<'_>> {
    let d = exported.memory.description;
    let mut objects = raw_buffer(ctx, exported.buffer.size, d.handle_kind)?;
    let fd = exported.memory.handle;
    let mut import = vk::ImportMemoryFdInfoKHR::default()
        .handle_type(vk_memory_handle_type(d.handle_kind))
        .fd(std::os::fd::AsRawFd::as_raw_fd(&fd));
    let info = vk::MemoryAllocateInfo::default()
        .allocation_size(d.allocation_size)
        .memory_type_index(d.memory_type_index)
        .push_next(&mut import);
    // SAFETY: `info` and its chain are locals that outlive the call; `fd` is open and ours until the
    // driver takes it; raw_import's callers (ImportFixture::raw's contract) pass the fixture's own
    // non-dedicated block export, so its size and memory type match the exporter's.
    let imported = unsafe { ctx.device().allocate_memory(&info, None) };
    // On success the import took the fd (VK_KHR_external_memory_fd). On failure it is left to the
    // driver too: some close it even then (NVIDIA, wrong size), so closing it here could close an
    // unrelated fd that reused the number. lava-flow's imports avoid this with a duplicate
    // (`fd::import_consuming`); the raw route does not pay for one, and the benchmark stops.
    let _ = fd.into_raw_fd();
    objects.memory = imported.map_err(|r| Error::vk("vkAllocateMemory", r, "importing benchmark memory"))?;
    // SAFETY: the buffer is fresh and unbound; the memory is the exporter's block and the offset the
    // exporter bound the same buffer at, on the same driver, so alignment, size and type fit (the
    // export comes from the fixture, by raw's contract).
    unsafe { ctx.device().bind_buffer_memory(objects.buffer, objects.memory, exported.buffer.offset) }
        .map_err(|r| Error::vk("vkBindBufferMemory", r, "binding imported benchmark memory"))?;
    Ok(objects)
}

/// Allocate + export of one buffer size, three ways.
pub struct AllocExportFixture {
    ctx: VulkanContext,
    allocator: MemoryAllocator,
    size: u64,
    /// Keeps the pool's block alive, as in a program that has other buffers in flight.
    _anchor: Buffer,
}

impl AllocExportFixture {
    /// Buffers of `size` bytes on `ctx`'s device.
    pub fn new(ctx: &VulkanContext, size: u64) -> Result<Self> {
        let allocator = MemoryAllocator::with_context(ctx.clone()).with_pool_config(PoolConfig::default());
        let options = BufferOptions::new(size).strategy(AllocationStrategy::Pooled);
        let anchor = allocator.allocate_buffer(ctx.info().index, &options)?;
        Ok(AllocExportFixture { ctx: ctx.clone(), allocator, size, _anchor: anchor })
    }

    fn allocate_export(&self, strategy: AllocationStrategy) -> Result<(Buffer, ExportedBuffer)> {
        let options = BufferOptions::new(self.size).strategy(strategy);
        let buffer = self.allocator.allocate_buffer(self.ctx.info().index, &options)?;
        let exported = buffer.export_fd()?;
        Ok((buffer, exported))
    }

    /// A pooled buffer allocated and exported.
    pub fn pooled(&self) -> Result<(Buffer, ExportedBuffer)> {
        self.allocate_export(AllocationStrategy::Pooled)
    }

    /// A buffer with its own allocation, allocated and exported by lava-flow.
    pub fn own_allocation(&self) -> Result<(Buffer, ExportedBuffer)> {
        self.allocate_export(AllocationStrategy::Dedicated)
    }

    /// The same by the raw calls.
    pub fn raw(&self) -> Result<(RawObjects<'_>, OwnedFd)> {
        raw_allocate_export(&self.ctx, self.size)
    }
}

/// Imports of further buffers of one block into a second device.
pub struct ImportFixture {
    importer_ctx: VulkanContext,
    _allocator: MemoryAllocator,
    buffers: Vec<Buffer>,
    importer: BlockImporter,
    /// Keeps the block imported, so `cached` measures a hit.
    _anchor: Buffer,
    next: std::cell::Cell<usize>,
}

impl ImportFixture {
    /// Pooled buffers of `size` bytes exported from `exporter` and imported into `importer`.
    pub fn new(exporter: &VulkanContext, importer: &VulkanContext, size: u64) -> Result<Self> {
        let allocator = MemoryAllocator::with_context(exporter.clone());
        let options = BufferOptions::new(size).strategy(AllocationStrategy::Pooled);
        let buffers: Vec<Buffer> =
            (0..8).map(|_| allocator.allocate_buffer(exporter.info().index, &options)).collect::<Result<_>>()?;
        let block_importer = BlockImporter::new(importer);
        let anchor = block_importer.import_buffer(buffers[0].export_fd()?)?;
        Ok(ImportFixture {
            importer_ctx: importer.clone(),
            _allocator: allocator,
            buffers,
            importer: block_importer,
            _anchor: anchor,
            next: std::cell::Cell::new(1),
        })
    }

    /// The export of a further buffer of the block (untimed setup).
    pub fn export(&self) -> Result<ExportedBuffer> {
        let i = self.next.get();
        self.next.set(if i + 1 < self.buffers.len() { i + 1 } else { 1 });
        self.buffers[i].export_fd()
    }

    /// Import through the block cache (a hit: the block is imported already).
    pub fn cached(&self, exported: ExportedBuffer) -> Result<Buffer> {
        let (buffer, outcome) = self.importer.import_buffer_with_usage(exported, DEFAULT_BUFFER_USAGE)?;
        debug_assert_eq!(outcome, CacheOutcome::Hit);
        Ok(buffer)
    }

    /// lava-flow's import without the cache (`Buffer::import`: the block is imported again).
    pub fn uncached(&self, exported: ExportedBuffer) -> Result<Buffer> {
        Buffer::import(&self.importer_ctx, exported)
    }

    /// A fresh import by the raw calls, which check nothing.
    ///
    /// # Safety
    /// `exported` must come from this fixture's [`export`](Self::export), unchanged: the bare
    /// `vkAllocateMemory` import and bind trust its fd, memory type, sizes and offset, as Vulkan's
    /// valid usage requires them to match the exporter's.
    pub unsafe fn raw(&self, exported: ExportedBuffer) -> Result<RawObjects<'_>> {
        raw_import(&self.importer_ctx, exported)
    }
}

/// Runs the pool cases on `exporter` (allocations) and `importer` (a second device on the same
/// GPU, for imports). `quick`: fewer iterations, a smoke run.
pub fn run(exporter: &VulkanContext, importer: &VulkanContext, quick: bool) -> Result<Vec<Row>> {
    const SIZE: u64 = 64 << 10;
    let (warmup, iterations) = if quick { (5, 30) } else { (20, 300) };
    let row = |case: &str, lava_flow: Duration, raw: Duration| {
        Row::new("pool", case, us(lava_flow), Some(us(raw)), "us").iterations(iterations)
    };
    let none = || Ok(());
    let alloc = AllocExportFixture::new(exporter, SIZE)?;
    let pooled = median_time(warmup, iterations, none, |_| alloc.pooled())?;
    let own = median_time(warmup, iterations, none, |_| alloc.own_allocation())?;
    let raw_alloc = median_time(warmup, iterations, none, |_| alloc.raw())?;
    let imports = ImportFixture::new(exporter, importer, SIZE)?;
    let cached = median_time(warmup, iterations, || imports.export(), |e| imports.cached(e))?;
    let uncached = median_time(warmup, iterations, || imports.export(), |e| imports.uncached(e))?;
    // SAFETY: every export handed to `raw` comes from the fixture's own `export`, unchanged.
    let raw_import = median_time(warmup, iterations, || imports.export(), |e| unsafe { imports.raw(e) })?;
    Ok(vec![
        row("allocate+export 64 KiB: pooled vs raw own exportable allocation", pooled, raw_alloc),
        row("allocate+export 64 KiB: lava-flow own allocation vs raw", own, raw_alloc),
        row("import a further 64 KiB buffer of a block: cached vs raw fresh import", cached, raw_import),
        row("import a further 64 KiB buffer of a block: uncached vs raw fresh import", uncached, raw_import),
    ])
}
