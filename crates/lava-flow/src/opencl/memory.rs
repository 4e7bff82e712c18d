//! Buffers and images imported with cl_khr_external_memory_opaque_fd.

use cl3::ext as cl;
use cl3::ext::{cl_mem, cl_mem_properties};
use raw_gpu_handle::{
    BufferDescription, ExportedBuffer, ExportedTexture, MemoryDescription, MemoryHandleKind, TextureDescription,
    TextureDimension, TextureFormat, TextureTiling,
};

use super::context::{cl_error, ClContext, ExternalMem};
use crate::{Error, Result};

/// The checks every memory import makes before OpenCL sees the fd. Returns the fd back.
fn check_import(
    ctx: &ClContext,
    handle: std::os::fd::OwnedFd,
    d: &MemoryDescription,
    what: &str,
) -> Result<std::os::fd::OwnedFd> {
    let info = ctx.info();
    if !info.external_memory_opaque_fd {
        return Err(Error::unsupported(
            format!("importing memory into OpenCL on {}", info.name),
            "the device lacks cl_khr_external_memory_opaque_fd",
            "CL_DEVICE_EXTERNAL_MEMORY_IMPORT_HANDLE_TYPES_KHR",
            "use a device whose OpenCL driver imports opaque fds (NVIDIA's)",
        ));
    }
    if d.handle_kind != MemoryHandleKind::OpaqueFd {
        return Err(Error::unsupported(
            format!("importing {} memory into OpenCL", d.handle_kind),
            "lava-flow imports only CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR",
            "cl_khr_external_memory_opaque_fd",
            "export the memory as an opaque fd",
        ));
    }
    ctx.check_exporter(&d.device)?;
    if d.allocation_size == 0 || d.allocation_size > usize::MAX as u64 {
        return Err(Error::invalid("memory description", "allocation_size is 0", "pass the export unchanged"));
    }
    crate::fd::check_exported_memory(handle, d, what)
}

/// Import properties: the handle, and the one device it is for.
fn properties(ctx: &ClContext, fd: i32) -> [cl_mem_properties; 6] {
    [
        cl::CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR as cl_mem_properties,
        fd as cl_mem_properties,
        cl::CL_MEM_DEVICE_HANDLE_LIST_KHR,
        ctx.device() as cl_mem_properties,
        cl::CL_MEM_DEVICE_HANDLE_LIST_END_KHR,
        0,
    ]
}

/// A buffer over imported memory. The whole allocation is imported (OpenCL imports have no
/// offset); a buffer at a non-zero offset or smaller than the allocation is a sub-buffer of it.
/// Holds the context alive.
pub struct ClBuffer {
    ctx: ClContext,
    imported: cl_mem,
    view: Option<cl_mem>,
    description: BufferDescription,
    allocation_size: u64,
}

// SAFETY: cl_mem handles are not tied to a thread and OpenCL calls on them are thread safe
// (OpenCL 3.0 A.2); ClBuffer never changes them and releases them only in Drop.
unsafe impl Send for ClBuffer {}
// SAFETY: as for Send.
unsafe impl Sync for ClBuffer {}

impl std::fmt::Debug for ClBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClBuffer").field("description", &self.description).finish()
    }
}

