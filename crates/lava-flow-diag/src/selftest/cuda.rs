//! End-to-end checks of every Vulkan <-> CUDA path, for `lava-flow selftest` and the GPU tests.
//!
//! Each path allocates on Vulkan, exports, imports into the CUDA device with the same UUID,
//! moves a pattern one way and checks every byte on the other side. A path returns `Ok(detail)`
//! or the error that stopped it; [`Error::is_unavailable`] errors mean "this machine cannot"
//! (no libcuda, no matching device, no external semaphores) rather than a failure.

use std::time::Duration;

use ash::vk;
use raw_gpu_handle::{SemaphoreKind, TextureFormat, TextureUsage};

use crate::raw_vk::{
    record_buffer_acquire, record_buffer_release, record_host_read, SemOp, Submitter, VkFence, VkSemaphore,
};
use lava_flow::cuda::{driver_error, CudaDevice};
use lava_flow::vulkan::{BufferOptions, ImageOptions, ImageTiling, MemoryKind};
use lava_flow::{Buffer, Error, Image, Result, VulkanContext};

/// How long a self-test waits for the GPU before calling it stuck.
const TIMEOUT: Duration = Duration::from_secs(20);

/// One path's outcome.
#[derive(Debug)]
pub struct PathReport {
    /// The path, e.g. "buffer vulkan->cuda".
    pub path: &'static str,
    /// What was checked, or why it could not be.
    pub outcome: Result<String>,
}

/// The paths [`selftest_paths`] runs, in order.
pub const PATHS: [&str; 10] = [
    "buffer vulkan->cuda",
    "buffer cuda->vulkan",
    "image optimal vulkan->cuda",
    "image optimal cuda->vulkan",
    "image linear vulkan->cuda",
    "image linear cuda->vulkan",
    "timeline semaphore vulkan->cuda",
    "timeline semaphore cuda->vulkan",
    "binary semaphore vulkan->cuda",
    "binary semaphore cuda->vulkan",
];

/// Runs every path on the default Vulkan device and the CUDA device paired with it.
pub fn selftest_paths() -> Vec<PathReport> {
    PATHS
        .iter()
        .map(|path| PathReport { path, outcome: VulkanContext::new().and_then(|ctx| run_path(path, &ctx)) })
        .collect()
}

/// Runs every path on `ctx`'s device and the CUDA device with the same UUID.
pub fn selftest_paths_on(ctx: &VulkanContext) -> Vec<PathReport> {
    PATHS.iter().map(|path| PathReport { path, outcome: run_path(path, ctx) }).collect()
}

/// Runs one of [`PATHS`] by name.
pub fn run_path(path: &str, ctx: &VulkanContext) -> Result<String> {
    let cuda = CudaDevice::for_identity(&ctx.identity())?;
    const MIB: u64 = 1 << 20;
    match path {
        "buffer vulkan->cuda" => buffer_vulkan_to_cuda(ctx, &cuda, 4 * MIB),
        "buffer cuda->vulkan" => buffer_cuda_to_vulkan(ctx, &cuda, 4 * MIB),
        "image optimal vulkan->cuda" => image_vulkan_to_cuda(ctx, &cuda, &optimal_image_options()),
        "image optimal cuda->vulkan" => image_cuda_to_vulkan(ctx, &cuda, &optimal_image_options()),
        "image linear vulkan->cuda" => image_vulkan_to_cuda(ctx, &cuda, &linear_image_options()),
        "image linear cuda->vulkan" => image_cuda_to_vulkan(ctx, &cuda, &linear_image_options()),
        "timeline semaphore vulkan->cuda" => semaphore_vulkan_to_cuda(ctx, &cuda, SemaphoreKind::Timeline, 64),
        "timeline semaphore cuda->vulkan" => semaphore_cuda_to_vulkan(ctx, &cuda, SemaphoreKind::Timeline, 64),
        "binary semaphore vulkan->cuda" => semaphore_vulkan_to_cuda(ctx, &cuda, SemaphoreKind::Binary, 16),
        "binary semaphore cuda->vulkan" => semaphore_cuda_to_vulkan(ctx, &cuda, SemaphoreKind::Binary, 16),
        other => Err(Error::invalid(
            format!("self-test path {other:?}"),
            "no such path",
            format!("use one of {}", PATHS.join(", ")),
        )),
    }
}

/// A 3-layer 2D array render target, optimal tiling.
pub fn optimal_image_options() -> ImageOptions {
    ImageOptions::d2_array(TextureFormat::Rgba8Unorm, 256, 128, 3).usage(TextureUsage {
        sampled: true,
        storage: false,
        color_attachment: true,
        transfer: true,
    })
}

