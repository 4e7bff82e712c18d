//! Memory that CUDA allocates and exports: the other direction of the CUDA importer.
//!
//! An allocation is made with CUDA's virtual memory management API: `cuMemCreate` (physical
//! memory requested exportable as a POSIX fd), `cuMemAddressReserve` + `cuMemMap` +
//! `cuMemSetAccess` (so CUDA itself reads and writes it at a device pointer), and
//! `cuMemExportToShareableHandle` for each export. The export is an opaque fd that Vulkan
//! imports with `VkImportMemoryFdInfoKHR` (`OPAQUE_FD`), as NVIDIA's simpleVulkanMMAP sample
//! does, and that travels to other processes over the protocol like any other opaque fd.
//!
//! What the description carries (docs/ADOPTING.md, "CUDA allocates"): the handle kind (opaque
//! fd), the allocation size (the requested size rounded up to the allocation granularity),
//! the device identity and memory type of the Vulkan device with the same device UUID (CUDA
//! knows neither Vulkan's driver UUID nor its memory types, and Vulkan's importer compares
//! both), not dedicated, and a fresh allocation id.

use std::marker::PhantomData;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use cudarc::driver::{sys, CudaStream, DeviceRepr};
use raw_gpu_handle::{
    BufferDescription, BufferHandle, DeviceIdentity, ExportedBuffer, ExportedMemory, MemoryDescription, MemoryHandle,
    MemoryHandleKind, MemoryProperties,
};

use super::{check, cu_error, AnyBitPattern, CudaDevice};
use crate::{Error, Result};

/// The alignment of buffer offsets inside a CUDA allocation ([`CudaAllocation::buffer`]): 256
/// bytes, CUDA's own allocation alignment and at least what Vulkan asks of a storage buffer's
/// offset on NVIDIA GPUs (`minStorageBufferOffsetAlignment`, `VkMemoryRequirements::alignment`).
pub const BUFFER_ALIGNMENT: u64 = 256;

/// What a CUDA device can do toward exporting memory it allocates, from
/// `cuDeviceGetAttribute` and `cuMemGetAllocationGranularity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CudaExportSupport {
    /// `CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED`: `cuMemCreate` and `cuMemMap` work.
    pub virtual_memory_management: bool,
    /// `CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED`: allocations can be made
    /// exportable as POSIX fds.
    pub posix_fd: bool,
    /// `cuMemGetAllocationGranularity` (`CU_MEM_ALLOC_GRANULARITY_MINIMUM`) for a device-resident,
    /// fd-exportable allocation: every allocation's size is rounded up to a multiple of it. `None`
    /// where either attribute is off.
    pub granularity: Option<u64>,
}

impl CudaExportSupport {
    /// Whether [`CudaDevice::allocate_exportable`] can work here.
    pub fn can_export(&self) -> bool {
        self.virtual_memory_management && self.posix_fd && self.granularity.is_some()
    }
}

/// The allocation properties lava-flow asks `cuMemCreate` for: pinned device memory on
/// `device`, exportable as a POSIX fd.
fn allocation_prop(device: sys::CUdevice) -> sys::CUmemAllocationProp {
    sys::CUmemAllocationProp {
        type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        location: sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: device },
        win32HandleMetaData: std::ptr::null_mut(),
        allocFlags: sys::CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    }
}

