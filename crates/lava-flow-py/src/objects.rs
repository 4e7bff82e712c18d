//! `connect`, `Client`, `Server` and `SharedObject`: the protocol of docs/PROTOCOL.md.

use std::sync::Mutex;
use std::time::Duration;

use lava_flow::ipc::wire::ObjectDescription;
use lava_flow::ipc::{self, NamedObject, ServerConfig, SharedObject as RustShared};
use lava_flow::raw_gpu_handle::{MemoryDescription, MemoryProperties, TextureTiling};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors::{closed, invalid, IntoPy};
use crate::host::{lock, map_shared, HostMapping};

fn duration(what: &str, seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| invalid(format!("{what} {seconds}"), "it is not a number of seconds >= 0", "pass seconds"))
}

/// The device an object's description names (all zeros for host memory, which names none).
pub fn identity(description: &ObjectDescription) -> lava_flow::raw_gpu_handle::DeviceIdentity {
    match description {
        ObjectDescription::Memory(m) => m.device,
        ObjectDescription::Buffer { memory, .. } | ObjectDescription::Texture { memory, .. } => memory.device,
        ObjectDescription::Semaphore(s) => s.device,
        ObjectDescription::Fence(f) => f.device,
    }
}

/// An object received from a server (or exported here): its description as attributes, and its
/// fd, which this object owns and closes once (`close()` or collection).
#[pyclass(module = "lava_flow", frozen)]
pub struct SharedObject {
    name: Option<String>,
    description: ObjectDescription,
    object: Mutex<Option<RustShared>>,
}

impl SharedObject {
    pub fn new(name: Option<String>, object: RustShared) -> SharedObject {
        SharedObject { name, description: object.description(), object: Mutex::new(Some(object)) }
    }

    /// A duplicate of the object (its own fd), for an import or a publish that consumes it.
    pub fn duplicate(&self) -> PyResult<RustShared> {
        let guard = lock(&self.object);
        guard.as_ref().ok_or_else(|| closed("shared object"))?.try_clone().py_err()
    }

    fn memory(&self) -> Option<&MemoryDescription> {
        match &self.description {
            ObjectDescription::Memory(m) => Some(m),
            ObjectDescription::Buffer { memory, .. } | ObjectDescription::Texture { memory, .. } => Some(memory),
            _ => None,
        }
    }

    fn device(&self) -> lava_flow::raw_gpu_handle::DeviceIdentity {
        identity(&self.description)
    }
}

