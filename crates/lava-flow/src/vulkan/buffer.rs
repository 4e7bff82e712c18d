//! Exportable buffers, their import into another device or process, and host access.

use std::ptr::NonNull;
use std::sync::Arc;

use ash::vk;
use raw_gpu_handle::{BufferDescription, BufferHandle, ExportedBuffer, MemoryHandleKind};

use super::caps::{buffer_capabilities, DEFAULT_BUFFER_USAGE};
use super::format::vk_memory_handle_type;
use super::host::{copy_from_shared, copy_to_shared, SharedHostMemory};
use super::memory::{AllocateParams, DedicatedTo, DeviceMemory, MemoryOrigin};
use crate::{Error, Result, VulkanContext};

/// Whether a buffer comes from a pool block or gets its own `VkDeviceMemory`. The pool
/// ([`BufferPool`](crate::pool::BufferPool), behind [`MemoryAllocator`](crate::MemoryAllocator))
/// reads it; `Buffer::new` always makes its own allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AllocationStrategy {
    /// Pooled when the buffer is at most [`PoolConfig::dedicated_threshold`](crate::pool::PoolConfig::dedicated_threshold) bytes and the driver
    /// lets it share memory (no `requiresDedicatedAllocation`, not dedicated-only for its handle
    /// kind, `DedicatedPolicy` not `Always`, not shared host memory); its own allocation otherwise.
    #[default]
    Auto,
    /// Always from a pool block, whatever the size; an error where the driver or the options
    /// forbid sharing memory.
    Pooled,
    /// Always its own allocation (which `DedicatedPolicy` may make a Vulkan dedicated allocation).
    Dedicated,
}

/// Which kind of memory a resource lives in, on a device already chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MemoryKind {
    /// Device-local memory (fastest for the GPU; not mappable on discrete GPUs).
    #[default]
    DeviceLocal,
    /// Host-visible, host-coherent Vulkan memory.
    HostVisible,
    /// A memfd any process can mmap, imported with VK_EXT_external_memory_host.
    SharedHost,
}

/// Whether a resource gets its own allocation (`VkMemoryDedicatedAllocateInfo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DedicatedPolicy {
    /// Dedicated where the driver requires or prefers it (`VkMemoryDedicatedRequirements`) or
    /// where the handle kind is dedicated-only.
    #[default]
    Auto,
    /// Always dedicated.
    Always,
    /// Never, unless the driver requires it (then creation fails with a clear error).
    Never,
}

/// Bytes by which llvmpipe needs a memory object to be larger than any GL buffer placed in it.
///
/// llvmpipe (Mesa's software GL) refuses `glBufferStorageMemEXT` with `GL_OUT_OF_MEMORY` when the
/// buffer's size is within this many bytes of the whole allocation's size (Mesa 22.3 compares the
/// size alone, whatever the offset). [`BufferOptions::for_gl`] leaves this slack and the GL
/// importer names it when a buffer lacks it (docs/GL.md). NVIDIA has no such rule.
#[doc(hidden)]
pub const GL_BUFFER_SLACK: u64 = 8;

/// How to create a buffer.
#[derive(Clone, Debug)]
pub struct BufferOptions {
    /// Size in bytes (non-zero).
    pub size: u64,
    /// Kind of memory.
    pub memory: MemoryKind,
    /// Vulkan usage; defaults to storage + transfer source and destination.
    pub usage: vk::BufferUsageFlags,
    /// Handle kind it is exportable as: `Some(OpaqueFd)` by default (`HostMemfd` for
    /// `MemoryKind::SharedHost`), `None` for a private buffer.
    pub export: Option<MemoryHandleKind>,
    /// Dedicated allocation policy.
    pub dedicated: DedicatedPolicy,
    /// Extra bytes allocated after the buffer. Some importers cannot map a buffer that spans the
    /// whole allocation (llvmpipe's GL refuses one, see docs/GL.md): [`BufferOptions::for_gl`]
    /// sets what GL needs.
    pub allocation_padding: u64,
    /// Pooled (a range of a shared exportable block) or its own allocation; used by
    /// [`MemoryAllocator`](crate::MemoryAllocator) (`Buffer::new` always makes its own).
    pub strategy: AllocationStrategy,
}

impl BufferOptions {
    /// Exportable device-local buffer of `size` bytes, default usage.
    pub fn new(size: u64) -> Self {
        BufferOptions {
            size,
            memory: MemoryKind::DeviceLocal,
            usage: DEFAULT_BUFFER_USAGE,
            export: Some(MemoryHandleKind::OpaqueFd),
            dedicated: DedicatedPolicy::Auto,
            allocation_padding: 0,
            strategy: AllocationStrategy::Auto,
        }
    }

