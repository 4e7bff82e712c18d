//! Vulkan <-> OpenCL paths: buffers (transformed by a kernel) and images each way, run by
//! lava-flow's OpenCL importer (`lava_flow::opencl::selftest`) on the OpenCL device with the default
//! Vulkan device's UUID.

use super::Runner;

#[cfg(feature = "opencl")]
pub fn run(runner: &mut Runner) {
    const GROUP: &str = "opencl: Vulkan <-> OpenCL buffers and images";
    let paths = lava_flow::opencl::selftest::PATHS.map(|p| format!("opencl: {p}"));
    if !runner.wants_any(paths.iter().map(String::as_str).chain([GROUP])) {
        return;
    }
    let ctx = match lava_flow::VulkanContext::new() {
        Ok(ctx) => ctx,
        Err(e) => return runner.skip("opencl", GROUP, 0, e.to_string()),
    };
    // Without the library every path stops at the same place: say it once.
    if let Err(e) = lava_flow::opencl::ClContext::enumerate() {
        return runner.skip("opencl", GROUP, 0, e.to_string());
    }
    for case in lava_flow::opencl::selftest::selftest(&ctx) {
        runner.record_result("opencl", &format!("opencl: {}", case.path), 0, case.result);
    }
}

#[cfg(not(feature = "opencl"))]
pub fn run(runner: &mut Runner) {
    runner.skip("opencl", "opencl: Vulkan <-> OpenCL buffers and images", 0, "built without the `opencl` feature");
}
