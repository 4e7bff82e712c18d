//! CUDA allocates, Vulkan imports: the other direction of `vulkan_to_cuda`.
//!
//! CUDA allocates exportable device memory with its virtual memory API (`cuMemCreate`, mapped
//! for CUDA with `cuMemMap`), fills one buffer of it with `cuMemsetD32` and copies a pattern into
//! another; both buffers are exported (`cuMemExportToShareableHandle`, one opaque fd per export
//! of the same allocation) and imported into the Vulkan device of the same GPU, which reads and
//! checks them, writes its own pattern, and CUDA reads that back.
//!
//! `cargo run --example cuda_to_vulkan [BYTES]` (default 16 MiB). Without CUDA, or where the
//! device cannot export allocations, it prints why and exits 0.

use std::process::ExitCode;

use lava_flow::cuda::CudaDevice;
use lava_flow::pool::BlockImporter;
use lava_flow::{Error, VulkanContext};

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len / 4).flat_map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed).to_le_bytes()).collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_unavailable() || matches!(e, Error::Unsupported { .. }) => {
            println!("skipped: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> lava_flow::Result<()> {
    let bytes: u64 = std::env::args().nth(1).map(|a| a.parse().expect("BYTES is a number")).unwrap_or(16 << 20);
    let half = (bytes / 2) & !(lava_flow::cuda::BUFFER_ALIGNMENT - 1);
    if half == 0 {
        return Err(Error::invalid(format!("{bytes} bytes"), "two aligned buffers do not fit", "ask for more"));
    }
    let cuda = CudaDevice::open(0)?;
    let support = cuda.export_support()?;
    println!("CUDA device 0: {} ({}), export support {support:?}", cuda.name(), cuda.uuid());
    let allocation = cuda.allocate_exportable(bytes)?;
    let d = allocation.description();
    println!(
        "allocated {} bytes (asked {bytes}); exports as {} memory type {} ({}) of {}",
        allocation.size(),
        d.handle_kind,
        d.memory_type_index,
        d.memory_properties,
        d.device
    );
    let vk = VulkanContext::with_uuid(d.device.device_uuid)?;
    println!("Vulkan device: {} ({})", vk.info().name, vk.identity());

    // CUDA writes: a 32-bit fill in the first buffer, a pattern in the second.
    let filled = allocation.buffer(0, half)?;
    filled.fill_u32(0x1234_5678)?;
    let patterned = allocation.buffer(half, half)?;
    let data = pattern(half as usize, 42);
    patterned.copy_from_host(&data)?;

    // Vulkan imports both: the second export of the allocation re-uses the first import.
    let importer = BlockImporter::new(&vk);
    let vk_filled = importer.import_buffer(filled.export()?)?;
    let mut vk_patterned = importer.import_buffer(patterned.export()?)?;
    println!("Vulkan imports: {:?}", importer.stats());
    let seen = vk_filled.read(0, half)?;
    check(seen.chunks_exact(4).all(|w| w == 0x1234_5678u32.to_le_bytes()), "Vulkan reads CUDA's cuMemsetD32")?;
    check(vk_patterned.read(0, half)? == data, "Vulkan reads CUDA's copy")?;

    // Vulkan writes, CUDA reads.
    let back = pattern(half as usize, 7);
    vk_patterned.write(0, &back)?;
    check(patterned.copy_to_host()? == back, "CUDA reads what Vulkan wrote")?;
    println!("ok: {half} bytes each way, data checked both ways");
    Ok(())
}

fn check(ok: bool, what: &str) -> lava_flow::Result<()> {
    if ok {
        println!("ok: {what}");
        Ok(())
    } else {
        Err(Error::invalid(what, "the bytes differ", "report this with `lava-flow info`"))
    }
}
