//! Synchronization that crosses devices, APIs and processes: exportable timeline and binary
//! semaphores, exportable fences, queue submissions that wait on and signal them, and the queue
//! family ownership transfers a buffer or image needs when another API takes it over.
//!
//! Shared memory is only correct when both sides take turns. The usual pattern, in one process
//! or two:
//!
//! ```no_run
//! use std::time::Duration;
//! use ash::vk;
//! use lava_flow::vulkan::sync::{RecordedCommands, Semaphore, SemaphoreHandleKind, SemaphoreKind, Submission};
//! use lava_flow::VulkanContext;
//!
//! let writer = VulkanContext::new()?;
//! let reader = VulkanContext::new()?; // another device, process or API in real use
//! let turns = Semaphore::exportable(&writer, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd)?;
//! let theirs = Semaphore::import(&reader, turns.export()?)?;
//! let write = RecordedCommands::record(&writer, |_dev, _cmd| { /* fill the shared buffer */ })?;
//! let read = RecordedCommands::record(&reader, |_dev, _cmd| { /* copy it out */ })?;
//! // Submitted first, runs second: the reader's queue waits for value 1 on the device.
//! Submission::new().wait(&theirs, 1, vk::PipelineStageFlags::TRANSFER).commands(&read).signal(&theirs, 2).submit(&reader)?;
//! Submission::new().commands(&write).signal(&turns, 1).submit(&writer)?;
//! turns.wait(2, Duration::from_secs(5))?;
//! # Ok::<(), lava_flow::Error>(())
//! ```
//!
//! `docs/SYNC.md` has the rules: semaphores signalled on the device, ownership transfers and
//! image layouts, and what each API supports.

mod caps;
mod fence;
mod in_flight;
mod ping_pong;
mod semaphore;
mod submit;
mod transfer;

pub use caps::{
    fence_capabilities, semaphore_capabilities, sync_capabilities_all, FenceCapabilities, SemaphoreCapabilities,
    SyncCapabilities,
};
pub use fence::{Fence, FenceOptions};
pub use ping_pong::{ping_pong, PingPong, Turn};
pub use raw_gpu_handle::{FenceHandleKind, SemaphoreHandleKind, SemaphoreKind};
pub use semaphore::{Semaphore, SemaphoreOptions};
pub use submit::{RecordedCommands, Submission, Submitted};
pub use transfer::{gl_layout, vk_layout_from_gl, OwnershipTransfer, StageAccess};

use std::time::Duration;

/// The error of a failed `vkImportSemaphoreFdKHR` or `vkImportFenceFdKHR` (other than
/// `VK_ERROR_INVALID_EXTERNAL_HANDLE`, which the importers word themselves). The driver is there
/// (the object to import into was just created), so the advice is about the fd: drivers answer
/// an fd they cannot import with any error (NVIDIA's with `VK_ERROR_INITIALIZATION_FAILED`), and
/// NVIDIA's drivers may refuse an opaque fd whose open file description was imported before.
pub(crate) fn import_failed(call: &'static str, result: ash::vk::Result, action: String) -> crate::Error {
    let advice = match result {
        ash::vk::Result::ERROR_OUT_OF_HOST_MEMORY => "free host memory".to_string(),
        ash::vk::Result::ERROR_DEVICE_LOST => "the device was lost: recreate the context".to_string(),
        _ => "the fd may not be an export of this kind of object from this device, or it was imported already \
              (NVIDIA's drivers may spend an export on its first import): import a fresh export, passed exactly as \
              returned"
            .to_string(),
    };
    crate::Error::Vulkan { action, call, result, advice }
}

/// Vulkan takes timeouts in nanoseconds; a `Duration` too long for a `u64` waits forever.
pub(crate) fn timeout_ns(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX)
}

