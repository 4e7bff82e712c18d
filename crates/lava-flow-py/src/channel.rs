//! Channels from Python: `Channel.producer` / `Channel.consumer` over `lava_flow::channel`.
//!
//! Ownership: a Python `Producer` or `Consumer` holds an `Arc` of its Rust end; every frame and
//! every view or DLPack capsule made from a frame holds an `Arc` of the frame's *lease*, and the
//! lease holds the end. So the end (its mappings, imports and socket) lives while any frame or
//! view of it does, whatever the order of `close()` and collection, and a view never outlives
//! the memory it points into.
//!
//! A frame's slot is handed back (returned to the pool on the producer, released to the
//! producer on a consumer) when its lease drops: when the frame object is released and every
//! view made from it is gone. A lease may drop on any thread, with or without the GIL (a DLPack
//! deleter): it never waits for the end's lock. Where the end is busy (another thread blocks in
//! `acquire` or `recv`), the slot goes on the end's queue of hand-backs, which every call that
//! holds the lock empties; blocking calls wait in slices of [`SLICE`] so that a hand-back made
//! meanwhile goes out within one.
//!
//! Writable views (`WriteFrame.array`) are sound because `send` refuses while one is alive: the
//! producer owns a frame exclusively between `acquire` and `send`, and after `send` nothing in
//! this process can reach the slot's bytes through a view of that frame.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lava_flow::channel::{
    Channel as RustChannel, ChannelOptions, Consumer as RustConsumer, DType as WireDType, DetachedReadFrame,
    DetachedWriteFrame, FrameMemory, Metadata as RustMetadata, Policy, Producer as RustProducer, ReadFrame as RustRead,
    ViewApi, Views, MAX_DIMS, MAX_USER_DATA,
};
use lava_flow::Error as E;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::dlpack::{self, DType, Keep, Layout, Region, Tensor, KDL_CPU, KDL_CUDA};
use crate::errors::{closed, invalid, IntoPy};
use crate::host::lock;

/// Longest a blocking call holds its end's lock before it hands back slots queued meanwhile.
const SLICE: Duration = Duration::from_millis(20);

fn seconds(name: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        invalid(format!("{name}={s}"), "it is not a finite number of seconds of 0 or more", "pass seconds, e.g. 1.5")
    })
}

// ---------------------------------------------------------------------------------------------
// Producer

struct ProducerShared {
    producer: Mutex<RustProducer>,
    /// Frames whose lease dropped while the producer's lock was busy: returned to the pool by
    /// the next call that holds it.
    returns: Mutex<Vec<DetachedWriteFrame>>,
}

impl ProducerShared {
    /// Returns the queued frames' slots to the pool (dropping an attached, unsent frame does).
    fn hand_back(&self, producer: &mut RustProducer) {
        let queued = std::mem::take(&mut *lock(&self.returns));
        for frame in queued {
            // A frame of this producer is always attached back; were it refused, dropping the
            // detached frame keeps the slot reserved, which loses a slot but never memory.
            let _ = producer.attach(frame).map(drop);
        }
    }
}

impl Drop for ProducerShared {
    /// The last holder is gone: take the consumers' pending releases before the producer ends
    /// the channel, as `finish` does (a Unix socket closed with unread messages resets the
    /// connection, and its consumers would see a hang-up instead of the end of the stream).
    fn drop(&mut self) {
        let producer = self.producer.get_mut().unwrap_or_else(|p| p.into_inner());
        let queued = std::mem::take(&mut *lock(&self.returns));
        for frame in queued {
            let _ = producer.attach(frame).map(drop);
        }
        let _ = producer.poll_events();
    }
}

/// What keeps one acquired frame's slot reserved and its bytes mapped: the frame object and
/// every view of it hold an `Arc` of this. Dropping the last one returns an unsent frame's slot.
struct WriteLease {
    shared: Arc<ProducerShared>,
    frame: Mutex<Option<DetachedWriteFrame>>,
}

impl Drop for WriteLease {
    fn drop(&mut self) {
        let Some(frame) = lock(&self.frame).take() else { return };
        match self.shared.producer.try_lock() {
            Ok(mut producer) => {
                let _ = producer.attach(frame).map(drop);
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let _ = p.into_inner().attach(frame).map(drop);
            }
            Err(std::sync::TryLockError::WouldBlock) => lock(&self.shared.returns).push(frame),
        }
    }
}

/// The producing end of a channel (`Channel.producer(...)`): owns the frames and the socket.
/// Closing it (or the end of its `with` block) ends the channel once no frame or view of it is
/// alive: consumers get the end of the stream after the frames already sent.
#[pyclass(module = "lava_flow", frozen)]
pub struct Producer {
    shared: Mutex<Option<Arc<ProducerShared>>>,
    path: String,
    frame_size: u64,
    slots: u32,
    timeout: Duration,
}

