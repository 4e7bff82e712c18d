//! What a device can export and import, per semaphore type and handle kind, asked of the driver.
//!
//! Drivers export binary and timeline semaphores differently (a sync fd can only carry a binary
//! payload; some drivers export timeline semaphores only as opaque fds, some not at all), so the
//! semaphore query chains `VkSemaphoreTypeCreateInfo`.

use std::fmt;

use ash::vk;

use super::{fence_handle_bit, kind_name, semaphore_handle_bit, FENCE_HANDLE_KINDS, SEMAPHORE_HANDLE_KINDS};
use crate::vulkan::{DeviceSelector, VulkanContext};
use crate::{Error, Result};
use raw_gpu_handle::{FenceHandleKind, SemaphoreHandleKind, SemaphoreKind};

const SEMAPHORE_QUERY: &str = "vkGetPhysicalDeviceExternalSemaphoreProperties";
const FENCE_QUERY: &str = "vkGetPhysicalDeviceExternalFenceProperties";

/// The driver's answer for one semaphore type and handle kind on one device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SemaphoreCapabilities {
    /// The device's name.
    pub device: String,
    /// Binary or timeline.
    pub kind: SemaphoreKind,
    /// The handle kind asked about.
    pub handle_kind: SemaphoreHandleKind,
    /// Semaphores of this type can be created exportable as this handle kind, and the device has
    /// the extension to export them.
    pub exportable: bool,
    /// Handles of this kind can be imported into a semaphore of this type.
    pub importable: bool,
    /// Handle kinds that may be requested together with this one at creation.
    pub compatible: Vec<SemaphoreHandleKind>,
    /// Handle kinds a semaphore imported from this kind may be exported as again.
    pub export_from_imported: Vec<SemaphoreHandleKind>,
    /// Why export or import is impossible, when one of them is: the query's answer or the
    /// missing extension or feature.
    pub limitation: Option<String>,
}

/// The driver's answer for one fence handle kind on one device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FenceCapabilities {
    /// The device's name.
    pub device: String,
    /// The handle kind asked about.
    pub handle_kind: FenceHandleKind,
    /// Fences can be created exportable as this handle kind (and the extension is there).
    pub exportable: bool,
    /// Handles of this kind can be imported into a fence.
    pub importable: bool,
    /// Handle kinds that may be requested together with this one at creation.
    pub compatible: Vec<FenceHandleKind>,
    /// Handle kinds a fence imported from this kind may be exported as again.
    pub export_from_imported: Vec<FenceHandleKind>,
    /// Why export or import is impossible, when one of them is.
    pub limitation: Option<String>,
}

fn semaphore_kinds(flags: vk::ExternalSemaphoreHandleTypeFlags) -> Vec<SemaphoreHandleKind> {
    SEMAPHORE_HANDLE_KINDS.into_iter().filter(|k| flags.contains(semaphore_handle_bit(*k))).collect()
}

fn fence_kinds(flags: vk::ExternalFenceHandleTypeFlags) -> Vec<FenceHandleKind> {
    FENCE_HANDLE_KINDS.into_iter().filter(|k| flags.contains(fence_handle_bit(*k))).collect()
}

fn vk_semaphore_type(kind: SemaphoreKind) -> vk::SemaphoreType {
    match kind {
        SemaphoreKind::Binary => vk::SemaphoreType::BINARY,
        SemaphoreKind::Timeline => vk::SemaphoreType::TIMELINE,
    }
}

fn handle_type_name_semaphore(kind: SemaphoreHandleKind) -> &'static str {
    match kind {
        SemaphoreHandleKind::OpaqueFd => "VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD_BIT",
        SemaphoreHandleKind::SyncFd => "VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_SYNC_FD_BIT",
        _ => "a handle type lava-flow does not support on this platform",
    }
}

fn handle_type_name_fence(kind: FenceHandleKind) -> &'static str {
    match kind {
        FenceHandleKind::OpaqueFd => "VK_EXTERNAL_FENCE_HANDLE_TYPE_OPAQUE_FD_BIT",
        FenceHandleKind::SyncFd => "VK_EXTERNAL_FENCE_HANDLE_TYPE_SYNC_FD_BIT",
        _ => "a handle type lava-flow does not support on this platform",
    }
}

