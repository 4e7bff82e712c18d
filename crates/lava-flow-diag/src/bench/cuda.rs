//! Benchmarks of the CUDA importer against the bare driver calls, measured in the same run:
//! `lava-flow bench` prints [`run`]'s rows, `cargo bench --bench cuda` runs the same
//! measurements under criterion through [`Fixture`].
//!
//! Every case times lava-flow's API and the raw CUDA/Vulkan calls that do the same work,
//! interleaved, on the same device:
//! - `copy-bandwidth/{memcpy,kernel}/SIZE`: copies between two imported device-local buffers
//!   against two `cuMemAlloc` buffers (GB/s counting bytes read and written);
//! - `export-import-map/SIZE`: `export_fd` + `CudaDevice::import_buffer` against
//!   `vkGetMemoryFdKHR` + `cuImportExternalMemory` + `cuExternalMemoryGetMappedBuffer` (us);
//! - `semaphore-round-trip/timeline` (median) and `.../timeline/p99`: host `vkSignalSemaphore(n)`
//!   -> `vkQueueSubmit` waiting n, signalling n+1 -> CUDA stream wait n+1, signal n+2 ->
//!   `vkQueueSubmit` waiting n+2, signalling n+3 -> host `vkWaitSemaphores(n+3)`, through
//!   `CudaSemaphore` against `cuWait/SignalExternalSemaphoresAsync` ([`SemaphoreRoundTrips`]);
//!   `.../timeline-spin` and its p99: the same with the host polling the counter instead of
//!   sleeping in `vkWaitSemaphores`, so the two show what waking the host thread costs;
//!   `.../timeline-sync-api` and its p99: lava-flow's side through the public `vulkan::sync` API
//!   ([`VulkanPath`]); `.../vulkan-leg` and `.../cuda-leg`: host -> Vulkan -> host and host ->
//!   CUDA -> host alone ([`Route`]), so a slow round trip shows where its time goes;
//! - `pooled-import/{cached,uncached,cached-vs-map}/64KiB`: CUDA imports of pooled buffers
//!   through the block cache against the bare import + map and the bare map ([`PooledImports`]);
//! - `share-vs-copy/{d2d,host}/SIZE`: sharing's one-time export + import + map against the copy
//!   a user would otherwise make at every hand-off (device to device, or read back through the
//!   host and uploaded again).

pub mod kernels;

use std::cell::Cell;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::ptr::{addr_of, addr_of_mut, NonNull};
use std::time::{Duration, Instant};

use ash::vk;
use cudarc::driver::sys;
use raw_gpu_handle::SemaphoreKind;

use self::kernels::Kernels;
use crate::raw_vk::{raw_export_fd, VkSemaphore};
use lava_flow::cuda::{check, driver_error, CudaBuffer, CudaDevice, CudaSemaphore};
use lava_flow::pool::{AllocationStrategy, CacheOutcome};
use lava_flow::vulkan::{BufferOptions, MemoryKind};
use lava_flow::{Buffer, DeviceSelector, Error, MemoryAllocator, Result, VulkanContext};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What to measure.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BenchConfig {
    /// Vulkan device index (`lava-flow info`); `None` picks the default device. The CUDA device
    /// is the one with the same UUID.
    pub vulkan_device: Option<usize>,
    /// Buffer sizes for `export-import-map`.
    pub sizes: Vec<u64>,
    /// Timed repetitions per latency figure (the median is reported).
    pub iterations: usize,
    /// Size of each buffer in the bandwidth cases.
    pub bandwidth_bytes: u64,
    /// Copies per bandwidth trial.
    pub bandwidth_copies: usize,
    /// Bandwidth trials per side (the median is reported).
    pub bandwidth_trials: usize,
    /// Timed semaphore round trips per side and row (after as many again for warm-up, at most
    /// 100).
    pub semaphore_rounds: usize,
    /// Timed imports per `pooled-import` figure (after a tenth as many for warm-up, at most 20).
    #[serde(default = "default_import_iterations")]
    pub import_iterations: usize,
    /// Sizes for `share-vs-copy`.
    pub copy_sizes: Vec<u64>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            vulkan_device: None,
            sizes: vec![64 * KIB, MIB, 16 * MIB, 256 * MIB, GIB, 4 * GIB],
            iterations: 20,
            bandwidth_bytes: GIB,
            bandwidth_copies: 10,
            bandwidth_trials: 5,
            semaphore_rounds: 1000,
            import_iterations: default_import_iterations(),
            copy_sizes: vec![MIB, 64 * MIB, GIB],
        }
    }
}

fn default_import_iterations() -> usize {
    300
}

impl BenchConfig {
    /// A run of a few seconds, for smoke checks.
    pub fn quick() -> Self {
        BenchConfig {
            vulkan_device: None,
            sizes: vec![64 * KIB, 16 * MIB],
            iterations: 5,
            bandwidth_bytes: 64 * MIB,
            bandwidth_copies: 4,
            bandwidth_trials: 3,
            semaphore_rounds: 100,
            import_iterations: 50,
            copy_sizes: vec![MIB],
        }
    }
}

pub use super::Row;

/// A measured row of the cuda group; `note` says how to read it.
fn measured(case: String, lava_flow: f64, raw: f64, unit: &'static str, note: &str) -> Row {
    Row { note: (!note.is_empty()).then(|| note.to_string()), ..Row::new("cuda", case, lava_flow, Some(raw), unit) }
}

/// A row of the cuda group that could not be measured, and why.
fn failed(case: String, unit: &'static str, error: &dyn std::fmt::Display) -> Row {
    Row::not_measured("cuda", case, unit, error.to_string())
}

/// Human size for case names: 64KiB, 16MiB, 4GiB.
pub fn size_name(bytes: u64) -> String {
    if bytes >= GIB && bytes % GIB == 0 {
        format!("{}GiB", bytes / GIB)
    } else if bytes >= MIB && bytes % MIB == 0 {
        format!("{}MiB", bytes / MIB)
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!("{}KiB", bytes / KIB)
    } else {
        format!("{bytes}B")
    }
}

use super::median;

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Which implementation a measurement uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// lava-flow's API.
    LavaFlow,
    /// The bare CUDA driver and Vulkan calls.
    Raw,
}

/// A device allocation made with `cuMemAlloc`, freed on drop.
struct NativeAlloc {
    device: CudaDevice,
    ptr: sys::CUdeviceptr,
}

impl NativeAlloc {
    fn new(device: &CudaDevice, bytes: u64) -> Result<NativeAlloc> {
        device.bind()?;
        let mut ptr = 0;
        // SAFETY: bind() made the context current; `ptr` is a valid out-pointer.
        let r = unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes as usize) };
        check(r, "cuMemAlloc_v2", || format!("allocating {bytes} bytes of native CUDA memory"))?;
        Ok(NativeAlloc { device: device.clone(), ptr })
    }
}

impl Drop for NativeAlloc {
    fn drop(&mut self) {
        if self.device.bind_for_drop("native CUDA memory") {
            // SAFETY: ptr came from cuMemAlloc in `new` and is freed only here, once; the context is
            // current; cuMemFree synchronizes with work still using it.
            let r = unsafe { sys::cuMemFree_v2(self.ptr) };
            if r != sys::CUresult::CUDA_SUCCESS {
                self.device.defer_error(lava_flow::cuda::cu_error("cuMemFree_v2", r, "freeing native CUDA memory"));
            }
        }
    }
}

/// A stream made with `cuStreamCreate` for the raw side, destroyed on drop.
struct RawStream {
    device: CudaDevice,
    stream: sys::CUstream,
}