impl ClContext {
    /// Imports an exported buffer (`clCreateBufferWithProperties` with
    /// `CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR` and `CL_MEM_DEVICE_HANDLE_LIST_KHR`, then a
    /// sub-buffer at the export's offset). Consumes the fd whether the import succeeds or fails
    /// (docs/OWNERSHIP.md): on success OpenCL owns it, on failure lava-flow closes it once.
    pub fn import_buffer(&self, exported: ExportedBuffer) -> Result<ClBuffer> {
        self.check_deferred()?;
        let ExportedBuffer { memory, buffer: desc, .. } = exported;
        let d = memory.description;
        if desc.size == 0 || desc.offset.checked_add(desc.size).is_none_or(|end| end > d.allocation_size) {
            return Err(Error::invalid(
                "OpenCL buffer range",
                format!(
                    "{} bytes at offset {} do not fit in the {}-byte allocation",
                    desc.size, desc.offset, d.allocation_size
                ),
                "pass the export's buffer description unchanged",
            ));
        }
        let fd = check_import(self, memory.handle, &d, "OpenCL buffer import")?;
        // OpenCL gets a copy (fd::import_consuming), so the caller's fd is consumed exactly once
        // whatever the driver does with the copy on failure.
        let imported = crate::fd::import_consuming(fd, |raw| {
            let props = properties(self, raw);
            // SAFETY: the context is alive (self); the property list is a 0-terminated local naming `raw`,
            // an open fd that import_consuming hands over, and this context's one device; the size is the
            // whole allocation's (checked <= usize::MAX); no host pointer.
            unsafe {
                cl3::memory::create_buffer_with_properties(
                    self.context(),
                    props.as_ptr(),
                    cl::CL_MEM_READ_WRITE,
                    d.allocation_size as usize,
                    std::ptr::null_mut(),
                )
            }
            .map_err(|code| {
                cl_error(
                    "clCreateBufferWithProperties",
                    code,
                    format!("importing a {}-byte allocation from {}", d.allocation_size, d.device),
                )
            })
        })?;
        let mut buffer =
            ClBuffer { ctx: self.clone(), imported, view: None, description: desc, allocation_size: d.allocation_size };
        if desc.offset != 0 || desc.size != d.allocation_size {
            let region = cl::cl_buffer_region { origin: desc.offset as usize, size: desc.size as usize };
            // SAFETY: `imported` is the live buffer made above; the region (offset + size <= allocation
            // size, checked above) is a local passed by pointer for the call; READ_WRITE as its parent.
            let sub = unsafe {
                cl3::memory::create_sub_buffer(
                    imported,
                    cl::CL_MEM_READ_WRITE,
                    cl::CL_BUFFER_CREATE_TYPE_REGION,
                    (&region as *const cl::cl_buffer_region).cast(),
                )
            };
            // On error `buffer` drops and releases the import.
            buffer.view = Some(sub.map_err(|c| {
                cl_error("clCreateSubBuffer", c, format!("viewing {} bytes at offset {}", desc.size, desc.offset))
            })?);
        }
        Ok(buffer)
    }
}

impl super::context::sealed::Sealed for ClBuffer {}

impl ExternalMem for ClBuffer {
    fn imported_mem(&self) -> cl_mem {
        self.imported
    }
}

impl ClBuffer {
    /// The `cl_mem` to pass to kernels and copies: the sub-buffer at the export's offset, or the
    /// import itself. Acquire (see [`ClContext::acquire`]) before using it.
    pub fn mem(&self) -> cl_mem {
        self.view.unwrap_or(self.imported)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.description.size
    }

    /// Where it lies in its allocation.
    pub fn description(&self) -> &BufferDescription {
        &self.description
    }

    /// The size of the whole imported allocation.
    pub fn allocation_size(&self) -> u64 {
        self.allocation_size
    }