impl CudaDevice {
    /// Whether this device can allocate memory and export it as a POSIX fd (virtual memory
    /// management and the fd handle type), and the allocation granularity. Never fails for a
    /// missing capability: the answer says which is off.
    pub fn export_support(&self) -> Result<CudaExportSupport> {
        self.bind()?;
        let dev = super::device::device_handle(self.ordinal())?;
        let attr = |a: sys::CUdevice_attribute| -> Result<bool> {
            let mut v = 0;
            // SAFETY: the driver is initialised (bind succeeded); `dev` came from cuDeviceGet; `v` is a
            // local valid for writes.
            check(unsafe { sys::cuDeviceGetAttribute(&mut v, a, dev) }, "cuDeviceGetAttribute", || {
                format!("reading {a:?} of CUDA device {}", self.ordinal())
            })?;
            Ok(v != 0)
        };
        let virtual_memory_management =
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)?;
        let posix_fd = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED)?;
        let granularity = if virtual_memory_management && posix_fd {
            let prop = allocation_prop(dev);
            let mut granularity = 0usize;
            // SAFETY: the context is bound; `prop` is a fully initialised local describing this device;
            // `granularity` is a local valid for writes.
            let r = unsafe {
                sys::cuMemGetAllocationGranularity(
                    &mut granularity,
                    &prop,
                    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
                )
            };
            check(r, "cuMemGetAllocationGranularity", || {
                format!("reading the allocation granularity of CUDA device {}", self.ordinal())
            })?;
            (granularity > 0).then_some(granularity as u64)
        } else {
            None
        };
        Ok(CudaExportSupport { virtual_memory_management, posix_fd, granularity })
    }

    /// Allocates `size` bytes (rounded up to the allocation granularity) of device memory that
    /// CUDA uses at a device pointer and that exports as an opaque fd
    /// ([`CudaAllocation::export`]) for Vulkan, OpenGL, OpenCL or another process.
    ///
    /// Refused before anything is allocated: a device without virtual memory management or POSIX
    /// fd export ([`Error::Unsupported`] naming the `CU_DEVICE_ATTRIBUTE_…` that is off), a size of
    /// 0, a size whose rounding overflows, a size beyond the device's free memory
    /// (`cuMemGetInfo`, [`Error::OutOfMemory`]).
    ///
    /// The description names the Vulkan device with this device's UUID (its driver UUID and a
    /// device-local memory type, see [`VulkanContext::foreign_memory_target`](crate::VulkanContext::foreign_memory_target));
    /// where no Vulkan device has that UUID, the driver UUID is left nil and importers that
    /// compare driver UUIDs (Vulkan, OpenGL, OpenCL) refuse the export with
    /// [`Error::IncompatibleDevice`].
    pub fn allocate_exportable(&self, size: u64) -> Result<CudaAllocation> {
        let support = self.export_support()?;
        let what = || format!("an exportable CUDA allocation of {size} bytes on device {}", self.ordinal());
        if !support.virtual_memory_management {
            return Err(Error::unsupported(
                what(),
                format!("CUDA device {} ({}) has no virtual memory management", self.ordinal(), self.name()),
                "CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED is 0 (cuMemCreate needs it)",
                "allocate in Vulkan and import into CUDA instead (CudaDevice::import_buffer)",
            ));
        }
        if !support.posix_fd {
            return Err(Error::unsupported(
                what(),
                format!("CUDA device {} ({}) cannot export memory as a POSIX fd", self.ordinal(), self.name()),
                "CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED is 0",
                "allocate in Vulkan and import into CUDA instead (CudaDevice::import_buffer)",
            ));
        }
        let Some(granularity) = support.granularity else {
            return Err(Error::unsupported(
                what(),
                "cuMemGetAllocationGranularity reported a granularity of 0",
                "cuMemCreate sizes must be multiples of the allocation granularity",
                "update the NVIDIA driver",
            ));
        };
        let rounded = rounded_size(size, granularity)?;
        let (free, total) = self.mem_get_info()?;
        if rounded > free {
            return Err(Error::OutOfMemory {
                what: format!(
                    "{} (rounded up to {} bytes, the granularity being {granularity}): CUDA device {} has {} of {} \
                     free (cuMemGetInfo)",
                    what(),
                    rounded,
                    self.ordinal(),
                    crate::limits::human_bytes(free),
                    crate::limits::human_bytes(total)
                ),
                advice: "free CUDA or Vulkan memory on this device, or ask for less".into(),
                code: None,
            });
        }
        CudaAllocation::create(self, rounded, size)
    }
}