impl Producer {
    fn shared(&self) -> PyResult<Arc<ProducerShared>> {
        lock(&self.shared).clone().ok_or_else(|| closed("channel producer"))
    }
}

fn acquired(shared: &Arc<ProducerShared>, frame: lava_flow::channel::WriteFrame<'_>) -> WriteFrame {
    let mut frame = frame;
    let host = frame.host_memory().map(|m| m.as_ptr() as usize as u64);
    let sequence = frame.sequence();
    let slot = frame.slot();
    let capacity = frame.capacity();
    let lease = Arc::new(WriteLease { shared: shared.clone(), frame: Mutex::new(Some(frame.detach())) });
    WriteFrame { lease: Mutex::new(Some(lease)), host, sequence, slot, capacity, last_array: Mutex::new(None) }
}

#[pymethods]
impl Producer {
    /// `acquire(timeout=None)`: a free frame to write, waiting while every slot is in flight
    /// (block policy) up to `timeout` seconds (the channel's timeout when None); `Timeout` after
    /// it. The GIL is released while waiting.
    #[pyo3(signature = (timeout=None))]
    fn acquire(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<WriteFrame> {
        let shared = self.shared()?;
        let timeout = match timeout {
            Some(t) => seconds("timeout", t)?,
            None => self.timeout,
        };
        py.detach(|| {
            let deadline = Instant::now() + timeout;
            loop {
                {
                    let mut producer = lock(&shared.producer);
                    shared.hand_back(&mut producer);
                    let left = deadline.saturating_duration_since(Instant::now());
                    let result = producer.acquire_timeout(left.min(SLICE));
                    match result {
                        Ok(frame) => return Ok(acquired(&shared, frame)),
                        Err(E::Timeout { .. }) if Instant::now() < deadline => {}
                        Err(E::Timeout { action, .. }) => return Err(E::Timeout { action, timeout }),
                        Err(e) => return Err(e),
                    }
                }
                std::thread::yield_now();
            }
        })
        .py_err()
    }

    /// A free frame now, or `lava_flow.Full` while every slot is in flight.
    fn try_acquire(&self, py: Python<'_>) -> PyResult<WriteFrame> {
        let shared = self.shared()?;
        py.detach(|| {
            let mut producer = lock(&shared.producer);
            shared.hand_back(&mut producer);
            producer.try_acquire().map(|frame| acquired(&shared, frame))
        })
        .py_err()
    }

    /// Waits until at least `n` consumers are connected (`Timeout` after `timeout` seconds).
    #[pyo3(signature = (n=1, timeout=10.0))]
    fn wait_for_consumers(&self, py: Python<'_>, n: usize, timeout: f64) -> PyResult<()> {
        let shared = self.shared()?;
        let timeout = seconds("timeout", timeout)?;
        py.detach(|| {
            let deadline = Instant::now() + timeout;
            loop {
                let mut producer = lock(&shared.producer);
                shared.hand_back(&mut producer);
                let left = deadline.saturating_duration_since(Instant::now());
                match producer.wait_for_consumers(n, left.min(SLICE)) {
                    Err(E::Timeout { .. }) if Instant::now() < deadline => continue,
                    Err(E::Timeout { action, .. }) => return Err(E::Timeout { action, timeout }),
                    other => return other,
                }
            }
        })
        .py_err()
    }

    /// Ends the channel: waits up to `timeout` seconds for consumers to release the frames they
    /// hold, then closes the producer (consumers get the end of the stream). Returns whether
    /// every frame was released in time.
    #[pyo3(signature = (timeout=10.0))]
    fn finish(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let shared = self.shared()?;
        let timeout = seconds("timeout", timeout)?;
        let drained = py
            .detach(|| {
                let deadline = Instant::now() + timeout;
                loop {
                    let mut producer = lock(&shared.producer);
                    shared.hand_back(&mut producer);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if producer.drain(left.min(SLICE))? || Instant::now() >= deadline {
                        return Ok(producer.in_flight() == 0);
                    }
                }
            })
            .py_err()?;
        drop(shared);
        self.close(py);
        Ok(drained)
    }

    /// Consumers connected now (after handling pending connections and hang-ups).
    #[getter]
    fn consumers(&self, py: Python<'_>) -> PyResult<usize> {
        let shared = self.shared()?;
        py.detach(|| {
            let mut producer = lock(&shared.producer);
            shared.hand_back(&mut producer);
            producer.poll_events()?;
            Ok(producer.consumers())
        })
        .py_err()
    }

    /// The socket path.
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// Bytes per frame.
    #[getter]
    fn frame_size(&self) -> u64 {
        self.frame_size
    }

    /// Frames in the pool.
    #[getter]
    fn slots(&self) -> u32 {
        self.slots
    }

    /// Whether `close()` (or `finish()`) was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.shared).is_none()
    }

