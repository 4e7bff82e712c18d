//! Vulkan -> GL -> Vulkan ordered by shared binary semaphores (GL_EXT_semaphore_fd), for buffers
//! and textures over many rounds. llvmpipe has no GL semaphores: these tests skip there with the
//! reason, and run on the GPU machine (LAVA_FLOW_REQUIRE=semaphores makes a skip a failure).
#![cfg(feature = "gl")]

mod common;
mod interop_semaphore;

use ash::vk;
use common::pattern;
use common::{vk_gpu_read, vk_gpu_write};
use interop_semaphore::VkSemaphore;
use lava_flow::gl::{GlContext, TextureLayout};
use lava_flow::{Buffer, BufferOptions, Image, ImageOptions, VulkanContext};
use lava_flow_diag::testing::{self, open_fd_count};

fn setup() -> Option<(VulkanContext, GlContext)> {
    let vk = common::vulkan()?;
    let gl = testing::or_skip("gl", GlContext::for_identity(&vk.identity()))?;
    if !gl.info().semaphore_fd {
        testing::skip(
            "semaphores",
            format!("{} has no GL_EXT_semaphore_fd (llvmpipe has no GL semaphores)", gl.info().renderer),
        );
        return None;
    }
    if !vk.extensions().external_semaphore_fd {
        testing::skip("semaphores", format!("{} lacks VK_KHR_external_semaphore_fd", vk.info().name));
        return None;
    }
    Some((vk, gl))
}

fn invert(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().map(|b| !b).collect()
}

#[test]
fn semaphores_order_buffer_rounds_vulkan_gl_vulkan() {
    let Some((vk, gl)) = setup() else { return };
    let size = 1 << 20;
    let buffer = Buffer::new(&vk, &BufferOptions::new(size).for_gl()).unwrap();
    let glbuf = gl.import_buffer(buffer.export_fd().unwrap()).unwrap();
    let (to_gl, to_vk) = (VkSemaphore::new(&vk), VkSemaphore::new(&vk));
    let before = open_fd_count();
    let gl_wait = gl.import_semaphore(to_gl.export()).unwrap();
    let gl_signal = gl.import_semaphore(to_vk.export()).unwrap();
    assert_eq!(open_fd_count(), before, "GL took both semaphore fds");
    for round in 0..16u32 {
        let data = pattern(size as usize, round);
        vk_gpu_write(&buffer, 0, &data);
        to_gl.signal();
        gl_wait.wait(&[&glbuf], &[]).unwrap();
        let seen = glbuf.read(0, size as usize).unwrap();
        assert!(seen == data, "round {round}: GL sees Vulkan's write after the wait");
        glbuf.write(0, &invert(&seen)).unwrap();
        gl_signal.signal(&[&glbuf], &[]).unwrap();
        to_vk.wait();
        assert!(vk_gpu_read(&buffer, 0, size) == invert(&data), "round {round}: Vulkan sees GL's write after the wait");
    }
    gl.check_deferred().unwrap();
}

#[test]
fn semaphores_order_texture_rounds_with_layouts() {
    let Some((vk, gl)) = setup() else { return };
    let image =
        Image::new(&vk, &ImageOptions::d2(lava_flow::raw_gpu_handle::TextureFormat::Rgba8Unorm, 128, 64)).unwrap();
    let tex = gl.import_texture(image.export_fd().unwrap()).unwrap();
    let (to_gl, to_vk) = (VkSemaphore::new(&vk), VkSemaphore::new(&vk));
    let gl_wait = gl.import_semaphore(to_gl.export()).unwrap();
    let gl_signal = gl.import_semaphore(to_vk.export()).unwrap();
    // lava-flow's Image leaves the image in GENERAL, released to VK_QUEUE_FAMILY_EXTERNAL, after
    // each upload and download, and acquires it in GENERAL: GL hands it over in the same layout.
    let layout = TextureLayout::from_vk(vk::ImageLayout::GENERAL).unwrap();
    assert_eq!(layout, TextureLayout::General);
    for round in 0..8u32 {
        let data = pattern(image.packed_size() as usize, 50 + round);
        image.upload(&data).unwrap();
        to_gl.signal();
        gl_wait.wait(&[], &[(&tex, layout)]).unwrap();
        let seen = tex.read().unwrap();
        let stale = round > 0 && seen == invert(&pattern(data.len(), 50 + round - 1));
        if seen != data {
            let through_fbo = tex.read_through_framebuffer().map(|v| v == data);
            let vulkan_view = image.download().map(|v| v == data);
            println!("round {round}: glGetTexImage stale; framebuffer read matches: {through_fbo:?}; Vulkan's own download matches: {vulkan_view:?}");
        }
        let matching = seen.iter().zip(&data).filter(|(a, b)| a == b).count();
        assert!(
            seen == data,
            "round {round}: GL sees the uploaded texels after the wait ({matching} of {} bytes match; GL still sees its own last write: {stale})",
            data.len()
        );
        tex.write(&invert(&seen)).unwrap();
        gl_signal.signal(&[], &[(&tex, layout)]).unwrap();
        to_vk.wait();
        assert!(image.download().unwrap() == invert(&data), "round {round}: Vulkan sees GL's texels");
    }
    gl.check_deferred().unwrap();
}

#[test]
fn layouts_map_both_ways() {
    for layout in [
        TextureLayout::Undefined,
        TextureLayout::General,
        TextureLayout::ColorAttachment,
        TextureLayout::DepthStencilAttachment,
        TextureLayout::DepthStencilReadOnly,
        TextureLayout::ShaderReadOnly,
        TextureLayout::TransferSrc,
        TextureLayout::TransferDst,
        TextureLayout::DepthReadOnlyStencilAttachment,
        TextureLayout::DepthAttachmentStencilReadOnly,
    ] {
        assert_eq!(TextureLayout::from_vk(layout.vk()), Some(layout));
    }
    assert_eq!(TextureLayout::ShaderReadOnly.gl(), 0x9591, "GL_LAYOUT_SHADER_READ_ONLY_EXT");
    assert_eq!(TextureLayout::General.gl(), 0x958D, "GL_LAYOUT_GENERAL_EXT");
    assert_eq!(TextureLayout::from_vk(vk::ImageLayout::PRESENT_SRC_KHR), None);
}
