//! Vulkan <-> OpenCL paths: buffers, images and binary semaphores through lava-flow's OpenCL
//! importer.

use super::Runner;

/// The OpenCL importer answers here once it is part of lava-flow; until then the table says why
/// these paths do not run.
pub fn run(runner: &mut Runner) {
    let reason = if cfg!(feature = "opencl") {
        "lava-flow's OpenCL importer is not part of this build yet"
    } else {
        "built without the `opencl` feature"
    };
    runner.skip("opencl", "opencl: Vulkan <-> OpenCL buffers, images and semaphores", 0, reason);
}