/// A 2D image, linear tiling (linear images are 2D with one layer on most drivers).
pub fn linear_image_options() -> ImageOptions {
    ImageOptions::d2(TextureFormat::Rgba8Unorm, 200, 64).tiling(ImageTiling::Linear)
}

/// Bytes that differ between neighbours and between seeds, so shifted or stale data shows.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(0x9e37_79b9);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u8
        })
        .collect()
}

/// Compares `got` with `want`, naming the first difference.
pub fn compare(what: &str, got: &[u8], want: &[u8]) -> Result<()> {
    if got.len() != want.len() {
        return Err(Error::Mismatch {
            what: what.into(),
            detail: format!("read {} bytes, expected {}", got.len(), want.len()),
        });
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let wrong = got.iter().zip(want).filter(|(a, b)| a != b).count();
        return Err(Error::Mismatch {
            what: what.into(),
            detail: format!(
                "{wrong} of {} bytes differ, first at {i}: {:#04x} instead of {:#04x}",
                got.len(),
                got[i],
                want[i]
            ),
        });
    }
    Ok(())
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Vulkan writes a pattern into an exported device-local buffer; CUDA reads it back.
pub fn buffer_vulkan_to_cuda(ctx: &VulkanContext, cuda: &CudaDevice, size: u64) -> Result<String> {
    let mut buffer = Buffer::new(ctx, &BufferOptions::new(size))?;
    let want = pattern(size as usize, 1);
    buffer.write(0, &want)?;
    let imported = cuda.import_buffer(buffer.export_fd()?)?;
    let got = imported.copy_to_host()?;
    compare("buffer vulkan->cuda", &got, &want)?;
    Ok(format!("{} checked", size_text(size)))
}

/// CUDA writes a pattern into an imported buffer; Vulkan reads it back.
pub fn buffer_cuda_to_vulkan(ctx: &VulkanContext, cuda: &CudaDevice, size: u64) -> Result<String> {
    let buffer = Buffer::new(ctx, &BufferOptions::new(size))?;
    let imported = cuda.import_buffer(buffer.export_fd()?)?;
    let want = pattern(size as usize, 2);
    imported.copy_from_host(&want)?;
    let got = buffer.read(0, size)?;
    compare("buffer cuda->vulkan", &got, &want)?;
    Ok(format!("{} checked", size_text(size)))
}

fn image_text(image: &Image) -> String {
    let d = image.description();
    format!(
        "{}x{}x{} {} {:?}, {} layer(s), {} checked",
        d.extent.width,
        d.extent.height,
        d.extent.depth,
        d.format,
        d.dimension,
        d.array_layers,
        size_text(image.packed_size())
    )
}

/// Vulkan uploads texels into an exported image; CUDA copies them out of the imported one.
pub fn image_vulkan_to_cuda(ctx: &VulkanContext, cuda: &CudaDevice, options: &ImageOptions) -> Result<String> {
    let image = Image::new(ctx, options)?;
    let want = pattern(image.packed_size() as usize, 3);
    image.upload(&want)?;
    let imported = cuda.import_texture(image.export_fd()?)?;
    let got = imported.copy_to_host()?;
    compare("image vulkan->cuda", &got, &want)?;
    Ok(image_text(&image))
}

/// CUDA copies texels into an imported image; Vulkan downloads them.
pub fn image_cuda_to_vulkan(ctx: &VulkanContext, cuda: &CudaDevice, options: &ImageOptions) -> Result<String> {
    let image = Image::new(ctx, options)?;
    // Give the image a defined layout (GENERAL) before CUDA writes: a later first transition
    // from UNDEFINED would discard CUDA's texels.
    image.upload(&vec![0u8; image.packed_size() as usize])?;
    let imported = cuda.import_texture(image.export_fd()?)?;
    let want = pattern(image.packed_size() as usize, 4);
    imported.copy_from_host(&want)?;
    let got = image.download()?;
    compare("image cuda->vulkan", &got, &want)?;
    Ok(image_text(&image))
}

/// The value Vulkan (or CUDA) writes in round `r`: distinct per round and never zero.
fn round_value(r: usize) -> u32 {
    0xA5A5_0000 ^ (r as u32).wrapping_mul(0x0101_0101).wrapping_add(1)
}

fn check_rounds(what: &str, results: &[u8], slot: usize) -> Result<()> {
    for (r, chunk) in results.chunks(slot).enumerate() {
        let want = round_value(r).to_ne_bytes();
        if let Some(i) = chunk.chunks(4).position(|w| w != want) {
            let got = u32::from_ne_bytes(chunk[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]));
            return Err(Error::Mismatch {
                what: what.into(),
                detail: format!(
                    "round {r}, word {i}: {got:#010x} instead of {:#010x} (a side did not wait for the other)",
                    round_value(r)
                ),
            });
        }
    }
    Ok(())
}

