//! wgpu (Vulkan backend) and lava-flow on one device: lava-flow adopts wgpu's VkDevice, allocates
//! an exportable buffer and image on it, wgpu uses them as its own buffer and texture, and a
//! second Vulkan device, OpenGL and another process (this test binary again, running
//! `wgpu_peer`) read what wgpu wrote and write what wgpu reads
//! (examples/wgpu_interop.rs, docs/ADOPTING.md). Skips where Vulkan is missing, and runs without
//! the GL leg where GL is missing (`LAVA_FLOW_REQUIRE=vulkan` or `gl` makes either a failure).

mod common;
#[path = "../examples/wgpu_interop.rs"]
#[allow(dead_code)] // its `main` is the example's; the test calls `run` with the skip helper's GL context
mod wgpu_interop_example;

use std::path::Path;
use std::process::Command;

use common::vulkan;
use lava_flow::gl::GlContext;
use lava_flow_diag::testing;

#[test]
fn a_wgpu_buffer_and_texture_are_shared_with_another_device_and_gl_both_ways() {
    if vulkan().is_none() {
        return;
    }
    let gl = testing::or_skip("gl", GlContext::new());
    let exe = std::env::current_exe().expect("the test binary's path");
    let peer = move |socket: &Path, seed_in: u32, seed_out: u32| {
        let mut cmd = Command::new(&exe);
        cmd.args(["--exact", "wgpu_peer", "--nocapture"])
            .env(PEER, format!("{} {seed_in} {seed_out}", socket.display()));
        cmd
    };
    wgpu_interop_example::run(gl.as_ref(), &peer).expect("examples/wgpu_interop.rs");
}

/// Where the other process's arguments come: "SOCKET SEED_IN SEED_OUT".
const PEER: &str = "LAVA_FLOW_WGPU_PEER";

/// The other process of the test above; does nothing when run on its own.
#[test]
fn wgpu_peer() {
    let Ok(args) = std::env::var(PEER) else { return };
    let args: Vec<&str> = args.split(' ').collect();
    let [socket, seed_in, seed_out] = args[..] else { panic!("{PEER}={args:?}") };
    wgpu_interop_example::attach(Path::new(socket), seed_in.parse().unwrap(), seed_out.parse().unwrap())
        .expect("the other process");
}