    /// Sets the allocation strategy (pooled or its own allocation).
    pub fn strategy(mut self, strategy: AllocationStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the memory kind (and the matching default export kind).
    pub fn memory(mut self, memory: MemoryKind) -> Self {
        self.memory = memory;
        if memory == MemoryKind::SharedHost && self.export.is_some() {
            self.export = Some(MemoryHandleKind::HostMemfd);
        }
        self
    }

    /// Sets the usage.
    pub fn usage(mut self, usage: vk::BufferUsageFlags) -> Self {
        self.usage = usage;
        self
    }

    /// Sets the export handle kind (`None`: not exportable).
    pub fn export(mut self, kind: Option<MemoryHandleKind>) -> Self {
        self.export = kind;
        self
    }

    /// Sets the dedicated-allocation policy.
    pub fn dedicated(mut self, policy: DedicatedPolicy) -> Self {
        self.dedicated = policy;
        self
    }

    /// Sets the padding after the buffer.
    pub fn allocation_padding(mut self, bytes: u64) -> Self {
        self.allocation_padding = bytes;
        self
    }

    /// Makes the buffer importable into OpenGL on every driver lava-flow knows: the allocation gets
    /// the slack some GL drivers need after a buffer (llvmpipe places a GL buffer in a memory object
    /// only if the object is at least 8 bytes larger, docs/GL.md "Buffer slack"). Other importers
    /// are unaffected: the export describes the whole allocation as always.
    pub fn for_gl(mut self) -> Self {
        self.allocation_padding = self.allocation_padding.max(GL_BUFFER_SLACK);
        self
    }
}

/// A `VkBuffer` bound to (part of) a [`DeviceMemory`], which it keeps alive.
///
/// # Host access
///
/// A buffer's bytes may be shared: memory that is exportable (it may have been exported to
/// another device or process), imported (its exporter, or another importer, may write it), or
/// shared host memory (any process may map the memfd). Another device or process can write such
/// bytes at any moment, so a `&[u8]` over them (which promises that they do not change) or a
/// `&mut [u8]` (which promises that nobody else reads them) would be a lie. lava-flow therefore:
///
/// - copies: [`Buffer::read`] and [`Buffer::read_into`] copy out (`&self`), [`Buffer::write`]
///   copies in and takes `&mut self`, so within this process one thread at a time writes a
///   buffer and no view of it is alive meanwhile. Copies from host-visible memory are volatile:
///   each byte is touched once, where the copy says, through raw pointers (no reference to the
///   shared bytes exists), so bytes another device or process writes during a copy may come out
///   torn, never undefined behaviour. Order the copy after the other side's work (semaphores,
///   fences, docs/SYNC.md) to read a consistent state. Other `Buffer` objects over the same
///   bytes (an import of this buffer in this process, [`Buffer::bind_at`] over an overlapping
///   range) count as another device here.
/// - maps with a guard that borrows the buffer exclusively: [`Buffer::map`] returns a
///   [`MappedBuffer`] with `&[u8]`/`&mut [u8]` views, only for a buffer whose memory nobody else
///   can reach (not exportable, not imported, not shared host memory, and no other `Buffer` or
///   clone of its `Arc<DeviceMemory>`). For shared memory it refuses, and
///   [`Buffer::map_unchecked`] is the `unsafe` way in, under a `# Safety` contract that no other
///   device or process writes the bytes while the guard lives.
///
/// lava-flow's own GPU work on a buffer (`fill`, `copy_to`, staging for `read`/`write`) has
/// finished when the call returns. Work you submit yourself through [`Buffer::handle`] is yours
/// to wait for before mapping, as with any Vulkan buffer.
///
/// Writing through a shared borrow does not compile (two threads could write at once):
///
/// ```compile_fail,E0596
/// fn stamp(buffer: &lava_flow::Buffer) -> lava_flow::Result<()> {
///     buffer.write(0, b"lava")
/// }
/// ```
///
/// Nor does writing while a mapped view is alive:
///
/// ```compile_fail,E0499
/// fn stale(buffer: &mut lava_flow::Buffer) -> lava_flow::Result<u8> {
///     let view = buffer.map()?;
///     buffer.write(0, &[1])?;
///     Ok(view.as_slice()[0])
/// }
/// ```
///
/// Nor does keeping a view past the guard, or reading a buffer while it is mapped for writing:
///
/// ```compile_fail,E0502
/// fn peek(buffer: &mut lava_flow::Buffer) -> lava_flow::Result<()> {
///     let mut view = buffer.map()?;
///     let first = buffer.read(0, 1)?;
///     view.as_mut_slice()[0] = first[0];
///     Ok(())
/// }
/// ```
///
/// What does compile: copies, and a guarded map of a private buffer.
///
/// ```no_run
/// use lava_flow::vulkan::MemoryKind;
/// use lava_flow::{Buffer, BufferOptions, VulkanContext};
///
/// let ctx = VulkanContext::new()?;
/// let mut shared = Buffer::new(&ctx, &BufferOptions::new(4096))?; // exportable
/// shared.write(0, b"lava")?;
/// assert_eq!(shared.read(0, 4)?, b"lava");
/// assert!(shared.map().is_err(), "exportable memory is not mapped as a safe slice");
///
/// let options = BufferOptions::new(4096).memory(MemoryKind::HostVisible).export(None);
/// let mut private = Buffer::new(&ctx, &options)?;
/// private.map()?.as_mut_slice()[..4].copy_from_slice(b"flow");
/// assert_eq!(&private.map()?.as_slice()[..4], b"flow");
/// # Ok::<(), lava_flow::Error>(())
/// ```
pub struct Buffer {
    ctx: VulkanContext,
    buffer: vk::Buffer,
    memory: Arc<DeviceMemory>,
    offset: u64,
    size: u64,
    alignment: u64,
    usage: vk::BufferUsageFlags,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// Whether dropping this destroys the `VkBuffer` (false for a buffer adopted unowned).
    owned: bool,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("size", &self.size)
            .field("offset", &self.offset)
            .field("memory", &self.memory)
            .finish()
    }
}

/// Refuses a zero size, and one that the device cannot hold ([`super::limits::check_allocation`]:
/// heap sizes, allocation and buffer size limits, memory budget, host memory where the device's
/// memory is the machine's RAM), before anything is created.
pub(crate) fn check_size(
    ctx: &VulkanContext,
    size: u64,
    required: vk::MemoryPropertyFlags,
    what: &str,
    is_buffer: bool,
) -> Result<()> {
    if size == 0 {
        return Err(Error::invalid(
            format!("{what} of 0 bytes"),
            "Vulkan forbids zero-sized resources (VUID-VkBufferCreateInfo-size-00912)",
            "ask for at least one byte",
        ));
    }
    super::limits::check_allocation(ctx, size, required, what, is_buffer)
}

