//! Channel ends (docs/CHANNELS.md): a producer that writes frames into its pool of shared memory
//! and sends them, and consumers that receive, read and release them.
//!
//! Lifetimes. A frame handle (`LavaFlowWriteFrame`, `LavaFlowReadFrame`) borrows a slot of its
//! end's pool: the end is not destroyed while any of its frames is live. Destroying (or finishing)
//! an end with live frames is refused with `LAVA_FLOW_ERROR_INVALID_ARGUMENT`, and the end stays
//! valid: send or discard every write frame, release every read frame, then destroy the end. (Each
//! frame also holds a reference to its end's object, so a frame call racing with the end's
//! destroy on another thread finds the end still there, never a freed one.)
//!
//! Frame bytes are shared memory other processes write: C gets copies only
//! (`lava_flow_write_frame_write`, `lava_flow_read_frame_read`), never a pointer into a frame.
//!
//! Threads. Each end is one object behind a lock: its calls (and those of its frames) run one at a
//! time. `acquire` and `recv` wait in slices of at most 10 ms, releasing the lock between them,
//! so one thread may wait for frames while others write, send, read or release frames of the
//! same end. `wait_for_consumers` and `finish` hold the lock for their whole wait.

use std::ffi::c_char;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lava_flow::channel::{
    Channel, ChannelOptions, ChannelSync, Consumer, DType, DetachedReadFrame, DetachedWriteFrame, FrameMemory,
    Metadata, Policy, Producer, MAX_DIMS, MAX_USER_DATA,
};
use lava_flow::vulkan::MemoryKind;

use crate::handles::{get, remove, write_handle, Handle};
use crate::ipc::c_path;
use crate::memory::{bytes_in, bytes_out, check_out, put};
use crate::status::{guard, CError, CResult, LavaFlowStatus};
use crate::structs::{read_in, write_out, Versioned};

/// Most dimensions of a frame's shape (`LavaFlowFrameMetadata.shape`).
pub const LAVA_FLOW_MAX_DIMS: usize = 8;
/// Most bytes of user data a frame carries (`LavaFlowFrameMetadata.user`).
pub const LAVA_FLOW_MAX_USER_DATA: usize = 256;

const _: () = assert!(LAVA_FLOW_MAX_DIMS == MAX_DIMS && LAVA_FLOW_MAX_USER_DATA == MAX_USER_DATA);

/// The producing end of a channel: owns the pool of frames and the socket consumers connect to.
pub struct LavaFlowProducer {
    _opaque: [u8; 0],
}

/// The consuming end of a channel.
pub struct LavaFlowConsumer {
    _opaque: [u8; 0],
}

/// A frame the producer is writing: made by `lava_flow_channel_producer_acquire`, ended by
/// `lava_flow_write_frame_send` or `lava_flow_write_frame_discard`.
pub struct LavaFlowWriteFrame {
    _opaque: [u8; 0],
}

/// A frame a consumer holds: made by `lava_flow_channel_consumer_recv`, ended by
/// `lava_flow_read_frame_release`.
pub struct LavaFlowReadFrame {
    _opaque: [u8; 0],
}

/// A producer and how many of its frames are live.
pub struct ProducerEnd {
    state: Mutex<ProducerState>,
}

struct ProducerState {
    /// `None` once finished.
    producer: Option<Producer>,
    frames: usize,
}

/// A consumer and how many of its frames are live.
pub struct ConsumerEnd {
    state: Mutex<ConsumerState>,
}

struct ConsumerState {
    consumer: Consumer,
    frames: usize,
}

/// A write frame: its producer and the reserved slot (`None` once sent or discarded).
pub struct WriteFrameObject {
    end: Arc<ProducerEnd>,
    capacity: u64,
    frame: Mutex<Option<DetachedWriteFrame>>,
}

/// A read frame: its consumer and the held slot (`None` once released).
pub struct ReadFrameObject {
    end: Arc<ConsumerEnd>,
    frame: Mutex<Option<DetachedReadFrame>>,
}

impl Handle for LavaFlowProducer {
    type Object = ProducerEnd;
    const NAME: &'static str = "LavaFlowProducer";
}

impl Handle for LavaFlowConsumer {
    type Object = ConsumerEnd;
    const NAME: &'static str = "LavaFlowConsumer";
}

impl Handle for LavaFlowWriteFrame {
    type Object = WriteFrameObject;
    const NAME: &'static str = "LavaFlowWriteFrame";
}

