//! Vulkan computes, CUDA transforms the same bytes, Vulkan reads the result: one timeline
//! semaphore orders the three steps of every round, with no host wait between them.
//!
//! Round r: a Vulkan compute shader (`shaders/fill.comp`) writes `x[i] = i * 2654435761 + r`
//! into a shared buffer and signals 3r+1; a CUDA kernel launched through cudarc (`lf_mul3_add`
//! from lava-flow's PTX) waits for 3r+1, computes `x[i] = x[i] * 3 + r` in place and signals
//! 3r+2; Vulkan waits for 3r+2, copies the buffer into round r's slot of a host-visible buffer
//! and signals 3r+3. All rounds are submitted up front; the host then checks every slot.
//!
//! `cargo run --example vulkan_to_cuda [ROUNDS]` (default 100). Without CUDA it says why and
//! checks the Vulkan half alone (compute, copy, timeline ordering) with the transform done on
//! the host.

use std::time::{Duration, Instant};

use ash::vk;
use lava_flow::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use lava_flow::cuda::cudarc::nvrtc::Ptx;
use lava_flow::cuda::{CudaDevice, KERNELS_PTX};
use lava_flow::raw_gpu_handle::{SemaphoreDescription, SemaphoreHandle, SemaphoreHandleKind, SemaphoreKind};
use lava_flow::vulkan::MemoryKind;
use lava_flow::{Buffer, BufferOptions, Error, VulkanContext};

const WORDS: u32 = 1 << 20;
const SPIRV: &[u8] = include_bytes!("shaders/fill.spv");

fn vk_err(call: &'static str) -> impl Fn(vk::Result) -> Box<dyn std::error::Error> {
    move |r| format!("{call} returned {r}").into()
}

fn input(i: u32, round: u32) -> u32 {
    i.wrapping_mul(2_654_435_761).wrapping_add(round)
}

fn expected(i: u32, round: u32) -> u32 {
    input(i, round).wrapping_mul(3).wrapping_add(round)
}

/// The compute pipeline that runs `fill.comp` on one storage buffer, with its Vulkan objects.
struct FillPipeline {
    ctx: VulkanContext,
    module: vk::ShaderModule,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
    pool: vk::DescriptorPool,
    set: vk::DescriptorSet,
}

impl FillPipeline {
    fn new(ctx: &VulkanContext, buffer: &Buffer) -> Result<FillPipeline, Box<dyn std::error::Error>> {
        let dev = ctx.device();
        let words = ash::util::read_spv(&mut std::io::Cursor::new(SPIRV))?;
        // SAFETY: every create info (and the arrays and SPIR-V words it points at) is a local that
        // outlives its call; each handle passed was created just before on this device; `buffer` is a
        // live storage buffer of it. The objects are destroyed in Drop after the device is idle.
        unsafe {
            let module = dev
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&words), None)
                .map_err(vk_err("vkCreateShaderModule"))?;
            let bindings = [vk::DescriptorSetLayoutBinding::default()
                .binding(0)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE)];
            let set_layout = dev
                .create_descriptor_set_layout(&vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings), None)
                .map_err(vk_err("vkCreateDescriptorSetLayout"))?;
            let push = [vk::PushConstantRange::default().stage_flags(vk::ShaderStageFlags::COMPUTE).size(8)];
            let set_layouts = [set_layout];
            let layout = dev
                .create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts).push_constant_ranges(&push),
                    None,
                )
                .map_err(vk_err("vkCreatePipelineLayout"))?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            let pipeline = dev
                .create_compute_pipelines(
                    vk::PipelineCache::null(),
                    &[vk::ComputePipelineCreateInfo::default().stage(stage).layout(layout)],
                    None,
                )
                .map_err(|(_, r)| vk_err("vkCreateComputePipelines")(r))?[0];
            let sizes = [vk::DescriptorPoolSize { ty: vk::DescriptorType::STORAGE_BUFFER, descriptor_count: 1 }];
            let pool = dev
                .create_descriptor_pool(&vk::DescriptorPoolCreateInfo::default().max_sets(1).pool_sizes(&sizes), None)
                .map_err(vk_err("vkCreateDescriptorPool"))?;
            let set = dev
                .allocate_descriptor_sets(
                    &vk::DescriptorSetAllocateInfo::default().descriptor_pool(pool).set_layouts(&set_layouts),
                )
                .map_err(vk_err("vkAllocateDescriptorSets"))?[0];
            let info = [vk::DescriptorBufferInfo { buffer: buffer.handle(), offset: 0, range: vk::WHOLE_SIZE }];
            let write = vk::WriteDescriptorSet::default()
                .dst_set(set)
                .dst_binding(0)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .buffer_info(&info);
            dev.update_descriptor_sets(&[write], &[]);
            Ok(FillPipeline { ctx: ctx.clone(), module, set_layout, layout, pipeline, pool, set })
        }
    }
}

