//! Vulkan <-> OpenGL paths: a buffer and a texture each way, run by lava-flow's GL importer
//! (`lava_flow::gl::selftest`) on a headless EGL context of the device with the default Vulkan
//! device's UUIDs (llvmpipe on CPU machines, NVIDIA's EGL on the GPU machine).

use super::Runner;

#[cfg(feature = "gl")]
pub fn run(runner: &mut Runner) {
    const GROUP: &str = "gl: Vulkan <-> OpenGL buffers and textures";
    let paths = lava_flow::gl::selftest::PATHS.map(|p| format!("gl: {p}"));
    if !runner.wants_any(paths.iter().map(String::as_str).chain([GROUP])) {
        return;
    }
    let ctx = match lava_flow::VulkanContext::new() {
        Ok(ctx) => ctx,
        Err(e) => return runner.skip("gl", GROUP, 0, e.to_string()),
    };
    // The importer runs its paths together (they share one GL context); the time is theirs.
    // Without the library every path stops at the same place: say it once.
    if let Err(e) = lava_flow::gl::GlContext::enumerate() {
        return runner.skip("gl", GROUP, 0, e.to_string());
    }
    for case in lava_flow::gl::selftest::selftest(&ctx) {
        runner.record_result("gl", &format!("gl: {}", case.path), 0, case.result);
    }
}

#[cfg(not(feature = "gl"))]
pub fn run(runner: &mut Runner) {
    runner.skip("gl", "gl: Vulkan <-> OpenGL buffers and textures", 0, "built without the `gl` feature");
}