impl Handle for LavaFlowReadFrame {
    type Object = ReadFrameObject;
    const NAME: &'static str = "LavaFlowReadFrame";
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing leaves these states half-changed on a panic (each field is set in one step).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `LavaFlowChannelOptions.memory`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowFrameMemory {
    /// One exportable host-visible Vulkan buffer per slot (the default).
    LAVA_FLOW_FRAME_MEMORY_VULKAN_HOST_VISIBLE = 0,
    /// One exportable device-local Vulkan buffer per slot (copies go through a staging buffer).
    LAVA_FLOW_FRAME_MEMORY_VULKAN_DEVICE_LOCAL = 1,
    /// One sealed memfd per slot, mapped by every process (no GPU needed).
    LAVA_FLOW_FRAME_MEMORY_HOST = 2,
}

/// `LavaFlowChannelOptions.policy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowChannelPolicy {
    /// Acquiring waits while every slot is in flight (the default).
    LAVA_FLOW_POLICY_BLOCK = 0,
    /// Acquiring takes back the oldest frame no consumer has taken yet.
    LAVA_FLOW_POLICY_DROP_OLDEST = 1,
}

/// `LavaFlowChannelOptions.sync`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowChannelSync {
    /// Messages, plus the `channel.filled` timeline semaphore where the device shares one (default).
    LAVA_FLOW_SYNC_AUTO = 0,
    /// Messages alone.
    LAVA_FLOW_SYNC_MESSAGES = 1,
    /// Messages plus the timeline semaphore; an error where the device cannot share one.
    LAVA_FLOW_SYNC_TIMELINE = 2,
}

/// Settings of a channel end (NULL options: every default). A consumer reads the pool's shape
/// from its producer and uses only `timeout_ms`. Version 1: 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LavaFlowChannelOptions {
    /// `sizeof(LavaFlowChannelOptions)`.
    pub struct_size: u32,
    /// Frames in the pool, 1..=32 (at most this many are in flight); 0: 4.
    pub slots: u32,
    /// Bytes per frame; 0: 1 MiB.
    pub frame_size: u64,
    /// One of `LavaFlowFrameMemory`.
    pub memory: u32,
    /// One of `LavaFlowChannelPolicy`.
    pub policy: u32,
    /// One of `LavaFlowChannelSync`.
    pub sync: u32,
    /// Most consumers at once, 1..=64; 0: 8.
    pub max_consumers: u32,
    /// Longest a consumer's connect waits for a producer to listen, and a send to a consumer
    /// whose socket is full; 0: 10000.
    pub timeout_ms: u32,
    /// Permission bits of the producer's socket file; 0: 0600 (only this user).
    pub socket_mode: u32,
}

/// What a frame carries besides its bytes: given to `lava_flow_write_frame_send`, filled by
/// `lava_flow_read_frame_metadata`. Zero every field you do not use. Version 1: 424 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LavaFlowFrameMetadata {
    /// `sizeof(LavaFlowFrameMetadata)`.
    pub struct_size: u32,
    /// Dimensions of `shape` used, 0..=`LAVA_FLOW_MAX_DIMS` (0: a flat run of `len` bytes).
    pub ndim: u32,
    /// Bytes of the frame that hold data, from its start; at most the frame size. On send, 0
    /// means the whole frame (a received frame says the frame size then).
    pub len: u64,
    /// DLPack type code (0 int, 1 uint, 2 float, 4 bfloat, 5 complex, 6 bool, 255 opaque
    /// bytes). On send, `dtype_code`, `dtype_bits` and `dtype_lanes` all 0 mean plain bytes
    /// (255, 8, 1).
    pub dtype_code: u8,
    /// Bits per lane.
    pub dtype_bits: u8,
    /// Lanes per element.
    pub dtype_lanes: u16,
    /// Bytes of `user` used, 0..=`LAVA_FLOW_MAX_USER_DATA`.
    pub user_len: u32,
    /// The producer's timestamp, in any unit it chooses; passed on unchanged.
    pub timestamp: u64,
    /// 1: `strides` holds one stride per dimension; 0: compact row-major (no strides).
    pub has_strides: u32,
    /// Zero.
    pub reserved: u32,
    /// Shape in elements (the first `ndim` entries).
    pub shape: [u64; LAVA_FLOW_MAX_DIMS],
    /// Strides in elements (the first `ndim` entries, when `has_strides` is 1).
    pub strides: [i64; LAVA_FLOW_MAX_DIMS],
    /// User data passed on unchanged (the first `user_len` bytes).
    pub user: [u8; LAVA_FLOW_MAX_USER_DATA],
}

impl Default for LavaFlowFrameMetadata {
    fn default() -> Self {
        LavaFlowFrameMetadata {
            struct_size: std::mem::size_of::<LavaFlowFrameMetadata>() as u32,
            ndim: 0,
            len: 0,
            dtype_code: 0,
            dtype_bits: 0,
            dtype_lanes: 0,
            user_len: 0,
            timestamp: 0,
            has_strides: 0,
            reserved: 0,
            shape: [0; LAVA_FLOW_MAX_DIMS],
            strides: [0; LAVA_FLOW_MAX_DIMS],
            user: [0; LAVA_FLOW_MAX_USER_DATA],
        }
    }
}

