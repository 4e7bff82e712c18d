//! Vulkan semaphores imported into CUDA: wait and signal on a stream.

use cudarc::driver::{sys, CudaStream};
use raw_gpu_handle::{ExportedSemaphore, MemoryHandleKind, SemaphoreHandleKind, SemaphoreKind};

use super::{check, cu_error, CudaDevice};
use crate::{Error, Result};

/// An imported semaphore (`cuImportExternalSemaphore`).
///
/// Timeline semaphores (`CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD`): a wait
/// blocks the stream until the counter reaches the value, a signal sets the counter to it.
/// Binary semaphores (`CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD`): a signal sets it, a wait
/// waits for it to be set and resets it; the value is ignored.
///
/// Dropping it first waits for the context's enqueued work (`cuCtxSynchronize`), which includes
/// every signal and wait enqueued with it: CUDA requires them to have completed before the
/// semaphore is destroyed (`cuDestroyExternalSemaphore`). A wait for a value that never comes
/// therefore blocks the drop: signal it, or let the stream's work finish, first.
pub struct CudaSemaphore {
    device: CudaDevice,
    handle: sys::CUexternalSemaphore,
    kind: SemaphoreKind,
}

// SAFETY: a CUexternalSemaphore is a driver handle, not tied to a thread; the driver API is
// thread safe, and lava-flow binds the context before every call on it.
unsafe impl Send for CudaSemaphore {}
// SAFETY: as for Send; no method mutates the handle after creation.
unsafe impl Sync for CudaSemaphore {}

impl std::fmt::Debug for CudaSemaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaSemaphore").field("device", &self.device).field("kind", &self.kind).finish()
    }
}

impl Drop for CudaSemaphore {
    fn drop(&mut self) {
        if !self.device.bind_for_drop("an imported semaphore") {
            return;
        }
        // SAFETY: the context is current (bound just above); cuCtxSynchronize takes no pointer.
        let synced = unsafe { sys::cuCtxSynchronize() };
        if synced != sys::CUresult::CUDA_SUCCESS {
            // Work that failed has still ended; the semaphore is destroyed below either way.
            self.device.defer_error(cu_error(
                "cuCtxSynchronize",
                synced,
                "finishing work before releasing a semaphore",
            ));
        }
        // SAFETY: the handle came from cuImportExternalSemaphore and is destroyed only here, once; the
        // context is current, and cuCtxSynchronize above returned only after every signal and wait
        // enqueued with it had completed, as cuDestroyExternalSemaphore requires.
        let r = unsafe { sys::cuDestroyExternalSemaphore(self.handle) };
        if r != sys::CUresult::CUDA_SUCCESS {
            self.device.defer_error(cu_error("cuDestroyExternalSemaphore", r, "releasing an imported semaphore"));
        }
    }
}

impl CudaSemaphore {
    pub(crate) fn import(device: &CudaDevice, semaphore: ExportedSemaphore) -> Result<CudaSemaphore> {
        // Every early return drops `semaphore`, closing the fd exactly once.
        let desc = semaphore.description;
        if desc.handle_kind != SemaphoreHandleKind::OpaqueFd {
            return Err(Error::unsupported(
                format!("importing a {} semaphore into CUDA", desc.handle_kind),
                "CUDA imports semaphores from opaque fds only",
                "CUexternalSemaphoreHandleType has no sync-file type",
                "export the semaphore as an opaque fd",
            ));
        }
        device.check_identity(MemoryHandleKind::OpaqueFd, &desc.device)?;
        let type_ = match desc.kind {
            SemaphoreKind::Timeline => {
                sys::CUexternalSemaphoreHandleType::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD
            }
            SemaphoreKind::Binary => sys::CUexternalSemaphoreHandleType::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD,
        };
        let fd = crate::fd::check_sync_object_fd(semaphore.handle, "CUDA external semaphore")?;
        device.bind()?;
        // As for memory: the driver gets a copy it owns after success; the caller's fd is closed
        // exactly once either way, and a failed import's copy only where provably ours.
        let handle = crate::fd::import_consuming(fd, |raw| {
            let mut handle_desc = sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC {
                type_,
                // SAFETY: every field of the handle union is an integer or a raw pointer, for which all-zero
                // bytes are a valid value.
                handle: unsafe { std::mem::zeroed() },
                flags: 0,
                reserved: [0; 16],
            };
            handle_desc.handle.fd = raw;
            let mut handle: sys::CUexternalSemaphore = std::ptr::null_mut();
            // SAFETY: bind() made the context current; handle_desc is fully initialised with the type the
            // description names; `raw` is an open fd that import_consuming hands to the driver; `handle` is a
            // valid out-pointer.
            let r = unsafe { sys::cuImportExternalSemaphore(&mut handle, &handle_desc) };
            check(r, "cuImportExternalSemaphore", || {
                format!("importing a {:?} semaphore into CUDA device {}", desc.kind, device.ordinal())
            })?;
            Ok(handle)
        })?;
        Ok(CudaSemaphore { device: device.clone(), handle, kind: desc.kind })
    }

    /// Binary or timeline.
    pub fn kind(&self) -> SemaphoreKind {
        self.kind
    }

    /// The device it was imported into.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// The raw handle, for calls lava-flow does not wrap. Do not destroy it.
    pub fn raw(&self) -> sys::CUexternalSemaphore {
        self.handle
    }

    fn check_stream(&self, stream: &CudaStream) -> Result<()> {
        if stream.context().cu_ctx() != self.device.context().cu_ctx() {
            return Err(Error::invalid(
                "stream",
                "it belongs to another CUDA context than the one the semaphore was imported into",
                "use a stream of the CudaDevice that imported the semaphore",
            ));
        }
        Ok(())
    }

    /// Enqueues a signal on `stream`: a timeline semaphore is set to `value` once the work
    /// before it on the stream finished; a binary one is set (value ignored).
    pub fn signal(&self, stream: &CudaStream, value: u64) -> Result<()> {
        self.check_stream(stream)?;
        self.device.bind()?;
        // SAFETY: the parameter block holds integers, pointers and unions of them, all valid as zeros.
        let mut params: sys::CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS = unsafe { std::mem::zeroed() };
        params.params.fence.value = value;
        // SAFETY: bind() made the context current; the stream belongs to that context (check_stream)
        // and is borrowed across the call; one live semaphore handle and one parameter block, both
        // locals or fields that outlive the call (the driver copies them).
        let r = unsafe { sys::cuSignalExternalSemaphoresAsync(&self.handle, &params, 1, stream.cu_stream()) };
        check(r, "cuSignalExternalSemaphoresAsync", || format!("signalling an imported semaphore to {value}"))
    }

    /// Enqueues a wait on `stream`: later work waits until a timeline semaphore reaches
    /// `value`, or until a binary one is signalled (value ignored).
    pub fn wait(&self, stream: &CudaStream, value: u64) -> Result<()> {
        self.check_stream(stream)?;
        self.device.bind()?;
        // SAFETY: the parameter block holds integers, pointers and unions of them, all valid as zeros.
        let mut params: sys::CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS = unsafe { std::mem::zeroed() };
        params.params.fence.value = value;
        // SAFETY: bind() made the context current; the stream belongs to that context (check_stream)
        // and is borrowed across the call; one live semaphore handle and one parameter block, both
        // locals or fields that outlive the call (the driver copies them).
        let r = unsafe { sys::cuWaitExternalSemaphoresAsync(&self.handle, &params, 1, stream.cu_stream()) };
        check(r, "cuWaitExternalSemaphoresAsync", || format!("waiting for an imported semaphore to reach {value}"))
    }
}
