//! Paths between processes: `selftest` starts `lava-flow __selftest-peer` (this same binary) and
//! hands it memory either as an fd sent over a Unix socket (SCM_RIGHTS) or as an fd the peer
//! inherits. The peer imports, checks the pattern, writes a second pattern and exits; this side
//! then checks the second pattern.
//!
//! The peer's stdin carries the transport: the socket end for SCM_RIGHTS, the memory fd itself
//! for inheritance (so no fd numbers travel on the command line and nothing needs `unsafe`).
//! Its stdout carries one JSON line saying how it went.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{ExitCode, Stdio};

use lava_flow::ipc::fd_passing::recv_exact_with_fds;
use lava_flow::raw_gpu_handle::{ExportedBuffer, ExportedTexture, MemoryHandle, TextureFormat};
use lava_flow::vulkan::{ImageTiling, MemoryKind};
use lava_flow::{Buffer, BufferOptions, Image, ImageOptions, SharedHostMemory, VulkanContext};

use super::peer::{peer_command, wait_peer, PeerOutcome, PeerReport, Shared};
use super::vulkan::{gpu_read, gpu_write, image_bytes, BUFFER_SIZE};
use super::{check_bytes, fail, pattern, spoil, PathError, Runner, Step};
use crate::CmdResult;

/// Largest description message a peer accepts.
const MAX_MESSAGE: u32 = 1 << 16;

/// How the memory fd reaches the peer.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Sent over a Unix socket (SCM_RIGHTS) with the description.
    ScmRights,
    /// Inherited across exec (as the peer's stdin), the description on the command line.
    Inherited,
}

/// Arguments of the hidden peer subcommand.
#[derive(clap::Args)]
pub struct PeerArgs {
    #[arg(long, value_enum)]
    transport: Transport,
    /// The description as JSON (inherited transport; over SCM_RIGHTS it comes with the fd).
    #[arg(long)]
    description: Option<String>,
    /// Seed of the pattern to expect.
    #[arg(long)]
    seed: u64,
    /// Seed of the pattern to write back.
    #[arg(long)]
    reply_seed: u64,
    /// Write one wrong byte back.
    #[arg(long)]
    corrupt: bool,
}

/// The images handed to another process: name, options, how.
fn images() -> [(&'static str, ImageOptions, Transport); 2] {
    [
        (
            "image 2D rgba8unorm 256x256 optimal",
            ImageOptions::d2(TextureFormat::Rgba8Unorm, 256, 256),
            Transport::ScmRights,
        ),
        (
            "image 2D rgba8unorm 256x256 linear",
            ImageOptions::d2(TextureFormat::Rgba8Unorm, 256, 256).tiling(ImageTiling::Linear),
            Transport::Inherited,
        ),
    ]
}

const TRANSPORTS: [Transport; 2] = [Transport::ScmRights, Transport::Inherited];

fn buffer_path(t: Transport) -> String {
    format!("ipc: buffer device-local -> other process, {}", transport_name(t))
}

fn image_path(name: &str, t: Transport) -> String {
    format!("ipc: {name} -> other process, {}", transport_name(t))
}

fn host_path(t: Transport) -> String {
    format!("ipc: shared host memory, GPU copy <-> other process's mmap, {}", transport_name(t))
}

pub fn run(runner: &mut Runner) {
    let paths: Vec<_> = TRANSPORTS
        .into_iter()
        .flat_map(|t| [buffer_path(t), host_path(t)])
        .chain(images().map(|(name, _, t)| image_path(name, t)))
        .map(|path| ("vulkan", path))
        .collect();
    if !runner.wants_any(paths.iter().map(|(_, p)| p.as_str()).chain(["ipc: two processes"])) {
        return;
    }
    let device = match VulkanContext::new() {
        Ok(ctx) => ctx,
        // Without Vulkan every path stops at the same place: say it once (every path, where required).
        Err(e) => return runner.skip_all(("vulkan", "ipc: two processes"), &paths, e.to_string()),
    };
    for transport in TRANSPORTS {
        let path = buffer_path(transport);
        runner.run("vulkan", &path, BUFFER_SIZE, |r| {
            buffer_to_peer(&device, MemoryKind::DeviceLocal, transport, r.corrupt(&path))
        });
    }
    for (name, options, transport) in images() {
        let path = image_path(name, transport);
        runner.run("vulkan", &path, image_bytes(&options), |r| {
            image_to_peer(&device, &options, transport, r.corrupt(&path))
        });
    }
    for transport in TRANSPORTS {
        let path = host_path(transport);
        runner.run("vulkan", &path, BUFFER_SIZE, |r| host_to_peer(&device, transport, r.corrupt(&path)));
    }
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::ScmRights => "fd over SCM_RIGHTS",
        Transport::Inherited => "inherited fd",
    }
}