/// `size` rounded up to a multiple of `granularity`, refusing 0 and overflow (of u64 and of the
/// platform's `usize`, which the driver calls take).
pub(crate) fn rounded_size(size: u64, granularity: u64) -> Result<u64> {
    if size == 0 {
        return Err(Error::invalid(
            "an exportable CUDA allocation of 0 bytes",
            "cuMemCreate allocates at least one granule",
            "ask for a non-zero size",
        ));
    }
    let rounded = size.div_ceil(granularity.max(1)).checked_mul(granularity.max(1));
    match rounded {
        Some(r) if usize::try_from(r).is_ok() => Ok(r),
        _ => Err(Error::invalid(
            format!("an exportable CUDA allocation of {size} bytes"),
            format!("rounded up to the allocation granularity ({granularity} bytes) it overflows the address space"),
            "ask for a size the device can hold",
        )),
    }
}

/// The Vulkan device with `uuid` and its import memory type, looked up once per process and UUID
/// (each lookup creates a Vulkan instance). A missing Vulkan (no loader, no driver) is not an
/// error here, and is asked again next time: CUDA can still use the memory.
fn vulkan_target(uuid: raw_gpu_handle::Uuid) -> Option<crate::vulkan::ForeignMemoryTarget> {
    type Targets = std::collections::HashMap<raw_gpu_handle::Uuid, Option<crate::vulkan::ForeignMemoryTarget>>;
    static TARGETS: std::sync::OnceLock<std::sync::Mutex<Targets>> = std::sync::OnceLock::new();
    let targets = TARGETS.get_or_init(Default::default);
    if let Some(known) = targets.lock().unwrap_or_else(|p| p.into_inner()).get(&uuid) {
        return known.clone();
    }
    let found = crate::VulkanContext::foreign_memory_target(uuid).ok()?;
    targets.lock().unwrap_or_else(|p| p.into_inner()).insert(uuid, found.clone());
    found
}

/// Device memory CUDA allocated exportable (`cuMemCreate`), mapped at a device pointer in this
/// process, exported as opaque fds on request.
///
/// Cheap to clone; buffers ([`AllocatedBuffer`]) hold a clone. Dropping the last clone waits
/// for the context's work (`cuCtxSynchronize`), unmaps the range (`cuMemUnmap`), releases the
/// allocation handle (`cuMemRelease`) and frees the address range (`cuMemAddressFree`), in that
/// order; the physical memory itself lives on while an exported fd or an import of it (in
/// Vulkan, GL, OpenCL or another process) still refers to it. Exported fds belong to the caller.
#[derive(Clone)]
pub struct CudaAllocation {
    inner: Arc<AllocInner>,
}

struct AllocInner {
    device: CudaDevice,
    /// From `cuMemCreate` (an AllocInner exists only once it succeeded).
    handle: sys::CUmemGenericAllocationHandle,
    /// The reserved virtual range; 0 before `cuMemAddressReserve` succeeded.
    ptr: sys::CUdeviceptr,
    mapped: bool,
    size: u64,
    requested: u64,
    description: MemoryDescription,
}

// SAFETY: the allocation handle and device pointer are driver values, not tied to a thread; the
// driver API is thread safe and lava-flow binds the context on the calling thread before use.
unsafe impl Send for AllocInner {}
// SAFETY: as for Send; nothing mutates the fields after creation (Drop has exclusive access).
unsafe impl Sync for AllocInner {}