    /// Drops this object's hold on the producer: the channel ends (consumers get the end of the
    /// stream, the socket file is removed) once no frame or view of it is alive either.
    fn close(&self, py: Python<'_>) {
        let shared = lock(&self.shared).take();
        // Dropping the producer sends END to every consumer: without the GIL.
        py.detach(move || drop(shared));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        format!(
            "lava_flow.Producer(path={:?}, frame_size={}, slots={}{})",
            self.path,
            self.frame_size,
            self.slots,
            if self.closed() { ", closed" } else { "" }
        )
    }
}

/// A frame the producer is writing, from `acquire`/`try_acquire`: `write` bytes or fill an
/// `array` view (host frames), then `send`. Released unsent, its slot returns to the pool.
#[pyclass(module = "lava_flow", frozen)]
pub struct WriteFrame {
    lease: Mutex<Option<Arc<WriteLease>>>,
    /// The slot's first byte in this process (host frames).
    host: Option<u64>,
    sequence: u64,
    slot: usize,
    capacity: u64,
    /// The layout of the last `array()`, which `send` describes when given no dtype or shape.
    last_array: Mutex<Option<Layout>>,
}

impl WriteFrame {
    fn lease(&self) -> PyResult<Arc<WriteLease>> {
        lock(&self.lease).clone().ok_or_else(|| closed("frame (it was sent or released)"))
    }
}

/// The metadata of `send(...)`'s arguments, checked against a frame of `capacity` bytes.
#[allow(clippy::too_many_arguments)]
fn metadata(
    len: Option<u64>,
    dtype: Option<&Bound<'_, PyAny>>,
    shape: Option<&Bound<'_, PyAny>>,
    strides: Option<&Bound<'_, PyAny>>,
    timestamp: u64,
    user: &[u8],
    capacity: u64,
    last_array: Option<Layout>,
) -> PyResult<RustMetadata> {
    let given = dtype.is_some() || shape.is_some() || strides.is_some();
    let layout = match (given, last_array) {
        (false, Some(layout)) => Some(layout),
        (false, None) => None,
        (true, _) => {
            let dtype = match dtype {
                Some(d) => DType::parse(d)?,
                None => DType::u8(),
            };
            let shape: Vec<i64> = match shape {
                None => {
                    return Err(invalid(
                        "send(dtype=..., strides=...) without a shape",
                        "a dtype or strides describe the elements of a shape",
                        "pass shape=(...) too",
                    ))
                }
                Some(s) => match s.extract::<i64>() {
                    Ok(n) => vec![n],
                    Err(_) => s.extract().map_err(|_| PyTypeError::new_err("shape: an int or a sequence of ints"))?,
                },
            };
            let strides: Option<Vec<i64>> = match strides {
                Some(s) => {
                    Some(s.extract().map_err(|_| PyTypeError::new_err("strides: a sequence of ints (in elements)"))?)
                }
                None => None,
            };
            Some(Layout::new(dtype, shape, strides.clone(), 0, capacity).map(|mut l| {
                if strides.is_none() {
                    l.strides.clear();
                }
                l
            })?)
        }
    };
    if user.len() > MAX_USER_DATA {
        return Err(invalid(
            format!("user data of {} bytes", user.len()),
            format!("a frame carries at most {MAX_USER_DATA} bytes of it"),
            "send less, or put it in the frame",
        ));
    }
    let mut meta = RustMetadata { timestamp, user: user.to_vec(), ..RustMetadata::default() };
    let mut need = 0u64;
    if let Some(l) = layout {
        if l.shape.len() > MAX_DIMS {
            return Err(invalid(
                format!("shape {:?}", l.shape),
                format!("a frame's metadata has at most {MAX_DIMS} dimensions"),
                "reshape to fewer dimensions",
            ));
        }
        let full =
            Layout::new(l.dtype, l.shape.clone(), (!l.strides.is_empty()).then(|| l.strides.clone()), 0, capacity)?;
        // Bytes the layout reaches (checked to fit the frame by Layout::new).
        need = if full.shape.contains(&0) {
            0
        } else {
            full.shape.iter().zip(&full.strides).map(|(&d, &s)| (d as u64 - 1) * s as u64).sum::<u64>() + 1
        } * l.dtype.size();
        meta.dtype = WireDType { code: l.dtype.code(), bits: l.dtype.bits(), lanes: 1 };
        meta.shape = l.shape.iter().map(|&d| d as u64).collect();
        meta.strides = l.strides.clone();
    }
    meta.len = match len {
        Some(n) => {
            if n > capacity || n < need {
                return Err(invalid(
                    format!("send(len={n})"),
                    format!("frames hold {capacity} bytes and the shape reaches {need}"),
                    "pass a length between those, or None",
                ));
            }
            n
        }
        None if need > 0 => need,
        None => 0,
    };
    Ok(meta)
}