// SAFETY: #[repr(C)], `struct_size: u32` first, integer fields only.
unsafe impl Versioned for LavaFlowChannelOptions {
    const NAME: &'static str = "LavaFlowChannelOptions";
    fn set_struct_size(&mut self, size: u32) {
        self.struct_size = size;
    }
}

// SAFETY: #[repr(C)], `struct_size: u32` first, integer fields and integer arrays only.
unsafe impl Versioned for LavaFlowFrameMetadata {
    const NAME: &'static str = "LavaFlowFrameMetadata";
    fn set_struct_size(&mut self, size: u32) {
        self.struct_size = size;
    }
}

/// The Rust options `options` (NULL: defaults) ask for.
///
/// # Safety
/// `options` is NULL or points at `options->struct_size` readable bytes.
unsafe fn channel_options(options: *const LavaFlowChannelOptions) -> CResult<ChannelOptions> {
    let mut out = ChannelOptions::default();
    if options.is_null() {
        return Ok(out);
    }
    // SAFETY: the caller's contract on `options`.
    let o = unsafe { read_in(options, "options")? };
    if o.slots != 0 {
        out.slots = o.slots;
    }
    if o.frame_size != 0 {
        out.frame_size = o.frame_size;
    }
    out.memory = match o.memory {
        0 => FrameMemory::Vulkan(MemoryKind::HostVisible),
        1 => FrameMemory::Vulkan(MemoryKind::DeviceLocal),
        2 => FrameMemory::Host,
        other => {
            return Err(CError::invalid(format!(
                "LavaFlowChannelOptions.memory is {other}: use 0 (Vulkan host-visible), 1 (Vulkan device-local) or 2 \
                 (host memfd)"
            )))
        }
    };
    out.policy = match o.policy {
        0 => Policy::Block,
        1 => Policy::DropOldest,
        other => {
            return Err(CError::invalid(format!(
                "LavaFlowChannelOptions.policy is {other}: use 0 (block) or 1 (drop oldest)"
            )))
        }
    };
    out.sync = match o.sync {
        0 => ChannelSync::Auto,
        1 => ChannelSync::Messages,
        2 => ChannelSync::Timeline,
        other => {
            return Err(CError::invalid(format!(
                "LavaFlowChannelOptions.sync is {other}: use 0 (auto), 1 (messages) or 2 (timeline)"
            )))
        }
    };
    if o.max_consumers != 0 {
        out.max_consumers = o.max_consumers;
    }
    if o.timeout_ms != 0 {
        out.timeout = Duration::from_millis(o.timeout_ms.into());
    }
    if o.socket_mode != 0 {
        if o.socket_mode & !0o777 != 0 {
            return Err(CError::invalid(format!(
                "LavaFlowChannelOptions.socket_mode is {:#o}: give permission bits only (at most 0777)",
                o.socket_mode
            )));
        }
        out.socket_mode = o.socket_mode;
    }
    Ok(out)
}

/// The Rust metadata a C struct asks for (checked against the limits, not yet against a frame).
fn metadata_from(m: &LavaFlowFrameMetadata) -> CResult<Metadata> {
    let ndim = m.ndim as usize;
    if ndim > LAVA_FLOW_MAX_DIMS {
        return Err(CError::invalid(format!(
            "LavaFlowFrameMetadata.ndim is {ndim}: at most {LAVA_FLOW_MAX_DIMS} dimensions"
        )));
    }
    let user_len = m.user_len as usize;
    if user_len > LAVA_FLOW_MAX_USER_DATA {
        return Err(CError::invalid(format!(
            "LavaFlowFrameMetadata.user_len is {user_len}: at most {LAVA_FLOW_MAX_USER_DATA} bytes of user data"
        )));
    }
    let strides = match m.has_strides {
        0 => Vec::new(),
        1 => m.strides[..ndim].to_vec(),
        other => {
            return Err(CError::invalid(format!(
                "LavaFlowFrameMetadata.has_strides is {other}: use 0 (compact row-major) or 1"
            )))
        }
    };
    if m.reserved != 0 {
        return Err(CError::invalid("LavaFlowFrameMetadata.reserved is not zero: zero it"));
    }
    let dtype = if (m.dtype_code, m.dtype_bits, m.dtype_lanes) == (0, 0, 0) {
        DType::BYTES
    } else {
        DType { code: m.dtype_code, bits: m.dtype_bits, lanes: m.dtype_lanes }
    };
    Ok(Metadata {
        len: m.len,
        dtype,
        shape: m.shape[..ndim].to_vec(),
        strides,
        timestamp: m.timestamp,
        user: m.user[..user_len].to_vec(),
    })
}