fn features_text(exportable: bool, importable: bool) -> &'static str {
    match (exportable, importable) {
        (true, true) => "EXPORTABLE and IMPORTABLE",
        (true, false) => "EXPORTABLE only",
        (false, true) => "IMPORTABLE only",
        (false, false) => "neither EXPORTABLE nor IMPORTABLE",
    }
}

/// Asks the driver whether semaphores of `kind` can be exported and imported as `handle_kind` on
/// `ctx`'s device (`vkGetPhysicalDeviceExternalSemaphoreProperties` with
/// `VkSemaphoreTypeCreateInfo` chained), and whether the device has what exporting needs
/// (VK_KHR_external_semaphore_fd; the timelineSemaphore feature for timeline semaphores).
pub fn semaphore_capabilities(
    ctx: &VulkanContext,
    kind: SemaphoreKind,
    handle_kind: SemaphoreHandleKind,
) -> SemaphoreCapabilities {
    let device = ctx.info().name.clone();
    let ext = ctx.extensions();
    let limitation = if semaphore_handle_bit(handle_kind).is_empty() {
        Some(format!("{handle_kind} handles have no Vulkan handle type on this platform"))
    } else if kind == SemaphoreKind::Timeline && handle_kind == SemaphoreHandleKind::SyncFd {
        // Whatever a driver answers, the spec forbids it: sync fds have copy transference, which
        // only binary semaphores may export or import (VUID-VkSemaphoreGetFdInfoKHR-handleType-03253).
        Some("sync fds carry one binary signal; timeline semaphores cannot be exported or imported as sync fds (VUID-VkSemaphoreGetFdInfoKHR-handleType-03253)".to_string())
    } else if kind == SemaphoreKind::Timeline && !ext.timeline_semaphore {
        Some("the device lacks the timelineSemaphore feature (VkPhysicalDeviceTimelineSemaphoreFeatures)".to_string())
    } else {
        None
    };
    if let Some(limitation) = limitation {
        return SemaphoreCapabilities {
            device,
            kind,
            handle_kind,
            exportable: false,
            importable: false,
            compatible: Vec::new(),
            export_from_imported: Vec::new(),
            limitation: Some(limitation),
        };
    }
    let mut type_info = vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk_semaphore_type(kind));
    let mut info = vk::PhysicalDeviceExternalSemaphoreInfo::default().handle_type(semaphore_handle_bit(handle_kind));
    if ext.timeline_semaphore {
        // Only chained where the driver knows the struct (Vulkan 1.2 / timeline semaphores);
        // without it the answer is for binary semaphores, which is what `kind` is then.
        info = info.push_next(&mut type_info);
    }
    let mut props = vk::ExternalSemaphoreProperties::default();
    // SAFETY: the physical device belongs to the context's instance, alive while ctx is; the
    // timeline type struct is chained only where the device has timeline semaphores (Vulkan 1.2),
    // and info, its chain and props are locals that outlive the call.
    unsafe {
        ctx.instance().get_physical_device_external_semaphore_properties(ctx.physical_device(), &info, &mut props)
    };
    let features = props.external_semaphore_features;
    let query_export = features.contains(vk::ExternalSemaphoreFeatureFlags::EXPORTABLE);
    let query_import = features.contains(vk::ExternalSemaphoreFeatureFlags::IMPORTABLE);
    let has_ext = ext.external_semaphore_fd;
    let limitation = if !(query_export && query_import) {
        Some(format!(
            "{SEMAPHORE_QUERY} for {} semaphores as {} reports {} on {device}",
            kind_name(kind),
            handle_type_name_semaphore(handle_kind),
            features_text(query_export, query_import)
        ))
    } else if !has_ext {
        Some(format!("{device} lacks VK_KHR_external_semaphore_fd"))
    } else {
        None
    };
    SemaphoreCapabilities {
        device,
        kind,
        handle_kind,
        exportable: query_export && has_ext,
        importable: query_import && has_ext,
        compatible: semaphore_kinds(props.compatible_handle_types),
        export_from_imported: semaphore_kinds(props.export_from_imported_handle_types),
        limitation,
    }
}

