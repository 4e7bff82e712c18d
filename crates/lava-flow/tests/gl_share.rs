//! Vulkan memory shared with OpenGL through GL_EXT_memory_object_fd, on real drivers (llvmpipe
//! on CPU machines, NVIDIA's EGL on the GPU machine): Vulkan writes and GL reads, GL writes and
//! Vulkan reads, for buffers at offsets and for textures of several shapes, formats and tilings.
#![cfg(feature = "gl")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{pattern, vk_gpu_read, vk_gpu_write};
use lava_flow::gl::GlContext;
use lava_flow::raw_gpu_handle::{BufferDescription, TextureFormat};
use lava_flow::vulkan::{DedicatedPolicy, ImageTiling};
use lava_flow::{Buffer, BufferOptions, Error, Image, ImageOptions, VulkanContext};
use lava_flow_diag::testing::{self, open_fd_count, Cases};

fn vulkan_and_gl() -> Option<(VulkanContext, GlContext)> {
    let vk = common::vulkan()?;
    let gl = testing::or_skip("gl", GlContext::for_identity(&vk.identity()))?;
    Some((vk, gl))
}

#[test]
fn gl_device_has_the_vulkan_identity() {
    let Some((vk, gl)) = vulkan_and_gl() else { return };
    assert_eq!(gl.identity().device_uuid, vk.identity().device_uuid);
    assert_eq!(gl.identity().driver_uuid, vk.identity().driver_uuid);
    let info = gl.info();
    assert!(info.memory_object_fd, "{info:?}");
    assert!(!info.renderer.is_empty() && !info.version.is_empty(), "{info:?}");
    assert!(info.imports.iter().any(|i| i.contains("memory")), "{info:?}");
    let all = GlContext::enumerate().unwrap();
    assert!(all.iter().any(|d| d.identity == info.identity), "enumerate lists the device: {all:?}");
    println!("GL device: {} on {} ({}), {}", info.renderer, info.label, info.api, info.identity);
}

#[test]
fn buffer_vulkan_writes_gl_reads_gl_writes_vulkan_reads() {
    let Some((vk, gl)) = vulkan_and_gl() else { return };
    let size = 256 * 1024;
    let buffer = Buffer::new(&vk, &BufferOptions::new(size).for_gl()).unwrap();
    let data = pattern(size as usize, 1);
    vk_gpu_write(&buffer, 0, &data);

    let glbuf = gl.import_buffer(buffer.export_fd().unwrap()).unwrap();
    assert_eq!(glbuf.size(), size);
    assert!(glbuf.read(0, size as usize).unwrap() == data, "GL sees what Vulkan wrote");

    let update = pattern(4096, 2);
    glbuf.write(8192, &update).unwrap();
    gl.finish().unwrap();
    assert_eq!(vk_gpu_read(&buffer, 8192, 4096), update, "Vulkan sees what GL wrote");
    assert!(vk_gpu_read(&buffer, 0, 8192) == data[..8192], "the rest is untouched");
    gl.check_deferred().unwrap();
}

#[test]
fn buffers_at_offsets_share_one_memory_import() {
    let Some((vk, gl)) = vulkan_and_gl() else { return };
    let block = Buffer::new(&vk, &BufferOptions::new(3 * 65536).for_gl().dedicated(DedicatedPolicy::Never)).unwrap();
    let data = pattern(3 * 65536, 3);
    vk_gpu_write(&block, 0, &data);
    let exported = block.export_fd().unwrap();
    let memory = gl.import_memory(exported.memory).unwrap();
    let first = memory.buffer(BufferDescription { offset: 0, size: 65536, alignment: 256 }).unwrap();
    assert!(first.read(0, 65536).unwrap() == data[..65536], "the buffer at offset 0");
    let second = memory.buffer(BufferDescription { offset: 65536, size: 65536, alignment: 256 });
    if !gl.info().honours_memory_offset {
        let err = second.expect_err("llvmpipe's offset rule");
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("offset 65536") && err.to_string().contains("own allocation"), "{err}");
        let inner = Buffer::bind_at(Arc::clone(block.memory()), 65536, 65536, block.usage(), None).unwrap();
        let before = open_fd_count();
        let err = gl.import_buffer(inner.export_fd().unwrap()).expect_err("offset refused on import too");
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert_eq!(open_fd_count(), before, "the refused import closed its fd once");
        // What the test is about, GL buffers at offsets of one import, cannot run on this driver.
        return testing::skip_capability(
            "gl",
            format!(
                "{} ignores memory-object offsets (GlDeviceInfo::honours_memory_offset); checked that lava-flow \
                 refuses them with a typed error instead",
                gl.info().renderer
            ),
        );
    }
    let parts = [
        first,
        second.unwrap(),
        memory.buffer(BufferDescription { offset: 131072, size: 65536, alignment: 256 }).unwrap(),
    ];
    for (i, part) in parts.iter().enumerate() {
        assert!(part.read(0, 65536).unwrap() == data[i * 65536..(i + 1) * 65536], "buffer {i} at its offset");
    }
    parts[1].write(100, b"written by GL at offset 65536+100").unwrap();
    gl.finish().unwrap();
    assert_eq!(vk_gpu_read(&block, 65636, 33), b"written by GL at offset 65536+100");
    // A Vulkan buffer bound at an offset of the same memory, exported, lands at that offset too.
    let inner = Buffer::bind_at(Arc::clone(block.memory()), 65536, 65536, block.usage(), None).unwrap();
    let glinner = gl.import_buffer(inner.export_fd().unwrap()).unwrap();
    assert_eq!(glinner.description().offset, 65536);
    assert_eq!(glinner.read(100, 33).unwrap(), b"written by GL at offset 65536+100");
}