/// The C struct for received metadata (which the producer checked against the same limits).
fn metadata_to(m: &Metadata) -> LavaFlowFrameMetadata {
    let mut out = LavaFlowFrameMetadata {
        ndim: m.shape.len().min(LAVA_FLOW_MAX_DIMS) as u32,
        len: m.len,
        dtype_code: m.dtype.code,
        dtype_bits: m.dtype.bits,
        dtype_lanes: m.dtype.lanes,
        user_len: m.user.len().min(LAVA_FLOW_MAX_USER_DATA) as u32,
        timestamp: m.timestamp,
        has_strides: u32::from(!m.strides.is_empty()),
        ..LavaFlowFrameMetadata::default()
    };
    for (to, from) in out.shape.iter_mut().zip(&m.shape) {
        *to = *from;
    }
    for (to, from) in out.strides.iter_mut().zip(&m.strides) {
        *to = *from;
    }
    for (to, from) in out.user.iter_mut().zip(&m.user) {
        *to = *from;
    }
    out
}

/// `len` bytes at `offset` lie within a frame of `capacity` bytes.
fn fits(offset: u64, len: usize, capacity: u64, what: &str) -> CResult {
    match offset.checked_add(len as u64) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(CError::invalid(format!(
            "a {what} of {len} bytes at offset {offset} ends past the {capacity}-byte frame: keep offset + len within \
             the channel's frame size"
        ))),
    }
}

/// The longest one wait inside `acquire` or `recv` holds its end's lock.
const SLICE: Duration = Duration::from_millis(10);

fn timed_out(message: String) -> CError {
    CError::new(LavaFlowStatus::LAVA_FLOW_ERROR_TIMEOUT, message)
}

fn millis(ms: u32) -> Duration {
    Duration::from_millis(ms.into())
}

fn finished() -> CError {
    CError::invalid(
        "the producer was finished (lava_flow_channel_producer_finish ended its channel): destroy it, and create a \
         new producer for a new channel",
    )
}

fn live_frames(end: &str, n: usize, how: &str) -> CError {
    CError::invalid(format!(
        "the {end} has {n} live frame(s), which borrow its pool: {how} them first (the {end} stays valid)"
    ))
}

// ---------------------------------------------------------------------------------------------
// Producer

/// Creates a channel's producer: allocates `options->slots` frames of `options->frame_size`
/// bytes and listens at the Unix socket `path` (a stale socket file is replaced; a live
/// producer's is refused). Consumers may connect at any time; the producer accepts them inside
/// its calls (acquire, send, wait_for_consumers).
///
/// Ownership: `*out` is the caller's, released by `lava_flow_channel_producer_destroy`.
///
/// # Safety
/// `path` is a NUL-terminated string; `options` is NULL or points at `options->struct_size`
/// readable bytes; `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_producer_create(
    path: *const c_char,
    options: *const LavaFlowChannelOptions,
    out: *mut *mut LavaFlowProducer,
) -> LavaFlowStatus {
    guard("lava_flow_channel_producer_create", || {
        check_out(out, "out")?;
        // SAFETY: the caller's contract on `path`.
        let path = unsafe { c_path(path)? };
        // SAFETY: the caller's contract on `options`.
        let options = unsafe { channel_options(options)? };
        let producer = Channel::producer(path, options)?;
        let end = ProducerEnd { state: Mutex::new(ProducerState { producer: Some(producer), frames: 0 }) };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, end) };
        Ok(())
    })
}

/// Waits until at least `count` consumers are connected (`LAVA_FLOW_ERROR_TIMEOUT` after
/// `timeout_ms`).
///
/// # Safety
/// None beyond passing a handle value.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_producer_wait_for_consumers(
    producer: *const LavaFlowProducer,
    count: u32,
    timeout_ms: u32,
) -> LavaFlowStatus {
    guard("lava_flow_channel_producer_wait_for_consumers", || {
        let end = get(producer, "producer")?;
        let mut state = lock(&end.state);
        let p = state.producer.as_mut().ok_or_else(finished)?;
        Ok(p.wait_for_consumers(count as usize, millis(timeout_ms))?)
    })
}

/// Consumers connected now (after taking new connections and hang-ups).
///
/// # Safety
/// `count` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_producer_consumers(
    producer: *const LavaFlowProducer,
    count: *mut u32,
) -> LavaFlowStatus {
    guard("lava_flow_channel_producer_consumers", || {
        let end = get(producer, "producer")?;
        let mut state = lock(&end.state);
        let p = state.producer.as_mut().ok_or_else(finished)?;
        p.poll_events()?;
        let n = p.consumers() as u32;
        // SAFETY: the caller's contract on `count`.
        unsafe { put(count, n, "count") }
    })
}

