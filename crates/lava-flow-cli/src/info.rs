//! `lava-flow info`: the machine's devices with their UUIDs and, for each API present, which
//! handle kinds it can export and import.

use std::process::ExitCode;

use lava_flow::raw_gpu_handle::{FenceHandleKind, MemoryHandleKind, SemaphoreHandleKind, SemaphoreKind};
use lava_flow::vulkan::caps::{self, ExternalCapabilities};
use lava_flow::vulkan::sync::SyncCapabilities;
use lava_flow::vulkan::PhysicalDeviceInfo;
use lava_flow::VulkanContext;
use serde::Serialize;

use crate::table::Table;
use crate::CmdResult;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Everything `info` reports.
#[derive(Serialize)]
pub struct Report {
    pub lava_flow_version: &'static str,
    pub vulkan: VulkanSection,
    /// CUDA, OpenCL and OpenGL, in that order.
    pub apis: Vec<ApiSection>,
}

/// The Vulkan devices and what each can share.
#[derive(Serialize)]
pub struct VulkanSection {
    pub available: bool,
    /// Why Vulkan is unavailable (no loader, no driver).
    pub reason: Option<String>,
    pub devices: Vec<VulkanDevice>,
}

#[derive(Serialize)]
pub struct VulkanDevice {
    #[serde(flatten)]
    pub info: PhysicalDeviceInfo,
    /// What the device can export and import, by object and handle kind.
    pub sharing: Vec<SharingRow>,
    /// The driver's full answer for semaphores and fences (compatible and re-exportable handle
    /// kinds included), where the device could be opened to ask.
    pub sync: Option<SyncCapabilities>,
}

/// One API other than Vulkan: whether it is usable here, its devices, and what it imports.
#[derive(Serialize)]
pub struct ApiSection {
    /// "CUDA", "OpenCL", "OpenGL".
    pub api: &'static str,
    pub available: bool,
    /// Why the API is unavailable, or not part of this build.
    pub reason: Option<String>,
    pub devices: Vec<ApiDevice>,
    pub sharing: Vec<SharingRow>,
}

/// A device of another API and the Vulkan device it shares memory with (same device UUID).
#[derive(Serialize)]
pub struct ApiDevice {
    pub index: usize,
    pub name: String,
    pub device_uuid: String,
    pub driver_uuid: Option<String>,
    /// Index of the Vulkan device with the same device UUID, if any.
    pub vulkan_device: Option<usize>,
}