#[test]
fn buffer_as_large_as_its_allocation_needs_slack_on_llvmpipe() {
    let Some((vk, gl)) = vulkan_and_gl() else { return };
    let buffer = Buffer::new(&vk, &BufferOptions::new(65536)).unwrap();
    let exported = buffer.export_fd().unwrap();
    let whole = exported.memory.description.allocation_size == exported.buffer.size;
    let before = open_fd_count();
    match gl.import_buffer(exported) {
        Ok(glbuf) => {
            // NVIDIA places it; then it must share the bytes.
            let data = pattern(65536, 4);
            vk_gpu_write(&buffer, 0, &data);
            assert!(glbuf.read(0, 65536).unwrap() == data);
            println!("{} places a buffer spanning its whole allocation", gl.info().renderer);
        }
        Err(err) => {
            assert!(whole, "only a buffer spanning its allocation may be refused: {err}");
            assert!(matches!(err, Error::Unsupported { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains("llvmpipe") && text.contains("8 bytes"), "{text}");
            assert!(text.contains("BufferOptions::for_gl()"), "the error says what to do: {text}");
            assert_eq!(open_fd_count(), before - 1, "the fd went to GL once and was released with it");
        }
    }
}

struct TextureCase {
    format: TextureFormat,
    options: fn(TextureFormat) -> ImageOptions,
    tiling: ImageTiling,
}

/// Runs one texture case and counts it in `cases`: ran, or declined by a capability query (the
/// Vulkan format query creating the image, GL_TILING_TYPES_EXT importing it). Any other error,
/// `Unsupported` from anything else included, fails the test.
fn texture_round_trip(vk: &VulkanContext, gl: &GlContext, case: &TextureCase, seed: u32, cases: &mut Cases) {
    let options = (case.options)(case.format).tiling(case.tiling);
    let what = format!("{:?} {:?} {:?} {:?}", case.format, options.dimension, options.extent, case.tiling);
    let image = match Image::new(vk, &options) {
        Ok(i) => i,
        Err(e) => return cases.skip_refused("vulkan", "vkGetPhysicalDeviceImageFormatProperties2", &what, e),
    };
    let data = pattern(image.packed_size() as usize, seed);
    image.upload(&data).unwrap();
    let tex = match gl.import_texture(image.export_fd().unwrap()) {
        Ok(t) => t,
        // The driver lists the tilings it imports per format (GL_TILING_TYPES_EXT).
        Err(e) => return cases.skip_refused("gl", "GL_TILING_TYPES_EXT", &what, e),
    };
    assert_eq!(tex.packed_size() as u64, image.packed_size());
    assert!(tex.read().unwrap() == data, "GL reads what Vulkan uploaded: {what}");
    let update = pattern(data.len(), seed + 1000);
    tex.write(&update).unwrap();
    gl.finish().unwrap();
    assert!(image.download().unwrap() == update, "Vulkan downloads what GL wrote: {what}");
    cases.ran();
}

#[test]
fn textures_of_every_shape_round_trip() {
    let Some((vk, gl)) = vulkan_and_gl() else { return };
    let d2 = |f| ImageOptions::d2(f, 61, 37);
    let d2a = |f| ImageOptions::d2_array(f, 32, 16, 3);
    let d3 = |f| ImageOptions::d3(f, 16, 8, 4);
    let cases = [
        TextureCase { format: TextureFormat::Rgba8Unorm, options: d2, tiling: ImageTiling::Optimal },
        TextureCase { format: TextureFormat::Rgba8Unorm, options: d2, tiling: ImageTiling::Linear },
        TextureCase { format: TextureFormat::R32Float, options: d2, tiling: ImageTiling::Optimal },
        TextureCase { format: TextureFormat::Rg8Unorm, options: d2a, tiling: ImageTiling::Optimal },
        TextureCase { format: TextureFormat::Rgba32Uint, options: d2a, tiling: ImageTiling::Optimal },
        TextureCase { format: TextureFormat::R8Unorm, options: d3, tiling: ImageTiling::Optimal },
        TextureCase { format: TextureFormat::Rgba16Float, options: d3, tiling: ImageTiling::Optimal },
    ];
    let mut counted = Cases::new("texture shapes", cases.len());
    for (i, case) in cases.iter().enumerate() {
        texture_round_trip(&vk, &gl, case, i as u32 + 10, &mut counted);
    }
    counted.finish();
}

#[test]
fn every_format_round_trips_as_a_2d_texture() {
    let Some((vk, gl)) = vulkan_and_gl() else { return };
    let mut counted = Cases::new("2D optimal texture formats", TextureFormat::ALL.len());
    for (i, format) in TextureFormat::ALL.iter().enumerate() {
        let case =
            TextureCase { format: *format, options: |f| ImageOptions::d2(f, 19, 7), tiling: ImageTiling::Optimal };
        texture_round_trip(&vk, &gl, &case, 100 + i as u32, &mut counted);
    }
    counted.finish();
}

#[test]
fn imports_release_their_fds_when_dropped() {
    let Some((vk, gl)) = vulkan_and_gl() else { return };
    let buffer = Buffer::new(&vk, &BufferOptions::new(65536).for_gl()).unwrap();
    let image = Image::new(&vk, &ImageOptions::d2(TextureFormat::Rgba8Unorm, 64, 64)).unwrap();
    let baseline = open_fd_count();
    for _ in 0..20 {
        let b = gl.import_buffer(buffer.export_fd().unwrap()).unwrap();
        let t = gl.import_texture(image.export_fd().unwrap()).unwrap();
        drop((b, t));
    }
    gl.finish().unwrap();
    assert_eq!(open_fd_count(), baseline, "20 imports and drops leave no fd behind");
    gl.check_deferred().unwrap();
}

#[test]
fn context_is_shared_between_threads_one_at_a_time() {
    let Some((vk, gl)) = vulkan_and_gl() else { return };
    let buffer = Buffer::new(&vk, &BufferOptions::new(4096).for_gl()).unwrap();
    let data = pattern(4096, 7);
    vk_gpu_write(&buffer, 0, &data);
    let glbuf = Arc::new(gl.import_buffer(buffer.export_fd().unwrap()).unwrap());
    // Several threads read concurrently; each call makes the context current for itself.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let b = Arc::clone(&glbuf);
            std::thread::spawn(move || b.read(0, 4096).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), data);
    }
    // While one thread holds the context, another's call waits for it.
    let step = Arc::new(AtomicUsize::new(0));
    let guard = gl.make_current().unwrap();
    let nested = gl.make_current().unwrap(); // nests on one thread
    drop(nested);
    let (b, s) = (Arc::clone(&glbuf), Arc::clone(&step));
    let other = std::thread::spawn(move || {
        let bytes = b.read(0, 16).unwrap();
        (s.fetch_add(1, Ordering::SeqCst), bytes)
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    let released_at = step.fetch_add(1, Ordering::SeqCst);
    drop(guard);
    let (finished_at, bytes) = other.join().unwrap();
    assert!(finished_at > released_at, "the other thread ran GL only after the guard was released");
    assert_eq!(bytes, data[..16]);
    gl.check_deferred().unwrap();
}

#[test]
fn calls_restore_the_threads_previous_context() {
    let Some((vk, a)) = vulkan_and_gl() else { return };
    let b = GlContext::for_identity(&vk.identity()).unwrap();
    let buffer = Buffer::new(&vk, &BufferOptions::new(4096).for_gl()).unwrap();
    let in_b = b.import_buffer(buffer.export_fd().unwrap()).unwrap();
    // Context A is current on this thread with a buffer bound that only A knows.
    let in_a = a.import_buffer(buffer.export_fd().unwrap()).unwrap();
    let guard = a.make_current().unwrap();
    const COPY_READ_BUFFER_BINDING: u32 = 0x8F36;
    let binding = |gl: &lava_flow::gl::CurrentGl<'_>| {
        let mut v = -1;
        // SAFETY: the guard keeps context A current on this thread; one GLint is written into a local.
        unsafe { (gl.get_integerv)(COPY_READ_BUFFER_BINDING, &mut v) };
        v
    };
    // SAFETY: the guard keeps A current; in_a's buffer is a live name of A; no pointers.
    unsafe { (guard.bind_buffer)(COPY_READ_BUFFER_BINDING, in_a.name()) };
    assert_eq!(binding(&guard), in_a.name() as i32);
    // A call on B makes B current for its duration, then puts A back.
    assert_eq!(in_b.read(0, 4).unwrap().len(), 4);
    assert_eq!(binding(&guard), in_a.name() as i32, "A is current again, with its state");
    // SAFETY: the guard keeps A current; unbinding takes no pointers.
    unsafe { (guard.bind_buffer)(COPY_READ_BUFFER_BINDING, 0) };
    drop(guard);
    a.check_deferred().unwrap();
    b.check_deferred().unwrap();
}
