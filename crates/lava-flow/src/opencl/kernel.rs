//! A small compiled-kernel wrapper: enough to run OpenCL C on imported buffers and images in
//! examples, `selftest` and benchmarks without a second OpenCL binding.

use std::ffi::CString;

use cl3::ext as cl;

use super::context::{cl_error, ClContext};
use super::memory::{release_event, ClBuffer, ClImage};
use crate::{Error, Result};

/// An argument of [`ClKernel::enqueue`]. Buffers and images are borrowed, so they are alive when
/// the kernel is enqueued (OpenCL keeps a mem object until the commands using it have run, even
/// once it is released: OpenCL 3.0, `clReleaseMemObject`), and checked to belong to the kernel's
/// context.
///
/// A raw `cl_mem` is no argument: it could dangle or belong to another context.
///
/// ```compile_fail
/// # fn demo(mem: *mut std::ffi::c_void) {
/// let _ = lava_flow::opencl::KernelArg::Mem(mem);
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub enum KernelArg<'a> {
    /// A buffer; acquire it first where it is imported.
    Buffer(&'a ClBuffer),
    /// An image; acquire it first where it is imported.
    Image(&'a ClImage),
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
    pub fn enqueue(&mut self, args: &[KernelArg<'_>], global: &[usize]) -> Result<()> {
        if global.is_empty() || global.len() > 3 {
            return Err(Error::invalid("kernel range", format!("{} dimensions", global.len()), "use 1 to 3"));
        }
        // Every argument, every time: an argument left from an earlier call could name a mem
        // object released since.
        let wanted: u32 = cl3::kernel::get_kernel_info(self.kernel, cl::CL_KERNEL_NUM_ARGS)
            .map_err(|c| cl_error("clGetKernelInfo", c, "reading the kernel's argument count"))?
            .into();
        if args.len() != wanted as usize {
            return Err(Error::invalid(
                format!("{} kernel arguments", args.len()),
                format!("the kernel takes {wanted}"),
                "pass every argument on each enqueue",
            ));
        }
        for (i, arg) in args.iter().enumerate() {
            let mem = match arg {
                KernelArg::Buffer(b) => Some((b.mem(), b.context())),
                KernelArg::Image(m) => Some((m.mem(), m.context())),
                KernelArg::U32(_) | KernelArg::F32(_) => None,
            };
            if let Some((_, ctx)) = mem {
                if ctx.context() != self.ctx.context() {
                    return Err(Error::invalid(
                        format!("kernel argument {i}"),
                        "the buffer or image belongs to another OpenCL context than the kernel \
                         (CL_INVALID_MEM_OBJECT: mem objects are per context)",
                        "import or create it in the kernel's context",
                    ));
                }
            }
            // SAFETY: `&mut self` excludes concurrent clSetKernelArg on this kernel; each value is a local or
            // a borrowed field that outlives the call, and its size is the one passed. A mem argument is
            // the cl_mem of a ClBuffer or ClImage borrowed for this call (so alive) of this kernel's
            // context (checked above); OpenCL keeps it until the enqueued kernel has run.
            let set = unsafe {
                match (arg, mem) {
                    (_, Some((m, _))) => cl3::kernel::set_kernel_arg(
                        self.kernel,
                        i as u32,
                        std::mem::size_of::<cl::cl_mem>(),
                        (&m as *const cl::cl_mem).cast(),
                    ),
                    (KernelArg::U32(v), None) => {
                        cl3::kernel::set_kernel_arg(self.kernel, i as u32, 4, (v as *const u32).cast())
                    }
                    (KernelArg::F32(v), None) => {
                        cl3::kernel::set_kernel_arg(self.kernel, i as u32, 4, (v as *const f32).cast())
                    }
                    (KernelArg::Buffer(_) | KernelArg::Image(_), None) => unreachable!("mem arguments have a mem"),
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
