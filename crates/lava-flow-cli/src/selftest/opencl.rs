//! Vulkan <-> OpenCL paths: buffers (transformed by a kernel) and images each way, run by
//! lava-flow's OpenCL importer (`lava_flow_diag::selftest::opencl`) on the OpenCL device with the default
//! Vulkan device's UUID.

use super::Runner;

#[cfg(feature = "opencl")]
pub fn run(runner: &mut Runner) {
    const SUMMARY: (&str, &str) = ("opencl", "opencl: Vulkan <-> OpenCL buffers and images");
    // Without Vulkan or the library every path stops at the same place: say it once (every path,
    // where required).
    let paths: Vec<_> =
        lava_flow_diag::selftest::opencl::PATHS.iter().map(|p| ("opencl", format!("opencl: {p}"))).collect();
    if !runner.wants_any(paths.iter().map(|(_, p)| p.as_str()).chain([SUMMARY.1])) {
        return;
    }
    let ctx = match lava_flow::VulkanContext::new() {
        Ok(ctx) => ctx,
        Err(e) => return runner.skip_all(SUMMARY, &paths, e.to_string()),
    };
    if let Err(e) = lava_flow::opencl::ClContext::enumerate() {
        return runner.skip_all(SUMMARY, &paths, e.to_string());
    }
    for case in lava_flow_diag::selftest::opencl::selftest(&ctx) {
        runner.record_result("opencl", &format!("opencl: {}", case.path), 0, case.result);
    }
}

#[cfg(not(feature = "opencl"))]
pub fn run(runner: &mut Runner) {
    runner.skip("opencl", "opencl: Vulkan <-> OpenCL buffers and images", 0, "built without the `opencl` feature");
}
