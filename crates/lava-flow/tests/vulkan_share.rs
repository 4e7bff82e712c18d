//! Vulkan export and import between two VkDevices on lavapipe (or any driver): buffers, images of
//! every shape, host-visible mapping, shareable host memory, and the seeds' allocator shape.

mod common;

use common::{pattern, two_devices, vulkan};
use lava_flow::raw_gpu_handle::{MemoryHandleKind, TextureDimension, TextureFormat, TextureTiling};
use lava_flow::vulkan::{DedicatedPolicy, ImageTiling, MemoryKind};
use lava_flow::{Buffer, BufferOptions, Error, Image, ImageOptions, MemoryAllocator, MemoryLocation, SharedHostMemory};
use lava_flow_diag::testing;

#[test]
fn buffer_round_trip_between_two_devices() {
    let Some((a, b)) = two_devices() else { return };
    let size = 1 << 20;
    let data = pattern(size, 1);
    let mut exporter = Buffer::new(&a, &BufferOptions::new(size as u64)).unwrap();
    exporter.write(0, &data).unwrap();
    let exported = exporter.export_fd().unwrap();
    assert_eq!(exported.memory.description.handle_kind, MemoryHandleKind::OpaqueFd);
    assert!(exported.memory.description.allocation_size >= size as u64);
    assert_eq!(exported.device(), &a.identity());
    let importer = Buffer::import(&b, exported).unwrap();
    assert_eq!(importer.read(0, size as u64).unwrap(), data, "the importer sees the exporter's bytes");
    importer.fill(0xA5A5_5A5A).unwrap();
    let back = exporter.read(0, size as u64).unwrap();
    assert!(back.chunks(4).all(|c| c == [0x5A, 0x5A, 0xA5, 0xA5]), "the exporter sees the importer's GPU fill");
}

#[test]
fn dedicated_buffer_round_trip() {
    let Some((a, b)) = two_devices() else { return };
    let mut exporter = Buffer::new(&a, &BufferOptions::new(65536).dedicated(DedicatedPolicy::Always)).unwrap();
    let data = pattern(65536, 2);
    exporter.write(0, &data).unwrap();
    let exported = exporter.export_fd().unwrap();
    assert!(exported.memory.description.dedicated);
    let importer = Buffer::import(&b, exported).unwrap();
    assert!(importer.memory().dedicated());
    assert_eq!(importer.read(0, 65536).unwrap(), data);
}

#[test]
fn private_host_visible_buffer_maps_as_slices() {
    let Some(ctx) = vulkan() else { return };
    let options = BufferOptions::new(4096).memory(MemoryKind::HostVisible).export(None);
    let mut buffer = Buffer::new(&ctx, &options).unwrap();
    assert!(!buffer.is_shared());
    let data = pattern(4096, 3);
    buffer.map().unwrap().as_mut_slice().copy_from_slice(&data);
    assert_eq!(buffer.map().unwrap().as_slice(), &data[..]);
    let copy = Buffer::new(&ctx, &BufferOptions::new(4096)).unwrap();
    buffer.copy_to(&copy).unwrap();
    assert_eq!(copy.read(0, 4096).unwrap(), data, "a GPU copy sees the mapped writes");
}

#[test]
fn device_local_buffer_cannot_be_mapped_where_not_host_visible() {
    let Some(ctx) = vulkan() else { return };
    let mut buffer = Buffer::new(&ctx, &BufferOptions::new(4096).export(None)).unwrap();
    let host_visible = buffer.memory().is_host_visible();
    match buffer.map() {
        Ok(m) => {
            // Unified-memory devices (lavapipe, integrated GPUs) make device-local memory mappable.
            assert!(host_visible);
            assert_eq!(m.as_slice().len(), 4096);
        }
        Err(e) => assert!(!host_visible && matches!(e, Error::InvalidArgument { .. }), "{e}"),
    };
}

fn image_round_trip(options: ImageOptions) {
    let Some((a, b)) = two_devices() else { return };
    let exporter = match Image::new(&a, &options) {
        Ok(i) => i,
        // A capability the driver lacks (e.g. linear arrays) is refused up front, by the format
        // query; any other error, or an Unsupported from anything else, fails the test.
        Err(e) => return testing::skip_refused("vulkan", "vkGetPhysicalDeviceImageFormatProperties2", e),
    };
    let data = pattern(exporter.packed_size() as usize, 4);
    exporter.upload(&data).unwrap();
    let exported = exporter.export_fd().unwrap();
    assert_eq!(exported.texture.format, options.format);
    assert_eq!(exported.texture.dimension, options.dimension);
    if options.tiling == ImageTiling::Linear {
        assert!(
            matches!(exported.texture.tiling, TextureTiling::Linear { row_pitch, .. } if row_pitch >= u64::from(options.extent.width * options.format.texel_size()))
        );
    }
    let importer = Image::import(&b, exported).unwrap();
    assert_eq!(importer.download().unwrap(), data, "the importer reads the exporter's texels");
    let data2 = pattern(data.len(), 5);
    importer.upload(&data2).unwrap();
    assert_eq!(exporter.download().unwrap(), data2, "the exporter reads the importer's texels");
}

