//! Measurements for `lava-flow bench`: GL import latency through lava-flow against the raw
//! `GL_EXT_memory_object` calls on the same device.

use std::time::Instant;

use raw_gpu_handle::TextureFormat;

use super::context::GlContext;
use super::memory::{raw_import_buffer, raw_import_texture, raw_release_buffer, raw_release_texture, GL_BUFFER_SLACK};
use crate::vulkan::{Buffer, BufferOptions, Image, ImageOptions};
use crate::{Result, VulkanContext};

use crate::bench::median;
pub use crate::bench::BenchRow;

fn row(case: String, lava_flow: f64, raw: f64, unit: &'static str, iterations: usize) -> BenchRow {
    BenchRow::new(case, lava_flow, raw, unit, iterations)
}

/// Import latency of buffers of each size in `sizes` and of a 2D RGBA8 texture, `iterations`
/// times each, in microseconds (median). Both sides run with the context already current (a
/// guard held), so the figures compare the import work itself; the export (`vkGetMemoryFdKHR`) is
/// outside the timing.
pub fn import_latency(vk: &VulkanContext, sizes: &[u64], iterations: usize) -> Result<Vec<BenchRow>> {
    let gl = GlContext::for_identity(&vk.identity())?;
    let guard = gl.make_current()?;
    let mut rows = Vec::new();
    for &size in sizes {
        let buffer = Buffer::new(vk, &BufferOptions::new(size).allocation_padding(GL_BUFFER_SLACK))?;
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
        // SAFETY: a fresh opaque-fd export of an optimal RGBA8 1024x1024 image of this device.
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
