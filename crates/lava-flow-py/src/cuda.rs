//! CUDA imports: `CudaMemory` (DLPack kDLCUDA, `__cuda_array_interface__`) and `CudaSemaphore`
//! (waits and signals on a torch or CuPy stream, or from the host). libcuda is loaded when the
//! first import runs; without it these raise `lava_flow.LibraryUnavailable`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lava_flow::cuda::{check, CudaBuffer, CudaDevice, CudaSemaphore as RustSemaphore};
use lava_flow::cudarc::driver::sys;
use lava_flow::ipc::SharedObject as RustShared;
use lava_flow::raw_gpu_handle::{DeviceIdentity, SemaphoreKind, TextureTiling};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::dlpack::{self, Layout, Region, Tensor, KDL_CUDA};
use crate::errors::{closed, invalid, IntoPy};
use crate::host::lock;

/// `CU_STREAM_LEGACY`: DLPack's stream 1, and the stream `None` means. DLPack's 2 is
/// `CU_STREAM_PER_THREAD` (0x2), passed through as it is.
const STREAM_LEGACY: usize = 0x1;

/// The raw `CUstream` of a stream argument: an int (a `cudaStream_t`), a `torch.cuda.Stream`
/// (`cuda_stream`), a CuPy stream (`ptr`).
fn stream_handle(stream: &Bound<'_, PyAny>) -> PyResult<usize> {
    if let Ok(v) = stream.extract::<usize>() {
        return Ok(v);
    }
    for attr in ["cuda_stream", "ptr"] {
        if stream.hasattr(attr)? {
            return stream.getattr(attr)?.extract::<usize>();
        }
    }
    Err(PyTypeError::new_err("stream: pass a torch.cuda.Stream, a cupy.cuda.Stream, a raw CUstream (int) or None"))
}

/// The stream `__dlpack__(stream=...)` names, as the DLPack protocol numbers them for CUDA:
/// None and 1 the legacy default stream, 2 the per-thread default stream, -1 "do not
/// synchronize" (`Ok(None)`), 0 refused (ambiguous), anything else a stream handle.
fn dlpack_stream(stream: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let Some(s) = stream.filter(|s| !s.is_none()) else {
        return Ok(Some(STREAM_LEGACY));
    };
    if let Ok(v) = s.extract::<i64>() {
        return match v {
            -1 => Ok(None),
            0 => Err(invalid(
                "stream 0 for __dlpack__",
                "the DLPack protocol forbids 0 for CUDA (it is ambiguous)",
                "pass 1 for the legacy default stream, 2 for the per-thread one, or a stream",
            )),
            v if v < 0 => Err(invalid(format!("stream {v}"), "it is negative", "pass a stream handle")),
            v => Ok(Some(v as usize)),
        };
    }
    stream_handle(s).map(Some)
}

/// Enqueues a wait for (or a signal of) `value` on a raw stream, after checking that the stream
/// belongs to the semaphore's CUDA context.
fn enqueue(semaphore: &RustSemaphore, value: u64, stream: usize, signal: bool) -> PyResult<()> {
    let device = semaphore.device();
    device.bind().py_err()?;
    let cu_stream = stream as sys::CUstream;
    let mut ctx: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: bind() made the semaphore's context current (the context CUDA resolves the legacy
    // and per-thread default streams in); `ctx` is a live out-parameter. A handle that is not a
    // stream is the caller's promise broken: CUDA documents undefined results for it, as every
    // library taking `cudaStream_t` from Python does; torch and CuPy streams are live handles.
    let r = unsafe { sys::cuStreamGetCtx(cu_stream, &mut ctx) };
    check(r, "cuStreamGetCtx", || format!("finding the context of stream 0x{stream:x}")).py_err()?;
    if ctx != device.context().cu_ctx() {
        return Err(invalid(
            format!("stream 0x{stream:x}"),
            format!(
                "it belongs to another CUDA context than the one the semaphore was imported into (device {}'s \
                 primary context)",
                device.ordinal()
            ),
            format!(
                "pass a stream of CUDA device {} (torch.cuda.Stream(device={}))",
                device.ordinal(),
                device.ordinal()
            ),
        ));
    }
    let handle = semaphore.raw();
    let r = if signal {
        // SAFETY: the parameter block holds integers, pointers and unions of them, all valid as zeros.
        let mut params: sys::CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS = unsafe { std::mem::zeroed() };
        params.params.fence.value = value;
        // SAFETY: the context is current and the stream is one of its streams (checked above); one
        // live semaphore handle (`semaphore` is borrowed across the call) and one parameter block,
        // both locals that outlive the call (the driver copies them).
        unsafe { sys::cuSignalExternalSemaphoresAsync(&handle, &params, 1, cu_stream) }
    } else {
        // SAFETY: as above, for the wait parameter block.
        let mut params: sys::CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS = unsafe { std::mem::zeroed() };
        params.params.fence.value = value;
        // SAFETY: as for the signal above.
        unsafe { sys::cuWaitExternalSemaphoresAsync(&handle, &params, 1, cu_stream) }
    };
    let call = if signal { "cuSignalExternalSemaphoresAsync" } else { "cuWaitExternalSemaphoresAsync" };
    check(r, call, || {
        format!("{} value {value} on stream 0x{stream:x}", if signal { "signalling" } else { "waiting for" })
    })
    .py_err()
}

