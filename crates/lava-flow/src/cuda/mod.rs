//! CUDA (feature `cuda`): Vulkan memory, images and semaphores seen by CUDA, and memory CUDA
//! allocates for the other APIs.
//!
//! libcuda.so.1 is opened at run time through cudarc's dynamic loading, so the crate builds and
//! runs where there is no CUDA; every entry point then returns [`Error::LibraryUnavailable`].
//!
//! ```no_run
//! # fn demo(exported: lava_flow::raw_gpu_handle::ExportedBuffer) -> lava_flow::Result<()> {
//! use lava_flow::cuda::CudaDevice;
//!
//! // The CUDA device whose UUID is the exporter's (opaque fds only work there).
//! let cuda = CudaDevice::for_identity(exported.device())?;
//! // Imports the whole allocation (consuming the fd) and maps the buffer at its offset.
//! let buffer = cuda.import_buffer(exported)?;
//! let bytes = buffer.copy_to_host()?;
//! # let _ = bytes; Ok(()) }
//! ```
//!
//! Imported buffers ([`CudaBuffer`]) implement cudarc's `DevicePtr`/`DevicePtrMut` and can be
//! passed to cudarc kernels with `launch_builder(..).arg(&mut buffer)`; see `docs/CUDA.md`.
//!
//! The other direction: [`CudaDevice::allocate_exportable`] makes device memory with CUDA's
//! virtual memory API (`cuMemCreate`, exportable as a POSIX fd) that Vulkan, OpenGL, OpenCL and
//! other processes import ([`CudaAllocation`], buffers of it [`AllocatedBuffer`]; see
//! `docs/ADOPTING.md`, "CUDA allocates").

/// cudarc's views of a lava-flow buffer type with fields `ptr: CUdeviceptr`, `len: usize` and
/// `stream: Arc<CudaStream>`: `DeviceSlice`, `DevicePtr`/`DevicePtrMut` (no cudarc events: shared
/// memory is ordered by stream order and external semaphores) and kernel arguments.
macro_rules! impl_cudarc_views {
    ($ty:ident) => {
        impl<T> cudarc::driver::DeviceSlice<T> for $ty<T> {
            fn len(&self) -> usize {
                self.len
            }
            fn stream(&self) -> &std::sync::Arc<cudarc::driver::CudaStream> {
                &self.stream
            }
        }

        impl<T> cudarc::driver::DevicePtr<T> for $ty<T> {
            fn device_ptr<'a>(
                &'a self,
                _stream: &'a cudarc::driver::CudaStream,
            ) -> (cudarc::driver::sys::CUdeviceptr, cudarc::driver::SyncOnDrop<'a>) {
                (self.ptr, cudarc::driver::SyncOnDrop::Record(None))
            }
        }

        impl<T> cudarc::driver::DevicePtrMut<T> for $ty<T> {
            fn device_ptr_mut<'a>(
                &'a mut self,
                _stream: &'a cudarc::driver::CudaStream,
            ) -> (cudarc::driver::sys::CUdeviceptr, cudarc::driver::SyncOnDrop<'a>) {
                (self.ptr, cudarc::driver::SyncOnDrop::Record(None))
            }
        }

        // SAFETY: pushes a pointer to the buffer's CUdeviceptr field, which lives for the borrow
        // 'b of the buffer, itself outliving the launch builder 'a, exactly as cudarc does for its
        // CudaSlice.
        unsafe impl<'a, 'b: 'a, T> cudarc::driver::PushKernelArg<&'b $ty<T>> for cudarc::driver::LaunchArgs<'a> {
            #[inline(always)]
            fn arg(&mut self, arg: &'b $ty<T>) -> &mut Self {
                <Self as cudarc::driver::PushKernelArg<&'b cudarc::driver::sys::CUdeviceptr>>::arg(self, &arg.ptr)
            }
        }

        // SAFETY: as for the shared reference: the field lives for 'b, which outlives 'a.
        unsafe impl<'a, 'b: 'a, T> cudarc::driver::PushKernelArg<&'b mut $ty<T>> for cudarc::driver::LaunchArgs<'a> {
            #[inline(always)]
            fn arg(&mut self, arg: &'b mut $ty<T>) -> &mut Self {
                <Self as cudarc::driver::PushKernelArg<&'b cudarc::driver::sys::CUdeviceptr>>::arg(self, &arg.ptr)
            }
        }
    };
}

mod alloc;
mod cache;
mod device;
mod memory;
mod semaphore;
mod texture;

pub use alloc::{AllocatedBuffer, CudaAllocation, CudaExportSupport, BUFFER_ALIGNMENT};
pub use cudarc;
pub use device::{list_devices, load_driver, CudaDevice, CudaDeviceInfo};
pub use memory::{AnyBitPattern, CudaBuffer, ImportedMemory};
pub use semaphore::CudaSemaphore;
pub use texture::{array_format, CudaTexture, TextureStorage};

use cudarc::driver::sys;

use crate::{Error, Result};

