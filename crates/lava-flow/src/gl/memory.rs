//! Memory objects (`GL_EXT_memory_object_fd`), and the buffers and textures placed in them.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use raw_gpu_handle::{
    BufferDescription, ExportedBuffer, ExportedMemory, ExportedTexture, MemoryDescription, MemoryHandleKind,
    TextureDescription, TextureDimension, TextureFormat, TextureTiling,
};

use super::context::{gl_error, CurrentGl, GlContext};
use super::functions::{self as f, GLenum, GLint, GLuint};
use crate::error::{DriverCode, GlCode};
use crate::{Error, Result};

use crate::vulkan::GL_BUFFER_SLACK;

/// The GL view of an exported allocation: a memory object (`glCreateMemoryObjectsEXT` +
/// `glImportMemoryFdEXT`). Buffers and textures placed in it hold an `Arc` to it; it holds the
/// context. Create several buffers from one import with [`GlMemory::buffer`].
pub struct GlMemory {
    ctx: GlContext,
    name: GLuint,
    description: MemoryDescription,
}

impl std::fmt::Debug for GlMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlMemory").field("name", &self.name).field("description", &self.description).finish()
    }
}

impl GlContext {
    /// Imports an exported allocation as a GL memory object. Consumes the fd whether the import
    /// succeeds or fails (docs/OWNERSHIP.md): on success GL owns it, on failure lava-flow closes
    /// it exactly once and the error says why.
    pub fn import_memory(&self, memory: ExportedMemory) -> Result<Arc<GlMemory>> {
        let ExportedMemory { handle, description, .. } = memory;
        let gl = self.make_current()?;
        let name = import_memory_object(&gl, self, handle, &description)?;
        drop(gl);
        Ok(Arc::new(GlMemory { ctx: self.clone(), name, description }))
    }

    /// Imports an exported buffer: a memory object plus a GL buffer at the export's offset
    /// (`glBufferStorageMemEXT`). Consumes the fd whether the import succeeds or fails
    /// (docs/OWNERSHIP.md).
    pub fn import_buffer(&self, buffer: ExportedBuffer) -> Result<GlBuffer> {
        check_buffer_range(&buffer.buffer, &buffer.memory.description)?;
        check_offset(self.info(), buffer.buffer.offset, "buffer", "glBufferStorageMemEXT")?;
        let memory = self.import_memory(buffer.memory)?;
        memory.buffer(buffer.buffer)
    }

    /// Imports an exported texture: a memory object plus a texture with the export's tiling
    /// (`glTexStorageMem2DEXT` / `glTexStorageMem3DEXT`). Consumes the fd whether the import
    /// succeeds or fails (docs/OWNERSHIP.md).
    pub fn import_texture(&self, texture: ExportedTexture) -> Result<GlTexture> {
        let plan = TexturePlan::new(&texture.texture, &texture.memory.description, self.is_desktop())?;
        check_offset(self.info(), texture.texture.offset, "texture", "glTexStorageMem*EXT")?;
        let memory = self.import_memory(texture.memory)?;
        memory.texture_with(&texture.texture, plan)
    }
}

/// The checks and calls of one memory-object import (every buffer and texture import of a
/// [`GlContext`] goes through it).
fn import_memory_object(
    gl: &CurrentGl<'_>,
    ctx: &GlContext,
    handle: OwnedFd,
    description: &MemoryDescription,
) -> Result<GLuint> {
    let info = ctx.info();
    if !info.memory_object_fd {
        return Err(Error::unsupported(
            format!("importing memory into {}", info.renderer),
            "the context lacks GL_EXT_memory_object_fd",
            "GL_EXT_memory_object_fd",
            "use a driver that imports memory objects (Mesa, NVIDIA)",
        ));
    }
    if description.handle_kind != MemoryHandleKind::OpaqueFd {
        return Err(Error::unsupported(
            format!("importing {} memory into GL", description.handle_kind),
            "GL_EXT_memory_object_fd imports only GL_HANDLE_TYPE_OPAQUE_FD_EXT",
            "GL_EXT_memory_object_fd",
            "export the memory as an opaque fd",
        ));
    }
    raw_gpu_handle::check_compatible(description.handle_kind, &description.device, &ctx.identity())?;
    if description.allocation_size == 0 {
        return Err(Error::invalid(
            "memory description",
            "allocation_size is 0",
            "pass the exporter's description unchanged",
        ));
    }
    // Before GL sees it: llvmpipe would block reading a pipe, and map any file it is given.
    let handle = crate::fd::check_exported_memory(handle, description, "GL memory import")?;
    let mut name: GLuint = 0;
    gl.clear_errors();
    // SAFETY: `gl` keeps the context current; it has GL_EXT_memory_object_fd (checked above), so the
    // entry point is the driver's; one name is written into a local.
    unsafe { (gl.create_memory_objects_ext)(1, &mut name) };
    gl.check("glCreateMemoryObjectsEXT", "creating a memory object")?;
    if description.dedicated {
        let one: GLint = 1;
        // SAFETY: `gl` keeps the context current; `name` is a fresh memory object (its parameters may
        // still change before the import); one GLint is read from a local.
        unsafe { (gl.memory_object_parameteriv_ext)(name, f::DEDICATED_MEMORY_OBJECT_EXT, &one) };
    }
    // GL gets a copy (fd::import_consuming): the caller's fd is closed exactly once, and after a
    // failure the copy is closed only where provably ours (Mesa closes it itself, even on failure).
    let imported = crate::fd::import_consuming(handle, |raw| {
        // SAFETY: `gl` keeps the context current; `name` is our fresh memory object; `raw` is an open fd
        // that import_consuming hands over (GL owns it if the import succeeds).
        unsafe { (gl.import_memory_fd_ext)(name, description.allocation_size, f::HANDLE_TYPE_OPAQUE_FD_EXT, raw) };
        gl.check("glImportMemoryFdEXT", format!("importing a {}-byte allocation", description.allocation_size))?;
        // SAFETY: `gl` keeps the context current; glIsMemoryObjectEXT accepts any name.
        if unsafe { (gl.is_memory_object_ext)(name) } == 0 {
            return Err(Error::Api {
                api: "OpenGL",
                action: "importing memory (glImportMemoryFdEXT raised no error)".into(),
                call: "glIsMemoryObjectEXT",
                code: DriverCode::GlFalse,
                advice: "the driver did not create the memory object: check the export".into(),
            });
        }
        Ok(())
    });
    if let Err(e) = imported {
        // SAFETY: `gl` keeps the context current; `name` is the memory object created above, used by no
        // buffer or texture yet; one name is read from a local.
        unsafe { (gl.delete_memory_objects_ext)(1, &name) };
        gl.clear_errors();
        return Err(e);
    }
    Ok(name)
}