/// The value a consumer's stream waits for before using an import (`CudaMemory.set_ready`).
#[derive(Clone)]
pub struct Ready {
    semaphore: Arc<RustSemaphore>,
    value: u64,
}

impl Ready {
    /// Makes the stream `__dlpack__(stream=...)` names wait for the value.
    pub fn wait_for_dlpack(&self, stream: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        match dlpack_stream(stream)? {
            None => Ok(()),
            // Enqueueing returns at once: no need to let go of the GIL.
            Some(s) => enqueue(&self.semaphore, self.value, s, false),
        }
    }
}

/// Which CUDA device an import goes to: None (the one whose UUID the description names), an
/// ordinal, `"cuda"`/`"cuda:N"`, a `torch.device("cuda", n)` (`type`, `index`) or a CuPy device
/// (`id`).
fn open_device(identity: &DeviceIdentity, device: Option<&Bound<'_, PyAny>>) -> PyResult<CudaDevice> {
    let ordinal = match device.filter(|d| !d.is_none()) {
        None => return crate::devices::cuda_for_identity(identity).py_err(),
        Some(d) => {
            if let Ok(n) = d.extract::<usize>() {
                n
            } else if let Ok(text) = d.extract::<String>() {
                match text.trim().strip_prefix("cuda").map(|rest| rest.strip_prefix(':').unwrap_or(rest)) {
                    Some("") => 0,
                    Some(n) => n.parse().map_err(|_| {
                        invalid(
                            format!("device {text:?}"),
                            "the ordinal after \"cuda:\" is not a number",
                            "write \"cuda:N\"",
                        )
                    })?,
                    None => {
                        return Err(invalid(
                            format!("device {text:?}"),
                            "it does not name a CUDA device",
                            "pass \"cuda\", \"cuda:N\", an ordinal or a torch.device",
                        ))
                    }
                }
            } else if d.hasattr("type")? && d.hasattr("index")? {
                if d.getattr("type")?.extract::<String>()? != "cuda" {
                    return Err(invalid(
                        format!("device {}", d.str()?),
                        "it is not a CUDA device",
                        "pass torch.device(\"cuda\", n) or an ordinal",
                    ));
                }
                d.getattr("index")?.extract::<Option<usize>>()?.unwrap_or(0)
            } else if d.hasattr("id")? {
                d.getattr("id")?.extract::<usize>()?
            } else {
                return Err(PyTypeError::new_err(
                    "device: None, an ordinal, \"cuda:N\", a torch.device or a cupy.cuda.Device",
                ));
            }
        }
    };
    crate::devices::cuda_ordinal(ordinal).py_err()
}

/// What an import made.
pub enum Imported {
    Memory(CudaBuffer<u8>),
    Semaphore(RustSemaphore),
}