/// Whether one object can cross in one handle kind, in each direction.
#[derive(Serialize, Clone)]
pub struct SharingRow {
    /// The device of the API's own list the row is about, where the API has several rows per device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<usize>,
    /// "buffer", "image rgba8unorm optimal 2D", "host memory", "timeline semaphore", ...
    pub object: String,
    /// "opaque-fd", "dma-buf", "host-memfd", "sync-fd".
    pub handle_kind: String,
    pub export: bool,
    pub import: bool,
    /// Conditions (dedicated allocation only) or why not.
    pub note: String,
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl ApiSection {
    /// An API that this binary cannot ask about: not compiled in, or its library is absent.
    pub fn unavailable(api: &'static str, reason: impl Into<String>) -> ApiSection {
        ApiSection { api, available: false, reason: Some(reason.into()), devices: Vec::new(), sharing: Vec::new() }
    }
}

pub fn run(args: &Args) -> CmdResult {
    let report = collect();
    if args.json {
        crate::emit(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        crate::emit(&render(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks every API what this machine has.
pub fn collect() -> Report {
    Report { lava_flow_version: env!("CARGO_PKG_VERSION"), vulkan: vulkan_section(), apis: other_apis() }
}

fn vulkan_section() -> VulkanSection {
    match VulkanContext::enumerate() {
        Ok(devices) => VulkanSection {
            available: !devices.is_empty(),
            reason: devices.is_empty().then(|| "the Vulkan loader lists no devices".to_string()),
            devices: devices
                .into_iter()
                .map(|info| {
                    let (sharing, sync) = vulkan_sharing(&info);
                    VulkanDevice { info, sharing, sync }
                })
                .collect(),
        },
        Err(e) => VulkanSection { available: false, reason: Some(e.to_string()), devices: Vec::new() },
    }
}

/// What one Vulkan device can export and import, as the driver's capability queries answer on a
/// context opened for the purpose: memory (buffers, images, host memory), then semaphores and
/// fences (`SyncCapabilities::query`).
fn vulkan_sharing(info: &PhysicalDeviceInfo) -> (Vec<SharingRow>, Option<SyncCapabilities>) {
    match VulkanContext::with_index(info.index) {
        Ok(ctx) => {
            let sync = SyncCapabilities::query(&ctx);
            let mut rows = memory_rows(&ctx);
            rows.extend(sync_rows(&sync));
            (rows, Some(sync))
        }
        Err(e) => (
            vec![SharingRow {
                device: None,
                object: "memory, semaphores and fences".into(),
                handle_kind: "-".into(),
                export: false,
                import: false,
                note: format!("could not open the device to ask: {e}"),
            }],
            None,
        ),
    }
}

fn caps_row(object: &str, caps: &ExternalCapabilities, note: &str) -> SharingRow {
    let mut notes = Vec::new();
    if caps.dedicated_only {
        notes.push("dedicated allocations only".to_string());
    }
    if !note.is_empty() {
        notes.push(note.to_string());
    }
    SharingRow {
        device: None,
        object: object.into(),
        handle_kind: caps.handle_kind.name().into(),
        export: caps.exportable,
        import: caps.importable,
        note: notes.join("; "),
    }
}

/// Buffers (every handle kind) and RGBA8 2D images (optimal and linear), as the driver answers
/// vkGetPhysicalDeviceExternalBufferProperties / vkGetPhysicalDeviceImageFormatProperties2.
fn memory_rows(ctx: &VulkanContext) -> Vec<SharingRow> {
    let ext = ctx.extensions();
    let missing = |kind: MemoryHandleKind| match kind {
        MemoryHandleKind::OpaqueFd if !ext.external_memory_fd => "no VK_KHR_external_memory_fd",
        MemoryHandleKind::DmaBuf if !ext.external_memory_dma_buf => "no VK_EXT_external_memory_dma_buf",
        MemoryHandleKind::HostMemfd if !ext.external_memory_host => "no VK_EXT_external_memory_host",
        _ => "",
    };
    let mut rows = Vec::new();
    for caps in caps::buffer_capability_table(ctx) {
        let mut row = caps_row("buffer", &caps, missing(caps.handle_kind));
        if caps.handle_kind == MemoryHandleKind::HostMemfd && caps.importable {
            // Vulkan cannot export host allocations, but what lava-flow shares is its own memfd,
            // which the device imports: exportable exactly when importable.
            row.export = true;
            row.note = "lava-flow's memfd, mmap-able by any process, imported with VK_EXT_external_memory_host".into();
        }
        rows.push(row);
    }
    for (tiling, caps) in caps::image_capability_table(ctx) {
        let tiling = if tiling == ash::vk::ImageTiling::LINEAR { "linear" } else { "optimal" };
        rows.push(caps_row(&format!("image 2D rgba8unorm {tiling}"), &caps, missing(caps.handle_kind)));
    }
    rows
}

/// One row per semaphore type and handle kind, then one per fence handle kind, each with the
/// driver's answer (`vkGetPhysicalDeviceExternalSemaphoreProperties` with the semaphore type
/// chained, `vkGetPhysicalDeviceExternalFenceProperties`) and, where it says no, why.
fn sync_rows(sync: &SyncCapabilities) -> Vec<SharingRow> {
    let note = |limitation: &Option<String>, sync_fd: bool, shared: bool| match limitation {
        Some(why) => why.clone(),
        // A sync fd is a copy of one pending signal, not the object itself: worth saying.
        None if sync_fd && shared => "a copy of one pending signal, imported temporarily".into(),
        None => String::new(),
    };
    let semaphores = sync.semaphores.iter().map(|c| SharingRow {
        device: None,
        object: match c.kind {
            SemaphoreKind::Timeline => "timeline semaphore".into(),
            SemaphoreKind::Binary => "binary semaphore".into(),
        },
        handle_kind: c.handle_kind.to_string(),
        export: c.exportable,
        import: c.importable,
        note: note(&c.limitation, c.handle_kind == SemaphoreHandleKind::SyncFd, c.exportable || c.importable),
    });
    let fences = sync.fences.iter().map(|c| SharingRow {
        device: None,
        object: "fence".into(),
        handle_kind: c.handle_kind.to_string(),
        export: c.exportable,
        import: c.importable,
        note: note(&c.limitation, c.handle_kind == FenceHandleKind::SyncFd, c.exportable || c.importable),
    });
    semaphores.chain(fences).collect()
}

/// CUDA, OpenCL and OpenGL: each answers through its importer module when built in.
fn other_apis() -> Vec<ApiSection> {
    vec![cuda_section(), opencl_section(), gl_section()]
}

/// CUDA devices from `lava_flow::cuda::list_devices` (paired with Vulkan devices by UUID), and
/// what lava-flow's CUDA importer takes from Vulkan.
#[cfg(feature = "cuda")]
fn cuda_section() -> ApiSection {
    let devices = match lava_flow::cuda::list_devices() {
        Ok(d) => d,
        Err(e) => return ApiSection::unavailable("CUDA", e.to_string()),
    };
    if devices.is_empty() {
        return ApiSection::unavailable("CUDA", "the CUDA driver lists no devices");
    }
    let import = |object: &str, note: &str| SharingRow {
        device: None,
        object: object.into(),
        handle_kind: "opaque-fd".into(),
        export: false,
        import: true,
        note: note.into(),
    };
    let mut sharing = vec![
        import("buffer", "cuImportExternalMemory + cuExternalMemoryGetMappedBuffer, at the buffer's offset"),
        import("image", "cuImportExternalMemory + cuExternalMemoryGetMappedMipmappedArray"),
        import("timeline semaphore", "cuImportExternalSemaphore (TIMELINE_SEMAPHORE_FD)"),
        import("binary semaphore", "cuImportExternalSemaphore (OPAQUE_FD)"),
    ];
    sharing.extend(devices.iter().map(cuda_allocation_row));
    ApiSection {
        api: "CUDA",
        available: true,
        reason: None,
        devices: devices
            .iter()
            .map(|d| ApiDevice {
                index: d.ordinal,
                name: d.name.clone(),
                device_uuid: d.uuid.to_string(),
                driver_uuid: None,
                vulkan_device: d.vulkan_device,
            })
            .collect(),
        sharing,
    }
}

/// Whether CUDA device `d` can allocate memory and export it as a POSIX fd
/// (`lava_flow::cuda::CudaAllocation`, `serve --allocator cuda`), from the two device attributes
/// and the allocation granularity.
#[cfg(feature = "cuda")]
fn cuda_allocation_row(d: &lava_flow::cuda::CudaDeviceInfo) -> SharingRow {
    let support = lava_flow::cuda::CudaDevice::open(d.ordinal).and_then(|c| c.export_support());
    let (export, note) = match support {
        Ok(s) if s.can_export() => (
            true,
            format!(
                "cuMemCreate + cuMemExportToShareableHandle (POSIX fd), sizes rounded to {} bytes",
                s.granularity.unwrap_or(0)
            ),
        ),
        Ok(s) if !s.virtual_memory_management => {
            (false, "CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED is 0".to_string())
        }
        Ok(_) => (false, "CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED is 0".to_string()),
        Err(e) => (false, format!("could not ask: {e}")),
    };
    SharingRow {
        device: Some(d.ordinal),
        object: "allocation (CUDA allocates)".into(),
        handle_kind: "opaque-fd".into(),
        export,
        import: false,
        note,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_section() -> ApiSection {
    ApiSection::unavailable("CUDA", "built without the `cuda` feature")
}

/// The Vulkan device with `identity`'s device UUID, and its driver UUID too where `same_driver`:
/// the one whose opaque fds this device may import. GL reports Vulkan's driver UUID and is
/// matched on both; NVIDIA's OpenCL driver UUID differs from its Vulkan one, so OpenCL (like
/// lava-flow's OpenCL importer) is matched on the device UUID alone.
#[cfg(any(feature = "gl", feature = "opencl"))]
fn paired_vulkan(identity: &lava_flow::raw_gpu_handle::DeviceIdentity, same_driver: bool) -> Option<usize> {
    let devices = VulkanContext::enumerate().ok()?;
    devices
        .iter()
        .find(|v| {
            v.identity.device_uuid == identity.device_uuid
                && (!same_driver || v.identity.driver_uuid == identity.driver_uuid)
        })
        .map(|v| v.index)
}

/// OpenCL devices from `ClContext::enumerate` (every platform), and what each imports.
#[cfg(feature = "opencl")]
fn opencl_section() -> ApiSection {
    let devices = match lava_flow::opencl::ClContext::enumerate() {
        Ok(d) => d,
        Err(e) => return ApiSection::unavailable("OpenCL", e.to_string()),
    };
    if devices.is_empty() {
        return ApiSection::unavailable("OpenCL", "the OpenCL loader lists no devices");
    }
    let mut sharing = Vec::new();
    let mut api_devices = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let device = format!("{} / {}", d.platform, d.name);
        let matchable = if d.device_uuid { "" } else { "no cl_khr_device_uuid: cannot be matched to a Vulkan export" };
        let row = |object: &str, on: bool, why_not: &str, note: &str| SharingRow {
            device: Some(i),
            object: object.into(),
            handle_kind: "opaque-fd".into(),
            export: false,
            import: on && d.device_uuid,
            note: if !d.device_uuid {
                matchable.into()
            } else if on {
                note.into()
            } else {
                why_not.into()
            },
        };
        let images = if d.opaque_fd_images_linear { "images assumed linear by the driver" } else { "" };
        sharing.push(row("buffer", d.external_memory_opaque_fd, "no cl_khr_external_memory_opaque_fd", ""));
        sharing.push(row("image", d.external_memory_opaque_fd, "no cl_khr_external_memory_opaque_fd", images));
        sharing.push(row(
            "binary semaphore",
            d.external_semaphore_opaque_fd,
            "no cl_khr_external_semaphore_opaque_fd",
            "",
        ));
        api_devices.push(ApiDevice {
            index: i,
            name: device,
            device_uuid: d.identity.device_uuid.to_string(),
            driver_uuid: Some(d.identity.driver_uuid.to_string()),
            vulkan_device: d.device_uuid.then(|| paired_vulkan(&d.identity, false)).flatten(),
        });
    }
    ApiSection { api: "OpenCL", available: true, reason: None, devices: api_devices, sharing }
}

#[cfg(not(feature = "opencl"))]
fn opencl_section() -> ApiSection {
    ApiSection::unavailable("OpenCL", "built without the `opencl` feature")
}

/// GL devices lava-flow can open a headless EGL context on, and what each imports.
#[cfg(feature = "gl")]
fn gl_section() -> ApiSection {
    let devices = match lava_flow::gl::GlContext::enumerate() {
        Ok(d) => d,
        Err(e) => return ApiSection::unavailable("OpenGL", e.to_string()),
    };
    if devices.is_empty() {
        return ApiSection::unavailable("OpenGL", "EGL opens no context on any device");
    }
    let mut sharing = Vec::new();
    let mut api_devices = Vec::new();
    for d in &devices {
        let offsets = if d.honours_memory_offset {
            ""
        } else {
            "the driver ignores memory offsets: only resources at offset 0 import"
        };
        let row = |object: &str, on: bool, why_not: &str, note: &str| SharingRow {
            device: Some(d.index),
            object: object.into(),
            handle_kind: "opaque-fd".into(),
            export: false,
            import: on,
            note: if on { note.into() } else { why_not.into() },
        };
        sharing.push(row("buffer", d.memory_object_fd, "no GL_EXT_memory_object_fd", offsets));
        sharing.push(row("texture", d.memory_object_fd, "no GL_EXT_memory_object_fd", offsets));
        sharing.push(row("binary semaphore", d.semaphore_fd, "no GL_EXT_semaphore_fd", ""));
        api_devices.push(ApiDevice {
            index: d.index,
            name: format!("{} ({}, EGL {})", d.renderer, d.api, d.platform),
            device_uuid: d.identity.device_uuid.to_string(),
            driver_uuid: Some(d.identity.driver_uuid.to_string()),
            vulkan_device: paired_vulkan(&d.identity, true),
        });
    }
    ApiSection { api: "OpenGL", available: true, reason: None, devices: api_devices, sharing }
}

#[cfg(not(feature = "gl"))]
fn gl_section() -> ApiSection {
    ApiSection::unavailable("OpenGL", "built without the `gl` feature")
}

/// The readable form: a device table per API, then one sharing table for all of them.
pub fn render(report: &Report) -> String {
    let mut out = format!("lava-flow {}\n\n", report.lava_flow_version);
    out.push_str("Vulkan devices\n");
    if report.vulkan.devices.is_empty() {
        out.push_str(&format!("  none: {}\n", report.vulkan.reason.as_deref().unwrap_or("no devices")));
    } else {
        let mut t = Table::new(&[">#", "name", "type", "driver", "api", "device UUID", "driver UUID"]);
        for d in &report.vulkan.devices {
            let i = &d.info;
            t.row([
                i.index.to_string(),
                i.name.clone(),
                i.device_type.clone(),
                i.driver_name.clone(),
                i.api_version.clone(),
                i.identity.device_uuid.to_string(),
                i.identity.driver_uuid.to_string(),
            ]);
        }
        out.push_str(&t.render(2));
    }
    for api in &report.apis {
        out.push_str(&format!("\n{} devices\n", api.api));
        if api.devices.is_empty() {
            out.push_str(&format!("  none: {}\n", api.reason.as_deref().unwrap_or("no devices")));
            continue;
        }
        let mut t = Table::new(&[">#", "name", "device UUID", "driver UUID", "Vulkan device"]);
        for d in &api.devices {
            t.row([
                d.index.to_string(),
                d.name.clone(),
                d.device_uuid.clone(),
                d.driver_uuid.clone().unwrap_or_else(|| "-".into()),
                d.vulkan_device.map_or_else(|| "none (UUID matches no Vulkan device)".into(), |v| format!("#{v}")),
            ]);
        }
        out.push_str(&t.render(2));
    }
    out.push_str("\nSharing (export / import by handle kind)\n");
    let mut t = Table::new(&["api", "device", "object", "handle kind", "export", "import", "note"]);
    for d in &report.vulkan.devices {
        for r in &d.sharing {
            t.row([
                "Vulkan".to_string(),
                format!("#{}", d.info.index),
                r.object.clone(),
                r.handle_kind.clone(),
                yes_no(r.export).into(),
                yes_no(r.import).into(),
                r.note.clone(),
            ]);
        }
    }
    for api in &report.apis {
        if api.sharing.is_empty() {
            let why = api.reason.clone().unwrap_or_else(|| "no importable handle kinds".into());
            t.row([api.api.to_string(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into(), why]);
        }
        for r in &api.sharing {
            t.row([
                api.api.to_string(),
                r.device.map_or_else(|| "all".into(), |d| format!("#{d}")),
                r.object.clone(),
                r.handle_kind.clone(),
                yes_no(r.export).into(),
                yes_no(r.import).into(),
                r.note.clone(),
            ]);
        }
    }
    out.push_str(&t.render(2));
    let sync: Vec<_> = report.vulkan.devices.iter().filter_map(|d| d.sync.as_ref()).collect();
    if !sync.is_empty() {
        out.push_str("\nSemaphores and fences (handle kinds each Vulkan device exports and imports)\n");
        for s in sync {
            out.push_str(&format!("  #{} {}\n", s.device_index, s.device));
            for line in s.to_string().lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}
