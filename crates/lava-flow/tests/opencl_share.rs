//! Vulkan memory shared with OpenCL through cl_khr_external_memory_opaque_fd: Vulkan writes and
//! OpenCL reads, an OpenCL kernel transforms imported memory and Vulkan reads the result, images
//! both ways. OpenCL interop exists only on the GPU machine: elsewhere these skip with the reason.
#![cfg(feature = "opencl")]

mod common;

use std::sync::Arc;

use common::{pattern, vk_gpu_read, vk_gpu_write};
use lava_flow::opencl::{ClContext, KernelArg};
use lava_flow::raw_gpu_handle::TextureFormat;
use lava_flow::vulkan::{DedicatedPolicy, ImageTiling};
use lava_flow::{Buffer, BufferOptions, Image, ImageOptions, VulkanContext};
use lava_flow_diag::testing::{self, open_fd_count};

fn vulkan_and_cl() -> Option<(VulkanContext, ClContext)> {
    let vk = common::vulkan()?;
    let cl = testing::or_skip("opencl", ClContext::for_identity(&vk.identity()))?;
    if !cl.info().external_memory_opaque_fd {
        testing::skip("opencl", format!("{} lacks cl_khr_external_memory_opaque_fd", cl.info().name));
        return None;
    }
    Some((vk, cl))
}

#[test]
fn opencl_device_has_the_vulkan_identity_and_is_not_a_cpu_platform() {
    let Some((vk, cl)) = vulkan_and_cl() else { return };
    assert_eq!(cl.identity().device_uuid, vk.identity().device_uuid);
    // Driver UUIDs are not compared: NVIDIA's OpenCL reports its device UUID there (ClContext::check_exporter).
    cl.check_exporter(&vk.identity()).unwrap();
    let info = cl.info();
    assert!(!info.platform.to_lowercase().contains("portable"), "PoCL must never serve a GPU export: {info:?}");
    let all = ClContext::enumerate().unwrap();
    assert!(all.iter().any(|d| d.identity == info.identity), "{all:?}");
    for other in all.iter().filter(|d| d.platform.to_lowercase().contains("portable")) {
        assert_ne!(other.identity.device_uuid, vk.identity().device_uuid, "a CPU platform with the GPU's UUID");
    }
    println!("OpenCL device: {} / {} {} imports {:?}", info.platform, info.name, info.identity, info.imports);
}

#[test]
fn buffer_vulkan_writes_opencl_reads_opencl_writes_vulkan_reads() {
    let Some((vk, cl)) = vulkan_and_cl() else { return };
    let size = 1 << 20;
    let buffer = Buffer::new(&vk, &BufferOptions::new(size)).unwrap();
    let data = pattern(size as usize, 1);
    vk_gpu_write(&buffer, 0, &data);
    let clbuf = cl.import_buffer(buffer.export_fd().unwrap()).unwrap();
    assert!(clbuf.read(0, size as usize).unwrap() == data, "OpenCL sees what Vulkan wrote");
    let update = pattern(4096, 2);
    clbuf.write(65536, &update).unwrap();
    assert_eq!(vk_gpu_read(&buffer, 65536, 4096), update, "Vulkan sees what OpenCL wrote");
    cl.check_deferred().unwrap();
}

#[test]
fn a_kernel_transforms_imported_memory() {
    let Some((vk, cl)) = vulkan_and_cl() else { return };
    let n = 1 << 18;
    let buffer = Buffer::new(&vk, &BufferOptions::new(n * 4)).unwrap();
    let words: Vec<u32> = (0..n as u32).collect();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    vk_gpu_write(&buffer, 0, &bytes);
    let clbuf = cl.import_buffer(buffer.export_fd().unwrap()).unwrap();
    let mut kernel = cl
        .build_kernel(
            "__kernel void scale(__global uint* x, uint k) { size_t i = get_global_id(0); x[i] = x[i] * k + 1u; }",
            "scale",
        )
        .unwrap();
    cl.acquire(&[&clbuf]).unwrap();
    kernel.enqueue(&[KernelArg::Buffer(&clbuf), KernelArg::U32(3)], &[n as usize]).unwrap();
    cl.release(&[&clbuf]).unwrap();
    cl.finish().unwrap();
    let out = vk_gpu_read(&buffer, 0, n * 4);
    for (i, w) in out.chunks_exact(4).enumerate() {
        let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
        assert_eq!(v, i as u32 * 3 + 1, "word {i}");
    }
}

