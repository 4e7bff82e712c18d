//! `lava-flow serve` and `attach` as library calls: a server that allocates memory, fills a known
//! pattern and shares it (with a timeline semaphore that says the pattern is ready, where the
//! Vulkan driver exports one); a client that imports what it is given, waits for the semaphore,
//! checks the pattern and reports what it received and how long each step took.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use raw_gpu_handle::{ExportedSemaphore, MemoryHandleKind, SemaphoreHandleKind, SemaphoreKind, TextureFormat};

use lava_flow::ipc::{
    shm, Client, NamedDescription, NamedObject, ObjectDescription, Server, ServerConfig, SharedObject,
};
use lava_flow::vulkan::sync::{semaphore_capabilities, Semaphore};
use lava_flow::vulkan::{DeviceSelector, MemoryLocation};
use lava_flow::{Buffer, BufferOptions, Error, Image, ImageOptions, Result, SharedHostMemory, VulkanContext};

/// The name the pattern memory (or buffer) is shared under.
pub const PATTERN_NAME: &str = "pattern";
/// The name the pattern image is shared under.
pub const IMAGE_NAME: &str = "pattern.image";
/// The name the timeline semaphore is shared under (Vulkan memory, where the driver exports
/// timeline semaphores as opaque fds).
pub const READY_NAME: &str = "pattern.ready";
/// The value `pattern.ready` holds once the pattern is in place.
pub const READY_VALUE: u64 = 1;

/// Word `i` (little-endian u32) of the pattern `serve` fills: every word differs from its
/// neighbours, so a wrong offset or a stale page is caught.
pub fn pattern_word(i: usize) -> u32 {
    (i as u32).wrapping_mul(0x9E37_79B1) ^ 0xA5A5_A5A5
}

/// The first `len` bytes of the pattern.
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    pattern_bytes_at(0, len)
}

/// `len` bytes of the pattern from byte `start` (a multiple of 4).
pub fn pattern_bytes_at(start: usize, len: usize) -> Vec<u8> {
    debug_assert_eq!(start % 4, 0);
    (start / 4..(start + len).div_ceil(4)).flat_map(|i| pattern_word(i).to_le_bytes()).take(len).collect()
}

/// The pattern is written in pieces of this many bytes (a multiple of 4), so that filling a large
/// allocation never needs a host copy of its whole size.
const FILL_CHUNK: usize = 64 << 20;

/// Checks `bytes` against the pattern; names the first wrong word.
pub fn check_pattern(what: &str, bytes: &[u8]) -> Result<()> {
    match bytes.chunks(4).enumerate().find(|(i, c)| *c != &pattern_word(*i).to_le_bytes()[..c.len()]) {
        None => Ok(()),
        Some((i, c)) => Err(Error::Protocol {
            reason: format!("{what}: word {i} (byte {}) is {c:02x?}, expected {:08x}", i * 4, pattern_word(i)),
            advice: "the memory is not the server's, or it was imported at the wrong offset or size".into(),
        }),
    }
}

/// Where `serve` allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeMemory {
    /// A sealed memfd, no GPU API involved.
    Host,
    /// A Vulkan buffer at this location (device-local and host-visible ones are shared as opaque
    /// fds, shared host memory as its memfd).
    Vulkan(MemoryLocation),
    /// Device memory CUDA allocates on the device with this ordinal (`cuMemCreate`, exported with
    /// `cuMemExportToShareableHandle` as an opaque fd; `lava_flow::cuda::CudaAllocation`), shared
    /// as a buffer at offset 0 of the granularity-rounded allocation. No image, no semaphore: the
    /// pattern is written and waited for before the socket is bound.
    #[cfg(feature = "cuda")]
    Cuda {
        /// CUDA device ordinal.
        ordinal: usize,
    },
}

/// What `serve_pattern` shares.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The socket path.
    pub socket: PathBuf,
    /// Bytes of pattern memory.
    pub size: u64,
    /// Where it lives.
    pub memory: ServeMemory,
    /// Also share an RGBA8 optimal-tiled image of this width and height (Vulkan only).
    pub image: Option<(u32, u32)>,
    /// Server settings.
    pub config: ServerConfig,
}

/// One timed step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Step {
    /// What was done.
    pub what: String,
    /// How long it took.
    #[serde(serialize_with = "micros")]
    pub took: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e6)
}