impl Drop for AllocInner {
    fn drop(&mut self) {
        if let Some(id) = self.description.allocation_id {
            crate::fd::forget_export(id);
        }
        if !self.device.bind_for_drop("an exportable CUDA allocation") {
            return;
        }
        let size = self.size as usize; // checked to fit when the size was rounded
        if self.mapped {
            // SAFETY: the context is bound; cuCtxSynchronize takes no pointers. It waits for work still
            // using the range (every AllocatedBuffer view held a clone, so none is left on the host side).
            let r = unsafe { sys::cuCtxSynchronize() };
            if r != sys::CUresult::CUDA_SUCCESS {
                self.device.defer_error(cu_error("cuCtxSynchronize", r, "waiting before unmapping a CUDA allocation"));
            }
            // SAFETY: ptr..ptr+size is exactly the range cuMemMap mapped (whole allocation at offset 0),
            // unmapped only here, once; no view of it is left (each held a clone of this allocation).
            let r = unsafe { sys::cuMemUnmap(self.ptr, size) };
            if r != sys::CUresult::CUDA_SUCCESS {
                self.device.defer_error(cu_error("cuMemUnmap", r, "unmapping an exportable CUDA allocation"));
            }
        }
        // SAFETY: the handle came from cuMemCreate and is released only here, once; exported fds and
        // imports hold their own references to the physical memory, so they stay valid.
        let r = unsafe { sys::cuMemRelease(self.handle) };
        if r != sys::CUresult::CUDA_SUCCESS {
            self.device.defer_error(cu_error("cuMemRelease", r, "releasing an exportable CUDA allocation"));
        }
        if self.ptr != 0 {
            // SAFETY: ptr..ptr+size is the range cuMemAddressReserve returned, unmapped above (or never
            // mapped), freed only here, once.
            let r = unsafe { sys::cuMemAddressFree(self.ptr, size) };
            if r != sys::CUresult::CUDA_SUCCESS {
                self.device.defer_error(cu_error(
                    "cuMemAddressFree",
                    r,
                    "freeing the address range of a CUDA allocation",
                ));
            }
        }
    }
}

impl std::fmt::Debug for CudaAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaAllocation")
            .field("device", &self.inner.device)
            .field("ptr", &format_args!("{:#x}", self.inner.ptr))
            .field("size", &self.inner.size)
            .field("requested", &self.inner.requested)
            .field("description", &self.inner.description)
            .finish()
    }
}

