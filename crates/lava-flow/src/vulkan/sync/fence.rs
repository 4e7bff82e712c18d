//! Fences exportable as opaque fds and sync fds, imported elsewhere and waited on from the host.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use ash::vk;
use raw_gpu_handle::{ExportedFence, FenceDescription, FenceHandleKind};

use super::caps::fence_capabilities;
use super::in_flight::LastUse;
use super::semaphore::check_identity;
use super::{check_sync_file, fence_handle_bit, timeout_ns};
use crate::vulkan::VulkanContext;
use crate::{Error, Result};

/// How to create a [`Fence`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FenceOptions {
    /// Start signalled.
    pub signaled: bool,
    /// Handle kinds it may be exported as; empty for a fence that stays in this process.
    pub export: Vec<FenceHandleKind>,
}

/// A Vulkan fence: signalled by a queue submission, waited on by the host, here or wherever its
/// export was imported.
pub struct Fence {
    ctx: VulkanContext,
    handle: vk::Fence,
    exportable: Vec<FenceHandleKind>,
    imported: Option<FenceHandleKind>,
    pub(crate) last_use: LastUse,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("handle", &self.handle)
            .field("exportable", &self.exportable)
            .field("imported", &self.imported)
            .finish()
    }
}

fn create_raw(ctx: &VulkanContext, signaled: bool, export: vk::ExternalFenceHandleTypeFlags) -> Result<vk::Fence> {
    let mut export_info = vk::ExportFenceCreateInfo::default().handle_types(export);
    let mut create_info = vk::FenceCreateInfo::default();
    if signaled {
        create_info = create_info.flags(vk::FenceCreateFlags::SIGNALED);
    }
    if !export.is_empty() {
        create_info = create_info.push_next(&mut export_info);
    }
    // SAFETY: `create_info` and its export chain are locals that outlive the call; export bits come
    // from the capability query; ctx keeps the device alive.
    unsafe { ctx.device().create_fence(&create_info, None) }
        .map_err(|r| Error::vk("vkCreateFence", r, format!("creating a fence on {}", ctx.info().name)))
}

impl Fence {
    /// An unsignalled fence that stays in this process.
    pub fn new(ctx: &VulkanContext) -> Result<Fence> {
        Self::with_options(ctx, &FenceOptions::default())
    }

    /// An unsignalled fence exportable as `handle_kind`. Fails up front with
    /// [`Error::Unsupported`] (naming the capability query's answer) where the driver cannot.
    pub fn exportable(ctx: &VulkanContext, handle_kind: FenceHandleKind) -> Result<Fence> {
        Self::with_options(ctx, &FenceOptions { signaled: false, export: vec![handle_kind] })
    }

    /// A fence as `options` describe it; every export kind is checked with
    /// `vkGetPhysicalDeviceExternalFenceProperties` first.
    pub fn with_options(ctx: &VulkanContext, options: &FenceOptions) -> Result<Fence> {
        ctx.check_deferred()?;
        let mut export = vk::ExternalFenceHandleTypeFlags::empty();
        let mut exportable = Vec::new();
        for &hk in &options.export {
            let caps = fence_capabilities(ctx, hk);
            caps.require_export()?;
            if let Some(other) = exportable.iter().find(|o| !caps.compatible.contains(o)) {
                return Err(Error::unsupported(
                    format!("a fence exportable as both {hk} and {other}"),
                    format!("the driver lists {hk} as compatible with {:?} only", caps.compatible),
                    "VkExternalFenceProperties::compatibleHandleTypes",
                    "create one fence per handle kind",
                ));
            }
            if !exportable.contains(&hk) {
                exportable.push(hk);
            }
            export |= fence_handle_bit(hk);
        }
        let handle = create_raw(ctx, options.signaled, export)?;
        Ok(Fence { ctx: ctx.clone(), handle, exportable, imported: None, last_use: LastUse::default() })
    }

    /// The raw handle.
    pub fn handle(&self) -> vk::Fence {
        self.handle
    }

    /// The context it was created on or imported into.
    pub fn context(&self) -> &VulkanContext {
        &self.ctx
    }

    /// The handle kind it was imported from, if it was imported.
    pub fn imported_from(&self) -> Option<FenceHandleKind> {
        self.imported
    }

    /// Whether it is signalled now (`vkGetFenceStatus`).
    pub fn is_signaled(&self) -> Result<bool> {
        // SAFETY: the fence is alive for self's lifetime and belongs to self.ctx's device;
        // vkGetFenceStatus needs no external synchronization.
        unsafe { self.ctx.device().get_fence_status(self.handle) }
            .map_err(|r| Error::vk("vkGetFenceStatus", r, "reading a fence's status"))
    }

