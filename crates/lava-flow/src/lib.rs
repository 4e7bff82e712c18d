//! lava-flow shares GPU memory and GPU synchronization across APIs and processes without copying.
//!
//! Vulkan allocates ([`MemoryAllocator`]); the allocation is exported as an OS handle
//! ([`raw_gpu_handle::ExportedMemory`] with an `OwnedFd`); CUDA, OpenCL, OpenGL, another Vulkan
//! device or another process imports the same bytes.
//!
//! ```no_run
//! use lava_flow::{MemoryAllocator, MemoryLocation};
//!
//! let allocator = MemoryAllocator::new()?;
//! let buffer = allocator.allocate(1 << 20, MemoryLocation::GpuVulkan { device_id: 0 })?;
//! let exported = buffer.export_fd()?; // fresh OwnedFd plus everything an importer needs
//! # Ok::<(), lava_flow::Error>(())
//! ```
//!
//! Between processes, [`ipc`] hands descriptions and fds over a Unix socket, and [`channel`]
//! moves frames of shared memory from a producer to consumers (docs/CHANNELS.md).
//!
//! Ownership rules (docs/OWNERSHIP.md):
//! - An import consumes the fd whether it succeeds or fails. On success the importing API owns
//!   it; on failure lava-flow closes it exactly once. Clone it first with `try_clone` to retry
//!   elsewhere.
//! - The driver only ever gets a copy. After a failure lava-flow closes the copy only where it can
//!   prove the number still names it, and never closes an fd number it cannot prove it owns
//!   ([`fd::import_consuming`]).
//! - Imported objects keep what they depend on alive.
//! - `Drop` never panics.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod channel;
pub mod error;
pub mod fd;
pub mod limits;
pub mod vulkan;

/// The Vulkan bindings whose `vk::Result` [`DriverCode::Vulkan`] carries.
pub use ash;
/// The CUDA bindings whose `CUresult` [`DriverCode::Cuda`](error::DriverCode) carries.
#[cfg(feature = "cuda")]
pub use cudarc;
pub use error::{DeferredError, DriverCode, Error, Result};
pub use pool::MemoryAllocator;
pub use raw_gpu_handle;
pub use vulkan::{
    Buffer, BufferOptions, ContextOptions, DeviceSelector, Image, ImageOptions, MemoryLocation, SharedHostMemory,
    VulkanContext,
};

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "gl")]
pub mod gl;
pub mod ipc;
#[cfg(feature = "opencl")]
pub mod opencl;
pub mod pool;
#[cfg(feature = "mpi")]
pub mod remote;
