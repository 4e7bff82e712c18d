//! Timeline and binary semaphores, exportable as opaque fds (and sync fds for binary ones), and
//! imported from another device, process or API.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use ash::vk;
use raw_gpu_handle::{DeviceIdentity, ExportedSemaphore, SemaphoreDescription, SemaphoreHandleKind, SemaphoreKind};

use super::caps::semaphore_capabilities;
use super::in_flight::LastUse;
use super::{check_sync_file, kind_name, semaphore_handle_bit, timeout_ns};
use crate::vulkan::VulkanContext;
use crate::{Error, Result};

/// How to create a [`Semaphore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemaphoreOptions {
    /// Timeline (the default: a counter both sides wait on and signal at agreed values) or binary.
    pub kind: SemaphoreKind,
    /// The timeline's starting value (0 for binary semaphores).
    pub initial_value: u64,
    /// Handle kinds it may be exported as; empty for a semaphore that stays on this device.
    pub export: Vec<SemaphoreHandleKind>,
}

impl Default for SemaphoreOptions {
    fn default() -> Self {
        SemaphoreOptions { kind: SemaphoreKind::Timeline, initial_value: 0, export: Vec::new() }
    }
}

/// Where a binary semaphore's one pending signal stands, as far as this process can tell. Vulkan
/// forbids waiting on a binary semaphore before its signal is submitted, and signalling one
/// that is already signalled; lava-flow refuses both instead of handing them to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinaryState {
    /// Nothing signalled it yet, or its signal was consumed by a wait.
    Unsignaled,
    /// A signal was submitted (or imported with a sync fd) and no wait consumed it yet.
    SignalPending,
    /// Shared through an opaque fd: the other side may signal or wait, so lava-flow cannot tell.
    Shared,
}

/// A Vulkan semaphore, timeline or binary, that can be exported to and imported from other
/// devices, processes and APIs.
///
/// Shared timeline semaphores should be signalled on the device (through [`Submission`](super::Submission)):
/// CUDA, OpenCL and GL see device signals, and a host signal on one side races work the other
/// side queued. Host [`signal`](Self::signal) is there for tests and for the side that starts a chain.
pub struct Semaphore {
    ctx: VulkanContext,
    handle: vk::Semaphore,
    kind: SemaphoreKind,
    exportable: Vec<SemaphoreHandleKind>,
    imported: Option<SemaphoreHandleKind>,
    binary_state: Mutex<BinaryState>,
    pub(crate) last_use: LastUse,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("handle", &self.handle)
            .field("kind", &self.kind)
            .field("exportable", &self.exportable)
            .field("imported", &self.imported)
            .finish()
    }
}

fn check_timeline_support(ctx: &VulkanContext) -> Result<()> {
    if ctx.extensions().timeline_semaphore {
        Ok(())
    } else {
        Err(Error::unsupported(
            format!("a timeline semaphore on {}", ctx.info().name),
            "the device lacks the timelineSemaphore feature",
            "VkPhysicalDeviceTimelineSemaphoreFeatures::timelineSemaphore (core in Vulkan 1.2)",
            "use a binary semaphore, or a Vulkan 1.2 driver",
        ))
    }
}

/// Creates the raw semaphore. `export` must already be checked against the capability query.
fn create_raw(
    ctx: &VulkanContext,
    kind: SemaphoreKind,
    initial_value: u64,
    export: vk::ExternalSemaphoreHandleTypeFlags,
) -> Result<vk::Semaphore> {
    let vk_type = match kind {
        SemaphoreKind::Binary => vk::SemaphoreType::BINARY,
        SemaphoreKind::Timeline => vk::SemaphoreType::TIMELINE,
    };
    let mut type_info = vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk_type).initial_value(initial_value);
    let mut export_info = vk::ExportSemaphoreCreateInfo::default().handle_types(export);
    let mut create_info = vk::SemaphoreCreateInfo::default();
    if kind == SemaphoreKind::Timeline {
        create_info = create_info.push_next(&mut type_info);
    }
    if !export.is_empty() {
        create_info = create_info.push_next(&mut export_info);
    }
    // SAFETY: `create_info` and its chain are locals that outlive the call; the timeline struct is
    // chained only after callers checked timeline support, and export bits come from the capability
    // query; ctx keeps the device alive.
    unsafe { ctx.device().create_semaphore(&create_info, None) }.map_err(|r| {
        Error::vk("vkCreateSemaphore", r, format!("creating a {} semaphore on {}", kind_name(kind), ctx.info().name))
    })
}