impl RawStream {
    fn new(device: &CudaDevice) -> Result<RawStream> {
        device.bind()?;
        let mut stream: sys::CUstream = std::ptr::null_mut();
        // SAFETY: bind() made the context current; `stream` is a valid out-pointer. Flag 1 is
        // CU_STREAM_NON_BLOCKING, as cudarc's streams.
        let r = unsafe { sys::cuStreamCreate(&mut stream, 1) };
        check(r, "cuStreamCreate", || "creating a stream for the raw measurements".into())?;
        Ok(RawStream { device: device.clone(), stream })
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        if self.device.bind_for_drop("a raw stream") {
            // SAFETY: created in `new` and destroyed only here, once; the context is current. Work still
            // queued on it is allowed: CUDA releases the stream once that work completed.
            unsafe { sys::cuStreamDestroy_v2(self.stream) };
        }
    }
}

/// A `cuImportExternalMemory` made by the raw calls, destroyed on drop.
struct RawImport {
    device: CudaDevice,
    ext: sys::CUexternalMemory,
}

impl RawImport {
    /// The bare import: what lava-flow's import does, without its checks, fd duplication and
    /// bookkeeping. The caller makes the context current.
    fn new(device: &CudaDevice, fd: OwnedFd, allocation_size: u64, dedicated: bool) -> Result<RawImport> {
        let mut desc = sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC {
            type_: sys::CUexternalMemoryHandleType::CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD,
            // SAFETY: every field of the handle union is an integer or a raw pointer: all-zero is valid.
            handle: unsafe { std::mem::zeroed() },
            size: allocation_size,
            flags: if dedicated { sys::CUDA_EXTERNAL_MEMORY_DEDICATED } else { 0 },
            reserved: [0; 16],
        };
        desc.handle.fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let mut ext: sys::CUexternalMemory = std::ptr::null_mut();
        // SAFETY: the caller made the context current; desc is fully initialised; the fd is open (owned
        // by `fd` until after the call); `ext` is a valid out-pointer.
        let r = unsafe { sys::cuImportExternalMemory(&mut ext, &desc) };
        // On success the driver owns the fd. On failure it is left to the driver too: a driver may
        // close it even then, so closing it here could close an unrelated fd that reused the number.
        // lava-flow's import avoids this with a duplicate; the raw route does not pay for one.
        let _ = fd.into_raw_fd();
        check(r, "cuImportExternalMemory", || "raw import".into())?;
        Ok(RawImport { device: device.clone(), ext })
    }

    /// The bare `cuExternalMemoryGetMappedBuffer` of `size` bytes at `offset`.
    fn map(&self, offset: u64, size: u64) -> Result<RawMapping> {
        let buf = sys::CUDA_EXTERNAL_MEMORY_BUFFER_DESC { offset, size, flags: 0, reserved: [0; 16] };
        let mut ptr = 0;
        // SAFETY: the caller made the context current; self.ext is a live import; buf is initialised
        // (range chosen by the benchmark inside the allocation); `ptr` is a valid out-pointer.
        let r = unsafe { sys::cuExternalMemoryGetMappedBuffer(&mut ptr, self.ext, &buf) };
        check(r, "cuExternalMemoryGetMappedBuffer", || "raw map".into())?;
        Ok(RawMapping { device: self.device.clone(), ptr })
    }
}

impl Drop for RawImport {
    fn drop(&mut self) {
        if self.device.bind_for_drop("a raw import") {
            // SAFETY: imported in `new`, destroyed only here, once; every mapping of it is freed
            // first: RawImportMap declares the mapping before the import (so it drops first), and
            // PooledImports::raw_offset_map drops its mapping before returning.
            unsafe { sys::cuDestroyExternalMemory(self.ext) };
        }
    }
}

/// A `cuExternalMemoryGetMappedBuffer` made by the raw calls, freed on drop.
struct RawMapping {
    device: CudaDevice,
    ptr: sys::CUdeviceptr,
}

impl Drop for RawMapping {
    fn drop(&mut self) {
        if self.device.bind_for_drop("a raw mapping") {
            // SAFETY: ptr came from cuExternalMemoryGetMappedBuffer on a live import and is freed only here,
            // once; cuMemFree synchronizes with work still using it.
            unsafe { sys::cuMemFree_v2(self.ptr) };
        }
    }
}

/// A raw import with one mapping; the fields drop in order, so the mapping goes first.
struct RawImportMap {
    _mapping: RawMapping,
    _import: RawImport,
}

/// The bare import + map of `size` bytes at `offset` of an allocation of `allocation_size`.
fn raw_import_map(
    device: &CudaDevice,
    fd: OwnedFd,
    allocation_size: u64,
    dedicated: bool,
    offset: u64,
    size: u64,
) -> Result<RawImportMap> {
    let import = RawImport::new(device, fd, allocation_size, dedicated)?;
    Ok(RawImportMap { _mapping: import.map(offset, size)?, _import: import })
}

/// A Vulkan context, the CUDA device with its UUID, and lava-flow's kernels: what every
/// measurement needs. Public so criterion benches can time single cases with `iter_custom`.
pub struct Fixture {
    ctx: VulkanContext,
    cuda: CudaDevice,
    kernels: Kernels,
}

impl Fixture {
    /// Opens the Vulkan device (`None`: default) and the CUDA device with its UUID.
    pub fn new(vulkan_device: Option<usize>) -> Result<Fixture> {
        let ctx = VulkanContext::with_selector(vulkan_device.map_or(DeviceSelector::Default, DeviceSelector::Index))?;
        let cuda = CudaDevice::for_identity(&ctx.identity())?;
        let kernels = Kernels::load(&cuda)?;
        Ok(Fixture { ctx, cuda, kernels })
    }

    /// The Vulkan context.
    pub fn vulkan(&self) -> &VulkanContext {
        &self.ctx
    }

    /// The CUDA device.
    pub fn cuda(&self) -> &CudaDevice {
        &self.cuda
    }

    /// An exportable device-local buffer of `size` bytes.
    pub fn buffer(&self, size: u64) -> Result<Buffer> {
        Buffer::new(&self.ctx, &BufferOptions::new(size))
    }

    /// Total time of `iters` export + import + map of `buffer` (unmapping and releasing are not
    /// timed).
    pub fn export_import_map(&self, buffer: &Buffer, side: Side, iters: u64) -> Result<Duration> {
        let mut total = Duration::ZERO;
        let memory = buffer.memory();
        let dedicated = memory.dedicated();
        // The raw route calls vkGetMemoryFdKHR directly, which Vulkan allows only on memory
        // allocated exportable as an opaque fd.
        if side == Side::Raw
            && (memory.origin() != lava_flow::vulkan::MemoryOrigin::Allocated
                || memory.external_handle_kind() != Some(raw_gpu_handle::MemoryHandleKind::OpaqueFd))
        {
            return Err(Error::invalid(
                "a raw export of this buffer",
                "its memory was not allocated exportable as an opaque fd (VUID-VkMemoryGetFdInfoKHR-handleType-00671)",
                "time an exportable buffer (Fixture::buffer)",
            ));
        }
        for _ in 0..iters {
            match side {
                Side::LavaFlow => {
                    let t = Instant::now();
                    let mapped = self.cuda.import_buffer(buffer.export_fd()?)?;
                    total += t.elapsed();
                    // Unmapping and releasing are outside the timed part.
                    drop(mapped);
                }
                Side::Raw => {
                    self.cuda.bind()?;
                    let t = Instant::now();
                    let fd = raw_export_fd(&self.ctx, memory.handle())?;
                    let mapped = raw_import_map(&self.cuda, fd, memory.size(), dedicated, 0, memory.size())?;
                    total += t.elapsed();
                    drop(mapped);
                }
            }
        }
        Ok(total)
    }

