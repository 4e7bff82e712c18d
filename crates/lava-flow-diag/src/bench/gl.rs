//! Measurements for `lava-flow bench`: GL import latency through lava-flow against the raw
//! `GL_EXT_memory_object` calls on the same device.

use std::time::Instant;

use raw_gpu_handle::TextureFormat;

use std::os::fd::{IntoRawFd, OwnedFd};

use lava_flow::gl::functions::{self as f, GLuint};
use lava_flow::gl::{CurrentGl, GlContext};
use lava_flow::raw_gpu_handle::MemoryDescription;
use lava_flow::vulkan::{Buffer, BufferOptions, Image, ImageOptions};
use lava_flow::{Result, VulkanContext};

use super::median;
pub use super::Row;

fn row(case: String, lava_flow: f64, raw: f64, unit: &'static str, iterations: usize) -> Row {
    Row::new("gl", case, lava_flow, Some(raw), unit).iterations(iterations.clamp(1, u32::MAX as usize) as u32)
}

/// Import latency of buffers of each size in `sizes` and of a 2D RGBA8 texture, `iterations`
/// times each, in microseconds (median). Both sides run with the context already current (a
/// guard held), so the figures compare the import work itself; the export (`vkGetMemoryFdKHR`) is
/// outside the timing.
pub fn import_latency(vk: &VulkanContext, sizes: &[u64], iterations: usize) -> Result<Vec<Row>> {
    let gl = GlContext::for_identity(&vk.identity())?;
    let guard = gl.make_current()?;
    let mut rows = Vec::new();
    for &size in sizes {
        let buffer = Buffer::new(vk, &BufferOptions::new(size).for_gl())?;
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for i in 0..=iterations.max(1) {
            // Iteration 0 warms caches and driver paths up and is not counted.
            let exported = buffer.export_fd()?;
            let t = Instant::now();
            let imported = gl.import_buffer(exported)?;
            if i > 0 {
                ours.push(t.elapsed().as_secs_f64() * 1e6);
            }
            drop(imported);

            let exported = buffer.export_fd()?;
            let (alloc, offset) = (exported.memory.description.allocation_size, exported.buffer.offset);
            let t = Instant::now();
            // SAFETY: raw_import_buffer's contract: `guard` keeps the context current, and the fd is a fresh
            // opaque-fd export of `alloc` bytes from the Vulkan device whose identity this GL context has
            // (for_identity); GL takes it.
            let names = unsafe { raw_import_buffer(&guard, exported.memory.handle, alloc, offset, size) };
            if i > 0 {
                raw.push(t.elapsed().as_secs_f64() * 1e6);
            }
            // SAFETY: the context is still current (guard) and the names are the ones raw_import_buffer made.
            unsafe { raw_release_buffer(&guard, names.0, names.1) };
        }
        rows.push(row(format!("GL buffer import, {} bytes", size), median(ours), median(raw), "us", iterations));
    }
    let image = Image::new(vk, &ImageOptions::d2(TextureFormat::Rgba8Unorm, 1024, 1024))?;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for i in 0..=iterations.max(1) {
        let exported = image.export_fd()?;
        let t = Instant::now();
        let imported = gl.import_texture(exported)?;
        if i > 0 {
            ours.push(t.elapsed().as_secs_f64() * 1e6);
        }
        drop(imported);

        let exported = image.export_fd()?;
        let t = Instant::now();
        // SAFETY: raw_import_texture's contract: `guard` keeps the context current, and the fd is a fresh
        // opaque-fd export of the optimal RGBA8 1024x1024 image made above on the Vulkan device whose
        // identity this GL context has (for_identity), described by its own description; GL takes it.
        let names =
            unsafe { raw_import_texture(&guard, exported.memory.handle, &exported.memory.description, 1024, 1024) };
        if i > 0 {
            raw.push(t.elapsed().as_secs_f64() * 1e6);
        }
        // SAFETY: the context is still current (guard) and the names are the ones raw_import_texture made.
        unsafe { raw_release_texture(&guard, names.0, names.1) };
    }
    rows.push(row("GL texture import, RGBA8 1024x1024 optimal".into(), median(ours), median(raw), "us", iterations));
    guard.check("glFinish", "finishing the benchmark")?;
    Ok(rows)
}