/// Mesa's glImportMemoryFdEXT raises no error when the fd is not its memory; the failure shows
/// as GL_OUT_OF_MEMORY when storage is placed. Say so rather than blame memory pressure.
fn explain_storage_oom(e: Error) -> Error {
    match e {
        Error::Api { api, action, call, code: code @ DriverCode::Gl(GlCode::OUT_OF_MEMORY), .. } => Error::Api {
            api,
            action,
            call,
            code,
            advice: "the driver could not place storage in the memory object: it is out of memory, or the imported fd \
                     was not an export of this driver's memory (Mesa reports a failed glImportMemoryFdEXT only here); \
                     pass the fd and description exactly as exported"
                .into(),
        },
        other => other,
    }
}

/// Refuses a non-zero offset on a driver that would ignore it (llvmpipe).
fn check_offset(info: &super::GlDeviceInfo, offset: u64, what: &str, call: &str) -> Result<()> {
    if offset != 0 && !info.honours_memory_offset {
        return Err(Error::unsupported(
            format!("a GL {what} at offset {offset} of an imported allocation on {}", info.renderer),
            format!(
                "{} ignores the offset given to {call} and would place the {what} at the allocation's first byte",
                info.renderer
            ),
            "GL_EXT_memory_object places resources at the given offset; llvmpipe's resource_from_memobj does not",
            format!(
                "on this driver give each GL {what} its own allocation (offset 0): a dedicated Vulkan allocation rather than a suballocated block"
            ),
        ));
    }
    Ok(())
}

fn check_buffer_range(buffer: &BufferDescription, memory: &MemoryDescription) -> Result<()> {
    let end = buffer.offset.checked_add(buffer.size);
    if buffer.size == 0 || end.is_none_or(|end| end > memory.allocation_size) || buffer.size > isize::MAX as u64 {
        return Err(Error::invalid(
            "GL buffer range",
            format!(
                "{} bytes at offset {} do not fit in the {}-byte allocation",
                buffer.size, buffer.offset, memory.allocation_size
            ),
            "pass the export's buffer description unchanged",
        ));
    }
    Ok(())
}

impl GlMemory {
    /// The GL memory object name.
    pub fn name(&self) -> GLuint {
        self.name
    }

    /// The exported allocation's description.
    pub fn description(&self) -> &MemoryDescription {
        &self.description
    }

    /// The context it was imported into.
    pub fn context(&self) -> &GlContext {
        &self.ctx
    }

    fn check_offset(&self, offset: u64, what: &str, call: &str) -> Result<()> {
        check_offset(self.ctx.info(), offset, what, call)
    }

