//! Channels: frames of shared memory flowing from one producer process to any number of consumer
//! processes, zero-copy, in order, with a bounded number in flight.
//!
//! The producer owns a pool of `slots` frames of `frame_size` bytes each: exportable Vulkan
//! buffers ([`FrameMemory::Vulkan`]) or sealed memfds ([`FrameMemory::Host`]). It listens on a
//! Unix socket; each consumer that connects gets the pool's descriptions and fds once (a `HELLO`
//! and an `OBJECTS` message), then one small `FRAME` message per frame: slot, sequence number,
//! timeline value and [`Metadata`]. Nothing else is copied. A consumer's `RELEASE` gives the slot
//! back; a slot is reused once every consumer it was sent to released it (or is gone).
//!
//! ```no_run
//! use lava_flow::channel::{Channel, ChannelOptions, Metadata};
//!
//! // Producer process.
//! let mut producer = Channel::producer("/tmp/frames.sock", ChannelOptions::default())?;
//! let mut frame = producer.acquire()?;
//! frame.write(0, b"hello")?;
//! frame.send(Metadata::bytes(5))?;
//!
//! // Consumer process.
//! let consumer = Channel::consumer("/tmp/frames.sock", ChannelOptions::default())?;
//! let frame = consumer.recv()?;
//! let mut bytes = vec![0u8; frame.len() as usize];
//! frame.read_into(0, &mut bytes)?;
//! drop(frame); // released: the producer may reuse the slot
//! # Ok::<(), lava_flow::Error>(())
//! ```
//!
//! Synchronization: the `FRAME` message is the host-side "filled" signal (its arrival wakes the
//! consumer; the socket's send and receive order the producer's writes before the consumer's
//! reads), and `RELEASE` the "released" one. Where the producer's Vulkan device exports timeline
//! semaphores as opaque fds ([`ChannelSync::Auto`] with Vulkan frames), it also shares
//! `channel.filled`, signalled to `sequence + 1` once a frame's bytes are written; consumers wait
//! for that value before handing the frame out, and a consumer's GPU work can wait for it on the
//! device ([`ReadFrame::filled`]). The user never picks a semaphore value.
//!
//! Frame bytes are shared with other processes, so neither end ever holds a `&[u8]` over them:
//! [`WriteFrame::write`] and [`ReadFrame::read_into`] copy with volatile accesses (or through a
//! staging buffer where the memory is not host-visible), and the Vulkan buffer or memfd is
//! available for GPU work or for the `unsafe` views whose contract the channel's hand-off keeps.
//!
//! Views: a consumer that works in GL, CUDA or OpenCL names the API in
//! [`ChannelOptions::views`]; each slot is then imported into it once, at connect (from a copy of
//! the slot's fd), and `ReadFrame::gl_buffer`, `ReadFrame::cuda_buffer` and
//! `ReadFrame::opencl_buffer` hand out the slot's object while the frame is held. Receiving a
//! frame imports nothing ([`ConsumerStats::imports`]).
//!
//! docs/CHANNELS.md describes the model and its guarantees; docs/PROTOCOL.md the messages.

#[cfg(feature = "mpi")]
pub mod relay;
pub mod run;
pub mod wire;

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raw_gpu_handle::{ExportedBuffer, ExportedSemaphore, SemaphoreHandleKind, SemaphoreKind};
use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use crate::ipc::{shm, socket, wire as ipc_wire, NamedObject, SharedObject};
use crate::vulkan::sync::{semaphore_capabilities, Semaphore};
use crate::vulkan::MemoryKind;
use crate::{Buffer, BufferOptions, Error, Result, SharedHostMemory, VulkanContext};

#[cfg(feature = "cuda")]
use crate::cuda::{CudaBuffer, CudaDevice};
#[cfg(feature = "gl")]
use crate::gl::{GlBuffer, GlContext};
#[cfg(feature = "opencl")]
use crate::opencl::{ClBuffer, ClContext};

use wire::{ChannelMessage, FrameMessage, Hello, MemoryCode, SyncCode};
pub use wire::{DType, Metadata, MAX_DIMS, MAX_SLOTS, MAX_USER_DATA};

/// Non-blocking looks before a waiting end yields its time slice (consumer).
const SPINS: u32 = 128;
/// Looks with a yield between them before a waiting end sleeps in `poll`.
const YIELDS: u32 = 64;

/// Most consumers one channel serves at once (each has a bit in a slot's holder mask).
pub const MAX_CONSUMERS: u32 = 64;
/// The name each consumer's claim words travel under in the handshake.
pub const CLAIMS_NAME: &str = "channel.claims";
/// The name the "frames filled" timeline semaphore travels under (timeline channels).
pub const FILLED_NAME: &str = "channel.filled";

/// The name slot `i`'s memory travels under in the handshake.
pub fn slot_name(i: u32) -> String {
    format!("channel.slot.{i}")
}

/// Numbers the ends this process opens, so a detached frame is attached back only to its own end.
static NEXT_END: AtomicU64 = AtomicU64::new(1);

/// Where a channel's frames live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameMemory {
    /// One exportable Vulkan buffer per slot, of this memory kind, exported as an opaque fd and
    /// imported by each consumer into the device it came from.
    Vulkan(MemoryKind),
    /// One sealed memfd per slot, mapped by every process.
    Host,
}

impl Default for FrameMemory {
    fn default() -> Self {
        FrameMemory::Vulkan(MemoryKind::HostVisible)
    }
}

/// What the producer does when every slot is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum Policy {
    /// `acquire` waits until a consumer releases a slot: a slow consumer holds the producer back.
    #[default]
    Block,
    /// `acquire` takes back the oldest frame that no consumer has taken yet (consumers skip it and
    /// count it as dropped); a frame a consumer holds is never taken back. For live streams.
    DropOldest,
}

impl std::str::FromStr for Policy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Policy> {
        match s {
            "block" => Ok(Policy::Block),
            "drop-oldest" => Ok(Policy::DropOldest),
            other => {
                Err(Error::invalid("channel policy", format!("{other:?} is not a policy"), "use block or drop-oldest"))
            }
        }
    }
}

/// How frames are signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChannelSync {
    /// Vulkan frames on a device that exports timeline semaphores as opaque fds: messages plus
    /// the `channel.filled` timeline; else messages alone.
    #[default]
    Auto,
    /// Messages alone (host frames, CPU machines).
    Messages,
    /// Messages plus the `channel.filled` timeline; an error where the device cannot share one.
    Timeline,
}

/// Settings of either end. The producer uses all of them; a consumer reads the pool's shape from
/// the producer and uses `timeout` and `context`.
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    /// Frames in the pool (1..=[`MAX_SLOTS`]): at most this many are in flight.
    pub slots: u32,
    /// Bytes per frame.
    pub frame_size: u64,
    /// Where frames live.
    pub memory: FrameMemory,
    /// What `acquire` does when every slot is in flight.
    pub policy: Policy,
    /// How frames are signalled.
    pub sync: ChannelSync,
    /// Most consumers at once (1..=[`MAX_CONSUMERS`]); more are refused with an `ERROR`.
    pub max_consumers: u32,
    /// Longest a blocking call waits: `acquire`, `recv`, a consumer's connect (which retries
    /// until a producer listens), and a send to a consumer whose socket is full.
    pub timeout: Duration,
    /// Uids other than this process's that may connect (producer). They also need a
    /// `socket_mode` that lets them connect, and search permission on the socket's directory.
    pub allow_uids: Vec<u32>,
    /// Permission bits of the producer's socket file: 0600 (only this user) by default.
    pub socket_mode: u32,
    /// The Vulkan device to allocate frames on (producer) or import them into (consumer); by
    /// default the first device, or for a consumer the device whose UUID the producer names.
    pub context: Option<VulkanContext>,
    /// Consumer: the APIs besides Vulkan that frames are viewed in (GL, CUDA, OpenCL). Each slot
    /// is imported into each of them once, at connect; `ReadFrame::gl_buffer`,
    /// `ReadFrame::cuda_buffer` and `ReadFrame::opencl_buffer` hand out the slot's object.
    /// Needs Vulkan frames. Unused by the producer.
    pub views: Views,
}

/// An API a consumer can view frames in besides Vulkan and the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ViewApi {
    /// OpenGL buffers (`GL_EXT_memory_object_fd`), feature `gl`.
    Gl,
    /// CUDA buffers (cudarc device pointers), feature `cuda`.
    Cuda,
    /// OpenCL buffers (`cl_khr_external_memory_opaque_fd`), feature `opencl`.
    OpenCl,
}