    /// Copies `bytes` `copies` times from `src` to `dst` on `stream`, timed with CUDA events.
    fn time_copies(
        &self,
        dst: sys::CUdeviceptr,
        src: sys::CUdeviceptr,
        bytes: u64,
        copies: usize,
        kernel: bool,
        stream: sys::CUstream,
    ) -> Result<Duration> {
        let ctx = self.cuda.context();
        let events = ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .and_then(|a| Ok((a, ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?)))
            .map_err(|e| driver_error("cuEventCreate", e, "creating timing events"))?;
        let record = |event: &cudarc::driver::CudaEvent| {
            // SAFETY: the event was created on this context (cudarc) and is alive; `stream` is a live stream
            // of the same context (callers pass lava-flow's); bind() runs before every record.
            check(unsafe { sys::cuEventRecord(event.cu_event(), stream) }, "cuEventRecord", || {
                "recording a timing event".into()
            })
        };
        self.cuda.bind()?;
        record(&events.0)?;
        for _ in 0..copies {
            if kernel {
                // SAFETY: callers pass two separate live allocations of at least `bytes` bytes each, 16-byte
                // aligned (imported buffers and cuMemAlloc memory), and lava-flow's live stream.
                unsafe { self.kernels.copy(dst, src, bytes, stream)? };
            } else {
                // SAFETY: as above; the context is current.
                let r = unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes as usize, stream) };
                check(r, "cuMemcpyDtoDAsync_v2", || format!("copying {bytes} bytes"))?;
            }
        }
        record(&events.1)?;
        let ms = events.0.elapsed_ms(&events.1).map_err(|e| driver_error("cuEventElapsedTime", e, "timing copies"))?;
        Ok(Duration::from_secs_f64(f64::from(ms) / 1e3))
    }

    /// Bandwidth figures (GB/s, read + write) of copies between two imported buffers and
    /// between two `cuMemAlloc` buffers of `bytes` each: (lava-flow, raw).
    pub fn copy_bandwidth(&self, bytes: u64, kernel: bool, copies: usize, trials: usize) -> Result<(f64, f64)> {
        let bytes = bytes & !15;
        let (va, vb) = (self.buffer(bytes)?, self.buffer(bytes)?);
        let a = self.cuda.import_buffer(va.export_fd()?)?;
        let b = self.cuda.import_buffer(vb.export_fd()?)?;
        let na = NativeAlloc::new(&self.cuda, bytes)?;
        let nb = NativeAlloc::new(&self.cuda, bytes)?;
        let stream = self.cuda.stream().cu_stream();
        let gbps = |d: Duration| 2.0 * bytes as f64 * copies as f64 / d.as_secs_f64() / 1e9;
        // Warm-up: first touches, clocks, JIT.
        self.time_copies(b.device_ptr_raw(), a.device_ptr_raw(), bytes, 1, kernel, stream)?;
        self.time_copies(nb.ptr, na.ptr, bytes, 1, kernel, stream)?;
        let (mut lava, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..trials.max(1) {
            lava.push(gbps(self.time_copies(b.device_ptr_raw(), a.device_ptr_raw(), bytes, copies, kernel, stream)?));
            raw.push(gbps(self.time_copies(nb.ptr, na.ptr, bytes, copies, kernel, stream)?));
        }
        Ok((median(lava), median(raw)))
    }

    /// Both sides' objects for timeline round trips (see [`SemaphoreRoundTrips`]).
    pub fn round_trips(&self) -> Result<SemaphoreRoundTrips> {
        Ok(SemaphoreRoundTrips {
            cuda: self.cuda.clone(),
            lava: RoundTripSide::new(self, Side::LavaFlow, VulkanPath::Prepared)?,
            // Kept as an error rather than failing every round trip: only its own rows need it.
            lava_sync_api: RoundTripSide::new(self, Side::LavaFlow, VulkanPath::SyncApi),
            raw: RoundTripSide::new(self, Side::Raw, VulkanPath::Prepared)?,
        })
    }

    /// Times `rounds` round trips of one side (prepared submissions, blocking host wait), after
    /// setting the sides up untimed; returns each round's duration. For criterion's `iter_custom`.
    pub fn semaphore_round_trips(&self, side: Side, rounds: u64) -> Result<Vec<Duration>> {
        let mut trips = self.round_trips()?;
        (0..rounds).map(|_| trips.round(side, VulkanPath::Prepared, HostWait::Blocking, Route::Full)).collect()
    }

    /// Imports into CUDA of further pooled buffers (see [`PooledImports`]).
    pub fn pooled_imports(&self) -> Result<PooledImports> {
        PooledImports::new(self)
    }

    /// Median time of the device-to-device copy a user would make instead of sharing: from an
    /// imported buffer into `cuMemAlloc` memory.
    pub fn d2d_copy(&self, bytes: u64, iterations: usize) -> Result<f64> {
        let vulkan = self.buffer(bytes)?;
        let src = self.cuda.import_buffer(vulkan.export_fd()?)?;
        let dst = NativeAlloc::new(&self.cuda, bytes)?;
        let stream = self.cuda.stream().cu_stream();
        let mut times = Vec::new();
        for i in 0..iterations + 1 {
            self.cuda.bind()?;
            let t = Instant::now();
            check(
                // SAFETY: the context is current; dst (cuMemAlloc) and src (an imported mapping)
                // both hold `bytes` bytes, are separate allocations, and live until after the
                // stream is synchronised (both are dropped at the end of the function).
                unsafe { sys::cuMemcpyDtoDAsync_v2(dst.ptr, src.device_ptr_raw(), bytes as usize, stream) },
                "cuMemcpyDtoDAsync_v2",
                || "copying".into(),
            )?;
            self.cuda.synchronize()?;
            if i > 0 {
                times.push(micros(t.elapsed()));
            }
        }
        Ok(median(times))
    }

    /// Median time of the copy through the host a user would make instead of sharing: Vulkan
    /// copies into a host-visible buffer, CUDA uploads from its mapping into `cuMemAlloc` memory.
    pub fn host_copy(&self, bytes: u64, iterations: usize) -> Result<f64> {
        let src = self.buffer(bytes)?;
        let mut staging =
            Buffer::new(&self.ctx, &BufferOptions::new(bytes).memory(MemoryKind::HostVisible).export(None))?;
        let dst = NativeAlloc::new(&self.cuda, bytes)?;
        let stream = self.cuda.stream().cu_stream();
        let mut times = Vec::new();
        for i in 0..iterations + 1 {
            let t = Instant::now();
            src.copy_to(&staging)?;
            let mapped = staging.map()?;
            self.cuda.bind()?;
            check(
                // SAFETY: the context is current; the private staging buffer's mapping holds
                // mapped.len() bytes, as does dst; the mapping is pageable memory to CUDA, so the
                // call has read it before returning (CUDA stages pageable uploads), and the guard
                // keeps it mapped until then anyway.
                unsafe { sys::cuMemcpyHtoDAsync_v2(dst.ptr, mapped.as_ptr().cast(), mapped.len(), stream) },
                "cuMemcpyHtoDAsync_v2",
                || "uploading".into(),
            )?;
            self.cuda.synchronize()?;
            if i > 0 {
                times.push(micros(t.elapsed()));
            }
        }
        Ok(median(times))
    }

    /// Median export + import + map latency in us of a buffer of `bytes`: (lava-flow, raw),
    /// interleaved, after one warm-up of each.
    pub fn export_import_map_median(&self, bytes: u64, iterations: usize) -> Result<(f64, f64)> {
        let buffer = self.buffer(bytes)?;
        self.export_import_map(&buffer, Side::LavaFlow, 1)?;
        self.export_import_map(&buffer, Side::Raw, 1)?;
        let (mut lava, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..iterations.max(1) {
            lava.push(micros(self.export_import_map(&buffer, Side::LavaFlow, 1)?));
            raw.push(micros(self.export_import_map(&buffer, Side::Raw, 1)?));
        }
        Ok((median(lava), median(raw)))
    }

    fn free_memory(&self) -> u64 {
        self.cuda.mem_get_info().map(|(free, _)| free).unwrap_or(u64::MAX)
    }
}

/// How long one round trip may take before the benchmark calls the GPU stuck.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// How the host waits for a round trip's last value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostWait {
    /// One `vkWaitSemaphores` call: the driver decides how the thread sleeps and wakes.
    Blocking,
    /// `vkGetSemaphoreCounterValue` in a busy loop: the difference to [`HostWait::Blocking`] is
    /// what waking a sleeping thread costs.
    Spin,
}