fn buffer_to_peer(ctx: &VulkanContext, kind: MemoryKind, transport: Transport, corrupt: bool) -> Step {
    let mut buffer = Buffer::new(ctx, &BufferOptions::new(BUFFER_SIZE).memory(kind))?;
    buffer.write(0, &pattern(11, BUFFER_SIZE as usize))?;
    let exported = buffer.export_fd()?;
    let shared = Shared::Buffer { memory: exported.memory.description, buffer: exported.buffer };
    hand_to_peer(shared, exported.memory.handle, transport, 11, 12, corrupt)?;
    check_bytes("what the other process wrote", &pattern(12, BUFFER_SIZE as usize), &gpu_read(&buffer)?)
}

fn image_to_peer(ctx: &VulkanContext, options: &ImageOptions, transport: Transport, corrupt: bool) -> Step {
    let image = Image::new(ctx, options)?;
    let size = image.packed_size() as usize;
    image.upload(&pattern(21, size))?;
    let exported = image.export_fd()?;
    let shared = Shared::Image { memory: exported.memory.description, texture: exported.texture };
    hand_to_peer(shared, exported.memory.handle, transport, 21, 22, corrupt)?;
    check_bytes("what the other process uploaded", &pattern(22, size), &image.download()?)
}

/// The GPU writes shared host memory with a copy; the peer reads it through its own mmap and
/// writes the reply there; a GPU copy takes the reply out again.
fn host_to_peer(ctx: &VulkanContext, transport: Transport, corrupt: bool) -> Step {
    let host = Buffer::new(ctx, &BufferOptions::new(BUFFER_SIZE).memory(MemoryKind::SharedHost))?;
    gpu_write(&host, &pattern(31, BUFFER_SIZE as usize))?;
    let exported = host.export_fd()?;
    let shared = Shared::Host { memory: exported.memory.description, buffer: exported.buffer };
    hand_to_peer(shared, exported.memory.handle, transport, 31, 32, corrupt)?;
    check_bytes("the GPU's copy of what the other process wrote", &pattern(32, BUFFER_SIZE as usize), &gpu_read(&host)?)
}

/// Starts the peer, gives it `fd` and `shared` by `transport`, and waits for its verdict.
fn hand_to_peer(shared: Shared, fd: OwnedFd, transport: Transport, seed: u64, reply: u64, corrupt: bool) -> Step {
    match transport {
        Transport::ScmRights => super::peer::hand_to_peer_many(shared, vec![fd], seed, reply, corrupt),
        Transport::Inherited => {
            let description = serde_json::to_string(&shared).map_err(|e| PathError::Failed(e.to_string()))?;
            let mut cmd = peer_command(seed, reply, corrupt)?;
            cmd.args(["--transport", "inherited", "--description", &description]);
            // The memory fd becomes the peer's fd 0 across exec; ours closes with `cmd`.
            cmd.stdin(Stdio::from(fd));
            let child = cmd.spawn()?;
            drop(cmd);
            wait_peer(child)
        }
    }
}