impl ViewApi {
    /// "gl", "cuda" or "opencl".
    pub fn name(self) -> &'static str {
        match self {
            ViewApi::Gl => "gl",
            ViewApi::Cuda => "cuda",
            ViewApi::OpenCl => "opencl",
        }
    }
}

/// Whether, and in which context, a consumer views frames in one API.
#[derive(Clone, Debug, Default)]
pub enum View<C> {
    /// No view in this API.
    #[default]
    Off,
    /// Open that API's device whose UUIDs the producer's frames carry (`for_identity`).
    Matching,
    /// Import into this context; its device must be the producer's (opaque fds never cross
    /// devices), else the connect fails with the importer's `DeviceNotFound`/`Unsupported`.
    In(C),
}

impl<C> View<C> {
    #[cfg_attr(not(any(feature = "gl", feature = "cuda", feature = "opencl")), allow(dead_code))]
    fn is_on(&self) -> bool {
        !matches!(self, View::Off)
    }
}

/// The APIs a consumer views frames in besides Vulkan (`ChannelOptions::views`). Fields exist
/// with their crate features.
#[derive(Clone, Debug, Default)]
pub struct Views {
    /// OpenGL (feature `gl`).
    #[cfg(feature = "gl")]
    pub gl: View<GlContext>,
    /// CUDA (feature `cuda`).
    #[cfg(feature = "cuda")]
    pub cuda: View<CudaDevice>,
    /// OpenCL (feature `opencl`).
    #[cfg(feature = "opencl")]
    pub opencl: View<ClContext>,
}

impl Views {
    /// A view in `api` on the device matching the producer's; an error where this build lacks
    /// the API's feature.
    pub fn matching(api: ViewApi) -> Result<Views> {
        let (built, feature) = match api {
            ViewApi::Gl => (cfg!(feature = "gl"), "gl"),
            ViewApi::Cuda => (cfg!(feature = "cuda"), "cuda"),
            ViewApi::OpenCl => (cfg!(feature = "opencl"), "opencl"),
        };
        if !built {
            return Err(Error::unsupported(
                format!("viewing channel frames in {}", api.name()),
                format!("this lava-flow was built without the `{feature}` feature"),
                "crate features (Cargo.toml)",
                format!("build lava-flow with `--features {feature}`"),
            ));
        }
        #[allow(unused_mut)]
        let mut views = Views::default();
        #[cfg(feature = "gl")]
        if api == ViewApi::Gl {
            views.gl = View::Matching;
        }
        #[cfg(feature = "cuda")]
        if api == ViewApi::Cuda {
            views.cuda = View::Matching;
        }
        #[cfg(feature = "opencl")]
        if api == ViewApi::OpenCl {
            views.opencl = View::Matching;
        }
        Ok(views)
    }

    /// The APIs these views import into, in the order gl, cuda, opencl.
    pub fn apis(&self) -> Vec<ViewApi> {
        #[allow(unused_mut)]
        let mut out = Vec::new();
        #[cfg(feature = "gl")]
        if self.gl.is_on() {
            out.push(ViewApi::Gl);
        }
        #[cfg(feature = "cuda")]
        if self.cuda.is_on() {
            out.push(ViewApi::Cuda);
        }
        #[cfg(feature = "opencl")]
        if self.opencl.is_on() {
            out.push(ViewApi::OpenCl);
        }
        out
    }
}

/// One slot's objects in the consumer's view APIs (imported once, at connect).
#[derive(Default)]
struct SlotViews {
    #[cfg(feature = "gl")]
    gl: Option<GlBuffer>,
    #[cfg(feature = "cuda")]
    cuda: Option<CudaBuffer<u8>>,
    #[cfg(feature = "opencl")]
    opencl: Option<ClBuffer>,
}

/// The contexts a consumer's views import into, opened (or taken from the options) at the
/// first slot.
#[derive(Default)]
struct ViewContexts {
    #[cfg(feature = "gl")]
    gl: Option<GlContext>,
    #[cfg(feature = "cuda")]
    cuda: Option<CudaDevice>,
    #[cfg(feature = "opencl")]
    opencl: Option<ClContext>,
}

/// The context `view` names, opening the one matching `identity` where it says `Matching`.
#[cfg(any(feature = "gl", feature = "cuda", feature = "opencl"))]
fn view_context<C: Clone>(view: &View<C>, have: &mut Option<C>, open: impl FnOnce() -> Result<C>) -> Result<Option<C>> {
    if have.is_none() {
        *have = match view {
            View::Off => None,
            View::Matching => Some(open()?),
            View::In(c) => Some(c.clone()),
        };
    }
    Ok(have.clone())
}

/// A copy of `buffer`'s fd for one more import (each successful import consumes its fd).
#[cfg(any(feature = "gl", feature = "cuda", feature = "opencl"))]
fn dup_for(buffer: &ExportedBuffer, slot: u32, api: ViewApi) -> Result<ExportedBuffer> {
    buffer
        .try_clone()
        .map_err(|e| Error::io(format!("duplicating slot {slot}'s fd to import it into {} (dup)", api.name()), e))
}

/// Imports slot `slot`'s buffer into every API `views` names (each from its own copy of the
/// fd; the caller's `buffer` stays untouched). Returns the objects and how many imports ran.
#[allow(unused_variables, unused_mut)]
fn import_views(
    views: &Views,
    contexts: &mut ViewContexts,
    buffer: &ExportedBuffer,
    slot: u32,
) -> Result<(SlotViews, u64)> {
    let mut out = SlotViews::default();
    let mut imports = 0;
    #[cfg(any(feature = "gl", feature = "cuda", feature = "opencl"))]
    let identity = *buffer.device();
    #[cfg(feature = "gl")]
    if let Some(ctx) = view_context(&views.gl, &mut contexts.gl, || GlContext::for_identity(&identity))? {
        out.gl = Some(ctx.import_buffer(dup_for(buffer, slot, ViewApi::Gl)?)?);
        imports += 1;
    }
    #[cfg(feature = "cuda")]
    if let Some(dev) = view_context(&views.cuda, &mut contexts.cuda, || CudaDevice::for_identity(&identity))? {
        out.cuda = Some(dev.import_buffer(dup_for(buffer, slot, ViewApi::Cuda)?)?);
        imports += 1;
    }
    #[cfg(feature = "opencl")]
    if let Some(ctx) = view_context(&views.opencl, &mut contexts.opencl, || ClContext::for_identity(&identity))? {
        out.opencl = Some(ctx.import_buffer(dup_for(buffer, slot, ViewApi::OpenCl)?)?);
        imports += 1;
    }
    Ok((out, imports))
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            slots: 4,
            frame_size: 1 << 20,
            memory: FrameMemory::default(),
            policy: Policy::Block,
            sync: ChannelSync::Auto,
            max_consumers: 8,
            timeout: Duration::from_secs(10),
            allow_uids: Vec::new(),
            socket_mode: 0o600,
            context: None,
            views: Views::default(),
        }
    }
}

/// Opens a channel end.
pub struct Channel;

impl Channel {
    /// Creates the pool and listens at `path` (a socket file, mode 0600; a stale one is
    /// replaced, a live one is an error). Consumers may connect at any time.
    pub fn producer(path: impl AsRef<Path>, options: ChannelOptions) -> Result<Producer> {
        Producer::new(path.as_ref(), options)
    }

    /// Connects to the producer at `path`, retrying until one listens or `options.timeout`
    /// passes, and maps or imports its pool.
    pub fn consumer(path: impl AsRef<Path>, options: ChannelOptions) -> Result<Consumer> {
        Consumer::connect(path.as_ref(), options)
    }
}

/// One slot's memory, on either end.
enum Block {
    Host(SharedHostMemory),
    Vulkan(Buffer),
}

impl Block {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            Block::Host(m) => m.write(usize::try_from(offset).unwrap_or(usize::MAX), data),
            Block::Vulkan(b) => b.write(offset, data),
        }
    }
    fn read_into(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        match self {
            Block::Host(m) => m.read_into(usize::try_from(offset).unwrap_or(usize::MAX), out),
            Block::Vulkan(b) => b.read_into(offset, out),
        }
    }
    fn export(&self) -> Result<SharedObject> {
        Ok(match self {
            Block::Host(m) => shm::export(m)?.into(),
            Block::Vulkan(b) => b.export_fd()?.into(),
        })
    }
}

