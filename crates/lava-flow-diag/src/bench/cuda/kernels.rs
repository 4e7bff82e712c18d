//! lava-flow's own CUDA kernels ([`KERNELS_PTX`]), loaded with `cuModuleLoadData` and launched
//! with `cuLaunchKernel` (no NVRTC needed at run time): the copy kernel of the bandwidth rows.

use std::ffi::{c_void, CString};

use cudarc::driver::sys;

use lava_flow::cuda::{check, cu_error, CudaDevice, KERNELS_PTX};
use lava_flow::{Error, Result};

/// The loaded module with its functions; unloaded on drop.
pub struct Kernels {
    device: CudaDevice,
    module: sys::CUmodule,
    copy_v4: sys::CUfunction,
    mul3_add: sys::CUfunction,
    sm_count: u32,
}

// SAFETY: module and function handles are driver handles, not tied to a thread; the driver API
// is thread safe and every method binds the context first.
unsafe impl Send for Kernels {}
// SAFETY: as for Send; no method mutates the handles after loading.
unsafe impl Sync for Kernels {}

impl Drop for Kernels {
    fn drop(&mut self) {
        if !self.device.bind_for_drop("lava-flow's CUDA module") {
            return;
        }
        // Launches of this module's kernels may still be queued (copy and mul3_add only enqueue):
        // wait for the context's work before unloading the code they run.
        // SAFETY: bind_for_drop made the context current; cuCtxSynchronize takes no pointers.
        let r = unsafe { sys::cuCtxSynchronize() };
        if r != sys::CUresult::CUDA_SUCCESS {
            self.device.defer_error(cu_error(
                "cuCtxSynchronize",
                r,
                "waiting for the context's work before unloading lava-flow's CUDA module",
            ));
        }
        // SAFETY: the module was loaded in `load` and is unloaded only here, once; no launch of
        // its functions is pending (synchronised just above); the context is current.
        let r = unsafe { sys::cuModuleUnload(self.module) };
        if r != sys::CUresult::CUDA_SUCCESS {
            self.device.defer_error(cu_error("cuModuleUnload", r, "unloading lava-flow's CUDA module"));
        }
    }
}

impl Kernels {
    /// Loads the PTX into `device`'s context (JIT-compiled by the driver for the GPU).
    pub fn load(device: &CudaDevice) -> Result<Kernels> {
        device.bind()?;
        let ptx = CString::new(KERNELS_PTX).map_err(|_| {
            Error::invalid("lava-flow's PTX", "it contains a NUL byte", "rebuild lava-flow from an intact source")
        })?;
        let mut module: sys::CUmodule = std::ptr::null_mut();
        // SAFETY: bind() made the context current; ptx is a NUL-terminated PTX image that lives across
        // the call (the driver copies it); `module` is a valid out-pointer.
        let r = unsafe { sys::cuModuleLoadData(&mut module, ptx.as_ptr().cast()) };
        check(r, "cuModuleLoadData", || "loading lava-flow's PTX kernels".into())?;
        let get = |name: &str| -> Result<sys::CUfunction> {
            let cname = CString::new(name).unwrap_or_default();
            let mut f: sys::CUfunction = std::ptr::null_mut();
            // SAFETY: module was loaded just above and not unloaded; cname is NUL-terminated and outlives
            // the call; `f` is a valid out-pointer.
            let r = unsafe { sys::cuModuleGetFunction(&mut f, module, cname.as_ptr()) };
            check(r, "cuModuleGetFunction", || format!("finding kernel {name}"))?;
            Ok(f)
        };
        let functions = get("lf_copy_v4").and_then(|c| Ok((c, get("lf_mul3_add")?)));
        let (copy_v4, mul3_add) = match functions {
            Ok(f) => f,
            Err(e) => {
                // SAFETY: loaded above, not stored anywhere, nothing launched from it; unloaded only here.
                unsafe { sys::cuModuleUnload(module) };
                return Err(e);
            }
        };
        let mut sms = 0;
        // SAFETY: `sms` is a valid out-pointer; the device handle comes from the bound context.
        let r = unsafe {
            sys::cuDeviceGetAttribute(
                &mut sms,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                device.context().cu_device(),
            )
        };
        let sm_count = if r == sys::CUresult::CUDA_SUCCESS && sms > 0 { sms as u32 } else { 32 };
        Ok(Kernels { device: device.clone(), module, copy_v4, mul3_add, sm_count })
    }

    fn launch(
        &self,
        f: sys::CUfunction,
        grid: u32,
        block: u32,
        stream: sys::CUstream,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.device.bind()?;
        // SAFETY: bind() made the context current; f is a function of self's module (alive); `args`
        // holds, in the kernel's parameter order, pointers to locals of the parameter types (callers:
        // u64, u64, u64 for lf_copy_v4; u64, u32, u32 for lf_mul3_add) that outlive the call (the driver
        // copies them); device pointers and the stream are valid by the unsafe callers' contracts.
        let r = unsafe {
            sys::cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, stream, args.as_mut_ptr(), std::ptr::null_mut())
        };
        check(r, "cuLaunchKernel", || "launching a lava-flow kernel".into())
    }

    /// Enqueues a copy of `bytes` (a multiple of 16, both pointers 16-byte aligned) from `src`
    /// to `dst` on `stream` with a grid-stride kernel of 16-byte loads and stores.
    ///
    /// # Safety
    /// `src` and `dst` must be device pointers of this context valid for `bytes` bytes until the
    /// copy has run, and must not overlap; `stream` must be a live stream of this context (or
    /// null, the default stream) until the copy has run.
    pub unsafe fn copy(
        &self,
        dst: sys::CUdeviceptr,
        src: sys::CUdeviceptr,
        bytes: u64,
        stream: sys::CUstream,
    ) -> Result<()> {
        if bytes % 16 != 0 || dst % 16 != 0 || src % 16 != 0 {
            return Err(Error::invalid(
                format!("kernel copy of {bytes} bytes from {src:#x} to {dst:#x}"),
                "lf_copy_v4 moves 16-byte vectors",
                "copy a multiple of 16 bytes between 16-byte aligned pointers",
            ));
        }
        let (mut dst, mut src, mut n) = (dst, src, bytes / 16);
        let threads = 256u32;
        let blocks = (n.div_ceil(u64::from(threads))).clamp(1, u64::from(self.sm_count) * 8) as u32;
        let mut args = [
            (&mut dst as *mut u64).cast::<c_void>(),
            (&mut src as *mut u64).cast::<c_void>(),
            (&mut n as *mut u64).cast::<c_void>(),
        ];
        self.launch(self.copy_v4, blocks, threads, stream, &mut args)
    }

    /// Enqueues `x = x * 3 + add` over `count` u32 words at `buf` on `stream`.
    ///
    /// # Safety
    /// `buf` must be a device pointer of this context valid for `count` u32 words until the
    /// kernel has run; `stream` must be a live stream of this context (or null, the default
    /// stream) until then.
    pub unsafe fn mul3_add(&self, buf: sys::CUdeviceptr, count: u32, add: u32, stream: sys::CUstream) -> Result<()> {
        let (mut buf, mut count, mut add) = (buf, count, add);
        let threads = 256u32;
        let blocks = count.div_ceil(threads).max(1);
        let mut args = [
            (&mut buf as *mut u64).cast::<c_void>(),
            (&mut count as *mut u32).cast::<c_void>(),
            (&mut add as *mut u32).cast::<c_void>(),
        ];
        self.launch(self.mul3_add, blocks, threads, stream, &mut args)
    }
}
