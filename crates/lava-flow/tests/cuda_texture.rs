//! CUDA imports of Vulkan images: optimal tiling as mipmapped arrays (every format, 1D, 2D, 3D
//! and arrays, render targets), linear tiling as pitched memory, texels checked both ways.
//! GPU only: skipped with the reason elsewhere.

mod cuda_common;

use cuda_common::devices;
use lava_flow::cuda::{CudaDevice, TextureStorage};
use lava_flow::raw_gpu_handle::{Extent3d, TextureDimension, TextureFormat, TextureUsage};
use lava_flow::vulkan::ImageTiling;
use lava_flow::{Error, Image, ImageOptions, VulkanContext};
use lava_flow_diag::selftest::cuda as selftest;
use lava_flow_diag::testing;

fn usage(color_attachment: bool, storage: bool) -> TextureUsage {
    TextureUsage { sampled: true, storage, color_attachment, transfer: true }
}

fn both_ways(ctx: &VulkanContext, cuda: &CudaDevice, options: &ImageOptions) {
    selftest::image_vulkan_to_cuda(ctx, cuda, options).unwrap_or_else(|e| panic!("vulkan->cuda {options:?}: {e}"));
    selftest::image_cuda_to_vulkan(ctx, cuda, options).unwrap_or_else(|e| panic!("cuda->vulkan {options:?}: {e}"));
}

#[test]
fn optimal_2d_array_render_target_round_trips() {
    let Some((ctx, cuda)) = devices() else { return };
    both_ways(&ctx, &cuda, &selftest::optimal_image_options());
}

#[test]
fn every_format_round_trips_as_an_optimal_2d_image() {
    let Some((ctx, cuda)) = devices() else { return };
    for format in TextureFormat::ALL {
        both_ways(&ctx, &cuda, &ImageOptions::d2(format, 96, 40).usage(usage(false, false)));
    }
}

#[test]
fn storage_images_round_trip() {
    let Some((ctx, cuda)) = devices() else { return };
    both_ways(&ctx, &cuda, &ImageOptions::d2(TextureFormat::Rgba32Float, 64, 64).usage(usage(false, true)));
}

#[test]
fn one_dimensional_and_three_dimensional_images_round_trip() {
    let Some((ctx, cuda)) = devices() else { return };
    let d1 = ImageOptions {
        dimension: TextureDimension::D1,
        extent: Extent3d { width: 1024, height: 1, depth: 1 },
        ..ImageOptions::d2(TextureFormat::R32Float, 1024, 1)
    };
    both_ways(&ctx, &cuda, &d1);
    both_ways(&ctx, &cuda, &ImageOptions { dimension: TextureDimension::D1Array, array_layers: 6, ..d1 });
    both_ways(&ctx, &cuda, &ImageOptions::d3(TextureFormat::Rgba8Unorm, 32, 16, 8));
    both_ways(&ctx, &cuda, &ImageOptions::d2_array(TextureFormat::R16Float, 48, 48, 4));
}

#[test]
fn linear_images_round_trip_as_pitched_memory() {
    let Some((ctx, cuda)) = devices() else { return };
    both_ways(&ctx, &cuda, &selftest::linear_image_options());
    both_ways(&ctx, &cuda, &ImageOptions::d2(TextureFormat::R8Unorm, 333, 17).tiling(ImageTiling::Linear));
}

#[test]
fn optimal_images_become_arrays_and_linear_ones_pitched_buffers() {
    let Some((ctx, cuda)) = devices() else { return };
    let optimal = Image::new(&ctx, &selftest::optimal_image_options()).unwrap();
    let imported = cuda.import_texture(optimal.export_fd().unwrap()).unwrap();
    assert!(matches!(imported.storage(), TextureStorage::Array { .. }) && imported.array().is_some());
    assert_eq!(imported.packed_size() as u64, optimal.packed_size());

    let linear = Image::new(&ctx, &selftest::linear_image_options()).unwrap();
    let imported = cuda.import_texture(linear.export_fd().unwrap()).unwrap();
    match imported.storage() {
        TextureStorage::Pitched { row_pitch, .. } => {
            assert!(*row_pitch >= 200 * 4, "row pitch {row_pitch}");
        }
        TextureStorage::Array { .. } => panic!("a linear image must not be mapped as a CUDA array"),
    }
}

#[test]
fn bad_texture_descriptions_are_refused_and_the_fd_is_closed_once() {
    let Some((ctx, cuda)) = devices() else { return };
    selftest::image_vulkan_to_cuda(&ctx, &cuda, &ImageOptions::d2(TextureFormat::R8Unorm, 16, 16)).unwrap();
    let image = Image::new(&ctx, &selftest::optimal_image_options()).unwrap();
    let before = testing::open_fd_count();

    let mut exported = image.export_fd().unwrap();
    exported.texture.offset = exported.memory.description.allocation_size;
    let err = cuda.import_texture(exported).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");

    let mut exported = image.export_fd().unwrap();
    exported.texture.array_layers = 0;
    let err = cuda.import_texture(exported).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");

    assert_eq!(testing::open_fd_count(), before, "each refused fd is closed exactly once");
    // A copy of the wrong size is refused too.
    let imported = cuda.import_texture(image.export_fd().unwrap()).unwrap();
    assert!(matches!(imported.copy_from_host(&[0u8; 3]).unwrap_err(), Error::InvalidArgument { .. }));
}
