//! GL's pixel-store state belongs to the context, and code holding a `make_current` guard may
//! change it. lava-flow's texture reads and writes must still touch exactly the host bytes they
//! pass: before, a row length or skip set by the application made glGetTexImage/glReadPixels
//! write past the end of lava-flow's output vector, and glTexSubImage read past the caller's data.
#![cfg(feature = "gl")]

mod common;

use common::pattern;
use lava_flow::gl::{functions as f, GlContext};
use lava_flow::raw_gpu_handle::TextureFormat;
use lava_flow::{Image, ImageOptions};
use lava_flow_diag::testing;

const PACK: [(u32, i32); 4] =
    [(f::PACK_ALIGNMENT, 8), (f::PACK_ROW_LENGTH, 4096), (f::PACK_SKIP_ROWS, 64), (f::PACK_SKIP_PIXELS, 64)];
const UNPACK: [(u32, i32); 4] =
    [(f::UNPACK_ALIGNMENT, 8), (f::UNPACK_ROW_LENGTH, 4096), (f::UNPACK_SKIP_ROWS, 64), (f::UNPACK_SKIP_PIXELS, 64)];

#[test]
fn texture_copies_ignore_the_applications_pixel_store_state() {
    let Some(vk) = common::vulkan() else { return };
    let Some(gl) = testing::or_skip("gl", GlContext::for_identity(&vk.identity())) else { return };
    let image = Image::new(&vk, &ImageOptions::d2(TextureFormat::Rgba8Unorm, 61, 37)).unwrap();
    let data = pattern(image.packed_size() as usize, 7);
    image.upload(&data).unwrap();
    let tex = gl.import_texture(image.export_fd().unwrap()).unwrap();

    // What an application may do on the context between lava-flow's calls.
    let current = gl.make_current().unwrap();
    // SAFETY: the guard makes the context current; glPixelStorei takes no pointers.
    unsafe {
        for (pname, value) in PACK.iter().chain(&UNPACK) {
            (current.pixel_storei)(*pname, *value);
        }
    }
    current.check("glPixelStorei", "setting the application's pixel-store state").unwrap();
    drop(current);

    assert!(tex.read().unwrap() == data, "a read returns the texture packed tightly");
    assert!(tex.read_through_framebuffer().unwrap() == data, "so does a framebuffer read");
    let update = pattern(data.len(), 8);
    tex.write(&update).unwrap();
    gl.finish().unwrap();
    assert!(image.download().unwrap() == update, "a write takes exactly the bytes given");
}
