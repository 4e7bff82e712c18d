//! OpenCL platforms and devices chosen by device identity, the context and queue lava-flow uses,
//! and the external-memory and semaphore entry points resolved per platform.

use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

use cl3::ext as cl;
use cl3::ext::{cl_command_queue, cl_context, cl_device_id, cl_int, cl_mem, cl_platform_id, cl_uint};
use raw_gpu_handle::{DeviceIdentity, Uuid};

use crate::error::{ClCode, DriverCode};
use crate::{Error, Result};

/// `CL_SEMAPHORE_DEVICE_HANDLE_LIST_KHR` (cl_khr_semaphore).
pub(crate) const SEMAPHORE_DEVICE_HANDLE_LIST: u64 = 0x2053;

pub(crate) type EnqueueExternalMemFn = unsafe extern "C" fn(
    cl_command_queue,
    cl_uint,
    *const cl_mem,
    cl_uint,
    *const cl::cl_event,
    *mut cl::cl_event,
) -> cl_int;
pub(crate) type CreateSemaphoreFn =
    unsafe extern "C" fn(cl_context, *const cl::cl_semaphore_properties_khr, *mut cl_int) -> cl::cl_semaphore_khr;
pub(crate) type EnqueueSemaphoresFn = unsafe extern "C" fn(
    cl_command_queue,
    cl_uint,
    *const cl::cl_semaphore_khr,
    *const cl::cl_semaphore_payload_khr,
    cl_uint,
    *const cl::cl_event,
    *mut cl::cl_event,
) -> cl_int;
pub(crate) type ReleaseSemaphoreFn = unsafe extern "C" fn(cl::cl_semaphore_khr) -> cl_int;

/// The cl_khr_external_memory and cl_khr_semaphore entry points of one platform, resolved with
/// `clGetExtensionFunctionAddressForPlatform`: ICD loaders need not export extension functions, so
/// this is the portable way to reach the vendor's implementation.
#[derive(Clone, Copy)]
pub(crate) struct ExtFns {
    pub(crate) acquire: Option<EnqueueExternalMemFn>,
    pub(crate) release: Option<EnqueueExternalMemFn>,
    pub(crate) create_semaphore: Option<CreateSemaphoreFn>,
    pub(crate) wait_semaphores: Option<EnqueueSemaphoresFn>,
    pub(crate) signal_semaphores: Option<EnqueueSemaphoresFn>,
    pub(crate) release_semaphore: Option<ReleaseSemaphoreFn>,
}

impl ExtFns {
    fn load(platform: cl_platform_id) -> ExtFns {
        let lookup = |name: &str| -> *mut c_void {
            let Ok(runtime) = cl3::load_library().as_ref() else { return std::ptr::null_mut() };
            let name = CString::new(name).expect("no NUL in entry point names");
            runtime.clGetExtensionFunctionAddressForPlatform(platform, name.as_ptr()).unwrap_or(std::ptr::null_mut())
        };
        macro_rules! resolve {
            ($name:literal, $ty:ty) => {{
                let p = lookup($name);
                // SAFETY: a non-null address from clGetExtensionFunctionAddressForPlatform is the named entry
                // point of this platform, whose C prototype (cl_ext.h) is the type transmuted to; data and
                // function pointers have one size on the platforms OpenCL runs on.
                (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, $ty>(p) })
            }};
        }
        ExtFns {
            acquire: resolve!("clEnqueueAcquireExternalMemObjectsKHR", EnqueueExternalMemFn),
            release: resolve!("clEnqueueReleaseExternalMemObjectsKHR", EnqueueExternalMemFn),
            create_semaphore: resolve!("clCreateSemaphoreWithPropertiesKHR", CreateSemaphoreFn),
            wait_semaphores: resolve!("clEnqueueWaitSemaphoresKHR", EnqueueSemaphoresFn),
            signal_semaphores: resolve!("clEnqueueSignalSemaphoresKHR", EnqueueSemaphoresFn),
            release_semaphore: resolve!("clReleaseSemaphoreKHR", ReleaseSemaphoreFn),
        }
    }
}