fn timed<T>(steps: &mut Vec<Step>, what: impl Into<String>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let value = f()?;
    steps.push(Step { what: what.into(), took: start.elapsed() });
    Ok(value)
}

/// What the server shares and how long setting it up took.
#[derive(Clone, Debug)]
pub struct ServeReport {
    /// The device that allocated, where a GPU did.
    pub device: Option<String>,
    /// The objects shared.
    pub objects: Vec<NamedDescription>,
    /// Allocation, fill, export, bind.
    pub steps: Vec<Step>,
    /// Why no timeline semaphore is shared, where Vulkan memory is served without one (the
    /// capability query's answer).
    pub semaphore_note: Option<String>,
}

/// A running pattern server; dropping it stops serving and frees the memory.
pub struct PatternServer {
    server: Server,
    // What the shared fds point at, kept alive (and mapped) while the server shares them.
    _host: Option<SharedHostMemory>,
    _buffer: Option<Buffer>,
    _image: Option<Image>,
    _semaphore: Option<Semaphore>,
    #[cfg(feature = "cuda")]
    _cuda: Option<lava_flow::cuda::AllocatedBuffer>,
    report: ServeReport,
}

impl std::fmt::Debug for PatternServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatternServer").field("server", &self.server).field("objects", &self.report.objects).finish()
    }
}

impl PatternServer {
    /// The server (statistics, waiting for clients).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// What is shared and what setting it up cost.
    pub fn report(&self) -> &ServeReport {
        &self.report
    }
}