#[test]
fn buffer_at_an_offset_becomes_a_sub_buffer() {
    let Some((vk, cl)) = vulkan_and_cl() else { return };
    let block = Buffer::new(&vk, &BufferOptions::new(4 << 20).dedicated(DedicatedPolicy::Never)).unwrap();
    let data = pattern(4 << 20, 3);
    vk_gpu_write(&block, 0, &data);
    let inner = Buffer::bind_at(Arc::clone(block.memory()), 1 << 20, 1 << 20, block.usage(), None).unwrap();
    let clbuf = cl.import_buffer(inner.export_fd().unwrap()).unwrap();
    assert_eq!(clbuf.description().offset, 1 << 20);
    assert_eq!(clbuf.allocation_size(), block.memory().size());
    assert!(clbuf.read(0, 1 << 20).unwrap() == data[1 << 20..2 << 20], "the sub-buffer starts at the offset");
    clbuf.write(0, b"sub-buffer").unwrap();
    assert_eq!(vk_gpu_read(&block, 1 << 20, 10), b"sub-buffer");
}

#[test]
fn images_round_trip() {
    let Some((vk, cl)) = vulkan_and_cl() else { return };
    let shapes = [
        ImageOptions::d2(TextureFormat::Rgba8Unorm, 256, 128),
        ImageOptions::d2(TextureFormat::R32Float, 100, 60),
        ImageOptions::d2_array(TextureFormat::Rgba8Unorm, 64, 32, 4),
        ImageOptions::d3(TextureFormat::Rgba16Float, 32, 16, 8),
    ];
    // Opaque-fd images carry no layout; the device says which one it assumes.
    let tiling = if cl.info().opaque_fd_images_linear { ImageTiling::Linear } else { ImageTiling::Optimal };
    for (i, options) in shapes.iter().enumerate() {
        let options = options.clone().tiling(tiling);
        let image = Image::new(&vk, &options).unwrap();
        let data = pattern(image.packed_size() as usize, 20 + i as u32);
        image.upload(&data).unwrap();
        let climg = cl.import_image(image.export_fd().unwrap()).unwrap();
        let what = format!("{:?} {:?} {:?}", options.format, options.dimension, options.extent);
        assert!(climg.read().unwrap() == data, "OpenCL reads the uploaded texels: {what}");
        let update = pattern(data.len(), 200 + i as u32);
        climg.write(&update).unwrap();
        assert!(image.download().unwrap() == update, "Vulkan downloads OpenCL's texels: {what}");
    }
}

#[test]
fn imports_release_their_fds_when_dropped() {
    let Some((vk, cl)) = vulkan_and_cl() else { return };
    let buffer = Buffer::new(&vk, &BufferOptions::new(1 << 16)).unwrap();
    let tiling = if cl.info().opaque_fd_images_linear { ImageTiling::Linear } else { ImageTiling::Optimal };
    let image = Image::new(&vk, &ImageOptions::d2(TextureFormat::Rgba8Unorm, 64, 64).tiling(tiling)).unwrap();
    let baseline = open_fd_count();
    for _ in 0..20 {
        let b = cl.import_buffer(buffer.export_fd().unwrap()).unwrap();
        let i = cl.import_image(image.export_fd().unwrap()).unwrap();
        drop((b, i));
    }
    cl.finish().unwrap();
    assert_eq!(open_fd_count(), baseline, "20 imports and releases leave no fd behind");
    cl.check_deferred().unwrap();
}