/// Imports `object` into `device`: memory whole, a buffer at its range, a linear texture's bytes,
/// a semaphore. Consumes the object's fd whether it succeeds or fails (docs/OWNERSHIP.md).
pub fn import_rust(device: &CudaDevice, object: RustShared) -> lava_flow::Result<Imported> {
    Ok(Imported::Memory(match object {
        RustShared::Memory(m) => {
            let size = m.description.allocation_size;
            device.import_memory(m)?.map_buffer(0, size)?
        }
        RustShared::Buffer(b) => device.import_buffer(b)?,
        RustShared::Texture(t) => {
            if !matches!(t.texture.tiling, TextureTiling::Linear { .. }) {
                return Err(lava_flow::Error::unsupported(
                    format!("importing a texture with {:?} tiling as CUDA memory", t.texture.tiling),
                    "its bytes are laid out by the driver, not as an array",
                    "DLPack describes strided arrays only",
                    "publish a linear texture or a buffer",
                ));
            }
            let (offset, size) = (t.texture.offset, t.texture.size);
            device.import_memory(t.memory)?.map_buffer(offset, size)?
        }
        RustShared::Semaphore(s) => return Ok(Imported::Semaphore(device.import_semaphore(s)?)),
        RustShared::Fence(_) => {
            return Err(lava_flow::Error::unsupported(
                "importing a fence into CUDA",
                "CUDA imports external semaphores, not fences",
                "cuImportExternalSemaphore",
                "publish a semaphore",
            ))
        }
    }))
}

/// Imports `object` into CUDA (`SharedObject.import_cuda`).
pub fn import<'py>(
    py: Python<'py>,
    object: RustShared,
    identity: DeviceIdentity,
    device: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let device = open_device(&identity, device)?;
    let ordinal = device.ordinal() as i32;
    let imported = py.detach(|| import_rust(&device, object)).py_err()?;
    match imported {
        Imported::Semaphore(semaphore) => {
            Ok(Bound::new(py, CudaSemaphore { inner: Mutex::new(Some(Arc::new(semaphore))), ordinal })?.into_any())
        }
        Imported::Memory(buffer) => Ok(Bound::new(
            py,
            CudaMemory {
                buffer: Mutex::new(Some(Arc::new(buffer))),
                ordinal,
                ready: Mutex::new(None),
                interface_out: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            },
        )?
        .into_any()),
    }
}

/// Memory imported into CUDA: `torch.from_dlpack(mem)`, `cupy.from_dlpack(mem)`,
/// `cupy.asarray(mem)` see its bytes (as `uint8`; `view(...)` for other types and shapes), with
/// no copy. The import stays mapped while this object (until `close()`), a view or a capsule
/// lives.
#[pyclass(module = "lava_flow", frozen)]
pub struct CudaMemory {
    buffer: Mutex<Option<Arc<CudaBuffer<u8>>>>,
    ordinal: i32,
    ready: Mutex<Option<Ready>>,
    /// Whether `__cuda_array_interface__` was read: its consumers hold this object, not a
    /// capsule, so `close()` then leaves the import to the garbage collector.
    interface_out: AtomicBool,
    closed: AtomicBool,
}

impl CudaMemory {
    fn region(&self) -> PyResult<Region> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed("CUDA import"));
        }
        let buffer = lock(&self.buffer).clone().ok_or_else(|| closed("CUDA import"))?;
        Ok(Region {
            ptr: buffer.device_ptr_raw(),
            len: buffer.size_bytes() as u64,
            device: (KDL_CUDA, self.ordinal),
            keep: buffer,
            writable: true,
        })
    }
}

