//! External memory imported into CUDA, and buffers mapped from it.

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{sys, CudaStream, DeviceRepr};
use raw_gpu_handle::{ExportedMemory, MemoryDescription, MemoryHandleKind};

use super::{check, cu_error, CudaDevice};
use crate::{Error, Result};

/// One exported allocation imported into CUDA (`cuImportExternalMemory`).
///
/// Cheap to clone. Every buffer or texture mapped from it holds a clone, so the import is
/// destroyed (`cuDestroyExternalMemory`) only after the last mapping is freed; the import in
/// turn holds its [`CudaDevice`], so the CUDA context outlives it.
#[derive(Clone)]
pub struct ImportedMemory {
    pub(crate) inner: Arc<ImportInner>,
}

pub(crate) struct ImportInner {
    pub(crate) device: CudaDevice,
    pub(crate) handle: sys::CUexternalMemory,
    pub(crate) description: MemoryDescription,
}

// SAFETY: a CUexternalMemory is a driver handle, not tied to the thread that made it; the driver
// API is thread safe, and lava-flow binds the device's context on the calling thread before use.
unsafe impl Send for ImportInner {}
// SAFETY: as for Send; no method mutates the handle or description after creation.
unsafe impl Sync for ImportInner {}

impl Drop for ImportInner {
    fn drop(&mut self) {
        if !self.device.bind_for_drop("imported memory") {
            return;
        }
        // SAFETY: the handle came from cuImportExternalMemory and is destroyed only here, once (Drop);
        // every mapping or mipmapped array made from it holds an Arc of this import, so all were freed;
        // the context was bound just above.
        let r = unsafe { sys::cuDestroyExternalMemory(self.handle) };
        if r != sys::CUresult::CUDA_SUCCESS {
            self.device.defer_error(cu_error("cuDestroyExternalMemory", r, "releasing imported memory"));
        }
    }
}

impl std::fmt::Debug for ImportedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedMemory")
            .field("device", &self.inner.device)
            .field("description", &self.inner.description)
            .finish()
    }
}

impl ImportedMemory {
    /// The checks every import makes on the description before any fd is looked at: an opaque
    /// fd, from this device, of a non-empty allocation. The block cache makes them before a
    /// lookup too, so a cache hit is refused exactly where a fresh import would be.
    pub(crate) fn check_description(device: &CudaDevice, description: &MemoryDescription) -> Result<()> {
        if description.handle_kind != MemoryHandleKind::OpaqueFd {
            return Err(Error::unsupported(
                format!("importing {} memory into CUDA", description.handle_kind),
                "lava-flow's CUDA importer takes opaque fds only",
                "CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD (DMA-BUF import needs CUDA 13)",
                "export the allocation as an opaque fd (MemoryLocation::GpuVulkan)",
            ));
        }
        device.check_identity(description.handle_kind, &description.device)?;
        if description.allocation_size == 0 {
            return Err(Error::invalid(
                "allocation size 0",
                "cuImportExternalMemory needs the size of the whole allocation",
                "pass the description exactly as exported",
            ));
        }
        Ok(())
    }

    pub(crate) fn import(device: &CudaDevice, memory: ExportedMemory) -> Result<ImportedMemory> {
        // Every early return drops `memory`, closing the fd exactly once.
        let description = memory.description;
        Self::check_description(device, &description)?;
        let fd = crate::fd::check_exported_memory(memory.handle, &description, "CUDA external memory")?;
        device.bind()?;
        let action = || {
            format!(
                "importing {} bytes of {} memory{} into CUDA device {}",
                description.allocation_size,
                description.handle_kind,
                if description.dedicated { " (dedicated)" } else { "" },
                device.ordinal()
            )
        };
        // The driver gets a copy: it owns it after a successful import (CUDA docs: ownership
        // of the fd is transferred), and `import_consuming` closes the caller's fd exactly once
        // whatever the driver does with the copy on failure (closed only where provably ours).
        let handle = crate::fd::import_consuming(fd, |raw| {
            let mut handle_desc = sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC {
                type_: sys::CUexternalMemoryHandleType::CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD,
                // SAFETY: every field of the CUDA_EXTERNAL_MEMORY_HANDLE_DESC handle union is an integer or a
                // raw pointer, for which all-zero bytes are a valid value.
                handle: unsafe { std::mem::zeroed() },
                size: description.allocation_size,
                flags: if description.dedicated { sys::CUDA_EXTERNAL_MEMORY_DEDICATED } else { 0 },
                reserved: [0; 16],
            };
            handle_desc.handle.fd = raw;
            let mut handle: sys::CUexternalMemory = std::ptr::null_mut();
            // SAFETY: bind() made the context current; handle_desc is fully initialised with the whole
            // allocation's size and the exporter's dedicated flag; `raw` is an open fd that import_consuming
            // hands to the driver (which owns it on success); `handle` is a valid out-pointer.
            let r = unsafe { sys::cuImportExternalMemory(&mut handle, &handle_desc) };
            check(r, "cuImportExternalMemory", action)?;
            Ok(handle)
        })?;
        Ok(ImportedMemory { inner: Arc::new(ImportInner { device: device.clone(), handle, description }) })
    }

