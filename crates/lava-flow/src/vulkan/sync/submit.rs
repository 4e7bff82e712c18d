//! Queue submissions that wait on and signal semaphores at given values, without hand-written
//! `VkTimelineSemaphoreSubmitInfo` chains.

use std::sync::Arc;
use std::time::Duration;

use ash::vk;
use raw_gpu_handle::SemaphoreKind;

use super::fence::Fence;
use super::in_flight::{InFlight, LastUse, QueueTimeline};
use super::semaphore::{BinaryState, Semaphore};
use crate::vulkan::{record_command_buffer, VulkanContext};
use crate::{Error, Result};

/// A primary command buffer recorded once and submitted any number of times (one submission at
/// a time), with its own command pool so recording never contends with other threads.
pub struct RecordedCommands {
    ctx: VulkanContext,
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    pub(crate) last_use: LastUse,
}

impl std::fmt::Debug for RecordedCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedCommands").field("cmd", &self.cmd).finish()
    }
}

impl RecordedCommands {
    /// Records commands with `record` (between `vkBeginCommandBuffer` and `vkEndCommandBuffer`)
    /// on `ctx`'s queue family. Objects the commands use must outlive every submission of them.
    pub fn record(
        ctx: &VulkanContext,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<RecordedCommands> {
        ctx.check_deferred()?;
        let device = ctx.device();
        let pool_info = vk::CommandPoolCreateInfo::default().queue_family_index(ctx.queue_family_index());
        // SAFETY: ctx keeps its device alive across the call; pool_info is a local naming the context's
        // own queue family.
        let pool = unsafe { device.create_command_pool(&pool_info, None) }
            .map_err(|r| Error::vk("vkCreateCommandPool", r, "creating a command pool"))?;
        // SAFETY: the pool was created just above and no other thread has its handle, which provides
        // the external synchronization recording requires.
        let result = unsafe { record_command_buffer(device, pool, vk::CommandBufferUsageFlags::empty(), record) };
        match result {
            Ok(cmd) => Ok(RecordedCommands { ctx: ctx.clone(), pool, cmd, last_use: LastUse::default() }),
            Err(e) => {
                // SAFETY: the pool never left this function and nothing from it was submitted, so no command
                // buffer of it is pending (record_command_buffer already freed its own on the error).
                unsafe { device.destroy_command_pool(pool, None) };
                Err(e)
            }
        }
    }

    /// The raw command buffer.
    pub fn handle(&self) -> vk::CommandBuffer {
        self.cmd
    }

    /// Whether its last submission may still be running.
    pub fn is_pending(&self) -> Result<bool> {
        self.last_use.is_pending()
    }

    /// Waits for its last submission; [`Error::Timeout`] after `timeout`.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        self.last_use.wait(timeout, "waiting for a command buffer's submission")
    }
}

impl Drop for RecordedCommands {
    fn drop(&mut self) {
        if self.last_use.settle_for_drop(&self.ctx, "a recorded command buffer") {
            // SAFETY: settle_for_drop returned true: lava-flow's last submission of cmd completed (or the
            // device is lost), and Drop owns the pool exclusively; destroying the pool frees cmd.
            unsafe { self.ctx.device().destroy_command_pool(self.pool, None) };
        }
    }
}

/// A handle on one submission: wait for it, or ask whether it finished.
#[derive(Clone)]
pub struct Submitted {
    in_flight: Arc<InFlight>,
}

impl std::fmt::Debug for Submitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitted").field("in_flight", &self.in_flight).finish()
    }
}

impl Submitted {
    /// Waits on the host for the submission to finish; [`Error::Timeout`] after `timeout`.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        self.in_flight.wait(timeout, "waiting for a queue submission to finish")
    }

    /// Whether it finished.
    pub fn is_complete(&self) -> Result<bool> {
        self.in_flight.is_complete()
    }
}