/// Refuses a range beyond the frame: a slot's memory may be larger (host frames are whole pages,
/// Vulkan slots carry GL's slack), but a frame is `frame_size` bytes.
fn check_frame_range(offset: u64, len: usize, frame_size: u64, doing: &str) -> Result<()> {
    if offset.checked_add(len as u64).is_none_or(|end| end > frame_size) {
        return Err(Error::invalid(
            format!("{doing} {len} bytes at offset {offset} of a frame"),
            format!("the channel's frames hold {frame_size} bytes"),
            "stay inside the frame (ChannelOptions::frame_size)",
        ));
    }
    Ok(())
}

/// Monotonic nanoseconds, comparable between processes on one machine.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(t.tv_nsec as u64)
}

/// Claim word values (one `u64` per slot in each consumer's `channel.claims`): 0 idle,
/// `(sequence + 1) << 1` sent and not taken, that `| 1` taken by the consumer.
fn queued(sequence: u64) -> u64 {
    (sequence + 1) << 1
}

/// Waits until `fd` is readable (or writable with `out`), up to `timeout` (`None`: forever).
/// Returns whether it is.
fn poll_one(fd: BorrowedFd<'_>, out: bool, timeout: Option<Duration>) -> Result<bool> {
    let flags = if out { PollFlags::OUT } else { PollFlags::IN };
    let mut fds = [PollFd::new(&fd, flags)];
    poll(&mut fds, timeout)?;
    Ok(!fds[0].revents().is_empty())
}

fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> Result<usize> {
    let ts = timeout.map(|t| rustix::event::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: t.subsec_nanos() as _,
    });
    match rustix::event::poll(fds, ts.as_ref()) {
        Ok(n) => Ok(n),
        Err(rustix::io::Errno::INTR) => Ok(0),
        Err(e) => Err(Error::io("waiting on channel sockets (poll)", e.into())),
    }
}

/// What a non-blocking receive found.
enum Incoming {
    Message(Vec<u8>),
    Nothing,
    HungUp,
}

fn recv_nonblocking(fd: BorrowedFd<'_>) -> Result<Incoming> {
    let mut buf = [0u8; wire::MAX_MESSAGE_LEN + 1];
    loop {
        // No control buffer: fds a peer attaches are closed by the kernel, never received.
        match rustix::net::recv(fd, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Ok(Incoming::HungUp),
            Ok((n, _)) => return Ok(Incoming::Message(buf[..n].to_vec())),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(Incoming::Nothing),
            Err(rustix::io::Errno::CONNRESET | rustix::io::Errno::PIPE) => return Ok(Incoming::HungUp),
            Err(e) => return Err(Error::io("receiving a channel message", e.into())),
        }
    }
}

/// Sends one message without blocking: `Ok(false)` where the peer's socket is full.
fn send_nonblocking(fd: BorrowedFd<'_>, bytes: &[u8]) -> Result<bool> {
    loop {
        match rustix::net::send(fd, bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(Error::io("sending a channel message", e.into())),
        }
    }
}

fn encode(message: &ChannelMessage) -> Result<Vec<u8>> {
    wire::encode(message).map_err(|e| Error::invalid("a channel message", e.0, "keep metadata within the limits"))
}

fn protocol(reason: impl Into<String>) -> Error {
    Error::Protocol {
        reason: reason.into(),
        advice: "both ends must speak the channel protocol of docs/PROTOCOL.md (\"Channels\"), version 1".into(),
    }
}

/// Opens `ctx` (or the default device) and checks that it exports and imports timeline
/// semaphores as opaque fds.
fn timeline_ok(ctx: &VulkanContext) -> Result<()> {
    let caps = semaphore_capabilities(ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd);
    caps.require_export()?;
    caps.require_import()
}

// ---------------------------------------------------------------------------------------------
// Producer

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Writing,
    InFlight,
}

struct Slot {
    state: SlotState,
    /// Sequence number of the frame it holds (valid unless never used).
    sequence: u64,
    /// Bit `c`: consumer `c` was sent the frame and has not released it.
    holders: u64,
    /// The frame's message, kept for a consumer joining late.
    message: Option<FrameMessage>,
}

struct Peer {
    sock: OwnedFd,
    claims: SharedHostMemory,
    pid: i32,
}

/// What a producer did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProducerStats {
    /// Frames sent.
    pub frames_sent: u64,
    /// Frame messages delivered (one per frame per consumer connected at the time).
    pub deliveries: u64,
    /// Deliveries taken back or skipped by the drop-oldest policy (or because a consumer's
    /// socket was full under it).
    pub dropped: u64,
    /// Times `acquire` found every slot in flight and waited (block policy).
    pub full_waits: u64,
    /// Consumers that connected and got the pool.
    pub consumers_joined: u64,
    /// Consumers that hung up, died, or stopped reading for `timeout` under the block policy;
    /// their slots were reclaimed.
    pub consumers_lost: u64,
    /// Consumers disconnected for breaking the protocol (malformed or impossible messages).
    pub consumers_broken: u64,
    /// Connections refused (uid, too many consumers).
    pub consumers_refused: u64,
}

/// The producing end: owns the pool and the socket. Dropping it ends the channel: every consumer
/// gets `END` after the frames already sent, and the socket file is removed.
///
/// The producer runs no thread of its own: it accepts consumers, takes their releases and
/// notices their hang-ups inside its calls ([`acquire`](Self::acquire),
/// [`try_acquire`](Self::try_acquire), [`WriteFrame::send`], [`poll_events`](Self::poll_events),
/// [`wait_for_consumers`](Self::wait_for_consumers), [`drain`](Self::drain)). A producer that
/// sends nothing for longer than a consumer's connect timeout calls `poll_events` now and then,
/// or that consumer's handshake times out.
pub struct Producer {
    id: u64,
    path: PathBuf,
    inode: (u64, u64),
    listener: OwnedFd,
    euid: u32,
    options: ChannelOptions,
    blocks: Vec<Block>,
    slots: Vec<Slot>,
    peers: Vec<Option<Peer>>,
    filled: Option<Semaphore>,
    next_sequence: u64,
    next_slot: usize,
    newest: Option<usize>,
    stats: ProducerStats,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("path", &self.path).field("stats", &self.stats).finish()
    }
}

/// Checks a producer's settings before anything is allocated: slot count, frame size, consumer
/// count, and that host frames fit in the host memory this process can still get.
pub fn check_options(options: &ChannelOptions) -> Result<()> {
    if options.slots == 0 || options.slots > MAX_SLOTS {
        return Err(Error::invalid(
            "channel slot count",
            format!("{} is not in 1..={MAX_SLOTS}", options.slots),
            format!("choose between 1 and {MAX_SLOTS} slots"),
        ));
    }
    if options.frame_size == 0 {
        return Err(Error::invalid("channel frame size", "0 bytes", "give frames at least one byte"));
    }
    if options.max_consumers == 0 || options.max_consumers > MAX_CONSUMERS {
        return Err(Error::invalid(
            "channel consumer limit",
            format!("{} is not in 1..={MAX_CONSUMERS}", options.max_consumers),
            format!("allow between 1 and {MAX_CONSUMERS} consumers"),
        ));
    }
    let total = u64::from(options.slots).saturating_mul(options.frame_size);
    if options.memory == FrameMemory::Host {
        crate::limits::check_host_memory(
            &format!("a channel of {} frames of {} bytes", options.slots, options.frame_size),
            total,
            "use fewer or smaller frames (host frames are shared memory, charged to RAM as they are written)",
        )?;
    }
    Ok(())
}