/// Which part of the round trip a round runs: the whole case, or one leg of it, so a slow
/// round trip shows which side it loses its time on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// host signal n -> Vulkan (wait n, signal n+1) -> CUDA (wait n+1, signal n+2) -> Vulkan
    /// (wait n+2, signal n+3) -> host wait n+3.
    Full,
    /// host signal n -> Vulkan (wait n, signal n+1) -> host wait n+1.
    VulkanLeg,
    /// host signal n -> CUDA stream (wait n, signal n+1) -> host wait n+1.
    CudaLeg,
}

/// An empty `vkQueueSubmit` batch that waits for a timeline semaphore at one value and signals
/// it at another. The `VkSubmitInfo`, its `VkTimelineSemaphoreSubmitInfo` and the arrays they
/// point to are built once, in one heap block whose address never changes; a submission only
/// rewrites the two values. The driver reads them during the call only, so one block serves
/// every submission. Not `Send`/`Sync` (it holds a raw pointer): one thread submits.
struct TimelineSubmit {
    parts: NonNull<SubmitParts>,
}

struct SubmitParts {
    semaphore: vk::Semaphore,
    stage: vk::PipelineStageFlags,
    /// The wait value, then the signal value.
    values: [u64; 2],
    timeline: vk::TimelineSemaphoreSubmitInfo<'static>,
    submit: vk::SubmitInfo<'static>,
}

impl TimelineSubmit {
    /// Submissions on `semaphore`, a timeline semaphore the caller keeps alive while submitting
    /// and until the submissions completed.
    fn new(semaphore: vk::Semaphore) -> TimelineSubmit {
        let parts = NonNull::from(Box::leak(Box::new(SubmitParts {
            semaphore,
            stage: vk::PipelineStageFlags::ALL_COMMANDS,
            values: [0; 2],
            timeline: vk::TimelineSemaphoreSubmitInfo::default(),
            submit: vk::SubmitInfo::default(),
        })));
        let p = parts.as_ptr();
        // SAFETY: p is the live block just leaked, reached only through this pointer; the pointers
        // stored into it point into the same block, which lives until Drop frees it.
        unsafe {
            let values = addr_of!((*p).values).cast::<u64>();
            (*p).timeline.wait_semaphore_value_count = 1;
            (*p).timeline.p_wait_semaphore_values = values;
            (*p).timeline.signal_semaphore_value_count = 1;
            (*p).timeline.p_signal_semaphore_values = values.add(1);
            (*p).submit.p_next = addr_of!((*p).timeline).cast::<c_void>();
            (*p).submit.wait_semaphore_count = 1;
            (*p).submit.p_wait_semaphores = addr_of!((*p).semaphore);
            (*p).submit.p_wait_dst_stage_mask = addr_of!((*p).stage);
            (*p).submit.signal_semaphore_count = 1;
            (*p).submit.p_signal_semaphores = addr_of!((*p).semaphore);
        }
        TimelineSubmit { parts }
    }

    /// Submits the batch: it waits until the semaphore reaches `wait`, then sets it to `signal`.
    fn submit(&self, ctx: &VulkanContext, wait: u64, signal: u64) -> Result<()> {
        let p = self.parts.as_ptr();
        // SAFETY: the block is live (freed only in Drop); only this value, which is neither Send nor
        // Sync, touches it, and no reference into `values` exists while it is rewritten. `submit` is
        // never written again, so the shared reference to it is not aliased by a write.
        let submit = unsafe {
            addr_of_mut!((*p).values).write([wait, signal]);
            &*addr_of!((*p).submit)
        };
        let device = ctx.device();
        ctx.with_queue(|queue| {
            // SAFETY: with_queue holds the queue mutex (external sync of vkQueueSubmit); the batch has no
            // command buffers; its structures point into the live block (see new); the semaphore is a live
            // timeline semaphore of this device (new's caller keeps it alive until its submissions ran).
            unsafe { device.queue_submit(queue, std::slice::from_ref(submit), vk::Fence::null()) }
        })
        .map_err(|r| Error::vk("vkQueueSubmit", r, format!("submitting a wait for {wait} and a signal of {signal}")))
    }
}

impl Drop for TimelineSubmit {
    fn drop(&mut self) {
        // SAFETY: the block was leaked from a Box in `new` and is freed only here, once; no pointer into
        // it is used after this.
        drop(unsafe { Box::from_raw(self.parts.as_ptr()) });
    }
}

/// Busy-waits until the timeline `semaphore` reaches `value` (`vkGetSemaphoreCounterValue`).
fn spin_wait(ctx: &VulkanContext, semaphore: vk::Semaphore, value: u64, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        // SAFETY: callers pass a live timeline semaphore of ctx's device; no external sync is needed.
        let now = unsafe { ctx.device().get_semaphore_counter_value(semaphore) }
            .map_err(|r| Error::vk("vkGetSemaphoreCounterValue", r, "polling a timeline semaphore"))?;
        if now >= value {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout {
                action: format!("waiting for a timeline semaphore to reach {value} (it is at {now})"),
                timeout,
            });
        }
        std::hint::spin_loop();
    }
}

/// One side's CUDA end of the round trip.
enum CudaEnd {
    /// lava-flow's import, waited for and signalled on lava-flow's stream.
    LavaFlow(CudaSemaphore),
    /// The bare import on a raw stream.
    Raw(Box<RawEnd>),
}

/// The bare semaphore import, its stream, and parameter blocks built once.
struct RawEnd {
    device: CudaDevice,
    semaphore: sys::CUexternalSemaphore,
    stream: RawStream,
    wait: sys::CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS,
    signal: sys::CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS,
}

impl Drop for RawEnd {
    fn drop(&mut self) {
        if self.device.bind_for_drop("a raw semaphore") {
            // SAFETY: imported once, destroyed only here, once; RoundTripSide drops this end only after
            // drain() saw its stream idle, so no enqueued wait or signal is pending. The stream goes after
            // (fields drop after this body).
            unsafe { sys::cuDestroyExternalSemaphore(self.semaphore) };
        }
    }
}

/// Which Vulkan API the lava-flow side of a round trip goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VulkanPath {
    /// The crate's plain-ash semaphore helpers and a prepared submission, as the raw side: the
    /// difference to raw is what `CudaSemaphore` and the host helpers add.
    Prepared,
    /// lava-flow's public `vulkan::sync` API: `Semaphore::signal`/`wait` on the host and a
    /// `Submission` per batch (with its checks and queue tracking): what a lava-flow user pays.
    SyncApi,
}

/// The Vulkan end of one side.
enum VulkanEnd {
    /// Created with the crate's helpers, submitted through the prepared batch.
    Prepared { semaphore: VkSemaphore, submit: TimelineSubmit },
    /// lava-flow's public synchronization API.
    SyncApi(lava_flow::vulkan::sync::Semaphore),
}

impl VulkanEnd {
    fn handle(&self) -> vk::Semaphore {
        match self {
            VulkanEnd::Prepared { semaphore, .. } => semaphore.semaphore,
            VulkanEnd::SyncApi(semaphore) => semaphore.handle(),
        }
    }
}