#[pymethods]
impl CudaMemory {
    /// DLPack export (kDLCUDA) of the bytes as 1-D `uint8`. When `set_ready` gave a semaphore,
    /// `stream` (the consumer's; None is the legacy default stream, -1 skips) first waits for
    /// its value.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let region = self.region()?;
        let ready = lock(&self.ready).clone();
        dlpack::export(py, &region, &Layout::bytes(region.len), ready.as_ref(), stream, max_version, dl_device, copy)
    }

    /// `(kDLCUDA, ordinal)`.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (KDL_CUDA, self.ordinal)
    }

    /// CUDA array interface v3: the bytes as 1-D `uint8` (`cupy.asarray(mem)`, Numba).
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let region = self.region()?;
        self.interface_out.store(true, Ordering::Release);
        dlpack::array_interface(py, &region, &Layout::bytes(region.len))
    }

    /// A typed view (`torch.from_dlpack(mem.view("float32", (h, w)))`): `strides` in elements,
    /// `offset` in bytes; refused when it does not fit.
    #[pyo3(signature = (dtype, shape, strides=None, offset=0))]
    fn view(
        &self,
        dtype: &Bound<'_, PyAny>,
        shape: &Bound<'_, PyAny>,
        strides: Option<&Bound<'_, PyAny>>,
        offset: u64,
    ) -> PyResult<Tensor> {
        let ready = lock(&self.ready).clone();
        dlpack::view(self.region()?, ready, dtype, shape, strides, offset)
    }

    /// Makes every later `__dlpack__(stream=s)` (of this import and its views) enqueue a wait on
    /// `s` for `semaphore` to reach `value`: the producer's "ready" value.
    fn set_ready(&self, semaphore: &CudaSemaphore, value: u64) -> PyResult<()> {
        let semaphore = semaphore.get()?;
        if semaphore.device().ordinal() as i32 != self.ordinal {
            return Err(invalid(
                "ready semaphore",
                format!(
                    "it was imported into CUDA device {}, the memory into {}",
                    semaphore.device().ordinal(),
                    self.ordinal
                ),
                "import both into the same device",
            ));
        }
        *lock(&self.ready) = Some(Ready { semaphore, value });
        Ok(())
    }

    /// The bytes copied to the host (a check, not the zero-copy path).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed("CUDA import"));
        }
        let buffer = lock(&self.buffer).clone().ok_or_else(|| closed("CUDA import"))?;
        let bytes = py.detach(move || buffer.copy_to_host().map_err(|e| e.to_string()));
        Ok(pyo3::types::PyBytes::new(py, &bytes.map_err(crate::errors::DriverError::new_err)?))
    }

    /// The device pointer.
    #[getter]
    fn ptr(&self) -> PyResult<u64> {
        Ok(self.region()?.ptr)
    }

    /// The number of bytes.
    #[getter]
    fn size(&self) -> PyResult<u64> {
        Ok(self.region()?.len)
    }

    /// The CUDA device ordinal.
    #[getter]
    fn device(&self) -> i32 {
        self.ordinal
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Drops this object's hold on the import: it is unmapped once no view or capsule of it is
    /// alive (and, where `__cuda_array_interface__` was read, once this object is collected).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if !self.interface_out.load(Ordering::Acquire) {
            lock(&self.buffer).take();
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) {
        self.close();
    }
}

/// A semaphore imported into CUDA: `wait`/`signal` on a stream (torch, CuPy, or a raw handle),
/// or, with `stream=None`, from the host (enqueued on lava-flow's stream of the device, which is
/// then synchronized).
#[pyclass(module = "lava_flow", frozen)]
pub struct CudaSemaphore {
    inner: Mutex<Option<Arc<RustSemaphore>>>,
    ordinal: i32,
}

impl CudaSemaphore {
    fn get(&self) -> PyResult<Arc<RustSemaphore>> {
        lock(&self.inner).clone().ok_or_else(|| closed("CUDA semaphore"))
    }

    fn run(&self, py: Python<'_>, value: u64, stream: Option<&Bound<'_, PyAny>>, signal: bool) -> PyResult<()> {
        let semaphore = self.get()?;
        match stream.filter(|s| !s.is_none()) {
            Some(s) => {
                let s = stream_handle(s)?;
                enqueue(&semaphore, value, s, signal)
            }
            None => py
                .detach(move || {
                    let device = semaphore.device();
                    let stream = device.stream();
                    if signal {
                        semaphore.signal(stream, value)?;
                    } else {
                        semaphore.wait(stream, value)?;
                    }
                    stream.synchronize().map_err(|e| {
                        lava_flow::cuda::driver_error("cuStreamSynchronize", e, "waiting on the host for a semaphore")
                    })
                })
                .py_err(),
        }
    }
}

#[pymethods]
impl CudaSemaphore {
    /// Makes `stream` wait until the semaphore reaches `value` (timeline; a binary one: until
    /// signalled). `stream=None`: blocks this thread until then.
    #[pyo3(signature = (value, stream=None))]
    fn wait(&self, py: Python<'_>, value: u64, stream: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.run(py, value, stream, false)
    }

    /// Sets the semaphore to `value` once the work queued before on `stream` finished.
    /// `stream=None`: now, from the host (after lava-flow's own stream of the device drained).
    #[pyo3(signature = (value, stream=None))]
    fn signal(&self, py: Python<'_>, value: u64, stream: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.run(py, value, stream, true)
    }

    /// `"binary"` or `"timeline"`.
    #[getter]
    fn kind(&self) -> PyResult<&'static str> {
        Ok(match self.get()?.kind() {
            SemaphoreKind::Binary => "binary",
            SemaphoreKind::Timeline => "timeline",
        })
    }

    /// The CUDA device ordinal.
    #[getter]
    fn device(&self) -> i32 {
        self.ordinal
    }

    /// Releases the import once no `set_ready` of an import holds it.
    fn close(&self) {
        lock(&self.inner).take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) {
        self.close();
    }
}