/// Memory types that fit `type_bits` and `kind`, best first. Exportable device memory on some
/// drivers exists only in some types (NVIDIA exports DEVICE_LOCAL but not DEVICE_LOCAL|HOST_VISIBLE),
/// so callers try them in order. The choice lava-flow's own allocations make, for code that
/// allocates with raw Vulkan calls on a [`VulkanContext`]'s device.
pub fn candidate_types(ctx: &VulkanContext, type_bits: u32, kind: MemoryKind) -> Vec<u32> {
    let props = ctx.memory_properties();
    let (required, rank): (vk::MemoryPropertyFlags, fn(vk::MemoryPropertyFlags) -> u32) = match kind {
        MemoryKind::DeviceLocal => {
            (vk::MemoryPropertyFlags::DEVICE_LOCAL, |f| u32::from(f.contains(vk::MemoryPropertyFlags::HOST_VISIBLE)))
        }
        MemoryKind::HostVisible | MemoryKind::SharedHost => {
            (vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT, |f| {
                u32::from(f.contains(vk::MemoryPropertyFlags::DEVICE_LOCAL))
                    + u32::from(!f.contains(vk::MemoryPropertyFlags::HOST_CACHED))
            })
        }
    };
    let mut types: Vec<u32> = (0..props.memory_type_count)
        .filter(|i| type_bits & (1 << i) != 0)
        .filter(|i| props.memory_types[*i as usize].property_flags.contains(required))
        .collect();
    types.sort_by_key(|i| rank(props.memory_types[*i as usize].property_flags));
    types
}

fn required_flags(kind: MemoryKind) -> vk::MemoryPropertyFlags {
    match kind {
        MemoryKind::DeviceLocal => vk::MemoryPropertyFlags::DEVICE_LOCAL,
        _ => vk::MemoryPropertyFlags::HOST_VISIBLE,
    }
}

/// What [`allocate_for`] needs to know besides the requirements.
pub(crate) struct MemoryChoice {
    pub policy: DedicatedPolicy,
    /// The capability query said the handle kind is dedicated-only.
    pub dedicated_only: bool,
    pub kind: MemoryKind,
    pub export: Option<MemoryHandleKind>,
    /// The resource a dedicated allocation is for.
    pub target: DedicatedTo,
    /// "buffer" or "image", for messages.
    pub what: &'static str,
}

/// Allocates `size` bytes for a new buffer or image: dedicated where the policy, the driver
/// (`VkMemoryDedicatedRequirements`) or the handle kind asks for it, from the best memory type
/// that works. Types are tried in order because some drivers export only some of them (NVIDIA
/// exports DEVICE_LOCAL but not DEVICE_LOCAL|HOST_VISIBLE); running out of memory stops at once.
pub(crate) fn allocate_for(
    ctx: &VulkanContext,
    r: &Requirements,
    size: u64,
    choice: &MemoryChoice,
) -> Result<DeviceMemory> {
    let dedicated = match choice.policy {
        DedicatedPolicy::Always => true,
        DedicatedPolicy::Never if r.requires_dedicated || choice.dedicated_only => {
            return Err(Error::unsupported(
                format!("a non-dedicated exportable {}", choice.what),
                "the driver requires a dedicated allocation for it",
                "VkMemoryDedicatedRequirements / VK_EXTERNAL_MEMORY_FEATURE_DEDICATED_ONLY_BIT",
                "use DedicatedPolicy::Auto",
            ))
        }
        DedicatedPolicy::Never => false,
        DedicatedPolicy::Auto => r.requires_dedicated || r.prefers_dedicated || choice.dedicated_only,
    };
    let mut last = None;
    for type_index in candidate_types(ctx, r.reqs.memory_type_bits, choice.kind) {
        let params = AllocateParams {
            size,
            type_index,
            export_kind: choice.export,
            dedicated: dedicated.then_some(choice.target),
        };
        match DeviceMemory::allocate(ctx, params) {
            Ok(m) => return Ok(m),
            Err(e @ Error::OutOfMemory { .. }) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::unsupported(
            format!("a {:?} {}", choice.kind, choice.what),
            "no memory type allowed for it has the needed properties",
            "VkMemoryRequirements::memoryTypeBits",
            "choose another memory location (or tiling, for an image)",
        )
    }))
}

/// Memory requirements of a resource, with the driver's dedicated-allocation wishes.
pub(crate) struct Requirements {
    pub reqs: vk::MemoryRequirements,
    pub prefers_dedicated: bool,
    pub requires_dedicated: bool,
}

fn buffer_requirements(ctx: &VulkanContext, buffer: vk::Buffer) -> Requirements {
    let mut dedicated = vk::MemoryDedicatedRequirements::default();
    let mut reqs2 = vk::MemoryRequirements2::default().push_next(&mut dedicated);
    let info = vk::BufferMemoryRequirementsInfo2::default().buffer(buffer);
    // SAFETY: `buffer` was created on ctx's device and is alive (callers destroy it only after); the
    // requirements struct and its dedicated-requirements chain are locals that outlive the call.
    unsafe { ctx.device().get_buffer_memory_requirements2(&info, &mut reqs2) };
    Requirements {
        reqs: reqs2.memory_requirements,
        prefers_dedicated: dedicated.prefers_dedicated_allocation == vk::TRUE,
        requires_dedicated: dedicated.requires_dedicated_allocation == vk::TRUE,
    }
}

fn create_vk_buffer(
    ctx: &VulkanContext,
    size: u64,
    usage: vk::BufferUsageFlags,
    kind: Option<MemoryHandleKind>,
) -> Result<vk::Buffer> {
    if usage.is_empty() {
        return Err(Error::invalid(
            format!("a buffer of {size} bytes with no usage"),
            "Vulkan requires at least one usage flag (VUID-VkBufferCreateInfo-None-09500)",
            "give it a usage, for example lava_flow::vulkan::caps::DEFAULT_BUFFER_USAGE",
        ));
    }
    let mut external = vk::ExternalMemoryBufferCreateInfo::default();
    let mut info = vk::BufferCreateInfo::default().size(size).usage(usage).sharing_mode(vk::SharingMode::EXCLUSIVE);
    if let Some(kind) = kind {
        external = external.handle_types(vk_memory_handle_type(kind));
        info = info.push_next(&mut external);
    }
    // SAFETY: `info` and its ExternalMemoryBufferCreateInfo chain are locals that outlive the call;
    // size > 0 (check_size or bind_at) and usage is non-empty (checked above).
    unsafe { ctx.device().create_buffer(&info, None) }
        .map_err(|r| Error::vk("vkCreateBuffer", r, format!("creating a buffer of {size} bytes")))
}

