//! Vulkan <-> OpenGL paths: a buffer and a texture each way, run by lava-flow's GL importer
//! (`lava_flow_diag::selftest::gl`) on a headless EGL context of the device with the default Vulkan
//! device's UUIDs (llvmpipe on CPU machines, NVIDIA's EGL on the GPU machine).

use super::Runner;

#[cfg(feature = "gl")]
pub fn run(runner: &mut Runner) {
    const SUMMARY: (&str, &str) = ("gl", "gl: Vulkan <-> OpenGL buffers and textures");
    // The importer runs its paths together (they share one GL context); the time is theirs.
    // Without Vulkan or the library every path stops at the same place: say it once (every path,
    // where required).
    let paths: Vec<_> = lava_flow_diag::selftest::gl::PATHS.iter().map(|p| ("gl", format!("gl: {p}"))).collect();
    if !runner.wants_any(paths.iter().map(|(_, p)| p.as_str()).chain([SUMMARY.1])) {
        return;
    }
    let ctx = match lava_flow::VulkanContext::new() {
        Ok(ctx) => ctx,
        Err(e) => return runner.skip_all(SUMMARY, &paths, e.to_string()),
    };
    if let Err(e) = lava_flow::gl::GlContext::enumerate() {
        return runner.skip_all(SUMMARY, &paths, e.to_string());
    }
    for case in lava_flow_diag::selftest::gl::selftest(&ctx) {
        runner.record_result("gl", &format!("gl: {}", case.path), 0, case.result);
    }
}

#[cfg(not(feature = "gl"))]
pub fn run(runner: &mut Runner) {
    runner.skip("gl", "gl: Vulkan <-> OpenGL buffers and textures", 0, "built without the `gl` feature");
}