#[test]
fn optimal_2d_image_round_trip() {
    image_round_trip(ImageOptions::d2(TextureFormat::Rgba8Unorm, 64, 48));
}

#[test]
fn linear_2d_image_round_trip() {
    image_round_trip(ImageOptions::d2(TextureFormat::Rgba8Unorm, 61, 17).tiling(ImageTiling::Linear));
}

#[test]
fn optimal_2d_array_image_round_trip() {
    image_round_trip(ImageOptions::d2_array(TextureFormat::R32Float, 32, 16, 4));
}

#[test]
fn optimal_3d_image_round_trip() {
    image_round_trip(ImageOptions::d3(TextureFormat::Rgba16Float, 16, 8, 4));
}

#[test]
fn linear_2d_array_image_round_trip_or_refused_up_front() {
    image_round_trip(ImageOptions::d2_array(TextureFormat::Rgba8Unorm, 16, 16, 3).tiling(ImageTiling::Linear));
}

#[test]
fn one_d_image_round_trip() {
    let mut o = ImageOptions::d2(TextureFormat::Rgba32Float, 128, 1);
    o.dimension = TextureDimension::D1;
    image_round_trip(o);
}

#[test]
fn shared_host_memory_written_by_gpu_is_seen_through_a_second_mapping() {
    let Some(ctx) = vulkan() else { return };
    let buffer = match Buffer::new(&ctx, &BufferOptions::new(8192).memory(MemoryKind::SharedHost)) {
        Ok(b) => b,
        Err(e) => return testing::skip_refused("vulkan", "vkGetPhysicalDeviceExternalBufferProperties", e),
    };
    buffer.fill(0x1234_5678).unwrap();
    let exported = buffer.export_fd().unwrap();
    assert_eq!(exported.memory.description.handle_kind, MemoryHandleKind::HostMemfd);
    let view = SharedHostMemory::from_fd(exported.memory.handle, exported.memory.description.allocation_size).unwrap();
    assert!(view.read(0, 8192).unwrap().chunks(4).all(|c| c == 0x1234_5678u32.to_ne_bytes()));
}

#[test]
fn shared_host_memory_imported_into_a_second_device() {
    let Some((a, b)) = two_devices() else { return };
    let buffer = match Buffer::new(&a, &BufferOptions::new(4096).memory(MemoryKind::SharedHost)) {
        Ok(b) => b,
        Err(e) => return testing::skip_refused("vulkan", "vkGetPhysicalDeviceExternalBufferProperties", e),
    };
    buffer.fill(7).unwrap();
    let imported = Buffer::import(&b, buffer.export_fd().unwrap()).unwrap();
    assert_eq!(imported.read(0, 4096).unwrap(), buffer.read(0, 4096).unwrap());
    imported.fill(9).unwrap();
    assert!(buffer.read(0, 4096).unwrap().chunks(4).all(|c| c == 9u32.to_ne_bytes()));
}

#[test]
fn allocator_in_the_documented_shape() {
    let Some(allocator) = lava_flow_diag::testing::or_skip("vulkan", MemoryAllocator::new()) else { return };
    let buffer = allocator.allocate(1_000_000, MemoryLocation::GpuVulkan { device_id: 0 }).unwrap();
    let exported = buffer.export_fd().unwrap();
    assert_eq!(exported.buffer.size, 1_000_000);
    assert!(exported.memory.description.allocation_size >= 1_000_000);
    let host = allocator.allocate(4096, MemoryLocation::HostVisibleVulkan { device_id: 0 }).unwrap();
    assert!(host.memory().is_host_visible());
    let err = allocator.allocate(16, MemoryLocation::GpuVulkan { device_id: 99 }).unwrap_err();
    assert!(matches!(err, Error::DeviceNotFound { .. }), "{err}");
}

#[test]
fn every_export_is_a_fresh_fd_and_closes_on_drop() {
    let Some(ctx) = vulkan() else { return };
    let buffer = Buffer::new(&ctx, &BufferOptions::new(4096)).unwrap();
    let before = lava_flow_diag::testing::open_fd_count();
    let e1 = buffer.export_fd().unwrap();
    let e2 = buffer.export_fd().unwrap();
    use std::os::fd::AsRawFd;
    assert_ne!(e1.memory.handle.as_raw_fd(), e2.memory.handle.as_raw_fd());
    let e3 = e1.try_clone().unwrap();
    assert_eq!(lava_flow_diag::testing::open_fd_count(), before + 3);
    drop((e1, e2, e3));
    assert_eq!(lava_flow_diag::testing::open_fd_count(), before);
}

#[test]
fn successful_import_consumes_the_fd() {
    let Some((a, b)) = two_devices() else { return };
    let buffer = Buffer::new(&a, &BufferOptions::new(4096)).unwrap();
    let exported = buffer.export_fd().unwrap();
    let before = lava_flow_diag::testing::open_fd_count();
    let imported = Buffer::import(&b, exported).unwrap();
    // The export's fd now belongs to the driver: lavapipe keeps it (or a mapping), never a second copy.
    assert!(lava_flow_diag::testing::open_fd_count() <= before);
    drop(imported);
    assert!(lava_flow_diag::testing::open_fd_count() < before, "freeing the import released its fd");
}