/// `vk::ExternalSemaphoreHandleTypeFlags` bit for a handle kind.
pub(crate) fn semaphore_handle_bit(kind: SemaphoreHandleKind) -> ash::vk::ExternalSemaphoreHandleTypeFlags {
    use ash::vk::ExternalSemaphoreHandleTypeFlags as F;
    match kind {
        SemaphoreHandleKind::OpaqueFd => F::OPAQUE_FD,
        SemaphoreHandleKind::SyncFd => F::SYNC_FD,
        // Handle kinds of other platforms: no bit here; capability queries answer "unsupported".
        _ => F::empty(),
    }
}

/// `vk::ExternalFenceHandleTypeFlags` bit for a handle kind.
pub(crate) fn fence_handle_bit(kind: FenceHandleKind) -> ash::vk::ExternalFenceHandleTypeFlags {
    use ash::vk::ExternalFenceHandleTypeFlags as F;
    match kind {
        FenceHandleKind::OpaqueFd => F::OPAQUE_FD,
        FenceHandleKind::SyncFd => F::SYNC_FD,
        _ => F::empty(),
    }
}

/// The semaphore handle kinds lava-flow knows, in table order.
pub(crate) const SEMAPHORE_HANDLE_KINDS: [SemaphoreHandleKind; 2] =
    [SemaphoreHandleKind::OpaqueFd, SemaphoreHandleKind::SyncFd];

/// The fence handle kinds lava-flow knows, in table order.
pub(crate) const FENCE_HANDLE_KINDS: [FenceHandleKind; 2] = [FenceHandleKind::OpaqueFd, FenceHandleKind::SyncFd];

/// "timeline" / "binary", for messages.
pub(crate) fn kind_name(kind: SemaphoreKind) -> &'static str {
    match kind {
        SemaphoreKind::Binary => "binary",
        SemaphoreKind::Timeline => "timeline",
    }
}

/// Whether a sync fd names a Linux sync_file, checked before a driver sees it: a driver handed
/// another kind of fd as a sync fd may crash instead of failing. Returns the fd; on error it is
/// consumed: closed once if it was open, forgotten if it was not (EBADF).
pub(crate) fn check_sync_file(fd: std::os::fd::OwnedFd, what: &str) -> crate::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    if crate::fd::inspect(std::os::fd::AsFd::as_fd(&fd)) == crate::fd::FdKind::Closed {
        // Not an open fd: closing the number could close a file opened since by someone else.
        std::mem::forget(fd);
        return Err(crate::Error::InvalidHandle {
            what: what.to_string(),
            reason: "it is not an open fd (EBADF)".into(),
            advice: "pass the fd a sync-fd export returned, exactly once".into(),
        });
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| crate::Error::io(format!("inspecting the fd passed as {what}"), e))?;
    let link = link.to_string_lossy();
    if link == "anon_inode:sync_file" {
        Ok(fd)
    } else {
        Err(crate::Error::InvalidHandle {
            what: what.to_string(),
            reason: format!("it is {link}, not a sync_file (anon_inode:sync_file)"),
            advice: "pass the fd a sync-fd export returned, or describe the handle as opaque-fd".into(),
        })
    }
}

#[cfg(test)]
mod import_error_tests {
    /// NVIDIA answers a semaphore fd it cannot import with VK_ERROR_INITIALIZATION_FAILED; the
    /// advice used to be the one for a failed instance creation ("check that a Vulkan driver is
    /// installed"), wrong for an import into a device that exists.
    #[test]
    fn a_refused_sync_import_advises_about_the_fd_not_the_driver_installation() {
        let e = super::import_failed(
            "vkImportSemaphoreFdKHR",
            ash::vk::Result::ERROR_INITIALIZATION_FAILED,
            "importing a opaque-fd binary semaphore".into(),
        );
        let text = e.to_string();
        assert!(!text.contains("driver is installed"), "{text}");
        assert!(text.contains("imported already") && text.contains("fresh export"), "{text}");
        assert!(text.contains("vkImportSemaphoreFdKHR"), "{text}");
    }
}