impl Producer {
    fn new(path: &Path, options: ChannelOptions) -> Result<Producer> {
        check_options(&options)?;
        let needs_vulkan = matches!(options.memory, FrameMemory::Vulkan(_)) || options.sync == ChannelSync::Timeline;
        let ctx = match (&options.context, needs_vulkan) {
            (Some(ctx), _) => Some(ctx.clone()),
            (None, true) => Some(VulkanContext::new()?),
            (None, false) => None,
        };
        let timeline = match (options.sync, &ctx) {
            (ChannelSync::Messages, _) => false,
            (ChannelSync::Timeline, Some(ctx)) => {
                timeline_ok(ctx)?;
                true
            }
            (ChannelSync::Timeline, None) => unreachable!("a timeline channel opens a Vulkan device"),
            (ChannelSync::Auto, Some(ctx)) => {
                matches!(options.memory, FrameMemory::Vulkan(_)) && timeline_ok(ctx).is_ok()
            }
            (ChannelSync::Auto, None) => false,
        };
        let blocks = (0..options.slots)
            .map(|_| match options.memory {
                FrameMemory::Host => Ok(Block::Host(SharedHostMemory::create(options.frame_size, 1)?)),
                FrameMemory::Vulkan(kind) => {
                    let ctx = ctx.as_ref().expect("Vulkan frames open a device");
                    // `for_gl`: 8 bytes of slack per slot, so that consumers can view the frame
                    // in GL on drivers that refuse a buffer spanning its memory object (docs/GL.md).
                    let buffer_options = BufferOptions::new(options.frame_size).memory(kind).for_gl();
                    Ok(Block::Vulkan(Buffer::new(ctx, &buffer_options)?))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let filled = match (timeline, &ctx) {
            (true, Some(ctx)) => {
                Some(Semaphore::exportable(ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd)?)
            }
            _ => None,
        };
        let (listener, inode) = crate::ipc::bind_listener(path, options.socket_mode)?;
        rustix::io::ioctl_fionbio(&listener, true)
            .map_err(|e| Error::io("making the channel's listening socket non-blocking", e.into()))?;
        let slots = (0..options.slots)
            .map(|_| Slot { state: SlotState::Free, sequence: 0, holders: 0, message: None })
            .collect();
        let peers = (0..options.max_consumers).map(|_| None).collect();
        Ok(Producer {
            id: NEXT_END.fetch_add(1, Ordering::Relaxed),
            path: path.to_path_buf(),
            inode,
            listener,
            euid: rustix::process::geteuid().as_raw(),
            options,
            blocks,
            slots,
            peers,
            filled,
            next_sequence: 0,
            next_slot: 0,
            newest: None,
            stats: ProducerStats::default(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters of what happened so far.
    pub fn stats(&self) -> ProducerStats {
        self.stats
    }

    /// Consumers connected now.
    pub fn consumers(&self) -> usize {
        self.peers.iter().filter(|p| p.is_some()).count()
    }

    /// Frames sent and not yet released by every consumer they went to.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.state == SlotState::InFlight).count()
    }

    /// Whether frames carry the `channel.filled` timeline semaphore.
    pub fn uses_timeline(&self) -> bool {
        self.filled.is_some()
    }

    /// Handles what consumers sent (releases, hang-ups) and new connections, without waiting.
    pub fn poll_events(&mut self) -> Result<()> {
        self.pump(Some(Duration::ZERO))
    }

    /// Waits until at least `n` consumers are connected (or `timeout` passes: an error).
    pub fn wait_for_consumers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump(Some(Duration::ZERO))?;
            if self.consumers() >= n {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    action: format!(
                        "waiting for {n} consumers on {} ({} connected)",
                        self.path.display(),
                        self.consumers()
                    ),
                    timeout,
                });
            }
            self.pump(Some(deadline - now))?;
        }
    }

    /// Waits until every frame sent has been released (or its consumers are gone), up to
    /// `timeout`; returns whether they were.
    pub fn drain(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump(Some(Duration::ZERO))?;
            if self.in_flight() == 0 {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.pump(Some(deadline - now))?;
        }
    }

    /// A free frame to write, waiting for one while every slot is in flight (block policy,
    /// up to `options.timeout`), or taking back the oldest untaken one (drop-oldest).
    pub fn acquire(&mut self) -> Result<WriteFrame<'_>> {
        self.acquire_timeout(self.options.timeout)
    }

    /// As [`acquire`](Self::acquire), waiting at most `timeout` ([`Error::Timeout`] after it).
    pub fn acquire_timeout(&mut self, timeout: Duration) -> Result<WriteFrame<'_>> {
        let deadline = Instant::now() + timeout;
        let mut waited = false;
        let mut rounds = 0u32;
        loop {
            if let Some(slot) = self.find_free()? {
                return Ok(self.writing(slot));
            }
            if !waited {
                waited = true;
                self.stats.full_waits += 1;
            }
            // A release due within microseconds is taken without sleeping (`find_free` looks).
            rounds += 1;
            if rounds < YIELDS {
                std::thread::yield_now();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    action: format!(
                        "waiting for a free frame of the channel at {} (all {} in flight, {} consumers)",
                        self.path.display(),
                        self.slots.len(),
                        self.consumers()
                    ),
                    timeout,
                });
            }
            self.pump(Some(deadline - now))?;
        }
    }

    /// A free frame to write now, or [`Error::Full`] while every slot is in flight (under
    /// drop-oldest, only while consumers hold every frame).
    pub fn try_acquire(&mut self) -> Result<WriteFrame<'_>> {
        match self.find_free()? {
            Some(slot) => Ok(self.writing(slot)),
            None => Err(Error::Full {
                what: format!("a frame of the channel at {}", self.path.display()),
                in_flight: self.slots.len() as u32,
                advice: "wait for consumers to release frames (acquire blocks until one does), or use the drop-oldest \
                         policy"
                    .into(),
            }),
        }
    }

    /// Turns a frame [detached](WriteFrame::detach) from this producer back into a
    /// [`WriteFrame`]. A frame detached from another producer is refused (and stays detached:
    /// it is handed back in the error's place, so its slot is not lost).
    pub fn attach(&mut self, frame: DetachedWriteFrame) -> std::result::Result<WriteFrame<'_>, DetachedWriteFrame> {
        if frame.producer != self.id || self.slots.get(frame.slot).map(|s| s.state) != Some(SlotState::Writing) {
            return Err(frame);
        }
        Ok(WriteFrame { producer: self, slot: frame.slot, sent: false })
    }

    fn writing(&mut self, slot: usize) -> WriteFrame<'_> {
        self.slots[slot].state = SlotState::Writing;
        // Its bytes are about to change: it no longer holds the newest frame for a late consumer
        // (even if this frame is never sent).
        self.slots[slot].message = None;
        if self.newest == Some(slot) {
            self.newest = None;
        }
        WriteFrame { producer: self, slot, sent: false }
    }

    fn find_free(&mut self) -> Result<Option<usize>> {
        self.pump(Some(Duration::ZERO))?;
        let n = self.slots.len();
        for i in 0..n {
            let s = (self.next_slot + i) % n;
            if self.slots[s].state == SlotState::Free {
                self.next_slot = (s + 1) % n;
                return Ok(Some(s));
            }
        }
        if self.options.policy == Policy::DropOldest {
            return Ok(self.take_back_oldest());
        }
        Ok(None)
    }

    /// Drop-oldest: the in-flight frame with the lowest sequence number that no consumer has
    /// taken, revoked from every consumer it was sent to.
    fn take_back_oldest(&mut self) -> Option<usize> {
        let mut order: Vec<usize> =
            (0..self.slots.len()).filter(|&s| self.slots[s].state == SlotState::InFlight).collect();
        order.sort_by_key(|&s| self.slots[s].sequence);
        for s in order {
            let sequence = self.slots[s].sequence;
            let holders = self.slots[s].holders;
            // Revocable only if no holder has taken it.
            let claims: Vec<(usize, &AtomicU64)> = (0..self.peers.len())
                .filter(|c| holders & (1 << c) != 0)
                .filter_map(|c| {
                    let peer = self.peers[c].as_ref()?;
                    Some((c, shm::atomic_u64(&peer.claims, s * 8).ok()?))
                })
                .collect();
            if claims.iter().any(|(_, w)| w.load(Ordering::Acquire) != queued(sequence)) {
                continue;
            }
            let mut revoked = 0u64;
            for (c, w) in claims {
                // The consumer takes a frame with the same compare-exchange (queued -> taken), so
                // exactly one of the two wins.
                if w.compare_exchange(queued(sequence), 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    revoked |= 1 << c;
                }
            }
            self.stats.dropped += u64::from(revoked.count_ones());
            self.slots[s].holders &= !revoked;
            if self.slots[s].holders == 0 {
                self.slots[s].state = SlotState::Free;
                self.slots[s].message = None;
                if self.newest == Some(s) {
                    self.newest = None;
                }
                return Some(s);
            }
        }
        None
    }

    fn send_frame(&mut self, slot: usize, metadata: Metadata) -> Result<()> {
        let frame_size = self.options.frame_size;
        let metadata = Metadata { len: if metadata.len == 0 { frame_size } else { metadata.len }, ..metadata };
        if let Err(reason) = metadata.check(frame_size) {
            self.slots[slot].state = SlotState::Free;
            return Err(Error::invalid("frame metadata", reason, "keep metadata within the channel's limits"));
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let message = FrameMessage { slot: slot as u32, sequence, timeline: sequence + 1, sent_ns: 0, metadata };
        let signalled = match &self.filled {
            // The frame's bytes are written (the host copies above this call, or GPU work the
            // caller waited for): consumers waiting for this value may read them.
            Some(filled) => filled.signal(sequence + 1),
            None => Ok(()),
        };
        // The frame's bytes (host stores, atomic or volatile) are ordered before the messages
        // that announce it; the consumer fences after receiving one.
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Err(e) = signalled.and_then(|()| self.pump(Some(Duration::ZERO))) {
            // Not sent: the slot goes back to the pool (its sequence number stays used, so the
            // timeline values keep growing).
            self.slots[slot].state = SlotState::Free;
            return Err(e);
        }
        let s = &mut self.slots[slot];
        s.state = SlotState::InFlight;
        s.sequence = sequence;
        s.holders = 0;
        s.message = Some(message);
        self.newest = Some(slot);
        for c in 0..self.peers.len() {
            if self.peers[c].is_some() {
                self.deliver(c, slot)?;
            }
        }
        self.stats.frames_sent += 1;
        // A frame nobody got is free again at once; it stays the newest for a late consumer
        // only until the slot is needed (`find_free` may hand it out).
        if self.slots[slot].holders == 0 {
            self.slots[slot].state = SlotState::Free;
        }
        Ok(())
    }

    fn free(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.state = SlotState::Free;
        s.holders = 0;
    }

    /// Sends slot `slot`'s frame to consumer `c`.
    fn deliver(&mut self, c: usize, slot: usize) -> Result<()> {
        let Some(message) = self.slots[slot].message.clone() else { return Ok(()) };
        let sequence = message.sequence;
        let bytes = encode(&ChannelMessage::Frame(FrameMessage { sent_ns: now_ns(), ..message }))?;
        let Some(peer) = self.peers[c].as_ref() else { return Ok(()) };
        shm::atomic_u64(&peer.claims, slot * 8)?.store(queued(sequence), Ordering::Release);
        let sent = match send_nonblocking(peer.sock.as_fd(), &bytes) {
            Ok(true) => true,
            Ok(false) if self.options.policy == Policy::Block => {
                // Under the block policy a consumer has at most `slots` frames queued, so a full
                // socket means it stopped reading: give it the timeout, then let it go.
                poll_one(peer.sock.as_fd(), true, Some(self.options.timeout))?;
                send_nonblocking(peer.sock.as_fd(), &bytes).unwrap_or(false)
            }
            Ok(false) => false,
            Err(_) => {
                self.lose(c, false);
                return Ok(());
            }
        };
        if sent {
            self.slots[slot].holders |= 1 << c;
            self.stats.deliveries += 1;
        } else if self.options.policy == Policy::DropOldest {
            self.stats.dropped += 1;
        } else {
            // It stopped reading for `timeout`: let it go, as if it had hung up.
            self.lose(c, false);
        }
        Ok(())
    }

    /// Forgets consumer `c` (hung up, died, or broke the protocol): every slot it held is
    /// released on its behalf.
    fn lose(&mut self, c: usize, broken: bool) {
        let Some(peer) = self.peers[c].take() else { return };
        let bit = 1u64 << c;
        for s in 0..self.slots.len() {
            if self.slots[s].holders & bit != 0 {
                self.slots[s].holders &= !bit;
                if self.slots[s].holders == 0 && self.slots[s].state == SlotState::InFlight {
                    self.free(s);
                }
            }
        }
        if broken {
            self.stats.consumers_broken += 1;
        } else {
            self.stats.consumers_lost += 1;
        }
        drop(peer);
    }

    /// Handles pending events, waiting up to `timeout` for the first (`Some(ZERO)`: none).
    fn pump(&mut self, timeout: Option<Duration>) -> Result<()> {
        let ready = {
            let mut fds = Vec::with_capacity(1 + self.peers.len());
            fds.push(PollFd::new(&self.listener, PollFlags::IN));
            let mut which = Vec::new();
            for (c, p) in self.peers.iter().enumerate() {
                if let Some(p) = p {
                    fds.push(PollFd::new(&p.sock, PollFlags::IN));
                    which.push(c);
                }
            }
            poll(&mut fds, timeout)?;
            let listener_ready = !fds[0].revents().is_empty();
            let peers: Vec<usize> =
                which.iter().zip(&fds[1..]).filter(|(_, f)| !f.revents().is_empty()).map(|(c, _)| *c).collect();
            (listener_ready, peers)
        };
        for c in ready.1 {
            self.read_peer(c);
        }
        if ready.0 {
            self.accept_all();
        }
        Ok(())
    }

    fn read_peer(&mut self, c: usize) {
        loop {
            let Some(peer) = self.peers[c].as_ref() else { return };
            let bytes = match recv_nonblocking(peer.sock.as_fd()) {
                Ok(Incoming::Message(b)) => b,
                Ok(Incoming::Nothing) => return,
                Ok(Incoming::HungUp) | Err(_) => return self.lose(c, false),
            };
            match wire::decode(&bytes, self.slots.len() as u32) {
                Ok(ChannelMessage::Release { slot, sequence }) => {
                    let s = &mut self.slots[slot as usize];
                    let bit = 1u64 << c;
                    if s.state != SlotState::InFlight || s.sequence != sequence || s.holders & bit == 0 {
                        let text = format!(
                            "RELEASE of frame {sequence} in slot {slot}, which this consumer does not hold (the slot \
                             holds frame {})",
                            s.sequence
                        );
                        return self.refuse_peer(c, &text);
                    }
                    if let Ok(w) = shm::atomic_u64(&peer.claims, slot as usize * 8) {
                        w.store(0, Ordering::Release);
                    }
                    s.holders &= !bit;
                    if s.holders == 0 {
                        self.free(slot as usize);
                    }
                }
                Ok(other) => {
                    let text = format!("a consumer may send RELEASE only, not {other:?}");
                    return self.refuse_peer(c, &text);
                }
                Err(e) => return self.refuse_peer(c, &e.to_string()),
            }
        }
    }

    /// Tells consumer `c` what it did wrong and disconnects it.
    fn refuse_peer(&mut self, c: usize, text: &str) {
        if let Some(peer) = &self.peers[c] {
            if let Ok(bytes) = encode(&ChannelMessage::Error { text: text.to_owned() }) {
                let _ = send_nonblocking(peer.sock.as_fd(), &bytes);
            }
        }
        self.lose(c, true);
    }

    fn accept_all(&mut self) {
        loop {
            let conn = match rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
                Ok(c) => c,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
                Err(_) => return,
            };
            self.admit(conn);
        }
    }

    fn admit(&mut self, conn: OwnedFd) {
        let refuse = |conn: &OwnedFd, text: String| {
            if let Ok(bytes) = encode(&ChannelMessage::Error { text }) {
                let _ = send_nonblocking(conn.as_fd(), &bytes);
            }
        };
        let cred = match rustix::net::sockopt::socket_peercred(&conn) {
            Ok(cred) => cred,
            Err(e) => {
                refuse(&conn, format!("SO_PEERCRED failed: {e}"));
                self.stats.consumers_refused += 1;
                return;
            }
        };
        let uid = cred.uid.as_raw();
        if uid != self.euid && !self.options.allow_uids.contains(&uid) {
            refuse(&conn, format!("uid {uid} may not consume this channel (the producer runs as uid {})", self.euid));
            self.stats.consumers_refused += 1;
            return;
        }
        let Some(c) = self.peers.iter().position(|p| p.is_none()) else {
            refuse(&conn, format!("the channel serves at most {} consumers", self.peers.len()));
            self.stats.consumers_refused += 1;
            return;
        };
        match self.handshake(&conn, c) {
            Ok(claims) => {
                self.peers[c] = Some(Peer { sock: conn, claims, pid: cred.pid.as_raw_nonzero().get() });
                self.stats.consumers_joined += 1;
                // A consumer joining late starts at the newest frame, if it is still in the pool.
                if let Some(s) = self.newest {
                    if self.slots[s].message.is_some() && self.slots[s].state != SlotState::Writing {
                        let was_free = self.slots[s].state == SlotState::Free;
                        self.slots[s].state = SlotState::InFlight;
                        let _ = self.deliver(c, s);
                        if was_free && self.slots[s].holders == 0 {
                            self.slots[s].state = SlotState::Free;
                        }
                    }
                }
            }
            Err(e) => {
                refuse(&conn, format!("the producer could not share its pool: {e}"));
                self.stats.consumers_refused += 1;
            }
        }
    }

    fn handshake(&self, conn: &OwnedFd, c: usize) -> Result<SharedHostMemory> {
        let claims = shm::create(self.slots.len() * 8)?;
        let hello = Hello {
            slots: self.slots.len() as u32,
            consumer: c as u32,
            frame_size: self.options.frame_size,
            memory: match self.options.memory {
                FrameMemory::Host => MemoryCode::Host,
                FrameMemory::Vulkan(_) => MemoryCode::Vulkan,
            },
            sync: if self.filled.is_some() { SyncCode::Timeline } else { SyncCode::Messages },
            next_sequence: self.next_sequence,
        };
        let mut objects = Vec::with_capacity(self.blocks.len() + 2);
        for (i, b) in self.blocks.iter().enumerate() {
            objects.push(NamedObject::new(slot_name(i as u32), b.export()?));
        }
        objects.push(NamedObject::new(CLAIMS_NAME, shm::export(&claims)?));
        if let Some(filled) = &self.filled {
            objects.push(NamedObject::new(FILLED_NAME, filled.export()?));
        }
        // The handshake is sent blocking (with the timeout): it is the one large message.
        socket::set_timeouts(conn.as_fd(), None, Some(self.options.timeout))?;
        rustix::io::ioctl_fionbio(conn, false).map_err(|e| Error::io("setting a channel socket blocking", e.into()))?;
        socket::send_with_fds(conn.as_fd(), &encode(&ChannelMessage::Hello(hello))?, &[])?;
        let descriptions = objects.iter().map(NamedObject::named_description).collect();
        let fds: Vec<BorrowedFd<'_>> = objects.iter().map(|o| o.object.fd()).collect();
        socket::send_with_fds(conn.as_fd(), &ipc_wire::encode(&ipc_wire::Message::Objects(descriptions))?, &fds)?;
        rustix::io::ioctl_fionbio(conn, true)
            .map_err(|e| Error::io("setting a channel socket non-blocking", e.into()))?;
        Ok(claims)
    }

    /// The pids of the consumers connected now (from `SO_PEERCRED`).
    pub fn consumer_pids(&self) -> Vec<i32> {
        self.peers.iter().flatten().map(|p| p.pid).collect()
    }

    /// Ends the channel: waits up to `timeout` for consumers to release what they hold, then
    /// sends `END` to every consumer and closes the socket. Returns the final counters.
    pub fn finish(mut self, timeout: Duration) -> Result<ProducerStats> {
        self.drain(timeout)?;
        Ok(self.stats)
    }

    fn end(&mut self) {
        // Read what consumers sent first (releases): a Unix socket closed with unread data resets
        // the connection, and a consumer would see a hang-up instead of the clean end.
        let _ = self.pump(Some(Duration::ZERO));
        if let Ok(bytes) = encode(&ChannelMessage::End { frames: self.next_sequence }) {
            for peer in self.peers.iter().flatten() {
                if !matches!(send_nonblocking(peer.sock.as_fd(), &bytes), Ok(true)) {
                    let _ = poll_one(peer.sock.as_fd(), true, Some(Duration::from_millis(100)));
                    let _ = send_nonblocking(peer.sock.as_fd(), &bytes);
                }
            }
        }
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.end();
    }
}

