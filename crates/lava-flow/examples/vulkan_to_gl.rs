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
    use ash::vk;
    use lava_flow::gl::functions as f;
    use lava_flow::gl::{CurrentGl, GlContext};
    use lava_flow::raw_gpu_handle::{SemaphoreHandleKind, SemaphoreKind};
    use lava_flow::vulkan::sync::{self, Submission};
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
            let (to_gl, to_vk) = (exportable_semaphore(&vk)?, exportable_semaphore(&vk)?);
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
                submit(to_gl, false)?;
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
                    submit(to_vk, true)?;
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