/// The peer: receive, import, check, write the reply, report.
pub fn peer(args: &PeerArgs) -> CmdResult {
    let result = peer_body(args);
    let report = match &result {
        Ok(()) => PeerReport { outcome: PeerOutcome::Pass, error: None },
        Err(PathError::Unavailable(m)) => PeerReport { outcome: PeerOutcome::Unavailable, error: Some(m.clone()) },
        Err(PathError::Unsupported(m)) => PeerReport { outcome: PeerOutcome::Unsupported, error: Some(m.clone()) },
        Err(PathError::Failed(m)) => PeerReport { outcome: PeerOutcome::Fail, error: Some(m.clone()) },
    };
    crate::emit(&(serde_json::to_string(&report)? + "\n"))?;
    Ok(if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn peer_body(args: &PeerArgs) -> Step {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let (shared, fds) = match args.transport {
        Transport::Inherited => {
            let text = args.description.as_deref().ok_or_else(|| PathError::Failed("no --description".into()))?;
            let shared: Shared =
                serde_json::from_str(text).map_err(|e| PathError::Failed(format!("bad description: {e}")))?;
            (shared, vec![stdin])
        }
        Transport::ScmRights => {
            let socket = UnixStream::from(stdin);
            let mut header = [0u8; 4];
            let mut fds = recv_exact_with_fds(socket.as_fd(), &mut header)?;
            let len = u32::from_le_bytes(header);
            if len > MAX_MESSAGE {
                return fail(format!("a description of {len} bytes is larger than {MAX_MESSAGE}"));
            }
            let mut body = vec![0u8; len as usize];
            fds.extend(recv_exact_with_fds(socket.as_fd(), &mut body)?);
            let shared: Shared =
                serde_json::from_slice(&body).map_err(|e| PathError::Failed(format!("bad description: {e}")))?;
            (shared, fds)
        }
    };
    let one = |mut fds: Vec<OwnedFd>| match fds.len() {
        1 => Ok(fds.remove(0)),
        n => fail(format!("expected 1 fd with the description, got {n}")),
    };
    let reply = |len: usize| {
        let mut data = pattern(args.reply_seed, len);
        if args.corrupt {
            spoil(&mut data);
        }
        data
    };
    match shared {
        Shared::Buffer { memory, buffer } => {
            let fd = one(fds)?;
            let ctx = VulkanContext::with_uuid(memory.device.device_uuid)?;
            let imported = Buffer::import(&ctx, ExportedBuffer::new(MemoryHandle::new(fd, memory), buffer))?;
            check_bytes("the imported buffer", &pattern(args.seed, buffer.size as usize), &gpu_read(&imported)?)?;
            gpu_write(&imported, &reply(buffer.size as usize))?;
        }
        Shared::Image { memory, texture } => {
            let fd = one(fds)?;
            let ctx = VulkanContext::with_uuid(memory.device.device_uuid)?;
            let imported = Image::import(&ctx, ExportedTexture::new(MemoryHandle::new(fd, memory), texture))?;
            let size = imported.packed_size() as usize;
            check_bytes("the imported image", &pattern(args.seed, size), &imported.download()?)?;
            imported.upload(&reply(size))?;
        }
        Shared::Host { memory, buffer } => {
            let mut map = SharedHostMemory::from_fd(one(fds)?, memory.allocation_size)?;
            let (offset, len) = (buffer.offset as usize, buffer.size as usize);
            // Copies in and out: the exporter's GPU writes these bytes too, so they are never a slice here.
            let bytes = map.read(offset, len).map_err(|_| {
                PathError::Failed(format!("buffer {buffer:?} lies outside {} mapped bytes", memory.allocation_size))
            })?;
            check_bytes("the mapped host memory", &pattern(args.seed, bytes.len()), &bytes)?;
            map.write(offset, &reply(len))?;
        }
        Shared::PooledBuffers { buffers } => {
            super::pool::peer_side(buffers, fds, args.seed, args.reply_seed, args.corrupt)?;
        }
        Shared::TimelineRounds { memory, buffer, semaphore, rounds } => {
            super::semaphores::peer_side(memory, buffer, semaphore, rounds, fds, args.corrupt)?;
        }
    }
    Ok(())
}
