//! Loading libcuda, listing CUDA devices and picking the one an export came from.

use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{sys, CudaContext, CudaStream};
use raw_gpu_handle::{
    DeviceIdentity, ExportedBuffer, ExportedMemory, ExportedSemaphore, ExportedTexture, IncompatibleDevice,
    MemoryHandleKind, Uuid,
};

use super::{check, driver_error, CudaBuffer, CudaSemaphore, CudaTexture, ImportedMemory};
use crate::{Error, Result};

/// The library cudarc opens first on Linux; named in errors.
const LIBCUDA: &str = "libcuda.so.1";

/// Every libcuda entry point lava-flow or the parts of cudarc it uses may call. cudarc's
/// dynamic loading panics on the first call of a missing symbol, so all of them are looked up
/// once before any is called.
const REQUIRED_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetName",
    "cuDeviceGetUuid",
    "cuDeviceGetUuid_v2",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventElapsedTime",
    "cuEventDestroy_v2",
    "cuMemGetInfo_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemAllocAsync",
    "cuMemFreeAsync",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuMemcpy2DAsync_v2",
    "cuMemcpy3DAsync_v2",
    "cuMemsetD32Async",
    "cuImportExternalMemory",
    "cuExternalMemoryGetMappedBuffer",
    "cuExternalMemoryGetMappedMipmappedArray",
    "cuDestroyExternalMemory",
    "cuMipmappedArrayGetLevel",
    "cuMipmappedArrayDestroy",
    "cuImportExternalSemaphore",
    "cuSignalExternalSemaphoresAsync",
    "cuWaitExternalSemaphoresAsync",
    "cuDestroyExternalSemaphore",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuLaunchKernel",
    "cuMemGetAllocationGranularity",
    "cuMemCreate",
    "cuMemRelease",
    "cuMemAddressReserve",
    "cuMemAddressFree",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemSetAccess",
    "cuMemExportToShareableHandle",
];

/// Why libcuda could not be used, kept so later calls fail the same way without probing again.
#[derive(Clone, Debug)]
enum LoadFailure {
    Missing(String),
    MissingSymbol(String),
    Init(sys::CUresult),
}

/// Loads libcuda and initialises the driver API, once per process.
///
/// cudarc's dynamic loading panics when libcuda or one of its symbols is missing. lava-flow
/// guards against that with a probe rather than `catch_unwind` (a panic inside a `OnceLock`
/// initialiser would poison cudarc's state): it first opens `libcuda.so.1` itself with
/// libloading, then asks cudarc's own loader whether it finds a library (the same candidate
/// list cudarc uses), then looks up every symbol in [`REQUIRED_SYMBOLS`] in the library cudarc
/// opened. Only when all of that succeeded is any cudarc function called.
pub(crate) fn ensure_driver() -> Result<()> {
    static STATE: OnceLock<std::result::Result<(), LoadFailure>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        // SAFETY: libloading's contract is that the library's initialisers are safe to run: libcuda.so.1
        // is NVIDIA's driver library, made to be dlopen'ed (every CUDA runtime does so).
        let own_probe = unsafe { libloading::Library::new(LIBCUDA) };
        // SAFETY: cudarc's probe only dlopens and closes its candidate names (libcuda under other
        // names), under the same contract as above.
        let cudarc_finds_one = unsafe { sys::is_culib_present() };
        if !cudarc_finds_one {
            return Err(LoadFailure::Missing(match own_probe {
                Err(e) => e.to_string(),
                Ok(_) => format!("{LIBCUDA} opened, but none of cudarc's library names did"),
            }));
        }
        drop(own_probe);
        // SAFETY: culib() panics only when no candidate opens, and is_culib_present() just opened one;
        // the library it returns stays loaded for the process.
        let lib = unsafe { sys::culib() };
        let missing: Vec<&str> = REQUIRED_SYMBOLS
            .iter()
            .copied()
            // SAFETY: only the symbol's address is read (as a pointer type, never called or dereferenced
            // here), so its real signature does not matter.
            .filter(|name| unsafe { lib.get::<*const std::ffi::c_void>(name.as_bytes()) }.is_err())
            .collect();
        if !missing.is_empty() {
            return Err(LoadFailure::MissingSymbol(missing.join(", ")));
        }
        // SAFETY: every symbol cudarc may call exists (checked above), so the call does not panic;
        // cuInit(0) takes no pointers and is the driver API's documented first call.
        let r = unsafe { sys::cuInit(0) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(LoadFailure::Init(r));
        }
        Ok(())
    });
    match state {
        Ok(()) => Ok(()),
        Err(LoadFailure::Missing(reason)) => Err(Error::LibraryUnavailable {
            library: LIBCUDA,
            reason: reason.clone(),
            advice: "install the NVIDIA driver (it ships libcuda.so.1), or put its directory on LD_LIBRARY_PATH".into(),
        }),
        Err(LoadFailure::MissingSymbol(names)) => Err(Error::LibraryUnavailable {
            library: LIBCUDA,
            reason: format!("the driver lacks {names}"),
            advice: "install an NVIDIA driver for CUDA 12.8 or newer".into(),
        }),
        Err(LoadFailure::Init(r)) => Err(super::cu_error("cuInit", *r, "initialising the CUDA driver API")),
    }
}

