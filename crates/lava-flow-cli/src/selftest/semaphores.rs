//! Semaphore and fence paths: a timeline semaphore exported by one Vulkan device ordering work
//! on a second device and in a second process.

use lava_flow::VulkanContext;

use super::Runner;

const PATH: &str = "semaphores: timeline semaphore between two devices and two processes";

/// Says per device why the semaphore paths cannot run: the driver lacks the extension, or
/// lava-flow's semaphore export is not part of this build yet.
pub fn run(runner: &mut Runner) {
    let devices = match VulkanContext::enumerate() {
        Ok(d) => d,
        Err(e) => return runner.skip("semaphores", PATH, 0, e.to_string()),
    };
    let Some(device) = devices.first() else {
        return runner.skip("semaphores", PATH, 0, "the Vulkan loader lists no devices");
    };
    let ext = device.extensions;
    let reason = if !ext.external_semaphore_fd {
        format!("{} lacks VK_KHR_external_semaphore_fd", device.name)
    } else if !ext.timeline_semaphore {
        format!("{} lacks the timelineSemaphore feature", device.name)
    } else {
        "lava-flow's exportable semaphores are not part of this build yet".to_string()
    };
    runner.skip("semaphores", PATH, 0, reason);
}
