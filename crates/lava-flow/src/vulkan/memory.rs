//! `DeviceMemory`: one `VkDeviceMemory`, allocated exportable, imported from an fd, or imported
//! from shareable host memory. Buffers and images hold it in an `Arc`, so it is freed only after
//! the last resource bound to it is destroyed.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ash::vk;
use raw_gpu_handle::{
    AllocationId, ExportedMemory, MemoryDescription, MemoryHandle, MemoryHandleKind, MemoryProperties,
};

use super::format::{memory_properties, vk_memory_handle_type};
use super::host::SharedHostMemory;
use crate::{Error, Result, VulkanContext};

/// Where a `DeviceMemory` came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryOrigin {
    /// Allocated here.
    Allocated,
    /// Imported from another device's or process's fd.
    Imported,
    /// Imported from shareable host memory.
    Host,
    /// Allocated by the caller and described to lava-flow ([`DeviceMemory::from_raw`]).
    Adopted,
}

/// The resource a dedicated allocation is for (`VkMemoryDedicatedAllocateInfo`).
#[derive(Clone, Copy, Debug)]
pub enum DedicatedTo {
    /// A buffer.
    Buffer(vk::Buffer),
    /// An image.
    Image(vk::Image),
}

/// One Vulkan memory allocation and what importers need to know about it.
pub struct DeviceMemory {
    ctx: VulkanContext,
    memory: vk::DeviceMemory,
    size: u64,
    type_index: u32,
    properties: vk::MemoryPropertyFlags,
    export_kind: Option<MemoryHandleKind>,
    dedicated: bool,
    origin: MemoryOrigin,
    allocation_id: AllocationId,
    host: Option<SharedHostMemory>,
    mapped: Mutex<Option<usize>>,
    /// The handle kind this memory was imported from (bind_at needs it in
    /// VkExternalMemoryBufferCreateInfo: VUID-vkBindBufferMemory-memory-02985).
    import_kind: Option<MemoryHandleKind>,
    /// Pool blocks keep the fd of their first export and hand out duplicates, so a buffer carved
    /// from a block exports with a `dup` instead of a `vkGetMemoryFdKHR`. `None`: fresh fd each time.
    kept_export: Option<Mutex<Option<OwnedFd>>>,
    /// Whether dropping this frees the `VkDeviceMemory` (false for memory adopted unowned).
    owned: bool,
    /// Counted in `live_objects()` while allocated.
    _live: super::live::Live,
}

impl std::fmt::Debug for DeviceMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMemory")
            .field("size", &self.size)
            .field("type_index", &self.type_index)
            .field("properties", &self.properties)
            .field("export_kind", &self.export_kind)
            .field("dedicated", &self.dedicated)
            .field("origin", &self.origin)
            .finish()
    }
}

/// A process-unique, machine-wide-unlikely-to-collide allocation id: a random per-process prefix
/// (from the clock, pid and address-space layout) and a counter.
pub(crate) fn next_allocation_id() -> AllocationId {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    AllocationId((u128::from(allocation_id_prefix()) << 64) | u128::from(COUNTER.fetch_add(1, Ordering::Relaxed)))
}

/// The random per-process upper half of the ids [`next_allocation_id`] hands out.
pub(crate) fn allocation_id_prefix() -> u64 {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
        );
        h.finish()
    })
}

/// Parameters of a new exportable allocation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AllocateParams {
    pub size: u64,
    pub type_index: u32,
    pub export_kind: Option<MemoryHandleKind>,
    pub dedicated: Option<DedicatedTo>,
}

impl DeviceMemory {
    /// Allocates `params.size` bytes of memory type `params.type_index`, exportable as
    /// `params.export_kind`, dedicated to a resource when given.
    pub(crate) fn allocate(ctx: &VulkanContext, params: AllocateParams) -> Result<DeviceMemory> {
        Self::allocate_with_id(ctx, params, next_allocation_id())
    }