#[pymethods]
impl SharedObject {
    /// The name it was published under (None for an object exported here and not yet published).
    #[getter]
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// `"memory"`, `"buffer"`, `"texture"`, `"semaphore"` or `"fence"`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.description {
            ObjectDescription::Memory(_) => "memory",
            ObjectDescription::Buffer { .. } => "buffer",
            ObjectDescription::Texture { .. } => "texture",
            ObjectDescription::Semaphore(_) => "semaphore",
            ObjectDescription::Fence(_) => "fence",
        }
    }

    /// Bytes of the object: the buffer's or texture's range, or the whole allocation (0 for
    /// semaphores and fences).
    #[getter]
    fn size(&self) -> u64 {
        match &self.description {
            ObjectDescription::Memory(m) => m.allocation_size,
            ObjectDescription::Buffer { buffer, .. } => buffer.size,
            ObjectDescription::Texture { texture, .. } => texture.size,
            _ => 0,
        }
    }

    /// Byte offset of the buffer or texture in its allocation (0 for memory).
    #[getter]
    fn offset(&self) -> u64 {
        match &self.description {
            ObjectDescription::Buffer { buffer, .. } => buffer.offset,
            ObjectDescription::Texture { texture, .. } => texture.offset,
            _ => 0,
        }
    }

    /// Bytes of the whole allocation the object lies in (None for semaphores and fences).
    #[getter]
    fn allocation_size(&self) -> Option<u64> {
        self.memory().map(|m| m.allocation_size)
    }

    /// The handle kind: `"opaque-fd"`, `"dma-buf"`, `"host-memfd"`, or a semaphore's/fence's.
    #[getter]
    fn handle_kind(&self) -> String {
        match &self.description {
            ObjectDescription::Semaphore(s) => s.handle_kind.to_string(),
            ObjectDescription::Fence(f) => f.handle_kind.to_string(),
            _ => self.memory().expect("memory kinds have memory").handle_kind.to_string(),
        }
    }

    /// Vulkan memory property bits (DEVICE_LOCAL 1, HOST_VISIBLE 2, HOST_COHERENT 4, HOST_CACHED 8).
    #[getter]
    fn memory_properties(&self) -> Option<u32> {
        self.memory().map(|m| m.memory_properties.0)
    }

    /// Whether `map_host()` can reach the bytes (host-visible or shared host memory).
    #[getter]
    fn host_visible(&self) -> bool {
        self.memory().is_some_and(|m| m.memory_properties.contains(MemoryProperties::HOST_VISIBLE))
    }

    /// The exporting device's UUID, as `lava-flow info` prints it (all zeros for host memory).
    #[getter]
    fn device_uuid(&self) -> String {
        self.device().device_uuid.to_string()
    }

    /// The exporting driver's UUID.
    #[getter]
    fn driver_uuid(&self) -> String {
        self.device().driver_uuid.to_string()
    }

    /// The texture's format (`"rgba8unorm"`), None for other kinds.
    #[getter]
    fn format(&self) -> Option<String> {
        match &self.description {
            ObjectDescription::Texture { texture, .. } => Some(texture.format.to_string()),
            _ => None,
        }
    }

    /// The texture's `(width, height, depth)`.
    #[getter]
    fn extent(&self) -> Option<(u32, u32, u32)> {
        match &self.description {
            ObjectDescription::Texture { texture, .. } => {
                Some((texture.extent.width, texture.extent.height, texture.extent.depth))
            }
            _ => None,
        }
    }

    /// The texture's row pitch in bytes (linear tiling), None otherwise.
    #[getter]
    fn row_pitch(&self) -> Option<u64> {
        match &self.description {
            ObjectDescription::Texture { texture, .. } => match &texture.tiling {
                TextureTiling::Linear { row_pitch, .. } => Some(*row_pitch),
                _ => None,
            },
            _ => None,
        }
    }

    /// The semaphore's kind (`"binary"`, `"timeline"`), None for other kinds.
    #[getter]
    fn semaphore_kind(&self) -> Option<&'static str> {
        match &self.description {
            ObjectDescription::Semaphore(s) => Some(match s.kind {
                lava_flow::raw_gpu_handle::SemaphoreKind::Binary => "binary",
                lava_flow::raw_gpu_handle::SemaphoreKind::Timeline => "timeline",
            }),
            _ => None,
        }
    }

    /// The whole description as a dict: `kind` and the serde form of its parts (`memory`,
    /// `buffer`, `texture`, `semaphore`, `fence`).
    #[getter]
    fn description<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let value = match &self.description {
            ObjectDescription::Memory(m) => serde_json::json!({ "kind": "memory", "memory": m }),
            ObjectDescription::Buffer { memory, buffer } => {
                serde_json::json!({ "kind": "buffer", "memory": memory, "buffer": buffer })
            }
            ObjectDescription::Texture { memory, texture } => {
                serde_json::json!({ "kind": "texture", "memory": memory, "texture": texture })
            }
            ObjectDescription::Semaphore(s) => serde_json::json!({ "kind": "semaphore", "semaphore": s }),
            ObjectDescription::Fence(f) => serde_json::json!({ "kind": "fence", "fence": f }),
        };
        let json = value.to_string();
        py.import("json")?.call_method1("loads", (json,))
    }

    /// The fd number this object owns (for diagnostics; do not close it).
    fn fileno(&self) -> PyResult<i32> {
        use std::os::fd::AsRawFd;
        Ok(lock(&self.object).as_ref().ok_or_else(|| closed("shared object"))?.fd().as_raw_fd())
    }

    /// Maps the bytes on the host (shared host memory, or host-visible Vulkan memory through the
    /// device the description names): `numpy.from_dlpack(obj.map_host())`.
    fn map_host(&self, py: Python<'_>) -> PyResult<HostMapping> {
        let object = self.duplicate()?;
        map_shared(py, &object)
    }

    /// Imports the object into CUDA: memory, buffers and linear textures as `CudaMemory`
    /// (DLPack kDLCUDA, `__cuda_array_interface__`), semaphores as `CudaSemaphore`. `device`:
    /// None (the device whose UUID the description names), an ordinal, or a `torch.device`.
    #[pyo3(signature = (device=None))]
    fn import_cuda<'py>(&self, py: Python<'py>, device: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        crate::cuda::import(py, self.duplicate()?, self.device(), device)
    }

    /// Closes the fd. Imports and mappings made earlier stay valid; closing twice is allowed.
    fn close(&self) {
        lock(&self.object).take();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.object).is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) {
        self.close();
    }

    fn __repr__(&self) -> String {
        format!(
            "lava_flow.SharedObject(name={:?}, kind={}, size={}, handle_kind={})",
            self.name.as_deref().unwrap_or(""),
            self.kind(),
            self.size(),
            self.handle_kind()
        )
    }
}

/// A connection to a lava-flow server (`lava_flow.connect(path)`).
#[pyclass(module = "lava_flow", frozen)]
pub struct Client {
    inner: Mutex<Option<ipc::Client>>,
}