/// Refuses a wait stage mask that vkQueueSubmit must not be given: empty or HOST
/// (VUID-VkSubmitInfo-pWaitDstStageMask-00078, -requiredbitmask), stages of features lava-flow's
/// device does not enable (geometry, tessellation, ...: -00076, -00077), or graphics stages on a
/// queue family without VK_QUEUE_GRAPHICS_BIT (VUID-vkQueueSubmit-pWaitDstStageMask-00066).
fn check_wait_stage(ctx: &VulkanContext, stage: vk::PipelineStageFlags) -> Result<()> {
    use vk::PipelineStageFlags as S;
    let anywhere =
        S::TOP_OF_PIPE | S::BOTTOM_OF_PIPE | S::ALL_COMMANDS | S::DRAW_INDIRECT | S::COMPUTE_SHADER | S::TRANSFER;
    let graphics = S::VERTEX_INPUT
        | S::VERTEX_SHADER
        | S::FRAGMENT_SHADER
        | S::EARLY_FRAGMENT_TESTS
        | S::LATE_FRAGMENT_TESTS
        | S::COLOR_ATTACHMENT_OUTPUT
        | S::ALL_GRAPHICS;
    let refuse = |why: &str| {
        Err(Error::invalid(
            format!("a semaphore wait at pipeline stages {stage:?}"),
            why.to_string(),
            "wait at vk::PipelineStageFlags::TRANSFER, COMPUTE_SHADER or ALL_COMMANDS",
        ))
    };
    if stage.is_empty() {
        return refuse("a wait needs at least one stage (VUID-VkSubmitInfo-pWaitDstStageMask-requiredbitmask)");
    }
    if anywhere.contains(stage) {
        return Ok(());
    }
    if !(anywhere | graphics).contains(stage) {
        return refuse(
            "it names HOST or a stage of a feature lava-flow's device does not enable \
             (VUID-VkSubmitInfo-pWaitDstStageMask-00076, -00077, -00078)",
        );
    }
    // SAFETY: the physical device was enumerated from the context's instance, which the context
    // keeps alive; the query takes no other pointers.
    let families = unsafe { ctx.instance().get_physical_device_queue_family_properties(ctx.physical_device()) };
    let has_graphics = families
        .get(ctx.queue_family_index() as usize)
        .is_some_and(|f| f.queue_flags.contains(vk::QueueFlags::GRAPHICS));
    if has_graphics {
        Ok(())
    } else {
        refuse(
            "it names graphics stages and the context's queue family has no VK_QUEUE_GRAPHICS_BIT \
             (VUID-vkQueueSubmit-pWaitDstStageMask-00066)",
        )
    }
}