impl Drop for FillPipeline {
    fn drop(&mut self) {
        let dev = self.ctx.device();
        // SAFETY: vkDeviceWaitIdle runs under the queue lock (it needs every queue externally
        // synchronized), so afterwards no submission uses these objects; each is destroyed once,
        // children before the pool and layouts they came from.
        unsafe {
            let _ = self.ctx.with_queue(|_| dev.device_wait_idle());
            dev.destroy_descriptor_pool(self.pool, None);
            dev.destroy_pipeline(self.pipeline, None);
            dev.destroy_pipeline_layout(self.layout, None);
            dev.destroy_descriptor_set_layout(self.set_layout, None);
            dev.destroy_shader_module(self.module, None);
        }
    }
}

/// A command pool, the timeline semaphore and the submissions of every round.
struct Rounds {
    ctx: VulkanContext,
    pool: vk::CommandPool,
    timeline: vk::Semaphore,
}

impl Drop for Rounds {
    fn drop(&mut self) {
        let dev = self.ctx.device();
        // SAFETY: vkDeviceWaitIdle runs under the queue lock, so afterwards no submission uses the
        // pool's command buffers or the semaphore; each object is destroyed once.
        unsafe {
            let _ = self.ctx.with_queue(|_| dev.device_wait_idle());
            dev.destroy_command_pool(self.pool, None);
            dev.destroy_semaphore(self.timeline, None);
        }
    }
}

impl Rounds {
    fn new(ctx: &VulkanContext, exportable: bool) -> Result<Rounds, Box<dyn std::error::Error>> {
        if !ctx.extensions().timeline_semaphore {
            return Err(
                format!("{} lacks timeline semaphores (Vulkan 1.2), which this example uses", ctx.info().name).into()
            );
        }
        let dev = ctx.device();
        let mut export =
            vk::ExportSemaphoreCreateInfo::default().handle_types(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
        let mut timeline = vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
        let mut info = vk::SemaphoreCreateInfo::default().push_next(&mut timeline);
        if exportable {
            info = info.push_next(&mut export);
        }
        // SAFETY: the device has timeline semaphores (checked above) and, when `exportable`,
        // VK_KHR_external_semaphore_fd (main asks for it before); the create infos are locals that
        // outlive the calls.
        unsafe {
            let timeline = dev.create_semaphore(&info, None).map_err(vk_err("vkCreateSemaphore"))?;
            let pool = dev
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default().queue_family_index(ctx.queue_family_index()),
                    None,
                )
                .map_err(vk_err("vkCreateCommandPool"))?;
            Ok(Rounds { ctx: ctx.clone(), pool, timeline })
        }
    }

    fn export(&self) -> Result<lava_flow::raw_gpu_handle::ExportedSemaphore, Box<dyn std::error::Error>> {
        let loader = ash::khr::external_semaphore_fd::Device::new(self.ctx.instance(), self.ctx.device());
        let info = vk::SemaphoreGetFdInfoKHR::default()
            .semaphore(self.timeline)
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
        // SAFETY: the semaphore was created exportable as an opaque fd (export is called only when
        // `exportable`).
        let fd = unsafe { loader.get_semaphore_fd(&info) }.map_err(vk_err("vkGetSemaphoreFdKHR"))?;
        // SAFETY: vkGetSemaphoreFdKHR returned a new open fd whose ownership passed to us.
        let handle = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        Ok(SemaphoreHandle::new(
            handle,
            SemaphoreDescription {
                kind: SemaphoreKind::Timeline,
                handle_kind: SemaphoreHandleKind::OpaqueFd,
                device: self.ctx.identity(),
            },
        ))
    }