/// Asks the driver whether fences can be exported and imported as `handle_kind` on `ctx`'s device
/// (`vkGetPhysicalDeviceExternalFenceProperties`), and whether VK_KHR_external_fence_fd is there.
pub fn fence_capabilities(ctx: &VulkanContext, handle_kind: FenceHandleKind) -> FenceCapabilities {
    let device = ctx.info().name.clone();
    if fence_handle_bit(handle_kind).is_empty() {
        return FenceCapabilities {
            limitation: Some(format!("{handle_kind} handles have no Vulkan handle type on this platform")),
            device,
            handle_kind,
            exportable: false,
            importable: false,
            compatible: Vec::new(),
            export_from_imported: Vec::new(),
        };
    }
    let info = vk::PhysicalDeviceExternalFenceInfo::default().handle_type(fence_handle_bit(handle_kind));
    let mut props = vk::ExternalFenceProperties::default();
    // SAFETY: the physical device belongs to the context's instance, alive while ctx is; info and
    // props are locals that outlive the call.
    unsafe { ctx.instance().get_physical_device_external_fence_properties(ctx.physical_device(), &info, &mut props) };
    let features = props.external_fence_features;
    let query_export = features.contains(vk::ExternalFenceFeatureFlags::EXPORTABLE);
    let query_import = features.contains(vk::ExternalFenceFeatureFlags::IMPORTABLE);
    let has_ext = ctx.extensions().external_fence_fd;
    let limitation = if !(query_export && query_import) {
        Some(format!(
            "{FENCE_QUERY} for {} reports {} on {device}",
            handle_type_name_fence(handle_kind),
            features_text(query_export, query_import)
        ))
    } else if !has_ext {
        Some(format!("{device} lacks VK_KHR_external_fence_fd"))
    } else {
        None
    };
    FenceCapabilities {
        device,
        handle_kind,
        exportable: query_export && has_ext,
        importable: query_import && has_ext,
        compatible: fence_kinds(props.compatible_handle_types),
        export_from_imported: fence_kinds(props.export_from_imported_handle_types),
        limitation,
    }
}

impl SemaphoreCapabilities {
    fn refusal(&self, action: &str) -> Error {
        Error::unsupported(
            format!("{action} a {} semaphore as {} on {}", kind_name(self.kind), self.handle_kind, self.device),
            self.limitation.clone().unwrap_or_else(|| "the driver refused".into()),
            SEMAPHORE_QUERY,
            match (self.kind, self.handle_kind) {
                (SemaphoreKind::Timeline, SemaphoreHandleKind::SyncFd) => {
                    "sync fds carry binary payloads only: share timeline semaphores as opaque fds"
                }
                _ => "see `lava-flow info` for the semaphore kinds this device shares, or synchronize on the host",
            },
        )
    }

    /// `Ok` when semaphores of this type can be created exportable as this handle kind, else
    /// [`Error::Unsupported`] naming the query's answer.
    pub fn require_export(&self) -> Result<()> {
        if self.exportable {
            Ok(())
        } else {
            Err(self.refusal("exporting"))
        }
    }

    /// `Ok` when handles of this kind can be imported as this semaphore type, else
    /// [`Error::Unsupported`] naming the query's answer.
    pub fn require_import(&self) -> Result<()> {
        if self.importable {
            Ok(())
        } else {
            Err(self.refusal("importing"))
        }
    }
}

impl FenceCapabilities {
    fn refusal(&self, action: &str) -> Error {
        Error::unsupported(
            format!("{action} a fence as {} on {}", self.handle_kind, self.device),
            self.limitation.clone().unwrap_or_else(|| "the driver refused".into()),
            FENCE_QUERY,
            "see `lava-flow info` for the fence kinds this device shares, or wait on the host and signal a semaphore",
        )
    }

    /// `Ok` when fences can be created exportable as this handle kind, else [`Error::Unsupported`].
    pub fn require_export(&self) -> Result<()> {
        if self.exportable {
            Ok(())
        } else {
            Err(self.refusal("exporting"))
        }
    }

    /// `Ok` when handles of this kind can be imported into a fence, else [`Error::Unsupported`].
    pub fn require_import(&self) -> Result<()> {
        if self.importable {
            Ok(())
        } else {
            Err(self.refusal("importing"))
        }
    }
}