/// The bytes one round moves.
const SLOT: u64 = 256 << 10;

/// Ordering Vulkan -> CUDA over `rounds` rounds with no host wait in between: each round Vulkan
/// fills a shared buffer with a new value and signals; CUDA waits, copies the buffer into its
/// own memory and signals back; Vulkan waits for that before the next fill. Every copy must
/// hold its round's value.
pub fn semaphore_vulkan_to_cuda(
    ctx: &VulkanContext,
    cuda: &CudaDevice,
    kind: SemaphoreKind,
    rounds: usize,
) -> Result<String> {
    let to_cuda = VkSemaphore::exportable(ctx, kind)?;
    let to_vulkan = match kind {
        SemaphoreKind::Timeline => None,
        SemaphoreKind::Binary => Some(VkSemaphore::exportable(ctx, kind)?),
    };
    let shared = Buffer::new(ctx, &BufferOptions::new(SLOT))?;
    let imported = cuda.import_buffer(shared.export_fd()?)?;
    let cuda_to_cuda = cuda.import_semaphore(to_cuda.export()?)?;
    let cuda_to_vulkan = match &to_vulkan {
        Some(s) => Some(cuda.import_semaphore(s.export()?)?),
        None => None,
    };
    let stream = cuda.stream();
    let mut results = stream
        .alloc_zeros::<u8>(SLOT as usize * rounds)
        .map_err(|e| driver_error("cuMemAlloc", e, "allocating CUDA memory for the results"))?;
    // Declared before the submitter, so it is dropped after it: Submitter's Drop waits for the
    // queue, so an early return never destroys the fence under a pending submission.
    let fence = VkFence::new(ctx)?;
    let submitter = Submitter::new(ctx)?;
    let family = ctx.queue_family_index();
    let cmds = (0..rounds)
        .map(|r| {
            submitter.record(|dev, cmd| {
                record_buffer_acquire(dev, cmd, shared.handle(), family);
                // SAFETY: cmd is recording (Submitter::record); `shared` is live until after the Submitter's
                // Drop waited for the queue, has TRANSFER_DST (default usage), and SLOT is its size, a multiple of 4.
                unsafe { dev.cmd_fill_buffer(cmd, shared.handle(), 0, SLOT, round_value(r)) };
                record_buffer_release(dev, cmd, shared.handle(), family);
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for (r, cmd) in cmds.iter().enumerate() {
        let r64 = r as u64;
        // Vulkan: wait until CUDA copied the previous round, fill, signal.
        match &to_vulkan {
            None => submitter.submit(&[*cmd], &[(&to_cuda, 2 * r64)], &[(&to_cuda, 2 * r64 + 1)], vk::Fence::null())?,
            Some(back) => {
                let waits: Vec<SemOp<'_>> = if r == 0 { vec![] } else { vec![(back, 0)] };
                submitter.submit(&[*cmd], &waits, &[(&to_cuda, 0)], vk::Fence::null())?
            }
        }
        // CUDA: wait for the fill, copy it out, signal.
        cuda_to_cuda.wait(stream, 2 * r64 + 1)?;
        let range = r * SLOT as usize..(r + 1) * SLOT as usize;
        let mut slot = results.try_slice_mut(range.clone()).ok_or_else(|| {
            Error::invalid(format!("result slot {range:?}"), "outside the result buffer", "report this as a bug")
        })?;
        stream
            .memcpy_dtod(&imported, &mut slot)
            .map_err(|e| driver_error("cuMemcpyDtoDAsync", e, "copying the shared buffer in CUDA"))?;
        match &cuda_to_vulkan {
            None => cuda_to_cuda.signal(stream, 2 * r64 + 2)?,
            Some(back) => back.signal(stream, 0)?,
        }
    }
    match &to_vulkan {
        None => to_cuda.host_wait(2 * rounds as u64, TIMEOUT)?,
        Some(back) => {
            // Consume CUDA's last signal so the binary semaphore is unsignalled when destroyed.
            submitter.submit(&[], &[(back, 0)], &[], fence.fence)?;
            fence.wait_and_reset(TIMEOUT)?;
        }
    }
    cuda.synchronize()?;
    let host = stream.clone_dtoh(&results).map_err(|e| driver_error("cuMemcpyDtoH", e, "reading the results"))?;
    check_rounds(&format!("{kind:?} semaphore vulkan->cuda"), &host, SLOT as usize)?;
    submitter.wait_idle()?;
    Ok(format!("{rounds} rounds of {} ordered, each checked", size_text(SLOT)))
}

/// Ordering CUDA -> Vulkan over `rounds` rounds with no host wait in between: each round CUDA
/// fills a shared buffer with a new value and signals; Vulkan waits, copies it into a
/// host-visible buffer and signals back; CUDA waits for that before the next fill.
pub fn semaphore_cuda_to_vulkan(
    ctx: &VulkanContext,
    cuda: &CudaDevice,
    kind: SemaphoreKind,
    rounds: usize,
) -> Result<String> {
    let to_vulkan = VkSemaphore::exportable(ctx, kind)?;
    let to_cuda = match kind {
        SemaphoreKind::Timeline => None,
        SemaphoreKind::Binary => Some(VkSemaphore::exportable(ctx, kind)?),
    };
    let shared = Buffer::new(ctx, &BufferOptions::new(SLOT))?;
    let results =
        Buffer::new(ctx, &BufferOptions::new(SLOT * rounds as u64).memory(MemoryKind::HostVisible).export(None))?;
    let imported = cuda.import_buffer(shared.export_fd()?)?;
    let cuda_signal = cuda.import_semaphore(to_vulkan.export()?)?;
    let cuda_wait = match &to_cuda {
        Some(s) => Some(cuda.import_semaphore(s.export()?)?),
        None => None,
    };
    let stream = cuda.stream();
    // Dropped after the submitter (whose Drop waits for the queue), as above.
    let fence = VkFence::new(ctx)?;
    let submitter = Submitter::new(ctx)?;
    let family = ctx.queue_family_index();
    let cmds = (0..rounds)
        .map(|r| {
            submitter.record(|dev, cmd| {
                record_buffer_acquire(dev, cmd, shared.handle(), family);
                let region = [vk::BufferCopy { src_offset: 0, dst_offset: r as u64 * SLOT, size: SLOT }];
                // SAFETY: cmd is recording; both buffers outlive the Submitter (declared before it) and have
                // the transfer usages; the region, SLOT bytes at r*SLOT, lies inside both.
                unsafe { dev.cmd_copy_buffer(cmd, shared.handle(), results.handle(), &region) };
                record_buffer_release(dev, cmd, shared.handle(), family);
                record_host_read(dev, cmd, results.handle());
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for (r, cmd) in cmds.iter().enumerate() {
        let r64 = r as u64;
        // CUDA: wait until Vulkan copied the previous round, fill, signal.
        match &cuda_wait {
            None => cuda_signal.wait(stream, 2 * r64)?,
            Some(w) if r > 0 => w.wait(stream, 0)?,
            Some(_) => {}
        }
        imported.fill_u32(round_value(r))?;
        cuda_signal.signal(stream, 2 * r64 + 1)?;
        // Vulkan: wait for the fill, copy it out, signal.
        match &to_cuda {
            None => submitter.submit(
                &[*cmd],
                &[(&to_vulkan, 2 * r64 + 1)],
                &[(&to_vulkan, 2 * r64 + 2)],
                vk::Fence::null(),
            )?,
            Some(back) => {
                let last = r + 1 == rounds;
                // The last round signals nothing back (CUDA waits no more) but a fence.
                let signals: Vec<SemOp<'_>> = if last { vec![] } else { vec![(back, 0)] };
                submitter.submit(
                    &[*cmd],
                    &[(&to_vulkan, 0)],
                    &signals,
                    if last { fence.fence } else { vk::Fence::null() },
                )?
            }
        }
    }
    match &to_cuda {
        None => to_vulkan.host_wait(2 * rounds as u64, TIMEOUT)?,
        Some(_) => fence.wait_and_reset(TIMEOUT)?,
    }
    cuda.synchronize()?;
    let host = results.read(0, SLOT * rounds as u64)?;
    check_rounds(&format!("{kind:?} semaphore cuda->vulkan"), &host, SLOT as usize)?;
    submitter.wait_idle()?;
    Ok(format!("{rounds} rounds of {} ordered, each checked", size_text(SLOT)))
}