    /// Records one command buffer with `record` and submits it waiting for the timeline to reach
    /// `wait` and setting it to `signal` when done.
    fn submit(
        &self,
        wait: u64,
        signal: u64,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dev = self.ctx.device();
        // SAFETY: only this thread uses the pool (external sync of allocation and recording); cmd is
        // recorded before submission and lives until the pool is destroyed after the device is idle;
        // with_queue holds the queue mutex for vkQueueSubmit; the submit info and its chain are locals.
        unsafe {
            let cmd = dev
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default().command_pool(self.pool).command_buffer_count(1),
                )
                .map_err(vk_err("vkAllocateCommandBuffers"))?[0];
            dev.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default())
                .map_err(vk_err("vkBeginCommandBuffer"))?;
            record(dev, cmd);
            dev.end_command_buffer(cmd).map_err(vk_err("vkEndCommandBuffer"))?;
            let (waits, signals, cmds) = ([wait], [signal], [cmd]);
            let sems = [self.timeline];
            let stages = [vk::PipelineStageFlags::ALL_COMMANDS];
            let mut values = vk::TimelineSemaphoreSubmitInfo::default()
                .wait_semaphore_values(&waits)
                .signal_semaphore_values(&signals);
            let submit = vk::SubmitInfo::default()
                .wait_semaphores(&sems)
                .wait_dst_stage_mask(&stages)
                .command_buffers(&cmds)
                .signal_semaphores(&sems)
                .push_next(&mut values);
            self.ctx
                .with_queue(|q| dev.queue_submit(q, &[submit], vk::Fence::null()))
                .map_err(vk_err("vkQueueSubmit"))?;
        }
        Ok(())
    }

    /// Sets the timeline from the host (stands in for CUDA when there is none).
    fn host_signal(&self, value: u64) -> Result<(), Box<dyn std::error::Error>> {
        let info = vk::SemaphoreSignalInfo::default().semaphore(self.timeline).value(value);
        // SAFETY: a timeline semaphore of this device; the example's values only grow.
        unsafe { self.ctx.device().signal_semaphore(&info) }.map_err(vk_err("vkSignalSemaphore"))?;
        Ok(())
    }

    fn host_wait(&self, value: u64) -> Result<(), Box<dyn std::error::Error>> {
        let (sems, values) = ([self.timeline], [value]);
        let info = vk::SemaphoreWaitInfo::default().semaphores(&sems).values(&values);
        // SAFETY: a timeline semaphore of this device; the arrays are locals that outlive the call.
        unsafe { self.ctx.device().wait_semaphores(&info, Duration::from_secs(30).as_nanos() as u64) }
            .map_err(vk_err("vkWaitSemaphores"))?;
        Ok(())
    }
}