/// Loads libcuda and initialises the CUDA driver API (once per process). Every entry point of
/// this module does it first; call it to find out whether CUDA is usable at all.
/// [`Error::LibraryUnavailable`] means libcuda is missing or too old.
pub fn load_driver() -> Result<()> {
    ensure_driver()
}

/// What `lava-flow info` shows about one CUDA device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CudaDeviceInfo {
    /// CUDA device ordinal.
    pub ordinal: usize,
    /// `cuDeviceGetName`.
    pub name: String,
    /// `cuDeviceGetUuid`: equals the Vulkan `deviceUUID` of the same GPU.
    #[serde(serialize_with = "serialize_uuid")]
    pub uuid: Uuid,
    /// `cuDeviceGetUuid_v2` where it differs (a MIG instance's own UUID), else `None`.
    #[serde(serialize_with = "serialize_opt_uuid")]
    pub mig_uuid: Option<Uuid>,
    /// Total memory in bytes.
    pub total_memory: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Index of the Vulkan device with the same UUID (`lava-flow info`'s Vulkan list), if any.
    pub vulkan_device: Option<usize>,
}

fn serialize_uuid<S: serde::Serializer>(u: &Uuid, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&u.to_string())
}

fn serialize_opt_uuid<S: serde::Serializer>(u: &Option<Uuid>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.serialize_some(&u.to_string()),
        None => s.serialize_none(),
    }
}

fn uuid_from(raw: sys::CUuuid) -> Uuid {
    Uuid(raw.bytes.map(|b| b as u8))
}

/// Both UUIDs CUDA reports for a device: the GPU's (`cuDeviceGetUuid`, what Vulkan reports)
/// and the MIG instance's where one is active (`cuDeviceGetUuid_v2`).
fn device_uuids(dev: sys::CUdevice) -> Result<(Uuid, Uuid)> {
    let mut v1 = sys::CUuuid { bytes: [0; 16] };
    let mut v2 = sys::CUuuid { bytes: [0; 16] };
    // SAFETY: callers ran ensure_driver() (cuInit succeeded); `dev` came from cuDeviceGet; both
    // out-pointers are locals valid for writes of a CUuuid.
    check(unsafe { sys::cuDeviceGetUuid(&mut v1, dev) }, "cuDeviceGetUuid", || "reading a device UUID".into())?;
    // SAFETY: as above.
    check(unsafe { sys::cuDeviceGetUuid_v2(&mut v2, dev) }, "cuDeviceGetUuid_v2", || "reading a device UUID".into())?;
    Ok((uuid_from(v1), uuid_from(v2)))
}

fn device_count() -> Result<usize> {
    ensure_driver()?;
    let mut count = 0;
    // SAFETY: ensure_driver() succeeded just above; `count` is a local valid for writes.
    check(unsafe { sys::cuDeviceGetCount(&mut count) }, "cuDeviceGetCount", || "counting CUDA devices".into())?;
    Ok(count.max(0) as usize)
}