impl Client {
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&ipc::Client) -> lava_flow::Result<T> + Send,
    ) -> PyResult<T> {
        // The request runs without the GIL, so other Python threads go on while the server answers.
        let result = py.detach(|| {
            let guard = lock(&self.inner);
            guard.as_ref().map(f)
        });
        result.ok_or_else(|| closed("client"))?.py_err()
    }
}

#[pymethods]
impl Client {
    /// The object published under `name`; `lava_flow.PeerRefused` when there is none.
    fn get(&self, py: Python<'_>, name: &str) -> PyResult<SharedObject> {
        let object = self.call(py, |c| c.get_one(name))?;
        Ok(SharedObject::new(Some(name.to_owned()), object))
    }

    /// Every published object, in the server's order.
    fn get_all(&self, py: Python<'_>) -> PyResult<Vec<SharedObject>> {
        let objects = self.call(py, |c| c.get_all())?;
        Ok(objects.into_iter().map(|n| SharedObject::new(Some(n.name), n.object)).collect())
    }

    /// Waits up to `timeout` seconds for `name` to be published, then gets it.
    #[pyo3(signature = (name, timeout=10.0))]
    fn wait_for(&self, py: Python<'_>, name: &str, timeout: f64) -> PyResult<SharedObject> {
        let timeout = duration("timeout", timeout)?;
        let object = self.call(py, |c| c.wait_for(name, timeout))?;
        Ok(SharedObject::new(Some(name.to_owned()), object))
    }

    /// Closes the connection (objects received stay valid).
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

/// Connects to the server listening at `path` (`lava-flow serve`, `lava_flow.Server`, or a Rust
/// `lava_flow::ipc::Server`). `timeout`: seconds to wait for the socket to appear.
#[pyfunction]
#[pyo3(signature = (path, timeout=None))]
pub fn connect(py: Python<'_>, path: std::path::PathBuf, timeout: Option<f64>) -> PyResult<Client> {
    let client = match timeout {
        None => py.detach(|| ipc::Client::connect(&path)),
        Some(t) => {
            let t = duration("timeout", t)?;
            py.detach(|| ipc::Client::connect_with_timeout(&path, t))
        }
    }
    .py_err()?;
    Ok(Client { inner: Mutex::new(Some(client)) })
}

/// A server publishing objects to other processes at a Unix socket path.
#[pyclass(module = "lava_flow", frozen)]
pub struct Server {
    inner: Mutex<Option<ipc::Server>>,
    path: std::path::PathBuf,
}

impl Server {
    fn with<T>(&self, f: impl FnOnce(&ipc::Server) -> T) -> PyResult<T> {
        lock(&self.inner).as_ref().map(f).ok_or_else(|| closed("server"))
    }
}

#[pymethods]
impl Server {
    /// Binds the socket at `path` and starts serving.
    #[new]
    fn new(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Server> {
        let server = py.detach(|| ipc::Server::bind(&path, ServerConfig::default())).py_err()?;
        Ok(Server { inner: Mutex::new(Some(server)), path })
    }

    /// Publishes `obj` under `name`, replacing an object of that name: a `SharedObject`, or
    /// anything with an `export()` method returning one (`Allocation`, `HostMemory`). The server
    /// holds its own duplicate of the fd.
    fn publish(&self, name: &str, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let shared = if let Ok(s) = obj.cast::<SharedObject>() {
            s.get().duplicate()?
        } else if obj.hasattr("export")? {
            let exported = obj.call_method0("export")?;
            let s = exported
                .cast::<SharedObject>()
                .map_err(|_| PyTypeError::new_err("publish: export() did not return a lava_flow.SharedObject"))?;
            s.get().duplicate()?
        } else {
            return Err(PyTypeError::new_err(
                "publish: pass a lava_flow.SharedObject, an Allocation or a HostMemory (anything with export())",
            ));
        };
        self.with(|s| s.publish(NamedObject::new(name, shared)))?.py_err()
    }

    /// Withdraws `name`; whether it was published.
    fn remove(&self, name: &str) -> PyResult<bool> {
        self.with(|s| s.remove(name).is_some())
    }

    /// The names published, in order.
    fn names(&self) -> PyResult<Vec<String>> {
        self.with(|s| s.objects().into_iter().map(|d| d.name).collect())
    }

    /// Requests served, connections and errors so far, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.with(|s| s.stats())?;
        let d = PyDict::new(py);
        d.set_item("requests_served", stats.requests_served)?;
        d.set_item("text", format!("{stats:?}"))?;
        Ok(d)
    }

    /// The socket path.
    #[getter]
    fn path(&self) -> std::path::PathBuf {
        self.path.clone()
    }

    /// Stops serving, closes the published fds and removes the socket. Closing twice is allowed.
    fn close(&self, py: Python<'_>) {
        let server = lock(&self.inner).take();
        if let Some(server) = server {
            py.detach(move || {
                server.shutdown();
            });
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) {
        self.close(py);
    }
}
