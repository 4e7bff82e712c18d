//! Paths between processes: `selftest` starts `lava-flow __selftest-peer` (itself) and hands it
//! memory over a Unix socket (SCM_RIGHTS) or by inheritance.

use std::process::ExitCode;

use super::Runner;
use crate::CmdResult;

/// Arguments of the hidden peer subcommand.
#[derive(clap::Args)]
pub struct PeerArgs {}

pub fn run(runner: &mut Runner) {
    runner.skip(
        "vulkan",
        "ipc: buffers, images and host memory between two processes",
        0,
        "lava-flow's Vulkan export and import are not part of this build yet",
    );
}

/// The peer side of a cross-process path.
pub fn peer(_args: &PeerArgs) -> CmdResult {
    Ok(ExitCode::FAILURE)
}
