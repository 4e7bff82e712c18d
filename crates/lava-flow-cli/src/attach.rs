//! `lava-flow attach`: connect to a `lava-flow serve`, import what it shares into one API, verify
//! the pattern, and print what arrived and how long each step took.

use std::path::PathBuf;

use crate::CmdResult;

/// The API that imports.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Vulkan,
    Cuda,
    Opencl,
    Gl,
}

#[derive(clap::Args)]
pub struct Args {
    /// The server's Unix socket.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Which API imports the memory.
    #[arg(long, value_enum)]
    pub api: Api,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> CmdResult {
    Err(format!(
        "cannot attach to {}: lava-flow's cross-process protocol (lava_flow::ipc) is not part of this build yet",
        args.socket.display()
    )
    .into())
}