#[pymethods]
impl WriteFrame {
    /// Copies a bytes-like object (bytes, bytearray, memoryview, a contiguous NumPy array) into
    /// the frame at byte `offset`.
    #[pyo3(signature = (offset, data))]
    fn write(&self, py: Python<'_>, offset: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let lease = self.lease()?;
        let bytes: Vec<u8> = if let Ok(b) = data.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else {
            // bytes(memoryview(x)) copies any buffer-protocol object, contiguous or not.
            let view = py.import("builtins")?.getattr("memoryview")?.call1((data,)).map_err(|_| {
                PyTypeError::new_err(
                    "write(offset, data): data must be bytes-like (bytes, bytearray, memoryview, array)",
                )
            })?;
            view.call_method0("tobytes")?.cast_into::<PyBytes>()?.as_bytes().to_vec()
        };
        if offset.checked_add(bytes.len() as u64).is_none_or(|end| end > self.capacity) {
            return Err(invalid(
                format!("write of {} bytes at offset {offset}", bytes.len()),
                format!("frames hold {} bytes", self.capacity),
                "write inside the frame (its `capacity`)",
            ));
        }
        py.detach(|| {
            let mut producer = lock(&lease.shared.producer);
            lease.shared.hand_back(&mut producer);
            let Some(detached) = lock(&lease.frame).take() else {
                return Err(E::invalid("write to a frame", "it was sent", "acquire another frame"));
            };
            let mut frame = match producer.attach(detached) {
                Ok(frame) => frame,
                Err(detached) => {
                    *lock(&lease.frame) = Some(detached);
                    return Err(E::invalid(
                        "write to a frame",
                        "its producer does not hold it",
                        "acquire another frame",
                    ));
                }
            };
            let result = frame.write(offset, &bytes);
            *lock(&lease.frame) = Some(frame.detach());
            result
        })
        .py_err()
    }

    /// A writable typed view of the frame (host frames): `dtype` a name, NumPy or torch dtype;
    /// `shape` an int or a tuple; `strides` in elements; `offset` in bytes. Fill it through
    /// `numpy.from_dlpack(view)` or `numpy.asarray(view)`, then delete those arrays: `send`
    /// refuses while a view or an array made from one is alive. `send` describes the last
    /// view's dtype and shape unless given others.
    #[pyo3(signature = (dtype, shape, strides=None, offset=0))]
    fn array(
        &self,
        dtype: &Bound<'_, PyAny>,
        shape: &Bound<'_, PyAny>,
        strides: Option<&Bound<'_, PyAny>>,
        offset: u64,
    ) -> PyResult<Tensor> {
        let lease = self.lease()?;
        let Some(ptr) = self.host else {
            return Err(invalid(
                "array() of a Vulkan frame",
                "its memory is the GPU's, not mapped for the host here",
                "use write(), or open the producer with memory=\"host\"",
            ));
        };
        let region = Region { ptr, len: self.capacity, device: (KDL_CPU, 0), keep: lease as Keep, writable: true };
        let view = dlpack::view(region, None, dtype, shape, strides, offset)?;
        if offset == 0 {
            let mut layout = view.layout.clone();
            if strides.is_none_or(|s| s.is_none()) {
                layout.strides.clear();
            }
            *lock(&self.last_array) = Some(layout);
        }
        Ok(view)
    }

    /// Sends the frame to every connected consumer with its metadata: `len` bytes of data (by
    /// default what `shape` reaches, else the whole frame), `dtype`/`shape`/`strides` (elements;
    /// by default those of the last `array()` at offset 0), `timestamp`, `user` (at most 256
    /// bytes). Refused (`BufferError`) while a view of the frame is alive. The frame can no
    /// longer be used.
    #[pyo3(signature = (len=None, dtype=None, shape=None, strides=None, timestamp=0, user=None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        len: Option<u64>,
        dtype: Option<&Bound<'_, PyAny>>,
        shape: Option<&Bound<'_, PyAny>>,
        strides: Option<&Bound<'_, PyAny>>,
        timestamp: u64,
        user: Option<Vec<u8>>,
    ) -> PyResult<()> {
        let lease = self.lease()?;
        let last = lock(&self.last_array).clone();
        let meta = metadata(
            len,
            dtype.filter(|d| !d.is_none()),
            shape.filter(|s| !s.is_none()),
            strides.filter(|s| !s.is_none()),
            timestamp,
            user.as_deref().unwrap_or_default(),
            self.capacity,
            last,
        )?;
        // This frame object and our local clone: any more is a live view, which could still
        // write the bytes consumers are about to read.
        let views = Arc::strong_count(&lease) - 2;
        if views > 0 {
            return Err(PyBufferError::new_err(format!(
                "send(): {views} view(s) of frame {} (from array(), or arrays and capsules made from them) are still \
                 alive, and consumers read the frame once it is sent; delete them (del arr) first",
                self.sequence
            )));
        }
        lock(&self.lease).take();
        py.detach(move || {
            let mut producer = lock(&lease.shared.producer);
            lease.shared.hand_back(&mut producer);
            let detached = lock(&lease.frame).take().expect("a held lease holds its frame");
            let frame = match producer.attach(detached) {
                Ok(frame) => frame,
                Err(detached) => {
                    // Back in the lease, whose drop (after the lock's) returns the slot.
                    *lock(&lease.frame) = Some(detached);
                    return Err(E::invalid(
                        "send of a frame",
                        "its producer does not hold it",
                        "acquire another frame",
                    ));
                }
            };
            frame.send(meta)
        })
        .py_err()
    }

    /// Returns the frame's slot to the pool unsent (once no view of it is alive).
    fn release(&self) {
        lock(&self.lease).take();
    }

    /// The sequence number the frame will carry.
    #[getter]
    fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The slot index.
    #[getter]
    fn slot(&self) -> usize {
        self.slot
    }

    /// Bytes in the frame.
    #[getter]
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Releases the frame unsent if the block did not send it.
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) {
        self.release();
    }

    fn __repr__(&self) -> String {
        format!("lava_flow.WriteFrame(sequence={}, slot={}, capacity={})", self.sequence, self.slot, self.capacity)
    }
}

