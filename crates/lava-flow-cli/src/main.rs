//! `lava-flow`: shows what a machine can share, proves it end to end, and measures it.
//!
//! Exit codes: 0 success; 1 a check or command failed; 2 bad command line.

mod attach;
mod bench;
mod channel;
#[cfg(feature = "mpi")]
mod channel_mpi;
mod info;
mod plot;
mod ring;
mod selftest;
mod serve;
mod stop;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lava-flow", version, about = "Share GPU memory across APIs and processes without copying")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The machine's devices and, for each API, which handle kinds it can export and import.
    Info(info::Args),
    /// Every sharing path this machine supports, end to end, with a data check.
    #[command(after_help = "Exit code 1 when a path that runs fails; paths this machine cannot run are listed \
                            as skipped with the reason.\nLAVA_FLOW_REQUIRE=vulkan,cuda,opencl,gl,semaphores (or \
                            `all`) turns the skips of those APIs into failures; a name it does not know is a \
                            command-line error (exit code 2).")]
    Selftest(selftest::Args),
    /// lava-flow against the raw API calls, measured in one run.
    Bench(bench::Args),
    /// Allocate memory, fill a known pattern and share it with every client of a Unix socket.
    Serve(serve::Args),
    /// Import what a `lava-flow serve` shares, verify the pattern and time each step.
    Attach(attach::Args),
    /// A zero-copy producer/consumer ring of shared buffers between two processes.
    Ring(ring::Args),
    /// Frames of shared memory from a producer process to consumer processes, zero-copy
    ///
    /// One end per process (`--role`), or `channel bench`, which starts both ends itself.
    Channel(channel::Args),
    /// The other side of a cross-process selftest path (started by `selftest` itself).
    #[command(name = "__selftest-peer", hide = true)]
    SelftestPeer(selftest::ipc::PeerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Selftest(args) => {
            // A name LAVA_FLOW_REQUIRE does not know must not pass as no requirement.
            if let Err(e) = lava_flow_diag::testing::required() {
                eprintln!("lava-flow: {e}");
                return ExitCode::from(2);
            }
            selftest::run(&args)
        }
        Command::Bench(args) => bench::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Attach(args) => attach::run(&args),
        Command::Ring(args) => ring::run(&args),
        Command::Channel(args) => channel::run(&args),
        Command::SelftestPeer(args) => selftest::ipc::peer(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lava-flow: {e}");
            if e.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// What a subcommand returns: its exit code, or an error to print (exit code 1, or 2 for a
/// [`UsageError`]).
pub type CmdResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// A bad command line that clap's own checks let through (exit code 2, as for clap's errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Writes a command's output to stdout. A reader that went away (`lava-flow info | head`) is not
/// an error: the output is simply no longer wanted.
pub fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