/// An OpenCL error as lava-flow's error type: `call` returned `code` while doing `action`.
/// Public for code that makes its own OpenCL calls next to lava-flow's (the benchmarks' raw
/// baselines), so that their errors read like lava-flow's.
#[doc(hidden)]
pub fn cl_error(call: &'static str, code: cl_int, action: impl Into<String>) -> Error {
    let advice = match code {
        cl::CL_INVALID_VALUE | cl::CL_INVALID_PROPERTY => {
            "the driver refused a property, size or handle: pass the export's description unchanged"
        }
        cl::CL_INVALID_OPERATION => "the device cannot do this with this object (check `lava-flow info`)",
        cl::CL_OUT_OF_RESOURCES | cl::CL_OUT_OF_HOST_MEMORY | cl::CL_MEM_OBJECT_ALLOCATION_FAILURE => {
            "free OpenCL objects or import less"
        }
        cl::CL_INVALID_IMAGE_FORMAT_DESCRIPTOR | cl::CL_IMAGE_FORMAT_NOT_SUPPORTED => {
            "the device has no such image format: share it as a buffer"
        }
        cl::CL_MISALIGNED_SUB_BUFFER_OFFSET => {
            "the buffer's offset is not a multiple of CL_DEVICE_MEM_BASE_ADDR_ALIGN: allocate it on its own"
        }
        cl3::error_codes::DLOPEN_FUNCTION_NOT_AVAILABLE => "libOpenCL lacks this entry point: update the ICD loader",
        _ => "see `lava-flow info` for what this OpenCL device supports",
    };
    Error::Api {
        api: "OpenCL",
        action: action.into(),
        call,
        code: DriverCode::OpenCl(ClCode(code)),
        advice: advice.into(),
    }
}

fn runtime() -> Result<()> {
    match cl3::load_library() {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::LibraryUnavailable {
            library: "libOpenCL.so.1",
            reason: e.to_string(),
            advice: "install an OpenCL ICD loader and the GPU vendor's OpenCL driver (`apt-get install ocl-icd-libopencl1`; NVIDIA's driver registers /etc/OpenCL/vendors/nvidia.icd); OPENCL_DYLIB_PATH names another library".into(),
        }),
    }
}

/// What `lava-flow info` and device selection know about one OpenCL device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClDeviceInfo {
    /// Platform index in `clGetPlatformIDs` order.
    pub platform_index: usize,
    /// Device index within its platform.
    pub device_index: usize,
    /// `CL_PLATFORM_NAME`.
    pub platform: String,
    /// `CL_DEVICE_NAME`.
    pub name: String,
    /// `CL_DEVICE_VERSION`.
    pub version: String,
    /// `CL_DRIVER_VERSION`.
    pub driver_version: String,
    /// `CL_DEVICE_UUID_KHR` and `CL_DRIVER_UUID_KHR` (nil where cl_khr_device_uuid is absent).
    #[serde(serialize_with = "serialize_identity")]
    pub identity: DeviceIdentity,
    /// cl_khr_device_uuid: the device can be matched to a Vulkan export at all.
    pub device_uuid: bool,
    /// cl_khr_external_memory_opaque_fd and `CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR` among the
    /// import handle types.
    pub external_memory_opaque_fd: bool,
    /// Opaque-fd images are assumed linear (`..._ASSUME_LINEAR_IMAGES_HANDLE_TYPES_KHR`).
    pub opaque_fd_images_linear: bool,
    /// cl_khr_external_semaphore_opaque_fd and `CL_SEMAPHORE_HANDLE_OPAQUE_FD_KHR` importable.
    pub external_semaphore_opaque_fd: bool,
    /// What imports, in words.
    pub imports: Vec<&'static str>,
}

fn serialize_identity<S: serde::Serializer>(id: &DeviceIdentity, s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("DeviceIdentity", 2)?;
    st.serialize_field("device_uuid", &id.device_uuid.to_string())?;
    st.serialize_field("driver_uuid", &id.driver_uuid.to_string())?;
    st.end()
}

fn string_info(device: cl_device_id, param: cl_uint) -> String {
    cl3::device::get_device_data(device, param)
        .map(|b| String::from_utf8_lossy(&b).trim_end_matches('\0').trim().to_string())
        .unwrap_or_default()
}

fn u32_list(device: cl_device_id, param: cl_uint) -> Vec<u32> {
    cl3::device::get_device_data(device, param)
        .map(|b| b.chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect())
        .unwrap_or_default()
}

fn uuid_info(device: cl_device_id, param: cl_uint) -> Uuid {
    match cl3::device::get_device_data(device, param) {
        Ok(b) if b.len() >= 16 => {
            let mut u = [0u8; 16];
            u.copy_from_slice(&b[..16]);
            Uuid(u)
        }
        _ => Uuid::NIL,
    }
}

struct Found {
    platform: cl_platform_id,
    device: cl_device_id,
    info: ClDeviceInfo,
}

