//! OpenCL importer (feature `opencl`; libOpenCL.so.1 is loaded at run time by cl3).
//!
//! ```no_run
//! # fn demo(exported: lava_flow::raw_gpu_handle::ExportedBuffer) -> lava_flow::Result<()> {
//! use lava_flow::opencl::ClContext;
//! // The OpenCL device whose CL_DEVICE_UUID_KHR / CL_DRIVER_UUID_KHR equal the exporter's.
//! let cl = ClContext::for_identity(exported.device())?;
//! let buffer = cl.import_buffer(exported)?; // consumes the fd
//! cl.acquire(&[&buffer])?; // clEnqueueAcquireExternalMemObjectsKHR
//! // ... enqueue kernels on cl.queue() using buffer.mem() ...
//! cl.release(&[&buffer])?;
//! # Ok(()) }
//! ```
//!
//! - Devices are chosen by UUID (cl_khr_device_uuid), so a CPU platform such as PoCL is never
//!   picked for a GPU's export.
//! - Buffers: `clCreateBufferWithProperties` with `CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR` and
//!   `CL_MEM_DEVICE_HANDLE_LIST_KHR`, the whole allocation, then a sub-buffer at the export's offset.
//! - Images: `clCreateImageWithProperties`.
//! - Semaphores: cl_khr_external_semaphore_opaque_fd, binary, waited and signalled in the queue.
//!
//! docs/OPENCL.md has the rules and the reasons.

mod context;
mod kernel;
mod memory;
mod semaphore;

#[doc(hidden)]
pub use context::cl_error;
pub use context::{ClContext, ClDeviceInfo, ExternalMem};
pub use kernel::{ClKernel, KernelArg};
pub use memory::{cl_image_format, ClBuffer, ClImage};
pub use semaphore::ClSemaphore;