/// One side of the round trip: its own exportable timeline semaphore, imported into CUDA.
struct RoundTripSide {
    ctx: VulkanContext,
    cuda: CudaDevice,
    /// Whether the host calls are the bare ash ones.
    raw: bool,
    /// Dropped by hand once nothing pending uses it (see Drop).
    end: ManuallyDrop<CudaEnd>,
    /// Dropped by hand after `end`, once nothing pending uses it.
    vulkan: ManuallyDrop<VulkanEnd>,
    /// The first value of the next round (values only grow: 4 per round).
    next: u64,
    /// The highest value an operation issued so far signals: what Drop waits for.
    issued: u64,
}

impl RoundTripSide {
    /// The raw side for `Side::Raw` (ash and the bare CUDA calls, prepared submissions), else
    /// lava-flow's side through `path`.
    fn new(fx: &Fixture, side: Side, path: VulkanPath) -> Result<RoundTripSide> {
        let (vulkan, exported) = match (side, path) {
            (Side::LavaFlow, VulkanPath::SyncApi) => {
                use lava_flow::vulkan::sync::{Semaphore, SemaphoreHandleKind};
                let semaphore = Semaphore::exportable(&fx.ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd)?;
                let exported = semaphore.export()?;
                (VulkanEnd::SyncApi(semaphore), exported)
            }
            _ => {
                let semaphore = VkSemaphore::exportable(&fx.ctx, SemaphoreKind::Timeline)?;
                let exported = semaphore.export()?;
                let submit = TimelineSubmit::new(semaphore.semaphore);
                (VulkanEnd::Prepared { semaphore, submit }, exported)
            }
        };
        let end = match side {
            Side::LavaFlow => CudaEnd::LavaFlow(fx.cuda.import_semaphore(exported)?),
            Side::Raw => {
                // The stream first: nothing can fail after the import, which has no owner yet.
                let stream = RawStream::new(&fx.cuda)?;
                let mut desc = sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC {
                    type_: sys::CUexternalSemaphoreHandleType::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD,
                    // SAFETY: every field of the handle union is an integer or a raw pointer: all-zero is valid.
                    handle: unsafe { std::mem::zeroed() },
                    flags: 0,
                    reserved: [0; 16],
                };
                desc.handle.fd = std::os::fd::AsRawFd::as_raw_fd(&exported.handle);
                let mut handle: sys::CUexternalSemaphore = std::ptr::null_mut();
                // SAFETY: the context is current (RawStream::new bound it); desc is fully initialised; the fd is
                // open (owned by `exported.handle` until after the call); `handle` is a valid out-pointer.
                let r = unsafe { sys::cuImportExternalSemaphore(&mut handle, &desc) };
                // The driver owns the fd now, or may have closed it on failure (see RawImport::new).
                let _ = exported.handle.into_raw_fd();
                check(r, "cuImportExternalSemaphore", || "raw semaphore import".into())?;
                CudaEnd::Raw(Box::new(RawEnd {
                    device: fx.cuda.clone(),
                    semaphore: handle,
                    stream,
                    // SAFETY: integers and unions of integers: all-zero is valid.
                    wait: unsafe { std::mem::zeroed() },
                    // SAFETY: as above.
                    signal: unsafe { std::mem::zeroed() },
                }))
            }
        };
        Ok(RoundTripSide {
            ctx: fx.ctx.clone(),
            cuda: fx.cuda.clone(),
            raw: side == Side::Raw,
            end: ManuallyDrop::new(end),
            vulkan: ManuallyDrop::new(vulkan),
            next: 1,
            issued: 0,
        })
    }

    /// One round from value n along `route`. For [`Route::Full`]: host signal n -> Vulkan (wait
    /// n, signal n+1) -> CUDA stream (wait n+1, signal n+2) -> Vulkan (wait n+2, signal n+3) ->
    /// host wait n+3. Each wait is issued after the operation that satisfies it, so no
    /// submission waits for a value whose signal was not issued yet (which drivers may handle on
    /// a slower path). The CUDA context must be current. Returns the time from the host signal
    /// to the end of the host wait.
    fn round(&mut self, host_wait: HostWait, route: Route) -> Result<Duration> {
        let n = self.next;
        self.next += 4;
        let last = if route == Route::Full { n + 3 } else { n + 1 };
        let start = Instant::now();
        self.host_signal(n)?;
        self.issued = n;
        match route {
            Route::Full => {
                self.submit(n, n + 1)?;
                self.issued = n + 1;
                self.cuda_wait_signal(n + 1, n + 2)?;
                self.issued = n + 2;
                self.submit(n + 2, n + 3)?;
            }
            Route::VulkanLeg => self.submit(n, n + 1)?,
            Route::CudaLeg => self.cuda_wait_signal(n, n + 1)?,
        }
        self.issued = last;
        self.host_wait(last, host_wait)?;
        Ok(start.elapsed())
    }

    /// The host sets the timeline to `value`: lava-flow's helper or public API, or the bare
    /// `vkSignalSemaphore`.
    fn host_signal(&self, value: u64) -> Result<()> {
        match &*self.vulkan {
            VulkanEnd::SyncApi(semaphore) => semaphore.signal(value),
            VulkanEnd::Prepared { semaphore, .. } if !self.raw => semaphore.host_signal(value),
            VulkanEnd::Prepared { semaphore, .. } => {
                let info = vk::SemaphoreSignalInfo::default().semaphore(semaphore.semaphore).value(value);
                // SAFETY: a live timeline semaphore of this device (self.vulkan, dropped only in Drop); values
                // grow by 4 per round, so `value` exceeds the current value.
                unsafe { self.ctx.device().signal_semaphore(&info) }
                    .map_err(|r| Error::vk("vkSignalSemaphore", r, "raw host signal"))
            }
        }
    }

    /// An empty batch waiting for `wait` and signalling `signal`: the prepared one, or a
    /// `Submission` (whose `Submitted` handle is dropped: that never blocks).
    fn submit(&self, wait: u64, signal: u64) -> Result<()> {
        match &*self.vulkan {
            VulkanEnd::Prepared { submit, .. } => submit.submit(&self.ctx, wait, signal),
            VulkanEnd::SyncApi(semaphore) => lava_flow::vulkan::sync::Submission::new()
                .wait(semaphore, wait, vk::PipelineStageFlags::ALL_COMMANDS)
                .signal(semaphore, signal)
                .submit(&self.ctx)
                .map(drop),
        }
    }

    /// Enqueues a wait for `wait` and a signal of `signal` on the side's stream, without waiting:
    /// `CudaSemaphore::wait`/`signal` on lava-flow's stream, or the bare calls with parameter
    /// blocks built once on a raw stream.
    fn cuda_wait_signal(&mut self, wait_value: u64, signal_value: u64) -> Result<()> {
        match &mut *self.end {
            CudaEnd::LavaFlow(semaphore) => {
                let stream = self.cuda.stream();
                semaphore.wait(stream, wait_value)?;
                semaphore.signal(stream, signal_value)
            }
            CudaEnd::Raw(raw) => {
                let RawEnd { semaphore, stream, wait, signal, .. } = &mut **raw;
                wait.params.fence.value = wait_value;
                // SAFETY: the context is current (round's caller binds it); one live semaphore handle and one
                // parameter block, fields of `raw` that outlive the call (the driver copies them); the raw
                // stream is alive (dropped after this end).
                let r = unsafe { sys::cuWaitExternalSemaphoresAsync(&*semaphore, &*wait, 1, stream.stream) };
                check(r, "cuWaitExternalSemaphoresAsync", || "raw wait".into())?;
                signal.params.fence.value = signal_value;
                // SAFETY: as above.
                let r = unsafe { sys::cuSignalExternalSemaphoresAsync(&*semaphore, &*signal, 1, stream.stream) };
                check(r, "cuSignalExternalSemaphoresAsync", || "raw signal".into())
            }
        }
    }