// ---------------------------------------------------------------------------------------------
// Consumer

struct ConsumerShared {
    consumer: Mutex<RustConsumer>,
    /// Frames whose lease dropped while the consumer's lock was busy: released by the next
    /// call that holds it.
    releases: Mutex<Vec<DetachedReadFrame>>,
}

impl ConsumerShared {
    fn hand_back(&self, consumer: &RustConsumer) {
        let queued = std::mem::take(&mut *lock(&self.releases));
        for frame in queued {
            // Attached back and dropped: the frame's RELEASE goes to the producer.
            let _ = consumer.attach(frame).map(drop);
        }
    }
}

/// What keeps a received frame held (the producer does not reuse its slot) and the consumer's
/// mapping or import of it alive: the frame object and every view or capsule of it hold an
/// `Arc` of this. Dropping the last one releases the frame.
struct ReadLease {
    shared: Arc<ConsumerShared>,
    frame: Mutex<Option<DetachedReadFrame>>,
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        let Some(frame) = lock(&self.frame).take() else { return };
        match self.shared.consumer.try_lock() {
            Ok(consumer) => {
                let _ = consumer.attach(frame).map(drop);
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let _ = p.into_inner().attach(frame).map(drop);
            }
            Err(std::sync::TryLockError::WouldBlock) => lock(&self.shared.releases).push(frame),
        }
    }
}

/// The consuming end of a channel (`Channel.consumer(...)`). `recv()` returns frames in order,
/// and None once the producer ended the channel; `for frame in consumer:` iterates until then.
#[pyclass(module = "lava_flow", frozen)]
pub struct Consumer {
    shared: Mutex<Option<Arc<ConsumerShared>>>,
    timeout: Duration,
    frame_size: u64,
    slots: u32,
    vulkan: bool,
    cuda: bool,
}

impl Consumer {
    fn shared(&self) -> PyResult<Arc<ConsumerShared>> {
        lock(&self.shared).clone().ok_or_else(|| closed("channel consumer"))
    }
}

/// Where a received frame's bytes are for DLPack.
#[derive(Clone, Copy)]
enum Place {
    /// Host frames, and Vulkan frames in host-coherent memory: the consumer's mapping.
    Host(u64),
    /// A CUDA view (`views="cuda"`): the device pointer and the device ordinal.
    Cuda(u64, i32),
    None,
}

fn place(frame: &RustRead<'_>, cuda: bool) -> Place {
    if cuda {
        if let Some(b) = frame.cuda_buffer() {
            return Place::Cuda(b.device_ptr_raw(), b.device().ordinal() as i32);
        }
    }
    if let Some(m) = frame.host_memory() {
        return Place::Host(m.as_ptr() as usize as u64);
    }
    if let Some(b) = frame.buffer() {
        let memory = b.memory();
        if memory.properties().contains(lava_flow::raw_gpu_handle::MemoryProperties::HOST_COHERENT) {
            if let Ok(p) = memory.host_pointer() {
                // SAFETY: the buffer's range lies inside its memory (checked when it was bound),
                // which `host_pointer` maps whole.
                return Place::Host(unsafe { p.add(b.offset() as usize) } as usize as u64);
            }
        }
    }
    Place::None
}

