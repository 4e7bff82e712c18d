//! Host access: `HostMapping` (kDLCPU DLPack, NumPy, memoryview), `HostMemory`, `Allocator`.

use std::sync::{Arc, Mutex};

use lava_flow::ipc::{shm, SharedObject as RustShared};
use lava_flow::raw_gpu_handle::{BufferHandle, MemoryHandleKind, MemoryProperties};
use lava_flow::vulkan::AllocationStrategy;
use lava_flow::{Buffer, BufferOptions, MemoryAllocator, MemoryLocation, SharedHostMemory};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::dlpack::{self, Keep, Layout, Region, Tensor, KDL_CPU};
use crate::errors::{closed, invalid, IntoPy};
use crate::objects::SharedObject;

/// Locks a mutex whatever a panicking holder left (the values here stay consistent).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared memory mapped into this process: hand it to `numpy.from_dlpack`, or take a typed
/// `view(...)`, or a `memoryview()`. The bytes stay mapped while this object (until `close()`),
/// a view, a DLPack capsule or an array made from them lives. Another process may write them at
/// any time: synchronize with it (a semaphore) before reading what it wrote.
#[pyclass(module = "lava_flow", frozen)]
pub struct HostMapping {
    region: Mutex<Option<Region>>,
}

impl HostMapping {
    pub fn new(ptr: *mut u8, len: u64, keep: Keep) -> HostMapping {
        HostMapping {
            region: Mutex::new(Some(Region {
                ptr: ptr as usize as u64,
                len,
                device: (KDL_CPU, 0),
                keep,
                writable: true,
            })),
        }
    }

    fn region(&self) -> PyResult<Region> {
        lock(&self.region).clone().ok_or_else(|| closed("host mapping"))
    }
}

#[pymethods]
impl HostMapping {
    /// DLPack export of the whole mapping as a 1-D `uint8` array (`numpy.from_dlpack(mapping)`).
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        dlpack::export(py, &self.region()?, &Layout::bytes(self.size()?), None, stream, max_version, dl_device, copy)
    }

    /// `(kDLCPU, 0)`.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (KDL_CPU, 0)
    }

    /// A typed view: `dtype` a name, NumPy or torch dtype; `shape` an int or a tuple; `strides`
    /// in elements (row-major when None); `offset` in bytes. Refused when it does not fit.
    #[pyo3(signature = (dtype, shape, strides=None, offset=0))]
    fn view(
        &self,
        dtype: &Bound<'_, PyAny>,
        shape: &Bound<'_, PyAny>,
        strides: Option<&Bound<'_, PyAny>>,
        offset: u64,
    ) -> PyResult<Tensor> {
        dlpack::view(self.region()?, None, dtype, shape, strides, offset)
    }

    /// A writable `memoryview` of the bytes (format `B`), which keeps them mapped.
    fn memoryview<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let region = self.region()?;
        let len = region.len;
        let ptr = region.ptr;
        let keep = Bound::new(py, Tensor { layout: Layout::bytes(len), region, ready: None })?;
        // ctypes builds the buffer-protocol object (the stable ABI of Python 3.9 has no way to
        // implement the protocol); the array holds the view, which holds the mapping.
        let ctypes = py.import("ctypes")?;
        let array_type = ctypes.getattr("c_ubyte")?.mul(len)?;
        let array = array_type.call_method1("from_address", (ptr,))?;
        array.setattr("_lava_flow_keep", keep)?;
        py.import("builtins")?.getattr("memoryview")?.call1((array,))?.call_method1("cast", ("B",))
    }

    /// The address of the first byte.
    #[getter]
    fn ptr(&self) -> PyResult<u64> {
        Ok(self.region()?.ptr)
    }

    /// The number of bytes.
    #[getter]
    fn size(&self) -> PyResult<u64> {
        Ok(self.region()?.len)
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.region()?.len as usize)
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.region).is_none()
    }

    /// Drops this object's hold on the mapping: it is unmapped once no view, capsule or array
    /// made from it is alive either. Closing twice is allowed.
    fn close(&self) {
        lock(&self.region).take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) {
        self.close();
    }

    fn __repr__(&self) -> String {
        match &*lock(&self.region) {
            Some(r) => format!("lava_flow.HostMapping(size={}, ptr=0x{:x})", r.len, r.ptr),
            None => "lava_flow.HostMapping(closed)".into(),
        }
    }
}