pub(super) fn device_handle(ordinal: usize) -> Result<sys::CUdevice> {
    let mut dev = 0;
    // SAFETY: callers ran ensure_driver(); `dev` is a local valid for writes; an ordinal out of
    // range is an error the driver reports, not undefined behaviour.
    check(unsafe { sys::cuDeviceGet(&mut dev, ordinal as i32) }, "cuDeviceGet", || {
        format!("opening CUDA device {ordinal}")
    })?;
    Ok(dev)
}

fn describe(ordinal: usize) -> Result<CudaDeviceInfo> {
    let dev = device_handle(ordinal)?;
    let mut name = [0 as std::ffi::c_char; 256];
    // SAFETY: the driver is initialised; the pointer and the length passed describe `name`, a local
    // array the driver writes at most len bytes into.
    check(unsafe { sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, dev) }, "cuDeviceGetName", || {
        format!("naming CUDA device {ordinal}")
    })?;
    // Up to the first NUL, or the whole buffer if the driver filled it without one.
    let name: Vec<u8> = name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    let name = String::from_utf8_lossy(&name).into_owned();
    let (uuid, mig) = device_uuids(dev)?;
    let mut total = 0usize;
    // SAFETY: the driver is initialised; `dev` came from cuDeviceGet; `total` is a valid out-pointer.
    check(unsafe { sys::cuDeviceTotalMem_v2(&mut total, dev) }, "cuDeviceTotalMem_v2", || {
        format!("reading the memory size of CUDA device {ordinal}")
    })?;
    let attr = |a: sys::CUdevice_attribute| -> Result<i32> {
        let mut v = 0;
        // SAFETY: the driver is initialised; `dev` came from cuDeviceGet; `v` is a valid out-pointer.
        check(unsafe { sys::cuDeviceGetAttribute(&mut v, a, dev) }, "cuDeviceGetAttribute", || {
            format!("reading {a:?} of CUDA device {ordinal}")
        })?;
        Ok(v)
    };
    let cc = (
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    );
    Ok(CudaDeviceInfo {
        ordinal,
        name,
        uuid,
        mig_uuid: (mig != uuid).then_some(mig),
        total_memory: total as u64,
        compute_capability: cc,
        vulkan_device: None,
    })
}

/// Lists the CUDA devices with their UUIDs and the Vulkan device each pairs with (same
/// `deviceUUID`). Errors when libcuda is missing or the driver has no device; a missing Vulkan
/// only leaves `vulkan_device` empty.
pub fn list_devices() -> Result<Vec<CudaDeviceInfo>> {
    let count = device_count()?;
    let mut devices = (0..count).map(describe).collect::<Result<Vec<_>>>()?;
    if let Ok(vulkan) = crate::VulkanContext::enumerate() {
        for d in &mut devices {
            d.vulkan_device = vulkan
                .iter()
                .find(|v| v.identity.device_uuid == d.uuid || Some(v.identity.device_uuid) == d.mig_uuid)
                .map(|v| v.index);
        }
    }
    Ok(devices)
}

/// One CUDA device, its (primary) context and a stream lava-flow's copies run on.
///
/// Cheap to clone. Every import made through it holds a clone, so the context lives until the
/// last imported buffer, texture or semaphore is gone.
#[derive(Clone)]
pub struct CudaDevice {
    pub(crate) inner: Arc<DeviceInner>,
}

pub(crate) struct DeviceInner {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) ordinal: usize,
    pub(crate) name: String,
    pub(crate) uuid: Uuid,
    pub(crate) mig_uuid: Uuid,
    deferred: Mutex<Vec<crate::error::DeferredError>>,
    /// Imported pooled blocks, so a further buffer of a block costs an offset (`cache.rs`).
    pub(crate) block_cache: super::cache::BlockCache,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.inner.ordinal)
            .field("name", &self.inner.name)
            .field("uuid", &self.inner.uuid)
            .finish()
    }
}