/// The identity rule for semaphores: opaque fds only between the same device and driver
/// (external semaphore handle types compatibility); sync fds anywhere.
pub(crate) fn check_identity(
    handle_kind_is_opaque: bool,
    what: &'static str,
    exporter: &DeviceIdentity,
    importer: &DeviceIdentity,
) -> Result<()> {
    if !handle_kind_is_opaque {
        return Ok(());
    }
    let reason = match (exporter.device_uuid == importer.device_uuid, exporter.driver_uuid == importer.driver_uuid) {
        (true, true) => return Ok(()),
        (false, false) => "device and driver UUIDs both differ",
        (false, true) => "device UUIDs differ",
        (true, false) => "driver UUIDs differ",
    };
    Err(Error::IncompatibleSyncDevice { what, exporter: *exporter, importer: *importer, reason })
}

impl Semaphore {
    /// A timeline semaphore starting at 0 that stays on this device (works on every Vulkan 1.2
    /// driver, lavapipe included).
    pub fn new(ctx: &VulkanContext) -> Result<Semaphore> {
        Self::with_options(ctx, &SemaphoreOptions::default())
    }

    /// A binary semaphore that stays on this device.
    pub fn binary(ctx: &VulkanContext) -> Result<Semaphore> {
        Self::with_options(ctx, &SemaphoreOptions { kind: SemaphoreKind::Binary, ..Default::default() })
    }

    /// A semaphore of `kind` exportable as `handle_kind`. Fails up front with
    /// [`Error::Unsupported`] (naming the capability query's answer) where the driver cannot.
    pub fn exportable(ctx: &VulkanContext, kind: SemaphoreKind, handle_kind: SemaphoreHandleKind) -> Result<Semaphore> {
        Self::with_options(ctx, &SemaphoreOptions { kind, initial_value: 0, export: vec![handle_kind] })
    }

    /// A semaphore as `options` describe it. Every export kind is checked with
    /// `vkGetPhysicalDeviceExternalSemaphoreProperties` first.
    pub fn with_options(ctx: &VulkanContext, options: &SemaphoreOptions) -> Result<Semaphore> {
        ctx.check_deferred()?;
        let kind = options.kind;
        match kind {
            SemaphoreKind::Timeline => check_timeline_support(ctx)?,
            SemaphoreKind::Binary if options.initial_value != 0 => {
                return Err(Error::invalid(
                    "initial value of a binary semaphore",
                    format!("{} was given; binary semaphores start unsignalled", options.initial_value),
                    "leave initial_value at 0, or create a timeline semaphore",
                ))
            }
            SemaphoreKind::Binary => {}
        }
        let mut export = vk::ExternalSemaphoreHandleTypeFlags::empty();
        let mut exportable = Vec::new();
        for &hk in &options.export {
            let caps = semaphore_capabilities(ctx, kind, hk);
            caps.require_export()?;
            if let Some(other) = exportable.iter().find(|o| !caps.compatible.contains(o)) {
                return Err(Error::unsupported(
                    format!("a {} semaphore exportable as both {hk} and {other}", kind_name(kind)),
                    format!("the driver lists {hk} as compatible with {:?} only", caps.compatible),
                    "VkExternalSemaphoreProperties::compatibleHandleTypes",
                    "create one semaphore per handle kind",
                ));
            }
            if !exportable.contains(&hk) {
                exportable.push(hk);
            }
            export |= semaphore_handle_bit(hk);
        }
        let handle = create_raw(ctx, kind, options.initial_value, export)?;
        Ok(Semaphore {
            ctx: ctx.clone(),
            handle,
            kind,
            exportable,
            imported: None,
            binary_state: Mutex::new(BinaryState::Unsignaled),
            last_use: LastUse::default(),
        })
    }

    /// The raw handle, for your own `vkQueueSubmit`. Keep the semaphore alive until that
    /// submission completes.
    pub fn handle(&self) -> vk::Semaphore {
        self.handle
    }