/// Every semaphore and fence sharing answer of one device: what `lava-flow info` shows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncCapabilities {
    /// The device's index in `lava-flow info`'s order.
    pub device_index: usize,
    /// The device's name.
    pub device: String,
    /// Whether timeline semaphores exist on the device at all (shared or not).
    pub timeline_semaphores: bool,
    /// Binary and timeline semaphores, per handle kind.
    pub semaphores: Vec<SemaphoreCapabilities>,
    /// Fences, per handle kind.
    pub fences: Vec<FenceCapabilities>,
}

impl SyncCapabilities {
    /// Asks every question for `ctx`'s device.
    pub fn query(ctx: &VulkanContext) -> SyncCapabilities {
        let semaphores = [SemaphoreKind::Timeline, SemaphoreKind::Binary]
            .into_iter()
            .flat_map(|kind| SEMAPHORE_HANDLE_KINDS.into_iter().map(move |hk| (kind, hk)))
            .map(|(kind, hk)| semaphore_capabilities(ctx, kind, hk))
            .collect();
        let fences = FENCE_HANDLE_KINDS.into_iter().map(|hk| fence_capabilities(ctx, hk)).collect();
        SyncCapabilities {
            device_index: ctx.info().index,
            device: ctx.info().name.clone(),
            timeline_semaphores: ctx.extensions().timeline_semaphore,
            semaphores,
            fences,
        }
    }

    /// The answer for one semaphore type and handle kind.
    pub fn semaphore(&self, kind: SemaphoreKind, handle_kind: SemaphoreHandleKind) -> Option<&SemaphoreCapabilities> {
        self.semaphores.iter().find(|c| c.kind == kind && c.handle_kind == handle_kind)
    }

    /// The answer for one fence handle kind.
    pub fn fence(&self, handle_kind: FenceHandleKind) -> Option<&FenceCapabilities> {
        self.fences.iter().find(|c| c.handle_kind == handle_kind)
    }

    /// Handle kinds semaphores of `kind` export as.
    pub fn semaphore_exports(&self, kind: SemaphoreKind) -> Vec<SemaphoreHandleKind> {
        self.semaphores.iter().filter(|c| c.kind == kind && c.exportable).map(|c| c.handle_kind).collect()
    }

    /// Handle kinds semaphores of `kind` import from.
    pub fn semaphore_imports(&self, kind: SemaphoreKind) -> Vec<SemaphoreHandleKind> {
        self.semaphores.iter().filter(|c| c.kind == kind && c.importable).map(|c| c.handle_kind).collect()
    }

    /// Handle kinds fences export as.
    pub fn fence_exports(&self) -> Vec<FenceHandleKind> {
        self.fences.iter().filter(|c| c.exportable).map(|c| c.handle_kind).collect()
    }

    /// Handle kinds fences import from.
    pub fn fence_imports(&self) -> Vec<FenceHandleKind> {
        self.fences.iter().filter(|c| c.importable).map(|c| c.handle_kind).collect()
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// Three lines, e.g. `timeline semaphores: export opaque-fd; import opaque-fd`, then the first
/// limitation when nothing is shared, so `lava-flow info` can print it as is.
impl fmt::Display for SyncCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for kind in [SemaphoreKind::Timeline, SemaphoreKind::Binary] {
            writeln!(
                f,
                "{} semaphores: export {}; import {}",
                kind_name(kind),
                list(&self.semaphore_exports(kind)),
                list(&self.semaphore_imports(kind))
            )?;
        }
        write!(f, "fences: export {}; import {}", list(&self.fence_exports()), list(&self.fence_imports()))?;
        let shares_any = self.semaphores.iter().any(|c| c.exportable || c.importable)
            || self.fences.iter().any(|c| c.exportable || c.importable);
        if !shares_any {
            if let Some(why) = self.semaphores.iter().find_map(|c| c.limitation.as_ref()) {
                write!(f, "\n(nothing shared: {why})")?;
            }
        }
        Ok(())
    }
}

/// Opens every Vulkan device in turn and asks it every question: the semaphore and fence lines
/// of `lava-flow info`.
pub fn sync_capabilities_all() -> Result<Vec<SyncCapabilities>> {
    VulkanContext::enumerate()?
        .iter()
        .map(|info| {
            VulkanContext::with_selector(DeviceSelector::Index(info.index)).map(|ctx| SyncCapabilities::query(&ctx))
        })
        .collect()
}