fn enumerate_devices() -> Result<Vec<Found>> {
    runtime()?;
    let platforms = match cl3::platform::get_platform_ids() {
        Ok(p) => p,
        Err(cl::CL_PLATFORM_NOT_FOUND_KHR) => Vec::new(),
        Err(code) => return Err(cl_error("clGetPlatformIDs", code, "listing OpenCL platforms")),
    };
    let mut out = Vec::new();
    for (pi, platform) in platforms.into_iter().enumerate() {
        let pname = cl3::platform::get_platform_data(platform, cl::CL_PLATFORM_NAME)
            .map(|b| String::from_utf8_lossy(&b).trim_end_matches('\0').to_string())
            .unwrap_or_default();
        let devices = cl3::device::get_device_ids(platform, cl::CL_DEVICE_TYPE_ALL).unwrap_or_default();
        for (di, device) in devices.into_iter().enumerate() {
            let extensions = string_info(device, cl::CL_DEVICE_EXTENSIONS);
            let has = |n: &str| extensions.split_ascii_whitespace().any(|e| e == n);
            let device_uuid = has("cl_khr_device_uuid");
            let identity = if device_uuid {
                DeviceIdentity {
                    device_uuid: uuid_info(device, cl::CL_DEVICE_UUID_KHR),
                    driver_uuid: uuid_info(device, cl::CL_DRIVER_UUID_KHR),
                    luid: None,
                }
            } else {
                DeviceIdentity::default()
            };
            let opaque = cl::CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR;
            let external_memory_opaque_fd = has("cl_khr_external_memory")
                && has("cl_khr_external_memory_opaque_fd")
                && u32_list(device, cl::CL_DEVICE_EXTERNAL_MEMORY_IMPORT_HANDLE_TYPES_KHR).contains(&opaque);
            let opaque_fd_images_linear = external_memory_opaque_fd
                && u32_list(device, cl::CL_DEVICE_EXTERNAL_MEMORY_IMPORT_ASSUME_LINEAR_IMAGES_HANDLE_TYPES_KHR)
                    .contains(&opaque);
            let external_semaphore_opaque_fd = has("cl_khr_external_semaphore")
                && has("cl_khr_external_semaphore_opaque_fd")
                && u32_list(device, cl::CL_DEVICE_SEMAPHORE_IMPORT_HANDLE_TYPES_KHR)
                    .contains(&cl::CL_SEMAPHORE_HANDLE_OPAQUE_FD_KHR);
            let imports = [
                (external_memory_opaque_fd, "opaque-fd memory (buffers, images)"),
                (external_semaphore_opaque_fd, "opaque-fd binary semaphores"),
            ]
            .into_iter()
            .filter_map(|(on, what)| on.then_some(what))
            .collect();
            out.push(Found {
                platform,
                device,
                info: ClDeviceInfo {
                    platform_index: pi,
                    device_index: di,
                    platform: pname.clone(),
                    name: string_info(device, cl::CL_DEVICE_NAME),
                    version: string_info(device, cl::CL_DEVICE_VERSION),
                    driver_version: string_info(device, cl::CL_DRIVER_VERSION),
                    identity,
                    device_uuid,
                    external_memory_opaque_fd,
                    opaque_fd_images_linear,
                    external_semaphore_opaque_fd,
                    imports,
                },
            });
        }
    }
    Ok(out)
}

pub(crate) struct ClInner {
    pub(crate) platform: cl_platform_id,
    pub(crate) device: cl_device_id,
    pub(crate) context: cl_context,
    pub(crate) queue: cl_command_queue,
    pub(crate) info: ClDeviceInfo,
    pub(crate) ext: ExtFns,
    deferred_errors: Mutex<Vec<crate::error::DeferredError>>,
}

// SAFETY: OpenCL handles are not tied to a thread, and every OpenCL call is thread safe (OpenCL
// 3.0 appendix A.2) except clSetKernelArg on one kernel, which only ClKernel (&mut, !Sync) makes.
unsafe impl Send for ClInner {}
// SAFETY: as for Send; the handles are never changed after `open`.
unsafe impl Sync for ClInner {}

impl ClInner {
    pub(crate) fn defer_error(&self, error: impl Into<crate::error::DeferredError>) {
        self.deferred_errors.lock().unwrap_or_else(|p| p.into_inner()).push(error.into());
    }
}