    /// Places a GL buffer over `range` of this memory (`glBufferStorageMemEXT` at its offset).
    ///
    /// llvmpipe refuses a buffer that reaches the allocation's end; that refusal comes back as
    /// [`Error::Unsupported`] naming the rule and the cure
    /// ([`BufferOptions::for_gl`](crate::BufferOptions::for_gl)).
    pub fn buffer(self: &Arc<Self>, range: BufferDescription) -> Result<GlBuffer> {
        check_buffer_range(&range, &self.description)?;
        self.check_offset(range.offset, "buffer", "glBufferStorageMemEXT")?;
        let gl = self.ctx.make_current()?;
        let mut name: GLuint = 0;
        gl.clear_errors();
        // SAFETY: `gl` keeps the context current; one name is written into a local; the fresh buffer is
        // bound to COPY_WRITE_BUFFER before its storage is placed; size (<= isize::MAX) and offset were
        // checked against the allocation; self.name is our live memory object.
        unsafe {
            (gl.gen_buffers)(1, &mut name);
            (gl.bind_buffer)(f::COPY_WRITE_BUFFER, name);
            (gl.buffer_storage_mem_ext)(f::COPY_WRITE_BUFFER, range.size as isize, self.name, range.offset);
        }
        let stored = gl
            .check("glBufferStorageMemEXT", format!("placing a {}-byte buffer at offset {}", range.size, range.offset));
        // SAFETY: `gl` keeps the context current; unbinding takes no pointers.
        unsafe { (gl.bind_buffer)(f::COPY_WRITE_BUFFER, 0) };
        if let Err(e) = stored {
            // SAFETY: `gl` keeps the context current; `name` is the buffer generated above, used by nothing.
            unsafe { (gl.delete_buffers)(1, &name) };
            gl.clear_errors();
            let end = range.offset + range.size;
            let refused_oom = e.gl_code() == Some(GlCode::OUT_OF_MEMORY);
            if refused_oom && range.size + GL_BUFFER_SLACK > self.description.allocation_size {
                return Err(Error::unsupported(
                    format!(
                        "a GL buffer over bytes {}..{end} of a {}-byte allocation on {}",
                        range.offset,
                        self.description.allocation_size,
                        self.ctx.info().renderer
                    ),
                    "glBufferStorageMemEXT returned GL_OUT_OF_MEMORY: the buffer is as large as the whole allocation, or nearly",
                    format!(
                        "llvmpipe places a GL buffer in a memory object only if the object is at least {GL_BUFFER_SLACK} bytes larger than the buffer"
                    ),
                    format!(
                        "allocate buffers meant for GL with BufferOptions::for_gl(), which leaves {GL_BUFFER_SLACK} bytes after the buffer (docs/GL.md, \"Buffer slack\")"
                    ),
                ));
            }
            return Err(explain_storage_oom(e));
        }
        Ok(GlBuffer { memory: Arc::clone(self), name, description: range })
    }

    /// Creates a texture in this memory with `description`'s format, shape, offset and tiling.
    pub fn texture(self: &Arc<Self>, description: &TextureDescription) -> Result<GlTexture> {
        let plan = TexturePlan::new(description, &self.description, self.ctx.is_desktop())?;
        self.texture_with(description, plan)
    }

    fn texture_with(self: &Arc<Self>, description: &TextureDescription, plan: TexturePlan) -> Result<GlTexture> {
        self.check_offset(description.offset, "texture", "glTexStorageMem*EXT")?;
        let gl = self.ctx.make_current()?;
        let d = description;
        // GL_EXT_memory_object: which tilings this format and target can be imported with.
        let mut count: GLint = 0;
        gl.clear_errors();
        // SAFETY: `gl` keeps the context current; bufSize 1 and one GLint written into a local.
        unsafe { (gl.get_internalformativ)(plan.target, plan.internal, f::NUM_TILING_TYPES_EXT, 1, &mut count) };
        if gl.check("glGetInternalformativ", "querying GL_NUM_TILING_TYPES_EXT").is_ok() && count > 0 {
            let mut tilings = vec![0 as GLint; count as usize];
            // SAFETY: `gl` keeps the context current; `tilings` holds `count` GLints, the bufSize passed.
            unsafe {
                (gl.get_internalformativ)(plan.target, plan.internal, f::TILING_TYPES_EXT, count, tilings.as_mut_ptr())
            };
            if gl.check("glGetInternalformativ", "querying GL_TILING_TYPES_EXT").is_ok()
                && !tilings.contains(&plan.tiling)
            {
                let name = |t: GLint| if t == f::OPTIMAL_TILING_EXT { "optimal" } else { "linear" };
                return Err(Error::unsupported(
                    format!("a {} {:?} texture with {} tiling in GL", d.format, d.dimension, name(plan.tiling)),
                    format!(
                        "{} imports this format and target only with {} tiling",
                        self.ctx.info().renderer,
                        tilings.iter().map(|t| name(*t)).collect::<Vec<_>>().join(" or ")
                    ),
                    "GL_TILING_TYPES_EXT (glGetInternalformativ)",
                    "create the Vulkan image with a tiling GL imports (optimal is the common one)",
                ));
            }
        }
        let (w, h, depth) = (d.extent.width as i32, d.extent.height as i32, d.extent.depth as i32);
        let layers = d.array_layers as i32;
        let mut name: GLuint = 0;
        gl.clear_errors();
        // SAFETY: `gl` keeps the context current; one name is written into a local; the fresh texture is
        // bound to its target before storage is placed in our live memory object; the calls take no host
        // pointers, and sizes that GL refuses only raise GL errors.
        unsafe {
            (gl.gen_textures)(1, &mut name);
            (gl.bind_texture)(plan.target, name);
            (gl.tex_parameteri)(plan.target, f::TEXTURE_TILING_EXT, plan.tiling);
            (gl.tex_parameteri)(plan.target, f::TEXTURE_MIN_FILTER, f::NEAREST);
            (gl.tex_parameteri)(plan.target, f::TEXTURE_MAG_FILTER, f::NEAREST);
            match d.dimension {
                TextureDimension::D1 => {
                    (gl.tex_storage_mem_1d_ext)(plan.target, 1, plan.internal, w, self.name, d.offset)
                }
                TextureDimension::D1Array => {
                    (gl.tex_storage_mem_2d_ext)(plan.target, 1, plan.internal, w, layers, self.name, d.offset)
                }
                TextureDimension::D2 => {
                    (gl.tex_storage_mem_2d_ext)(plan.target, 1, plan.internal, w, h, self.name, d.offset)
                }
                TextureDimension::D2Array => {
                    (gl.tex_storage_mem_3d_ext)(plan.target, 1, plan.internal, w, h, layers, self.name, d.offset)
                }
                TextureDimension::D3 => {
                    (gl.tex_storage_mem_3d_ext)(plan.target, 1, plan.internal, w, h, depth, self.name, d.offset)
                }
            }
        }
        let call = match d.dimension {
            TextureDimension::D1 => "glTexStorageMem1DEXT",
            TextureDimension::D1Array | TextureDimension::D2 => "glTexStorageMem2DEXT",
            TextureDimension::D2Array | TextureDimension::D3 => "glTexStorageMem3DEXT",
        };
        let stored = gl.check(
            call,
            format!(
                "placing a {:?} {} texture {}x{}x{} ({} layers, {}) at offset {}",
                d.dimension,
                d.format,
                w,
                h,
                depth,
                layers,
                if plan.tiling == f::OPTIMAL_TILING_EXT { "optimal tiling" } else { "linear tiling" },
                d.offset
            ),
        );
        // SAFETY: `gl` keeps the context current; unbinding takes no pointers.
        unsafe { (gl.bind_texture)(plan.target, 0) };
        if let Err(e) = stored {
            // SAFETY: `gl` keeps the context current; `name` is the texture generated above, used by nothing.
            unsafe { (gl.delete_textures)(1, &name) };
            gl.clear_errors();
            return Err(explain_storage_oom(e));
        }
        Ok(GlTexture { memory: Arc::clone(self), name, plan, description: description.clone() })
    }
}