impl CudaDevice {
    /// Opens CUDA device `ordinal` (its primary context, shared with the CUDA runtime and other
    /// cudarc users in the process).
    pub fn open(ordinal: usize) -> Result<CudaDevice> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::DeviceNotFound {
                api: "CUDA",
                wanted: format!("at ordinal {ordinal}"),
                found: format!("{count} CUDA device(s)"),
                advice: "run `lava-flow info` to list CUDA devices".into(),
            });
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| driver_error("cuDevicePrimaryCtxRetain", e, format!("opening CUDA device {ordinal}")))?;
        Self::from_context(ctx)
    }

    /// The CUDA device whose UUID is `uuid` (`cuDeviceGetUuid`, or a MIG instance's
    /// `cuDeviceGetUuid_v2`). None matching is [`Error::DeviceNotFound`] naming the UUID asked
    /// for and those found.
    pub fn with_uuid(uuid: Uuid) -> Result<CudaDevice> {
        let count = device_count()?;
        let mut found = Vec::new();
        for ordinal in 0..count {
            let (v1, v2) = device_uuids(device_handle(ordinal)?)?;
            if v1 == uuid || v2 == uuid {
                return Self::open(ordinal);
            }
            found.push(format!("[{ordinal}] {v1}"));
        }
        Err(Error::DeviceNotFound {
            api: "CUDA",
            wanted: format!("with UUID {uuid} (the exporter's device UUID)"),
            found: if found.is_empty() { "no CUDA devices".into() } else { found.join(", ") },
            advice: "export from the Vulkan device that CUDA also sees (`lava-flow info` pairs them by UUID); opaque \
                     fds cannot cross GPUs"
                .into(),
        })
    }

    /// The CUDA device an export came from: the one whose UUID equals `identity.device_uuid`.
    pub fn for_identity(identity: &DeviceIdentity) -> Result<CudaDevice> {
        Self::with_uuid(identity.device_uuid)
    }

    /// Wraps a cudarc context the caller already has, so imported buffers can be used with its
    /// kernels and streams. lava-flow creates one stream of its own on it.
    pub fn from_context(ctx: Arc<CudaContext>) -> Result<CudaDevice> {
        ensure_driver()?;
        let ordinal = ctx.ordinal();
        let action = || format!("opening CUDA device {ordinal}");
        ctx.bind_to_thread().map_err(|e| driver_error("cuCtxSetCurrent", e, action()))?;
        let info = describe(ordinal)?;
        let (_, mig) = device_uuids(device_handle(ordinal)?)?;
        let stream = ctx.new_stream().map_err(|e| driver_error("cuStreamCreate", e, action()))?;
        Ok(CudaDevice {
            inner: Arc::new(DeviceInner {
                ctx,
                stream,
                ordinal,
                name: info.name,
                uuid: info.uuid,
                mig_uuid: mig,
                deferred: Mutex::new(Vec::new()),
                block_cache: Default::default(),
            }),
        })
    }

    /// The cudarc context (for loading modules, allocating, making streams).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// lava-flow's stream on this device: imported buffers report it as theirs, and the copy
    /// helpers run on it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The device UUID (`cuDeviceGetUuid`), equal to the Vulkan `deviceUUID` of the same GPU.
    pub fn uuid(&self) -> Uuid {
        self.inner.uuid
    }

    /// Free and total device memory in bytes (`cuMemGetInfo`).
    pub fn mem_get_info(&self) -> Result<(u64, u64)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: bind() made this device's context current on this thread (cuMemGetInfo reads the
        // current context); both out-pointers are locals.
        check(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }, "cuMemGetInfo_v2", || {
            "reading free CUDA memory".into()
        })?;
        Ok((free as u64, total as u64))
    }

    /// Waits for all work on lava-flow's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: bind() made the context current; the stream was created on that context and self
        // holds it alive across the call.
        check(unsafe { sys::cuStreamSynchronize(self.inner.stream.cu_stream()) }, "cuStreamSynchronize", || {
            "waiting for lava-flow's CUDA stream".into()
        })
    }

    /// Imports an exported allocation (whole size, dedicated flag as exported). Consumes the fd
    /// whether the import succeeds or fails (docs/OWNERSHIP.md): on success CUDA owns it, on
    /// failure lava-flow closes it exactly once. Map buffers from the result with
    /// [`ImportedMemory::map_buffer`].
    pub fn import_memory(&self, memory: ExportedMemory) -> Result<ImportedMemory> {
        ImportedMemory::import(self, memory)
    }

    /// Imports a buffer's allocation and maps the buffer at its offset. A block this device
    /// imported already (a pooled buffer's block, named by its allocation id) is not imported
    /// again: the buffer is a view at its offset (see [`import_buffer_cached`](Self::import_buffer_cached)).
    /// Consumes the fd whether the import succeeds or fails (docs/OWNERSHIP.md).
    pub fn import_buffer(&self, buffer: ExportedBuffer) -> Result<CudaBuffer<u8>> {
        self.import_buffer_cached(buffer).map(|(buffer, _)| buffer)
    }

    /// Imports a texture: optimal tiling as a CUDA mipmapped array (level 0 is the image),
    /// linear tiling as a pitched buffer. Consumes the fd whether the import succeeds or fails
    /// (docs/OWNERSHIP.md).
    pub fn import_texture(&self, texture: ExportedTexture) -> Result<CudaTexture> {
        CudaTexture::import(self, texture)
    }

    /// Imports a binary or timeline semaphore. Consumes the fd whether the import succeeds or
    /// fails (docs/OWNERSHIP.md): on success CUDA owns it, on failure lava-flow closes it once.
    pub fn import_semaphore(&self, semaphore: ExportedSemaphore) -> Result<CudaSemaphore> {
        CudaSemaphore::import(self, semaphore)
    }

    /// Makes the context current on this thread and reports errors recorded while dropping
    /// earlier objects. Every lava-flow call on this device does this first; call it before raw
    /// driver calls (`cudarc::driver::sys`) of your own on this device.
    pub fn bind(&self) -> Result<()> {
        self.check_deferred()?;
        self.inner.ctx.bind_to_thread().map_err(|e| driver_error("cuCtxSetCurrent", e, "binding the CUDA context"))
    }

    /// Refuses an import from another device: CUDA reports no driver UUID, so the device UUID
    /// (or a MIG instance's UUID) alone decides.
    pub(crate) fn check_identity(&self, kind: MemoryHandleKind, exporter: &DeviceIdentity) -> Result<()> {
        if exporter.device_uuid == self.inner.uuid || exporter.device_uuid == self.inner.mig_uuid {
            return Ok(());
        }
        Err(Error::IncompatibleDevice(IncompatibleDevice {
            handle_kind: kind,
            exporter: *exporter,
            // CUDA has no driver UUID to report: the exporter's is repeated so the message names
            // the device UUIDs as what differs.
            importer: DeviceIdentity { device_uuid: self.inner.uuid, driver_uuid: exporter.driver_uuid, luid: None },
        }))
    }

    /// Records an error found in a `Drop`; the next fallible call on this device returns it.
    /// Public (hidden) for raw objects of lava-flow's benchmarks, whose drops report the same way.
    #[doc(hidden)]
    pub fn defer_error(&self, error: impl Into<crate::error::DeferredError>) {
        self.inner.deferred.lock().unwrap_or_else(|p| p.into_inner()).push(error.into());
    }

    /// Returns (and clears) errors recorded while dropping objects of this device.
    pub fn check_deferred(&self) -> Result<()> {
        let mut errs = self.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Deferred(std::mem::take(&mut *errs)))
        }
    }

    /// Binds the context in a `Drop`, recording (not returning) a failure. cudarc reports (and
    /// clears) errors its own drops recorded when binding, so one failure is retried once.
    /// Public (hidden) for raw objects of lava-flow's benchmarks.
    #[doc(hidden)]
    pub fn bind_for_drop(&self, what: &str) -> bool {
        for attempt in 0..2 {
            match self.inner.ctx.bind_to_thread() {
                Ok(()) => return true,
                Err(e) => self.defer_error(super::cu_error(
                    "CudaContext::bind_to_thread",
                    e.0,
                    format!("binding the CUDA context to release {what} (try {})", attempt + 1),
                )),
            }
        }
        false
    }
}