fn acquire(producer: *const LavaFlowProducer, timeout_ms: Option<u32>, out: *mut *mut LavaFlowWriteFrame) -> CResult {
    check_out(out, "out")?;
    let end = get(producer, "producer")?;
    let deadline = timeout_ms.map(|ms| Instant::now() + millis(ms));
    loop {
        let mut state = lock(&end.state);
        let p = state.producer.as_mut().ok_or_else(finished)?;
        // Waits in slices, the lock released between them, so other threads' frames of this
        // producer (a send that frees a consumer to release a slot) are not held up.
        let got = match deadline {
            Some(deadline) => p.acquire_timeout(deadline.saturating_duration_since(Instant::now()).min(SLICE)),
            None => p.try_acquire(),
        }
        .map(|frame| (frame.capacity(), frame.detach()));
        let (capacity, frame) = match (got, deadline) {
            (Ok(got), _) => got,
            (Err(lava_flow::Error::Timeout { .. }), Some(deadline)) if Instant::now() < deadline => continue,
            (Err(lava_flow::Error::Timeout { .. }), _) => {
                return Err(timed_out(format!(
                    "no frame of the channel at {} came free within {} ms ({} in flight to {} consumers; write \
                     frames of this producer not yet sent or discarded hold the other slots): consumers release \
                     frames once they read them; wait longer, send or discard held write frames, or use the \
                     drop-oldest policy",
                    p.path().display(),
                    timeout_ms.unwrap_or(0),
                    p.in_flight(),
                    p.consumers()
                )))
            }
            (Err(e), _) => return Err(e.into()),
        };
        state.frames += 1;
        let object = WriteFrameObject { end: Arc::clone(&end), capacity, frame: Mutex::new(Some(frame)) };
        // SAFETY: checked not NULL by check_out; writable by the caller's contract.
        unsafe { write_handle(out, object) };
        return Ok(());
    }
}

/// A free frame to write, waiting up to `timeout_ms` while every slot is in flight (block
/// policy; `LAVA_FLOW_ERROR_TIMEOUT` after that), or taking back the oldest frame no consumer
/// took (drop-oldest policy).
///
/// Ownership: `*out` is the caller's until `lava_flow_write_frame_send` or
/// `lava_flow_write_frame_discard`; the producer cannot be destroyed while it is live.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_producer_acquire(
    producer: *const LavaFlowProducer,
    timeout_ms: u32,
    out: *mut *mut LavaFlowWriteFrame,
) -> LavaFlowStatus {
    guard("lava_flow_channel_producer_acquire", || acquire(producer, Some(timeout_ms), out))
}

/// A free frame to write now, or `LAVA_FLOW_ERROR_FULL` while every slot is in flight (under
/// drop-oldest, only while consumers hold every frame). Ownership as
/// `lava_flow_channel_producer_acquire`.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_producer_try_acquire(
    producer: *const LavaFlowProducer,
    out: *mut *mut LavaFlowWriteFrame,
) -> LavaFlowStatus {
    guard("lava_flow_channel_producer_try_acquire", || acquire(producer, None, out))
}

/// Ends the channel: waits up to `timeout_ms` for consumers to release the frames they hold,
/// then sends every consumer the end of the stream (their `recv` returns
/// `LAVA_FLOW_ERROR_CLOSED` after the frames already sent) and closes the socket. Refused while
/// write frames of this producer are live. The handle stays valid and is still destroyed by
/// `lava_flow_channel_producer_destroy`; other calls on it are refused.
///
/// # Safety
/// None beyond passing a handle value.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_producer_finish(
    producer: *const LavaFlowProducer,
    timeout_ms: u32,
) -> LavaFlowStatus {
    guard("lava_flow_channel_producer_finish", || {
        let end = get(producer, "producer")?;
        let mut state = lock(&end.state);
        if state.frames != 0 {
            return Err(live_frames("producer", state.frames, "send or discard"));
        }
        let p = state.producer.take().ok_or_else(finished)?;
        p.finish(millis(timeout_ms))?;
        Ok(())
    })
}