/// Allocates `options.size` bytes where asked, fills the pattern ([`pattern_word`]), optionally
/// an image too, and serves them at `options.socket` to every allowed client that connects.
/// A size the device or the machine cannot hold is refused with [`Error::OutOfMemory`] before
/// anything is allocated (`lava_flow::limits`); the pattern is written in pieces, so filling it
/// needs no host copy of the whole size.
pub fn serve_pattern(options: &ServeOptions) -> Result<PatternServer> {
    let size = usize::try_from(options.size)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| Error::invalid("pattern size", format!("{} bytes", options.size), "ask for 1 byte or more"))?;
    let mut steps = Vec::new();
    let (mut host, mut kept_buffer, mut kept_image, mut kept_semaphore) = (None, None, None, None);
    let mut objects = Vec::new();
    let mut device = None;
    let mut semaphore_note = None;
    #[cfg(feature = "cuda")]
    let mut kept_cuda = None;
    match options.memory {
        #[cfg(feature = "cuda")]
        ServeMemory::Cuda { ordinal } => {
            if options.image.is_some() {
                return Err(Error::invalid(
                    "an image in CUDA-allocated memory",
                    "lava-flow exports CUDA allocations as buffers only",
                    "serve the image from Vulkan memory (--allocator vulkan)",
                ));
            }
            let cuda = timed(&mut steps, "open CUDA", || lava_flow::cuda::CudaDevice::open(ordinal))?;
            device = Some(format!("CUDA {ordinal}: {} (device {})", cuda.name(), cuda.uuid()));
            let allocation = timed(&mut steps, format!("allocate an exportable {size}-byte CUDA allocation"), || {
                cuda.allocate_exportable(size as u64)
            })?;
            timed(&mut steps, "fill the pattern", || {
                // FILL_CHUNK is a multiple of the allocation's buffer alignment, so every piece is
                // a buffer of its own at an aligned offset.
                (0..size).step_by(FILL_CHUNK).try_for_each(|start| {
                    let len = FILL_CHUNK.min(size - start);
                    allocation.buffer(start as u64, len as u64)?.copy_from_host(&pattern_bytes_at(start, len))
                })
            })?;
            let buffer = allocation.buffer(0, size as u64)?;
            let exported = timed(&mut steps, "export the buffer", || buffer.export())?;
            objects.push(NamedObject::new(PATTERN_NAME, exported));
            kept_cuda = Some(buffer);
            semaphore_note = Some("CUDA-allocated memory is served without a semaphore (the pattern is written before the socket is bound)".into());
        }
        ServeMemory::Host => {
            if options.image.is_some() {
                return Err(Error::invalid(
                    "an image in host memory",
                    "images need a GPU API to lay them out",
                    "serve the image from Vulkan memory",
                ));
            }
            let mut memory = timed(&mut steps, format!("create {size} bytes of host memory"), || shm::create(size))?;
            // The memfd is rounded up to whole pages and shared whole (its description carries only
            // the allocation size), so the pattern fills every byte a client maps and checks.
            timed(&mut steps, "fill the pattern", || {
                let len = memory.len();
                (0..len)
                    .step_by(FILL_CHUNK)
                    .try_for_each(|start| memory.write(start, &pattern_bytes_at(start, FILL_CHUNK.min(len - start))))
            })?;
            let exported = timed(&mut steps, "export", || shm::export(&memory))?;
            objects.push(NamedObject::new(PATTERN_NAME, exported));
            host = Some(memory);
        }
        ServeMemory::Vulkan(location) => {
            let ctx = timed(&mut steps, "open Vulkan", || {
                VulkanContext::with_selector(DeviceSelector::Index(location.device_id()))
            })?;
            device = Some(format!("{} ({})", ctx.info().name, ctx.identity()));
            let mut buffer = timed(&mut steps, format!("allocate an exportable {size}-byte buffer"), || {
                Buffer::new(&ctx, &BufferOptions::new(size as u64).memory(location.kind()).for_gl())
            })?;
            timed(&mut steps, "fill the pattern", || {
                (0..size).step_by(FILL_CHUNK).try_for_each(|start| {
                    buffer.write(start as u64, &pattern_bytes_at(start, FILL_CHUNK.min(size - start)))
                })
            })?;
            let exported = timed(&mut steps, "export the buffer", || buffer.export_fd())?;
            objects.push(NamedObject::new(PATTERN_NAME, exported));
            kept_buffer = Some(buffer);
            if let Some((w, h)) = options.image {
                let image = timed(&mut steps, format!("create an exportable {w}x{h} rgba8 image"), || {
                    Image::new(&ctx, &ImageOptions::d2(TextureFormat::Rgba8Unorm, w, h))
                })?;
                timed(&mut steps, "upload the pattern", || image.upload(&pattern_bytes(image.packed_size() as usize)))?;
                let exported = timed(&mut steps, "export the image", || image.export_fd())?;
                objects.push(NamedObject::new(IMAGE_NAME, exported));
                kept_image = Some(image);
            }
            // Shared last, so the memory objects keep their places in the list.
            let caps = semaphore_capabilities(&ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd);
            if caps.exportable {
                let semaphore = timed(&mut steps, "create an exportable timeline semaphore", || {
                    Semaphore::exportable(&ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd)
                })?;
                // The writes above finished on the host's watch (each upload waits for its
                // copy), so a host signal starts the chain: value 1 says the pattern is there.
                timed(&mut steps, format!("signal {READY_NAME} to {READY_VALUE}"), || semaphore.signal(READY_VALUE))?;
                let exported = timed(&mut steps, "export the semaphore", || semaphore.export())?;
                objects.push(NamedObject::new(READY_NAME, exported));
                kept_semaphore = Some(semaphore);
            } else {
                semaphore_note = Some(caps.limitation.unwrap_or_else(|| "the driver does not export them".into()));
            }
        }
    }
    let server = timed(&mut steps, "bind the socket", || Server::bind(&options.socket, options.config.clone()))?;
    let described = objects.iter().map(NamedObject::named_description).collect();
    for o in objects {
        server.publish(o)?;
    }
    Ok(PatternServer {
        server,
        _host: host,
        _buffer: kept_buffer,
        _image: kept_image,
        _semaphore: kept_semaphore,
        #[cfg(feature = "cuda")]
        _cuda: kept_cuda,
        report: ServeReport { device, objects: described, steps, semaphore_note },
    })
}

/// The API `attach` imports with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachApi {
    /// Map host memory directly (host-memfd objects only).
    Host,
    /// Import into Vulkan.
    Vulkan,
    /// Import into CUDA.
    Cuda,
    /// Import into OpenCL.
    OpenCl,
    /// Import into OpenGL.
    Gl,
}

impl AttachApi {
    /// The API's name.
    pub fn name(self) -> &'static str {
        match self {
            AttachApi::Host => "host",
            AttachApi::Vulkan => "vulkan",
            AttachApi::Cuda => "cuda",
            AttachApi::OpenCl => "opencl",
            AttachApi::Gl => "gl",
        }
    }
}

