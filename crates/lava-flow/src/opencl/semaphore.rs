//! Binary semaphores imported with cl_khr_external_semaphore_opaque_fd.

use cl3::ext as cl;
use raw_gpu_handle::{ExportedSemaphore, SemaphoreHandleKind, SemaphoreKind};

use super::context::{cl_error, ClContext, SEMAPHORE_DEVICE_HANDLE_LIST};
use super::memory::release_event;
use crate::error::{ClCode, DriverCode};
use crate::{Error, Result};

/// A binary semaphore shared with Vulkan, imported into OpenCL. Waits and signals are enqueued on
/// the context's queue. Holds the context alive.
pub struct ClSemaphore {
    ctx: ClContext,
    semaphore: cl::cl_semaphore_khr,
}

// SAFETY: cl_semaphore_khr handles are not tied to a thread and OpenCL calls on them are thread
// safe (OpenCL 3.0 A.2); the handle is never changed and released only in Drop.
unsafe impl Send for ClSemaphore {}
// SAFETY: as for Send.
unsafe impl Sync for ClSemaphore {}

impl std::fmt::Debug for ClSemaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClSemaphore").finish_non_exhaustive()
    }
}

impl ClContext {
    /// Imports an exported binary semaphore (`clCreateSemaphoreWithPropertiesKHR` with
    /// `CL_SEMAPHORE_HANDLE_OPAQUE_FD_KHR`). Consumes the fd whether the import succeeds or fails
    /// (docs/OWNERSHIP.md): on success OpenCL owns it, on failure lava-flow closes it once.
    pub fn import_semaphore(&self, semaphore: ExportedSemaphore) -> Result<ClSemaphore> {
        self.check_deferred()?;
        let ExportedSemaphore { handle, description, .. } = semaphore;
        let info = self.info();
        let create = self.inner.ext.create_semaphore.filter(|_| info.external_semaphore_opaque_fd);
        let Some(create) = create else {
            return Err(Error::unsupported(
                format!("importing a semaphore into OpenCL on {}", info.name),
                "the device lacks cl_khr_external_semaphore_opaque_fd",
                "CL_DEVICE_SEMAPHORE_IMPORT_HANDLE_TYPES_KHR",
                "order OpenCL after the other API on the host (wait, then enqueue), or use NVIDIA's OpenCL",
            ));
        };
        if description.kind != SemaphoreKind::Binary {
            return Err(Error::unsupported(
                "importing a timeline semaphore into OpenCL",
                "cl_khr_external_semaphore imports binary semaphores",
                "CL_SEMAPHORE_TYPE_BINARY_KHR",
                "export a binary semaphore for OpenCL",
            ));
        }
        if description.handle_kind != SemaphoreHandleKind::OpaqueFd {
            return Err(Error::unsupported(
                format!("importing a {} semaphore into OpenCL", description.handle_kind),
                "lava-flow imports OpenCL semaphores as CL_SEMAPHORE_HANDLE_OPAQUE_FD_KHR",
                "cl_khr_external_semaphore_opaque_fd",
                "export the semaphore as an opaque fd",
            ));
        }
        self.check_exporter(&description.device)?;
        let handle = crate::fd::check_sync_object_fd(handle, "OpenCL semaphore import")?;
        let attempt = |fd: std::os::fd::OwnedFd, device_list: bool| {
            crate::fd::import_consuming(fd, |raw| {
                let mut props = vec![cl::CL_SEMAPHORE_TYPE_KHR as u64, cl::CL_SEMAPHORE_TYPE_BINARY_KHR as u64];
                if device_list {
                    // CL_SEMAPHORE_DEVICE_HANDLE_LIST_KHR, the device, CL_SEMAPHORE_DEVICE_HANDLE_LIST_END_KHR.
                    props.extend([SEMAPHORE_DEVICE_HANDLE_LIST, self.device() as u64, 0]);
                }
                props.extend([cl::CL_SEMAPHORE_HANDLE_OPAQUE_FD_KHR as u64, raw as u64, 0]);
                let mut code: cl::cl_int = cl::CL_SUCCESS;
                // SAFETY: `create` came from this platform (ExtFns); the context is alive; the property list
                // is a 0-terminated local naming `raw`, an open fd that import_consuming hands over; `code` is a
                // valid out-pointer.
                let sem = unsafe { create(self.context(), props.as_ptr(), &mut code) };
                if code != cl::CL_SUCCESS || sem.is_null() {
                    return Err(cl_error("clCreateSemaphoreWithPropertiesKHR", code, "importing a binary semaphore"));
                }
                Ok(sem)
            })
        };
        let first = match handle.try_clone() {
            Ok(copy) => Some(attempt(copy, true)),
            Err(_) => None,
        };
        let semaphore = match first {
            Some(Ok(sem)) => {
                drop(handle);
                Ok(sem)
            }
            // Drivers from before cl_khr_semaphore's final device-list enum refuse the list; it is
            // optional for a one-device context, so try once more without it.
            Some(Err(Error::Api {
                code: DriverCode::OpenCl(ClCode::INVALID_PROPERTY | ClCode::INVALID_VALUE),
                ..
            })) => attempt(handle, false),
            Some(Err(e)) => {
                drop(handle);
                Err(e)
            }
            None => attempt(handle, false),
        };
        Ok(ClSemaphore { ctx: self.clone(), semaphore: semaphore? })
    }
}

impl ClSemaphore {
    /// The raw `cl_semaphore_khr`.
    pub fn raw(&self) -> cl::cl_semaphore_khr {
        self.semaphore
    }

    /// Enqueues a wait: later commands on the context's queue run after the semaphore is signalled.
    pub fn wait(&self) -> Result<()> {
        self.enqueue(true)
    }

    /// Enqueues a signal after earlier commands on the context's queue, and flushes the queue so
    /// the other API's wait can complete.
    pub fn signal(&self) -> Result<()> {
        self.enqueue(false)?;
        cl3::command_queue::flush(self.ctx.queue()).map_err(|c| cl_error("clFlush", c, "submitting a signal"))
    }

    fn enqueue(&self, wait: bool) -> Result<()> {
        let (f, call) = if wait {
            (self.ctx.inner.ext.wait_semaphores, "clEnqueueWaitSemaphoresKHR")
        } else {
            (self.ctx.inner.ext.signal_semaphores, "clEnqueueSignalSemaphoresKHR")
        };
        let f = f.ok_or_else(|| {
            Error::unsupported(
                call,
                "the platform does not return the entry point",
                "cl_khr_semaphore",
                "use NVIDIA's OpenCL",
            )
        })?;
        let mut event: cl::cl_event = std::ptr::null_mut();
        // SAFETY: the entry point came from this platform (ExtFns); the queue and semaphore are alive
        // (self); one semaphore, no payload list (binary semaphores take none), no wait list; `event` is
        // a valid out-pointer.
        let code =
            unsafe { f(self.ctx.queue(), 1, &self.semaphore, std::ptr::null(), 0, std::ptr::null(), &mut event) };
        release_event(event);
        if code != cl::CL_SUCCESS {
            return Err(cl_error(call, code, "enqueueing a semaphore operation"));
        }
        Ok(())
    }
}

impl Drop for ClSemaphore {
    fn drop(&mut self) {
        if let Some(release) = self.ctx.inner.ext.release_semaphore {
            // SAFETY: our own reference to a semaphore this ClSemaphore imported, released once (Drop).
            let code = unsafe { release(self.semaphore) };
            if code != cl::CL_SUCCESS {
                self.ctx.inner.defer_error(cl_error("clReleaseSemaphoreKHR", code, "releasing a semaphore"));
            }
        }
    }
}