    /// The host waits until the timeline reaches `value`: polling (every side alike), lava-flow's
    /// helper or public API, or the bare `vkWaitSemaphores`.
    fn host_wait(&self, value: u64, how: HostWait) -> Result<()> {
        let handle = self.vulkan.handle();
        match (how, &*self.vulkan) {
            (HostWait::Spin, _) => spin_wait(&self.ctx, handle, value, ROUND_TIMEOUT),
            (HostWait::Blocking, VulkanEnd::SyncApi(semaphore)) => semaphore.wait(value, ROUND_TIMEOUT),
            (HostWait::Blocking, VulkanEnd::Prepared { semaphore, .. }) if !self.raw => {
                semaphore.host_wait(value, ROUND_TIMEOUT)
            }
            (HostWait::Blocking, VulkanEnd::Prepared { .. }) => {
                let semaphores = [handle];
                let values = [value];
                let info = vk::SemaphoreWaitInfo::default().semaphores(&semaphores).values(&values);
                // SAFETY: a live timeline semaphore of this device; the arrays are locals that outlive the call.
                unsafe { self.ctx.device().wait_semaphores(&info, ROUND_TIMEOUT.as_nanos() as u64) }
                    .map_err(|r| Error::vk("vkWaitSemaphores", r, "raw host wait"))
            }
        }
    }

    /// Waits until everything issued has run: the semaphore reached the last value issued and
    /// the CUDA stream is idle. Immediate after a round that finished. Binds the context without
    /// taking the device's deferred errors (they are not this side's, and stay for the caller).
    fn drain(&self) -> Result<()> {
        if self.issued > 0 {
            spin_wait(&self.ctx, self.vulkan.handle(), self.issued, ROUND_TIMEOUT)?;
        }
        if !self.cuda.bind_for_drop("a semaphore round trip") {
            return Err(Error::invalid("the CUDA context", "it could not be bound", "see the deferred errors"));
        }
        let stream = match &*self.end {
            CudaEnd::LavaFlow(_) => self.cuda.stream().cu_stream(),
            CudaEnd::Raw(raw) => raw.stream.stream,
        };
        // SAFETY: bind_for_drop made the context current; the stream (lava-flow's, or the raw end's) is
        // alive, held by self.
        check(unsafe { sys::cuStreamSynchronize(stream) }, "cuStreamSynchronize", || {
            "waiting for a round trip's stream".into()
        })
    }
}

impl Drop for RoundTripSide {
    fn drop(&mut self) {
        if let Err(e) = self.drain() {
            // Destroying a semaphore that pending work still waits for is undefined: leak both
            // ends (and the raw stream) instead, and say so.
            self.cuda.defer_error(lava_flow::DeferredError::new(
                "a semaphore round trip did not finish; its semaphores are left undestroyed",
                e,
            ));
            return;
        }
        // SAFETY: drain() succeeded, so nothing pending uses either end; each is dropped once, here, and
        // never touched again: the CUDA end (and raw stream) before the Vulkan semaphore it imported.
        unsafe {
            ManuallyDrop::drop(&mut self.end);
            ManuallyDrop::drop(&mut self.vulkan);
        }
    }
}

/// Median and 99th percentile of a set of timings, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// The median.
    pub median: f64,
    /// The 99th percentile (nearest rank).
    pub p99: f64,
}

impl Percentiles {
    /// Of `samples` in microseconds (NaN figures when empty).
    pub fn of(mut samples: Vec<f64>) -> Percentiles {
        samples.sort_by(f64::total_cmp);
        let p99 = match samples.len() {
            0 => f64::NAN,
            n => samples[(n * 99).div_ceil(100) - 1],
        };
        Percentiles { median: median(samples), p99 }
    }
}

/// Timeline semaphore round trips host -> Vulkan -> CUDA stream -> Vulkan -> host, through
/// lava-flow (`CudaSemaphore` on lava-flow's stream, host signal and wait through lava-flow) and
/// through the bare calls (ash, `cuWait/SignalExternalSemaphoresAsync` on a raw stream), each
/// side on its own semaphore and stream. lava-flow's side comes twice ([`VulkanPath`]): with the
/// raw side's prepared Vulkan batches, so the difference is what `CudaSemaphore` and the host
/// helpers add; and through the public `vulkan::sync` API. One thread only.
pub struct SemaphoreRoundTrips {
    cuda: CudaDevice,
    lava: RoundTripSide,
    lava_sync_api: Result<RoundTripSide>,
    raw: RoundTripSide,
}

impl SemaphoreRoundTrips {
    /// One round of `side` (lava-flow's through `path`); the returned duration is from the host
    /// signal to the end of the host wait. Binding the CUDA context happens before the timed part.
    pub fn round(&mut self, side: Side, path: VulkanPath, host_wait: HostWait, route: Route) -> Result<Duration> {
        self.cuda.bind()?;
        match (side, path) {
            (Side::LavaFlow, VulkanPath::Prepared) => self.lava.round(host_wait, route),
            (Side::LavaFlow, VulkanPath::SyncApi) => match &mut self.lava_sync_api {
                Ok(side) => side.round(host_wait, route),
                Err(e) => Err(Error::invalid(
                    "a round trip through vulkan::sync",
                    format!("its semaphore could not be set up: {e}"),
                    "see the error",
                )),
            },
            (Side::Raw, _) => self.raw.round(host_wait, route),
        }
    }

    /// `warmup` untimed rounds of each side, then `rounds` timed ones, interleaved one by one
    /// (the side that goes first alternates): (lava-flow through `path`, raw) in microseconds.
    pub fn measure(
        &mut self,
        warmup: usize,
        rounds: usize,
        path: VulkanPath,
        host_wait: HostWait,
        route: Route,
    ) -> Result<(Percentiles, Percentiles)> {
        let (mut lava, mut raw) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
        for i in 0..warmup + rounds {
            let order = if i % 2 == 0 { [Side::LavaFlow, Side::Raw] } else { [Side::Raw, Side::LavaFlow] };
            for side in order {
                let t = micros(self.round(side, path, host_wait, route)?);
                if i >= warmup {
                    match side {
                        Side::LavaFlow => lava.push(t),
                        Side::Raw => raw.push(t),
                    }
                }
            }
        }
        Ok((Percentiles::of(lava), Percentiles::of(raw)))
    }
}

/// Size of the buffers of the `pooled-import` cases.
pub const POOLED_SIZE: u64 = 64 * KIB;

/// Imports into CUDA of further 64 KiB buffers of pooled blocks, one sample at a time (the
/// export is prepared and the result released outside the timed part):
/// - [`cached`](Self::cached): `import_buffer` of a buffer whose block this device holds
///   imported (a cache hit: a view into the block's mapping; its fd is closed);
/// - [`uncached`](Self::uncached): `import_buffer` of a buffer whose block is not imported (a
///   miss: `cuImportExternalMemory` of the block and one mapping of the whole block);
/// - [`raw_fresh`](Self::raw_fresh): the bare `cuImportExternalMemory` of the block and
///   `cuExternalMemoryGetMappedBuffer` of the buffer at its offset;
/// - [`raw_offset_map`](Self::raw_offset_map): the bare `cuExternalMemoryGetMappedBuffer` of
///   the buffer on a block imported beforehand (what a cache of imports with a mapping per
///   buffer would pay on a hit).
pub struct PooledImports {
    cuda: CudaDevice,
    /// Held imported by `_anchor`, so lava-flow's imports of its other buffers are hits.
    cached_block: Vec<Buffer>,
    /// Never held imported, so lava-flow's imports of it are misses.
    fresh_block: Vec<Buffer>,
    _anchor: CudaBuffer<u8>,
    raw_import: RawImport,
    next: Cell<usize>,
    _allocators: [MemoryAllocator; 2],
}