/// A frame the producer is writing. [`send`](Self::send) hands it to the consumers and gives
/// up access to it; dropping it unsent returns the slot to the pool.
pub struct WriteFrame<'a> {
    producer: &'a mut Producer,
    slot: usize,
    sent: bool,
}

impl WriteFrame<'_> {
    /// The slot index.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Bytes in the frame.
    pub fn capacity(&self) -> u64 {
        self.producer.options.frame_size
    }

    /// The sequence number this frame will carry when sent.
    pub fn sequence(&self) -> u64 {
        self.producer.next_sequence
    }

    /// Copies `data` into the frame at `offset` (volatile stores into shared memory, or a staging
    /// copy where the memory is not host-visible). No consumer reads the slot until `send`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        check_frame_range(offset, data.len(), self.producer.options.frame_size, "writing")?;
        self.producer.blocks[self.slot].write(offset, data)
    }

    /// The frame's Vulkan buffer, for GPU work that fills it (Vulkan frames). Wait for that
    /// work to finish before `send`: consumers read once the frame is sent.
    pub fn buffer(&mut self) -> Option<&mut Buffer> {
        match &mut self.producer.blocks[self.slot] {
            Block::Vulkan(b) => Some(b),
            Block::Host(_) => None,
        }
    }

    /// The frame's shared host memory (host frames).
    pub fn host_memory(&mut self) -> Option<&mut SharedHostMemory> {
        match &mut self.producer.blocks[self.slot] {
            Block::Host(m) => Some(m),
            Block::Vulkan(_) => None,
        }
    }

    /// Sends the frame to every connected consumer. Metadata beyond the limits is an error (and
    /// the frame returns to the pool unsent).
    pub fn send(mut self, metadata: Metadata) -> Result<()> {
        self.sent = true;
        self.producer.send_frame(self.slot, metadata)
    }

    /// Ends the borrow of the producer and keeps the slot reserved, for bindings whose frames
    /// outlive one call (the C API's `LavaFlowWriteFrame`). [`Producer::attach`] makes it a
    /// frame again; a detached frame that is never attached keeps its slot until the producer
    /// is dropped.
    pub fn detach(mut self) -> DetachedWriteFrame {
        self.sent = true;
        DetachedWriteFrame { producer: self.producer.id, slot: self.slot }
    }
}

