//! Plain-ash Vulkan for the CUDA self-tests and benchmarks, kept raw on purpose: the bare
//! `vkGetMemoryFdKHR` export the benchmarks' "raw" figures are measured on, and the hand-written
//! semaphores, submissions (waiting for and signalling them without a host wait), queue-family
//! transfers to and from CUDA and fences that those paths were written and verified against on
//! GPU machines. Nothing else belongs here: command buffers are recorded by lava-flow's one
//! recording path (`lava_flow::vulkan::record_command_buffer`), and new code uses
//! `lava_flow::vulkan::sync`.

use std::os::fd::{FromRawFd, OwnedFd};

use ash::vk;
use raw_gpu_handle::{ExportedSemaphore, SemaphoreDescription, SemaphoreHandle, SemaphoreHandleKind, SemaphoreKind};

use lava_flow::{Error, Result, VulkanContext};

/// A fresh opaque fd for `memory` with the bare `vkGetMemoryFdKHR` call (the benchmarks' raw
/// export).
pub fn raw_export_fd(ctx: &VulkanContext, memory: vk::DeviceMemory) -> Result<OwnedFd> {
    let loader = ctx.external_memory_fd()?;
    let info =
        vk::MemoryGetFdInfoKHR::default().memory(memory).handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
    // SAFETY: callers pass memory of ctx's device allocated exportable as an opaque fd (Fixture
    // checks this before its raw route); the loader belongs to the same device.
    let fd = unsafe { loader.get_memory_fd(&info) }
        .map_err(|r| Error::vk("vkGetMemoryFdKHR", r, "exporting memory as an opaque fd"))?;
    // SAFETY: on success vkGetMemoryFdKHR returns a new open fd whose ownership passes to us;
    // nothing else holds it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Records the acquisition of a shared buffer from `VK_QUEUE_FAMILY_EXTERNAL` before Vulkan
/// transfers touch it (what CUDA wrote becomes visible).
pub fn record_buffer_acquire(dev: &ash::Device, cmd: vk::CommandBuffer, buffer: vk::Buffer, family: u32) {
    let barrier = [vk::BufferMemoryBarrier::default()
        .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE)
        .src_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
        .dst_queue_family_index(family)
        .buffer(buffer)
        .size(vk::WHOLE_SIZE)];
    // SAFETY: callers record into a command buffer in the recording state (Submitter::record) and
    // pass a live buffer of the same device with external memory; the barrier array outlives the call.
    unsafe {
        dev.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TOP_OF_PIPE,
            vk::PipelineStageFlags::TRANSFER | vk::PipelineStageFlags::COMPUTE_SHADER,
            vk::DependencyFlags::empty(),
            &[],
            &barrier,
            &[],
        )
    };
}

/// Records the release of a shared buffer to `VK_QUEUE_FAMILY_EXTERNAL` after Vulkan transfers
/// or shaders wrote it (so CUDA sees the writes).
pub fn record_buffer_release(dev: &ash::Device, cmd: vk::CommandBuffer, buffer: vk::Buffer, family: u32) {
    let barrier = [vk::BufferMemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::TRANSFER_WRITE | vk::AccessFlags::SHADER_WRITE)
        .src_queue_family_index(family)
        .dst_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
        .buffer(buffer)
        .size(vk::WHOLE_SIZE)];
    // SAFETY: callers record into a command buffer in the recording state (Submitter::record) and
    // pass a live buffer of the same device with external memory; the barrier array outlives the call.
    unsafe {
        dev.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER | vk::PipelineStageFlags::COMPUTE_SHADER,
            vk::PipelineStageFlags::BOTTOM_OF_PIPE,
            vk::DependencyFlags::empty(),
            &[],
            &barrier,
            &[],
        )
    };
}

/// Records a dependency from transfer writes into `buffer` to host reads of its mapping, so the
/// host sees them once it waited for the submission.
pub fn record_host_read(dev: &ash::Device, cmd: vk::CommandBuffer, buffer: vk::Buffer) {
    let barrier = [vk::BufferMemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::HOST_READ)
        .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .buffer(buffer)
        .size(vk::WHOLE_SIZE)];
    // SAFETY: callers record into a command buffer in the recording state and pass a live buffer of
    // the same device; the barrier array outlives the call.
    unsafe {
        dev.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::HOST,
            vk::DependencyFlags::empty(),
            &[],
            &barrier,
            &[],
        )
    };
}

/// An exportable semaphore (binary or timeline).
pub struct VkSemaphore {
    pub ctx: VulkanContext,
    pub semaphore: vk::Semaphore,
    pub kind: SemaphoreKind,
}