impl Buffer {
    /// Creates a buffer and its memory on `ctx`'s device, checking up front (capability query,
    /// heap size) that the request can be met.
    pub fn new(ctx: &VulkanContext, options: &BufferOptions) -> Result<Buffer> {
        ctx.check_deferred()?;
        check_size(ctx, options.size, required_flags(options.memory), "a buffer", true)?;
        let export = options.export;
        if options.memory == MemoryKind::SharedHost && export.is_some_and(|k| k != MemoryHandleKind::HostMemfd) {
            return Err(Error::invalid(
                format!("shared host memory exported as {}", export.map(|k| k.name()).unwrap_or("")),
                "shared host memory is shared as its memfd",
                "use MemoryHandleKind::HostMemfd (the default for MemoryKind::SharedHost)",
            ));
        }
        let vk_kind = if options.memory == MemoryKind::SharedHost { Some(MemoryHandleKind::HostMemfd) } else { export };
        let mut dedicated_only = false;
        if let Some(kind) = vk_kind {
            let caps = buffer_capabilities(ctx, options.usage, kind);
            caps.require_exportable(
                &format!("a {}-byte buffer", options.size),
                "vkGetPhysicalDeviceExternalBufferProperties",
            )
            .or_else(|e| {
                if kind == MemoryHandleKind::HostMemfd && caps.importable {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            dedicated_only = caps.dedicated_only;
        }
        let buffer = create_vk_buffer(ctx, options.size, options.usage, vk_kind)?;
        match Self::bind_new_memory(ctx, buffer, options, vk_kind, dedicated_only) {
            Ok((memory, alignment)) => Ok(Buffer {
                ctx: ctx.clone(),
                buffer,
                memory: Arc::new(memory),
                offset: 0,
                size: options.size,
                alignment,
                usage: options.usage,
                on_drop: None,
                owned: true,
            }),
            Err(e) => {
                // SAFETY: bind_new_memory failed, so the buffer was never bound or used by a command; nothing
                // else holds its handle.
                unsafe { ctx.device().destroy_buffer(buffer, None) };
                Err(e)
            }
        }
    }

    fn bind_new_memory(
        ctx: &VulkanContext,
        buffer: vk::Buffer,
        options: &BufferOptions,
        vk_kind: Option<MemoryHandleKind>,
        dedicated_only: bool,
    ) -> Result<(DeviceMemory, u64)> {
        let r = buffer_requirements(ctx, buffer);
        let total = r.reqs.size.checked_add(options.allocation_padding).ok_or_else(|| {
            Error::invalid(
                format!("a buffer of {} bytes with {} bytes of padding", options.size, options.allocation_padding),
                "the total overflows a 64-bit size",
                "ask for less padding",
            )
        })?;
        let memory = if options.memory == MemoryKind::SharedHost {
            let align = ctx.host_import_alignment().unwrap_or(4096).max(r.reqs.alignment);
            let host = SharedHostMemory::create(total, align)?;
            DeviceMemory::import_host(ctx, host, None)?
        } else {
            let choice = MemoryChoice {
                policy: options.dedicated,
                dedicated_only,
                kind: options.memory,
                export: vk_kind,
                target: DedicatedTo::Buffer(buffer),
                what: "buffer",
            };
            allocate_for(ctx, &r, total, &choice)?
        };
        if r.reqs.memory_type_bits & (1 << memory.memory_type_index()) == 0 {
            // Host memory's type comes from vkGetMemoryHostPointerPropertiesEXT, not from the
            // buffer's requirements: check the buffer accepts it.
            return Err(Error::unsupported(
                format!("a buffer in memory type {}", memory.memory_type_index()),
                format!("the buffer allows only memory types {:#b}", r.reqs.memory_type_bits),
                "VUID-vkBindBufferMemory-memory-01035",
                "use another memory kind for this buffer",
            ));
        }
        // SAFETY: the buffer was just created and is unbound; the memory holds at least
        // r.reqs.size bytes (total >= r.reqs.size), is of a type the buffer accepts (allocate_for
        // picks from memory_type_bits; host memory checked above), and offset 0 is aligned. A
        // dedicated allocation was made for this very buffer.
        unsafe { ctx.device().bind_buffer_memory(buffer, memory.handle(), 0) }
            .map_err(|r| Error::vk("vkBindBufferMemory", r, "binding a new buffer"))?;
        Ok((memory, r.reqs.alignment))
    }

    /// Binds a new buffer to `memory` at `offset` (the pooled path: many buffers in one block).
    /// `on_drop` runs after the buffer is destroyed (to return the range to its pool).
    pub fn bind_at(
        memory: Arc<DeviceMemory>,
        offset: u64,
        size: u64,
        usage: vk::BufferUsageFlags,
        on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
    ) -> Result<Buffer> {
        let ctx = memory.context().clone();
        if size == 0 {
            return Err(Error::invalid(
                "a buffer of 0 bytes",
                "Vulkan forbids zero-sized resources (VUID-VkBufferCreateInfo-size-00912)",
                "ask for at least one byte",
            ));
        }
        if memory.dedicated() {
            return Err(Error::invalid(
                format!("a buffer bound at offset {offset} of a dedicated allocation"),
                "a dedicated allocation may be bound only to the resource it was made for \
                 (VUID-vkBindBufferMemory-memory-01508)",
                "bind buffers into memory allocated without a dedicated resource (a pool block)",
            ));
        }
        let kind = memory.external_handle_kind();
        let buffer = create_vk_buffer(&ctx, size, usage, kind)?;
        let r = buffer_requirements(&ctx, buffer);
        let fail = |e: Error| {
            // SAFETY: the buffer was created just above and never bound or used by a command.
            unsafe { ctx.device().destroy_buffer(buffer, None) };
            Err(e)
        };
        if offset % r.reqs.alignment.max(1) != 0
            || offset.checked_add(r.reqs.size).is_none_or(|end| end > memory.size())
        {
            return fail(Error::invalid(
                format!("a {size}-byte buffer at offset {offset} of a {}-byte allocation", memory.size()),
                format!(
                    "it needs {} bytes aligned to {} (VUID-vkBindBufferMemory-memoryOffset-01036, -size-01037)",
                    r.reqs.size, r.reqs.alignment
                ),
                "check the offset and size against the allocation",
            ));
        }
        if r.reqs.memory_type_bits & (1 << memory.memory_type_index()) == 0 {
            return fail(Error::invalid(
                format!("a buffer in memory type {}", memory.memory_type_index()),
                format!(
                    "the buffer allows only memory types {:#b} (VUID-vkBindBufferMemory-memory-01035)",
                    r.reqs.memory_type_bits
                ),
                "allocate the block from a memory type buffers accept",
            ));
        }
        // SAFETY: the buffer is fresh and unbound; offset is aligned, offset + requirements fit the
        // allocation and the memory type is allowed (all checked above); the memory is not dedicated.
        if let Err(r) = unsafe { ctx.device().bind_buffer_memory(buffer, memory.handle(), offset) } {
            return fail(Error::vk("vkBindBufferMemory", r, format!("binding a buffer at offset {offset}")));
        }
        Ok(Buffer { ctx, buffer, memory, offset, size, alignment: r.reqs.alignment, usage, on_drop, owned: true })
    }

    /// Describes a buffer the caller created and bound to `memory` (memory it allocated itself,
    /// described with [`DeviceMemory::from_raw`]), so that lava-flow exports, reads and writes it.
    ///
    /// Checks against the buffer's memory requirements: a non-zero size within the allocation, an
    /// offset aligned as the buffer needs and 0 for a dedicated allocation, a memory type the
    /// buffer accepts. With `owned`, dropping it destroys the `VkBuffer`; without, lava-flow never
    /// does.
    ///
    /// # Safety
    ///
    /// The caller promises that:
    /// - `buffer` is a live `VkBuffer` of `memory`'s device, created with `size` bytes, `usage`, and
    ///   `VkExternalMemoryBufferCreateInfo::handleTypes` including the memory's export kind, and bound
    ///   (`vkBindBufferMemory`) to `memory` at `offset`; for a dedicated allocation, it is the buffer
    ///   the allocation is dedicated to;
    /// - with `owned`, nothing else destroys it; without, it stays alive until the returned buffer drops;
    /// - the caller's own accesses to it are synchronized with lava-flow's (lava-flow's calls wait
    ///   for their own work before returning).
    pub unsafe fn from_raw(
        memory: Arc<DeviceMemory>,
        buffer: vk::Buffer,
        offset: u64,
        size: u64,
        usage: vk::BufferUsageFlags,
        owned: bool,
    ) -> Result<Buffer> {
        let ctx = memory.context().clone();
        let what = format!(
            "describing a caller's {size}-byte buffer at offset {offset} of a {}-byte allocation",
            memory.size()
        );
        if buffer == vk::Buffer::null() || size == 0 {
            return Err(Error::invalid(
                what,
                "the handle is VK_NULL_HANDLE or the size is zero (VUID-VkBufferCreateInfo-size-00912)",
                "pass the buffer and the size it was created with",
            ));
        }
        let r = buffer_requirements(&ctx, buffer);
        if offset % r.reqs.alignment.max(1) != 0
            || offset.checked_add(r.reqs.size).is_none_or(|end| end > memory.size())
            || size > r.reqs.size
        {
            return Err(Error::invalid(
                what,
                format!(
                    "the buffer needs {} bytes aligned to {} (VUID-vkBindBufferMemory-memoryOffset-01036, -size-01037)",
                    r.reqs.size, r.reqs.alignment
                ),
                "pass the offset it was bound at and the size it was created with",
            ));
        }
        if memory.dedicated() && offset != 0 {
            return Err(Error::invalid(
                what,
                "a dedicated allocation is bound to its buffer at offset 0 (VUID-vkBindBufferMemory-memory-01508)",
                "pass offset 0",
            ));
        }
        if r.reqs.memory_type_bits & (1 << memory.memory_type_index()) == 0 {
            return Err(Error::invalid(
                what,
                format!(
                    "the buffer allows only memory types {:#b}, and the memory is of type {} (VUID-vkBindBufferMemory-memory-01035)",
                    r.reqs.memory_type_bits,
                    memory.memory_type_index()
                ),
                "describe the memory the buffer is bound to",
            ));
        }
        Ok(Buffer { ctx, buffer, memory, offset, size, alignment: r.reqs.alignment, usage, on_drop: None, owned })
    }

    /// Imports an exported buffer into `ctx`'s device with the default usage. Consumes the fd
    /// whether the import succeeds or fails (docs/OWNERSHIP.md): on success Vulkan owns it, on
    /// failure lava-flow closes it exactly once.
    pub fn import(ctx: &VulkanContext, exported: ExportedBuffer) -> Result<Buffer> {
        Self::import_with_usage(ctx, exported, DEFAULT_BUFFER_USAGE)
    }

    /// Imports an exported buffer with a given usage (a dedicated allocation must be imported
    /// with the exporter's usage).
    pub fn import_with_usage(
        ctx: &VulkanContext,
        exported: ExportedBuffer,
        usage: vk::BufferUsageFlags,
    ) -> Result<Buffer> {
        ctx.check_deferred()?;
        let BufferHandle { memory, buffer: desc, .. } = exported;
        let d = memory.description;
        if desc.size == 0 || desc.offset.checked_add(desc.size).is_none_or(|end| end > d.allocation_size) {
            return Err(Error::invalid(
                format!("a buffer of {} bytes at offset {}", desc.size, desc.offset),
                format!("the allocation holds {} bytes", d.allocation_size),
                "pass the buffer description the exporter gave, unchanged",
            ));
        }
        if d.dedicated && desc.offset != 0 {
            return Err(Error::invalid(
                format!("a buffer at offset {} of a dedicated allocation", desc.offset),
                "a dedicated allocation is bound to its buffer at offset 0 (VUID-vkBindBufferMemory-memory-01508)",
                "pass the buffer description the exporter gave, unchanged",
            ));
        }
        raw_gpu_handle::check_compatible(d.handle_kind, &d.device, &ctx.identity())?;
        let buffer = create_vk_buffer(ctx, desc.size, usage, Some(d.handle_kind))?;
        let imported = if d.dedicated {
            DeviceMemory::import(ctx, memory, Some(DedicatedTo::Buffer(buffer)))
        } else {
            DeviceMemory::import(ctx, memory, None)
        };
        let memory = match imported {
            Ok(m) => Arc::new(m),
            Err(e) => {
                // SAFETY: the import failed, so the buffer was never bound or used by a command.
                unsafe { ctx.device().destroy_buffer(buffer, None) };
                return Err(e);
            }
        };
        // Dedicated imports are bound to this very buffer; otherwise the probe buffer is destroyed
        // and bind_at creates the real one with the same parameters.
        if d.dedicated {
            let r = buffer_requirements(ctx, buffer);
            if r.reqs.size > memory.size() || r.reqs.memory_type_bits & (1 << memory.memory_type_index()) == 0 {
                // SAFETY: the buffer was created above and never bound or used; the memory (the
                // Arc) is dropped after it, which Vulkan allows for a buffer that was never bound.
                unsafe { ctx.device().destroy_buffer(buffer, None) };
                return Err(Error::invalid(
                    format!("a {}-byte buffer dedicated to a {}-byte allocation", desc.size, memory.size()),
                    format!(
                        "the buffer needs {} bytes of memory types {:#b}, and the allocation is {} bytes of type {} \
                         (VUID-vkBindBufferMemory-size-01037, -memory-01035)",
                        r.reqs.size,
                        r.reqs.memory_type_bits,
                        memory.size(),
                        memory.memory_type_index()
                    ),
                    "import with the exporter's usage and description, unchanged",
                ));
            }
            // SAFETY: the memory was imported dedicated to this very buffer (DedicatedTo::Buffer
            // above), is bound at offset 0 (a non-zero offset was refused above), is large enough
            // and of a type the buffer accepts (checked just above); the buffer is unbound.
            if let Err(e) = unsafe { ctx.device().bind_buffer_memory(buffer, memory.handle(), desc.offset) } {
                // SAFETY: the bind failed, so the buffer is unbound and no command uses it.
                unsafe { ctx.device().destroy_buffer(buffer, None) };
                return Err(Error::vk("vkBindBufferMemory", e, "binding an imported dedicated buffer"));
            }
            return Ok(Buffer {
                ctx: ctx.clone(),
                buffer,
                memory,
                offset: desc.offset,
                size: desc.size,
                alignment: r.reqs.alignment,
                usage,
                on_drop: None,
                owned: true,
            });
        }
        // SAFETY: the probe buffer was never bound or used by a command; bind_at makes the real one.
        unsafe { ctx.device().destroy_buffer(buffer, None) };
        Self::bind_at(memory, desc.offset, desc.size, usage, None)
    }

    /// Exports the buffer: a fresh fd to its memory plus offset, size and alignment.
    pub fn export_fd(&self) -> Result<ExportedBuffer> {
        Ok(BufferHandle::new(self.memory.export_fd()?, self.description()))
    }

    /// Where the buffer lies in its memory.
    pub fn description(&self) -> BufferDescription {
        BufferDescription { offset: self.offset, size: self.size, alignment: self.alignment }
    }

    /// The Vulkan handle.
    pub fn handle(&self) -> vk::Buffer {
        self.buffer
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Offset in its memory.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Usage flags.
    pub fn usage(&self) -> vk::BufferUsageFlags {
        self.usage
    }

    /// The memory it is bound to.
    pub fn memory(&self) -> &Arc<DeviceMemory> {
        &self.memory
    }

    /// The context.
    pub fn context(&self) -> &VulkanContext {
        &self.ctx
    }

    /// Whether another device or process may reach this buffer's bytes: its memory is
    /// exportable, imported, or shared host memory, or another `Buffer` (or a clone of its
    /// `Arc<DeviceMemory>`) shares the allocation. Such a buffer is read and written with copies
    /// ([`read`](Self::read), [`write`](Self::write)) or mapped with the `unsafe`
    /// [`map_unchecked`](Self::map_unchecked).
    pub fn is_shared(&self) -> bool {
        self.memory.origin() != MemoryOrigin::Allocated
            || self.memory.external_handle_kind().is_some()
            || Arc::strong_count(&self.memory) != 1
            || Arc::weak_count(&self.memory) != 0
    }

    /// Maps the buffer for host access through a guard that borrows it exclusively: its
    /// `&[u8]`/`&mut [u8]` views are sound because nothing else can touch the bytes while the
    /// guard lives. Only for host-visible memory that nobody else can reach
    /// ([`is_shared`](Self::is_shared) is false, for example
    /// `BufferOptions::new(n).memory(MemoryKind::HostVisible).export(None)`); shared memory is
    /// refused with [`Error::InvalidArgument`]: use [`read`](Self::read)/[`write`](Self::write), or
    /// [`map_unchecked`](Self::map_unchecked) where you can keep its contract. Host writes are
    /// flushed when the guard is dropped.
    pub fn map(&mut self) -> Result<MappedBuffer<'_>> {
        if self.is_shared() {
            return Err(Error::invalid(
                "a safe host mapping of a shared buffer",
                "its memory is exportable, imported, shared host memory or shared with another buffer, so another \
                 device or process may write the bytes while a slice over them lives",
                "copy with Buffer::read/read_into/write, or use the unsafe Buffer::map_unchecked and keep its contract",
            ));
        }
        self.map_inner()
    }

    /// Maps the buffer for host access whoever else may reach its memory. Host writes are
    /// flushed when the guard is dropped.
    ///
    /// # Safety
    /// While the returned guard (and any slice from it) lives, no other device, process or
    /// `Buffer` object may write the buffer's bytes, nor read them while a `&mut [u8]` from the
    /// guard lives: not the GPU work of any API that imported the memory, not another process
    /// that mapped or imported it, not another `Buffer` bound to the same bytes in this process.
    /// Establish it by synchronization (the other side waits for a semaphore this process
    /// signals after dropping the guard) or by never having shared the memory.
    pub unsafe fn map_unchecked(&mut self) -> Result<MappedBuffer<'_>> {
        self.map_inner()
    }

    fn map_inner(&mut self) -> Result<MappedBuffer<'_>> {
        let base = self.memory.host_pointer()?;
        self.memory.invalidate()?;
        // SAFETY: `host_pointer` returned the start of a live mapping of the whole allocation,
        // and the buffer's range [offset, offset + size) lies inside the allocation (checked when
        // it was bound), so the sum stays inside the mapping and is non-null.
        let ptr = unsafe { NonNull::new_unchecked(base.add(self.offset as usize)) };
        Ok(MappedBuffer { ptr, len: self.size as usize, buffer: self })
    }

    fn check_usage(&self, needed: vk::BufferUsageFlags, what: &str) -> Result<()> {
        if !self.usage.contains(needed) {
            return Err(Error::invalid(
                format!("{what} a buffer on the GPU"),
                format!(
                    "the buffer was created with usage {:?}, without {needed:?} (vkCmdFillBuffer, vkCmdCopyBuffer)",
                    self.usage
                ),
                "create the buffer with the transfer usages (the default usage has them)",
            ));
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64, what: &str) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(Error::invalid(
                format!("{what} {len} bytes at offset {offset}"),
                format!("the buffer holds {} bytes", self.size),
                "stay inside the buffer",
            ));
        }
        Ok(())
    }