/// Releases a producer (NULL: nothing). A producer not finished ends its channel here as
/// `lava_flow_channel_producer_finish` does, without waiting: consumers receive the frames
/// already sent, then the end of the stream. Refused (`LAVA_FLOW_ERROR_INVALID_ARGUMENT`, the
/// producer stays valid) while write frames of it are live.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_producer_destroy(producer: *mut LavaFlowProducer) -> LavaFlowStatus {
    guard("lava_flow_channel_producer_destroy", || {
        if producer.is_null() {
            return Ok(());
        }
        let end = get(producer, "producer")?;
        let removed = {
            // Held across the removal, so no frame is acquired between the check and it.
            let state = lock(&end.state);
            if state.frames != 0 {
                return Err(live_frames("producer", state.frames, "send or discard"));
            }
            remove(producer)?
        };
        drop(removed);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Write frames

/// Bytes the frame holds (the channel's frame size).
///
/// # Safety
/// `capacity` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_write_frame_capacity(
    frame: *const LavaFlowWriteFrame,
    capacity: *mut u64,
) -> LavaFlowStatus {
    guard("lava_flow_write_frame_capacity", || {
        let f = get(frame, "frame")?;
        // SAFETY: the caller's contract on `capacity`.
        unsafe { put(capacity, f.capacity, "capacity") }
    })
}

/// Runs `body` on the frame attached to its producer, then detaches it again.
fn with_write_frame(
    f: &WriteFrameObject,
    body: impl FnOnce(&mut lava_flow::channel::WriteFrame<'_>) -> CResult,
) -> CResult {
    let mut slot = lock(&f.frame);
    let detached = slot.take().ok_or_else(gone_write)?;
    let mut state = lock(&f.end.state);
    let p = state.producer.as_mut().expect("a producer with live frames is not finished");
    let mut frame = match p.attach(detached) {
        Ok(frame) => frame,
        Err(detached) => {
            *slot = Some(detached);
            return Err(CError::invalid("the frame does not belong to its producer"));
        }
    };
    let result = body(&mut frame);
    *slot = Some(frame.detach());
    result
}

fn gone_write() -> CError {
    CError::new(
        LavaFlowStatus::LAVA_FLOW_ERROR_INVALID_HANDLE,
        "the write frame was sent or discarded already (on another thread): acquire a new one",
    )
}

/// Copies `len` bytes from `data` into the frame at `offset` (`LAVA_FLOW_ERROR_INVALID_ARGUMENT`
/// where they do not fit). No consumer sees them before the frame is sent.
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_write_frame_write(
    frame: *const LavaFlowWriteFrame,
    offset: u64,
    data: *const std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_write_frame_write", || {
        let f = get(frame, "frame")?;
        // SAFETY: the caller's contract on `data`.
        let data = unsafe { bytes_in(data, len, "data")? };
        fits(offset, len, f.capacity, "write")?;
        with_write_frame(&f, |w| Ok(w.write(offset, data)?))
    })
}

/// Sends the frame, with `metadata`, to every connected consumer, and consumes the frame handle.
///
/// Ownership: once `frame` is found to be a live write frame, the handle is consumed whatever the
/// status, as Rust's `WriteFrame::send` consumes its frame: on an error (NULL `metadata`, a wrong
/// `struct_size`, metadata beyond the limits or longer than the frame, a driver or socket error)
/// the frame is not sent and its slot returns to the pool. Only a NULL or not-live `frame`
/// (`LAVA_FLOW_ERROR_NULL_POINTER`, `LAVA_FLOW_ERROR_INVALID_HANDLE`) consumes nothing.
///
/// # Safety
/// `metadata` is NULL (refused) or points at `metadata->struct_size` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_write_frame_send(
    frame: *mut LavaFlowWriteFrame,
    metadata: *const LavaFlowFrameMetadata,
) -> LavaFlowStatus {
    guard("lava_flow_write_frame_send", || {
        let f = remove(frame)?.ok_or_else(|| CError::null("frame"))?;
        let mut slot = lock(&f.frame);
        let detached = slot.take().ok_or_else(gone_write)?;
        let mut state = lock(&f.end.state);
        state.frames -= 1;
        let p = state.producer.as_mut().expect("a producer with live frames is not finished");
        let frame = p.attach(detached).map_err(|_| CError::invalid("the frame does not belong to its producer"))?;
        // An error here drops `frame` unsent, which returns its slot to the pool.
        // SAFETY: the caller's contract on `metadata`.
        let m = unsafe { read_in(metadata, "metadata") }.and_then(|m| metadata_from(&m)).map_err(|e| {
            CError::new(e.status, format!("{}; the frame was not sent (its slot is free again)", e.message))
        })?;
        Ok(frame.send(m)?)
    })
}

/// Gives the frame back to the pool unsent and consumes the handle (NULL: nothing).
///
/// # Safety
/// None beyond passing a handle value: a sent, discarded or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_write_frame_discard(frame: *mut LavaFlowWriteFrame) -> LavaFlowStatus {
    guard("lava_flow_write_frame_discard", || {
        let Some(f) = remove(frame)? else { return Ok(()) };
        let mut slot = lock(&f.frame);
        let detached = slot.take().ok_or_else(gone_write)?;
        let mut state = lock(&f.end.state);
        state.frames -= 1;
        let p = state.producer.as_mut().expect("a producer with live frames is not finished");
        // Dropping the attached frame unsent frees its slot.
        drop(p.attach(detached).map_err(|_| CError::invalid("the frame does not belong to its producer"))?);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Consumer

/// Connects to the producer at `path` (retrying until one listens, up to `options->timeout_ms`)
/// and maps or imports its pool. Only `timeout_ms` of the options is used (NULL: 10 s).
///
/// Ownership: `*out` is the caller's, released by `lava_flow_channel_consumer_destroy`.
///
/// # Safety
/// `path` is a NUL-terminated string; `options` is NULL or points at `options->struct_size`
/// readable bytes; `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_consumer_create(
    path: *const c_char,
    options: *const LavaFlowChannelOptions,
    out: *mut *mut LavaFlowConsumer,
) -> LavaFlowStatus {
    guard("lava_flow_channel_consumer_create", || {
        check_out(out, "out")?;
        // SAFETY: the caller's contract on `path`.
        let path = unsafe { c_path(path)? };
        // SAFETY: the caller's contract on `options`.
        let options = unsafe { channel_options(options)? };
        let consumer = Channel::consumer(path, options)?;
        let end = ConsumerEnd { state: Mutex::new(ConsumerState { consumer, frames: 0 }) };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, end) };
        Ok(())
    })
}