impl Drop for GlMemory {
    fn drop(&mut self) {
        match self.ctx.inner.current() {
            Ok(gl) => {
                // SAFETY: `current()` made the context current on this thread; the memory object is ours and
                // deleted once, here; every buffer and texture in it holds an Arc to self, so none is left.
                unsafe { (gl.delete_memory_objects_ext)(1, &self.name) };
                if let Err(e) = gl.check("glDeleteMemoryObjectsEXT", "releasing an imported memory object") {
                    self.ctx.inner.defer_error(e);
                }
            }
            Err(e) => self
                .ctx
                .inner
                .defer_error(crate::error::DeferredError::new(format!("leaking GL memory object {}", self.name), e)),
        }
    }
}

/// The GL target, internal format, pixel-transfer format and tiling of one texture.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TexturePlan {
    pub(crate) target: GLenum,
    pub(crate) internal: GLenum,
    pub(crate) format: GLenum,
    pub(crate) ty: GLenum,
    pub(crate) tiling: GLint,
}

/// GL's internal format, pixel-transfer format and type for a shared texel format.
pub fn gl_formats(format: TextureFormat) -> (GLenum, GLenum, GLenum) {
    use TextureFormat::*;
    match format {
        R8Unorm => (f::R8, f::RED, f::UNSIGNED_BYTE),
        Rg8Unorm => (f::RG8, f::RG, f::UNSIGNED_BYTE),
        Rgba8Unorm => (f::RGBA8, f::RGBA, f::UNSIGNED_BYTE),
        Rgba8Uint => (f::RGBA8UI, f::RGBA_INTEGER, f::UNSIGNED_BYTE),
        R16Float => (f::R16F, f::RED, f::HALF_FLOAT),
        Rgba16Float => (f::RGBA16F, f::RGBA, f::HALF_FLOAT),
        R32Uint => (f::R32UI, f::RED_INTEGER, f::UNSIGNED_INT),
        R32Float => (f::R32F, f::RED, f::FLOAT),
        Rg32Float => (f::RG32F, f::RG, f::FLOAT),
        Rgba32Float => (f::RGBA32F, f::RGBA, f::FLOAT),
        Rgba32Uint => (f::RGBA32UI, f::RGBA_INTEGER, f::UNSIGNED_INT),
        #[allow(unreachable_patterns)]
        _ => (0, 0, 0),
    }
}

