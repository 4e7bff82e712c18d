//! Binary semaphores imported with `GL_EXT_semaphore_fd`, and the texture layouts GL hands over.

use ash::vk;
use raw_gpu_handle::{ExportedSemaphore, MemoryHandleKind, SemaphoreHandleKind, SemaphoreKind};

use super::context::GlContext;
use super::functions::{self as f, GLenum, GLuint};
use super::memory::{GlBuffer, GlTexture};
use crate::error::DriverCode;
use crate::{Error, Result};

/// The image layouts GL can hand a texture over in (`GL_EXT_semaphore`, table 4.4), each the
/// counterpart of a Vulkan layout. The layout named at a wait is the one the other API left the
/// image in; the one named at a signal is the one the other API will find it in.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum TextureLayout {
    /// `VK_IMAGE_LAYOUT_UNDEFINED` (`GL_NONE`): contents may be discarded.
    Undefined,
    /// `VK_IMAGE_LAYOUT_GENERAL` / `GL_LAYOUT_GENERAL_EXT`.
    General,
    /// `VK_IMAGE_LAYOUT_COLOR_ATTACHMENT_OPTIMAL` / `GL_LAYOUT_COLOR_ATTACHMENT_EXT`.
    ColorAttachment,
    /// `VK_IMAGE_LAYOUT_DEPTH_STENCIL_ATTACHMENT_OPTIMAL` / `GL_LAYOUT_DEPTH_STENCIL_ATTACHMENT_EXT`.
    DepthStencilAttachment,
    /// `VK_IMAGE_LAYOUT_DEPTH_STENCIL_READ_ONLY_OPTIMAL` / `GL_LAYOUT_DEPTH_STENCIL_READ_ONLY_EXT`.
    DepthStencilReadOnly,
    /// `VK_IMAGE_LAYOUT_SHADER_READ_ONLY_OPTIMAL` / `GL_LAYOUT_SHADER_READ_ONLY_EXT`.
    ShaderReadOnly,
    /// `VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL` / `GL_LAYOUT_TRANSFER_SRC_EXT`.
    TransferSrc,
    /// `VK_IMAGE_LAYOUT_TRANSFER_DST_OPTIMAL` / `GL_LAYOUT_TRANSFER_DST_EXT`.
    TransferDst,
    /// `VK_IMAGE_LAYOUT_DEPTH_READ_ONLY_STENCIL_ATTACHMENT_OPTIMAL`.
    DepthReadOnlyStencilAttachment,
    /// `VK_IMAGE_LAYOUT_DEPTH_ATTACHMENT_STENCIL_READ_ONLY_OPTIMAL`.
    DepthAttachmentStencilReadOnly,
}

impl TextureLayout {
    /// The `GL_LAYOUT_*_EXT` enum.
    pub fn gl(self) -> GLenum {
        match self {
            TextureLayout::Undefined => 0,
            TextureLayout::General => f::LAYOUT_GENERAL_EXT,
            TextureLayout::ColorAttachment => f::LAYOUT_COLOR_ATTACHMENT_EXT,
            TextureLayout::DepthStencilAttachment => f::LAYOUT_DEPTH_STENCIL_ATTACHMENT_EXT,
            TextureLayout::DepthStencilReadOnly => f::LAYOUT_DEPTH_STENCIL_READ_ONLY_EXT,
            TextureLayout::ShaderReadOnly => f::LAYOUT_SHADER_READ_ONLY_EXT,
            TextureLayout::TransferSrc => f::LAYOUT_TRANSFER_SRC_EXT,
            TextureLayout::TransferDst => f::LAYOUT_TRANSFER_DST_EXT,
            TextureLayout::DepthReadOnlyStencilAttachment => f::LAYOUT_DEPTH_READ_ONLY_STENCIL_ATTACHMENT_EXT,
            TextureLayout::DepthAttachmentStencilReadOnly => f::LAYOUT_DEPTH_ATTACHMENT_STENCIL_READ_ONLY_EXT,
        }
    }

    /// The matching Vulkan layout: transition the image to it before signalling GL, or expect it
    /// after GL signals.
    pub fn vk(self) -> vk::ImageLayout {
        match self {
            TextureLayout::Undefined => vk::ImageLayout::UNDEFINED,
            TextureLayout::General => vk::ImageLayout::GENERAL,
            TextureLayout::ColorAttachment => vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL,
            TextureLayout::DepthStencilAttachment => vk::ImageLayout::DEPTH_STENCIL_ATTACHMENT_OPTIMAL,
            TextureLayout::DepthStencilReadOnly => vk::ImageLayout::DEPTH_STENCIL_READ_ONLY_OPTIMAL,
            TextureLayout::ShaderReadOnly => vk::ImageLayout::SHADER_READ_ONLY_OPTIMAL,
            TextureLayout::TransferSrc => vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
            TextureLayout::TransferDst => vk::ImageLayout::TRANSFER_DST_OPTIMAL,
            TextureLayout::DepthReadOnlyStencilAttachment => {
                vk::ImageLayout::DEPTH_READ_ONLY_STENCIL_ATTACHMENT_OPTIMAL
            }
            TextureLayout::DepthAttachmentStencilReadOnly => {
                vk::ImageLayout::DEPTH_ATTACHMENT_STENCIL_READ_ONLY_OPTIMAL
            }
        }
    }