impl Drop for ClInner {
    fn drop(&mut self) {
        // SAFETY: Drop owns the last reference, and every object made from the context held an Arc to
        // this, so they are gone; finishing the queue first leaves nothing in flight; each handle is
        // released once. Errors cannot be reported from here and are ignored.
        unsafe {
            let _ = cl3::command_queue::finish(self.queue);
            let _ = cl3::command_queue::release_command_queue(self.queue);
            let _ = cl3::context::release_context(self.context);
        }
    }
}

/// An OpenCL context and in-order queue on the device of a Vulkan export, able to import its
/// memory and semaphores. Cheap to clone; imported objects keep it alive. OpenCL calls are
/// thread-safe, so a context may be shared between threads.
#[derive(Clone)]
pub struct ClContext {
    pub(crate) inner: Arc<ClInner>,
}

impl std::fmt::Debug for ClContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClContext")
            .field("platform", &self.inner.info.platform)
            .field("device", &self.inner.info.name)
            .field("identity", &self.inner.info.identity)
            .finish()
    }
}

impl ClContext {
    /// Lists every OpenCL device with its UUIDs and what it imports.
    pub fn enumerate() -> Result<Vec<ClDeviceInfo>> {
        Ok(enumerate_devices()?.into_iter().map(|f| f.info).collect())
    }