impl Drop for VkSemaphore {
    fn drop(&mut self) {
        // SAFETY: crate-internal owners drop it only after no submission uses it: RoundTripSide after
        // drain(), the self-tests after their Submitter, whose Drop waits for the queue to go idle.
        unsafe { self.ctx.device().destroy_semaphore(self.semaphore, None) };
    }
}

impl VkSemaphore {
    /// A semaphore exportable as an opaque fd.
    pub fn exportable(ctx: &VulkanContext, kind: SemaphoreKind) -> Result<VkSemaphore> {
        ctx.external_semaphore_fd()?;
        Self::create(ctx, kind, true)
    }

    /// A semaphore, exportable as an opaque fd when `exportable`.
    pub fn create(ctx: &VulkanContext, kind: SemaphoreKind, exportable: bool) -> Result<VkSemaphore> {
        if kind == SemaphoreKind::Timeline && !ctx.extensions().timeline_semaphore {
            return Err(Error::unsupported(
                format!("timeline semaphores on {}", ctx.info().name),
                "the device lacks the timelineSemaphore feature",
                "VkPhysicalDeviceTimelineSemaphoreFeatures",
                "use a Vulkan 1.2 driver",
            ));
        }
        let mut export =
            vk::ExportSemaphoreCreateInfo::default().handle_types(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
        let mut type_info =
            vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE).initial_value(0);
        let mut info = vk::SemaphoreCreateInfo::default();
        if exportable {
            info = info.push_next(&mut export);
        }
        if kind == SemaphoreKind::Timeline {
            info = info.push_next(&mut type_info);
        }
        // SAFETY: `info` and its chain are locals that outlive the call; a timeline type is chained
        // only after the timeline feature was checked above; ctx keeps the device alive.
        let semaphore = unsafe { ctx.device().create_semaphore(&info, None) }
            .map_err(|r| Error::vk("vkCreateSemaphore", r, "creating an exportable semaphore"))?;
        Ok(VkSemaphore { ctx: ctx.clone(), semaphore, kind })
    }

    /// A fresh opaque fd for the semaphore.
    pub fn export(&self) -> Result<ExportedSemaphore> {
        let loader = self.ctx.external_semaphore_fd()?;
        let info = vk::SemaphoreGetFdInfoKHR::default()
            .semaphore(self.semaphore)
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
        // SAFETY: the semaphore was created exportable as an opaque fd (`exportable`), and the loader
        // belongs to its device.
        let fd = unsafe { loader.get_semaphore_fd(&info) }
            .map_err(|r| Error::vk("vkGetSemaphoreFdKHR", r, "exporting a semaphore"))?;
        // SAFETY: on success vkGetSemaphoreFdKHR returns a new open fd whose ownership passes to us.
        let handle = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SemaphoreHandle::new(
            handle,
            SemaphoreDescription {
                kind: self.kind,
                handle_kind: SemaphoreHandleKind::OpaqueFd,
                device: self.ctx.identity(),
            },
        ))
    }

    /// Sets a timeline semaphore's value from the host.
    pub fn host_signal(&self, value: u64) -> Result<()> {
        let info = vk::SemaphoreSignalInfo::default().semaphore(self.semaphore).value(value);
        // SAFETY: callers use it on timeline semaphores of self.ctx's device, alive while self is; the
        // benchmarks' values only grow, as vkSignalSemaphore requires.
        unsafe { self.ctx.device().signal_semaphore(&info) }
            .map_err(|r| Error::vk("vkSignalSemaphore", r, format!("signalling a timeline semaphore to {value}")))
    }

    /// Waits on the host until a timeline semaphore reaches `value`.
    pub fn host_wait(&self, value: u64, timeout: std::time::Duration) -> Result<()> {
        let sems = [self.semaphore];
        let values = [value];
        let info = vk::SemaphoreWaitInfo::default().semaphores(&sems).values(&values);
        // SAFETY: a live timeline semaphore of self.ctx's device; the arrays are locals that outlive
        // the call.
        match unsafe { self.ctx.device().wait_semaphores(&info, timeout.as_nanos().min(u64::MAX as u128) as u64) } {
            Ok(()) => Ok(()),
            Err(vk::Result::TIMEOUT) => {
                Err(Error::Timeout { action: format!("waiting for a timeline semaphore to reach {value}"), timeout })
            }
            Err(r) => {
                Err(Error::vk("vkWaitSemaphores", r, format!("waiting for a timeline semaphore to reach {value}")))
            }
        }
    }
}

/// Submits work that waits for and signals semaphores, without waiting on the host.
pub struct Submitter {
    ctx: VulkanContext,
    pool: vk::CommandPool,
}

