//! Vulkan <-> CUDA paths: buffers, images and timeline semaphores through lava-flow's CUDA importer.

use super::Runner;

/// The CUDA importer answers here once it is part of lava-flow; until then the table says why
/// these paths do not run.
pub fn run(runner: &mut Runner) {
    let reason = if cfg!(feature = "cuda") {
        "lava-flow's CUDA importer is not part of this build yet"
    } else {
        "built without the `cuda` feature"
    };
    runner.skip("cuda", "cuda: Vulkan <-> CUDA buffers, images and semaphores", 0, reason);
}