    /// Opens the device whose `CL_DEVICE_UUID_KHR` equals `identity`'s device UUID: the only one
    /// that may import opaque fds exported with it (see [`ClContext::check_exporter`] on driver UUIDs). A CPU platform (PoCL) never has a GPU's
    /// UUID, so it is never chosen for a Vulkan export.
    pub fn for_identity(identity: &DeviceIdentity) -> Result<ClContext> {
        let devices = enumerate_devices()?;
        let found_list = || {
            if devices.is_empty() {
                "no OpenCL platform is installed (clGetPlatformIDs found none)".to_string()
            } else {
                devices
                    .iter()
                    .map(|f| {
                        format!(
                            "[{}.{}] {} / {} {}",
                            f.info.platform_index,
                            f.info.device_index,
                            f.info.platform,
                            f.info.name,
                            if f.info.device_uuid {
                                f.info.identity.to_string()
                            } else {
                                "(no cl_khr_device_uuid)".into()
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let chosen = devices.iter().find(|f| f.info.device_uuid && f.info.identity.device_uuid == identity.device_uuid);
        let Some(f) = chosen else {
            return Err(Error::DeviceNotFound {
                api: "OpenCL",
                wanted: format!("with {identity}"),
                found: found_list(),
                advice: "install the exporting GPU vendor's OpenCL driver (`lava-flow info` lists OpenCL devices and UUIDs); opaque fds never cross devices".into(),
            });
        };
        Self::open(f)
    }

    /// The compatibility rule for OpenCL: the exporter's device UUID must be this device's.
    /// Driver UUIDs are not compared: NVIDIA's OpenCL reports `CL_DRIVER_UUID_KHR` equal to the
    /// device UUID, not the driver UUID its Vulkan driver reports, although both are one driver
    /// (seen on an H200 with driver 580). A CPU platform never has a GPU's device UUID.
    pub fn check_exporter(&self, exporter: &DeviceIdentity) -> Result<()> {
        let here = self.identity();
        if exporter.device_uuid == here.device_uuid {
            Ok(())
        } else {
            Err(Error::IncompatibleDevice(raw_gpu_handle::IncompatibleDevice {
                handle_kind: raw_gpu_handle::MemoryHandleKind::OpaqueFd,
                exporter: *exporter,
                importer: here,
            }))
        }
    }

    fn open(f: &Found) -> Result<ClContext> {
        let props: [cl::cl_context_properties; 3] = [cl::CL_CONTEXT_PLATFORM, f.platform as isize, 0];
        let context = cl3::context::create_context(&[f.device], props.as_ptr(), None, std::ptr::null_mut())
            .map_err(|c| cl_error("clCreateContext", c, format!("creating a context on {}", f.info.name)))?;
        // SAFETY: `context` was just created on `f.device`; a null property list asks for an in-order
        // queue.
        let queue = match unsafe {
            cl3::command_queue::create_command_queue_with_properties(context, f.device, std::ptr::null())
        } {
            Ok(q) => q,
            Err(c) => {
                // SAFETY: the context was created just above, has no objects, and is released once, here.
                unsafe {
                    let _ = cl3::context::release_context(context);
                }
                return Err(cl_error("clCreateCommandQueueWithProperties", c, "creating lava-flow's queue"));
            }
        };
        Ok(ClContext {
            inner: Arc::new(ClInner {
                platform: f.platform,
                device: f.device,
                context,
                queue,
                info: f.info.clone(),
                ext: ExtFns::load(f.platform),
                deferred_errors: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Name, UUIDs and import capabilities of the device.
    pub fn info(&self) -> &ClDeviceInfo {
        &self.inner.info
    }

    /// The device identity imports are checked against.
    pub fn identity(&self) -> DeviceIdentity {
        self.inner.info.identity
    }

    /// The raw `cl_context`, for your own programs and buffers (valid while this lives).
    pub fn context(&self) -> cl_context {
        self.inner.context
    }

    /// The raw in-order `cl_command_queue` lava-flow enqueues on.
    pub fn queue(&self) -> cl_command_queue {
        self.inner.queue
    }

    /// The raw `cl_device_id`.
    pub fn device(&self) -> cl_device_id {
        self.inner.device
    }

    /// The raw `cl_platform_id`.
    pub fn platform(&self) -> cl_platform_id {
        self.inner.platform
    }

    /// `clFinish` on lava-flow's queue.
    pub fn finish(&self) -> Result<()> {
        self.check_deferred()?;
        cl3::command_queue::finish(self.inner.queue).map_err(|c| cl_error("clFinish", c, "waiting for the queue"))
    }

    /// Returns (and clears) errors recorded while releasing objects of this context.
    pub fn check_deferred(&self) -> Result<()> {
        let mut errs = self.inner.deferred_errors.lock().unwrap_or_else(|p| p.into_inner());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Deferred(std::mem::take(&mut *errs)))
        }
    }

    /// Hands `objects` from the other API to OpenCL (`clEnqueueAcquireExternalMemObjectsKHR`),
    /// ordered after earlier work on the queue. Enqueue your own work after it, then
    /// [`ClContext::release`].
    pub fn acquire(&self, objects: &[&dyn ExternalMem]) -> Result<()> {
        self.external_mem(true, objects)
    }

    /// Hands `objects` back to the other API (`clEnqueueReleaseExternalMemObjectsKHR`).
    pub fn release(&self, objects: &[&dyn ExternalMem]) -> Result<()> {
        self.external_mem(false, objects)
    }

    fn external_mem(&self, acquire: bool, objects: &[&dyn ExternalMem]) -> Result<()> {
        let (f, call) = if acquire {
            (self.inner.ext.acquire, "clEnqueueAcquireExternalMemObjectsKHR")
        } else {
            (self.inner.ext.release, "clEnqueueReleaseExternalMemObjectsKHR")
        };
        let f = f.ok_or_else(|| {
            Error::unsupported(
                format!("{call} on {}", self.inner.info.platform),
                "the platform does not return the entry point",
                "cl_khr_external_memory",
                "use a platform with cl_khr_external_memory (NVIDIA's)",
            )
        })?;
        let mems: Vec<cl_mem> = objects.iter().map(|o| o.imported_mem()).collect();
        let mut event: cl::cl_event = std::ptr::null_mut();
        // SAFETY: the entry point came from this platform (ExtFns); the queue is alive (self);
        // each mem object is a live import of a sealed ExternalMem borrowed for the call; `mems`
        // holds the count passed; no wait list; `event` is a valid out-pointer.
        let code =
            unsafe { f(self.inner.queue, mems.len() as cl_uint, mems.as_ptr(), 0, std::ptr::null(), &mut event) };
        if !event.is_null() {
            // SAFETY: a non-null event is a new reference the call returned to us, released once; the queue
            // keeps the command itself alive.
            let _ = unsafe { cl3::event::release_event(event) };
        }
        if code != cl::CL_SUCCESS {
            return Err(cl_error(call, code, format!("handing {} object(s) over", mems.len())));
        }
        Ok(())
    }
}

/// An OpenCL memory object created from external memory: what acquire and release name.
/// Sealed: implemented by [`ClBuffer`](super::ClBuffer) and [`ClImage`](super::ClImage) only, whose
/// `imported_mem` is a live `cl_mem` of their context as long as they are borrowed (acquire and
/// release hand it to the driver from safe code).
pub trait ExternalMem: sealed::Sealed {
    /// The `cl_mem` created by the import (the parent of any sub-buffer).
    fn imported_mem(&self) -> cl_mem;
}

pub(crate) mod sealed {
    /// Keeps [`ExternalMem`](super::ExternalMem) to lava-flow's own imports.
    pub trait Sealed {}
}