/// Maps a received object's bytes on the host: shared host memory (a memfd) by mmap, host-visible
/// Vulkan memory by importing it into the Vulkan device it names and mapping it there. The
/// object keeps its own fd (this maps a duplicate). Returns the first byte's address, the length
/// and what keeps the mapping alive.
pub fn map_region(object: &RustShared) -> lava_flow::Result<(*mut u8, u64, Keep)> {
    use lava_flow::Error;
    let Some(memory) = object.memory() else {
        return Err(Error::invalid(
            format!("host mapping of a {}", object.kind_name()),
            "only memory, buffers and textures hold bytes",
            "map a memory, buffer or texture object",
        ));
    };
    let desc = memory.description;
    let (offset, size) = match object {
        RustShared::Buffer(b) => (b.buffer.offset, b.buffer.size),
        RustShared::Texture(t) => (t.texture.offset, t.texture.size),
        _ => (0, desc.allocation_size),
    };
    if offset.checked_add(size).is_none_or(|end| end > desc.allocation_size) {
        return Err(Error::invalid(
            format!("{} of {size} bytes at offset {offset}", object.kind_name()),
            format!("its allocation holds {} bytes", desc.allocation_size),
            "the server's description is inconsistent: re-publish the object",
        ));
    }
    match desc.handle_kind {
        MemoryHandleKind::HostMemfd => {
            let (_, fd) = object.try_clone()?.into_parts();
            let host = shm::map_sealed(fd, desc.allocation_size)?;
            // SAFETY: `offset` is inside the mapping (checked above against the allocation size,
            // which `map_sealed` mapped whole).
            let ptr = unsafe { host.as_ptr().add(offset as usize) };
            Ok((ptr, size, Arc::new(host)))
        }
        MemoryHandleKind::OpaqueFd if desc.memory_properties.contains(MemoryProperties::HOST_VISIBLE) => {
            if !desc.memory_properties.contains(MemoryProperties::HOST_COHERENT) {
                return Err(Error::unsupported(
                    format!("mapping {} bytes of host-visible memory without HOST_COHERENT", desc.allocation_size),
                    "host writes would need explicit flushes, which DLPack consumers do not make",
                    "VK_MEMORY_PROPERTY_HOST_COHERENT_BIT: vkFlushMappedMemoryRanges is needed without it",
                    "allocate HOST_COHERENT memory (lava-flow's host-visible allocations are) or shared host memory",
                ));
            }
            let ctx = crate::devices::vulkan(desc.device.device_uuid)?;
            let (_, fd) = object.try_clone()?.into_parts();
            let whole = lava_flow::raw_gpu_handle::MemoryHandle::new(fd, desc);
            let buffer = BufferHandle::new(
                whole,
                lava_flow::raw_gpu_handle::BufferDescription { offset: 0, size: desc.allocation_size, alignment: 1 },
            );
            let buffer = Buffer::import(&ctx, buffer)?;
            let base = buffer.memory().host_pointer()?;
            // SAFETY: the pointer maps the whole allocation and `offset` lies inside it (checked above).
            let ptr = unsafe { base.add(offset as usize) };
            Ok((ptr, size, Arc::new(buffer)))
        }
        kind => Err(Error::invalid(
            format!("host mapping of {kind} memory"),
            "it is not host-visible: only the device can reach it",
            "import it into CUDA (import_cuda) or Vulkan, or have the producer allocate host-visible or shared host \
             memory",
        )),
    }
}