#[pymethods]
impl Consumer {
    /// `recv(timeout=None)`: the next frame, waiting up to `timeout` seconds (the consumer's
    /// timeout when None; `Timeout` after it). None once the producer ended the channel;
    /// `lava_flow.Closed` where it hung up without ending it (exited or was killed). The GIL
    /// is released while waiting.
    #[pyo3(signature = (timeout=None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<ReadFrame>> {
        let shared = self.shared()?;
        let timeout = match timeout {
            Some(t) => seconds("timeout", t)?,
            None => self.timeout,
        };
        let cuda = self.cuda;
        let frame_size = self.frame_size;
        py.detach(|| {
            let deadline = Instant::now() + timeout;
            loop {
                {
                    let consumer = lock(&shared.consumer);
                    shared.hand_back(&consumer);
                    let left = deadline.saturating_duration_since(Instant::now());
                    let result = consumer.recv_timeout(left.min(SLICE));
                    match result {
                        Ok(frame) => {
                            let place = place(&frame, cuda);
                            let sequence = frame.sequence();
                            let meta = frame.metadata().clone();
                            let lease =
                                Arc::new(ReadLease { shared: shared.clone(), frame: Mutex::new(Some(frame.detach())) });
                            return Ok(Some(ReadFrame {
                                lease: Mutex::new(Some(lease)),
                                place,
                                sequence,
                                meta,
                                frame_size,
                            }));
                        }
                        Err(E::Timeout { .. }) if Instant::now() < deadline => {}
                        Err(E::Timeout { action, .. }) => return Err(E::Timeout { action, timeout }),
                        Err(E::Closed { clean: true, .. }) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
                // Lets a thread waiting for the lock (a read, a release) take it between slices.
                std::thread::yield_now();
            }
        })
        .py_err()
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// The next frame; the iteration stops once the producer ended the channel.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<ReadFrame>> {
        self.recv(py, None)
    }

    /// Bytes per frame.
    #[getter]
    fn frame_size(&self) -> u64 {
        self.frame_size
    }

    /// Frames in the producer's pool.
    #[getter]
    fn slots(&self) -> u32 {
        self.slots
    }

    /// `"vulkan"` or `"host"`: where the producer's frames live.
    #[getter]
    fn memory(&self) -> &'static str {
        if self.vulkan {
            "vulkan"
        } else {
            "host"
        }
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.shared).is_none()
    }

    /// Drops this object's hold on the consumer: it disconnects once no frame or view of it is
    /// alive either (frames still held stay valid until then).
    fn close(&self, py: Python<'_>) {
        let shared = lock(&self.shared).take();
        py.detach(move || drop(shared));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        format!(
            "lava_flow.Consumer(frame_size={}, slots={}, memory={:?}{})",
            self.frame_size,
            self.slots,
            self.memory(),
            if self.closed() { ", closed" } else { "" }
        )
    }
}

/// What the producer said about a frame (`ReadFrame.metadata`).
#[pyclass(module = "lava_flow", frozen, get_all)]
pub struct Metadata {
    /// Bytes of data from the frame's start (the whole frame when the producer said 0).
    len: u64,
    /// The element type's name (`"float32"`), or `"bytes"` for plain bytes, or
    /// `"code:bits:lanes"` for a type lava-flow has no name for.
    dtype: String,
    /// `(code, bits, lanes)` as DLPack numbers the element type.
    dl_dtype: (u8, u8, u16),
    /// The shape in elements (empty: a flat run of `len` bytes).
    shape: Vec<u64>,
    /// Strides in elements, or None for row-major.
    strides: Option<Vec<i64>>,
    /// The producer's timestamp, in its unit.
    timestamp: u64,
    /// The producer's user bytes.
    user: Vec<u8>,
}

#[pymethods]
impl Metadata {
    fn __repr__(&self) -> String {
        format!(
            "lava_flow.Metadata(len={}, dtype={:?}, shape={:?}, strides={:?}, timestamp={}, user={} bytes)",
            self.len,
            self.dtype,
            self.shape,
            self.strides,
            self.timestamp,
            self.user.len()
        )
    }
}

/// A received frame. The producer does not reuse its slot until this object is released
/// (`release()`, the end of its `with` block, or collection) AND every view, DLPack capsule and
/// array made from it is gone. DLPack exports are READ-ONLY: the producer rewrites the slot
/// after the release, so copy what must outlive the frame.
#[pyclass(module = "lava_flow", frozen)]
pub struct ReadFrame {
    lease: Mutex<Option<Arc<ReadLease>>>,
    place: Place,
    sequence: u64,
    meta: RustMetadata,
    frame_size: u64,
}

impl ReadFrame {
    fn lease(&self) -> PyResult<Arc<ReadLease>> {
        lock(&self.lease).clone().ok_or_else(|| closed("frame (release() was called)"))
    }

    fn data_len(&self) -> u64 {
        if self.meta.len == 0 {
            self.frame_size
        } else {
            self.meta.len
        }
    }

    /// The frame's layout from its metadata: the dtype and shape the producer named, else its
    /// bytes as a 1-D `uint8` array.
    fn layout(&self) -> PyResult<Layout> {
        let m = &self.meta;
        if m.shape.is_empty() || m.dtype == WireDType::BYTES {
            return Ok(Layout::bytes(self.data_len()));
        }
        let dtype = DType::from_dl(m.dtype.code, m.dtype.bits).filter(|_| m.dtype.lanes == 1).ok_or_else(|| {
            invalid(
                format!("DLPack export of a frame of dtype {:?}", m.dtype),
                "lava-flow exports bool, int, uint, float, bfloat16 and complex types of one lane",
                "read() the bytes and interpret them yourself",
            )
        })?;
        let shape = m.shape.iter().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect();
        let strides = (!m.strides.is_empty()).then(|| m.strides.clone());
        Layout::new(dtype, shape, strides, 0, self.data_len())
    }