    /// The GL counterpart of a Vulkan layout, where GL has one.
    pub fn from_vk(layout: vk::ImageLayout) -> Option<TextureLayout> {
        Some(match layout {
            vk::ImageLayout::UNDEFINED => TextureLayout::Undefined,
            vk::ImageLayout::GENERAL => TextureLayout::General,
            vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL => TextureLayout::ColorAttachment,
            vk::ImageLayout::DEPTH_STENCIL_ATTACHMENT_OPTIMAL => TextureLayout::DepthStencilAttachment,
            vk::ImageLayout::DEPTH_STENCIL_READ_ONLY_OPTIMAL => TextureLayout::DepthStencilReadOnly,
            vk::ImageLayout::SHADER_READ_ONLY_OPTIMAL => TextureLayout::ShaderReadOnly,
            vk::ImageLayout::TRANSFER_SRC_OPTIMAL => TextureLayout::TransferSrc,
            vk::ImageLayout::TRANSFER_DST_OPTIMAL => TextureLayout::TransferDst,
            vk::ImageLayout::DEPTH_READ_ONLY_STENCIL_ATTACHMENT_OPTIMAL => {
                TextureLayout::DepthReadOnlyStencilAttachment
            }
            vk::ImageLayout::DEPTH_ATTACHMENT_STENCIL_READ_ONLY_OPTIMAL => {
                TextureLayout::DepthAttachmentStencilReadOnly
            }
            _ => return None,
        })
    }
}

/// A binary semaphore shared with Vulkan (or CUDA), imported into GL. Holds the context alive.
pub struct GlSemaphore {
    ctx: GlContext,
    name: GLuint,
}

impl std::fmt::Debug for GlSemaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlSemaphore").field("name", &self.name).finish()
    }
}

impl GlContext {
    /// Imports an exported binary semaphore (`glImportSemaphoreFdEXT`). Consumes the fd whether
    /// the import succeeds or fails (docs/OWNERSHIP.md): on success GL owns it, on failure
    /// lava-flow closes it once. GL semaphores are binary: timeline semaphores and
    /// sync fds are refused.
    pub fn import_semaphore(&self, semaphore: ExportedSemaphore) -> Result<GlSemaphore> {
        let ExportedSemaphore { handle, description, .. } = semaphore;
        let info = self.info();
        if !info.semaphore_fd {
            return Err(Error::unsupported(
                format!("importing a semaphore into {}", info.renderer),
                "the context lacks GL_EXT_semaphore_fd (llvmpipe has no GL semaphores)",
                "GL_EXT_semaphore_fd",
                "order GL after the other API on the host (wait for it, then glFinish), or use a driver with GL semaphores (NVIDIA)",
            ));
        }
        if description.kind != SemaphoreKind::Binary {
            return Err(Error::unsupported(
                "importing a timeline semaphore into GL",
                "GL_EXT_semaphore semaphores are binary",
                "GL_EXT_semaphore",
                "export a binary semaphore for GL",
            ));
        }
        if description.handle_kind != SemaphoreHandleKind::OpaqueFd {
            return Err(Error::unsupported(
                format!("importing a {} semaphore into GL", description.handle_kind),
                "GL_EXT_semaphore_fd imports only GL_HANDLE_TYPE_OPAQUE_FD_EXT",
                "GL_EXT_semaphore_fd",
                "export the semaphore as an opaque fd",
            ));
        }
        // Opaque semaphore fds follow the opaque memory rule: same device, same driver.
        raw_gpu_handle::check_compatible(MemoryHandleKind::OpaqueFd, &description.device, &self.identity())?;
        let handle = crate::fd::check_sync_object_fd(handle, "GL semaphore import")?;
        let gl = self.make_current()?;
        let mut name: GLuint = 0;
        gl.clear_errors();
        // SAFETY: `gl` keeps the context current; it has GL_EXT_semaphore_fd (checked above), so the
        // entry point is the driver's; one name is written into a local.
        unsafe { (gl.gen_semaphores_ext)(1, &mut name) };
        let imported = crate::fd::import_consuming(handle, |raw| {
            // SAFETY: `gl` keeps the context current; `name` is our fresh semaphore; `raw` is an open fd that
            // import_consuming hands over (GL owns it if the import succeeds).
            unsafe { (gl.import_semaphore_fd_ext)(name, f::HANDLE_TYPE_OPAQUE_FD_EXT, raw) };
            gl.check("glImportSemaphoreFdEXT", "importing a binary semaphore")?;
            // SAFETY: `gl` keeps the context current; glIsSemaphoreEXT accepts any name.
            if unsafe { (gl.is_semaphore_ext)(name) } == 0 {
                return Err(Error::Api {
                    api: "OpenGL",
                    action: "importing a semaphore (glImportSemaphoreFdEXT raised no error)".into(),
                    call: "glIsSemaphoreEXT",
                    code: DriverCode::GlFalse,
                    advice: "the driver did not create the semaphore: check the export".into(),
                });
            }
            Ok(())
        });
        if let Err(e) = imported {
            // SAFETY: `gl` keeps the context current; `name` is the semaphore generated above, used by nothing.
            unsafe { (gl.delete_semaphores_ext)(1, &name) };
            gl.clear_errors();
            return Err(e);
        }
        drop(gl);
        Ok(GlSemaphore { ctx: self.clone(), name })
    }
}