/// What `attach` does.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// The server's socket.
    pub socket: PathBuf,
    /// The importing API.
    pub api: AttachApi,
    /// The Vulkan device to import into.
    pub device: DeviceSelector,
    /// Longest wait for the server's reply.
    pub timeout: Duration,
}

impl AttachOptions {
    /// Defaults: the default device, a 10-second reply timeout.
    pub fn new(socket: impl Into<PathBuf>, api: AttachApi) -> AttachOptions {
        AttachOptions { socket: socket.into(), api, device: DeviceSelector::Default, timeout: Duration::from_secs(10) }
    }
}

/// One object `attach` received and checked.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachedObject {
    /// Its name.
    pub name: String,
    /// "memory", "buffer", "texture", ...
    pub kind: &'static str,
    /// Its handle kind and sizes, in words.
    pub summary: String,
    /// Bytes compared with the pattern (0 for a semaphore).
    pub bytes_checked: u64,
    /// A timeline semaphore's value once waited for (at least [`READY_VALUE`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// Why an object was received but not imported (an API that cannot import it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What `attach` received, imported and verified, and how long each step took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachReport {
    /// The API used.
    pub api: &'static str,
    /// The importing device, where a GPU API was used.
    pub device: Option<String>,
    /// The objects, each imported and checked.
    pub objects: Vec<AttachedObject>,
    /// Connect, receive, import, verify.
    pub steps: Vec<Step>,
}

fn summary(d: &ObjectDescription) -> String {
    match d {
        ObjectDescription::Memory(m) => format!("{} memory of {} bytes", m.handle_kind, m.allocation_size),
        ObjectDescription::Buffer { memory, buffer } => format!(
            "{} buffer of {} bytes at offset {} in {} bytes{}",
            memory.handle_kind,
            buffer.size,
            buffer.offset,
            memory.allocation_size,
            if memory.dedicated { " (dedicated)" } else { "" }
        ),
        ObjectDescription::Texture { memory, texture } => format!(
            "{} {:?} {} texture {}x{}x{} ({:?} tiling) in {} bytes",
            memory.handle_kind,
            texture.dimension,
            texture.format,
            texture.extent.width,
            texture.extent.height,
            texture.extent.depth,
            texture.tiling,
            memory.allocation_size
        ),
        ObjectDescription::Semaphore(s) => format!("{:?} semaphore as {}", s.kind, s.handle_kind),
        ObjectDescription::Fence(f) => format!("fence as {}", f.handle_kind),
    }
}

#[allow(dead_code)]
fn not_in_build(api: AttachApi) -> Error {
    Error::unsupported(
        format!("attaching with {}", api.name()),
        format!("lava-flow was built without its {} feature", api.name()),
        "cargo features cuda, opencl, gl",
        "rebuild with the feature, or attach with --api vulkan or --api host",
    )
}

/// The importing API, opened for the exporter's device.
enum Importer {
    Host,
    Vulkan(VulkanContext),
    #[cfg(feature = "cuda")]
    Cuda(lava_flow::cuda::CudaDevice),
    #[cfg(feature = "gl")]
    Gl(lava_flow::gl::GlContext),
    #[cfg(feature = "opencl")]
    OpenCl(lava_flow::opencl::ClContext),
}

impl Importer {
    fn open(api: AttachApi, selector: DeviceSelector, exporter: &raw_gpu_handle::DeviceIdentity) -> Result<Importer> {
        let _ = exporter;
        Ok(match api {
            AttachApi::Host => Importer::Host,
            AttachApi::Vulkan => Importer::Vulkan(VulkanContext::with_selector(selector)?),
            #[cfg(feature = "cuda")]
            AttachApi::Cuda => Importer::Cuda(lava_flow::cuda::CudaDevice::with_uuid(exporter.device_uuid)?),
            #[cfg(feature = "gl")]
            AttachApi::Gl => Importer::Gl(lava_flow::gl::GlContext::for_identity(exporter)?),
            #[cfg(feature = "opencl")]
            AttachApi::OpenCl => Importer::OpenCl(lava_flow::opencl::ClContext::for_identity(exporter)?),
            #[allow(unreachable_patterns)]
            other => return Err(not_in_build(other)),
        })
    }