    /// As [`allocate`](Self::allocate), with the allocation id exports will carry (pool blocks
    /// mark theirs, see `pool::vulkan`); it must be unique in this process.
    pub(crate) fn allocate_with_id(
        ctx: &VulkanContext,
        params: AllocateParams,
        allocation_id: AllocationId,
    ) -> Result<DeviceMemory> {
        let mut export_info = vk::ExportMemoryAllocateInfo::default();
        let mut dedicated_info = vk::MemoryDedicatedAllocateInfo::default();
        let mut info =
            vk::MemoryAllocateInfo::default().allocation_size(params.size).memory_type_index(params.type_index);
        if let Some(kind) = params.export_kind {
            export_info = export_info.handle_types(vk_memory_handle_type(kind));
            info = info.push_next(&mut export_info);
        }
        if let Some(target) = params.dedicated {
            dedicated_info = match target {
                DedicatedTo::Buffer(b) => dedicated_info.buffer(b),
                DedicatedTo::Image(i) => dedicated_info.image(i),
            };
            info = info.push_next(&mut dedicated_info);
        }
        // SAFETY: `info` and its chain are locals that outlive the call; callers pass size > 0, a type
        // index from the resource's memory_type_bits, an export kind the capability query allowed, and a
        // dedicated target they created on this device and keep alive.
        let memory = unsafe { ctx.device().allocate_memory(&info, None) }.map_err(|r| {
            let what = format!(
                "allocating {} bytes of memory type {}{}",
                params.size,
                params.type_index,
                params.export_kind.map(|k| format!(" exportable as {k}")).unwrap_or_default()
            );
            match r {
                vk::Result::ERROR_OUT_OF_DEVICE_MEMORY | vk::Result::ERROR_OUT_OF_HOST_MEMORY => Error::OutOfMemory {
                    what,
                    advice: format!("{r}: free memory or ask for less"),
                    code: Some(crate::DriverCode::Vulkan(r)),
                },
                _ => Error::vk("vkAllocateMemory", r, what),
            }
        })?;
        Ok(Self::wrap(
            ctx,
            memory,
            params.size,
            params.type_index,
            params.export_kind,
            params.dedicated.is_some(),
            MemoryOrigin::Allocated,
            allocation_id,
            None,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn wrap(
        ctx: &VulkanContext,
        memory: vk::DeviceMemory,
        size: u64,
        type_index: u32,
        export_kind: Option<MemoryHandleKind>,
        dedicated: bool,
        origin: MemoryOrigin,
        allocation_id: AllocationId,
        host: Option<SharedHostMemory>,
    ) -> DeviceMemory {
        let properties = ctx.memory_properties().memory_types[type_index as usize].property_flags;
        if origin != MemoryOrigin::Imported {
            crate::fd::record_export(allocation_id, size, type_index);
        }
        DeviceMemory {
            ctx: ctx.clone(),
            memory,
            size,
            type_index,
            properties,
            export_kind,
            dedicated,
            origin,
            allocation_id,
            host,
            mapped: Mutex::new(None),
            import_kind: None,
            kept_export: None,
            owned: true,
            _live: super::live::Live::memory(),
        }
    }

    /// Describes memory the caller allocated itself on `ctx`'s device with
    /// `VkExportMemoryAllocateInfo`, so that lava-flow exports it (and binds buffers and images
    /// to it, see [`Buffer::from_raw`](super::Buffer::from_raw) and
    /// [`Image::from_raw`](super::Image::from_raw)) as if it had allocated it.
    ///
    /// Checks what it can: a non-zero size, a memory type the device has, an fd handle kind
    /// (opaque fd, or DMA-BUF where VK_EXT_external_memory_dma_buf is enabled) on a context with
    /// VK_KHR_external_memory_fd. With `owned`, dropping the last reference frees the memory
    /// (`vkFreeMemory`); without, lava-flow never frees it.
    ///
    /// # Safety
    ///
    /// The caller promises that:
    /// - `memory` is a live `VkDeviceMemory` of `ctx`'s device, allocated with `allocationSize`
    ///   `size` and `memoryTypeIndex` `type_index`, with `VkExportMemoryAllocateInfo::handleTypes`
    ///   including `export_kind`;
    /// - `dedicated` is `Some` exactly when the allocation was made with
    ///   `VkMemoryDedicatedAllocateInfo`, naming the same resource;
    /// - with `owned`, nothing else frees it; without, it stays allocated until the returned memory
    ///   and everything bound through lava-flow to it are dropped;
    /// - the caller does not map it (`vkMapMemory`) while lava-flow holds it (lava-flow maps
    ///   host-visible memory for reads and writes), and its own device and host accesses to the
    ///   bytes are synchronized with lava-flow's and the importers' as for any shared memory.
    pub unsafe fn from_raw(
        ctx: &VulkanContext,
        memory: vk::DeviceMemory,
        size: u64,
        type_index: u32,
        export_kind: MemoryHandleKind,
        dedicated: Option<DedicatedTo>,
        owned: bool,
    ) -> Result<DeviceMemory> {
        let what = format!("describing {size} bytes of caller-allocated memory (type {type_index}) as {export_kind}");
        if memory == vk::DeviceMemory::null() || size == 0 {
            return Err(Error::invalid(
                what,
                "the handle is VK_NULL_HANDLE or the size is zero (Vulkan has no zero-sized allocations)",
                "pass the memory and the allocationSize it was allocated with",
            ));
        }
        let count = ctx.memory_properties().memory_type_count;
        if type_index >= count {
            return Err(Error::invalid(
                what,
                format!("{} has only {count} memory types", ctx.info().name),
                "pass the memoryTypeIndex the memory was allocated with",
            ));
        }
        match export_kind {
            MemoryHandleKind::OpaqueFd => {}
            MemoryHandleKind::DmaBuf if ctx.extensions().external_memory_dma_buf => {}
            MemoryHandleKind::DmaBuf => {
                return Err(Error::unsupported(
                    what,
                    "the context lacks VK_EXT_external_memory_dma_buf",
                    "VK_EXT_external_memory_dma_buf",
                    "allocate it exportable as an opaque fd, or adopt the device with the extension enabled",
                ))
            }
            other => {
                return Err(Error::invalid(
                    what,
                    format!("{other} is not a Vulkan memory fd handle type"),
                    "allocate with VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT (or DMA_BUF_BIT_EXT) in VkExportMemoryAllocateInfo",
                ))
            }
        }
        ctx.external_memory_fd()?;
        let mut wrapped = Self::wrap(
            ctx,
            memory,
            size,
            type_index,
            Some(export_kind),
            dedicated.is_some(),
            MemoryOrigin::Adopted,
            next_allocation_id(),
            None,
        );
        wrapped.owned = owned;
        Ok(wrapped)
    }

    /// Imports an exported allocation (opaque fd or DMA-BUF) into `ctx`'s device.
    ///
    /// Checks first, and refuses with a typed error: another device's or driver's UUIDs, a memory
    /// type this device does not have or whose flags differ (an opaque-fd import must use the
    /// exporter's memory type), an fd that is closed or no GPU export (pipe, socket, plain file), an
    /// fd smaller than the description's size. Consumes the fd whether the import succeeds or fails
    /// (docs/OWNERSHIP.md): on success Vulkan owns it, on failure lava-flow closes it exactly once.
    pub fn import(
        ctx: &VulkanContext,
        exported: ExportedMemory,
        dedicated: Option<DedicatedTo>,
    ) -> Result<DeviceMemory> {
        let MemoryHandle { handle, description: d, .. } = exported;
        if d.handle_kind == MemoryHandleKind::HostMemfd {
            let host = SharedHostMemory::from_fd(handle, d.allocation_size)?;
            return Self::import_host(ctx, host, d.allocation_id);
        }
        let fd = crate::fd::check_exported_memory(handle, &d, &format!("{} memory", d.handle_kind))?;
        raw_gpu_handle::check_compatible(d.handle_kind, &d.device, &ctx.identity())?;
        Self::check_description(ctx, &d, dedicated)?;
        let ext = ctx.external_memory_fd()?;
        let handle_type = vk_memory_handle_type(d.handle_kind);
        let mut type_index = d.memory_type_index;
        if d.handle_kind == MemoryHandleKind::DmaBuf && !ctx.extensions().external_memory_dma_buf {
            // vkGetMemoryFdPropertiesKHR may not even be asked about a handle type whose
            // extension is not enabled.
            return Err(Error::unsupported(
                format!("importing DMA-BUF memory on {}", ctx.info().name),
                "the device lacks VK_EXT_external_memory_dma_buf",
                "VK_EXT_external_memory_dma_buf",
                "export the memory as an opaque fd",
            ));
        }
        if d.handle_kind == MemoryHandleKind::DmaBuf {
            // DMA-BUFs may come from another driver: ask which of our types can hold it.
            let mut props = vk::MemoryFdPropertiesKHR::default();
            // SAFETY: the device has VK_EXT_external_memory_dma_buf (checked above), so the DMA-BUF handle
            // type may be asked about; the fd is open and owned by `fd` across the call (not consumed by this
            // query); props is a local that outlives it.
            unsafe {
                (ext.fp().get_memory_fd_properties_khr)(
                    ctx.device().handle(),
                    handle_type,
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &mut props,
                )
            }
            .result()
            .map_err(|r| {
                Error::vk("vkGetMemoryFdPropertiesKHR", r, "asking which memory types can import a DMA-BUF")
            })?;
            type_index = (0..32).find(|i| props.memory_type_bits & (1 << i) != 0).ok_or_else(|| {
                Error::unsupported(
                    "importing this DMA-BUF",
                    "no memory type accepts it",
                    "vkGetMemoryFdPropertiesKHR",
                    "import it on the exporting device",
                )
            })?;
        }
        let allocation_size = d.allocation_size;
        crate::fd::import_consuming(fd, |raw| {
            let mut import_info = vk::ImportMemoryFdInfoKHR::default().handle_type(handle_type).fd(raw);
            let mut dedicated_info = vk::MemoryDedicatedAllocateInfo::default();
            let mut info = vk::MemoryAllocateInfo::default()
                .allocation_size(allocation_size)
                .memory_type_index(type_index)
                .push_next(&mut import_info);
            if let Some(target) = dedicated {
                dedicated_info = match target {
                    DedicatedTo::Buffer(b) => dedicated_info.buffer(b),
                    DedicatedTo::Image(i) => dedicated_info.image(i),
                };
                info = info.push_next(&mut dedicated_info);
            }
            // SAFETY: `info` and its chain are locals that outlive the call; allocation_size > 0 and the type
            // index exists (check_description, or the DMA-BUF properties); `raw` is an open fd that
            // import_consuming hands over to the driver. Buffer::import and Image::import pass a
            // dedicated target they just created on this device; a raw handle from another caller of
            // this public function cannot be checked here (DedicatedTo holds plain handles).
            let memory = unsafe { ctx.device().allocate_memory(&info, None) }.map_err(|r| {
                let mut e = Error::vk(
                    "vkAllocateMemory",
                    r,
                    format!(
                        "importing {allocation_size} bytes of {} memory (type {type_index}) from {}",
                        d.handle_kind, d.device
                    ),
                );
                if let Error::Vulkan { result, advice, .. } = &mut e {
                    if matches!(*result, vk::Result::ERROR_OUT_OF_DEVICE_MEMORY | vk::Result::ERROR_OUT_OF_HOST_MEMORY)
                    {
                        // An import allocates nothing new: lavapipe answers a size larger than
                        // the export's this way.
                        *advice = format!(
                            "the driver refused the import: check that the description (size {allocation_size}, \
                             memory type {type_index}) is exactly the exporter's; else {advice}"
                        );
                    }
                }
                e
            })?;
            let mut imported = Self::wrap(
                ctx,
                memory,
                allocation_size,
                type_index,
                None,
                dedicated.is_some(),
                MemoryOrigin::Imported,
                d.allocation_id.unwrap_or_else(next_allocation_id),
                None,
            );
            imported.import_kind = Some(d.handle_kind);
            Ok(imported)
        })
    }

    fn check_description(ctx: &VulkanContext, d: &MemoryDescription, dedicated: Option<DedicatedTo>) -> Result<()> {
        let props = ctx.memory_properties();
        if d.allocation_size == 0 {
            return Err(Error::invalid(
                "an import of 0 bytes",
                "the description's allocation size is zero",
                "pass the size the exporter reported",
            ));
        }
        if d.handle_kind == MemoryHandleKind::OpaqueFd {
            if d.memory_type_index >= props.memory_type_count {
                return Err(Error::invalid(
                    format!("an import into memory type {}", d.memory_type_index),
                    format!("{} has only {} memory types", ctx.info().name, props.memory_type_count),
                    "an opaque-fd import must use the exporter's memory type index (VkMemoryAllocateInfo, external memory compatibility); pass the description unchanged",
                ));
            }
            let here = memory_properties(props.memory_types[d.memory_type_index as usize].property_flags);
            if here != d.memory_properties {
                return Err(Error::invalid(
                    format!(
                        "an import into memory type {} with properties {}",
                        d.memory_type_index, d.memory_properties
                    ),
                    format!("that memory type here has properties {here}"),
                    "the exporter's memory type must be used unchanged: check the description came from this device",
                ));
            }
        }
        if d.dedicated && dedicated.is_none() {
            return Err(Error::invalid(
                "a non-dedicated import of a dedicated allocation",
                "the exporter made a dedicated allocation (VkMemoryDedicatedAllocateInfo), which must be imported dedicated to an identical resource",
                "import it through Buffer::import or Image::import, which do so",
            ));
        }
        Ok(())
    }

    /// Imports shareable host memory (`VK_EXT_external_memory_host`). The mapping is kept alive
    /// by the returned memory.
    pub fn import_host(ctx: &VulkanContext, host: SharedHostMemory, id: Option<AllocationId>) -> Result<DeviceMemory> {
        let ext = ctx.external_memory_host()?;
        let align = ctx.host_import_alignment().unwrap_or(4096);
        if host.len() as u64 % align != 0 || (host.as_ptr() as usize as u64) % align != 0 {
            return Err(Error::invalid(
                format!("importing {} bytes of host memory", host.len()),
                format!("pointer and size must be multiples of minImportedHostPointerAlignment ({align})"),
                "create it with SharedHostMemory::create, which rounds the size",
            ));
        }
        let handle_type = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
        let mut props = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: the device has VK_EXT_external_memory_host (the loader exists); the pointer is the start
        // of host.len() mapped bytes, aligned as minImportedHostPointerAlignment requires (checked above),
        // and `host` outlives the call; props is a local.
        unsafe {
            (ext.fp().get_memory_host_pointer_properties_ext)(
                ctx.device().handle(),
                handle_type,
                host.as_ptr().cast_const().cast(),
                &mut props,
            )
        }
        .result()
        .map_err(|r| {
            Error::vk("vkGetMemoryHostPointerPropertiesEXT", r, "asking which memory types can import host memory")
        })?;
        let type_index = ctx
            .find_memory_type(
                props.memory_type_bits,
                vk::MemoryPropertyFlags::HOST_VISIBLE,
                vk::MemoryPropertyFlags::HOST_COHERENT,
            )
            .ok_or_else(|| {
                Error::unsupported(
                    "importing host memory",
                    "no host-visible memory type accepts the pointer",
                    "vkGetMemoryHostPointerPropertiesEXT",
                    "use device memory exported as an fd instead",
                )
            })?;
        let mut import =
            vk::ImportMemoryHostPointerInfoEXT::default().handle_type(handle_type).host_pointer(host.as_ptr().cast());
        let info = vk::MemoryAllocateInfo::default()
            .allocation_size(host.len() as u64)
            .memory_type_index(type_index)
            .push_next(&mut import);
        // SAFETY: `host` is stored in the returned memory and dropped after vkFreeMemory (Drop frees,
        // then the fields drop), so the imported pointer stays valid as long as the allocation; size and
        // pointer are aligned (checked above), size > 0, and the type comes from the pointer's properties.
        let memory = unsafe { ctx.device().allocate_memory(&info, None) }
            .map_err(|r| Error::vk("vkAllocateMemory", r, format!("importing {} bytes of host memory", host.len())))?;
        let size = host.len() as u64;
        Ok(Self::wrap(
            ctx,
            memory,
            size,
            type_index,
            Some(MemoryHandleKind::HostMemfd),
            false,
            MemoryOrigin::Host,
            id.unwrap_or_else(next_allocation_id),
            Some(host),
        ))
    }

    /// Exports the allocation: a fresh fd each call, plus everything an importer needs.
    pub fn export_fd(&self) -> Result<ExportedMemory> {
        self.ctx.check_deferred()?;
        let description = self.description()?;
        let handle = match (&self.host, self.export_kind) {
            (Some(host), _) => host.try_clone_fd()?,
            (None, Some(kind)) => match &self.kept_export {
                Some(kept) => {
                    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.is_none() {
                        *kept = Some(self.get_fd(kind)?);
                    }
                    let fd = kept.as_ref().expect("set above");
                    fd.try_clone().map_err(|e| {
                        Error::io(format!("duplicating the exported fd of a {}-byte block", self.size), e)
                    })?
                }
                None => self.get_fd(kind)?,
            },
            (None, None) => unreachable!("description() refuses non-exportable memory"),
        };
        Ok(MemoryHandle::new(handle, description))
    }

    /// `vkGetMemoryFdKHR`: a new fd the caller owns.
    fn get_fd(&self, kind: MemoryHandleKind) -> Result<OwnedFd> {
        let ext = self.ctx.external_memory_fd()?;
        let info = vk::MemoryGetFdInfoKHR::default().memory(self.memory).handle_type(vk_memory_handle_type(kind));
        // SAFETY: callers pass the kind self.export_kind names, so the memory was allocated with
        // VkExportMemoryAllocateInfo for this handle type; the loader belongs to self.ctx's device.
        let raw = unsafe { ext.get_memory_fd(&info) }
            .map_err(|r| Error::vk("vkGetMemoryFdKHR", r, format!("exporting {} bytes as {kind}", self.size)))?;
        // SAFETY: on success vkGetMemoryFdKHR returns a new open fd whose ownership passes to the caller;
        // nothing else holds it, so the OwnedFd closes it exactly once.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Makes exports duplicate the first exported fd (see `kept_export`); for pool blocks.
    pub(crate) fn keep_exported_fd(mut self) -> Self {
        self.kept_export = Some(Mutex::new(None));
        self
    }

    /// The external handle kind this memory was allocated exportable as or imported from.
    pub fn external_handle_kind(&self) -> Option<MemoryHandleKind> {
        self.export_kind.or(self.import_kind)
    }

    /// The description an export carries (without the fd).
    pub fn description(&self) -> Result<MemoryDescription> {
        let handle_kind =
            match (&self.host, self.export_kind) {
                (Some(_), _) => MemoryHandleKind::HostMemfd,
                (None, Some(kind)) => kind,
                (None, None) => return Err(Error::unsupported(
                    "exporting this memory",
                    if self.origin == MemoryOrigin::Imported {
                        "it was imported, and Vulkan does not re-export imported memory here"
                    } else {
                        "it was allocated without VkExportMemoryAllocateInfo"
                    },
                    "VkExportMemoryAllocateInfo",
                    "export from the original allocation (duplicate its fd with try_clone to feed several importers)",
                )),
            };
        if handle_kind == MemoryHandleKind::HostMemfd {
            // Host memory belongs to no device: any process maps the memfd and an importing API
            // picks its own memory type, so the description names neither (docs/PROTOCOL.md).
            return Ok(MemoryDescription {
                handle_kind,
                allocation_size: self.size,
                memory_type_index: 0,
                memory_properties: super::format::HOST_MEMFD_PROPERTIES,
                dedicated: false,
                device: raw_gpu_handle::DeviceIdentity::default(),
                allocation_id: Some(self.allocation_id),
            });
        }
        Ok(MemoryDescription {
            handle_kind,
            allocation_size: self.size,
            memory_type_index: self.type_index,
            memory_properties: memory_properties(self.properties),
            dedicated: self.dedicated,
            device: self.ctx.identity(),
            allocation_id: Some(self.allocation_id),
        })
    }

    /// The Vulkan handle.
    pub fn handle(&self) -> vk::DeviceMemory {
        self.memory
    }

    /// Size of the whole allocation.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Memory type index.
    pub fn memory_type_index(&self) -> u32 {
        self.type_index
    }

    /// Memory type flags.
    pub fn properties(&self) -> MemoryProperties {
        memory_properties(self.properties)
    }

    /// Whether this is a dedicated allocation.
    pub fn dedicated(&self) -> bool {
        self.dedicated
    }

    /// Where it came from.
    pub fn origin(&self) -> MemoryOrigin {
        self.origin
    }

    /// The stable id exports carry.
    pub fn allocation_id(&self) -> AllocationId {
        self.allocation_id
    }

    /// The context it belongs to.
    pub fn context(&self) -> &VulkanContext {
        &self.ctx
    }

    /// The shared host memory behind it, for `SharedHost` allocations.
    pub fn host_memory(&self) -> Option<&SharedHostMemory> {
        self.host.as_ref()
    }

    /// Whether the host can map it.
    pub fn is_host_visible(&self) -> bool {
        self.properties.contains(vk::MemoryPropertyFlags::HOST_VISIBLE)
    }

    /// Pointer to the start of the persistent host mapping of the whole allocation, mapping on
    /// first use: valid until this `DeviceMemory` is dropped (keep an `Arc` of it). Reading or
    /// writing through it is the caller's `unsafe`, under the contract of
    /// [`Buffer::map_unchecked`](crate::Buffer::map_unchecked): another device or process may write
    /// the bytes. Host-coherent memory needs no flush; for memory without `HOST_COHERENT` in
    /// [`properties`](Self::properties), lava-flow's own reads and writes flush and invalidate, and
    /// a caller writing through this pointer must use those instead. Used by the Python module's
    /// `map_host`, which hands the pointer to DLPack consumers (NumPy) with the memory kept alive.
    pub fn host_pointer(&self) -> Result<*mut u8> {
        if let Some(host) = &self.host {
            return Ok(host.as_ptr());
        }
        if !self.is_host_visible() {
            return Err(Error::invalid(
                "mapping memory",
                format!("memory type {} is not HOST_VISIBLE ({:?})", self.type_index, self.properties),
                "allocate with MemoryLocation::HostVisibleVulkan or SharedHost, or use read/write which stage through a copy",
            ));
        }
        let mut mapped = self.mapped.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = *mapped {
            return Ok(p as *mut u8);
        }
        // SAFETY: the memory is host-visible (checked above) and not mapped: the only vkMapMemory of it
        // happens here, under the `mapped` mutex (the external sync vkMapMemory needs), and the mapping
        // is kept until vkFreeMemory; the whole range from 0 lies within the allocation.
        let p = unsafe { self.ctx.device().map_memory(self.memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) }
            .map_err(|r| Error::vk("vkMapMemory", r, format!("mapping {} bytes", self.size)))?;
        *mapped = Some(p as usize);
        Ok(p.cast())
    }

    /// Makes device writes visible to the host for non-coherent memory (no-op when coherent).
    pub(crate) fn invalidate(&self) -> Result<()> {
        if self.host.is_some() || self.properties.contains(vk::MemoryPropertyFlags::HOST_COHERENT) {
            return Ok(());
        }
        let range = vk::MappedMemoryRange::default().memory(self.memory).offset(0).size(vk::WHOLE_SIZE);
        // SAFETY: callers map before invalidating (host_pointer), and the mapping is kept until the
        // memory is freed; offset 0 with WHOLE_SIZE covers exactly that mapping.
        unsafe { self.ctx.device().invalidate_mapped_memory_ranges(&[range]) }
            .map_err(|r| Error::vk("vkInvalidateMappedMemoryRanges", r, "reading mapped memory"))
    }

    /// Makes host writes visible to the device for non-coherent memory (no-op when coherent).
    pub(crate) fn flush(&self) -> Result<()> {
        if self.host.is_some() || self.properties.contains(vk::MemoryPropertyFlags::HOST_COHERENT) {
            return Ok(());
        }
        let range = vk::MappedMemoryRange::default().memory(self.memory).offset(0).size(vk::WHOLE_SIZE);
        // SAFETY: callers map before flushing (host_pointer), and the mapping is kept until the memory is
        // freed; offset 0 with WHOLE_SIZE covers exactly that mapping.
        unsafe { self.ctx.device().flush_mapped_memory_ranges(&[range]) }
            .map_err(|r| Error::vk("vkFlushMappedMemoryRanges", r, "writing mapped memory"))
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        if !self.owned {
            if self.mapped.get_mut().unwrap_or_else(|p| p.into_inner()).is_some() {
                // SAFETY: host_pointer mapped it (the only vkMapMemory of it, by from_raw's contract the caller
                // does not map it while lava-flow holds it), and Drop has it exclusively; no lava-flow view of
                // the mapping outlives this (views borrow a Buffer, which holds this memory's Arc).
                unsafe { self.ctx.device().unmap_memory(self.memory) };
            }
            crate::fd::forget_export(self.allocation_id);
            return;
        }
        // SAFETY: Drop owns the memory exclusively (vkFreeMemory's external sync); every buffer and image
        // bound to it holds an Arc to it, so none is left, and lava-flow waited for its own work on them.
        // Freeing unmaps implicitly; the host mapping (if any) is dropped after this, as Vulkan requires
        // the imported pointer to stay valid until the memory is freed.
        unsafe { self.ctx.device().free_memory(self.memory, None) };
        if self.origin != MemoryOrigin::Imported {
            crate::fd::forget_export(self.allocation_id);
        }
    }
}