    /// Binary or timeline.
    pub fn kind(&self) -> SemaphoreKind {
        self.kind
    }

    /// The context it was created on or imported into.
    pub fn context(&self) -> &VulkanContext {
        &self.ctx
    }

    /// Handle kinds [`export_as`](Self::export_as) accepts.
    pub fn export_kinds(&self) -> &[SemaphoreHandleKind] {
        &self.exportable
    }

    /// The handle kind it was imported from, if it was imported.
    pub fn imported_from(&self) -> Option<SemaphoreHandleKind> {
        self.imported
    }

    /// The description an export of `handle_kind` carries.
    pub fn description(&self, handle_kind: SemaphoreHandleKind) -> SemaphoreDescription {
        SemaphoreDescription { kind: self.kind, handle_kind, device: self.ctx.identity() }
    }

    /// Exports as the first handle kind it was created exportable as (opaque fd unless asked
    /// otherwise). Every call returns a fresh fd.
    pub fn export(&self) -> Result<ExportedSemaphore> {
        let hk = self.exportable.first().copied().or(self.imported).ok_or_else(|| {
            Error::invalid(
                "semaphore export",
                "the semaphore was not created exportable",
                "create it with Semaphore::exportable or SemaphoreOptions::export",
            )
        })?;
        self.export_as(hk)
    }

    /// Exports as `handle_kind`, which it must have been created exportable as (or, for an
    /// imported semaphore, which the driver lets imported payloads be exported as).
    ///
    /// An opaque fd names the semaphore itself; every import sees every later signal. A sync fd
    /// (binary semaphores) is a copy of one pending signal and unsignals this semaphore, like a
    /// wait; where the driver answers that the semaphore already signalled (fd -1) this returns
    /// an error: use [`export_sync_fd`](Self::export_sync_fd), which reports that as `None`.
    pub fn export_as(&self, handle_kind: SemaphoreHandleKind) -> Result<ExportedSemaphore> {
        self.export_inner(handle_kind)?.ok_or_else(|| {
            Error::invalid(
                "sync-fd export of a semaphore",
                "the driver returned -1: the semaphore had already signalled, so there is nothing left to wait for",
                "use Semaphore::export_sync_fd, which reports this as None",
            )
        })
    }

    /// Exports the pending signal of a binary semaphore as a sync fd. `None` means the driver
    /// found it already signalled (and unsignalled it): the receiver has nothing to wait for.
    pub fn export_sync_fd(&self) -> Result<Option<ExportedSemaphore>> {
        self.export_inner(SemaphoreHandleKind::SyncFd)
    }

