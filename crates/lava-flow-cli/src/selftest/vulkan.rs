//! Vulkan paths inside one process: buffers and images exported by one VkDevice and imported by a
//! second VkDevice (two VulkanContexts on the same physical device).

use super::Runner;

pub fn run(runner: &mut Runner) {
    runner.skip(
        "vulkan",
        "vulkan: buffers and images between two devices",
        0,
        "lava-flow's Vulkan export and import are not part of this build yet",
    );
}