/// A [`WriteFrame`] without its borrow of the producer ([`WriteFrame::detach`]): the slot stays
/// reserved for it until [`Producer::attach`] turns it back into a frame.
#[derive(Debug)]
#[must_use = "a detached frame keeps its slot until it is attached back and sent or dropped"]
pub struct DetachedWriteFrame {
    producer: u64,
    slot: usize,
}

impl DetachedWriteFrame {
    /// The slot index.
    pub fn slot(&self) -> usize {
        self.slot
    }
}

impl Drop for WriteFrame<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.producer.slots[self.slot].state = SlotState::Free;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Consumer

/// How a consumer's stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ended {
    Clean(u64),
    HungUp,
    Refused(String),
    Broken(String),
}

/// What a consumer saw so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerStats {
    /// Frames received.
    pub frames: u64,
    /// Frames the producer took back before this consumer took them (drop-oldest), and frames
    /// sent while this consumer was not connected or its socket was full (sequence gaps).
    pub dropped: u64,
    /// Memory imports this consumer made: one per slot into Vulkan (Vulkan frames) and one per
    /// slot into each view API, all at connect. Receiving frames imports nothing.
    pub imports: u64,
}

/// The consuming end. Frames it hands out borrow it, so it outlives them.
pub struct Consumer {
    id: u64,
    sock: OwnedFd,
    hello: Hello,
    blocks: Vec<Block>,
    /// Each slot's objects in the view APIs (`ChannelOptions::views`), imported at connect.
    #[cfg_attr(not(any(feature = "gl", feature = "cuda", feature = "opencl")), allow(dead_code))]
    views: Vec<SlotViews>,
    claims: SharedHostMemory,
    filled: Option<Semaphore>,
    timeout: Duration,
    last: Cell<Option<u64>>,
    ended: RefCell<Option<Ended>>,
    stats: Cell<ConsumerStats>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("hello", &self.hello).finish()
    }
}