    fn export_inner(&self, handle_kind: SemaphoreHandleKind) -> Result<Option<ExportedSemaphore>> {
        self.ctx.check_deferred()?;
        let allowed = self.exportable.contains(&handle_kind)
            || self.imported.is_some_and(|from| {
                semaphore_capabilities(&self.ctx, self.kind, from).export_from_imported.contains(&handle_kind)
            });
        if !allowed {
            return Err(Error::invalid(
                format!("{handle_kind} export of a {} semaphore", kind_name(self.kind)),
                format!("it was created exportable as {:?} only", self.exportable),
                "list the handle kind in SemaphoreOptions::export when creating it",
            ));
        }
        let mut state = self.binary_state.lock().unwrap_or_else(|p| p.into_inner());
        if handle_kind == SemaphoreHandleKind::SyncFd {
            if self.kind != SemaphoreKind::Binary {
                return Err(Error::invalid(
                    "sync-fd export of a timeline semaphore",
                    "sync fds carry one binary signal (copy transference)",
                    "export timeline semaphores as opaque fds",
                ));
            }
            if *state == BinaryState::Unsignaled {
                return Err(Error::invalid(
                    "sync-fd export of a binary semaphore",
                    "no signal of it was submitted (VUID-VkSemaphoreGetFdInfoKHR-handleType-03254)",
                    "submit work that signals it first (Submission::signal), then export",
                ));
            }
        }
        let loader = self.ctx.external_semaphore_fd()?;
        let info =
            vk::SemaphoreGetFdInfoKHR::default().semaphore(self.handle).handle_type(semaphore_handle_bit(handle_kind));
        // SAFETY: the semaphore belongs to the loader's device and was created (or imported) exportable
        // as this handle type (checked above); a sync-fd export is of a binary semaphore with a pending
        // or completed signal (state checked above, under the state mutex held across the call).
        let fd = unsafe { loader.get_semaphore_fd(&info) }
            .map_err(|r| Error::vk("vkGetSemaphoreFdKHR", r, format!("exporting a semaphore as {handle_kind}")))?;
        match handle_kind {
            SemaphoreHandleKind::SyncFd => *state = BinaryState::Unsignaled,
            _ if self.kind == SemaphoreKind::Binary => *state = BinaryState::Shared,
            _ => {}
        }
        if fd < 0 {
            return Ok(None);
        }
        // SAFETY: fd >= 0, so vkGetSemaphoreFdKHR created a new fd and passed its ownership to us; nothing
        // else holds it.
        let handle = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Some(ExportedSemaphore::new(handle, self.description(handle_kind))))
    }

    /// Imports an exported semaphore, as the kind its description names. See
    /// [`import_as`](Self::import_as).
    pub fn import(ctx: &VulkanContext, exported: ExportedSemaphore) -> Result<Semaphore> {
        let kind = exported.description.kind;
        Self::import_as(ctx, exported, kind)
    }

    /// Imports an exported semaphore into `ctx`'s device as a semaphore of `expected` kind.
    ///
    /// Refused before the driver sees the fd, in this order: an opaque fd from another device or
    /// driver ([`Error::IncompatibleSyncDevice`]), a description of another kind than `expected`
    /// (a binary semaphore cannot be imported as a timeline one), a sync fd described as
    /// timeline, a handle kind the capability query rules out ([`Error::Unsupported`]), an
    /// opaque fd that is a pipe, socket, file or memfd, a sync fd that is not a sync_file. A fd the
    /// driver refuses gives [`Error::InvalidHandle`].
    ///
    /// Consumes the fd whether the import succeeds or fails (docs/OWNERSHIP.md): on success it
    /// belongs to the semaphore, on failure lava-flow closes it exactly once. The driver gets a
    /// copy through [`crate::fd::import_consuming`], like every other import.
    ///
    /// Opaque fds are imported permanently; sync fds temporarily (until the first wait), as
    /// Vulkan requires for copy transference.
    pub fn import_as(ctx: &VulkanContext, exported: ExportedSemaphore, expected: SemaphoreKind) -> Result<Semaphore> {
        ctx.check_deferred()?;
        let SemaphoreDescription { kind, handle_kind, device } = exported.description;
        let what = format!("{handle_kind} {} semaphore", kind_name(kind));
        // The identity first, as for every import: an opaque fd from another device or driver is
        // meaningless whatever else its description says.
        let opaque = handle_kind == SemaphoreHandleKind::OpaqueFd;
        let opaque_what = match kind {
            SemaphoreKind::Binary => "opaque-fd binary semaphore",
            SemaphoreKind::Timeline => "opaque-fd timeline semaphore",
        };
        check_identity(opaque, opaque_what, &device, &ctx.identity())?;
        if kind != expected {
            return Err(Error::InvalidHandle {
                what: format!("a {} semaphore", kind_name(expected)),
                reason: format!(
                    "its description says it is a {} semaphore; Vulkan imports a payload only into a semaphore of \
                     the type it was exported from (VkImportSemaphoreFdInfoKHR)",
                    kind_name(kind)
                ),
                advice: format!("import it as a {} semaphore", kind_name(kind)),
            });
        }
        if !opaque && kind == SemaphoreKind::Timeline {
            return Err(Error::InvalidHandle {
                what,
                reason: "sync fds carry one binary signal; a timeline semaphore cannot be one \
                         (VUID-VkImportSemaphoreFdInfoKHR-handleType-03264)"
                    .into(),
                advice: "share timeline semaphores as opaque fds".into(),
            });
        }
        if kind == SemaphoreKind::Timeline {
            check_timeline_support(ctx)?;
        }
        semaphore_capabilities(ctx, kind, handle_kind).require_import()?;
        // The fd's kind before a driver sees it: a sync_file for sync fds, for opaque fds no
        // pipe, socket, plain file or memfd (refused, closed once; a closed number is forgotten).
        let fd = if opaque {
            crate::fd::check_sync_object_fd(exported.handle, &what)?
        } else {
            check_sync_file(exported.handle, &what)?
        };
        let loader = ctx.external_semaphore_fd()?;
        let handle = create_raw(ctx, kind, 0, vk::ExternalSemaphoreHandleTypeFlags::empty())?;
        let flags = if opaque { vk::SemaphoreImportFlags::empty() } else { vk::SemaphoreImportFlags::TEMPORARY };
        let handle_type = semaphore_handle_bit(handle_kind);
        // The driver gets a copy of the fd and owns it after success; the caller's fd is closed
        // exactly once either way, and a failed import's copy only where provably ours.
        let imported = crate::fd::import_consuming(fd, |raw| {
            let info =
                vk::ImportSemaphoreFdInfoKHR::default().semaphore(handle).flags(flags).handle_type(handle_type).fd(raw);
            // SAFETY: the semaphore was just created and no queue or other thread knows it (the
            // semaphore is externally synchronized for vkImportSemaphoreFdKHR); its type matches the
            // description; `raw` is the open copy import_consuming hands over, of the described
            // handle kind as far as lava-flow can check (identity, capability query, sync_file
            // type); a driver that accepts it owns it, and `info` outlives the call.
            unsafe { loader.import_semaphore_fd(&info) }.map_err(|r| match r {
                vk::Result::ERROR_INVALID_EXTERNAL_HANDLE => Error::InvalidHandle {
                    what: what.clone(),
                    reason:
                        "the driver refused it (vkImportSemaphoreFdKHR returned VK_ERROR_INVALID_EXTERNAL_HANDLE): \
                             it is not such a semaphore of this driver"
                            .into(),
                    advice: "pass the fd and description exactly as the exporter returned them".into(),
                },
                r => super::import_failed("vkImportSemaphoreFdKHR", r, format!("importing a {what}")),
            })
        });
        if let Err(e) = imported {
            // SAFETY: the import failed and the semaphore was never submitted or shared, so no
            // queue or other thread uses it; destroyed once, here.
            unsafe { ctx.device().destroy_semaphore(handle, None) };
            return Err(e);
        }
        let state = if opaque { BinaryState::Shared } else { BinaryState::SignalPending };
        Ok(Semaphore {
            ctx: ctx.clone(),
            handle,
            kind,
            exportable: Vec::new(),
            imported: Some(handle_kind),
            binary_state: Mutex::new(state),
            last_use: LastUse::default(),
        })
    }

    fn require_timeline(&self, operation: &str) -> Result<()> {
        if self.kind == SemaphoreKind::Timeline {
            Ok(())
        } else {
            Err(Error::invalid(
                format!("{operation} on a binary semaphore"),
                "only timeline semaphores have a host-visible value (vkSignalSemaphore, vkWaitSemaphores)",
                "wait on binary semaphores in a Submission and wait for its fence, or use a timeline semaphore",
            ))
        }
    }

    /// The timeline's current value (`vkGetSemaphoreCounterValue`).
    pub fn value(&self) -> Result<u64> {
        self.require_timeline("reading the value")?;
        // SAFETY: require_timeline checked this is a timeline semaphore; it belongs to self.ctx's device,
        // alive while self is; the call needs no external synchronization.
        unsafe { self.ctx.device().get_semaphore_counter_value(self.handle) }
            .map_err(|r| Error::vk("vkGetSemaphoreCounterValue", r, "reading a timeline semaphore's value"))
    }

    /// Signals the timeline to `value` from the host (`vkSignalSemaphore`). `value` must be
    /// greater than the current value, else [`Error::InvalidArgument`].
    pub fn signal(&self, value: u64) -> Result<()> {
        self.ctx.check_deferred()?;
        self.require_timeline("signalling from the host")?;
        let current = self.value()?;
        if value <= current {
            return Err(Error::invalid(
                format!("host signal of value {value}"),
                format!("the timeline is already at {current}; timeline values only grow (VUID-VkSemaphoreSignalInfo-value-03258)"),
                "signal a value greater than Semaphore::value()",
            ));
        }
        let info = vk::SemaphoreSignalInfo::default().semaphore(self.handle).value(value);
        // SAFETY: a timeline semaphore of self.ctx's device (checked above); value exceeds the current
        // value (checked just before: VUID-VkSemaphoreSignalInfo-value-03258, as far as this process can
        // see); `info` outlives the call.
        unsafe { self.ctx.device().signal_semaphore(&info) }
            .map_err(|r| Error::vk("vkSignalSemaphore", r, format!("signalling a timeline semaphore to {value}")))
    }

    /// Waits on the host until the timeline reaches `value`. Returns [`Error::Timeout`] after
    /// `timeout` (never hangs beyond it); `Duration::ZERO` just polls.
    pub fn wait(&self, value: u64, timeout: Duration) -> Result<()> {
        self.require_timeline("waiting from the host")?;
        let semaphores = [self.handle];
        let values = [value];
        let info = vk::SemaphoreWaitInfo::default().semaphores(&semaphores).values(&values);
        // SAFETY: a timeline semaphore of self.ctx's device (checked above); the handle and value arrays
        // are locals that outlive the call.
        match unsafe { self.ctx.device().wait_semaphores(&info, timeout_ns(timeout)) } {
            Ok(()) => Ok(()),
            Err(vk::Result::TIMEOUT) => Err(Error::Timeout {
                action: format!(
                    "waiting for a timeline semaphore on {} to reach {value} (it is at {})",
                    self.ctx.info().name,
                    self.value().map(|v| v.to_string()).unwrap_or_else(|_| "an unknown value".into())
                ),
                timeout,
            }),
            Err(r) => {
                Err(Error::vk("vkWaitSemaphores", r, format!("waiting for a timeline semaphore to reach {value}")))
            }
        }
    }

    /// Checks a binary semaphore can be waited on by a submission, and records the wait.
    pub(crate) fn note_binary_wait(&self) -> Result<()> {
        if self.kind != SemaphoreKind::Binary {
            return Ok(());
        }
        let mut state = self.binary_state.lock().unwrap_or_else(|p| p.into_inner());
        match *state {
            BinaryState::Unsignaled => Err(Error::invalid(
                "wait on a binary semaphore",
                "no signal of it was submitted; binary semaphores cannot be waited on before their signal is \
                 submitted (VUID-vkQueueSubmit-pWaitSemaphores-03238)",
                "submit the signalling work first, or use a timeline semaphore (waits may precede signals)",
            )),
            BinaryState::SignalPending => {
                *state = BinaryState::Unsignaled;
                Ok(())
            }
            BinaryState::Shared => Ok(()),
        }
    }

    /// Checks a binary semaphore can be signalled by a submission, and records the signal.
    pub(crate) fn note_binary_signal(&self) -> Result<()> {
        if self.kind != SemaphoreKind::Binary {
            return Ok(());
        }
        let mut state = self.binary_state.lock().unwrap_or_else(|p| p.into_inner());
        match *state {
            BinaryState::SignalPending => Err(Error::invalid(
                "signal of a binary semaphore",
                "it already has a pending signal that no wait consumed (VUID-vkQueueSubmit-pSignalSemaphores-00067)",
                "wait on it first, or use a timeline semaphore",
            )),
            BinaryState::Unsignaled => {
                *state = BinaryState::SignalPending;
                Ok(())
            }
            BinaryState::Shared => Ok(()),
        }
    }

    /// Undoes [`note_binary_wait`](Self::note_binary_wait) / signal when the submission failed.
    pub(crate) fn restore_binary_state(&self, state: BinaryState) {
        if self.kind == SemaphoreKind::Binary {
            *self.binary_state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        }
    }

    pub(crate) fn binary_state(&self) -> BinaryState {
        *self.binary_state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Semaphore {
    fn drop(&mut self) {
        if self.last_use.settle_for_drop(&self.ctx, "a semaphore") {
            // SAFETY: settle_for_drop returned true: no lava-flow submission that uses the semaphore is
            // pending; Drop owns it exclusively. Submissions made with handle() are the caller's to finish.
            unsafe { self.ctx.device().destroy_semaphore(self.handle, None) };
        }
    }
}