/// [`map_region`] as a `HostMapping`.
pub fn map_shared(py: Python<'_>, object: &RustShared) -> PyResult<HostMapping> {
    let (ptr, len, keep) = py.detach(|| map_region(object).map(|(p, l, k)| (p as usize, l, k))).py_err()?;
    Ok(HostMapping::new(ptr as *mut u8, len, keep))
}

/// Maps a buffer this process allocated.
fn map_buffer(buffer: &Arc<Buffer>) -> PyResult<HostMapping> {
    let memory = buffer.memory();
    if !memory.properties().contains(MemoryProperties::HOST_COHERENT) && memory.host_memory().is_none() {
        return Err(invalid(
            "host mapping of a device-local allocation",
            "its memory is not host-visible and coherent",
            "allocate with location=\"host-visible\" or \"shared-host\"",
        ));
    }
    let base = memory.host_pointer().py_err()?;
    // SAFETY: `base` maps the whole allocation and the buffer's range lies inside it (lava-flow
    // checked it when binding the buffer).
    let ptr = unsafe { base.add(buffer.offset() as usize) };
    Ok(HostMapping::new(ptr, buffer.size(), buffer.clone()))
}

/// Shared host memory (a sealed memfd) that any process can map: no GPU needed.
#[pyclass(module = "lava_flow", frozen)]
pub struct HostMemory {
    memory: Mutex<Option<Arc<SharedHostMemory>>>,
}

impl HostMemory {
    fn get(&self) -> PyResult<Arc<SharedHostMemory>> {
        lock(&self.memory).clone().ok_or_else(|| closed("host memory"))
    }
}

#[pymethods]
impl HostMemory {
    /// `size` bytes (rounded up to the page size) of zeroed shared memory.
    #[new]
    fn new(size: u64) -> PyResult<HostMemory> {
        let size =
            usize::try_from(size).map_err(|_| invalid("size", "it does not fit this machine", "ask for less"))?;
        Ok(HostMemory { memory: Mutex::new(Some(Arc::new(shm::create(size).py_err()?))) })
    }

    /// The bytes mapped in this process.
    fn map_host(&self) -> PyResult<HostMapping> {
        let m = self.get()?;
        Ok(HostMapping::new(m.as_ptr(), m.len() as u64, m))
    }

    /// A shareable description with a duplicate of the memfd, to publish with `Server.publish`.
    fn export(&self) -> PyResult<SharedObject> {
        let m = self.get()?;
        Ok(SharedObject::new(None, RustShared::Memory(shm::export(&m).py_err()?)))
    }

    /// The number of bytes.
    #[getter]
    fn size(&self) -> PyResult<u64> {
        Ok(self.get()?.len() as u64)
    }

    /// Drops this object's hold on the memory (mappings made from it stay valid).
    fn close(&self) {
        lock(&self.memory).take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) {
        self.close();
    }
}

/// Allocates exportable Vulkan memory (`lava_flow::MemoryAllocator`).
#[pyclass(module = "lava_flow", frozen)]
pub struct Allocator {
    inner: Arc<MemoryAllocator>,
    device: usize,
}

fn location(name: &str, device_id: usize) -> PyResult<MemoryLocation> {
    match name {
        "gpu" | "device" => Ok(MemoryLocation::GpuVulkan { device_id }),
        "host-visible" => Ok(MemoryLocation::HostVisibleVulkan { device_id }),
        "shared-host" => Ok(MemoryLocation::SharedHost { device_id }),
        other => Err(invalid(
            format!("location {other:?}"),
            "lava-flow knows \"gpu\", \"host-visible\" and \"shared-host\"",
            "pass one of those",
        )),
    }
}