/// The raw calls of a buffer import with no lava-flow checks, for the import-latency benchmark's
/// baseline: create, import, place the buffer. Returns (memory object, buffer) names.
///
/// # Safety
/// The context must be current, and `fd` an opaque-fd export of `allocation_size` bytes from this
/// context's device and driver (GL takes it).
unsafe fn raw_import_buffer(
    gl: &CurrentGl<'_>,
    fd: OwnedFd,
    allocation_size: u64,
    offset: u64,
    size: u64,
) -> (GLuint, GLuint) {
    let mut memory: GLuint = 0;
    let mut buffer: GLuint = 0;
    // SAFETY: this function's contract: a current context and a valid export; GL takes the fd;
    // `memory` and `buffer` are locals the calls write one name each into.
    unsafe {
        (gl.create_memory_objects_ext)(1, &mut memory);
        (gl.import_memory_fd_ext)(memory, allocation_size, f::HANDLE_TYPE_OPAQUE_FD_EXT, fd.into_raw_fd());
        (gl.gen_buffers)(1, &mut buffer);
        (gl.bind_buffer)(f::COPY_WRITE_BUFFER, buffer);
        (gl.buffer_storage_mem_ext)(f::COPY_WRITE_BUFFER, size as isize, memory, offset);
        (gl.bind_buffer)(f::COPY_WRITE_BUFFER, 0);
    }
    (memory, buffer)
}

/// Deletes what [`raw_import_buffer`] made.
///
/// # Safety
/// The context must be current and the names from `raw_import_buffer` on it.
unsafe fn raw_release_buffer(gl: &CurrentGl<'_>, memory: GLuint, buffer: GLuint) {
    // SAFETY: this function's contract: a current context and names from raw_import_buffer; each
    // name is read from a reference that outlives the call.
    unsafe {
        (gl.delete_buffers)(1, &buffer);
        (gl.delete_memory_objects_ext)(1, &memory);
        (gl.get_error)();
    }
}

/// The raw calls of an optimal RGBA8 2D texture import (benchmark baseline). Returns (memory
/// object, texture) names.
///
/// # Safety
/// The context must be current, and `fd` an opaque-fd export of an optimal RGBA8 `width` x
/// `height` image described by `memory` (GL takes it).
unsafe fn raw_import_texture(
    gl: &CurrentGl<'_>,
    fd: OwnedFd,
    memory: &MemoryDescription,
    width: i32,
    height: i32,
) -> (GLuint, GLuint) {
    let mut mem: GLuint = 0;
    let mut tex: GLuint = 0;
    // SAFETY: this function's contract: a current context and a valid export of such an image; GL
    // takes the fd; `mem` and `tex` are locals the calls write one name each into.
    unsafe {
        (gl.create_memory_objects_ext)(1, &mut mem);
        if memory.dedicated {
            (gl.memory_object_parameteriv_ext)(mem, f::DEDICATED_MEMORY_OBJECT_EXT, &1);
        }
        (gl.import_memory_fd_ext)(mem, memory.allocation_size, f::HANDLE_TYPE_OPAQUE_FD_EXT, fd.into_raw_fd());
        (gl.gen_textures)(1, &mut tex);
        (gl.bind_texture)(f::TEXTURE_2D, tex);
        (gl.tex_parameteri)(f::TEXTURE_2D, f::TEXTURE_TILING_EXT, f::OPTIMAL_TILING_EXT);
        (gl.tex_storage_mem_2d_ext)(f::TEXTURE_2D, 1, f::RGBA8, width, height, mem, 0);
        (gl.bind_texture)(f::TEXTURE_2D, 0);
    }
    (mem, tex)
}

/// Deletes what [`raw_import_texture`] made.
///
/// # Safety
/// The context must be current and the names from `raw_import_texture` on it.
unsafe fn raw_release_texture(gl: &CurrentGl<'_>, memory: GLuint, texture: GLuint) {
    // SAFETY: this function's contract: a current context and names from raw_import_texture; each
    // name is read from a reference that outlives the call.
    unsafe {
        (gl.delete_textures)(1, &texture);
        (gl.delete_memory_objects_ext)(1, &memory);
        (gl.get_error)();
    }
}
