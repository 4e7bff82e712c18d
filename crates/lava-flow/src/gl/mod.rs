//! OpenGL importer through headless EGL (feature `gl`; libEGL.so.1 is loaded at run time).
//!
//! ```no_run
//! # fn demo(exported: lava_flow::raw_gpu_handle::ExportedBuffer) -> lava_flow::Result<()> {
//! use lava_flow::gl::GlContext;
//! // The GL device whose GL_DEVICE_UUID_EXT / GL_DRIVER_UUID_EXT equal the exporter's.
//! let gl = GlContext::for_identity(exported.device())?;
//! let buffer = gl.import_buffer(exported)?; // consumes the fd
//! let bytes = buffer.read(0, 16)?;
//! # Ok(()) }
//! ```
//!
//! - Contexts: EGL's device platform (`EGL_EXT_platform_device`, NVIDIA's headless path) and Mesa's
//!   surfaceless platform; desktop GL 4.5 core, else GLES 3.2. See [`GlContext`] for the threading
//!   rule.
//! - Memory: `GL_EXT_memory_object_fd`. Buffers are placed at the export's offset; textures get
//!   the Vulkan image's tiling. llvmpipe needs slack after a buffer:
//!   allocate buffers meant for GL with [`BufferOptions::for_gl`](crate::BufferOptions::for_gl).
//! - Semaphores: `GL_EXT_semaphore_fd`, binary only, with [`TextureLayout`]s at each hand-over.
//!
//! docs/GL.md has the rules and the reasons.

mod context;
pub mod functions;
mod memory;
mod semaphore;

#[doc(hidden)]
pub use crate::vulkan::GL_BUFFER_SLACK;
pub use context::{CurrentGl, GlContext, GlDeviceInfo};
pub use functions::GlFunctions;
pub use memory::{gl_formats, GlBuffer, GlMemory, GlTexture};
pub use semaphore::{GlSemaphore, TextureLayout};
