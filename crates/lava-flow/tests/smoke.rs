//! The smallest real-driver check: a Vulkan context opens and reports its identity.

use lava_flow::{testing, VulkanContext};

#[test]
fn context_opens_and_reports_identity() {
    testing::prefer_software_vulkan_if_no_gpu();
    let Some(ctx) = testing::or_skip("vulkan", VulkanContext::new()) else { return };
    let id = ctx.identity();
    assert!(!id.device_uuid.is_nil(), "device UUID of {} is nil", ctx.info().name);
    ctx.run_commands(|_, _| {}).expect("an empty submission completes");
}
