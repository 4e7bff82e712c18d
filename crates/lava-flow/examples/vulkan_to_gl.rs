//! Vulkan writes a buffer, an OpenGL compute shader transforms it in place, Vulkan verifies;
//! many rounds over the same shared memory, nothing copied between the APIs.
//!
//! Rounds are ordered by shared binary semaphores where GL has GL_EXT_semaphore_fd (NVIDIA).
//! llvmpipe has no GL semaphores: there each hand-over waits on the host instead (Vulkan's fence,
//! then `glFinish`), and the example says so.
//!
//! `cargo run --example vulkan_to_gl [-- ROUNDS]`

#[cfg(not(feature = "gl"))]
fn main() {
    eprintln!("this example needs lava-flow's `gl` feature");
    std::process::exit(1);
}

#[cfg(feature = "gl")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    example::run()
}

#[cfg(feature = "gl")]
mod example {
    use std::os::fd::{FromRawFd, OwnedFd};

    use ash::vk;
    use lava_flow::gl::functions as f;
    use lava_flow::gl::{CurrentGl, GlContext};
    use lava_flow::raw_gpu_handle::{Semaphore, SemaphoreDescription, SemaphoreHandleKind, SemaphoreKind};
    use lava_flow::vulkan::MemoryKind;
    use lava_flow::{Buffer, BufferOptions, VulkanContext};

    const WORDS: usize = 1 << 16;
    const SHADER_DESKTOP: &str = "#version 430\n";
    const SHADER_ES: &str = "#version 310 es\n";
    const SHADER_BODY: &str = "layout(local_size_x = 64) in;
layout(std430, binding = 0) buffer Data { uint x[]; };
layout(location = 0) uniform uint k;
void main() { uint i = gl_GlobalInvocationID.x; x[i] = x[i] * 3u + k; }
";

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
            Ok(Semaphore {
                // SAFETY: vkGetSemaphoreFdKHR returned a new open fd whose ownership passed to us.
                handle: unsafe { OwnedFd::from_raw_fd(fd) },
                description: SemaphoreDescription {
                    kind: SemaphoreKind::Binary,
                    handle_kind: SemaphoreHandleKind::OpaqueFd,
                    device: self.ctx.identity(),
                },
            })
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

    fn compile(gl: &CurrentGl<'_>) -> Result<u32, Box<dyn std::error::Error>> {
        let source = format!("{}{SHADER_BODY}", if gl.is_desktop() { SHADER_DESKTOP } else { SHADER_ES });
        // SAFETY: the guard keeps the context current; `ptr` and `len` describe `source`, alive across
        // the calls; every out-pointer is a local, and the log buffer's length is the one passed.
        unsafe {
            let shader = (gl.create_shader)(f::COMPUTE_SHADER);
            let ptr = source.as_ptr();
            let len = source.len() as i32;
            (gl.shader_source)(shader, 1, &ptr, &len);
            (gl.compile_shader)(shader);
            let mut ok = 0;
            (gl.get_shaderiv)(shader, f::COMPILE_STATUS, &mut ok);
            if ok == 0 {
                let mut log = vec![0u8; 4096];
                let mut n = 0;
                (gl.get_shader_info_log)(shader, log.len() as i32, &mut n, log.as_mut_ptr());
                return Err(format!("compute shader: {}", String::from_utf8_lossy(&log[..n as usize])).into());
            }
            let program = (gl.create_program)();
            (gl.attach_shader)(program, shader);
            (gl.link_program)(program);
            (gl.delete_shader)(shader);
            (gl.get_programiv)(program, f::LINK_STATUS, &mut ok);
            if ok == 0 {
                return Err("linking the compute program failed".into());
            }
            Ok(program)
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
        // Without OpenGL there is nothing to show: that is an error (exit code 1), not a success.
        let gl = GlContext::for_identity(&vk.identity())
            .map_err(|e| format!("OpenGL is unavailable here, nothing to show: {e}"))?;
        println!("Vulkan: {}  OpenGL: {} ({}), {}", vk.info().name, gl.info().renderer, gl.info().api, gl.identity());

        // GL buffers need slack after them on llvmpipe (docs/GL.md); harmless elsewhere.
        let buffer = Buffer::new(&vk, &BufferOptions::new((WORDS * 4) as u64).for_gl())?;
        let glbuf = gl.import_buffer(buffer.export_fd()?)?;

        let semaphores = gl.info().semaphore_fd && vk.extensions().external_semaphore_fd;
        let sync = if semaphores {
            let (to_gl, to_vk) = (VkSemaphore::new(&vk)?, VkSemaphore::new(&vk)?);
            let gl_wait = gl.import_semaphore(to_gl.export()?)?;
            let gl_signal = gl.import_semaphore(to_vk.export()?)?;
            println!("ordering: shared binary semaphores (GL_EXT_semaphore_fd)");
            Some((to_gl, to_vk, gl_wait, gl_signal))
        } else {
            println!(
                "ordering: {} has no GL_EXT_semaphore_fd, so each hand-over waits on the host (Vulkan fence, then glFinish)",
                gl.info().renderer
            );
            None
        };

        let guard = gl.make_current()?;
        let program = compile(&guard)?;
        drop(guard);
        let start = std::time::Instant::now();
        for round in 0..rounds {
            let input: Vec<u32> = (0..WORDS as u32).map(|i| i.wrapping_mul(2_654_435_761) ^ round).collect();
            vk_write(&buffer, &input)?; // waits for its fence: the write is done on the GPU
            if let Some((to_gl, _, gl_wait, _)) = &sync {
                to_gl.submit(false)?;
                gl_wait.wait(&[&glbuf], &[])?;
            }
            {
                let gl = gl.make_current()?;
                // SAFETY: `gl` keeps the context current; program and buffer are live names of this context;
                // the program was compiled for it, its uniform 0 is a uint and binding 0 an SSBO of WORDS words,
                // which the dispatch of WORDS / 64 groups of 64 covers exactly.
                unsafe {
                    (gl.use_program)(program);
                    (gl.uniform1ui)(0, round);
                    (gl.bind_buffer_base)(f::SHADER_STORAGE_BUFFER, 0, glbuf.name());
                    (gl.dispatch_compute)((WORDS / 64) as u32, 1, 1);
                    (gl.memory_barrier)(f::ALL_BARRIER_BITS);
                    (gl.bind_buffer_base)(f::SHADER_STORAGE_BUFFER, 0, 0);
                    (gl.use_program)(0);
                }
                gl.check("glDispatchCompute", "transforming the shared buffer")?;
            }
            match &sync {
                Some((_, to_vk, _, gl_signal)) => {
                    gl_signal.signal(&[&glbuf], &[])?;
                    to_vk.submit(true)?;
                }
                None => gl.finish()?,
            }
            let out = vk_read(&buffer)?;
            if let Some(i) = (0..WORDS).find(|&i| out[i] != input[i].wrapping_mul(3).wrapping_add(round)) {
                return Err(format!(
                    "round {round}: word {i} is {} after GL, expected {}",
                    out[i],
                    input[i].wrapping_mul(3).wrapping_add(round)
                )
                .into());
            }
        }
        let elapsed = start.elapsed();
        let guard = gl.make_current()?;
        // SAFETY: the guard keeps the context current; the program is ours and deleted once.
        unsafe { (guard.delete_program)(program) };
        drop(guard);
        println!(
            "{rounds} rounds: Vulkan wrote {WORDS} words, GL computed x*3+round in place, Vulkan verified every word ({:.2} ms per round)",
            elapsed.as_secs_f64() * 1e3 / f64::from(rounds.max(1))
        );
        Ok(())
    }
}