    fn region(&self) -> PyResult<Region> {
        let lease = self.lease()?;
        let (ptr, device) = match self.place {
            Place::Host(p) => (p, (KDL_CPU, 0)),
            Place::Cuda(p, ordinal) => (p, (KDL_CUDA, ordinal)),
            Place::None => {
                return Err(PyBufferError::new_err(
                    "this frame's memory is the GPU's and not mapped for the host here: use read(), or \
                     Channel.consumer(..., views=\"cuda\") for CUDA arrays, or a producer with memory=\"host\"",
                ))
            }
        };
        Ok(Region { ptr, len: self.data_len(), device, keep: lease as Keep, writable: false })
    }
}

#[pymethods]
impl ReadFrame {
    /// The frame's sequence number (consecutive unless frames were dropped).
    #[getter]
    fn sequence(&self) -> u64 {
        self.sequence
    }

    /// What the producer said about the frame.
    #[getter]
    fn metadata(&self) -> Metadata {
        let m = &self.meta;
        let dtype = if m.dtype == WireDType::BYTES {
            "bytes".to_string()
        } else {
            match DType::from_dl(m.dtype.code, m.dtype.bits).filter(|_| m.dtype.lanes == 1) {
                Some(d) => d.name().to_string(),
                None => format!("{}:{}:{}", m.dtype.code, m.dtype.bits, m.dtype.lanes),
            }
        };
        Metadata {
            len: self.data_len(),
            dtype,
            dl_dtype: (m.dtype.code, m.dtype.bits, m.dtype.lanes),
            shape: m.shape.clone(),
            strides: (!m.strides.is_empty()).then(|| m.strides.clone()),
            timestamp: m.timestamp,
            user: m.user.clone(),
        }
    }

    /// Bytes of data.
    fn __len__(&self) -> usize {
        self.data_len() as usize
    }

    /// A copy of the frame's data (`len` bytes from the start, or `size` bytes at `offset`).
    #[pyo3(signature = (offset=0, size=None))]
    fn read<'py>(&self, py: Python<'py>, offset: u64, size: Option<u64>) -> PyResult<Bound<'py, PyBytes>> {
        let lease = self.lease()?;
        let size = size.unwrap_or_else(|| self.data_len().saturating_sub(offset));
        if offset.checked_add(size).is_none_or(|end| end > self.frame_size) {
            return Err(invalid(
                format!("read of {size} bytes at offset {offset}"),
                format!("frames hold {} bytes", self.frame_size),
                "read inside the frame",
            ));
        }
        let bytes = py
            .detach(|| {
                let consumer = lock(&lease.shared.consumer);
                lease.shared.hand_back(&consumer);
                let detached = lock(&lease.frame).take().expect("a held lease holds its frame");
                let frame = match consumer.attach(detached) {
                    Ok(frame) => frame,
                    Err(detached) => {
                        *lock(&lease.frame) = Some(detached);
                        return Err(E::invalid(
                            "read of a frame",
                            "its consumer does not hold it",
                            "receive another frame",
                        ));
                    }
                };
                let mut out = vec![0u8; size as usize];
                let result = frame.read_into(offset, &mut out);
                *lock(&lease.frame) = Some(frame.detach());
                result.map(|()| out)
            })
            .py_err()?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// DLPack export (READ-ONLY) of the frame in its metadata's dtype and shape (a 1-D `uint8`
    /// array of its bytes where it has none): kDLCPU for host frames and host-visible Vulkan
    /// frames, kDLCUDA with `views="cuda"`. The capsule holds the frame: its slot is released
    /// once the frame object and every array made from it are gone.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let region = self.region()?;
        let layout = self.layout()?;
        // CUDA frames: the consumer waited for the frame on the host (the channel's filled
        // timeline or its FRAME message) before `recv` returned, so any stream may read it now.
        let stream = if region.device.0 == KDL_CUDA { None } else { stream };
        dlpack::export(py, &region, &layout, None, stream, max_version, dl_device, copy)
    }

    /// `(kDLCPU, 0)` or `(kDLCUDA, ordinal)`.
    fn __dlpack_device__(&self) -> PyResult<(i32, i32)> {
        Ok(self.region()?.device)
    }

    /// A typed view of the frame's bytes, READ-ONLY, holding the frame like a capsule does:
    /// with no arguments, the metadata's dtype and shape (1-D `uint8` without one); else `dtype`,
    /// `shape`, `strides` in elements and `offset` in bytes. `numpy.asarray(frame.view())` reads
    /// it through the array interface (the array keeps the view, which keeps the frame).
    #[pyo3(signature = (dtype=None, shape=None, strides=None, offset=0))]
    fn view(
        &self,
        dtype: Option<&Bound<'_, PyAny>>,
        shape: Option<&Bound<'_, PyAny>>,
        strides: Option<&Bound<'_, PyAny>>,
        offset: u64,
    ) -> PyResult<Tensor> {
        match (dtype, shape) {
            (None, None) if offset == 0 && strides.is_none_or(|s| s.is_none()) => {
                Ok(Tensor { region: self.region()?, layout: self.layout()?, ready: None })
            }
            (Some(dtype), Some(shape)) => dlpack::view(self.region()?, None, dtype, shape, strides, offset),
            _ => Err(invalid(
                "ReadFrame.view() arguments",
                "a view needs both a dtype and a shape, or neither (the metadata's)",
                "pass dtype and shape, or nothing",
            )),
        }
    }

    /// Whether `release()` was called.
    #[getter]
    fn released(&self) -> bool {
        lock(&self.lease).is_none()
    }

    /// Drops this object's hold on the frame: the producer gets the slot back once no view or
    /// array made from the frame is alive either.
    fn release(&self, py: Python<'_>) {
        let lease = lock(&self.lease).take();
        py.detach(move || drop(lease));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) {
        self.release(py);
    }

    fn __repr__(&self) -> String {
        format!("lava_flow.ReadFrame(sequence={}, len={})", self.sequence, self.data_len())
    }
}