/// The channel's frame count and frame size, from its producer.
///
/// # Safety
/// `slots` and `frame_size` are each NULL (not written) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_consumer_shape(
    consumer: *const LavaFlowConsumer,
    slots: *mut u32,
    frame_size: *mut u64,
) -> LavaFlowStatus {
    guard("lava_flow_channel_consumer_shape", || {
        let end = get(consumer, "consumer")?;
        let state = lock(&end.state);
        if !slots.is_null() {
            // SAFETY: not NULL; writable by the caller's contract.
            unsafe { put(slots, state.consumer.slots(), "slots")? };
        }
        if !frame_size.is_null() {
            // SAFETY: not NULL; writable by the caller's contract.
            unsafe { put(frame_size, state.consumer.frame_size(), "frame_size")? };
        }
        Ok(())
    })
}

/// The next frame, waiting up to `timeout_ms` (0: only a frame ready now;
/// `LAVA_FLOW_ERROR_TIMEOUT` when none came). At the end of the stream:
/// `LAVA_FLOW_ERROR_CLOSED` where the producer ended the channel (every frame it sent was
/// delivered before), `LAVA_FLOW_ERROR_DISCONNECTED` where it hung up without ending it (exited
/// or was killed) or disconnected this consumer.
///
/// Ownership: `*out` is the caller's until `lava_flow_read_frame_release`; the producer does not
/// reuse its slot before, and the consumer cannot be destroyed while it is live.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_consumer_recv(
    consumer: *const LavaFlowConsumer,
    timeout_ms: u32,
    out: *mut *mut LavaFlowReadFrame,
) -> LavaFlowStatus {
    guard("lava_flow_channel_consumer_recv", || {
        check_out(out, "out")?;
        let end = get(consumer, "consumer")?;
        let deadline = Instant::now() + millis(timeout_ms);
        let frame = loop {
            let mut state = lock(&end.state);
            let left = deadline.saturating_duration_since(Instant::now());
            // Waits in slices, the lock released between them, so other threads can read and
            // release this consumer's frames meanwhile (a producer waiting for a release would
            // otherwise wait for this recv to give up).
            let got = if left.is_zero() {
                state.consumer.try_recv()?
            } else {
                match state.consumer.recv_timeout(left.min(SLICE)) {
                    Ok(frame) => Some(frame),
                    Err(lava_flow::Error::Timeout { .. }) => None,
                    Err(e) => return Err(e.into()),
                }
            }
            .map(|frame| frame.detach());
            if let Some(frame) = got {
                state.frames += 1;
                break frame;
            }
            if left.is_zero() {
                return Err(timed_out(format!(
                    "no frame came within {timeout_ms} ms: call again, or pass a longer timeout (0 takes only a \
                     frame that is ready now)"
                )));
            }
        };
        let object = ReadFrameObject { end: Arc::clone(&end), frame: Mutex::new(Some(frame)) };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, object) };
        Ok(())
    })
}

/// Releases a consumer (NULL: nothing): disconnects from the producer. Refused
/// (`LAVA_FLOW_ERROR_INVALID_ARGUMENT`, the consumer stays valid) while read frames of it are
/// live.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_channel_consumer_destroy(consumer: *mut LavaFlowConsumer) -> LavaFlowStatus {
    guard("lava_flow_channel_consumer_destroy", || {
        if consumer.is_null() {
            return Ok(());
        }
        let end = get(consumer, "consumer")?;
        let removed = {
            // Held across the removal, so no frame is received between the check and it.
            let state = lock(&end.state);
            if state.frames != 0 {
                return Err(live_frames("consumer", state.frames, "release"));
            }
            remove(consumer)?
        };
        drop(removed);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Read frames

fn gone_read() -> CError {
    CError::new(
        LavaFlowStatus::LAVA_FLOW_ERROR_INVALID_HANDLE,
        "the read frame was released already (on another thread): receive a new one",
    )
}

/// Copies `len` bytes at `offset` out of the frame into `out` (`LAVA_FLOW_ERROR_INVALID_ARGUMENT`
/// past the frame's end).
///
/// # Safety
/// `out` is valid for writes of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_read_frame_read(
    frame: *const LavaFlowReadFrame,
    offset: u64,
    out: *mut std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_read_frame_read", || {
        let f = get(frame, "frame")?;
        // SAFETY: the caller's contract on `out`.
        let out = unsafe { bytes_out(out, len, "out")? };
        let mut slot = lock(&f.frame);
        let detached = slot.take().ok_or_else(gone_read)?;
        let state = lock(&f.end.state);
        if let Err(e) = fits(offset, len, state.consumer.frame_size(), "read") {
            *slot = Some(detached);
            return Err(e);
        }
        let frame = match state.consumer.attach(detached) {
            Ok(frame) => frame,
            Err(detached) => {
                *slot = Some(detached);
                return Err(CError::invalid("the frame does not belong to its consumer"));
            }
        };
        let result = frame.read_into(offset, out);
        *slot = Some(frame.detach());
        Ok(result?)
    })
}