    /// Writes `data` at `offset`: directly where host-visible (a volatile copy into the
    /// mapping, see the module docs), else through a staging copy on the GPU. `&mut self`: one
    /// writer at a time, and no [`MappedBuffer`] of this buffer alive meanwhile. Another device
    /// or process sharing the memory must not use the range until you tell it (a semaphore).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64, "writing")?;
        if data.is_empty() {
            return Ok(());
        }
        if self.memory.is_host_visible() {
            let base = self.memory.host_pointer()?;
            // SAFETY: the range lies inside the buffer (checked above), which lies inside the live
            // mapping `host_pointer` returned; `&mut self` excludes every other access to this
            // buffer from this process (views, reads, writes), and the copy uses raw pointers
            // with volatile stores, so other devices or processes can race only with bytes, not
            // with a reference's promise.
            unsafe { copy_to_shared(data, base.add((self.offset + offset) as usize)) };
            return self.memory.flush();
        }
        let mut staging = Buffer::new(
            &self.ctx,
            &BufferOptions::new(data.len() as u64).memory(MemoryKind::HostVisible).export(None),
        )?;
        staging.write(0, data)?;
        staging.copy_region_to(0, self, offset, data.len() as u64)
    }

    /// Reads `len` bytes at `offset` (see [`read_into`](Self::read_into)).
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.check_range(offset, len, "reading")?;
        let len = usize::try_from(len).map_err(|_| {
            Error::invalid(format!("reading {len} bytes"), "it exceeds the address space", "read less at a time")
        })?;
        let mut out = vec![0u8; len];
        self.read_into(offset, &mut out)?;
        Ok(out)
    }

    /// Copies `out.len()` bytes at `offset` into `out`: directly where host-visible (a volatile
    /// copy out of the mapping: bytes another device or process writes meanwhile may come out
    /// torn, see the module docs), else through a staging copy on the GPU.
    pub fn read_into(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let len = out.len() as u64;
        self.check_range(offset, len, "reading")?;
        if len == 0 {
            return Ok(());
        }
        if self.memory.is_host_visible() {
            let base = self.memory.host_pointer()?;
            self.memory.invalidate()?;
            // SAFETY: the range lies inside the buffer (checked above), inside the live mapping;
            // the copy reads through raw pointers with volatile loads (no reference to the shared
            // bytes exists) into `out`, which this call borrows exclusively.
            unsafe { copy_from_shared(base.add((self.offset + offset) as usize), out) };
            return Ok(());
        }
        let staging = Buffer::new(&self.ctx, &BufferOptions::new(len).memory(MemoryKind::HostVisible).export(None))?;
        self.copy_region_to(offset, &staging, 0, len)?;
        staging.read_into(0, out)
    }

    /// Fills the whole buffer with a repeated 32-bit value on the GPU (`vkCmdFillBuffer`).
    pub fn fill(&self, value: u32) -> Result<()> {
        self.check_usage(vk::BufferUsageFlags::TRANSFER_DST, "filling")?;
        let size = self.size & !3;
        if size == 0 {
            // Fewer than 4 bytes: no whole 32-bit value fits (vkCmdFillBuffer needs size > 0).
            return Ok(());
        }
        self.ctx.run_commands(|dev, cmd| {
            record_acquire(dev, cmd, self, self.ctx.queue_family_index());
            // SAFETY: cmd is recording (run_commands); the buffer is alive for the call, has TRANSFER_DST
            // usage (checked above), and offset 0 and size (> 0, a multiple of 4, within the buffer) are valid.
            unsafe { dev.cmd_fill_buffer(cmd, self.buffer, 0, size, value) };
            record_release(dev, cmd, self, self.ctx.queue_family_index());
        })
    }

    /// Copies all of this buffer into `dst` on the GPU (same device).
    pub fn copy_to(&self, dst: &Buffer) -> Result<()> {
        self.copy_region_to(0, dst, 0, self.size.min(dst.size))
    }

    /// Copies `len` bytes from `src_offset` of this buffer to `dst_offset` of `dst`.
    pub fn copy_region_to(&self, src_offset: u64, dst: &Buffer, dst_offset: u64, len: u64) -> Result<()> {
        self.check_range(src_offset, len, "copying")?;
        dst.check_range(dst_offset, len, "copying")?;
        if len == 0 {
            return Ok(());
        }
        self.check_usage(vk::BufferUsageFlags::TRANSFER_SRC, "copying from")?;
        dst.check_usage(vk::BufferUsageFlags::TRANSFER_DST, "copying into")?;
        let (src_at, dst_at) = (self.offset + src_offset, dst.offset + dst_offset);
        if self.memory.handle() == dst.memory.handle() && src_at < dst_at + len && dst_at < src_at + len {
            return Err(Error::invalid(
                format!("a copy of {len} bytes from memory offset {src_at} to {dst_at}"),
                "the source and destination overlap in memory (VUID-vkCmdCopyBuffer-pRegions-00117)",
                "copy between ranges that do not overlap, through a temporary buffer if need be",
            ));
        }
        if self.ctx.device().handle() != dst.ctx.device().handle() {
            return Err(Error::invalid(
                "a copy between buffers of two devices",
                "vkCmdCopyBuffer works within one VkDevice",
                "import one buffer into the other's context first",
            ));
        }
        let qf = self.ctx.queue_family_index();
        self.ctx.run_commands(|dev, cmd| {
            record_acquire(dev, cmd, self, qf);
            record_acquire(dev, cmd, dst, qf);
            let region = [vk::BufferCopy { src_offset, dst_offset, size: len }];
            // SAFETY: cmd is recording; both buffers are alive, of this device, with TRANSFER_SRC / DST usage;
            // the region is inside both (check_range), non-empty, and the ranges do not overlap in memory.
            unsafe { dev.cmd_copy_buffer(cmd, self.buffer, dst.buffer, &region) };
            record_release(dev, cmd, self, qf);
            record_release(dev, cmd, dst, qf);
        })
    }
}