impl CudaAllocation {
    fn create(device: &CudaDevice, size: u64, requested: u64) -> Result<CudaAllocation> {
        let description = Self::describe(device, size)?;
        device.bind()?;
        let dev = super::device::device_handle(device.ordinal())?;
        let prop = allocation_prop(dev);
        let bytes = size as usize; // rounded_size checked it fits
        let action =
            |step: &str| format!("{step} {size} bytes of exportable memory on CUDA device {}", device.ordinal());
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: the context is bound; `prop` is a fully initialised local (pinned device memory on this
        // device, POSIX fd handle type requested, which export_support found supported); `bytes` is a
        // non-zero multiple of the granularity for these properties; flags must be 0; `handle` is a
        // valid out-pointer.
        let r = unsafe { sys::cuMemCreate(&mut handle, bytes, &prop, 0) };
        check(r, "cuMemCreate", || action("allocating"))?;
        // From here every early return drops `inner`, whose Drop undoes exactly the steps done.
        let mut inner =
            AllocInner { device: device.clone(), handle, ptr: 0, mapped: false, size, requested, description };
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: the context is bound; alignment 0 asks for the default (the granularity), addr 0 lets
        // the driver choose, flags must be 0; `ptr` is a valid out-pointer.
        let r = unsafe { sys::cuMemAddressReserve(&mut ptr, bytes, 0, 0, 0) };
        check(r, "cuMemAddressReserve", || action("reserving an address range for"))?;
        inner.ptr = ptr;
        // SAFETY: ptr..ptr+bytes is the range just reserved, unmapped; the handle's allocation has exactly
        // `bytes` bytes and is mapped whole (offset 0, which CUDA requires); flags must be 0.
        let r = unsafe { sys::cuMemMap(ptr, bytes, 0, handle, 0) };
        check(r, "cuMemMap", || action("mapping"))?;
        inner.mapped = true;
        let access = sys::CUmemAccessDesc {
            location: sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: dev },
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: the range is the one just mapped; `access` is one fully initialised local descriptor
        // (count 1) that outlives the call.
        let r = unsafe { sys::cuMemSetAccess(ptr, bytes, &access, 1) };
        check(r, "cuMemSetAccess", || action("granting this device read-write access to"))?;
        if let Some(id) = inner.description.allocation_id {
            crate::fd::record_export(id, size, inner.description.memory_type_index);
        }
        Ok(CudaAllocation { inner: Arc::new(inner) })
    }

    /// The description every export of an allocation of `size` bytes on `device` carries.
    fn describe(device: &CudaDevice, size: u64) -> Result<MemoryDescription> {
        let target = vulkan_target(device.uuid());
        let (identity, memory_type_index, memory_properties) = match target {
            Some(t) => (t.identity, t.memory_type_index, t.memory_properties),
            None => (
                DeviceIdentity { device_uuid: device.uuid(), driver_uuid: raw_gpu_handle::Uuid::NIL, luid: None },
                0,
                MemoryProperties::DEVICE_LOCAL,
            ),
        };
        Ok(MemoryDescription {
            handle_kind: MemoryHandleKind::OpaqueFd,
            allocation_size: size,
            memory_type_index,
            memory_properties,
            dedicated: false,
            device: identity,
            allocation_id: Some(crate::vulkan::next_allocation_id()),
        })
    }

    /// What each export carries: opaque fd, the whole (rounded) size, the Vulkan device's
    /// identity and memory type, not dedicated, the allocation id.
    pub fn description(&self) -> &MemoryDescription {
        &self.inner.description
    }

    /// The device it lives on.
    pub fn device(&self) -> &CudaDevice {
        &self.inner.device
    }

    /// Size in bytes: the requested size rounded up to the allocation granularity (what the
    /// description carries and importers must be given).
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The size that was asked for.
    pub fn requested_size(&self) -> u64 {
        self.inner.requested
    }

    /// The device pointer of the start of the allocation, valid while the allocation lives.
    pub fn device_ptr_raw(&self) -> sys::CUdeviceptr {
        self.inner.ptr
    }

    /// The raw `CUmemGenericAllocationHandle`, for calls lava-flow does not wrap. Do not release it.
    pub fn raw_handle(&self) -> sys::CUmemGenericAllocationHandle {
        self.inner.handle
    }

    /// Exports the whole allocation as a new opaque fd (`cuMemExportToShareableHandle`), owned by
    /// the caller: an import consumes it, dropping it closes it. Each call makes a fresh fd.
    pub fn export(&self) -> Result<ExportedMemory> {
        let device = &self.inner.device;
        device.bind()?;
        let mut fd: std::ffi::c_int = -1;
        // SAFETY: the context is bound; the handle is alive (self holds it) and was created with the POSIX
        // fd handle type; for that type the shareable handle is an int, and `fd` is a local int the
        // driver writes; flags must be 0.
        let r = unsafe {
            sys::cuMemExportToShareableHandle(
                (&mut fd as *mut std::ffi::c_int).cast(),
                self.inner.handle,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                0,
            )
        };
        check(r, "cuMemExportToShareableHandle", || {
            format!("exporting {} bytes of CUDA memory as a POSIX fd", self.inner.size)
        })?;
        if fd < 0 {
            return Err(Error::InvalidHandle {
                what: "the fd cuMemExportToShareableHandle returned".into(),
                reason: format!("it is {fd}, not an fd"),
                advice: "update the NVIDIA driver".into(),
            });
        }
        // SAFETY: cuMemExportToShareableHandle succeeded and returned a new open fd, which the caller of
        // the export owns (the driver keeps no claim on it); it is wrapped exactly once, here.
        let handle = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(MemoryHandle::new(handle, self.inner.description))
    }

    /// A buffer of `size` bytes at `offset` in the allocation: no driver call, one allocation
    /// (and one export) serves many buffers. The offset must be a multiple of
    /// [`BUFFER_ALIGNMENT`] and the range non-empty and inside the allocation.
    pub fn buffer(&self, offset: u64, size: u64) -> Result<AllocatedBuffer<u8>> {
        super::memory::check_range(offset, size, self.inner.size, "the CUDA allocation")?;
        if offset % BUFFER_ALIGNMENT != 0 {
            return Err(Error::invalid(
                format!("a buffer at offset {offset} of a CUDA allocation"),
                format!("buffer offsets must be multiples of {BUFFER_ALIGNMENT} bytes (what Vulkan importers bind at)"),
                "round the offset up",
            ));
        }
        Ok(AllocatedBuffer {
            allocation: self.clone(),
            ptr: self.inner.ptr + offset,
            offset,
            len: size as usize, // check_range checked it fits
            stream: self.inner.device.stream().clone(),
            _t: PhantomData,
        })
    }

    /// The whole allocation as one buffer.
    pub fn whole(&self) -> Result<AllocatedBuffer<u8>> {
        self.buffer(0, self.inner.size)
    }
}

/// A buffer in a [`CudaAllocation`]: `len` elements of `T` at a device pointer, exportable as an
/// [`ExportedBuffer`] (the allocation's fd with this buffer's offset and size).
///
/// It works with cudarc like [`CudaBuffer`](super::CudaBuffer): `DevicePtr`/`DevicePtrMut` and
/// kernel arguments. Other APIs that imported the allocation see the same bytes; order their
/// work with CUDA's through stream order and semaphores, as for imported memory.
pub struct AllocatedBuffer<T = u8> {
    allocation: CudaAllocation,
    ptr: sys::CUdeviceptr,
    offset: u64,
    len: usize,
    stream: Arc<CudaStream>,
    _t: PhantomData<*const T>,
}

// SAFETY: a device pointer is an address usable from any thread once the context is bound
// (lava-flow binds it before each call); the allocation it points into is kept alive by the clone.
unsafe impl<T> Send for AllocatedBuffer<T> {}
// SAFETY: as for Send; &AllocatedBuffer offers no host view of the memory, only driver copies.
unsafe impl<T> Sync for AllocatedBuffer<T> {}

impl<T> std::fmt::Debug for AllocatedBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocatedBuffer")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .field("element_size", &std::mem::size_of::<T>())
            .field("offset", &self.offset)
            .field("allocation_size", &self.allocation.inner.size)
            .finish()
    }
}