    fn device(&self) -> Option<String> {
        match self {
            Importer::Host => None,
            Importer::Vulkan(c) => Some(format!("{} ({})", c.info().name, c.identity())),
            #[cfg(feature = "cuda")]
            Importer::Cuda(d) => Some(format!("{} (CUDA device {}, {})", d.name(), d.ordinal(), d.uuid())),
            #[cfg(feature = "gl")]
            Importer::Gl(c) => Some(format!("{} ({})", c.info().renderer, c.info().api)),
            #[cfg(feature = "opencl")]
            Importer::OpenCl(c) => Some(format!("{} ({})", c.info().name, c.identity())),
        }
    }

    /// Imports a buffer and reads it back whole.
    fn read_buffer(&self, b: raw_gpu_handle::ExportedBuffer, name: &str, steps: &mut Vec<Step>) -> Result<Vec<u8>> {
        let size = b.buffer.size;
        // The copy read back lives in this process's memory: refuse one it cannot hold.
        lava_flow::limits::check_host_memory(
            &format!("reading back the {size}-byte buffer {name} to check it"),
            size,
            "attach on a machine with more free memory, or serve a smaller size",
        )?;
        let api = self.name();
        match self {
            Importer::Host => {
                let (offset, len) = (b.buffer.offset as usize, size as usize);
                let mapped = timed(steps, format!("map {name}"), || shm::map_exported(b.memory))?;
                mapped.read(offset, len)
            }
            Importer::Vulkan(ctx) => {
                let buffer = timed(steps, format!("import {name} into {api}"), || Buffer::import(ctx, b))?;
                timed(steps, format!("read {name}"), || buffer.read(0, size))
            }
            #[cfg(feature = "cuda")]
            Importer::Cuda(dev) => {
                let buffer = timed(steps, format!("import {name} into {api}"), || dev.import_buffer(b))?;
                timed(steps, format!("read {name}"), || buffer.copy_to_host())
            }
            #[cfg(feature = "gl")]
            Importer::Gl(ctx) => {
                let buffer = timed(steps, format!("import {name} into {api}"), || ctx.import_buffer(b))?;
                timed(steps, format!("read {name}"), || buffer.read(0, size as usize))
            }
            #[cfg(feature = "opencl")]
            Importer::OpenCl(ctx) => {
                let buffer = timed(steps, format!("import {name} into {api}"), || ctx.import_buffer(b))?;
                timed(steps, format!("read {name}"), || buffer.read(0, size as usize))
            }
        }
    }

    /// Imports a texture and reads its texels back, tightly packed.
    fn read_texture(&self, t: raw_gpu_handle::ExportedTexture, name: &str, steps: &mut Vec<Step>) -> Result<Vec<u8>> {
        let api = self.name();
        match self {
            Importer::Host => Err(Error::unsupported(
                format!("reading the texture {name} on the host"),
                "texture layouts need a GPU API to read",
                "optimal tiling is private to the driver",
                "attach with a GPU API",
            )),
            Importer::Vulkan(ctx) => {
                let image = timed(steps, format!("import {name} into {api}"), || Image::import(ctx, t))?;
                timed(steps, format!("download {name}"), || image.download())
            }
            #[cfg(feature = "cuda")]
            Importer::Cuda(dev) => {
                let texture = timed(steps, format!("import {name} into {api}"), || dev.import_texture(t))?;
                timed(steps, format!("download {name}"), || texture.copy_to_host())
            }
            #[cfg(feature = "gl")]
            Importer::Gl(ctx) => {
                let texture = timed(steps, format!("import {name} into {api}"), || ctx.import_texture(t))?;
                timed(steps, format!("download {name}"), || texture.read())
            }
            #[cfg(feature = "opencl")]
            Importer::OpenCl(ctx) => {
                let image = timed(steps, format!("import {name} into {api}"), || ctx.import_image(t))?;
                timed(steps, format!("download {name}"), || image.read())
            }
        }
    }