impl PooledImports {
    fn new(fx: &Fixture) -> Result<PooledImports> {
        let index = fx.ctx.info().index;
        let options = BufferOptions::new(POOLED_SIZE).strategy(AllocationStrategy::Pooled);
        // Two allocators: two pools, so two blocks.
        let allocators = [MemoryAllocator::with_context(fx.ctx.clone()), MemoryAllocator::with_context(fx.ctx.clone())];
        let block = |allocator: &MemoryAllocator| -> Result<Vec<Buffer>> {
            let buffers: Vec<Buffer> =
                (0..8).map(|_| allocator.allocate_buffer(index, &options)).collect::<Result<_>>()?;
            let id = buffers[0].memory().allocation_id();
            if buffers.iter().any(|b| b.memory().allocation_id() != id) {
                return Err(Error::invalid(
                    "eight pooled 64 KiB buffers",
                    "they did not come from one block",
                    "check the pool's block size (PoolConfig)",
                ));
            }
            Ok(buffers)
        };
        let cached_block = block(&allocators[0])?;
        let fresh_block = block(&allocators[1])?;
        let first = cached_block[0].export_fd()?;
        let d = first.memory.description;
        if d.dedicated || d.allocation_id.is_none() {
            return Err(Error::invalid(
                "a pooled buffer's export",
                "it names no block (dedicated, or without an allocation id)",
                "allocate with AllocationStrategy::Pooled",
            ));
        }
        let anchor = fx.cuda.import_buffer(first)?;
        fx.cuda.bind()?;
        let raw_import =
            RawImport::new(&fx.cuda, cached_block[0].export_fd()?.memory.handle, d.allocation_size, false)?;
        Ok(PooledImports {
            cuda: fx.cuda.clone(),
            cached_block,
            fresh_block,
            _anchor: anchor,
            raw_import,
            next: Cell::new(1),
            _allocators: allocators,
        })
    }

    /// The next of the blocks' further buffers (index 1 to 7, round robin).
    fn next_index(&self) -> usize {
        let i = self.next.get();
        self.next.set(if i + 1 < self.cached_block.len() { i + 1 } else { 1 });
        i
    }

    /// One lava-flow import of a further buffer of the cached block (must be a hit).
    pub fn cached(&self) -> Result<Duration> {
        let exported = self.cached_block[self.next_index()].export_fd()?;
        let start = Instant::now();
        let (buffer, outcome) = self.cuda.import_buffer_cached(exported)?;
        let t = start.elapsed();
        drop(buffer);
        expect_outcome(outcome, CacheOutcome::Hit)?;
        Ok(t)
    }

    /// One lava-flow import of a buffer of the block that is not held imported (must be a miss).
    pub fn uncached(&self) -> Result<Duration> {
        let exported = self.fresh_block[self.next_index()].export_fd()?;
        let start = Instant::now();
        let (buffer, outcome) = self.cuda.import_buffer_cached(exported)?;
        let t = start.elapsed();
        drop(buffer);
        expect_outcome(outcome, CacheOutcome::Miss)?;
        Ok(t)
    }

    /// One bare import of the block plus a mapping of a further buffer at its offset.
    pub fn raw_fresh(&self) -> Result<Duration> {
        let exported = self.cached_block[self.next_index()].export_fd()?;
        let (d, place) = (exported.memory.description, exported.buffer);
        self.cuda.bind()?;
        let start = Instant::now();
        let mapped =
            raw_import_map(&self.cuda, exported.memory.handle, d.allocation_size, false, place.offset, place.size)?;
        let t = start.elapsed();
        drop(mapped);
        Ok(t)
    }

    /// One bare mapping of a further buffer at its offset, on the block imported beforehand.
    pub fn raw_offset_map(&self) -> Result<Duration> {
        let buffer = &self.cached_block[self.next_index()];
        let (offset, size) = (buffer.offset(), buffer.size());
        self.cuda.bind()?;
        let start = Instant::now();
        let mapping = self.raw_import.map(offset, size)?;
        let t = start.elapsed();
        drop(mapping);
        Ok(t)
    }

    /// `warmup` + `iterations` rounds of all four, interleaved: medians in us of (cached,
    /// uncached, raw fresh, raw offset map).
    pub fn measure(&self, warmup: usize, iterations: usize) -> Result<[f64; 4]> {
        let mut samples: [Vec<f64>; 4] = Default::default();
        for i in 0..warmup + iterations.max(1) {
            let round = [self.cached()?, self.uncached()?, self.raw_fresh()?, self.raw_offset_map()?];
            if i >= warmup {
                for (s, t) in samples.iter_mut().zip(round) {
                    s.push(micros(t));
                }
            }
        }
        Ok(samples.map(median))
    }
}

fn expect_outcome(outcome: CacheOutcome, expected: CacheOutcome) -> Result<()> {
    if outcome == expected {
        return Ok(());
    }
    Err(Error::invalid(
        "a pooled-import sample",
        format!("the block cache reported {outcome:?} where the case measures {expected:?}"),
        "run the case alone: another importer of this device changed what is cached",
    ))
}

fn too_big(what: &str, needed: u64, free: u64) -> Error {
    Error::OutOfMemory {
        code: None,
        what: format!("{what} needs about {} and the device has {} free", size_name(needed), size_name(free)),
        advice: "run with smaller sizes".into(),
    }
}