impl<T> AllocatedBuffer<T> {
    /// The device pointer, valid while this buffer lives.
    pub fn device_ptr_raw(&self) -> sys::CUdeviceptr {
        self.ptr
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// Offset in the allocation.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The allocation.
    pub fn allocation(&self) -> &CudaAllocation {
        &self.allocation
    }

    /// The device.
    pub fn device(&self) -> &CudaDevice {
        &self.allocation.inner.device
    }

    /// Exports the buffer: a fresh fd of the whole allocation (consumed by the import) with this
    /// buffer's offset and size. An importer that already imported the allocation (same
    /// allocation id) maps the buffer from its earlier import where it caches blocks.
    pub fn export(&self) -> Result<ExportedBuffer> {
        let memory = self.allocation.export()?;
        Ok(BufferHandle::new(
            memory,
            BufferDescription { offset: self.offset, size: self.size_bytes() as u64, alignment: BUFFER_ALIGNMENT },
        ))
    }

    /// Reinterprets the bytes as elements of `U`: the size must be a multiple of `U`'s size and
    /// the pointer aligned for it.
    pub fn cast<U: DeviceRepr>(self) -> Result<AllocatedBuffer<U>> {
        let bytes = self.size_bytes();
        let (size, align) = (std::mem::size_of::<U>(), std::mem::align_of::<U>());
        if size == 0 || bytes % size != 0 || self.ptr % align as u64 != 0 {
            return Err(Error::invalid(
                format!("view of a {bytes}-byte buffer at {:#x} as {}", self.ptr, std::any::type_name::<U>()),
                format!("the size must be a multiple of {size} bytes and the address aligned to {align}"),
                "take a buffer that fits the element type",
            ));
        }
        Ok(AllocatedBuffer {
            len: bytes / size,
            allocation: self.allocation,
            ptr: self.ptr,
            offset: self.offset,
            stream: self.stream,
            _t: PhantomData,
        })
    }

    fn check_len(&self, what: &str, host_len: usize) -> Result<()> {
        if host_len != self.len {
            return Err(Error::invalid(
                format!("{what} of {host_len} elements"),
                format!("the buffer holds {} elements", self.len),
                "pass a host slice of exactly the buffer's length",
            ));
        }
        Ok(())
    }

    /// Waits for the buffer's stream, the context already bound by the caller.
    fn wait_for_stream(&self) -> Result<()> {
        // SAFETY: the caller bound this device's context; the stream belongs to it and self.stream keeps
        // it alive.
        let r = unsafe { sys::cuStreamSynchronize(self.stream.cu_stream()) };
        check(r, "cuStreamSynchronize", || "waiting for a copy on lava-flow's CUDA stream".into())
    }
}

impl<T: DeviceRepr + Copy> AllocatedBuffer<T> {
    /// Copies `data` (exactly [`len`](Self::len) elements) into the buffer and waits for the copy.
    pub fn copy_from_host(&self, data: &[T]) -> Result<()> {
        self.check_len("copy from the host", data.len())?;
        self.device().bind()?;
        // SAFETY: the context is bound; `data` holds len elements, i.e. size_bytes() bytes, and
        // ptr..ptr+size_bytes() lies inside the mapped allocation (buffer(), cast()); the stream is waited
        // for below before `data`'s borrow ends, even on error.
        let r = unsafe {
            sys::cuMemcpyHtoDAsync_v2(self.ptr, data.as_ptr().cast(), self.size_bytes(), self.stream.cu_stream())
        };
        let synced = self.wait_for_stream();
        check(r, "cuMemcpyHtoDAsync_v2", || format!("copying {} bytes into a CUDA allocation", self.size_bytes()))?;
        synced
    }
}

impl<T: AnyBitPattern> AllocatedBuffer<T> {
    /// Copies the buffer into `out` (exactly [`len`](Self::len) elements) and waits for the copy.
    pub fn copy_to_host_into(&self, out: &mut [T]) -> Result<()> {
        self.check_len("copy to the host", out.len())?;
        self.device().bind()?;
        // SAFETY: as in copy_from_host, with `out` (exclusively borrowed, len elements) as destination;
        // T: AnyBitPattern, so whatever bytes the device holds are valid T values.
        let r = unsafe {
            sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr().cast(), self.ptr, self.size_bytes(), self.stream.cu_stream())
        };
        let synced = self.wait_for_stream();
        check(r, "cuMemcpyDtoHAsync_v2", || format!("copying {} bytes out of a CUDA allocation", self.size_bytes()))?;
        synced
    }