    /// Imports a semaphore and waits until it reaches [`READY_VALUE`]: the value it reached,
    /// or (`Err` of a note) why this API does not import it. A failed import or wait is an error.
    fn wait_ready(
        &self,
        s: ExportedSemaphore,
        name: &str,
        timeout: Duration,
        steps: &mut Vec<Step>,
    ) -> Result<std::result::Result<u64, String>> {
        let api = self.name();
        if s.description.kind != SemaphoreKind::Timeline {
            return Ok(Err(format!("not imported: a {:?} semaphore has no value to wait for", s.description.kind)));
        }
        match self {
            Importer::Host => Ok(Err("not imported: host attach maps memory only (attach with vulkan or cuda)".into())),
            Importer::Vulkan(ctx) => {
                let semaphore = timed(steps, format!("import {name} into {api}"), || Semaphore::import(ctx, s))?;
                timed(steps, format!("wait for {name} to reach {READY_VALUE}"), || {
                    semaphore.wait(READY_VALUE, timeout)
                })?;
                Ok(Ok(semaphore.value()?))
            }
            #[cfg(feature = "cuda")]
            Importer::Cuda(dev) => {
                let semaphore = timed(steps, format!("import {name} into {api}"), || dev.import_semaphore(s))?;
                // A device wait on the stream; the value was reached before the server shared
                // the semaphore, so synchronizing cannot block for long.
                timed(steps, format!("wait for {name} to reach {READY_VALUE} on a CUDA stream"), || {
                    semaphore.wait(dev.stream(), READY_VALUE)?;
                    dev.synchronize()
                })?;
                Ok(Ok(READY_VALUE))
            }
            #[cfg(feature = "gl")]
            Importer::Gl(_) => Ok(Err(
                "not imported: OpenGL imports binary semaphores only (GL_EXT_semaphore); this one is a timeline".into(),
            )),
            #[cfg(feature = "opencl")]
            Importer::OpenCl(_) => Ok(Err(
                "not imported: lava-flow's OpenCL imports binary semaphores only (cl_khr_external_semaphore); this \
                 one is a timeline"
                    .into(),
            )),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Importer::Host => "host",
            Importer::Vulkan(_) => "Vulkan",
            #[cfg(feature = "cuda")]
            Importer::Cuda(_) => "CUDA",
            #[cfg(feature = "gl")]
            Importer::Gl(_) => "OpenGL",
            #[cfg(feature = "opencl")]
            Importer::OpenCl(_) => "OpenCL",
        }
    }
}