// ---------------------------------------------------------------------------------------------
// Channel

/// Opens channel ends: `Channel.producer(...)` and `Channel.consumer(...)`.
#[pyclass(module = "lava_flow", frozen)]
pub struct Channel;

#[pymethods]
impl Channel {
    /// Creates a producer listening at `path` (a socket file, mode 0600): `slots` frames of
    /// `frame_size` bytes in `memory` (`"vulkan"`: exportable host-visible Vulkan buffers;
    /// `"host"`: sealed memfds, no GPU needed); `policy` `"block"` (acquire waits for a slot) or
    /// `"drop-oldest"`; `timeout` seconds for blocking calls; `max_consumers` at once.
    #[staticmethod]
    #[pyo3(signature = (path, frame_size, slots=4, memory="vulkan", policy="block", timeout=10.0, max_consumers=8))]
    #[allow(clippy::too_many_arguments)]
    fn producer(
        py: Python<'_>,
        path: std::path::PathBuf,
        frame_size: u64,
        slots: u32,
        memory: &str,
        policy: &str,
        timeout: f64,
        max_consumers: u32,
    ) -> PyResult<Producer> {
        let memory = match memory {
            "vulkan" => FrameMemory::Vulkan(lava_flow::vulkan::MemoryKind::HostVisible),
            "host" => FrameMemory::Host,
            other => {
                return Err(invalid(
                    format!("memory={other:?}"),
                    "channels know \"vulkan\" and \"host\" frames",
                    "pass one of those",
                ))
            }
        };
        let policy: Policy = policy.parse().map_err(crate::errors::to_py)?;
        let timeout = seconds("timeout", timeout)?;
        let options =
            ChannelOptions { slots, frame_size, memory, policy, timeout, max_consumers, ..ChannelOptions::default() };
        let p = path.clone();
        let producer = py.detach(move || RustChannel::producer(&p, options)).py_err()?;
        Ok(Producer {
            shared: Mutex::new(Some(Arc::new(ProducerShared {
                producer: Mutex::new(producer),
                returns: Mutex::new(Vec::new()),
            }))),
            path: path.display().to_string(),
            frame_size,
            slots,
            timeout,
        })
    }

    /// Connects to the producer at `path`, retrying until one listens or `timeout` seconds pass,
    /// and maps its frames. `views="cuda"`: also import every frame into CUDA once (Vulkan
    /// frames, on the producer's GPU), for kDLCUDA exports.
    #[staticmethod]
    #[pyo3(signature = (path, timeout=10.0, views=None))]
    fn consumer(py: Python<'_>, path: std::path::PathBuf, timeout: f64, views: Option<&str>) -> PyResult<Consumer> {
        let timeout = seconds("timeout", timeout)?;
        let (views, cuda) = match views {
            None => (Views::default(), false),
            Some("cuda") => (Views::matching(ViewApi::Cuda).py_err()?, true),
            Some(other) => {
                return Err(invalid(
                    format!("views={other:?}"),
                    "the Python package views frames in \"cuda\" (or None: host only)",
                    "pass views=\"cuda\" or None",
                ))
            }
        };
        let options = ChannelOptions { timeout, views, ..ChannelOptions::default() };
        let consumer = py.detach(move || RustChannel::consumer(&path, options)).py_err()?;
        Ok(Consumer {
            timeout,
            frame_size: consumer.frame_size(),
            slots: consumer.slots(),
            vulkan: consumer.is_vulkan(),
            cuda,
            shared: Mutex::new(Some(Arc::new(ConsumerShared {
                consumer: Mutex::new(consumer),
                releases: Mutex::new(Vec::new()),
            }))),
        })
    }
}