/// Hands `buffer` from Vulkan (compute or transfer writes) to the external owner, or back.
fn barrier(dev: &ash::Device, cmd: vk::CommandBuffer, buffer: vk::Buffer, family: u32, to_external: bool) {
    let (src, dst) =
        if to_external { (family, vk::QUEUE_FAMILY_EXTERNAL) } else { (vk::QUEUE_FAMILY_EXTERNAL, family) };
    let b = [vk::BufferMemoryBarrier::default()
        .src_access_mask(if to_external { vk::AccessFlags::SHADER_WRITE } else { vk::AccessFlags::empty() })
        .dst_access_mask(if to_external {
            vk::AccessFlags::empty()
        } else {
            vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_READ
        })
        .src_queue_family_index(src)
        .dst_queue_family_index(dst)
        .buffer(buffer)
        .size(vk::WHOLE_SIZE)];
    let (src_stage, dst_stage) = if to_external {
        (vk::PipelineStageFlags::COMPUTE_SHADER, vk::PipelineStageFlags::BOTTOM_OF_PIPE)
    } else {
        (vk::PipelineStageFlags::TOP_OF_PIPE, vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER)
    };
    // SAFETY: callers record into a command buffer in the recording state and pass a live buffer
    // of the same device with external memory; the barrier array is a local.
    unsafe { dev.cmd_pipeline_barrier(cmd, src_stage, dst_stage, vk::DependencyFlags::empty(), &[], &b, &[]) };
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: u32 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(100);
    let ctx = VulkanContext::new()?;
    let cuda = match CudaDevice::for_identity(&ctx.identity()) {
        Ok(cuda) if ctx.extensions().external_semaphore_fd && ctx.extensions().timeline_semaphore => Some(cuda),
        Ok(_) => {
            println!("{} cannot export timeline semaphores: checking the Vulkan half only", ctx.info().name);
            None
        }
        Err(e) if e.is_unavailable() => {
            println!("CUDA unavailable ({e}): checking the Vulkan half only, with the transform on the host");
            None
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "Vulkan device: {}{}",
        ctx.info().name,
        cuda.as_ref().map(|c| format!(", CUDA device: {}", c.name())).unwrap_or_default()
    );

    let bytes = u64::from(WORDS) * 4;
    let mut shared = Buffer::new(&ctx, &BufferOptions::new(bytes))?;
    let results =
        Buffer::new(&ctx, &BufferOptions::new(bytes * u64::from(rounds)).memory(MemoryKind::HostVisible).export(None))?;
    let fill = FillPipeline::new(&ctx, &shared)?;
    let steps = Rounds::new(&ctx, cuda.is_some())?;

    // CUDA's view: the shared buffer as u32 words, the timeline, and the kernel (through cudarc).
    let mut on_cuda = match &cuda {
        Some(cuda) => {
            let words = cuda.import_buffer(shared.export_fd()?)?.cast::<u32>()?;
            let timeline = cuda.import_semaphore(steps.export()?)?;
            let module = cuda.context().load_module(Ptx::from_src(KERNELS_PTX))?;
            Some((words, timeline, module.load_function("lf_mul3_add")?))
        }
        None => None,
    };

    let family = ctx.queue_family_index();
    let start = Instant::now();
    for r in 0..rounds {
        let base = 3 * u64::from(r);
        // Vulkan: wait until the previous round's read-back is done, then compute the input.
        steps.submit(base, base + 1, |dev, cmd| {
            barrier(dev, cmd, shared.handle(), family, false);
            let push = [r.to_ne_bytes(), WORDS.to_ne_bytes()].concat();
            // SAFETY: cmd is recording; pipeline, layout and set are live objects of this device made for
            // each other (FillPipeline); the push constants are 8 bytes, the range the layout declares.
            unsafe {
                dev.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, fill.pipeline);
                dev.cmd_bind_descriptor_sets(cmd, vk::PipelineBindPoint::COMPUTE, fill.layout, 0, &[fill.set], &[]);
                dev.cmd_push_constants(cmd, fill.layout, vk::ShaderStageFlags::COMPUTE, 0, &push);
                dev.cmd_dispatch(cmd, WORDS.div_ceil(256), 1, 1);
            }
            barrier(dev, cmd, shared.handle(), family, true);
        })?;
        // CUDA: wait for the input, transform it in place, signal.
        if let (Some(cuda), Some((words, timeline, kernel))) = (&cuda, on_cuda.as_mut()) {
            let stream = cuda.stream();
            timeline.wait(stream, base + 1)?;
            let mut launch = stream.launch_builder(kernel);
            launch.arg(&mut *words).arg(&WORDS).arg(&r);
            // SAFETY: lf_mul3_add takes (u32* x, u32 n, u32 add), the argument types pushed in order; it
            // touches x[0..n) only, and `words` holds WORDS words; the Vulkan side waits for the signal
            // enqueued after it before touching the buffer again.
            unsafe { launch.launch(LaunchConfig::for_num_elems(WORDS)) }?;
            timeline.signal(stream, base + 2)?;
        } else {
            // No CUDA: after the compute step, do the transform on the host and signal for it.
            steps.host_wait(base + 1)?;
            let mut x = shared.read(0, bytes)?;
            for (i, w) in x.chunks_mut(4).enumerate() {
                let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
                if v != input(i as u32, r) {
                    let detail = format!("word {i} is {v:#010x}, expected {:#010x}", input(i as u32, r));
                    return Err(Error::Mismatch { what: format!("compute shader output, round {r}"), detail }.into());
                }
                w.copy_from_slice(&v.wrapping_mul(3).wrapping_add(r).to_ne_bytes());
            }
            shared.write(0, &x)?;
            steps.host_signal(base + 2)?;
        }
        // Vulkan: wait for the transform, copy the result into this round's slot.
        steps.submit(base + 2, base + 3, |dev, cmd| {
            barrier(dev, cmd, shared.handle(), family, false);
            let region = [vk::BufferCopy { src_offset: 0, dst_offset: u64::from(r) * bytes, size: bytes }];
            // SAFETY: cmd is recording; both buffers are live with the transfer usages; the region, `bytes`
            // bytes at r*bytes, lies inside both.
            unsafe { dev.cmd_copy_buffer(cmd, shared.handle(), results.handle(), &region) };
            barrier(dev, cmd, shared.handle(), family, true);
            // The host reads the slot after waiting for the semaphore: make the copy visible to it.
            let to_host = [vk::BufferMemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ)
                .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                .buffer(results.handle())
                .size(vk::WHOLE_SIZE)];
            // SAFETY: cmd is recording; `results` is a live buffer of this device; the barrier array is a local.
            unsafe {
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::HOST,
                    vk::DependencyFlags::empty(),
                    &[],
                    &to_host,
                    &[],
                )
            };
        })?;
    }
    let submitted = start.elapsed();

    let mut checked = 0u64;
    for r in 0..rounds {
        steps.host_wait(3 * u64::from(r) + 3)?;
        let slot = results.read(u64::from(r) * bytes, bytes)?;
        for (i, w) in slot.chunks(4).enumerate() {
            let got = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            let want = expected(i as u32, r);
            if got != want {
                return Err(Error::Mismatch {
                    what: format!("round {r}"),
                    detail: format!("word {i} is {got:#010x}, expected {want:#010x}"),
                }
                .into());
            }
            checked += 1;
        }
    }
    if let Some(cuda) = &cuda {
        cuda.synchronize()?;
    }
    println!(
        "{rounds} rounds of Vulkan compute -> {} -> Vulkan read-back ordered by one timeline semaphore; {checked} words checked; {:.1} ms to submit, {:.1} ms in all",
        if cuda.is_some() { "CUDA kernel" } else { "host transform" },
        submitted.as_secs_f64() * 1e3,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