    /// What was imported.
    pub fn description(&self) -> &MemoryDescription {
        &self.inner.description
    }

    /// The device it was imported into.
    pub fn device(&self) -> &CudaDevice {
        &self.inner.device
    }

    /// The raw `CUexternalMemory`, for calls lava-flow does not wrap. Do not destroy it.
    pub fn raw(&self) -> sys::CUexternalMemory {
        self.inner.handle
    }

    /// Maps `size` bytes at `offset` (where Vulkan bound the buffer) as a device pointer
    /// (`cuExternalMemoryGetMappedBuffer`). Several mappings of one import may coexist.
    pub fn map_buffer(&self, offset: u64, size: u64) -> Result<CudaBuffer<u8>> {
        let mapping = Arc::new(self.map_range(offset, size)?);
        CudaBuffer::in_mapping(mapping, offset, size)
    }

    /// One `cuExternalMemoryGetMappedBuffer` of `size` bytes at `offset`, checked to lie inside
    /// the allocation. The mapping holds a clone of this import.
    pub(crate) fn map_range(&self, offset: u64, size: u64) -> Result<Mapping> {
        check_range(offset, size, self.inner.description.allocation_size, "the imported allocation")?;
        let device = &self.inner.device;
        device.bind()?;
        let desc = sys::CUDA_EXTERNAL_MEMORY_BUFFER_DESC { offset, size, flags: 0, reserved: [0; 16] };
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: bind() made the context current; the import is alive (self holds it); the range is
        // non-empty and inside the allocation (check_range above); `ptr` is a valid out-pointer.
        let r = unsafe { sys::cuExternalMemoryGetMappedBuffer(&mut ptr, self.inner.handle, &desc) };
        check(r, "cuExternalMemoryGetMappedBuffer", || {
            format!("mapping {size} bytes at offset {offset} of imported memory")
        })?;
        Ok(Mapping { memory: self.clone(), ptr, offset, size })
    }
}

/// Refuses an empty range, or one that does not lie inside `total` bytes or the address space.
pub(crate) fn check_range(offset: u64, size: u64, total: u64, inside: &str) -> Result<()> {
    let end = offset.checked_add(size);
    if size == 0 || end.is_none_or(|end| end > total) {
        return Err(Error::invalid(
            format!("mapping of {size} bytes at offset {offset}"),
            format!("{inside} holds {total} bytes and a mapping must be non-empty and inside it"),
            "map the buffer's offset and size from its export description",
        ));
    }
    if usize::try_from(size).is_err() {
        return Err(Error::invalid(
            format!("mapping of {size} bytes"),
            "larger than this platform's address space",
            "map a smaller range",
        ));
    }
    Ok(())
}

/// One `cuExternalMemoryGetMappedBuffer` mapping, freed with `cuMemFree` when the last
/// [`CudaBuffer`] view of it goes. It holds its import, so the import is destroyed only after
/// its last mapping. The block cache keeps (weakly) one whole-block mapping per pooled block, and
/// every buffer of the block is a view into it.
pub(crate) struct Mapping {
    memory: ImportedMemory,
    ptr: sys::CUdeviceptr,
    offset: u64,
    size: u64,
}

impl Mapping {
    /// The import it maps.
    pub(crate) fn memory(&self) -> &ImportedMemory {
        &self.memory
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let device = &self.memory.inner.device;
        if !device.bind_for_drop("a mapped buffer") {
            return;
        }
        // SAFETY: ptr came from cuExternalMemoryGetMappedBuffer, which CUDA says to free with cuMemFree,
        // and is freed only here, once; every view holds an Arc of this mapping, so none is left;
        // cuMemFree synchronizes with device work that still uses it.
        let r = unsafe { sys::cuMemFree_v2(self.ptr) };
        if r != sys::CUresult::CUDA_SUCCESS {
            device.defer_error(cu_error("cuMemFree_v2", r, "freeing a mapped buffer"));
        }
    }
}