impl Drop for Submitter {
    fn drop(&mut self) {
        // SAFETY: queue_wait_idle under the queue lock waits for every submission, so no command buffer
        // of the pool is pending; Drop owns the pool, which is destroyed once, with its buffers.
        unsafe {
            let _ = self.ctx.with_queue(|q| self.ctx.device().queue_wait_idle(q));
            self.ctx.device().destroy_command_pool(self.pool, None);
        }
    }
}

/// A semaphore operation in a submission: the semaphore and, for timelines, the value.
pub type SemOp<'a> = (&'a VkSemaphore, u64);

impl Submitter {
    pub fn new(ctx: &VulkanContext) -> Result<Submitter> {
        let info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(ctx.queue_family_index())
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: ctx keeps the device alive; `info` is a local naming ctx's queue family.
        let pool = unsafe { ctx.device().create_command_pool(&info, None) }
            .map_err(|r| Error::vk("vkCreateCommandPool", r, "creating a command pool"))?;
        Ok(Submitter { ctx: ctx.clone(), pool })
    }

    /// Records a primary command buffer once, for repeated submission (lava-flow's one recording
    /// path, on this submitter's pool).
    pub fn record(&self, record: impl FnOnce(&ash::Device, vk::CommandBuffer)) -> Result<vk::CommandBuffer> {
        // SAFETY: the pool belongs to self and to self's device; crate-internal users (self-tests,
        // benchmarks) record and submit from one thread at a time, which is the external sync recording needs.
        unsafe {
            lava_flow::vulkan::record_command_buffer(
                self.ctx.device(),
                self.pool,
                vk::CommandBufferUsageFlags::empty(),
                record,
            )
        }
    }