impl TexturePlan {
    fn new(d: &TextureDescription, memory: &MemoryDescription, desktop: bool) -> Result<TexturePlan> {
        d.validate()
            .map_err(|e| Error::invalid("texture description", e.0, "pass the export's description unchanged"))?;
        if d.offset.checked_add(d.size).is_none_or(|end| end > memory.allocation_size) {
            return Err(Error::invalid(
                "texture range",
                format!(
                    "{} bytes at offset {} exceed the {}-byte allocation",
                    d.size, d.offset, memory.allocation_size
                ),
                "pass the export's texture description unchanged",
            ));
        }
        let limit = i32::MAX as u32;
        if d.extent.width > limit || d.extent.height > limit || d.extent.depth > limit || d.array_layers > limit {
            return Err(Error::invalid("texture extent", "larger than GLsizei", "use a smaller texture"));
        }
        let tiling = match &d.tiling {
            TextureTiling::Linear { .. } => f::LINEAR_TILING_EXT,
            TextureTiling::Optimal => f::OPTIMAL_TILING_EXT,
            TextureTiling::DrmModifier { modifier, .. } => {
                return Err(Error::unsupported(
                    format!("a GL texture from DRM format modifier {modifier:#x}"),
                    "GL_EXT_memory_object textures are linear or optimal only",
                    "GL_TEXTURE_TILING_EXT",
                    "export the image with VK_IMAGE_TILING_OPTIMAL or LINEAR, or import the dma-buf with EGL_EXT_image_dma_buf_import",
                ))
            }
        };
        let target = match d.dimension {
            TextureDimension::D1 if !desktop => {
                return Err(Error::unsupported(
                    "a 1D texture in OpenGL ES",
                    "OpenGL ES has no 1D textures",
                    "OpenGL ES 3.2",
                    "share it as a 2D texture of height 1",
                ))
            }
            TextureDimension::D1Array if !desktop => {
                return Err(Error::unsupported(
                    "a 1D array texture in OpenGL ES",
                    "OpenGL ES has no 1D array textures",
                    "OpenGL ES 3.2",
                    "share it as a 2D array texture of height 1",
                ))
            }
            TextureDimension::D1 => f::TEXTURE_1D,
            TextureDimension::D1Array => f::TEXTURE_1D_ARRAY,
            TextureDimension::D2 => f::TEXTURE_2D,
            TextureDimension::D2Array => f::TEXTURE_2D_ARRAY,
            TextureDimension::D3 => f::TEXTURE_3D,
        };
        let (internal, format, ty) = gl_formats(d.format);
        if internal == 0 {
            return Err(Error::unsupported(
                format!("{} textures in GL", d.format),
                "lava-flow has no GL format for it",
                "GL internal formats",
                "use one of TextureFormat::ALL",
            ));
        }
        Ok(TexturePlan { target, internal, format, ty, tiling })
    }
}

/// A GL buffer over imported memory. Holds its memory object (and so the context) alive.
pub struct GlBuffer {
    memory: Arc<GlMemory>,
    name: GLuint,
    description: BufferDescription,
}

impl std::fmt::Debug for GlBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlBuffer").field("name", &self.name).field("description", &self.description).finish()
    }
}

impl GlBuffer {
    /// The GL buffer name (bind it to any target while the context is current).
    pub fn name(&self) -> GLuint {
        self.name
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.description.size
    }

    /// Where it lies in its memory.
    pub fn description(&self) -> &BufferDescription {
        &self.description
    }

    /// The memory object it lies in.
    pub fn memory(&self) -> &Arc<GlMemory> {
        &self.memory
    }