    /// Copies the buffer into a new vector and waits for the copy.
    pub fn copy_to_host(&self) -> Result<Vec<T>>
    where
        T: Default,
    {
        let mut out = vec![T::default(); self.len];
        self.copy_to_host_into(&mut out)?;
        Ok(out)
    }
}

impl AllocatedBuffer<u8> {
    /// Fills the buffer with a repeated 32-bit value (`cuMemsetD32Async`) on lava-flow's stream
    /// and waits for it. The size must be a multiple of 4.
    pub fn fill_u32(&self, value: u32) -> Result<()> {
        if self.len % 4 != 0 || self.ptr % 4 != 0 {
            return Err(Error::invalid(
                format!("32-bit fill of {} bytes", self.len),
                "the size and address must be multiples of 4",
                "fill a 4-byte aligned range",
            ));
        }
        self.device().bind()?;
        // SAFETY: the context is bound; ptr is 4-byte aligned and ptr..ptr+len lies inside the mapped
        // allocation; len / 4 words cover exactly those bytes; the stream is self's.
        let r = unsafe { sys::cuMemsetD32Async(self.ptr, value, self.len / 4, self.stream.cu_stream()) };
        let synced = self.wait_for_stream();
        check(r, "cuMemsetD32Async", || format!("filling {} bytes of a CUDA allocation", self.len))?;
        synced
    }
}

impl_cudarc_views!(AllocatedBuffer);

#[cfg(test)]
mod tests {
    use super::rounded_size;

    #[test]
    fn sizes_round_up_to_the_granularity_and_bad_ones_are_refused_before_any_driver_call() {
        assert_eq!(rounded_size(1, 2 << 20).unwrap(), 2 << 20);
        assert_eq!(rounded_size(2 << 20, 2 << 20).unwrap(), 2 << 20);
        assert_eq!(rounded_size((2 << 20) + 1, 2 << 20).unwrap(), 4 << 20);
        let zero = rounded_size(0, 2 << 20).unwrap_err().to_string();
        assert!(zero.contains("0 bytes"), "{zero}");
        let huge = rounded_size(u64::MAX - 5, 2 << 20).unwrap_err().to_string();
        assert!(huge.contains("overflows"), "{huge}");
    }
}
