//! Which queue submission last used an object, so that destroying it, resetting it or submitting
//! it again never races the device (destroying a semaphore, fence or command buffer that a
//! pending submission uses is undefined behaviour).
//!
//! Every [`Submission`](super::Submission) also signals a private timeline semaphore of its
//! queue with the next value of a counter; a submission is complete once that timeline reached
//! its value. Forgetting a submission therefore costs nothing and never blocks (a per-submission
//! fence would have to be waited for before it could be destroyed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use ash::vk;

use super::timeout_ns;
use crate::vulkan::VulkanContext;
use crate::{Error, Result};

/// How long a `Drop` waits for a submission that still uses the object. Past it the object is
/// leaked (not destroyed) and the leak reported by the context's next call: a leak is safe, a
/// destroy under a running submission is not, and a `Drop` that never returns is worse.
pub(crate) const DROP_WAIT: Duration = Duration::from_secs(10);

/// The private timeline of one context's queue.
pub(crate) struct QueueTimeline {
    ctx: VulkanContext,
    semaphore: vk::Semaphore,
    /// The last value handed to a submission. Values are taken under the queue lock, so they
    /// reach the queue in increasing order, as a timeline's signals must.
    last: AtomicU64,
}

/// One timeline per live device, found by device handle; weak, so that the timeline goes when
/// the last submission tracked by it is forgotten and never keeps a device alive.
fn registry() -> &'static Mutex<HashMap<u64, Weak<QueueTimeline>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<u64, Weak<QueueTimeline>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl QueueTimeline {
    /// The timeline of `ctx`'s queue, created on first use.
    pub(crate) fn of(ctx: &VulkanContext) -> Result<Arc<QueueTimeline>> {
        use ash::vk::Handle;
        if !ctx.extensions().timeline_semaphore {
            return Err(Error::unsupported(
                format!("queue submissions through lava-flow on {}", ctx.info().name),
                "the device lacks the timelineSemaphore feature, which lava-flow uses to track submissions",
                "VkPhysicalDeviceTimelineSemaphoreFeatures::timelineSemaphore (core in Vulkan 1.2)",
                "use a Vulkan 1.2 driver",
            ));
        }
        let key = ctx.device().handle().as_raw();
        let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, weak| weak.strong_count() > 0);
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            if Arc::ptr_eq(&existing.ctx.inner, &ctx.inner) {
                return Ok(existing);
            }
        }
        let mut type_info =
            vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE).initial_value(0);
        let info = vk::SemaphoreCreateInfo::default().push_next(&mut type_info);
        // SAFETY: ctx keeps its device alive (the timeline holds a clone of it); the device has the
        // timelineSemaphore feature (checked above); `info` and its chain outlive the call.
        let semaphore = unsafe { ctx.device().create_semaphore(&info, None) }
            .map_err(|r| Error::vk("vkCreateSemaphore", r, "creating the timeline that tracks submissions"))?;
        let timeline = Arc::new(QueueTimeline { ctx: ctx.clone(), semaphore, last: AtomicU64::new(0) });
        map.insert(key, Arc::downgrade(&timeline));
        Ok(timeline)
    }

    pub(crate) fn semaphore(&self) -> vk::Semaphore {
        self.semaphore
    }

    /// The value the next submission signals. Call with the queue locked, and
    /// [`commit`](Self::commit) it once the submission succeeded.
    pub(crate) fn next_value(&self) -> u64 {
        self.last.load(Ordering::Acquire) + 1
    }

    /// Records that a submission signalling `value` reached the queue.
    pub(crate) fn commit(&self, value: u64) {
        self.last.store(value, Ordering::Release);
    }

    fn reached(&self, value: u64) -> Result<bool> {
        // SAFETY: self.semaphore is a live timeline semaphore of self.ctx's device (created in `of`,
        // destroyed only in Drop); vkGetSemaphoreCounterValue needs no external synchronization.
        match unsafe { self.ctx.device().get_semaphore_counter_value(self.semaphore) } {
            Ok(v) => Ok(v >= value),
            Err(vk::Result::ERROR_DEVICE_LOST) => Ok(true),
            Err(r) => Err(Error::vk("vkGetSemaphoreCounterValue", r, "checking whether a submission finished")),
        }
    }

    fn wait(&self, value: u64, timeout: Duration, action: &str) -> Result<()> {
        let semaphores = [self.semaphore];
        let values = [value];
        let info = vk::SemaphoreWaitInfo::default().semaphores(&semaphores).values(&values);
        // SAFETY: self.semaphore is a live timeline semaphore of self.ctx's device; the handle and value
        // arrays are locals that outlive the call.
        match unsafe { self.ctx.device().wait_semaphores(&info, timeout_ns(timeout)) } {
            Ok(()) | Err(vk::Result::ERROR_DEVICE_LOST) => Ok(()),
            Err(vk::Result::TIMEOUT) => Err(Error::Timeout { action: action.to_string(), timeout }),
            Err(r) => Err(Error::vk("vkWaitSemaphores", r, action.to_string())),
        }
    }
}

