//! wgpu (Vulkan backend) and lava-flow on one device: lava-flow adopts wgpu's VkDevice, allocates
//! an exportable buffer and image on it, wgpu uses them as its own buffer and texture, and a
//! second Vulkan device and OpenGL read what wgpu wrote and write what wgpu reads
//! (examples/wgpu_interop.rs, docs/ADOPTING.md). Skips where Vulkan is missing, and runs without
//! the GL leg where GL is missing (`LAVA_FLOW_REQUIRE=vulkan` or `gl` makes either a failure).

mod common;
#[path = "../examples/wgpu_interop.rs"]
#[allow(dead_code)] // its `main` is the example's; the test calls `run` with the skip helper's GL context
mod wgpu_interop_example;

use common::vulkan;
use lava_flow::gl::GlContext;
use lava_flow_diag::testing;

#[test]
fn a_wgpu_buffer_and_texture_are_shared_with_another_device_and_gl_both_ways() {
    if vulkan().is_none() {
        return;
    }
    let gl = testing::or_skip("gl", GlContext::new());
    wgpu_interop_example::run(gl.as_ref()).expect("examples/wgpu_interop.rs");
}
