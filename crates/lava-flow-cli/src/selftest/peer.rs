//! Another process for the selftest paths between processes: `lava-flow __selftest-peer` (this
//! same binary) started with what it receives ([`Shared`]) and its fds, and its one-line JSON
//! verdict read back. The paths (`ipc.rs`, `pool.rs`, `semaphores.rs`) build on it; the peer's own
//! side is `ipc::peer`, which hands each kind of [`Shared`] to the path that sent it.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lava_flow::ipc::fd_passing::send_with_fds;
use lava_flow::raw_gpu_handle::{BufferDescription, MemoryDescription, SemaphoreDescription, TextureDescription};
use serde::{Deserialize, Serialize};

use super::{fail, PathError, Step};

/// How long a peer may take before it is killed and the path fails.
const PEER_TIMEOUT: Duration = Duration::from_secs(120);
/// What the peer receives, without its fd.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum Shared {
    /// A Vulkan buffer, imported by the peer into its own VkDevice.
    Buffer { memory: MemoryDescription, buffer: BufferDescription },
    /// A Vulkan image, imported by the peer into its own VkDevice.
    Image { memory: MemoryDescription, texture: TextureDescription },
    /// Shared host memory, which the peer only mmaps (no Vulkan on its side).
    Host { memory: MemoryDescription, buffer: BufferDescription },
    /// Buffers carved from one pool block, one fd each, imported through one block cache.
    PooledBuffers { buffers: Vec<(MemoryDescription, BufferDescription)> },
    /// A buffer and a timeline semaphore (fds in that order) for `rounds` turns with this
    /// process, each ordered on the GPU by the semaphore (see `semaphores.rs`).
    TimelineRounds {
        memory: MemoryDescription,
        buffer: BufferDescription,
        semaphore: SemaphoreDescription,
        rounds: u64,
    },
}

/// How the peer's side went.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum PeerOutcome {
    Pass,
    /// See [`PathError::Unavailable`].
    Unavailable,
    /// See [`PathError::Unsupported`].
    Unsupported,
    Fail,
}

/// The peer's one line of JSON.
#[derive(Serialize, Deserialize, Debug)]
pub(super) struct PeerReport {
    pub(super) outcome: PeerOutcome,
    pub(super) error: Option<String>,
}

/// Starts the peer and sends it `shared` with `fds` in one SCM_RIGHTS message over a socket pair.
pub fn hand_to_peer_many(shared: Shared, fds: Vec<OwnedFd>, seed: u64, reply: u64, corrupt: bool) -> Step {
    let (child, sent) = start_peer(shared, fds, seed, reply, corrupt)?;
    let verdict = wait_peer(child);
    sent?;
    verdict
}

/// Starts the peer and sends it `shared` with `fds`, without waiting for it: for paths where this
/// process takes turns with the peer. Returns the child and whether the send succeeded (a failed
/// send still leaves a child to wait for, which then reports what it missed).
pub fn start_peer(shared: Shared, fds: Vec<OwnedFd>, seed: u64, reply: u64, corrupt: bool) -> Step<(Child, Step)> {
    let description = serde_json::to_string(&shared).map_err(|e| PathError::Failed(e.to_string()))?;
    let (ours, theirs) = UnixStream::pair()?;
    let mut cmd = peer_command(seed, reply, corrupt)?;
    cmd.args(["--transport", "scm-rights"]);
    cmd.stdin(Stdio::from(OwnedFd::from(theirs)));
    let child = cmd.spawn()?;
    drop(cmd);
    let mut message = (description.len() as u32).to_le_bytes().to_vec();
    message.extend_from_slice(description.as_bytes());
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    let sent = send_with_fds(ours.as_fd(), &message, &borrowed).map_err(PathError::from);
    // The kernel gave the peer its own copies; ours close here.
    drop(borrowed);
    drop(fds);
    drop(ours);
    Ok((child, sent))
}

/// The peer's command line, its stdout and stderr piped.
pub(super) fn peer_command(seed: u64, reply: u64, corrupt: bool) -> Step<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["__selftest-peer", "--seed", &seed.to_string(), "--reply-seed", &reply.to_string()]);
    if corrupt {
        cmd.arg("--corrupt");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    Ok(cmd)
}

/// Waits (bounded) for the peer and turns its report into the path's result.
pub fn wait_peer(mut child: Child) -> Step {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > PEER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return fail(format!("the other process did not finish in {PEER_TIMEOUT:?} and was killed"));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let report: Option<PeerReport> = out.lines().rev().find_map(|l| serde_json::from_str(l).ok());
    let Some(PeerReport { outcome, error }) = report else {
        return fail(format!("the other process exited with {status} without a report; stderr: {}", err.trim()));
    };
    let why = format!("in the other process: {}", error.unwrap_or_default());
    match outcome {
        PeerOutcome::Pass if status.success() => Ok(()),
        PeerOutcome::Pass => fail(format!("the other process reported success but exited with {status}")),
        PeerOutcome::Unavailable => Err(PathError::Unavailable(why)),
        PeerOutcome::Unsupported => Err(PathError::Unsupported(why)),
        PeerOutcome::Fail => fail(why),
    }
}