/// Records the acquisition of a shared buffer from `VK_QUEUE_FAMILY_EXTERNAL` (what another API
/// or device wrote becomes visible here). A no-op cost for private buffers.
fn record_acquire(dev: &ash::Device, cmd: vk::CommandBuffer, buffer: &Buffer, queue_family: u32) {
    let barrier = external_barrier(buffer, vk::QUEUE_FAMILY_EXTERNAL, queue_family)
        .src_access_mask(vk::AccessFlags::empty())
        .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE);
    record_buffer_barrier(dev, cmd, barrier, vk::PipelineStageFlags::TOP_OF_PIPE, vk::PipelineStageFlags::TRANSFER);
}

/// Records the release of a shared buffer to `VK_QUEUE_FAMILY_EXTERNAL`, so another API or
/// device may use what this submission wrote.
fn record_release(dev: &ash::Device, cmd: vk::CommandBuffer, buffer: &Buffer, queue_family: u32) {
    let barrier = external_barrier(buffer, queue_family, vk::QUEUE_FAMILY_EXTERNAL)
        .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::empty());
    record_buffer_barrier(dev, cmd, barrier, vk::PipelineStageFlags::TRANSFER, vk::PipelineStageFlags::BOTTOM_OF_PIPE);
}

/// A whole-buffer barrier moving `buffer` from queue family `src` to `dst` (accesses still unset).
fn external_barrier(buffer: &Buffer, src: u32, dst: u32) -> vk::BufferMemoryBarrier<'static> {
    vk::BufferMemoryBarrier::default()
        .src_queue_family_index(src)
        .dst_queue_family_index(dst)
        .buffer(buffer.buffer)
        .offset(0)
        .size(vk::WHOLE_SIZE)
}