    /// The context.
    pub fn context(&self) -> &GlContext {
        &self.memory.ctx
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.description.size) {
            return Err(Error::invalid(
                "GL buffer access",
                format!("{len} bytes at offset {offset} exceed the {}-byte buffer", self.description.size),
                "stay inside the buffer",
            ));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` through GL (`glGetBufferSubData`; GLES copies to a staging
    /// buffer and maps that). Sees what GL wrote; sees other APIs' writes once they are ordered
    /// before (semaphore wait, or their completion plus `glFinish` where GL has no semaphores).
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check_range(offset, len as u64)?;
        let gl = self.memory.ctx.make_current()?;
        let mut out = vec![0u8; len];
        if len == 0 {
            return Ok(out);
        }
        gl.clear_errors();
        if gl.is_desktop() {
            // SAFETY: `gl` keeps the context current (desktop GL, where glGetBufferSubData exists); the
            // buffer is ours; glGetBufferSubData writes at most `len` bytes into `out`, which holds `len`
            // bytes, and writes nothing when the range is refused (a GL error); the range was checked.
            unsafe {
                (gl.bind_buffer)(f::COPY_READ_BUFFER, self.name);
                (gl.get_buffer_sub_data)(f::COPY_READ_BUFFER, offset as isize, len as isize, out.as_mut_ptr().cast());
                (gl.bind_buffer)(f::COPY_READ_BUFFER, 0);
            }
            gl.check("glGetBufferSubData", format!("reading {len} bytes of GL buffer {}", self.name))?;
        } else {
            let mut staging: GLuint = 0;
            // SAFETY: `gl` keeps the context current; the staging buffer is ours and holds `len` bytes; a
            // non-null pointer from glMapBufferRange is valid for `len` bytes until glUnmapBuffer, and is
            // copied into `out` (len bytes, a separate allocation) before that.
            let mapped_ok = unsafe {
                (gl.gen_buffers)(1, &mut staging);
                (gl.bind_buffer)(f::COPY_WRITE_BUFFER, staging);
                (gl.buffer_data)(f::COPY_WRITE_BUFFER, len as isize, std::ptr::null(), f::STREAM_READ);
                (gl.bind_buffer)(f::COPY_READ_BUFFER, self.name);
                (gl.copy_buffer_sub_data)(f::COPY_READ_BUFFER, f::COPY_WRITE_BUFFER, offset as isize, 0, len as isize);
                let p = (gl.map_buffer_range)(f::COPY_WRITE_BUFFER, 0, len as isize, f::MAP_READ_BIT);
                let ok = !p.is_null();
                if ok {
                    std::ptr::copy_nonoverlapping(p.cast::<u8>(), out.as_mut_ptr(), len);
                    (gl.unmap_buffer)(f::COPY_WRITE_BUFFER);
                }
                (gl.bind_buffer)(f::COPY_READ_BUFFER, 0);
                (gl.bind_buffer)(f::COPY_WRITE_BUFFER, 0);
                (gl.delete_buffers)(1, &staging);
                ok
            };
            gl.check("glMapBufferRange", format!("reading {len} bytes of GL buffer {}", self.name))?;
            if !mapped_ok {
                return Err(gl_error(
                    "glMapBufferRange",
                    f::INVALID_OPERATION,
                    "mapping a staging buffer",
                    gl_info(self),
                ));
            }
        }
        Ok(out)
    }

    /// Writes `data` at `offset` through GL. Buffers over memory objects have no
    /// `GL_DYNAMIC_STORAGE_BIT`, so this fills a staging buffer and `glCopyBufferSubData`s it.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let gl = self.memory.ctx.make_current()?;
        gl.clear_errors();
        let mut staging: GLuint = 0;
        // SAFETY: `gl` keeps the context current; glBufferData reads data.len() bytes from `data`; the
        // copy into our buffer is of a range checked above (GL refuses others with an error).
        unsafe {
            (gl.gen_buffers)(1, &mut staging);
            (gl.bind_buffer)(f::COPY_READ_BUFFER, staging);
            (gl.buffer_data)(f::COPY_READ_BUFFER, data.len() as isize, data.as_ptr().cast(), f::STREAM_DRAW);
            (gl.bind_buffer)(f::COPY_WRITE_BUFFER, self.name);
            (gl.copy_buffer_sub_data)(
                f::COPY_READ_BUFFER,
                f::COPY_WRITE_BUFFER,
                0,
                offset as isize,
                data.len() as isize,
            );
            (gl.bind_buffer)(f::COPY_WRITE_BUFFER, 0);
            (gl.bind_buffer)(f::COPY_READ_BUFFER, 0);
            (gl.delete_buffers)(1, &staging);
        }
        gl.check("glCopyBufferSubData", format!("writing {} bytes into GL buffer {}", data.len(), self.name))
    }
}

fn gl_info(b: &GlBuffer) -> &super::GlDeviceInfo {
    b.memory.ctx.info()
}

impl Drop for GlBuffer {
    fn drop(&mut self) {
        let inner = &self.memory.ctx.inner;
        match inner.current() {
            Ok(gl) => {
                // SAFETY: `current()` made the context current on this thread; the buffer name is ours and
                // deleted once, here.
                unsafe { (gl.delete_buffers)(1, &self.name) };
                if let Err(e) = gl.check("glDeleteBuffers", "releasing an imported GL buffer") {
                    inner.defer_error(e);
                }
            }
            Err(e) => {
                inner.defer_error(crate::error::DeferredError::new(format!("leaking GL buffer {}", self.name), e))
            }
        }
    }
}

/// Which pixel transfers [`pixel_store`] prepares: packing (glGetTexImage, glReadPixels write
/// host memory) or unpacking (glTexSubImage reads it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transfer {
    Pack,
    Unpack,
}

/// Sets the pixel-store state and buffer binding that decide which host bytes a pixel transfer
/// touches: rows tightly packed (`tight`: alignment 1; otherwise GL's default 4), no row length,
/// no skipped rows, pixels or images, and no pixel buffer bound (which would turn the host pointer
/// into a buffer offset). Code holding a [`CurrentGl`] guard may set any of these on this
/// context; lava-flow's reads and writes call this first, so the driver touches exactly the
/// host slice they pass, and again after, leaving GL's defaults.
fn pixel_store(gl: &CurrentGl<'_>, transfer: Transfer, tight: bool) {
    let (buffer, alignment, zeroed) = match transfer {
        Transfer::Pack => (
            f::PIXEL_PACK_BUFFER,
            f::PACK_ALIGNMENT,
            [f::PACK_ROW_LENGTH, f::PACK_SKIP_ROWS, f::PACK_SKIP_PIXELS, f::PACK_IMAGE_HEIGHT, f::PACK_SKIP_IMAGES],
        ),
        Transfer::Unpack => (
            f::PIXEL_UNPACK_BUFFER,
            f::UNPACK_ALIGNMENT,
            [
                f::UNPACK_ROW_LENGTH,
                f::UNPACK_SKIP_ROWS,
                f::UNPACK_SKIP_PIXELS,
                f::UNPACK_IMAGE_HEIGHT,
                f::UNPACK_SKIP_IMAGES,
            ],
        ),
    };
    // OpenGL ES has no GL_PACK_IMAGE_HEIGHT or GL_PACK_SKIP_IMAGES (its glReadPixels reads one
    // image); setting them there would only raise GL_INVALID_ENUM.
    let count = if transfer == Transfer::Pack && !gl.is_desktop() { 3 } else { 5 };
    // SAFETY: the guard proves the context is current on this thread; glBindBuffer and
    // glPixelStorei take no pointers, and every parameter named exists in the context's API.
    unsafe {
        (gl.bind_buffer)(buffer, 0);
        (gl.pixel_storei)(alignment, if tight { 1 } else { 4 });
        for pname in &zeroed[..count] {
            (gl.pixel_storei)(*pname, 0);
        }
    }
}

/// A GL texture over imported memory. Holds its memory object (and so the context) alive.
pub struct GlTexture {
    memory: Arc<GlMemory>,
    name: GLuint,
    plan: TexturePlan,
    description: TextureDescription,
}

impl std::fmt::Debug for GlTexture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlTexture")
            .field("name", &self.name)
            .field("target", &format_args!("{:#x}", self.plan.target))
            .field("description", &self.description)
            .finish()
    }
}

impl GlTexture {
    /// The GL texture name.
    pub fn name(&self) -> GLuint {
        self.name
    }

    /// `GL_TEXTURE_1D`, `GL_TEXTURE_1D_ARRAY`, `GL_TEXTURE_2D`, `GL_TEXTURE_2D_ARRAY` or `GL_TEXTURE_3D`.
    pub fn target(&self) -> GLenum {
        self.plan.target
    }

    /// The sized internal format (`GL_RGBA8`, ...), e.g. for `glBindImageTexture`.
    pub fn internal_format(&self) -> GLenum {
        self.plan.internal
    }

    /// The exported description.
    pub fn description(&self) -> &TextureDescription {
        &self.description
    }

    /// The memory object it lies in.
    pub fn memory(&self) -> &Arc<GlMemory> {
        &self.memory
    }

    /// The context.
    pub fn context(&self) -> &GlContext {
        &self.memory.ctx
    }

    /// Bytes of all layers, tightly packed (the layout `write` takes and Vulkan's `download` gives).
    pub fn packed_size(&self) -> usize {
        let e = self.description.extent;
        e.width as usize
            * e.height as usize
            * e.depth as usize
            * self.description.array_layers as usize
            * self.description.format.texel_size() as usize
    }

    /// Reads every texel of every layer, tightly packed, rows then slices then layers, through a
    /// framebuffer with `glReadPixels` per layer.
    ///
    /// The GPU read through a framebuffer comes first: NVIDIA's `glGetTexImage` can return the
    /// texture as GL last wrote it even after `glWaitSemaphoreEXT` made another API's later writes
    /// visible (seen on an H200, driver 580), while a framebuffer read sees them. Formats that are
    /// not color-renderable, and half-float formats, use `glGetTexImage` on desktop GL.
    pub fn read(&self) -> Result<Vec<u8>> {
        // Half floats come back through glReadPixels converted (NaN payloads are not kept), so
        // they are read bit-exact with glGetTexImage.
        if matches!(self.description.format, TextureFormat::R16Float | TextureFormat::Rgba16Float)
            && self.memory.ctx.make_current()?.is_desktop()
        {
            return self.read_with(false);
        }
        match self.read_with(true) {
            Err(Error::Unsupported { .. }) if self.memory.ctx.make_current()?.is_desktop() => self.read_with(false),
            other => other,
        }
    }

    /// Reads like [`GlTexture::read`], but always through a framebuffer and `glReadPixels` (a GPU
    /// read of the texture), also on desktop GL.
    pub fn read_through_framebuffer(&self) -> Result<Vec<u8>> {
        self.read_with(true)
    }

    fn read_with(&self, framebuffer: bool) -> Result<Vec<u8>> {
        let gl = self.memory.ctx.make_current()?;
        let mut out = vec![0u8; self.packed_size()];
        let p = self.plan;
        gl.clear_errors();
        if gl.is_desktop() && !framebuffer {
            pixel_store(&gl, Transfer::Pack, true);
            // SAFETY: the guard makes the context current; pixel_store set tight packing with no
            // row length, skips or pack buffer, so glGetTexImage writes exactly the level's
            // width*height*depth*layers texels of p's format and type, packed_size() bytes: the
            // length of `out`, which this call borrows exclusively.
            unsafe {
                (gl.bind_texture)(p.target, self.name);
                (gl.get_tex_image)(p.target, 0, p.format, p.ty, out.as_mut_ptr().cast());
                (gl.bind_texture)(p.target, 0);
            }
            pixel_store(&gl, Transfer::Pack, false);
            gl.check("glGetTexImage", format!("reading texture {}", self.name))?;
            return Ok(out);
        }
        let e = self.description.extent;
        let slices = (e.depth * self.description.array_layers) as usize;
        let slice_bytes = out.len() / slices.max(1);
        let mut fbo: GLuint = 0;
        pixel_store(&gl, Transfer::Pack, true);
        // SAFETY: the guard makes the context current; pixel_store set tight packing with no row
        // length, skips or pack buffer, so each glReadPixels writes width*height texels of p's
        // format and type, slice_bytes bytes, at layer*slice_bytes < out.len() into `out`
        // (exclusively borrowed); the framebuffer is ours and deleted afterwards.
        let complete = unsafe {
            (gl.gen_framebuffers)(1, &mut fbo);
            (gl.bind_framebuffer)(f::READ_FRAMEBUFFER, fbo);
            let mut complete = true;
            for layer in 0..slices {
                if p.target == f::TEXTURE_2D {
                    (gl.framebuffer_texture_2d)(f::READ_FRAMEBUFFER, f::COLOR_ATTACHMENT0, p.target, self.name, 0);
                } else {
                    (gl.framebuffer_texture_layer)(
                        f::READ_FRAMEBUFFER,
                        f::COLOR_ATTACHMENT0,
                        self.name,
                        0,
                        layer as i32,
                    );
                }
                if (gl.check_framebuffer_status)(f::READ_FRAMEBUFFER) != f::FRAMEBUFFER_COMPLETE {
                    complete = false;
                    break;
                }
                let dst = out.as_mut_ptr().add(layer * slice_bytes);
                (gl.read_pixels)(0, 0, e.width as i32, e.height as i32, p.format, p.ty, dst.cast());
            }
            (gl.bind_framebuffer)(f::READ_FRAMEBUFFER, 0);
            (gl.delete_framebuffers)(1, &fbo);
            complete
        };
        pixel_store(&gl, Transfer::Pack, false);
        gl.check("glReadPixels", format!("reading texture {} through a framebuffer", self.name))?;
        if !complete {
            return Err(Error::unsupported(
                format!("reading a {} texture back in OpenGL ES", self.description.format),
                "the format is not color-renderable, so no framebuffer can read it",
                "glCheckFramebufferStatus",
                "read it on the Vulkan side, or use a desktop GL context",
            ));
        }
        Ok(out)
    }

    /// Writes every texel of every layer from `data`, tightly packed (see [`GlTexture::read`]).
    pub fn write(&self, data: &[u8]) -> Result<()> {
        if data.len() != self.packed_size() {
            return Err(Error::invalid(
                "GL texture upload",
                format!("{} bytes given, the texture holds {} packed", data.len(), self.packed_size()),
                "pass width x height x depth x layers x texel size bytes",
            ));
        }
        let gl = self.memory.ctx.make_current()?;
        let p = self.plan;
        let e = self.description.extent;
        let (w, h, d, layers) = (e.width as i32, e.height as i32, e.depth as i32, self.description.array_layers as i32);
        gl.clear_errors();
        pixel_store(&gl, Transfer::Unpack, true);
        // SAFETY: the guard makes the context current; pixel_store set tight unpacking with no row
        // length, skips or unpack buffer, so glTexSubImage reads exactly the level's texels of p's
        // format and type, packed_size() bytes, which is data.len() (checked above).
        unsafe {
            (gl.bind_texture)(p.target, self.name);
            let ptr = data.as_ptr().cast();
            match self.description.dimension {
                TextureDimension::D1 => (gl.tex_sub_image_1d)(p.target, 0, 0, w, p.format, p.ty, ptr),
                TextureDimension::D1Array => (gl.tex_sub_image_2d)(p.target, 0, 0, 0, w, layers, p.format, p.ty, ptr),
                TextureDimension::D2 => (gl.tex_sub_image_2d)(p.target, 0, 0, 0, w, h, p.format, p.ty, ptr),
                TextureDimension::D2Array => {
                    (gl.tex_sub_image_3d)(p.target, 0, 0, 0, 0, w, h, layers, p.format, p.ty, ptr)
                }
                TextureDimension::D3 => (gl.tex_sub_image_3d)(p.target, 0, 0, 0, 0, w, h, d, p.format, p.ty, ptr),
            }
            (gl.bind_texture)(p.target, 0);
        }
        pixel_store(&gl, Transfer::Unpack, false);
        gl.check("glTexSubImage", format!("writing texture {}", self.name))
    }
}

impl Drop for GlTexture {
    fn drop(&mut self) {
        let inner = &self.memory.ctx.inner;
        match inner.current() {
            Ok(gl) => {
                // SAFETY: `current()` made the context current on this thread; the texture name is ours and
                // deleted once, here.
                unsafe { (gl.delete_textures)(1, &self.name) };
                if let Err(e) = gl.check("glDeleteTextures", "releasing an imported GL texture") {
                    inner.defer_error(e);
                }
            }
            Err(e) => {
                inner.defer_error(crate::error::DeferredError::new(format!("leaking GL texture {}", self.name), e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_has_a_gl_format_of_its_texel_size() {
        for format in TextureFormat::ALL {
            let (internal, pixel, ty) = gl_formats(format);
            assert!(internal != 0 && pixel != 0 && ty != 0, "{format}");
            let channels = match pixel {
                f::RED | f::RED_INTEGER => 1,
                f::RG => 2,
                f::RGBA | f::RGBA_INTEGER => 4,
                other => panic!("{format}: pixel format {other:#x}"),
            };
            let size = match ty {
                f::UNSIGNED_BYTE => 1,
                f::HALF_FLOAT => 2,
                f::UNSIGNED_INT | f::FLOAT => 4,
                other => panic!("{format}: type {other:#x}"),
            };
            assert_eq!(channels * size, format.texel_size(), "{format}");
        }
    }
}
