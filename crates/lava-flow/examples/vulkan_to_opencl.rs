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
    use std::os::fd::{FromRawFd, OwnedFd};

    use ash::vk;
    use lava_flow::opencl::{ClContext, KernelArg};
    use lava_flow::raw_gpu_handle::{SemaphoreDescription, SemaphoreHandle, SemaphoreHandleKind, SemaphoreKind};
    use lava_flow::vulkan::MemoryKind;
    use lava_flow::{Buffer, BufferOptions, VulkanContext};

    const WORDS: usize = 1 << 20;
    const KERNEL: &str =
        "__kernel void step(__global uint* x, uint k) { size_t i = get_global_id(0); x[i] = x[i] * 3u + k; }";

    /// An exportable binary Vulkan semaphore (raw ash; lava-flow's Vulkan sync module offers the
    /// same). Used only where both sides have external semaphores.
    struct VkSemaphore {
        ctx: VulkanContext,
        semaphore: vk::Semaphore,
    }

    impl VkSemaphore {
        fn new(ctx: &VulkanContext) -> Result<VkSemaphore, vk::Result> {
            let mut export =
                vk::ExportSemaphoreCreateInfo::default().handle_types(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
            let info = vk::SemaphoreCreateInfo::default().push_next(&mut export);
            // SAFETY: only called where the device has VK_KHR_external_semaphore_fd (checked before), so
            // the export chain is valid; `info` and its chain are locals that outlive the call.
            let semaphore = unsafe { ctx.device().create_semaphore(&info, None) }?;
            Ok(VkSemaphore { ctx: ctx.clone(), semaphore })
        }

        fn export(&self) -> Result<lava_flow::raw_gpu_handle::ExportedSemaphore, vk::Result> {
            let loader = ash::khr::external_semaphore_fd::Device::new(self.ctx.instance(), self.ctx.device());
            let info = vk::SemaphoreGetFdInfoKHR::default()
                .semaphore(self.semaphore)
                .handle_type(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
            // SAFETY: the semaphore was created exportable as an opaque fd on the loader's device.
            let fd = unsafe { loader.get_semaphore_fd(&info) }?;
            // SAFETY: vkGetSemaphoreFdKHR returned a new open fd whose ownership passed to us.
            let handle = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(SemaphoreHandle::new(
                handle,
                SemaphoreDescription {
                    kind: SemaphoreKind::Binary,
                    handle_kind: SemaphoreHandleKind::OpaqueFd,
                    device: self.ctx.identity(),
                },
            ))
        }

        /// Submits an empty batch that signals (after earlier work) or waits, then waits for it.
        fn submit(&self, wait: bool) -> Result<(), vk::Result> {
            let dev = self.ctx.device();
            // SAFETY: the device is alive (self.ctx); the create info is a default local.
            let fence = unsafe { dev.create_fence(&vk::FenceCreateInfo::default(), None) }?;
            let sems = [self.semaphore];
            let stages = [vk::PipelineStageFlags::ALL_COMMANDS];
            let submit = if wait {
                vk::SubmitInfo::default().wait_semaphores(&sems).wait_dst_stage_mask(&stages)
            } else {
                vk::SubmitInfo::default().signal_semaphores(&sems)
            };
            // SAFETY: with_queue holds the queue mutex; the batch has no command buffers; the semaphore is
            // live and each wait follows a signal the other API queued first; the fence is fresh; `submit`,
            // `sems` and `stages` are locals that outlive the call.
            let r = self.ctx.with_queue(|q| unsafe { dev.queue_submit(q, &[submit], fence) }).and_then(|_| {
                // SAFETY: the fence belongs to this device and is alive until destroyed below.
                unsafe { dev.wait_for_fences(&[fence], true, u64::MAX) }
            });
            // SAFETY: a wait with no timeout returns once the fence signalled (or the device is lost), and a
            // fence whose submission failed is unused: no queue operation uses it any more.
            unsafe { dev.destroy_fence(fence, None) };
            r
        }
    }

    impl Drop for VkSemaphore {
        fn drop(&mut self) {
            // SAFETY: every batch using the semaphore was waited for (submit waits on its fence), so no
            // queue operation uses it; it is destroyed once.
            unsafe { self.ctx.device().destroy_semaphore(self.semaphore, None) };
        }
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
            let (to_cl, to_vk) = (VkSemaphore::new(&vk)?, VkSemaphore::new(&vk)?);
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
                to_cl.submit(false)?;
                cl_wait.wait()?;
            }
            cl.acquire(&[&clbuf])?;
            kernel.enqueue(&[KernelArg::Mem(clbuf.mem()), KernelArg::U32(round)], &[WORDS])?;
            cl.release(&[&clbuf])?;
            match &sync {
                Some((_, to_vk, _, cl_signal)) => {
                    cl_signal.signal()?;
                    to_vk.submit(true)?;
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
