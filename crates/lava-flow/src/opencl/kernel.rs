//! A small compiled-kernel wrapper: enough to run OpenCL C on imported buffers and images in
//! examples, `selftest` and benchmarks without a second OpenCL binding.

use std::ffi::CString;

use cl3::ext as cl;

use super::context::{cl_error, ClContext};
use super::memory::release_event;
use crate::{Error, Result};

/// An argument of [`ClKernel::enqueue`].
#[derive(Clone, Copy, Debug)]
pub enum KernelArg {
    /// A buffer or image (`ClBuffer::mem()`, `ClImage::mem()`); acquire it first. It must be a
    /// live mem object of the kernel's context until the kernel has run: the raw handle is passed
    /// to the driver as it is, which a dangling or foreign handle turns into undefined behaviour
    /// (a known gap of this safe API, to be replaced by borrowed objects).
    Mem(cl::cl_mem),
    /// A 32-bit unsigned scalar.
    U32(u32),
    /// A 32-bit float scalar.
    F32(f32),
}

/// One kernel of an OpenCL C program built for the context's device. Holds the context alive.
/// `clSetKernelArg` is not thread-safe, so enqueueing takes `&mut self`.
pub struct ClKernel {
    ctx: ClContext,
    program: cl::cl_program,
    kernel: cl::cl_kernel,
}

// SAFETY: program and kernel handles are not tied to a thread; ClKernel is Send only (not Sync),
// and setting arguments (the one call OpenCL does not make thread safe) takes &mut self.
unsafe impl Send for ClKernel {}

impl std::fmt::Debug for ClKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClKernel").finish_non_exhaustive()
    }
}

impl ClContext {
    /// Builds `source` (OpenCL C) for the device and returns its kernel `name`. Build errors carry
    /// the compiler log.
    pub fn build_kernel(&self, source: &str, name: &str) -> Result<ClKernel> {
        let program = cl3::program::create_program_with_source(self.context(), &[source])
            .map_err(|c| cl_error("clCreateProgramWithSource", c, "creating a program"))?;
        let release_program = |p| {
            // SAFETY: our own reference to the program created above, released once on this error path.
            let _ = unsafe { cl3::program::release_program(p) };
        };
        if let Err(c) = cl3::program::build_program(program, &[self.device()], c"", None, std::ptr::null_mut()) {
            let log = cl3::program::get_program_build_data(program, self.device(), cl::CL_PROGRAM_BUILD_LOG)
                .map(|b| String::from_utf8_lossy(&b).trim_end_matches('\0').to_string())
                .unwrap_or_default();
            release_program(program);
            let mut e = cl_error("clBuildProgram", c, format!("building kernel {name}"));
            if let Error::Api { advice, .. } = &mut e {
                *advice = format!("compiler log: {log}");
            }
            return Err(e);
        }
        let cname = CString::new(name)
            .map_err(|_| Error::invalid("kernel name", "contains a NUL byte", "use a plain identifier"))?;
        match cl3::kernel::create_kernel(program, &cname) {
            Ok(kernel) => Ok(ClKernel { ctx: self.clone(), program, kernel }),
            Err(c) => {
                release_program(program);
                Err(cl_error("clCreateKernel", c, format!("creating kernel {name}")))
            }
        }
    }
}

impl ClKernel {
    /// Sets `args` and enqueues the kernel over `global` work items (1 to 3 dimensions) on the
    /// context's queue. Does not wait; `ClContext::finish` or a semaphore signal orders what follows.
    pub fn enqueue(&mut self, args: &[KernelArg], global: &[usize]) -> Result<()> {
        if global.is_empty() || global.len() > 3 {
            return Err(Error::invalid("kernel range", format!("{} dimensions", global.len()), "use 1 to 3"));
        }
        for (i, arg) in args.iter().enumerate() {
            // SAFETY: `&mut self` excludes concurrent clSetKernelArg on this kernel; each value is a local or
            // a borrowed field that outlives the call, and its size is the one passed. A Mem argument is a
            // raw cl_mem: the caller must pass a live mem object (see KernelArg::Mem).
            let set = unsafe {
                match arg {
                    KernelArg::Mem(m) => cl3::kernel::set_kernel_arg(
                        self.kernel,
                        i as u32,
                        std::mem::size_of::<cl::cl_mem>(),
                        (m as *const cl::cl_mem).cast(),
                    ),
                    KernelArg::U32(v) => {
                        cl3::kernel::set_kernel_arg(self.kernel, i as u32, 4, (v as *const u32).cast())
                    }
                    KernelArg::F32(v) => {
                        cl3::kernel::set_kernel_arg(self.kernel, i as u32, 4, (v as *const f32).cast())
                    }
                }
            };
            set.map_err(|c| cl_error("clSetKernelArg", c, format!("setting kernel argument {i}")))?;
        }
        // SAFETY: the queue and kernel are alive (self); `global` holds work_dim (1 to 3, checked)
        // entries; no offset, local size or wait list.
        let event = unsafe {
            cl3::command_queue::enqueue_nd_range_kernel(
                self.ctx.queue(),
                self.kernel,
                global.len() as u32,
                std::ptr::null(),
                global.as_ptr(),
                std::ptr::null(),
                0,
                std::ptr::null(),
            )
        }
        .map_err(|c| cl_error("clEnqueueNDRangeKernel", c, "enqueueing a kernel"))?;
        release_event(event);
        Ok(())
    }
}

impl Drop for ClKernel {
    fn drop(&mut self) {
        // SAFETY: our own references, each released once (Drop); commands still queued hold their own
        // references to the kernel and program.
        unsafe {
            let _ = cl3::kernel::release_kernel(self.kernel);
            let _ = cl3::program::release_program(self.program);
        }
    }
}