    /// Submits `cmds` waiting for `waits` and signalling `signals`, with `fence` (may be null).
    pub fn submit(
        &self,
        cmds: &[vk::CommandBuffer],
        waits: &[SemOp<'_>],
        signals: &[SemOp<'_>],
        fence: vk::Fence,
    ) -> Result<()> {
        let wait_sems: Vec<vk::Semaphore> = waits.iter().map(|(s, _)| s.semaphore).collect();
        let wait_values: Vec<u64> = waits.iter().map(|(_, v)| *v).collect();
        let stages = vec![vk::PipelineStageFlags::ALL_COMMANDS; waits.len()];
        let signal_sems: Vec<vk::Semaphore> = signals.iter().map(|(s, _)| s.semaphore).collect();
        let signal_values: Vec<u64> = signals.iter().map(|(_, v)| *v).collect();
        let mut timeline = vk::TimelineSemaphoreSubmitInfo::default()
            .wait_semaphore_values(&wait_values)
            .signal_semaphore_values(&signal_values);
        let mut submit = vk::SubmitInfo::default()
            .command_buffers(cmds)
            .wait_semaphores(&wait_sems)
            .wait_dst_stage_mask(&stages)
            .signal_semaphores(&signal_sems);
        if waits.iter().chain(signals).any(|(s, _)| s.kind == SemaphoreKind::Timeline) {
            submit = submit.push_next(&mut timeline);
        }
        let device = self.ctx.device();
        self.ctx
            .with_queue(|q| {
                // SAFETY: with_queue holds the queue mutex; crate-internal callers pass executable command
                // buffers of self's pool, live semaphores of this device and values that follow their protocol,
                // and a fence that is null or unsignalled and not pending; the arrays outlive the call.
                unsafe { device.queue_submit(q, &[submit], fence) }
            })
            .map_err(|r| Error::vk("vkQueueSubmit", r, "submitting work with semaphores"))
    }

    /// Waits until the queue is idle.
    pub fn wait_idle(&self) -> Result<()> {
        self.ctx
            .with_queue(|q| {
                // SAFETY: with_queue holds the queue mutex, the external sync vkQueueWaitIdle needs.
                unsafe { self.ctx.device().queue_wait_idle(q) }
            })
            .map_err(|r| Error::vk("vkQueueWaitIdle", r, "waiting for the queue"))
    }
}

/// A fence for waiting on one submission.
pub struct VkFence {
    ctx: VulkanContext,
    pub fence: vk::Fence,
}

impl Drop for VkFence {
    fn drop(&mut self) {
        // SAFETY: crate-internal owners declare their VkFence before the Submitter that submits it, so
        // it drops after Submitter's Drop waited for the queue; on the normal path they waited for it.
        unsafe { self.ctx.device().destroy_fence(self.fence, None) };
    }
}

impl VkFence {
    pub fn new(ctx: &VulkanContext) -> Result<VkFence> {
        // SAFETY: ctx keeps the device alive; the create info is a default local.
        let fence = unsafe { ctx.device().create_fence(&vk::FenceCreateInfo::default(), None) }
            .map_err(|r| Error::vk("vkCreateFence", r, "creating a fence"))?;
        Ok(VkFence { ctx: ctx.clone(), fence })
    }

    /// Waits for the fence, then resets it.
    pub fn wait_and_reset(&self, timeout: std::time::Duration) -> Result<()> {
        let device = self.ctx.device();
        // SAFETY: the fence belongs to self.ctx's device and is alive while self is.
        match unsafe { device.wait_for_fences(&[self.fence], true, timeout.as_nanos() as u64) } {
            Ok(()) => {}
            Err(vk::Result::TIMEOUT) => {
                return Err(Error::Timeout { action: "waiting for a Vulkan submission".into(), timeout })
            }
            Err(r) => return Err(Error::vk("vkWaitForFences", r, "waiting for a Vulkan submission")),
        }
        // SAFETY: the wait above returned Ok, so the fence signalled and its submission completed; only
        // one thread uses the fence (crate-internal), the external sync vkResetFences needs.
        unsafe { device.reset_fences(&[self.fence]) }.map_err(|r| Error::vk("vkResetFences", r, "resetting a fence"))
    }
}

#[cfg(test)]
mod tests {
    //! The submission and semaphore plumbing the CUDA paths use, checked on whatever Vulkan driver
    //! is here (lavapipe on CPU machines) with local semaphores and the host standing in for CUDA.
    use super::*;
    use crate::testing;
    use std::time::Duration;

    #[test]
    fn timeline_chain_waits_for_the_stand_in_and_signals_in_order() {
        let Some(ctx) = testing::or_skip("vulkan", VulkanContext::new()) else { return };
        let sem = match VkSemaphore::create(&ctx, SemaphoreKind::Timeline, false) {
            Ok(sem) => sem,
            Err(e) => return testing::skip_refused("vulkan", "VkPhysicalDeviceTimelineSemaphoreFeatures", e),
        };
        let submitter = Submitter::new(&ctx).unwrap();
        let t = Duration::from_secs(10);
        for r in 0..20u64 {
            let v = 4 * r;
            submitter.submit(&[], &[(&sem, v + 1)], &[(&sem, v + 2)], vk::Fence::null()).unwrap();
            submitter.submit(&[], &[(&sem, v + 3)], &[(&sem, v + 4)], vk::Fence::null()).unwrap();
            // Nothing runs before the host's signal.
            assert!(matches!(sem.host_wait(v + 2, Duration::from_millis(1)), Err(Error::Timeout { .. })));
            sem.host_signal(v + 1).unwrap();
            sem.host_wait(v + 2, t).unwrap();
            // The second submission waits for the stand-in's signal (CUDA's, in the real chain).
            assert!(matches!(sem.host_wait(v + 4, Duration::from_millis(1)), Err(Error::Timeout { .. })));
            sem.host_signal(v + 3).unwrap();
            sem.host_wait(v + 4, t).unwrap();
        }
        submitter.wait_idle().unwrap();
    }

    #[test]
    fn binary_signal_then_wait_with_fence_and_recorded_commands() {
        let Some(ctx) = testing::or_skip("vulkan", VulkanContext::new()) else { return };
        let sem = VkSemaphore::create(&ctx, SemaphoreKind::Binary, false).unwrap();
        // The fence and buffer outlive the submitter, whose Drop waits for the queue.
        let fence = VkFence::new(&ctx).unwrap();
        let buffer = lava_flow::Buffer::new(
            &ctx,
            &lava_flow::BufferOptions::new(4096).memory(lava_flow::vulkan::MemoryKind::HostVisible).export(None),
        )
        .unwrap();
        let submitter = Submitter::new(&ctx).unwrap();
        let family = ctx.queue_family_index();
        let cmd = submitter
            .record(|dev, cmd| {
                // SAFETY: cmd is recording; the buffer is live, has TRANSFER_DST (default usage), and the
                // range 0..4096 is the whole buffer, a multiple of 4.
                unsafe { dev.cmd_fill_buffer(cmd, buffer.handle(), 0, 4096, 0x1234_5678) };
                record_buffer_release(dev, cmd, buffer.handle(), family);
                record_buffer_acquire(dev, cmd, buffer.handle(), family);
                record_host_read(dev, cmd, buffer.handle());
            })
            .unwrap();
        for _ in 0..5 {
            submitter.submit(&[cmd], &[], &[(&sem, 0)], vk::Fence::null()).unwrap();
            submitter.submit(&[], &[(&sem, 0)], &[], fence.fence).unwrap();
            fence.wait_and_reset(Duration::from_secs(10)).unwrap();
        }
        let bytes = buffer.read(0, 4096).unwrap();
        assert!(bytes.chunks(4).all(|w| w == 0x1234_5678u32.to_ne_bytes()));
    }
}