    /// The context.
    pub fn context(&self) -> &ClContext {
        &self.ctx
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.description.size) {
            return Err(Error::invalid(
                "OpenCL buffer access",
                format!("{len} bytes at offset {offset} exceed the {}-byte buffer", self.description.size),
                "stay inside the buffer",
            ));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset`: acquire, blocking `clEnqueueReadBuffer`, release.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check_range(offset, len as u64)?;
        let mut out = vec![0u8; len];
        self.ctx.acquire(&[self])?;
        // SAFETY: the queue and buffer are alive (self); blocking: the call returns only after `len`
        // bytes were written into `out`, which holds `len` bytes; the range lies inside the buffer (a
        // range outside would be refused with an error, not read).
        let read = unsafe {
            cl3::command_queue::enqueue_read_buffer(
                self.ctx.queue(),
                self.mem(),
                cl::CL_BLOCKING,
                offset as usize,
                len,
                out.as_mut_ptr().cast(),
                0,
                std::ptr::null(),
            )
        };
        let released = self.ctx.release(&[self]);
        release_event(read.map_err(|c| cl_error("clEnqueueReadBuffer", c, format!("reading {len} bytes")))?);
        released?;
        self.ctx.finish()?;
        Ok(out)
    }

    /// Writes `data` at `offset`: acquire, blocking `clEnqueueWriteBuffer`, release, finish.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        self.ctx.acquire(&[self])?;
        // SAFETY: the queue and buffer are alive (self); blocking: the call has read all `data.len()`
        // bytes of `data` before returning; the range lies inside the buffer (checked above).
        let written = unsafe {
            cl3::command_queue::enqueue_write_buffer(
                self.ctx.queue(),
                self.mem(),
                cl::CL_BLOCKING,
                offset as usize,
                data.len(),
                data.as_ptr().cast(),
                0,
                std::ptr::null(),
            )
        };
        let released = self.ctx.release(&[self]);
        release_event(
            written.map_err(|c| cl_error("clEnqueueWriteBuffer", c, format!("writing {} bytes", data.len())))?,
        );
        released?;
        self.ctx.finish()
    }
}

pub(crate) fn release_event(event: cl::cl_event) {
    if !event.is_null() {
        // SAFETY: a non-null event is a new reference an enqueue call returned to us, released once.
        let _ = unsafe { cl3::event::release_event(event) };
    }
}

impl Drop for ClBuffer {
    fn drop(&mut self) {
        for mem in self.view.into_iter().chain(std::iter::once(self.imported)) {
            // SAFETY: our own reference to a mem object this ClBuffer created, released once (Drop);
            // commands still queued hold their own references.
            if let Err(c) = unsafe { cl3::memory::release_mem_object(mem) } {
                self.ctx.inner.defer_error(cl_error("clReleaseMemObject", c, "releasing an imported buffer"));
            }
        }
    }
}

/// The OpenCL image format of a shared texel format: (channel order, channel data type).
pub fn cl_image_format(format: TextureFormat) -> cl::cl_image_format {
    use TextureFormat::*;
    let (order, ty) = match format {
        R8Unorm => (cl::CL_R, cl::CL_UNORM_INT8),
        Rg8Unorm => (cl::CL_RG, cl::CL_UNORM_INT8),
        Rgba8Unorm => (cl::CL_RGBA, cl::CL_UNORM_INT8),
        Rgba8Uint => (cl::CL_RGBA, cl::CL_UNSIGNED_INT8),
        R16Float => (cl::CL_R, cl::CL_HALF_FLOAT),
        Rgba16Float => (cl::CL_RGBA, cl::CL_HALF_FLOAT),
        R32Uint => (cl::CL_R, cl::CL_UNSIGNED_INT32),
        R32Float => (cl::CL_R, cl::CL_FLOAT),
        Rg32Float => (cl::CL_RG, cl::CL_FLOAT),
        Rgba32Float => (cl::CL_RGBA, cl::CL_FLOAT),
        Rgba32Uint => (cl::CL_RGBA, cl::CL_UNSIGNED_INT32),
        #[allow(unreachable_patterns)]
        _ => (0, 0),
    };
    cl::cl_image_format { image_channel_order: order, image_channel_data_type: ty }
}

/// An image over imported memory (`clCreateImageWithProperties`). Holds the context alive.
pub struct ClImage {
    ctx: ClContext,
    mem: cl_mem,
    description: TextureDescription,
}

// SAFETY: as for ClBuffer: cl_mem handles are thread safe and only released in Drop.
unsafe impl Send for ClImage {}
// SAFETY: as for ClBuffer.
unsafe impl Sync for ClImage {}

impl std::fmt::Debug for ClImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClImage").field("description", &self.description).finish()
    }
}

impl ClContext {
    /// Imports an exported texture as an image of the matching type and format. OpenCL images
    /// import the allocation from its start, so the texture must be at offset 0 (its own
    /// allocation, as lava-flow's `Image` makes it), and its tiling must be the one the driver
    /// assumes for opaque fds (optimal, unless the device lists opaque fds as linear).
    /// Consumes the fd whether the import succeeds or fails (docs/OWNERSHIP.md): on success
    /// OpenCL owns it, on failure lava-flow closes it once.
    pub fn import_image(&self, exported: ExportedTexture) -> Result<ClImage> {
        self.check_deferred()?;
        let ExportedTexture { memory, texture: t, .. } = exported;
        let d = memory.description;
        t.validate().map_err(|e| Error::invalid("texture description", e.0, "pass the export unchanged"))?;
        if t.offset != 0 || t.size > d.allocation_size {
            return Err(Error::unsupported(
                format!(
                    "an OpenCL image at offset {} ({} bytes) of a {}-byte allocation",
                    t.offset, t.size, d.allocation_size
                ),
                "cl_khr_external_memory imports images from the start of the allocation",
                "clCreateImageWithProperties has no offset",
                "give the image its own allocation (lava-flow's Image does)",
            ));
        }
        let linear = matches!(t.tiling, TextureTiling::Linear { .. });
        if matches!(t.tiling, TextureTiling::DrmModifier { .. }) || linear != self.info().opaque_fd_images_linear {
            return Err(Error::unsupported(
                format!("an OpenCL image from a {:?}-tiled texture", t.tiling),
                format!(
                    "{} assumes {} layout for opaque-fd images",
                    self.info().name,
                    if self.info().opaque_fd_images_linear { "a linear" } else { "the driver's optimal" }
                ),
                "CL_DEVICE_EXTERNAL_MEMORY_IMPORT_ASSUME_LINEAR_IMAGES_HANDLE_TYPES_KHR",
                "export the image with the tiling the device assumes, or share it as a buffer",
            ));
        }
        let image_type = match t.dimension {
            TextureDimension::D1 => cl::CL_MEM_OBJECT_IMAGE1D,
            TextureDimension::D1Array => cl::CL_MEM_OBJECT_IMAGE1D_ARRAY,
            TextureDimension::D2 => cl::CL_MEM_OBJECT_IMAGE2D,
            TextureDimension::D2Array => cl::CL_MEM_OBJECT_IMAGE2D_ARRAY,
            TextureDimension::D3 => cl::CL_MEM_OBJECT_IMAGE3D,
        };
        let format = cl_image_format(t.format);
        // SAFETY: cl_image_desc holds integers and a cl_mem (a pointer); all-zero is valid and is its
        // documented default (no buffer, no pitches).
        let mut desc: cl::cl_image_desc = unsafe { std::mem::zeroed() };
        desc.image_type = image_type;
        desc.image_width = t.extent.width as usize;
        desc.image_height = t.extent.height as usize;
        desc.image_depth = t.extent.depth as usize;
        desc.image_array_size = t.array_layers as usize;
        let fd = check_import(self, memory.handle, &d, "OpenCL image import")?;
        let mem = crate::fd::import_consuming(fd, |raw| {
            let props = properties(self, raw);
            // SAFETY: the context is alive (self); the property list is a 0-terminated local naming `raw`,
            // an open fd that import_consuming hands over, and this device; format and desc are locals that
            // outlive the call; no host pointer.
            unsafe {
                cl3::memory::create_image_with_properties(
                    self.context(),
                    props.as_ptr(),
                    cl::CL_MEM_READ_WRITE,
                    &format,
                    &desc,
                    std::ptr::null_mut(),
                )
            }
            .map_err(|code| {
                cl_error(
                    "clCreateImageWithProperties",
                    code,
                    format!("importing a {:?} {} image {:?}", t.dimension, t.format, t.extent),
                )
            })
        })?;
        Ok(ClImage { ctx: self.clone(), mem, description: t })
    }
}

impl super::context::sealed::Sealed for ClImage {}

impl ExternalMem for ClImage {
    fn imported_mem(&self) -> cl_mem {
        self.mem
    }
}

impl ClImage {
    /// The raw `cl_mem`.
    pub fn mem(&self) -> cl_mem {
        self.mem
    }

    /// The exported description.
    pub fn description(&self) -> &TextureDescription {
        &self.description
    }

    /// The context.
    pub fn context(&self) -> &ClContext {
        &self.ctx
    }

    /// Bytes of all layers, tightly packed.
    pub fn packed_size(&self) -> usize {
        let e = self.description.extent;
        e.width as usize
            * e.height as usize
            * e.depth as usize
            * self.description.array_layers as usize
            * self.description.format.texel_size() as usize
    }

    fn region(&self) -> [usize; 3] {
        let e = self.description.extent;
        let layers = self.description.array_layers as usize;
        match self.description.dimension {
            TextureDimension::D1 => [e.width as usize, 1, 1],
            TextureDimension::D1Array => [e.width as usize, layers, 1],
            TextureDimension::D2 => [e.width as usize, e.height as usize, 1],
            TextureDimension::D2Array => [e.width as usize, e.height as usize, layers],
            TextureDimension::D3 => [e.width as usize, e.height as usize, e.depth as usize],
        }
    }

    /// Reads every texel, tightly packed (acquire, blocking `clEnqueueReadImage`, release).
    pub fn read(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.packed_size()];
        let origin = [0usize; 3];
        let region = self.region();
        self.ctx.acquire(&[self])?;
        // SAFETY: the queue and image are alive (self); blocking: the call returns after writing the
        // region's texels, tightly packed (pitches 0), which is packed_size() bytes, the length of `out`.
        let read = unsafe {
            cl3::command_queue::enqueue_read_image(
                self.ctx.queue(),
                self.mem,
                cl::CL_BLOCKING,
                origin.as_ptr(),
                region.as_ptr(),
                0,
                0,
                out.as_mut_ptr().cast(),
                0,
                std::ptr::null(),
            )
        };
        let released = self.ctx.release(&[self]);
        release_event(read.map_err(|c| cl_error("clEnqueueReadImage", c, "reading an imported image"))?);
        released?;
        self.ctx.finish()?;
        Ok(out)
    }

    /// Writes every texel from `data`, tightly packed.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        if data.len() != self.packed_size() {
            return Err(Error::invalid(
                "OpenCL image upload",
                format!("{} bytes given, the image holds {} packed", data.len(), self.packed_size()),
                "pass width x height x depth x layers x texel size bytes",
            ));
        }
        let origin = [0usize; 3];
        let region = self.region();
        self.ctx.acquire(&[self])?;
        // SAFETY: the queue and image are alive (self); blocking: the call has read the region's texels,
        // tightly packed (pitches 0), packed_size() bytes, which is data.len() (checked above); OpenCL
        // only reads through the pointer despite its mutable type.
        let written = unsafe {
            cl3::command_queue::enqueue_write_image(
                self.ctx.queue(),
                self.mem,
                cl::CL_BLOCKING,
                origin.as_ptr(),
                region.as_ptr(),
                0,
                0,
                data.as_ptr().cast_mut().cast(),
                0,
                std::ptr::null(),
            )
        };
        let released = self.ctx.release(&[self]);
        release_event(written.map_err(|c| cl_error("clEnqueueWriteImage", c, "writing an imported image"))?);
        released?;
        self.ctx.finish()
    }
}

impl Drop for ClImage {
    fn drop(&mut self) {
        // SAFETY: our own reference to a mem object this ClImage created, released once (Drop);
        // commands still queued hold their own references.
        if let Err(c) = unsafe { cl3::memory::release_mem_object(self.mem) } {
            self.ctx.inner.defer_error(cl_error("clReleaseMemObject", c, "releasing an imported image"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_has_a_cl_image_format_of_its_texel_size() {
        for format in TextureFormat::ALL {
            let f = cl_image_format(format);
            let channels = match f.image_channel_order {
                cl::CL_R => 1,
                cl::CL_RG => 2,
                cl::CL_RGBA => 4,
                other => panic!("{format}: order {other:#x}"),
            };
            let size = match f.image_channel_data_type {
                cl::CL_UNORM_INT8 | cl::CL_UNSIGNED_INT8 => 1,
                cl::CL_HALF_FLOAT => 2,
                cl::CL_FLOAT | cl::CL_UNSIGNED_INT32 => 4,
                other => panic!("{format}: type {other:#x}"),
            };
            assert_eq!(channels * size, format.texel_size(), "{format}");
        }
    }
}