#[pymethods]
impl Allocator {
    /// An allocator on Vulkan device `device` (its index in `lava-flow info`), or, with None, on
    /// the default device: the first discrete GPU, else integrated, else virtual, else the CPU
    /// (lavapipe).
    #[new]
    #[pyo3(signature = (device=None))]
    fn new(py: Python<'_>, device: Option<usize>) -> PyResult<Allocator> {
        let (inner, device) = py
            .detach(|| -> lava_flow::Result<(MemoryAllocator, usize)> {
                match device {
                    Some(index) => {
                        let inner = MemoryAllocator::new()?;
                        inner.context(index)?;
                        Ok((inner, index))
                    }
                    None => {
                        let ctx = lava_flow::VulkanContext::new()?;
                        let index = ctx.info().index;
                        Ok((MemoryAllocator::with_context(ctx), index))
                    }
                }
            })
            .py_err()?;
        Ok(Allocator { inner: Arc::new(inner), device })
    }

    /// The device's name, as `lava-flow info` prints it.
    #[getter]
    fn device_name(&self, py: Python<'_>) -> PyResult<String> {
        let inner = self.inner.clone();
        let device = self.device;
        Ok(py.detach(move || inner.context(device)).py_err()?.info().name.clone())
    }

    /// `size` bytes at `location`: `"gpu"` (device-local), `"host-visible"` or `"shared-host"`
    /// (a memfd any process can map), in an allocation of its own so that it can be published.
    /// Sizes are checked before anything is allocated.
    #[pyo3(signature = (size, location="shared-host"))]
    fn allocate(&self, py: Python<'_>, size: u64, location: &str) -> PyResult<Allocation> {
        let loc = self::location(location, self.device)?;
        let inner = self.inner.clone();
        // Its own allocation: a buffer in a pool block could not be published (the block's fd
        // reaches its neighbours), and Python allocates to share.
        let options = BufferOptions::new(size).memory(loc.kind()).strategy(AllocationStrategy::Dedicated);
        let buffer = py.detach(move || inner.allocate_buffer(loc.device_id(), &options)).py_err()?;
        Ok(Allocation { buffer: Mutex::new(Some(Arc::new(buffer))), location: location.to_owned() })
    }

    /// The Vulkan device index.
    #[getter]
    fn device(&self) -> usize {
        self.device
    }
}

/// A Vulkan buffer allocated by `Allocator.allocate`.
#[pyclass(module = "lava_flow", frozen)]
pub struct Allocation {
    buffer: Mutex<Option<Arc<Buffer>>>,
    location: String,
}

impl Allocation {
    fn get(&self) -> PyResult<Arc<Buffer>> {
        lock(&self.buffer).clone().ok_or_else(|| closed("allocation"))
    }
}

#[pymethods]
impl Allocation {
    /// A shareable description with a duplicate fd, to publish with `Server.publish`.
    fn export(&self) -> PyResult<SharedObject> {
        let b = self.get()?;
        Ok(SharedObject::new(None, RustShared::Buffer(b.export_fd().py_err()?)))
    }

    /// The bytes mapped in this process (`host-visible` and `shared-host` allocations).
    fn map_host(&self) -> PyResult<HostMapping> {
        map_buffer(&self.get()?)
    }

    /// A copy of `size` bytes at `offset`, read by Vulkan (through a staging copy where the
    /// memory is device-local): what the GPU sees, for checks.
    fn read<'py>(&self, py: Python<'py>, offset: u64, size: u64) -> PyResult<Bound<'py, PyBytes>> {
        let buffer = self.get()?;
        let bytes = py.detach(move || buffer.read(offset, size)).py_err()?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The buffer's size in bytes.
    #[getter]
    fn size(&self) -> PyResult<u64> {
        Ok(self.get()?.size())
    }

    /// Where it was allocated (`"gpu"`, `"host-visible"`, `"shared-host"`).
    #[getter]
    fn location(&self) -> &str {
        &self.location
    }

    /// Frees the buffer once no mapping of it is alive.
    fn close(&self) {
        lock(&self.buffer).take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) {
        self.close();
    }
}
