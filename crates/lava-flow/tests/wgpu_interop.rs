//! wgpu (Vulkan backend) and lava-flow on one device: lava-flow adopts wgpu's VkDevice, allocates
//! an exportable buffer and image on it, wgpu uses them as its own buffer and texture, and a
//! second Vulkan device reads what wgpu wrote and writes what wgpu reads (examples/wgpu_interop.rs,
//! docs/ADOPTING.md). Skips only where Vulkan is missing (`LAVA_FLOW_REQUIRE=vulkan` makes that
//! a failure).

mod common;
#[path = "../examples/wgpu_interop.rs"]
mod wgpu_interop_example;

use common::vulkan;

#[test]
fn a_wgpu_buffer_and_texture_are_shared_with_another_device_both_ways() {
    if vulkan().is_none() {
        return;
    }
    wgpu_interop_example::main().expect("examples/wgpu_interop.rs");
}
