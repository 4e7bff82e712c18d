//! Vulkan writes a buffer, an OpenCL kernel transforms it in place, Vulkan verifies; many rounds
//! over the same shared memory, nothing copied between the APIs.
//!
//! Rounds are ordered by shared binary semaphores where OpenCL has
//! cl_khr_external_semaphore_opaque_fd (NVIDIA), else by waiting on the host (Vulkan's fence,
//! then `clFinish`). OpenCL interop needs a GPU driver: elsewhere the example says why and exits.
//!
//! `cargo run --example vulkan_to_opencl [-- ROUNDS]`

#[cfg(not(feature = "opencl"))]
fn main() {
    eprintln!("this example needs lava-flow's `opencl` feature");
    std::process::exit(1);
}

#[cfg(feature = "opencl")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    example::run()
}

#[cfg(feature = "opencl")]
mod example {
    use ash::vk;
    use lava_flow::opencl::{ClContext, KernelArg};
    use lava_flow::raw_gpu_handle::{SemaphoreHandleKind, SemaphoreKind};
    use lava_flow::vulkan::sync::{self, Submission};
    use lava_flow::vulkan::MemoryKind;
    use lava_flow::{Buffer, BufferOptions, VulkanContext};

    const WORDS: usize = 1 << 20;
    const KERNEL: &str =
        "__kernel void step(__global uint* x, uint k) { size_t i = get_global_id(0); x[i] = x[i] * 3u + k; }";

    /// An exportable binary Vulkan semaphore (lava-flow's `vulkan::sync`), used only where both
    /// sides have external semaphores.
    fn exportable_semaphore(ctx: &VulkanContext) -> lava_flow::Result<sync::Semaphore> {
        sync::Semaphore::exportable(ctx, SemaphoreKind::Binary, SemaphoreHandleKind::OpaqueFd)
    }

    /// Submits an empty batch that signals `semaphore` (after earlier work) or waits for it, and
    /// waits on the host for the batch.
    fn submit(semaphore: &sync::Semaphore, wait: bool) -> lava_flow::Result<()> {
        let batch = if wait {
            Submission::new().wait(semaphore, 0, vk::PipelineStageFlags::ALL_COMMANDS)
        } else {
            Submission::new().signal(semaphore, 0)
        };
        batch.submit(semaphore.context())?.wait(std::time::Duration::from_secs(60))
    }

    fn vk_write(buffer: &Buffer, words: &[u32]) -> lava_flow::Result<()> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut staging = Buffer::new(
            buffer.context(),
            &BufferOptions::new(bytes.len() as u64).memory(MemoryKind::HostVisible).export(None),
        )?;
        staging.write(0, &bytes)?;
        staging.copy_region_to(0, buffer, 0, bytes.len() as u64)
    }

    fn vk_read(buffer: &Buffer) -> lava_flow::Result<Vec<u32>> {
        let len = (WORDS * 4) as u64;
        let staging =
            Buffer::new(buffer.context(), &BufferOptions::new(len).memory(MemoryKind::HostVisible).export(None))?;
        buffer.copy_region_to(0, &staging, 0, len)?;
        Ok(staging.read(0, len)?.chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    pub fn run() -> Result<(), Box<dyn std::error::Error>> {
        let rounds: u32 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(100);
        let vk = VulkanContext::new()?;
        // Without OpenCL there is nothing to show: that is an error (exit code 1), not a success.
        let cl = ClContext::for_identity(&vk.identity())
            .map_err(|e| format!("OpenCL interop is unavailable here, nothing to show: {e}"))?;
        let info = cl.info();
        println!("Vulkan: {}  OpenCL: {} / {}, {}", vk.info().name, info.platform, info.name, cl.identity());
        let buffer = Buffer::new(&vk, &BufferOptions::new((WORDS * 4) as u64))?;
        let clbuf = cl.import_buffer(buffer.export_fd()?)?;
        let mut kernel = cl.build_kernel(KERNEL, "step")?;

        let semaphores = info.external_semaphore_opaque_fd && vk.extensions().external_semaphore_fd;
        let sync = if semaphores {
            let (to_cl, to_vk) = (exportable_semaphore(&vk)?, exportable_semaphore(&vk)?);
            let cl_wait = cl.import_semaphore(to_cl.export()?)?;
            let cl_signal = cl.import_semaphore(to_vk.export()?)?;
            println!("ordering: shared binary semaphores (cl_khr_external_semaphore_opaque_fd)");
            Some((to_cl, to_vk, cl_wait, cl_signal))
        } else {
            println!("ordering: no OpenCL external semaphores, so each hand-over waits on the host (Vulkan fence, then clFinish)");
            None
        };

        let start = std::time::Instant::now();
        for round in 0..rounds {
            let input: Vec<u32> = (0..WORDS as u32).map(|i| i.wrapping_mul(2_654_435_761) ^ round).collect();
            vk_write(&buffer, &input)?;
            if let Some((to_cl, _, cl_wait, _)) = &sync {
                submit(to_cl, false)?;
                cl_wait.wait()?;
            }
            cl.acquire(&[&clbuf])?;
            kernel.enqueue(&[KernelArg::Buffer(&clbuf), KernelArg::U32(round)], &[WORDS])?;
            cl.release(&[&clbuf])?;
            match &sync {
                Some((_, to_vk, _, cl_signal)) => {
                    cl_signal.signal()?;
                    submit(to_vk, true)?;
                }
                None => cl.finish()?,
            }
            let out = vk_read(&buffer)?;
            if let Some(i) = (0..WORDS).find(|&i| out[i] != input[i].wrapping_mul(3).wrapping_add(round)) {
                return Err(format!("round {round}: word {i} is {} after OpenCL", out[i]).into());
            }
        }
        cl.finish()?;
        println!(
            "{rounds} rounds: Vulkan wrote {WORDS} words, OpenCL computed x*3+round in place, Vulkan verified every word ({:.2} ms per round)",
            start.elapsed().as_secs_f64() * 1e3 / f64::from(rounds.max(1))
        );
        Ok(())
    }
}