/// Records one buffer memory barrier between the two stages.
fn record_buffer_barrier(
    dev: &ash::Device,
    cmd: vk::CommandBuffer,
    barrier: vk::BufferMemoryBarrier<'_>,
    src_stage: vk::PipelineStageFlags,
    dst_stage: vk::PipelineStageFlags,
) {
    // SAFETY: cmd is recording (callers run inside run_commands) and the barrier names a live buffer
    // of that device (record_acquire/record_release borrow it); the barrier array is a local that
    // outlives the call.
    unsafe { dev.cmd_pipeline_barrier(cmd, src_stage, dst_stage, vk::DependencyFlags::empty(), &[], &[barrier], &[]) };
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: Drop has the buffer exclusively (external sync of vkDestroyBuffer). lava-flow's own work
            // on it finished before each call returned (run_commands waits); work a user recorded with
            // the handle is theirs to finish, by the contract of the unsafe ash calls that recorded it.
            unsafe { self.ctx.device().destroy_buffer(self.buffer, None) };
        }
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

/// A host view of a buffer, holding it borrowed exclusively (from [`Buffer::map`] or
/// [`Buffer::map_unchecked`]); host writes are flushed when it is dropped.
pub struct MappedBuffer<'a> {
    ptr: NonNull<u8>,
    len: usize,
    buffer: &'a mut Buffer,
}

impl MappedBuffer<'_> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is the buffer's first byte in a live mapping of at least `len` bytes,
        // which the exclusively borrowed buffer (and its memory) keeps mapped. Nothing else
        // writes the bytes while this borrow lives: `map` checked that no other device, process
        // or buffer can reach them, and `map_unchecked`'s caller promised it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`; `&mut self` also excludes every other view from this guard,
        // and the guard's exclusive borrow of the buffer excludes every other access to it in
        // this process.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The buffer's first byte in the mapping (for another API's copy, e.g. `cuMemcpyHtoD`).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty (never, for a mapped buffer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for MappedBuffer<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.buffer.memory.flush() {
            self.buffer.ctx.defer_error(crate::error::DeferredError::new("flushing a mapped buffer", e));
        }
    }
}