/// Connects to a pattern server, imports every object with `options.api`, checks the pattern in
/// each, and reports the objects and step timings. Any mismatch is an error.
pub fn attach(options: &AttachOptions) -> Result<AttachReport> {
    let mut steps = Vec::new();
    let client = timed(&mut steps, "connect", || Client::connect_with_timeout(&options.socket, options.timeout))?;
    let objects = timed(&mut steps, "receive the objects", || client.get_all())?;
    drop(client);
    if objects.is_empty() {
        return Err(Error::Protocol {
            reason: format!("the server at {} shares no objects", options.socket.display()),
            advice: "start it with `lava-flow serve`".into(),
        });
    }
    // The device to open the importing API on: the first object that names one (host memory names
    // none; a server of shared host memory names its device in the semaphore it shares).
    let exporter = objects
        .iter()
        .find_map(|o| {
            match &o.object {
                SharedObject::Semaphore(s) => Some(s.description.device),
                SharedObject::Fence(f) => Some(f.description.device),
                other => other.memory().map(|m| m.description.device),
            }
            .filter(|d| *d != raw_gpu_handle::DeviceIdentity::default())
        })
        .unwrap_or_default();
    let importer = match options.api {
        AttachApi::Host => Importer::Host,
        api => timed(&mut steps, format!("open {}", api.name()), || Importer::open(api, options.device, &exporter))?,
    };
    // Semaphores first: a ready signal is waited for before the memory is read. The report keeps
    // the order the server shared the objects in.
    let mut waited = Vec::new();
    let mut memory_objects = Vec::new();
    for (i, NamedObject { name, object }) in objects.into_iter().enumerate() {
        match object {
            SharedObject::Semaphore(s) => {
                let summary = summary(&ObjectDescription::Semaphore(s.description));
                let reached = importer.wait_ready(s, &name, options.timeout, &mut steps)?;
                let (value, note) = match reached {
                    Ok(v) => (Some(v), None),
                    Err(note) => (None, Some(note)),
                };
                let summary = match value {
                    Some(v) => format!("{summary}, value {v}"),
                    None => summary,
                };
                waited.push((i, AttachedObject { name, kind: "semaphore", summary, bytes_checked: 0, value, note }));
            }
            other => memory_objects.push((i, NamedObject { name, object: other })),
        }
    }
    let mut attached = Vec::new();
    for (i, NamedObject { name, object }) in memory_objects {
        let description = object.description();
        let kind = object.kind_name();
        let summary = summary(&description);
        let bytes = match object {
            SharedObject::Memory(m) if m.description.handle_kind == MemoryHandleKind::HostMemfd => {
                let mapped = timed(&mut steps, format!("map {name}"), || shm::map_exported(m))?;
                mapped.read(0, mapped.len())?
            }
            SharedObject::Buffer(b) => importer.read_buffer(b, &name, &mut steps)?,
            SharedObject::Texture(t) => importer.read_texture(t, &name, &mut steps)?,
            other => {
                return Err(Error::unsupported(
                    format!("attaching {name} ({}) with {}", other.kind_name(), options.api.name()),
                    format!("{summary} holds no pattern to check"),
                    "serve shares host memory, buffers, textures and a timeline semaphore",
                    "attach to a `lava-flow serve` socket",
                ))
            }
        };
        timed(&mut steps, format!("verify {name}"), || check_pattern(&name, &bytes))?;
        let bytes_checked = bytes.len() as u64;
        attached.push((i, AttachedObject { name, kind, summary, bytes_checked, value: None, note: None }));
    }
    attached.extend(waited);
    attached.sort_by_key(|(i, _)| *i);
    let attached = attached.into_iter().map(|(_, o)| o).collect();
    Ok(AttachReport { api: options.api.name(), device: importer.device(), objects: attached, steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve --location host --size 100000`: the memfd holds 102400 bytes (whole pages) and
    /// `attach` checks all of them, so all of them carry the pattern.
    #[test]
    fn host_memory_of_a_size_that_is_not_whole_pages_attaches() {
        let dir = std::env::temp_dir().join(format!("lava-flow-serve-odd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("serve.sock");
        let options = ServeOptions {
            socket: socket.clone(),
            size: 100_000,
            memory: ServeMemory::Host,
            image: None,
            config: ServerConfig::default(),
        };
        let served = serve_pattern(&options).unwrap();
        let report = attach(&AttachOptions::new(&socket, AttachApi::Host));
        drop(served);
        std::fs::remove_dir_all(&dir).ok();
        let report = report.unwrap();
        assert_eq!(report.objects.len(), 1);
        assert!(report.objects[0].bytes_checked >= 100_000, "{:?}", report.objects);
        assert_eq!(report.objects[0].bytes_checked % 4096, 0, "the whole mapping was checked: {:?}", report.objects);
    }

    #[test]
    fn the_pattern_written_in_pieces_is_the_pattern_written_whole() {
        let whole = pattern_bytes(1000);
        for (start, len) in [(0, 1000), (4, 996), (8, 13), (400, 1), (996, 4)] {
            assert_eq!(pattern_bytes_at(start, len), &whole[start..start + len], "from byte {start}");
        }
        check_pattern("pieces", &[pattern_bytes_at(0, 512), pattern_bytes_at(512, 488)].concat()).unwrap();
    }

    /// A size the machine cannot hold is refused before anything is allocated (no memfd, no
    /// socket), naming the size and the limit.
    #[test]
    fn an_absurd_host_size_is_refused_before_allocating() {
        let dir = std::env::temp_dir().join(format!("lava-flow-serve-absurd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("serve.sock");
        let size = lava_flow::limits::host_memory_available().expect("/proc/meminfo").bytes * 2 + (1 << 30);
        let options = ServeOptions {
            socket: socket.clone(),
            size,
            memory: ServeMemory::Host,
            image: None,
            config: ServerConfig::default(),
        };
        let e = serve_pattern(&options).unwrap_err();
        let exists = socket.exists();
        std::fs::remove_dir_all(&dir).ok();
        assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(&size.to_string()), "the error names the size: {text}");
        assert!(text.contains("MemAvailable") || text.contains("cgroup"), "the error names the limit: {text}");
        assert!(!exists, "nothing was served");
    }
}