/// The frame's metadata, into `metadata` (set its `struct_size` first).
///
/// # Safety
/// `metadata` is NULL (refused) or points at `metadata->struct_size` readable and writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_read_frame_metadata(
    frame: *const LavaFlowReadFrame,
    metadata: *mut LavaFlowFrameMetadata,
) -> LavaFlowStatus {
    guard("lava_flow_read_frame_metadata", || {
        let f = get(frame, "frame")?;
        let value = metadata_to(lock(&f.frame).as_ref().ok_or_else(gone_read)?.metadata());
        // SAFETY: the caller's contract on `metadata`.
        unsafe { write_out(metadata, value, "metadata") }
    })
}

/// The frame's sequence number (0 for the first frame the producer sent; consecutive unless
/// frames were dropped or sent before this consumer connected).
///
/// # Safety
/// `sequence` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_read_frame_sequence(
    frame: *const LavaFlowReadFrame,
    sequence: *mut u64,
) -> LavaFlowStatus {
    guard("lava_flow_read_frame_sequence", || {
        let f = get(frame, "frame")?;
        let value = lock(&f.frame).as_ref().ok_or_else(gone_read)?.sequence();
        // SAFETY: the caller's contract on `sequence`.
        unsafe { put(sequence, value, "sequence") }
    })
}

/// Releases the frame (NULL: nothing): the producer may reuse its slot once every consumer it
/// went to released it. Consumes the handle.
///
/// # Safety
/// None beyond passing a handle value: a released or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_read_frame_release(frame: *mut LavaFlowReadFrame) -> LavaFlowStatus {
    guard("lava_flow_read_frame_release", || {
        let Some(f) = remove(frame)? else { return Ok(()) };
        let mut slot = lock(&f.frame);
        let detached = slot.take().ok_or_else(gone_read)?;
        let mut state = lock(&f.end.state);
        state.frames -= 1;
        // Dropping the attached frame sends its release.
        drop(
            state
                .consumer
                .attach(detached)
                .map_err(|_| CError::invalid("the frame does not belong to its consumer"))?,
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes and offsets docs/C.md and the header's comments state (version 1).
    #[test]
    fn version_1_layouts() {
        assert_eq!(std::mem::size_of::<LavaFlowChannelOptions>(), 40);
        assert_eq!(std::mem::size_of::<LavaFlowFrameMetadata>(), 424);
        assert_eq!(std::mem::offset_of!(LavaFlowFrameMetadata, shape), 40);
        assert_eq!(std::mem::offset_of!(LavaFlowFrameMetadata, user), 168);
    }

    /// Metadata survives the trip C struct -> Rust -> C struct; zero dtype means bytes.
    #[test]
    fn metadata_round_trips() {
        let mut m =
            LavaFlowFrameMetadata { ndim: 2, len: 96, timestamp: 5, has_strides: 1, user_len: 2, ..Default::default() };
        m.shape[..2].copy_from_slice(&[4, 6]);
        m.strides[..2].copy_from_slice(&[6, 1]);
        m.user[..2].copy_from_slice(b"ok");
        let rust = metadata_from(&m).unwrap();
        assert_eq!(rust.dtype, DType::BYTES);
        assert_eq!(
            (rust.shape.as_slice(), rust.strides.as_slice(), rust.user.as_slice()),
            (&[4, 6][..], &[6, 1][..], &b"ok"[..])
        );
        let back = metadata_to(&rust);
        assert_eq!((back.ndim, back.len, back.timestamp, back.has_strides, back.user_len), (2, 96, 5, 1, 2));
        assert_eq!((back.dtype_code, back.dtype_bits, back.dtype_lanes), (255, 8, 1));
        for bad in [
            LavaFlowFrameMetadata { ndim: 9, ..Default::default() },
            LavaFlowFrameMetadata { user_len: 257, ..Default::default() },
            LavaFlowFrameMetadata { has_strides: 2, ..Default::default() },
            LavaFlowFrameMetadata { reserved: 1, ..Default::default() },
        ] {
            assert_eq!(metadata_from(&bad).unwrap_err().status, LavaFlowStatus::LAVA_FLOW_ERROR_INVALID_ARGUMENT);
        }
    }
}