impl Consumer {
    fn connect(path: &Path, options: ChannelOptions) -> Result<Consumer> {
        let deadline = Instant::now() + options.timeout;
        let sock = loop {
            match socket::connect_seqpacket(path) {
                Ok(s) => break s,
                Err(e) => {
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        socket::set_timeouts(sock.as_fd(), Some(options.timeout), Some(options.timeout))?;
        let first = socket::recv_datagram(sock.as_fd(), wire::MAX_MESSAGE_LEN + 1)?
            .ok_or_else(|| protocol(format!("the producer at {} closed the connection at once", path.display())))?;
        let hello = match wire::decode(&first.bytes, u32::MAX) {
            Ok(ChannelMessage::Hello(h)) => h,
            Ok(ChannelMessage::Error { text }) => {
                return Err(Error::PeerRefused {
                    reason: format!("the producer at {} refused this consumer: {text}", path.display()),
                    advice: "see the reason; the producer decides who consumes".into(),
                })
            }
            Ok(other) => return Err(protocol(format!("the producer's first message is {other:?}, not HELLO"))),
            Err(e) => return Err(protocol(format!("{e} (the first message from {})", path.display()))),
        };
        let objects = socket::recv_datagram(sock.as_fd(), ipc_wire::MAX_MESSAGE_LEN)?
            .ok_or_else(|| protocol("the producer closed the connection before sharing its pool"))?;
        if objects.truncated || objects.fds_truncated {
            return Err(protocol("the producer's pool message exceeds the protocol's limits"));
        }
        let descriptions = match ipc_wire::decode(&objects.bytes, objects.fds.len())? {
            ipc_wire::Message::Objects(d) => d,
            other => return Err(protocol(format!("the producer sent {other:?} where its pool's OBJECTS belong"))),
        };
        if descriptions.len() != objects.fds.len() {
            return Err(protocol(format!("{} objects arrived with {} fds", descriptions.len(), objects.fds.len())));
        }
        let mut shared: Vec<(String, SharedObject)> = descriptions
            .into_iter()
            .zip(objects.fds)
            .map(|(d, fd)| (d.name, SharedObject::from_parts(d.description, fd)))
            .collect();
        let mut take = |name: &str| -> Result<SharedObject> {
            let i = shared
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| protocol(format!("the producer's pool has no object named {name}")))?;
            Ok(shared.swap_remove(i).1)
        };
        let mut ctx = options.context.clone();
        let mut blocks = Vec::with_capacity(hello.slots as usize);
        let mut views = Vec::with_capacity(hello.slots as usize);
        let mut contexts = ViewContexts::default();
        let mut imports = 0u64;
        if hello.memory == MemoryCode::Host && !options.views.apis().is_empty() {
            return Err(Error::unsupported(
                format!("viewing a channel's frames in {:?}", options.views.apis()),
                "the producer's frames are host memory (memfds), which GL, CUDA and OpenCL do not import",
                "lava-flow channels: views need FrameMemory::Vulkan",
                "give the producer FrameMemory::Vulkan (`--api vulkan`), or read host frames with read_into",
            ));
        }
        for i in 0..hello.slots {
            let object = take(&slot_name(i))?;
            let block = match hello.memory {
                MemoryCode::Host => {
                    let memory = raw_gpu_handle::ExportedMemory::try_from(object)
                        .map_err(|e| protocol(format!("slot {i} is a {}, not host memory", e.object.kind_name())))?;
                    if memory.description.allocation_size < hello.frame_size {
                        return Err(protocol(format!(
                            "slot {i} holds {} bytes, fewer than the {}-byte frames",
                            memory.description.allocation_size, hello.frame_size
                        )));
                    }
                    Block::Host(shm::map_exported(memory)?)
                }
                MemoryCode::Vulkan => {
                    let buffer = ExportedBuffer::try_from(object)
                        .map_err(|e| protocol(format!("slot {i} is a {}, not a buffer", e.object.kind_name())))?;
                    if buffer.size() < hello.frame_size {
                        return Err(protocol(format!(
                            "slot {i} is a {}-byte buffer, smaller than the {}-byte frames",
                            buffer.size(),
                            hello.frame_size
                        )));
                    }
                    // The views first, each from a copy of the fd; Vulkan's import then consumes
                    // the one that came with the handshake.
                    let (slot_views, n) = import_views(&options.views, &mut contexts, &buffer, i)?;
                    views.push(slot_views);
                    imports += n;
                    if ctx.is_none() {
                        ctx = Some(VulkanContext::with_uuid(buffer.device().device_uuid)?);
                    }
                    imports += 1;
                    Block::Vulkan(Buffer::import(ctx.as_ref().expect("opened above"), buffer)?)
                }
            };
            blocks.push(block);
        }
        let claims = raw_gpu_handle::ExportedMemory::try_from(take(CLAIMS_NAME)?)
            .map_err(|e| protocol(format!("{CLAIMS_NAME} is a {}, not memory", e.object.kind_name())))?;
        if claims.description.allocation_size < u64::from(hello.slots) * 8 {
            return Err(protocol(format!("{CLAIMS_NAME} is smaller than one word per slot")));
        }
        let claims = shm::map_exported(claims)?;
        let filled = match hello.sync {
            SyncCode::Messages => None,
            SyncCode::Timeline => {
                let semaphore = ExportedSemaphore::try_from(take(FILLED_NAME)?)
                    .map_err(|e| protocol(format!("{FILLED_NAME} is a {}, not a semaphore", e.object.kind_name())))?;
                if semaphore.description.kind != SemaphoreKind::Timeline {
                    return Err(protocol(format!("{FILLED_NAME} is not a timeline semaphore")));
                }
                if ctx.is_none() {
                    ctx = Some(VulkanContext::with_uuid(semaphore.description.device.device_uuid)?);
                }
                Some(Semaphore::import(ctx.as_ref().expect("opened above"), semaphore)?)
            }
        };
        // Frames are waited for with poll; only RELEASE sends may block (up to the timeout).
        socket::set_timeouts(sock.as_fd(), None, Some(options.timeout))?;
        if views.is_empty() {
            views.resize_with(blocks.len(), SlotViews::default);
        }
        Ok(Consumer {
            id: NEXT_END.fetch_add(1, Ordering::Relaxed),
            sock,
            hello,
            blocks,
            views,
            claims,
            filled,
            timeout: options.timeout,
            last: Cell::new(None),
            ended: RefCell::new(None),
            stats: Cell::new(ConsumerStats { imports, ..ConsumerStats::default() }),
        })
    }

    /// Frames in the producer's pool.
    pub fn slots(&self) -> u32 {
        self.hello.slots
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> u64 {
        self.hello.frame_size
    }

    /// Whether frames are Vulkan buffers (else shared host memory).
    pub fn is_vulkan(&self) -> bool {
        self.hello.memory == MemoryCode::Vulkan
    }

    /// Whether frames carry the `channel.filled` timeline semaphore.
    pub fn uses_timeline(&self) -> bool {
        self.filled.is_some()
    }

    /// Counters of what was received so far.
    pub fn stats(&self) -> ConsumerStats {
        self.stats.get()
    }

    /// Turns a frame [detached](ReadFrame::detach) from this consumer back into a
    /// [`ReadFrame`]. A frame detached from another consumer is refused and handed back.
    pub fn attach(&self, frame: DetachedReadFrame) -> std::result::Result<ReadFrame<'_>, DetachedReadFrame> {
        if frame.consumer != self.id {
            return Err(frame);
        }
        Ok(ReadFrame {
            consumer: self,
            message: *frame.message,
            received_ns: frame.received_ns,
            waited: frame.waited,
            detached: false,
        })
    }

    /// The next frame, waiting up to the options' timeout. After the last frame: an
    /// [`Error::Closed`] (clean after the producer's `END`, not clean where it hung up
    /// without one: exited or was killed).
    pub fn recv(&self) -> Result<ReadFrame<'_>> {
        self.recv_timeout(self.timeout)
    }

    /// The next frame, waiting up to `timeout` ([`Error::Timeout`] after it).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<ReadFrame<'_>> {
        match self.next(Some(timeout))? {
            Some(frame) => Ok(frame),
            None => Err(Error::Timeout { action: "waiting for the next frame of the channel".into(), timeout }),
        }
    }

