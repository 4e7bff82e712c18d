//! Vulkan <-> OpenGL paths: buffers and textures through lava-flow's headless-EGL importer.

use super::Runner;

/// The GL importer answers here once it is part of lava-flow; until then the table says why
/// these paths do not run.
pub fn run(runner: &mut Runner) {
    let reason = if cfg!(feature = "gl") {
        "lava-flow's OpenGL importer is not part of this build yet"
    } else {
        "built without the `gl` feature"
    };
    runner.skip("gl", "gl: Vulkan <-> OpenGL buffers, textures and semaphores", 0, reason);
}