impl GlSemaphore {
    /// The GL semaphore name.
    pub fn name(&self) -> GLuint {
        self.name
    }

    /// Makes GL's later work wait for the semaphore (`glWaitSemaphoreEXT`). `textures` name the
    /// layout the other API left each texture in.
    pub fn wait(&self, buffers: &[&GlBuffer], textures: &[(&GlTexture, TextureLayout)]) -> Result<()> {
        self.barrier(true, buffers, textures)
    }

    /// Signals the semaphore once GL's earlier work is done (`glSignalSemaphoreEXT`), then
    /// flushes so the other API's wait can complete. `textures` name the layout the other API
    /// will find each texture in.
    pub fn signal(&self, buffers: &[&GlBuffer], textures: &[(&GlTexture, TextureLayout)]) -> Result<()> {
        self.barrier(false, buffers, textures)
    }

    fn barrier(&self, wait: bool, buffers: &[&GlBuffer], textures: &[(&GlTexture, TextureLayout)]) -> Result<()> {
        for b in buffers {
            if !std::sync::Arc::ptr_eq(&b.context().inner, &self.ctx.inner) {
                return Err(Error::invalid(
                    "GL semaphore barrier",
                    "a buffer belongs to another GL context",
                    "use objects of one context",
                ));
            }
        }
        for (t, _) in textures {
            if !std::sync::Arc::ptr_eq(&t.context().inner, &self.ctx.inner) {
                return Err(Error::invalid(
                    "GL semaphore barrier",
                    "a texture belongs to another GL context",
                    "use objects of one context",
                ));
            }
        }
        let buffer_names: Vec<GLuint> = buffers.iter().map(|b| b.name()).collect();
        let texture_names: Vec<GLuint> = textures.iter().map(|(t, _)| t.name()).collect();
        let layouts: Vec<GLenum> = textures.iter().map(|(_, l)| l.gl()).collect();
        let gl = self.ctx.make_current()?;
        gl.clear_errors();
        // SAFETY: `gl` keeps the context current; a GlSemaphore exists only where GL_EXT_semaphore_fd
        // does; the name arrays and layouts are locals holding exactly the counts passed (textures and
        // layouts have one entry per texture), and every name is a live object of this context (checked).
        unsafe {
            let call = if wait { gl.wait_semaphore_ext } else { gl.signal_semaphore_ext };
            call(
                self.name,
                buffer_names.len() as GLuint,
                buffer_names.as_ptr(),
                texture_names.len() as GLuint,
                texture_names.as_ptr(),
                layouts.as_ptr(),
            );
            if !wait {
                (gl.flush)();
            }
        }
        if wait {
            gl.check("glWaitSemaphoreEXT", "waiting for a shared semaphore")
        } else {
            gl.check("glSignalSemaphoreEXT", "signalling a shared semaphore")
        }
    }
}

impl Drop for GlSemaphore {
    fn drop(&mut self) {
        match self.ctx.inner.current() {
            Ok(gl) => {
                // SAFETY: `current()` made the context current on this thread; the semaphore name is ours and
                // deleted once, here.
                unsafe { (gl.delete_semaphores_ext)(1, &self.name) };
                if let Err(e) = gl.check("glDeleteSemaphoresEXT", "releasing an imported semaphore") {
                    self.ctx.inner.defer_error(e);
                }
            }
            Err(e) => self
                .ctx
                .inner
                .defer_error(crate::error::DeferredError::new(format!("leaking GL semaphore {}", self.name), e)),
        }
    }
}