    /// The next frame if one is ready, without waiting.
    pub fn try_recv(&self) -> Result<Option<ReadFrame<'_>>> {
        self.next(None)
    }

    fn closed(&self, ended: &Ended) -> Error {
        let (reason, clean) = match ended {
            Ended::Clean(frames) => (format!("the producer ended the channel after {frames} frames"), true),
            Ended::HungUp => (
                "the producer hung up without ending the channel (it exited or was killed); every frame it sent \
                 was delivered"
                    .to_string(),
                false,
            ),
            Ended::Refused(text) => (format!("the producer disconnected this consumer: {text}"), false),
            Ended::Broken(text) => (format!("the producer broke the channel protocol: {text}"), false),
        };
        Error::Closed { what: "the channel's consumer".into(), reason, clean }
    }

    fn end_with(&self, ended: Ended) -> Error {
        let e = self.closed(&ended);
        if let Ended::Broken(text) = &ended {
            if let Ok(bytes) = encode(&ChannelMessage::Error { text: text.clone() }) {
                let _ = send_nonblocking(self.sock.as_fd(), &bytes);
            }
        }
        *self.ended.borrow_mut() = Some(ended);
        e
    }

    /// `wait`: `None` does not wait; `Some(t)` waits up to `t` and returns `Ok(None)` after it.
    fn next(&self, wait: Option<Duration>) -> Result<Option<ReadFrame<'_>>> {
        let deadline = wait.map(|t| Instant::now() + t);
        let mut waited = false;
        let mut spins = 0u32;
        loop {
            if let Some(ended) = &*self.ended.borrow() {
                return Err(self.closed(ended));
            }
            let bytes = match recv_nonblocking(self.sock.as_fd())? {
                Incoming::Message(b) => b,
                Incoming::HungUp => return Err(self.end_with(Ended::HungUp)),
                Incoming::Nothing => {
                    let Some(deadline) = deadline else { return Ok(None) };
                    waited = true;
                    // As the ring's host counters: a short spin, then a few yields, then sleep
                    // in poll. A frame due within microseconds is taken without a wake-up.
                    spins += 1;
                    if spins < SPINS {
                        std::hint::spin_loop();
                        continue;
                    }
                    if spins < SPINS + YIELDS {
                        std::thread::yield_now();
                        continue;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    poll_one(self.sock.as_fd(), false, Some(deadline - now))?;
                    continue;
                }
            };
            let frame = match wire::decode(&bytes, self.hello.slots) {
                Ok(ChannelMessage::Frame(f)) => f,
                Ok(ChannelMessage::End { frames }) => return Err(self.end_with(Ended::Clean(frames))),
                Ok(ChannelMessage::Error { text }) => return Err(self.end_with(Ended::Refused(text))),
                Ok(other) => return Err(self.end_with(Ended::Broken(format!("a producer may not send {other:?}")))),
                Err(e) => return Err(self.end_with(Ended::Broken(e.to_string()))),
            };
            if let Some(last) = self.last.get() {
                if frame.sequence <= last {
                    return Err(self.end_with(Ended::Broken(format!(
                        "frame {} arrived after frame {last}: sequence numbers must increase",
                        frame.sequence
                    ))));
                }
            }
            if let Err(reason) = frame.metadata.check(self.hello.frame_size) {
                return Err(self.end_with(Ended::Broken(format!("frame {}: {reason}", frame.sequence))));
            }
            // Frames sent before this consumer's first one are not its losses.
            let gap = self.last.get().map_or(0, |l| frame.sequence - l - 1);
            self.last.set(Some(frame.sequence));
            let claim = shm::atomic_u64(&self.claims, frame.slot as usize * 8)?;
            let mut stats = self.stats.get();
            stats.dropped += gap;
            // The producer takes an untaken frame back with the same compare-exchange: one wins.
            if claim
                .compare_exchange(
                    queued(frame.sequence),
                    queued(frame.sequence) | 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                stats.dropped += 1;
                self.stats.set(stats);
                continue;
            }
            stats.frames += 1;
            self.stats.set(stats);
            // Pairs with the producer's fence before it sent the message.
            std::sync::atomic::fence(Ordering::SeqCst);
            let frame = ReadFrame { consumer: self, message: frame, received_ns: now_ns(), waited, detached: false };
            if let Some(filled) = &self.filled {
                filled.wait(frame.message.timeline, self.timeout)?;
            }
            return Ok(Some(frame));
        }
    }
}

/// A frame the consumer holds: the producer does not reuse its slot until it is dropped.
pub struct ReadFrame<'a> {
    consumer: &'a Consumer,
    message: FrameMessage,
    received_ns: u64,
    waited: bool,
    detached: bool,
}

impl std::fmt::Debug for ReadFrame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFrame")
            .field("slot", &self.message.slot)
            .field("sequence", &self.message.sequence)
            .field("metadata", &self.message.metadata)
            .finish()
    }
}

impl ReadFrame<'_> {
    /// The frame's sequence number (consecutive unless frames were dropped).
    pub fn sequence(&self) -> u64 {
        self.message.sequence
    }

    /// The slot it lies in.
    pub fn slot(&self) -> u32 {
        self.message.slot
    }

    /// What the producer said about it.
    pub fn metadata(&self) -> &Metadata {
        &self.message.metadata
    }

    /// Bytes of data (the metadata's `len`).
    pub fn len(&self) -> u64 {
        self.message.metadata.len
    }

    /// Whether the frame holds no data.
    pub fn is_empty(&self) -> bool {
        self.message.metadata.len == 0
    }

    /// Nanoseconds from the producer sending the frame to this consumer taking it
    /// (`CLOCK_MONOTONIC` on both sides).
    pub fn handoff_ns(&self) -> u64 {
        self.received_ns.saturating_sub(self.message.sent_ns)
    }

    /// Whether the consumer was already waiting when the frame came (so [`handoff_ns`]
    /// measures the hand-off itself, wake-up included, without queueing behind earlier frames).
    ///
    /// [`handoff_ns`]: Self::handoff_ns
    pub fn waited(&self) -> bool {
        self.waited
    }

    /// Copies `out.len()` bytes at `offset` out of the frame (volatile loads from shared memory,
    /// or a staging copy where the memory is not host-visible).
    pub fn read_into(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        check_frame_range(offset, out.len(), self.consumer.frame_size(), "reading")?;
        self.consumer.blocks[self.message.slot as usize].read_into(offset, out)
    }

    /// The frame's imported Vulkan buffer (Vulkan frames), for GPU work that reads it.
    pub fn buffer(&self) -> Option<&Buffer> {
        match &self.consumer.blocks[self.message.slot as usize] {
            Block::Vulkan(b) => Some(b),
            Block::Host(_) => None,
        }
    }

    /// The frame's shared host memory (host frames).
    pub fn host_memory(&self) -> Option<&SharedHostMemory> {
        match &self.consumer.blocks[self.message.slot as usize] {
            Block::Host(m) => Some(m),
            Block::Vulkan(_) => None,
        }
    }

    /// The frame's slot as a GL buffer (`ChannelOptions::views.gl`), imported once at connect
    /// and valid while the frame is held. The consumer has waited for the frame on the host, so
    /// GL commands issued now see its bytes; GL must be done reading (`GlContext::finish`, or a
    /// read that returns the bytes) before the frame is dropped, as the producer may then
    /// rewrite the slot.
    #[cfg(feature = "gl")]
    pub fn gl_buffer(&self) -> Option<&GlBuffer> {
        self.consumer.views[self.message.slot as usize].gl.as_ref()
    }

    /// The frame's slot as a CUDA buffer (`ChannelOptions::views.cuda`), imported once at
    /// connect and valid while the frame is held. Work on other streams than the device's own
    /// must be synchronized before the frame is dropped.
    #[cfg(feature = "cuda")]
    pub fn cuda_buffer(&self) -> Option<&CudaBuffer<u8>> {
        self.consumer.views[self.message.slot as usize].cuda.as_ref()
    }

    /// The frame's slot as an OpenCL buffer (`ChannelOptions::views.opencl`), imported once at
    /// connect and valid while the frame is held; finish the queue's work on it before the
    /// frame is dropped.
    #[cfg(feature = "opencl")]
    pub fn opencl_buffer(&self) -> Option<&ClBuffer> {
        self.consumer.views[self.message.slot as usize].opencl.as_ref()
    }

    /// The `channel.filled` semaphore and the value that says this frame is written (timeline
    /// channels), for a device-side wait before GPU work reads the frame.
    pub fn filled(&self) -> Option<(&Semaphore, u64)> {
        self.consumer.filled.as_ref().map(|s| (s, self.message.timeline))
    }

    /// Ends the borrow of the consumer without releasing the frame, for bindings whose frames
    /// outlive one call (the C API's `LavaFlowReadFrame`). [`Consumer::attach`] makes it a frame
    /// again (dropping that releases it); a detached frame that is never attached is not
    /// released: the producer gets its slot back only when this consumer disconnects.
    pub fn detach(mut self) -> DetachedReadFrame {
        self.detached = true;
        let empty = FrameMessage { slot: 0, sequence: 0, timeline: 0, sent_ns: 0, metadata: Metadata::default() };
        DetachedReadFrame {
            consumer: self.consumer.id,
            message: Box::new(std::mem::replace(&mut self.message, empty)),
            received_ns: self.received_ns,
            waited: self.waited,
        }
    }
}

/// A [`ReadFrame`] without its borrow of the consumer ([`ReadFrame::detach`]): still held (the
/// producer does not reuse its slot) until [`Consumer::attach`] turns it back into a frame and
/// that is dropped.
#[derive(Debug)]
#[must_use = "a detached frame is released only by attaching it back and dropping the frame"]
pub struct DetachedReadFrame {
    consumer: u64,
    message: Box<FrameMessage>,
    received_ns: u64,
    waited: bool,
}

impl DetachedReadFrame {
    /// The frame's sequence number.
    pub fn sequence(&self) -> u64 {
        self.message.sequence
    }

    /// What the producer said about it.
    pub fn metadata(&self) -> &Metadata {
        &self.message.metadata
    }
}

impl Drop for ReadFrame<'_> {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        let message = ChannelMessage::Release { slot: self.message.slot, sequence: self.message.sequence };
        if let Ok(bytes) = encode(&message) {
            // Blocking up to the send timeout; a producer that is gone needs no release.
            let _ = rustix::net::send(self.consumer.sock.as_fd(), &bytes, SendFlags::NOSIGNAL);
        }
    }
}