impl Drop for QueueTimeline {
    fn drop(&mut self) {
        let last = *self.last.get_mut();
        match self.wait(last, DROP_WAIT, "waiting for the last tracked submission") {
            // SAFETY: the wait returned Ok, so the timeline reached `last`, the value of the last submission
            // that signals it (or the device is lost): no pending queue operation uses the semaphore, and
            // Drop owns it exclusively.
            Ok(()) => unsafe { self.ctx.device().destroy_semaphore(self.semaphore, None) },
            Err(e) => {
                self.ctx.defer_error(crate::error::DeferredError::new("leaked the timeline that tracks submissions", e))
            }
        }
    }
}

/// One queue submission: complete once its queue's timeline reached `value`.
pub(crate) struct InFlight {
    timeline: Arc<QueueTimeline>,
    value: u64,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").field("value", &self.value).finish()
    }
}

impl InFlight {
    pub(crate) fn new(timeline: Arc<QueueTimeline>, value: u64) -> Arc<InFlight> {
        Arc::new(InFlight { timeline, value })
    }

    /// Whether the submission finished. A lost device counts as finished: nothing runs on it.
    pub(crate) fn is_complete(&self) -> Result<bool> {
        self.timeline.reached(self.value)
    }

    /// Waits for the submission; [`Error::Timeout`] when it takes longer than `timeout`.
    pub(crate) fn wait(&self, timeout: Duration, action: &str) -> Result<()> {
        self.timeline.wait(self.value, timeout, action)
    }
}

/// The last submission that used an object.
#[derive(Default)]
pub(crate) struct LastUse(Mutex<Option<Arc<InFlight>>>);

impl LastUse {
    pub(crate) fn set(&self, in_flight: &Arc<InFlight>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(in_flight.clone());
    }

    fn current(&self) -> Option<Arc<InFlight>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a submission that used the object may still be running.
    pub(crate) fn is_pending(&self) -> Result<bool> {
        match self.current() {
            Some(f) => Ok(!f.is_complete()?),
            None => Ok(false),
        }
    }

    /// Waits for the last submission that used the object.
    pub(crate) fn wait(&self, timeout: Duration, action: &str) -> Result<()> {
        match self.current() {
            Some(f) => f.wait(timeout, action),
            None => Ok(()),
        }
    }

    /// For `Drop`: waits (at most [`DROP_WAIT`]) until no submission uses the object. `false`
    /// means it is still in use and must be leaked; the reason was recorded on `ctx`.
    pub(crate) fn settle_for_drop(&self, ctx: &VulkanContext, what: &str) -> bool {
        match self.wait(DROP_WAIT, "waiting for a submission before destroying what it uses") {
            Ok(()) => true,
            Err(e) => {
                ctx.defer_error(crate::error::DeferredError::new(
                    format!(
                        "{what} was dropped while a submission using it was still pending; it was leaked rather \
                         than destroyed under the device: wait for the submission (Submitted::wait) before dropping"
                    ),
                    e,
                ));
                false
            }
        }
    }
}