/// Runs every case of `config` and returns one row each. Fails only when the devices cannot
/// be opened; a case that fails gets a row with its error.
pub fn run(config: &BenchConfig) -> Result<Vec<Row>> {
    let fx = Fixture::new(config.vulkan_device)?;
    let mut rows = Vec::new();

    for kernel in [false, true] {
        let method = if kernel { "kernel" } else { "memcpy" };
        let case = format!("copy-bandwidth/{method}/{}", size_name(config.bandwidth_bytes));
        let free = fx.free_memory();
        let result = if config.bandwidth_bytes.saturating_mul(5) > free {
            Err(too_big("the bandwidth case", config.bandwidth_bytes * 4, free))
        } else {
            fx.copy_bandwidth(config.bandwidth_bytes, kernel, config.bandwidth_copies, config.bandwidth_trials)
        };
        rows.push(match result {
            Ok((lava, raw)) => measured(
                case,
                lava,
                raw,
                "GB/s",
                "copies between imported Vulkan memory vs between cuMemAlloc memory (bytes read + written)",
            ),
            Err(e) => failed(case, "GB/s", &e),
        });
    }

    for &size in &config.sizes {
        let case = format!("export-import-map/{}", size_name(size));
        let free = fx.free_memory();
        let result = if size.saturating_mul(3) > free {
            Err(too_big("this size", size, free))
        } else {
            fx.export_import_map_median(size, config.iterations)
        };
        rows.push(match result {
            Ok((lava, raw)) => measured(
                case,
                lava,
                raw,
                "us",
                "export_fd + import_buffer vs vkGetMemoryFdKHR + cuImportExternalMemory + cuExternalMemoryGetMappedBuffer",
            ),
            Err(e) => failed(case, "us", &e),
        });
    }

    let rounds = config.semaphore_rounds.max(1);
    let warmup = rounds.min(100);
    let mut trips = fx.round_trips();
    let chain = "host vkSignalSemaphore(n) -> vkQueueSubmit(wait n, signal n+1) -> CUDA stream wait n+1, signal n+2 \
                 -> vkQueueSubmit(wait n+2, signal n+3) -> host";
    let compared =
        "lava-flow's CudaSemaphore and host helpers vs ash + cuWait/SignalExternalSemaphoresAsync, interleaved";
    let prepared = VulkanPath::Prepared;
    for (name, path, host_wait, route, with_p99, note) in [
        (
            "timeline",
            prepared,
            HostWait::Blocking,
            Route::Full,
            true,
            format!("{chain} vkWaitSemaphores(n+3); {compared}"),
        ),
        (
            "timeline-spin",
            prepared,
            HostWait::Spin,
            Route::Full,
            true,
            format!("{chain} polls vkGetSemaphoreCounterValue until n+3; {compared}"),
        ),
        (
            "timeline-sync-api",
            VulkanPath::SyncApi,
            HostWait::Blocking,
            Route::Full,
            true,
            format!(
                "{chain} vkWaitSemaphores(n+3); lava-flow through vulkan::sync (Semaphore::signal/wait, Submission) \
                 and CudaSemaphore vs ash + cuWait/SignalExternalSemaphoresAsync, interleaved"
            ),
        ),
        (
            "vulkan-leg",
            prepared,
            HostWait::Blocking,
            Route::VulkanLeg,
            false,
            format!("host signal n -> vkQueueSubmit(wait n, signal n+1) -> host vkWaitSemaphores(n+1); {compared}"),
        ),
        (
            "cuda-leg",
            prepared,
            HostWait::Blocking,
            Route::CudaLeg,
            false,
            format!("host signal n -> CUDA stream wait n, signal n+1 -> host vkWaitSemaphores(n+1); {compared}"),
        ),
    ] {
        let case = format!("semaphore-round-trip/{name}");
        let result = match &mut trips {
            Ok(trips) => trips.measure(warmup, rounds, path, host_wait, route).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok((lava, raw)) => {
                rows.push(measured(case.clone(), lava.median, raw.median, "us", &format!("{note}; median")));
                if with_p99 {
                    rows.push(measured(format!("{case}/p99"), lava.p99, raw.p99, "us", &format!("{note}; p99")));
                }
            }
            Err(e) => {
                rows.push(failed(case.clone(), "us", &e));
                if with_p99 {
                    rows.push(failed(format!("{case}/p99"), "us", &e));
                }
            }
        }
    }
    drop(trips);

    let case = |kind: &str| format!("pooled-import/{kind}/{}", size_name(POOLED_SIZE));
    let warmup = config.import_iterations.div_ceil(10).min(20);
    match fx.pooled_imports().and_then(|p| p.measure(warmup, config.import_iterations)) {
        Ok([cached, uncached, raw_fresh, raw_map]) => {
            rows.push(measured(
                case("cached"),
                cached,
                raw_fresh,
                "us",
                "import_buffer of a further pooled buffer, block cached (a view into the block's mapping) vs \
                 cuImportExternalMemory of the block + cuExternalMemoryGetMappedBuffer at the buffer's offset, median",
            ));
            rows.push(measured(
                case("uncached"),
                uncached,
                raw_fresh,
                "us",
                "import_buffer of a pooled buffer whose block is not imported (import + whole-block mapping) vs \
                 cuImportExternalMemory + cuExternalMemoryGetMappedBuffer of the buffer, median",
            ));
            rows.push(measured(
                case("cached-vs-map"),
                cached,
                raw_map,
                "us",
                "import_buffer of a further pooled buffer, block cached vs cuExternalMemoryGetMappedBuffer of it \
                 on a block imported beforehand (a mapping per buffer), median",
            ));
        }
        Err(e) => {
            for kind in ["cached", "uncached", "cached-vs-map"] {
                rows.push(failed(case(kind), "us", &e));
            }
        }
    }

    for &size in &config.copy_sizes {
        let free = fx.free_memory();
        let share = if size.saturating_mul(4) > free {
            Err(too_big("this size", size * 3, free))
        } else {
            fx.export_import_map_median(size, config.iterations).map(|(lava, _)| lava)
        };
        for (kind, note) in [
            ("d2d", "one-time export + import + map vs a device-to-device copy at every hand-off"),
            ("host", "one-time export + import + map vs a Vulkan read-back plus CUDA upload at every hand-off"),
        ] {
            let case = format!("share-vs-copy/{kind}/{}", size_name(size));
            let row = match &share {
                Err(e) => failed(case, "us", e),
                Ok(lava) => {
                    let copy = if kind == "d2d" {
                        fx.d2d_copy(size, config.iterations)
                    } else {
                        fx.host_copy(size, config.iterations)
                    };
                    match copy {
                        Ok(raw) => measured(case, *lava, raw, "us", note),
                        Err(e) => failed(case, "us", &e),
                    }
                }
            };
            rows.push(row);
        }
    }
    fx.cuda.check_deferred()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_named_in_binary_units() {
        assert_eq!(size_name(64 * KIB), "64KiB");
        assert_eq!(size_name(4 * GIB), "4GiB");
        assert_eq!(size_name(1000), "1000B");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let p = Percentiles::of((1..=200).rev().map(f64::from).collect());
        assert_eq!(p.median, 100.5);
        assert_eq!(p.p99, 198.0);
        let one = Percentiles::of(vec![7.0]);
        assert_eq!((one.median, one.p99), (7.0, 7.0));
        assert!(Percentiles::of(vec![]).p99.is_nan());
    }

    /// The prepared submission on whatever Vulkan driver is here (lavapipe on CPU machines), with
    /// the host standing in for CUDA: each submission waits for exactly the value it was given
    /// and signals exactly the other, across rewrites of the same prepared structures.
    #[test]
    fn prepared_timeline_submits_wait_for_and_signal_the_values_given() {
        let Some(ctx) = crate::testing::or_skip("vulkan", VulkanContext::new()) else { return };
        let sem = match VkSemaphore::create(&ctx, SemaphoreKind::Timeline, false) {
            Ok(sem) => sem,
            Err(e) => return crate::testing::skip_refused("vulkan", "VkPhysicalDeviceTimelineSemaphoreFeatures", e),
        };
        let submit = TimelineSubmit::new(sem.semaphore);
        let t = Duration::from_secs(10);
        let counter = || {
            // SAFETY: sem is a live timeline semaphore of ctx's device (owned by this test).
            unsafe { ctx.device().get_semaphore_counter_value(sem.semaphore) }.unwrap()
        };
        for round in 0..50u64 {
            let n = 1 + 4 * round;
            // The order the benchmark uses: each wait is submitted after its signal.
            sem.host_signal(n).unwrap();
            submit.submit(&ctx, n, n + 1).unwrap();
            spin_wait(&ctx, sem.semaphore, n + 1, t).unwrap();
            // The second submission is made before the stand-in's signal, so it must wait for it.
            submit.submit(&ctx, n + 2, n + 3).unwrap();
            let e = spin_wait(&ctx, sem.semaphore, n + 3, Duration::from_millis(2)).unwrap_err();
            assert!(matches!(e, Error::Timeout { .. }), "{e}");
            assert_eq!(counter(), n + 1, "nothing signals before the stand-in's value arrives");
            sem.host_signal(n + 2).unwrap();
            if round % 2 == 0 {
                sem.host_wait(n + 3, t).unwrap();
            } else {
                spin_wait(&ctx, sem.semaphore, n + 3, t).unwrap();
            }
            assert_eq!(counter(), n + 3);
        }
    }

    #[test]
    fn failed_rows_serialize_figures_as_null() {
        let e = Error::invalid("x", "y", "z");
        let row = failed("case".into(), "us", &e);
        let json = serde_json::to_value(&row).unwrap();
        assert!(json["lava_flow"].is_null() && json["ratio"].is_null(), "{json}");
        assert!(json["error"].as_str().unwrap().contains("invalid x"));
    }
}
