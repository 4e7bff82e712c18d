//! `lava-flow ring`: a producer and a consumer process passing frames through a ring of shared
//! buffers without copying; reports frames per second and hand-off latency.

use std::path::PathBuf;

use crate::serve::parse_size;
use crate::CmdResult;

/// Which side this process plays.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Start the consumer as a second process and produce for it.
    Both,
    /// Produce into the ring shared on `--socket`.
    Producer,
    /// Consume from the ring shared on `--socket`.
    Consumer,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value = "both")]
    pub role: Role,
    /// The Unix socket the producer listens on (needed for `producer` and `consumer`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Buffers in the ring.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Bytes per frame (K, M, G suffixes).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub size: u64,
    /// Frames to pass before stopping (default: until interrupted).
    #[arg(long)]
    pub frames: Option<u64>,
}

pub fn run(_args: &Args) -> CmdResult {
    Err("the ring needs lava-flow's cross-process protocol (lava_flow::ipc), which is not part of this build yet"
        .into())
}