/// An imported buffer as CUDA device memory: `len` elements of `T` at a device pointer.
///
/// It works with cudarc where its own `CudaSlice` does: `DevicePtr`/`DevicePtrMut` (so
/// `stream.memcpy_htod(&host, &mut buffer)`, `memcpy_dtoh`, `memcpy_dtod`, `memset_zeros`) and
/// kernel arguments (`stream.launch_builder(&f).arg(&mut buffer)`). cudarc's automatic event
/// tracking does not cover imported memory: order work with stream order or the imported
/// semaphores, as Vulkan does not see cudarc's events either.
pub struct CudaBuffer<T = u8> {
    mapping: Arc<Mapping>,
    ptr: sys::CUdeviceptr,
    /// Offset of the buffer in the imported allocation (`ptr` is the mapping's pointer plus the
    /// distance from the mapping's own offset).
    offset: u64,
    len: usize,
    stream: Arc<CudaStream>,
    _t: PhantomData<*const T>,
}

// SAFETY: a device pointer is an address, usable from any thread once the context is bound
// (lava-flow binds it before each call); the Arc keeps the mapping it points into alive.
unsafe impl<T> Send for CudaBuffer<T> {}
// SAFETY: as for Send; &CudaBuffer offers no host view of the memory, only driver copies.
unsafe impl<T> Sync for CudaBuffer<T> {}

impl<T> std::fmt::Debug for CudaBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBuffer")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .field("element_size", &std::mem::size_of::<T>())
            .field("offset_in_allocation", &self.offset)
            .field("mapping_offset", &self.mapping.offset)
            .field("mapping_size", &self.mapping.size)
            .finish()
    }
}

impl CudaBuffer<u8> {
    /// The `size` bytes at `offset` of the allocation, inside `mapping`: no driver call, the
    /// pointer is the mapping's plus the distance between the offsets.
    pub(crate) fn in_mapping(mapping: Arc<Mapping>, offset: u64, size: u64) -> Result<CudaBuffer<u8>> {
        let inside = offset
            .checked_sub(mapping.offset)
            .filter(|rel| rel.checked_add(size).is_some_and(|end| end <= mapping.size));
        let (Some(rel), Ok(len)) = (inside, usize::try_from(size)) else {
            return Err(Error::invalid(
                format!("a buffer of {size} bytes at offset {offset}"),
                format!(
                    "the mapping it would be a view of covers offsets {} to {}",
                    mapping.offset,
                    mapping.offset.saturating_add(mapping.size)
                ),
                "pass the buffer description the exporter gave, unchanged",
            ));
        };
        if size == 0 {
            return Err(Error::invalid("a buffer of 0 bytes", "CUDA buffers are non-empty", "map a non-empty range"));
        }
        let stream = mapping.memory.inner.device.stream().clone();
        Ok(CudaBuffer { ptr: mapping.ptr + rel, mapping, offset, len, stream, _t: PhantomData })
    }
}

impl<T> CudaBuffer<T> {
    /// The device pointer (`CUdeviceptr`), valid while this buffer lives.
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

    /// The import this buffer is mapped from.
    pub fn memory(&self) -> &ImportedMemory {
        &self.mapping.memory
    }

    /// Offset of the buffer in the imported allocation (where Vulkan bound it).
    pub fn offset_in_allocation(&self) -> u64 {
        self.offset
    }

    /// The device.
    pub fn device(&self) -> &CudaDevice {
        &self.mapping.memory.inner.device
    }

    /// Reinterprets the bytes as elements of `U`. The size must be a multiple of `U`'s size
    /// and the pointer aligned for it.
    pub fn cast<U: DeviceRepr>(self) -> Result<CudaBuffer<U>> {
        let bytes = self.size_bytes();
        let (size, align) = (std::mem::size_of::<U>(), std::mem::align_of::<U>());
        if size == 0 || bytes % size != 0 || self.ptr % align as u64 != 0 {
            return Err(Error::invalid(
                format!("view of a {bytes}-byte buffer at {:#x} as {}", self.ptr, std::any::type_name::<U>()),
                format!("the size must be a multiple of {size} bytes and the address aligned to {align}"),
                "map a range that fits the element type",
            ));
        }
        Ok(CudaBuffer {
            len: bytes / size,
            mapping: self.mapping,
            ptr: self.ptr,
            offset: self.offset,
            stream: self.stream,
            _t: PhantomData,
        })
    }

    /// Another view of the same mapping (both stay valid; the mapping is freed after the last).
    pub fn clone_view(&self) -> CudaBuffer<T> {
        CudaBuffer {
            mapping: self.mapping.clone(),
            ptr: self.ptr,
            offset: self.offset,
            len: self.len,
            stream: self.stream.clone(),
            _t: PhantomData,
        }
    }

