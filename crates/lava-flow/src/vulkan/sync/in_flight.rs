//! Which queue submission last used an object, so that destroying it, resetting it or submitting
//! it again never races the device (destroying a semaphore, fence or command buffer that a
//! pending submission uses is undefined behaviour).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ash::vk;

use super::timeout_ns;
use crate::vulkan::VulkanContext;
use crate::{Error, Result};

/// How long a `Drop` waits for a submission that still uses the object. Past it the object is
/// leaked (not destroyed) and the leak reported by the context's next call: a leak is safe, a
/// destroy under a running submission is not, and a `Drop` that never returns is worse.
pub(crate) const DROP_WAIT: Duration = Duration::from_secs(10);

/// One queue submission, observed through a fence lava-flow owns and signals with it.
pub(crate) struct InFlight {
    ctx: VulkanContext,
    fence: vk::Fence,
    submitted: AtomicBool,
}

impl InFlight {
    /// A fresh unsignalled fence to pass to `vkQueueSubmit`.
    pub(crate) fn new(ctx: &VulkanContext) -> Result<Arc<InFlight>> {
        // SAFETY: the device is valid while ctx lives.
        let fence = unsafe { ctx.device().create_fence(&vk::FenceCreateInfo::default(), None) }
            .map_err(|r| Error::vk("vkCreateFence", r, "creating the fence that tracks a submission"))?;
        Ok(Arc::new(InFlight { ctx: ctx.clone(), fence, submitted: AtomicBool::new(false) }))
    }

    pub(crate) fn fence(&self) -> vk::Fence {
        self.fence
    }

    /// Records that the fence went to the queue (the submission succeeded).
    pub(crate) fn mark_submitted(&self) {
        self.submitted.store(true, Ordering::Release);
    }

    /// Whether the submission finished (or never reached the queue). A lost device counts as
    /// finished: nothing runs on it any more.
    pub(crate) fn is_complete(&self) -> Result<bool> {
        if !self.submitted.load(Ordering::Acquire) {
            return Ok(true);
        }
        // SAFETY: the fence belongs to the context's device.
        match unsafe { self.ctx.device().get_fence_status(self.fence) } {
            Ok(done) => Ok(done),
            Err(vk::Result::ERROR_DEVICE_LOST) => Ok(true),
            Err(r) => Err(Error::vk("vkGetFenceStatus", r, "checking whether a submission finished")),
        }
    }

    /// Waits for the submission; [`Error::Timeout`] when it takes longer than `timeout`.
    pub(crate) fn wait(&self, timeout: Duration, action: &str) -> Result<()> {
        if !self.submitted.load(Ordering::Acquire) {
            return Ok(());
        }
        // SAFETY: the fence belongs to the context's device.
        match unsafe { self.ctx.device().wait_for_fences(&[self.fence], true, timeout_ns(timeout)) } {
            Ok(()) => Ok(()),
            Err(vk::Result::TIMEOUT) => Err(Error::Timeout { action: action.to_string(), timeout }),
            Err(r) => Err(Error::vk("vkWaitForFences", r, action.to_string())),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        match self.wait(DROP_WAIT, "releasing the fence of a finished submission") {
            // SAFETY: the fence is signalled or was never submitted: no queue operation uses it.
            Ok(()) => unsafe { self.ctx.device().destroy_fence(self.fence, None) },
            Err(Error::Vulkan { result: vk::Result::ERROR_DEVICE_LOST, .. }) => {
                // SAFETY: after a device loss every fence counts as signalled; destroying is valid.
                unsafe { self.ctx.device().destroy_fence(self.fence, None) }
            }
            Err(e) => self.ctx.defer_error(format!("leaked a submission's fence: {e}")),
        }
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
            Ok(()) | Err(Error::Vulkan { result: vk::Result::ERROR_DEVICE_LOST, .. }) => true,
            Err(e) => {
                ctx.defer_error(format!(
                    "{what} was dropped while a submission using it was still pending ({e}); it was leaked rather \
                     than destroyed under the device: wait for the submission (Submitted::wait) before dropping"
                ));
                false
            }
        }
    }
}