    /// Waits on the host until it is signalled. Returns [`Error::Timeout`] after `timeout`
    /// (never hangs beyond it); `Duration::ZERO` just polls.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        // SAFETY: the fence is alive for self's lifetime and belongs to self.ctx's device;
        // vkWaitForFences needs no external synchronization of the fence.
        match unsafe { self.ctx.device().wait_for_fences(&[self.handle], true, timeout_ns(timeout)) } {
            Ok(()) => Ok(()),
            Err(vk::Result::TIMEOUT) => Err(Error::Timeout {
                action: format!(
                    "waiting for a fence on {}{}",
                    self.ctx.info().name,
                    if self.imported.is_some() { " (imported)" } else { "" }
                ),
                timeout,
            }),
            Err(r) => Err(Error::vk("vkWaitForFences", r, "waiting for a fence")),
        }
    }

    /// Unsignals it for another submission. Refused while a submission that signals it is still
    /// pending. A fence imported from a sync fd returns to its own (unsignalled) payload.
    pub fn reset(&self) -> Result<()> {
        // Under the queue lock: Submission::submit checks and uses the fence under it too, so a
        // reset can neither race a submission of this fence nor another reset (vkResetFences
        // requires host access to the fence to be externally synchronized).
        self.ctx.with_queue(|_| {
            if self.last_use.is_pending()? {
                return Err(Error::invalid(
                    "fence reset",
                    "a submission that signals it is still pending (VUID-vkResetFences-pFences-01123)",
                    "wait for the fence first",
                ));
            }
            // SAFETY: the fence belongs to this context's device; no lava-flow submission of it is
            // pending (checked above) and none can start while we hold the queue lock, which also
            // provides the external synchronization vkResetFences requires.
            unsafe { self.ctx.device().reset_fences(&[self.handle]) }
                .map_err(|r| Error::vk("vkResetFences", r, "resetting a fence"))
        })
    }

    /// Exports as the first handle kind it was created exportable as.
    pub fn export(&self) -> Result<ExportedFence> {
        let hk = self.exportable.first().copied().or(self.imported).ok_or_else(|| {
            Error::invalid(
                "fence export",
                "the fence was not created exportable",
                "create it with Fence::exportable or FenceOptions::export",
            )
        })?;
        self.export_as(hk)
    }

    /// Exports as `handle_kind`. An opaque fd names the fence itself. A sync fd is a copy of the
    /// pending signal and resets this fence (Vulkan: copy-transference exports act like a
    /// reset); it needs a submitted signal; where the driver answers that the fence already
    /// signalled (fd -1) this returns an error: use [`export_sync_fd`](Self::export_sync_fd).
    pub fn export_as(&self, handle_kind: FenceHandleKind) -> Result<ExportedFence> {
        self.export_inner(handle_kind)?.ok_or_else(|| {
            Error::invalid(
                "sync-fd export of a fence",
                "the driver returned -1: the fence had already signalled, so there is nothing left to wait for",
                "use Fence::export_sync_fd, which reports this as None",
            )
        })
    }

    /// Exports the fence's pending signal as a sync fd. `None` means the driver found it already
    /// signalled: the receiver has nothing to wait for.
    pub fn export_sync_fd(&self) -> Result<Option<ExportedFence>> {
        self.export_inner(FenceHandleKind::SyncFd)
    }

    fn export_inner(&self, handle_kind: FenceHandleKind) -> Result<Option<ExportedFence>> {
        self.ctx.check_deferred()?;
        let allowed = self.exportable.contains(&handle_kind)
            || self
                .imported
                .is_some_and(|from| fence_capabilities(&self.ctx, from).export_from_imported.contains(&handle_kind));
        if !allowed {
            return Err(Error::invalid(
                format!("{handle_kind} export of a fence"),
                format!("it was created exportable as {:?} only", self.exportable),
                "list the handle kind in FenceOptions::export when creating it",
            ));
        }
        let loader = self.ctx.external_fence_fd()?;
        let info = vk::FenceGetFdInfoKHR::default().fence(self.handle).handle_type(fence_handle_bit(handle_kind));
        // Under the queue lock, so that no Fence::reset (which takes it) unsignals the fence
        // between the check and the export.
        let fd = self.ctx.with_queue(|_| {
            if handle_kind == FenceHandleKind::SyncFd && !self.is_signaled()? && !self.last_use.is_pending()? {
                return Err(Error::invalid(
                    "sync-fd export of a fence",
                    "it is neither signalled nor signalled by a pending submission (VUID-VkFenceGetFdInfoKHR-handleType-01454)",
                    "submit work with the fence (Submission::fence) first, then export",
                ));
            }
            // SAFETY: the fence belongs to the loader's device and was created (or imported)
            // exportable as this handle type (checked above); a sync-fd export has a signal to copy,
            // checked under the queue lock that every lava-flow reset of the fence takes.
            unsafe { loader.get_fence_fd(&info) }
                .map_err(|r| Error::vk("vkGetFenceFdKHR", r, format!("exporting a fence as {handle_kind}")))
        })?;
        if fd < 0 {
            return Ok(None);
        }
        // SAFETY: fd >= 0, so vkGetFenceFdKHR created a new fd and passed its ownership to us; nothing
        // else holds it.
        let handle = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Some(ExportedFence::new(handle, FenceDescription { handle_kind, device: self.ctx.identity() })))
    }

    /// Imports an exported fence into `ctx`'s device, to wait on it from this process.
    ///
    /// Refused before the driver sees the fd: an opaque fd from another device or driver
    /// ([`Error::IncompatibleSyncDevice`]), an opaque fd that is a pipe, socket, file or memfd, a
    /// sync fd that is not a sync_file, or a handle kind the capability query rules out
    /// ([`Error::Unsupported`]). A fd the driver refuses (a semaphore's, say) gives
    /// [`Error::InvalidHandle`]. Consumes the fd whether the import succeeds or fails
    /// (docs/OWNERSHIP.md): on success it belongs to the fence, on failure lava-flow closes it
    /// exactly once. Sync fds are imported temporarily, as Vulkan requires: a
    /// [`reset`](Self::reset) returns the fence to its own unsignalled payload.
    ///
    /// An opaque fd carries no record of what it was exported from (NVIDIA's are all one
    /// character device, and its driver accepts a semaphore's fd as a fence), so the types keep
    /// them apart: a semaphore's export is not a fence's.
    ///
    /// ```compile_fail
    /// # fn f(ctx: &lava_flow::VulkanContext, s: lava_flow::vulkan::sync::Semaphore) -> lava_flow::Result<()> {
    /// let exported = s.export()?; // an ExportedSemaphore
    /// lava_flow::vulkan::sync::Fence::import(ctx, exported)?; // refused at compile time
    /// # Ok(()) }
    /// ```
    pub fn import(ctx: &VulkanContext, exported: ExportedFence) -> Result<Fence> {
        ctx.check_deferred()?;
        let FenceDescription { handle_kind, device } = exported.description;
        let what = format!("{handle_kind} fence");
        let opaque = handle_kind == FenceHandleKind::OpaqueFd;
        check_identity(opaque, "opaque-fd fence", &device, &ctx.identity())?;
        fence_capabilities(ctx, handle_kind).require_import()?;
        // The fd's kind before a driver sees it: a sync_file for sync fds, for opaque fds no
        // pipe, socket, plain file or memfd (refused, closed once; a closed number is forgotten).
        let fd = if opaque {
            crate::fd::check_sync_object_fd(exported.handle, &what)?
        } else {
            check_sync_file(exported.handle, &what)?
        };
        let loader = ctx.external_fence_fd()?;
        let handle = create_raw(ctx, false, vk::ExternalFenceHandleTypeFlags::empty())?;
        let flags = if opaque { vk::FenceImportFlags::empty() } else { vk::FenceImportFlags::TEMPORARY };
        let handle_type = fence_handle_bit(handle_kind);
        // The driver gets a copy of the fd and owns it after success; the caller's fd is closed
        // exactly once either way, and a failed import's copy only where provably ours.
        let imported = crate::fd::import_consuming(fd, |raw| {
            let info = vk::ImportFenceFdInfoKHR::default().fence(handle).flags(flags).handle_type(handle_type).fd(raw);
            // SAFETY: the fence was just created and no queue or other thread knows it (the fence is
            // externally synchronized for vkImportFenceFdKHR); `raw` is the open copy import_consuming
            // hands over, of the described handle kind as far as lava-flow can check (identity,
            // capability query, sync_file type); a driver that accepts it owns it, and `info`
            // outlives the call.
            unsafe { loader.import_fence_fd(&info) }.map_err(|r| match r {
                vk::Result::ERROR_INVALID_EXTERNAL_HANDLE => Error::InvalidHandle {
                    what: what.clone(),
                    reason: "the driver refused it (vkImportFenceFdKHR returned VK_ERROR_INVALID_EXTERNAL_HANDLE): \
                             it is not a fence of this driver"
                        .into(),
                    advice: "pass the fd and description exactly as a fence export returned them".into(),
                },
                r => super::import_failed("vkImportFenceFdKHR", r, format!("importing a {what}")),
            })
        });
        if let Err(e) = imported {
            // SAFETY: the import failed and the fence was never submitted or shared, so no queue
            // or other thread uses it; destroyed once, here.
            unsafe { ctx.device().destroy_fence(handle, None) };
            return Err(e);
        }
        Ok(Fence {
            ctx: ctx.clone(),
            handle,
            exportable: Vec::new(),
            imported: Some(handle_kind),
            last_use: LastUse::default(),
        })
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        if self.last_use.settle_for_drop(&self.ctx, "a fence") {
            // SAFETY: settle_for_drop returned true: no lava-flow submission that signals the fence is
            // pending; Drop owns it exclusively. Submissions made with handle() are the caller's to finish.
            unsafe { self.ctx.device().destroy_fence(self.handle, None) };
        }
    }
}