/// One batch for a context's queue: semaphores to wait on (with the pipeline stages that wait),
/// command buffers, semaphores to signal, and an optional fence.
///
/// ```no_run
/// # use ash::vk;
/// # use lava_flow::vulkan::sync::{RecordedCommands, Semaphore, Submission};
/// # fn f(ctx: &lava_flow::VulkanContext, sem: &Semaphore, cmd: &RecordedCommands) -> lava_flow::Result<()> {
/// Submission::new().wait(sem, 1, vk::PipelineStageFlags::TRANSFER).commands(cmd).signal(sem, 2).submit(ctx)?;
/// # Ok(()) }
/// ```
///
/// Timeline semaphores wait for and signal the given values; binary semaphores ignore them
/// (`VkTimelineSemaphoreSubmitInfo` gets 0 for them).
#[derive(Default)]
pub struct Submission<'a> {
    waits: Vec<(&'a Semaphore, u64, vk::PipelineStageFlags)>,
    signals: Vec<(&'a Semaphore, u64)>,
    commands: Vec<&'a RecordedCommands>,
    raw_commands: Vec<vk::CommandBuffer>,
    fence: Option<&'a Fence>,
}

impl<'a> Submission<'a> {
    /// An empty batch (submitting it still waits and signals).
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits, before `stage` of the batch's commands, until `semaphore` reaches `value`
    /// (timeline) or is signalled (binary; `value` ignored).
    pub fn wait(mut self, semaphore: &'a Semaphore, value: u64, stage: vk::PipelineStageFlags) -> Self {
        self.waits.push((semaphore, value, stage));
        self
    }

    /// Signals `semaphore` to `value` (timeline) or signals it (binary; `value` ignored) once
    /// the batch's commands completed.
    pub fn signal(mut self, semaphore: &'a Semaphore, value: u64) -> Self {
        self.signals.push((semaphore, value));
        self
    }

    /// Adds a recorded command buffer. It must not be pending from an earlier submission.
    pub fn commands(mut self, commands: &'a RecordedCommands) -> Self {
        self.commands.push(commands);
        self
    }

    /// Adds a command buffer lava-flow did not record.
    ///
    /// # Safety
    ///
    /// `cmd` must be a command buffer of the submitting context's device, allocated for its
    /// queue family, in the executable state, not pending elsewhere (unless recorded with
    /// `SIMULTANEOUS_USE`), and it and everything it uses must stay alive until the submission
    /// completes ([`Submitted::wait`]).
    pub unsafe fn raw_command_buffer(mut self, cmd: vk::CommandBuffer) -> Self {
        self.raw_commands.push(cmd);
        self
    }

    /// Signals `fence` when the batch completes. It must be unsignalled and not pending.
    pub fn fence(mut self, fence: &'a Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Checks what Vulkan would otherwise leave undefined, then submits on `ctx`'s queue
    /// (`vkQueueSubmit` under the queue lock). Every object must belong to `ctx`'s device.
    pub fn submit(self, ctx: &VulkanContext) -> Result<Submitted> {
        ctx.check_deferred()?;
        self.validate(ctx)?;
        // Binary semaphores: check and record wait/signal order, undone if the submit fails.
        let mut undo: Vec<(&Semaphore, BinaryState)> = Vec::new();
        let noted = (|| {
            for (s, _, _) in &self.waits {
                undo.push((s, s.binary_state()));
                s.note_binary_wait()?;
            }
            for (s, _) in &self.signals {
                undo.push((s, s.binary_state()));
                s.note_binary_signal()?;
            }
            Ok(())
        })();
        let result = noted.and_then(|()| self.submit_checked(ctx));
        if result.is_err() {
            for (s, state) in undo.into_iter().rev() {
                s.restore_binary_state(state);
            }
        }
        result
    }

    fn validate(&self, ctx: &VulkanContext) -> Result<()> {
        let same = |other: &VulkanContext| Arc::ptr_eq(&other.inner, &ctx.inner);
        let foreign = |what: &str| {
            Error::invalid(
                format!("{what} in a submission on {}", ctx.info().name),
                "it belongs to another VulkanContext (another VkDevice)",
                "import it into this context first (export + import), or submit on its own context",
            )
        };
        for (s, _, stage) in &self.waits {
            if !same(s.context()) {
                return Err(foreign("a wait semaphore"));
            }
            check_wait_stage(ctx, *stage)?;
        }
        for (s, value) in &self.signals {
            if !same(s.context()) {
                return Err(foreign("a signal semaphore"));
            }
            if s.kind() == SemaphoreKind::Timeline {
                let current = s.value()?;
                if *value <= current {
                    return Err(Error::invalid(
                        format!("signal of a timeline semaphore to {value}"),
                        format!(
                            "it is already at {current}; a signal must raise the value (VUID-VkSubmitInfo-pNext-03241)"
                        ),
                        "signal a value greater than Semaphore::value()",
                    ));
                }
            }
        }
        for (i, c) in self.commands.iter().enumerate() {
            if !same(&c.ctx) {
                return Err(foreign("a command buffer"));
            }
            if self.commands[..i].iter().any(|earlier| earlier.cmd == c.cmd) {
                return Err(Error::invalid(
                    "command buffer in a submission",
                    "it is listed twice in one batch, and was not recorded for simultaneous use \
                     (VUID-vkQueueSubmit-pCommandBuffers-00071)",
                    "list it once, or record a second one",
                ));
            }
        }
        if let Some(f) = self.fence {
            if !same(f.context()) {
                return Err(foreign("a fence"));
            }
        }
        Ok(())
    }

    /// Refuses command buffers and a fence still in use. Called with the queue locked, and the
    /// submission recorded in their `last_use` before the lock is released: every submission of
    /// these objects goes through this queue (validate() checked they belong to `ctx`), and
    /// Fence::reset takes the same lock, so no other thread can submit or reset them between
    /// this check and vkQueueSubmit.
    fn check_not_in_use(&self) -> Result<()> {
        for c in &self.commands {
            if c.is_pending()? {
                return Err(Error::invalid(
                    "command buffer in a submission",
                    "its previous submission is still pending (VUID-vkQueueSubmit-pCommandBuffers-00071)",
                    "wait for it (RecordedCommands::wait) or record another",
                ));
            }
        }
        if let Some(f) = self.fence {
            if f.last_use.is_pending()? || f.is_signaled()? {
                return Err(Error::invalid(
                    "fence in a submission",
                    "it is signalled or still pending from an earlier submission (VUID-vkQueueSubmit-fence-00063)",
                    "reset it (Fence::reset) once it signalled",
                ));
            }
        }
        Ok(())
    }

    fn submit_checked(&self, ctx: &VulkanContext) -> Result<Submitted> {
        let timeline = QueueTimeline::of(ctx)?;
        let wait_handles: Vec<vk::Semaphore> = self.waits.iter().map(|(s, _, _)| s.handle()).collect();
        let wait_values: Vec<u64> =
            self.waits.iter().map(|(s, v, _)| if s.kind() == SemaphoreKind::Timeline { *v } else { 0 }).collect();
        let wait_stages: Vec<vk::PipelineStageFlags> = self.waits.iter().map(|(_, _, st)| *st).collect();
        // The queue's private timeline is signalled last, with a value taken under the queue lock.
        let mut signal_handles: Vec<vk::Semaphore> = self.signals.iter().map(|(s, _)| s.handle()).collect();
        signal_handles.push(timeline.semaphore());
        let mut signal_values: Vec<u64> =
            self.signals.iter().map(|(s, v)| if s.kind() == SemaphoreKind::Timeline { *v } else { 0 }).collect();
        let cmds: Vec<vk::CommandBuffer> =
            self.commands.iter().map(|c| c.cmd).chain(self.raw_commands.iter().copied()).collect();
        let fence = self.fence.map_or(vk::Fence::null(), |f| f.handle());
        let device = ctx.device();

        let in_flight = ctx.with_queue(|queue| {
            self.check_not_in_use()?;
            let tracking_value = timeline.next_value();
            signal_values.push(tracking_value);
            let mut timeline_info = vk::TimelineSemaphoreSubmitInfo::default()
                .wait_semaphore_values(&wait_values)
                .signal_semaphore_values(&signal_values);
            let submit = vk::SubmitInfo::default()
                .wait_semaphores(&wait_handles)
                .wait_dst_stage_mask(&wait_stages)
                .command_buffers(&cmds)
                .signal_semaphores(&signal_handles)
                .push_next(&mut timeline_info);
            // SAFETY: with_queue holds the queue mutex (vkQueueSubmit's external sync of the queue, and of the
            // fence: every lava-flow use of a fence takes it). validate() checked that every object belongs
            // to this device, command buffers are listed once and wait stages are allowed; under this lock,
            // check_not_in_use found no command buffer pending and the fence unsignalled and not pending.
            // Raw command buffers are the caller's (raw_command_buffer's contract); the arrays and the
            // timeline chain are locals that outlive the call.
            unsafe { device.queue_submit(queue, &[submit], fence) }
                .map_err(|r| Error::vk("vkQueueSubmit", r, "submitting a batch"))?;
            timeline.commit(tracking_value);
            let in_flight = InFlight::new(timeline.clone(), tracking_value);
            // Still under the queue lock, so the next check_not_in_use sees this submission.
            if let Some(f) = self.fence {
                f.last_use.set(&in_flight);
            }
            for (s, _, _) in &self.waits {
                s.last_use.set(&in_flight);
            }
            for (s, _) in &self.signals {
                s.last_use.set(&in_flight);
            }
            for c in &self.commands {
                c.last_use.set(&in_flight);
            }
            Ok::<_, Error>(in_flight)
        })?;
        Ok(Submitted { in_flight })
    }
}
