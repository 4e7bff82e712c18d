//! Vulkan <-> CUDA paths: buffers, images and timeline and binary semaphores, run by lava-flow's
//! CUDA importer (`lava_flow_diag::selftest::cuda`) on the default Vulkan device and the CUDA device
//! with the same UUID.

use super::Runner;

#[cfg(feature = "cuda")]
pub fn run(runner: &mut Runner) {
    use lava_flow::VulkanContext;
    use lava_flow_diag::selftest::cuda::{run_path, PATHS};

    const GROUP: &str = "cuda: Vulkan <-> CUDA buffers, images and semaphores";
    // The semaphore paths test external semaphores as much as CUDA.
    let api_of = |path: &str| if path.contains("semaphore") { "cuda+semaphores" } else { "cuda" };
    let paths: Vec<_> = PATHS.iter().map(|p| (api_of(p), format!("cuda: {p}"))).collect();
    if !runner.wants_any(paths.iter().map(|(_, p)| p.as_str()).chain([GROUP])) {
        return;
    }
    // Without libcuda every path stops at the same place: say it once (every path, where required).
    if let Err(e) = lava_flow::cuda::load_driver() {
        return runner.skip_all(("cuda", GROUP), &paths, e.to_string());
    }
    let ctx = VulkanContext::new();
    for path in PATHS {
        let name = format!("cuda: {path}");
        let api = api_of(path);
        match &ctx {
            Ok(ctx) => runner.run_detailed(api, &name, 0, |_| Ok(Some(run_path(path, ctx)?))),
            Err(e) => runner.skip(api, &name, 0, e.to_string()),
        }
    }
}

#[cfg(not(feature = "cuda"))]
pub fn run(runner: &mut Runner) {
    runner.skip("cuda", "cuda: Vulkan <-> CUDA buffers, images and semaphores", 0, "built without the `cuda` feature");
}
