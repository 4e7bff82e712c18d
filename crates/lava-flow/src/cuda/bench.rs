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
//! - `semaphore-round-trip/timeline`: host -> Vulkan -> CUDA stream -> Vulkan -> host on one
//!   timeline semaphore, through `CudaSemaphore` against `cuWait/SignalExternalSemaphoresAsync`;
//! - `share-vs-copy/{d2d,host}/SIZE`: sharing's one-time export + import + map against the copy
//!   a user would otherwise make at every hand-off (device to device, or read back through the
//!   host and uploaded again).

use std::os::fd::{IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ash::vk;
use cudarc::driver::sys;
use raw_gpu_handle::SemaphoreKind;

use super::kernels::Kernels;
use super::vk::{raw_export_fd, Submitter, VkSemaphore};
use super::{check, CudaDevice};
use crate::vulkan::{BufferOptions, MemoryKind};
use crate::{Buffer, DeviceSelector, Error, Result, VulkanContext};

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
    /// Timed semaphore round trips (after as many again for warm-up, at most 100).
    pub semaphore_rounds: usize,
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
            copy_sizes: vec![MIB, 64 * MIB, GIB],
        }
    }
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
            copy_sizes: vec![MIB],
        }
    }
}

/// One measured case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    /// What was measured, e.g. `export-import-map/64KiB`.
    pub case: String,
    /// lava-flow's figure.
    pub lava_flow: f64,
    /// The raw API calls' figure, measured in the same run.
    pub raw: f64,
    /// Unit of both figures ("GB/s", "us").
    pub unit: &'static str,
    /// `lava_flow / raw`.
    pub ratio: f64,
    /// Whether a larger figure is better (bandwidth) or worse (latency).
    pub higher_is_better: bool,
    /// How to read the row.
    pub note: String,
    /// Why the case could not be measured (figures are then NaN, written as null in JSON).
    pub error: Option<String>,
}

impl BenchRow {
    fn new(case: String, lava_flow: f64, raw: f64, unit: &'static str, higher_is_better: bool, note: &str) -> Self {
        BenchRow {
            case,
            lava_flow,
            raw,
            unit,
            ratio: lava_flow / raw,
            higher_is_better,
            note: note.into(),
            error: None,
        }
    }

    fn failed(case: String, unit: &'static str, higher_is_better: bool, error: &Error) -> Self {
        BenchRow {
            case,
            lava_flow: f64::NAN,
            raw: f64::NAN,
            unit,
            ratio: f64::NAN,
            higher_is_better,
            note: String::new(),
            error: Some(error.to_string()),
        }
    }
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

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

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
        // SAFETY: the context is current; ptr is a valid out-pointer.
        let r = unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes as usize) };
        check(r, "cuMemAlloc_v2", || format!("allocating {bytes} bytes of native CUDA memory"))?;
        Ok(NativeAlloc { device: device.clone(), ptr })
    }
}