/// PTX of lava-flow's own kernels (generated from `kernels/kernels.ll` with LLVM's NVPTX back
/// end, PTX ISA 7.0 for sm_75 and newer; loaded with `cuModuleLoadData`, so no NVRTC is needed).
pub const KERNELS_PTX: &str = include_str!("kernels/kernels.ptx");

/// Turns a `CUresult` into lava-flow's error, naming the call, what was being done and what to do.
#[doc(hidden)]
pub fn cu_error(call: &'static str, result: sys::CUresult, action: impl Into<String>) -> Error {
    use sys::CUresult as R;
    let action = action.into();
    let advice = match result {
        R::CUDA_ERROR_OUT_OF_MEMORY => {
            return Error::OutOfMemory {
                what: format!("{action} ({call} returned CUDA_ERROR_OUT_OF_MEMORY)"),
                advice: "free CUDA or Vulkan memory on this device, or ask for less".into(),
                code: Some(crate::DriverCode::Cuda(result)),
            }
        }
        R::CUDA_ERROR_NO_DEVICE => {
            return Error::DeviceNotFound {
                api: "CUDA",
                wanted: "(any)".into(),
                found: format!("{call} returned CUDA_ERROR_NO_DEVICE"),
                advice: "check `nvidia-smi`, CUDA_VISIBLE_DEVICES and the driver installation".into(),
            }
        }
        R::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH | R::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
            return Error::Unsupported {
                what: action,
                reason: format!("{call} returned {result:?}"),
                rule: "the installed NVIDIA driver is older than what lava-flow's CUDA bindings need (CUDA 12.8)"
                    .into(),
                advice: "install a newer NVIDIA driver".into(),
            }
        }
        R::CUDA_ERROR_NOT_SUPPORTED => "this device or driver does not support the operation (see `lava-flow info`)",
        R::CUDA_ERROR_INVALID_VALUE => {
            "an argument was refused: imports need the handle, whole allocation size and dedicated flag exactly as exported"
        }
        R::CUDA_ERROR_OPERATING_SYSTEM | R::CUDA_ERROR_INVALID_HANDLE => {
            "the fd is not an export of this device's driver: export it again on the device whose UUID CUDA reports"
        }
        R::CUDA_ERROR_NOT_INITIALIZED | R::CUDA_ERROR_DEINITIALIZED => "CUDA is not initialised: open a CudaDevice first",
        R::CUDA_ERROR_INVALID_CONTEXT | R::CUDA_ERROR_CONTEXT_IS_DESTROYED => {
            "the CUDA context is gone: keep the CudaDevice (or cudarc context) alive while using its objects"
        }
        R::CUDA_ERROR_ILLEGAL_ADDRESS | R::CUDA_ERROR_LAUNCH_FAILED => {
            "a kernel touched memory outside its buffers; the context is unusable: restart the process"
        }
        R::CUDA_ERROR_INVALID_PTX | R::CUDA_ERROR_UNSUPPORTED_PTX_VERSION | R::CUDA_ERROR_NO_BINARY_FOR_GPU => {
            "the driver cannot compile this PTX for this GPU (lava-flow's kernels need sm_75 or newer)"
        }
        _ => "see `lava-flow info` for this machine's CUDA devices and driver",
    };
    Error::Api { api: "CUDA", action, call, code: crate::error::DriverCode::Cuda(result), advice: advice.into() }
}

/// Checks a `CUresult` of a raw driver call. Public (hidden) for the benchmarks' raw-API
/// baselines, so that their errors read like lava-flow's.
#[doc(hidden)]
pub fn check(result: sys::CUresult, call: &'static str, action: impl FnOnce() -> String) -> Result<()> {
    if result == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(cu_error(call, result, action()))
    }
}

/// Converts one of cudarc's errors (from its safe API). Public (hidden) for code that calls
/// cudarc next to lava-flow (the self-tests and benchmarks).
#[doc(hidden)]
pub fn driver_error(call: &'static str, e: cudarc::driver::DriverError, action: impl Into<String>) -> Error {
    cu_error(call, e.0, action)
}

#[cfg(test)]
mod tests {
    use crate::{DriverCode, Error};

    #[test]
    fn cuda_results_print_their_spec_names_and_stay_values() {
        use cudarc::driver::sys::CUresult;
        let code = DriverCode::Cuda(CUresult::CUDA_ERROR_INVALID_VALUE);
        assert_eq!(code.to_string(), "CUDA_ERROR_INVALID_VALUE");
        assert_eq!(DriverCode::Cuda(CUresult::CUDA_ERROR_INVALID_HANDLE).to_string(), "CUDA_ERROR_INVALID_HANDLE");
        let e = super::cu_error("cuImportExternalMemory", CUresult::CUDA_ERROR_INVALID_VALUE, "importing");
        assert_eq!(e.cuda_result(), Some(CUresult::CUDA_ERROR_INVALID_VALUE));
        assert!(matches!(e, Error::Api { code: DriverCode::Cuda(CUresult::CUDA_ERROR_INVALID_VALUE), .. }));
        assert!(
            e.to_string()
                .starts_with("CUDA cuImportExternalMemory failed with CUDA_ERROR_INVALID_VALUE while importing;"),
            "{e}"
        );
        assert_eq!(e.vk_result(), None);
    }
}