    /// Waits for the buffer's stream, with the context already bound by the caller (unlike
    /// `CudaDevice::synchronize`, it never returns early with an error deferred by another thread).
    fn wait_for_stream(&self) -> Result<()> {
        // SAFETY: the caller bound this device's context; the stream belongs to it and is kept
        // alive by self.stream.
        let r = unsafe { sys::cuStreamSynchronize(self.stream.cu_stream()) };
        check(r, "cuStreamSynchronize", || "waiting for a copy on lava-flow's CUDA stream".into())
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
}

/// Element types for which every bit pattern is a valid value, so that bytes another device or
/// process wrote can be copied into them on the host. cudarc's `DeviceRepr` does not promise that
/// (it is implemented for `bool`, whose only valid bytes are 0 and 1). Sealed: implemented for the
/// integer and floating-point types.
///
/// ```compile_fail,E0277
/// fn flags(buffer: lava_flow::cuda::CudaBuffer<u8>) -> lava_flow::Result<Vec<bool>> {
///     buffer.cast::<bool>()?.copy_to_host() // any byte but 0 or 1 would be an invalid bool
/// }
/// ```
pub trait AnyBitPattern: DeviceRepr + Copy + sealed::Sealed {}

mod sealed {
    pub trait Sealed {}
}

macro_rules! any_bit_pattern {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl AnyBitPattern for $t {}
    )*};
}
any_bit_pattern!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);

impl<T: DeviceRepr + Copy> CudaBuffer<T> {
    /// Copies `data` (exactly [`len`](Self::len) elements) into the buffer and waits for the copy.
    pub fn copy_from_host(&self, data: &[T]) -> Result<()> {
        self.check_len("copy from the host", data.len())?;
        let device = self.device();
        device.bind()?;
        // SAFETY: bind() made the context current; `data` holds len elements, i.e. size_bytes() bytes
        // (check_len), and the device range ptr..ptr+size_bytes() lies inside the mapping (in_mapping,
        // cast); the stream is waited for below before `data`'s borrow ends, even on error.
        let r = unsafe {
            sys::cuMemcpyHtoDAsync_v2(self.ptr, data.as_ptr().cast(), self.size_bytes(), self.stream.cu_stream())
        };
        // Waited for even when the call reported an error, so no copy can still read `data`
        // after this returns.
        let synced = self.wait_for_stream();
        check(r, "cuMemcpyHtoDAsync_v2", || format!("copying {} bytes into an imported buffer", self.size_bytes()))?;
        synced
    }
}

impl<T: AnyBitPattern> CudaBuffer<T> {
    /// Copies the buffer into `out` (exactly [`len`](Self::len) elements) and waits for the copy.
    pub fn copy_to_host_into(&self, out: &mut [T]) -> Result<()> {
        self.check_len("copy to the host", out.len())?;
        let device = self.device();
        device.bind()?;
        // SAFETY: as in copy_from_host, with `out` (exclusively borrowed, len elements) as destination;
        // T: AnyBitPattern, so whatever bytes the device holds are valid T values.
        let r = unsafe {
            sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr().cast(), self.ptr, self.size_bytes(), self.stream.cu_stream())
        };
        // Waited for even when the call reported an error, so no copy can still write `out`
        // after this returns.
        let synced = self.wait_for_stream();
        check(r, "cuMemcpyDtoHAsync_v2", || format!("copying {} bytes out of an imported buffer", self.size_bytes()))?;
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

impl CudaBuffer<u8> {
    /// Fills the buffer with a repeated 32-bit value (`cuMemsetD32Async`) on lava-flow's stream,
    /// without waiting. The size must be a multiple of 4.
    pub fn fill_u32(&self, value: u32) -> Result<()> {
        if self.len % 4 != 0 || self.ptr % 4 != 0 {
            return Err(Error::invalid(
                format!("32-bit fill of {} bytes", self.len),
                "the size and address must be multiples of 4",
                "fill a 4-byte aligned range",
            ));
        }
        self.device().bind()?;
        // SAFETY: bind() made the context current; ptr is 4-byte aligned and ptr..ptr+len lies inside
        // the mapping; len / 4 words cover exactly those bytes; the stream is self's.
        let r = unsafe { sys::cuMemsetD32Async(self.ptr, value, self.len / 4, self.stream.cu_stream()) };
        check(r, "cuMemsetD32Async", || format!("filling {} bytes of an imported buffer", self.len))
    }
}

impl_cudarc_views!(CudaBuffer);