impl Drop for NativeAlloc {
    fn drop(&mut self) {
        if self.device.bind_for_drop("native CUDA memory") {
            // SAFETY: allocated by cuMemAlloc and freed once.
            let r = unsafe { sys::cuMemFree_v2(self.ptr) };
            if r != sys::CUresult::CUDA_SUCCESS {
                self.device.defer_error(format!("cuMemFree_v2 returned {r:?}"));
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
        // SAFETY: the context is current; stream is a valid out-pointer. Flag 1 is
        // CU_STREAM_NON_BLOCKING, as cudarc's streams.
        let r = unsafe { sys::cuStreamCreate(&mut stream, 1) };
        check(r, "cuStreamCreate", || "creating a stream for the raw measurements".into())?;
        Ok(RawStream { device: device.clone(), stream })
    }

    fn synchronize(&self) -> Result<()> {
        // SAFETY: a live stream of the current context.
        check(unsafe { sys::cuStreamSynchronize(self.stream) }, "cuStreamSynchronize", || "waiting for a stream".into())
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        if self.device.bind_for_drop("a raw stream") {
            // SAFETY: created above, destroyed once; pending work completes first (driver rule).
            unsafe { sys::cuStreamDestroy_v2(self.stream) };
        }
    }
}

/// The bare import + map: what lava-flow's `import_buffer` does, without its checks, fd
/// duplication and bookkeeping. Returns the import and the mapped pointer.
fn raw_import_map(fd: OwnedFd, size: u64, dedicated: bool) -> Result<(sys::CUexternalMemory, sys::CUdeviceptr)> {
    let mut desc = sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC {
        type_: sys::CUexternalMemoryHandleType::CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD,
        // SAFETY: integers and pointers only: all-zero is valid.
        handle: unsafe { std::mem::zeroed() },
        size,
        flags: if dedicated { sys::CUDA_EXTERNAL_MEMORY_DEDICATED } else { 0 },
        reserved: [0; 16],
    };
    desc.handle.fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut ext: sys::CUexternalMemory = std::ptr::null_mut();
    // SAFETY: the caller made the context current; desc is initialised; the fd is open.
    let r = unsafe { sys::cuImportExternalMemory(&mut ext, &desc) };
    // On success the driver owns the fd. On failure it is left to the driver too: a driver may
    // close it even then, so closing it here could close an unrelated fd that reused the number.
    // lava-flow's import avoids this with a duplicate; the raw route does not pay for one.
    let _ = fd.into_raw_fd();
    check(r, "cuImportExternalMemory", || "raw import".into())?;
    let buf = sys::CUDA_EXTERNAL_MEMORY_BUFFER_DESC { offset: 0, size, flags: 0, reserved: [0; 16] };
    let mut ptr = 0;
    // SAFETY: ext is live; buf is initialised.
    let r = unsafe { sys::cuExternalMemoryGetMappedBuffer(&mut ptr, ext, &buf) };
    if let Err(e) = check(r, "cuExternalMemoryGetMappedBuffer", || "raw map".into()) {
        // SAFETY: ext was imported above and has no mappings.
        unsafe { sys::cuDestroyExternalMemory(ext) };
        return Err(e);
    }
    Ok((ext, ptr))
}

fn raw_unmap_release(ext: sys::CUexternalMemory, ptr: sys::CUdeviceptr) {
    // SAFETY: ptr was mapped from ext; both are released once, mapping first.
    unsafe {
        sys::cuMemFree_v2(ptr);
        sys::cuDestroyExternalMemory(ext);
    }
}

/// A Vulkan context, the CUDA device with its UUID, and lava-flow's kernels: what every
/// measurement needs. Public so criterion benches can time single cases with `iter_custom`.
pub struct Fixture {
    ctx: VulkanContext,
    cuda: CudaDevice,
    kernels: Kernels,
    submitter: Submitter,
}

impl Fixture {
    /// Opens the Vulkan device (`None`: default) and the CUDA device with its UUID.
    pub fn new(vulkan_device: Option<usize>) -> Result<Fixture> {
        let ctx = VulkanContext::with_selector(vulkan_device.map_or(DeviceSelector::Default, DeviceSelector::Index))?;
        let cuda = CudaDevice::for_identity(&ctx.identity())?;
        let kernels = Kernels::load(&cuda)?;
        let submitter = Submitter::new(&ctx)?;
        Ok(Fixture { ctx, cuda, kernels, submitter })
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
                    let (ext, ptr) = raw_import_map(fd, memory.size(), dedicated)?;
                    total += t.elapsed();
                    raw_unmap_release(ext, ptr);
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
            .map_err(|e| super::driver_error("cuEventCreate", e, "creating timing events"))?;
        let record = |event: &cudarc::driver::CudaEvent| {
            // SAFETY: a live event and stream of the current context.
            check(unsafe { sys::cuEventRecord(event.cu_event(), stream) }, "cuEventRecord", || {
                "recording a timing event".into()
            })
        };
        self.cuda.bind()?;
        record(&events.0)?;
        for _ in 0..copies {
            if kernel {
                // SAFETY: callers pass live, non-overlapping allocations of at least `bytes`.
                unsafe { self.kernels.copy(dst, src, bytes, stream)? };
            } else {
                // SAFETY: as above.
                let r = unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes as usize, stream) };
                check(r, "cuMemcpyDtoDAsync_v2", || format!("copying {bytes} bytes"))?;
            }
        }
        record(&events.1)?;
        let ms = events
            .0
            .elapsed_ms(&events.1)
            .map_err(|e| super::driver_error("cuEventElapsedTime", e, "timing copies"))?;
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

    /// Times `rounds` round trips host -> Vulkan -> CUDA -> Vulkan -> host on one timeline
    /// semaphore; returns each round's duration.
    pub fn semaphore_round_trips(&self, side: Side, rounds: u64) -> Result<Vec<Duration>> {
        let sem = VkSemaphore::exportable(&self.ctx, SemaphoreKind::Timeline)?;
        let exported = sem.export()?;
        let stream = self.cuda.stream();
        let raw_stream;
        let lava_sem;
        let raw_sem;
        match side {
            Side::LavaFlow => {
                lava_sem = Some(self.cuda.import_semaphore(exported)?);
                raw_sem = None;
                raw_stream = None;
            }
            Side::Raw => {
                lava_sem = None;
                self.cuda.bind()?;
                let mut desc = sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC {
                    type_: sys::CUexternalSemaphoreHandleType::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD,
                    // SAFETY: integers and pointers only: all-zero is valid.
                    handle: unsafe { std::mem::zeroed() },
                    flags: 0,
                    reserved: [0; 16],
                };
                desc.handle.fd = std::os::fd::AsRawFd::as_raw_fd(&exported.handle);
                let mut handle: sys::CUexternalSemaphore = std::ptr::null_mut();
                // SAFETY: the context is current; desc is initialised; the fd is open.
                let r = unsafe { sys::cuImportExternalSemaphore(&mut handle, &desc) };
                // The driver owns the fd now, or may have closed it on failure (see raw_import_map).
                let _ = exported.handle.into_raw_fd();
                check(r, "cuImportExternalSemaphore", || "raw semaphore import".into())?;
                raw_sem = Some(handle);
                raw_stream = Some(RawStream::new(&self.cuda)?);
            }
        }
        let result = (|| {
            let mut times = Vec::with_capacity(rounds as usize);
            for r in 0..rounds {
                let v = 4 * r;
                let t = Instant::now();
                self.submitter.submit(&[], &[(&sem, v + 1)], &[(&sem, v + 2)], vk::Fence::null())?;
                match side {
                    Side::LavaFlow => {
                        let s = lava_sem.as_ref().ok_or_else(|| Error::invalid("semaphore", "missing", "bug"))?;
                        s.wait(stream, v + 2)?;
                        s.signal(stream, v + 3)?;
                    }
                    Side::Raw => {
                        let (Some(h), Some(st)) = (raw_sem, raw_stream.as_ref()) else {
                            return Err(Error::invalid("raw semaphore", "missing", "bug"));
                        };
                        // SAFETY: all-zero parameter blocks are valid; one semaphore each.
                        unsafe {
                            let mut w: sys::CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS = std::mem::zeroed();
                            w.params.fence.value = v + 2;
                            check(
                                sys::cuWaitExternalSemaphoresAsync(&h, &w, 1, st.stream),
                                "cuWaitExternalSemaphoresAsync",
                                || "raw wait".into(),
                            )?;
                            let mut s: sys::CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS = std::mem::zeroed();
                            s.params.fence.value = v + 3;
                            check(
                                sys::cuSignalExternalSemaphoresAsync(&h, &s, 1, st.stream),
                                "cuSignalExternalSemaphoresAsync",
                                || "raw signal".into(),
                            )?;
                        }
                    }
                }
                self.submitter.submit(&[], &[(&sem, v + 3)], &[(&sem, v + 4)], vk::Fence::null())?;
                sem.host_signal(v + 1)?;
                sem.host_wait(v + 4, Duration::from_secs(10))?;
                times.push(t.elapsed());
            }
            Ok(times)
        })();
        // Drain before releasing the semaphore: nothing may wait on it when it is destroyed.
        let drained = self.submitter.wait_idle().and_then(|_| match &raw_stream {
            Some(s) => s.synchronize(),
            None => self.cuda.synchronize(),
        });
        if let Some(h) = raw_sem {
            // SAFETY: imported above; the stream using it is drained.
            unsafe { sys::cuDestroyExternalSemaphore(h) };
        }
        let times = result?;
        drained?;
        Ok(times)
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
            // SAFETY: both allocations hold `bytes` bytes and do not overlap.
            check(
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
        let staging = Buffer::new(&self.ctx, &BufferOptions::new(bytes).memory(MemoryKind::HostVisible).export(None))?;
        let dst = NativeAlloc::new(&self.cuda, bytes)?;
        let stream = self.cuda.stream().cu_stream();
        let mut times = Vec::new();
        for i in 0..iterations + 1 {
            let t = Instant::now();
            src.copy_to(&staging)?;
            let mapped = staging.map()?;
            self.cuda.bind()?;
            let host = mapped.as_slice();
            // SAFETY: the mapping holds `bytes` bytes and outlives the synchronised copy.
            check(
                unsafe { sys::cuMemcpyHtoDAsync_v2(dst.ptr, host.as_ptr().cast(), host.len(), stream) },
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

fn too_big(what: &str, needed: u64, free: u64) -> Error {
    Error::OutOfMemory {
        what: format!("{what} needs about {} and the device has {} free", size_name(needed), size_name(free)),
        advice: "run with smaller sizes".into(),
    }
}

/// Runs every case of `config` and returns one row each. Fails only when the devices cannot
/// be opened; a case that fails gets a row with its error.
pub fn run(config: &BenchConfig) -> Result<Vec<BenchRow>> {
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
            Ok((lava, raw)) => BenchRow::new(
                case,
                lava,
                raw,
                "GB/s",
                true,
                "copies between imported Vulkan memory vs between cuMemAlloc memory (bytes read + written)",
            ),
            Err(e) => BenchRow::failed(case, "GB/s", true, &e),
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
            Ok((lava, raw)) => BenchRow::new(
                case,
                lava,
                raw,
                "us",
                false,
                "export_fd + import_buffer vs vkGetMemoryFdKHR + cuImportExternalMemory + cuExternalMemoryGetMappedBuffer",
            ),
            Err(e) => BenchRow::failed(case, "us", false, &e),
        });
    }

    let case = "semaphore-round-trip/timeline".to_string();
    let rounds = config.semaphore_rounds.max(1) as u64;
    let warm = rounds.min(100);
    let result = (|| {
        fx.semaphore_round_trips(Side::LavaFlow, warm)?;
        fx.semaphore_round_trips(Side::Raw, warm)?;
        let lava = fx.semaphore_round_trips(Side::LavaFlow, rounds)?;
        let raw = fx.semaphore_round_trips(Side::Raw, rounds)?;
        Ok((median(lava.into_iter().map(micros).collect()), median(raw.into_iter().map(micros).collect())))
    })();
    rows.push(match result {
        Ok((lava, raw)) => BenchRow::new(
            case,
            lava,
            raw,
            "us",
            false,
            "host signal -> Vulkan submit -> CUDA stream wait/signal -> Vulkan submit -> host wait, median",
        ),
        Err(e) => BenchRow::failed(case, "us", false, &e),
    });

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
                Err(e) => BenchRow::failed(case, "us", false, e),
                Ok(lava) => {
                    let copy = if kind == "d2d" {
                        fx.d2d_copy(size, config.iterations)
                    } else {
                        fx.host_copy(size, config.iterations)
                    };
                    match copy {
                        Ok(raw) => BenchRow::new(case, *lava, raw, "us", false, note),
                        Err(e) => BenchRow::failed(case, "us", false, &e),
                    }
                }
            };
            rows.push(row);
        }
    }
    fx.cuda.check_deferred()?;
    Ok(rows)
}

/// The rows as an aligned text table.
pub fn table(rows: &[BenchRow]) -> String {
    let mut out = format!("{:<34} {:>12} {:>12} {:>6} {:>7}\n", "case", "lava-flow", "raw", "unit", "ratio");
    for r in rows {
        match &r.error {
            Some(e) => out.push_str(&format!("{:<34} not measured: {e}\n", r.case)),
            None => out.push_str(&format!(
                "{:<34} {:>12.2} {:>12.2} {:>6} {:>7.3}\n",
                r.case, r.lava_flow, r.raw, r.unit, r.ratio
            )),
        }
    }
    out
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
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn failed_rows_serialize_figures_as_null() {
        let e = Error::invalid("x", "y", "z");
        let row = BenchRow::failed("case".into(), "us", false, &e);
        let json = serde_json::to_value(&row).unwrap();
        assert!(json["lava_flow"].is_null() && json["ratio"].is_null(), "{json}");
        assert!(json["error"].as_str().unwrap().contains("invalid x"));
        assert!(table(&[row]).contains("not measured"));
    }
}
