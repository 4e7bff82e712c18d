//! Capability queries: can this device export or import a buffer or image of this kind, and
//! must it be a dedicated allocation? Consulted before allocating, so an unsupported request fails
//! up front with the query's answer instead of a driver error later.

use ash::vk;
use raw_gpu_handle::MemoryHandleKind;

use super::format::vk_memory_handle_type;
use crate::{Error, Result, VulkanContext};

/// What a device can do with external memory of one handle kind for one kind of resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExternalCapabilities {
    /// The handle kind asked about.
    #[serde(serialize_with = "serialize_kind")]
    pub handle_kind: MemoryHandleKind,
    /// `VK_EXTERNAL_MEMORY_FEATURE_EXPORTABLE_BIT`.
    pub exportable: bool,
    /// `VK_EXTERNAL_MEMORY_FEATURE_IMPORTABLE_BIT`.
    pub importable: bool,
    /// `VK_EXTERNAL_MEMORY_FEATURE_DEDICATED_ONLY_BIT`: such memory must be a dedicated allocation.
    pub dedicated_only: bool,
}

fn serialize_kind<S: serde::Serializer>(k: &MemoryHandleKind, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(k.name())
}

impl ExternalCapabilities {
    fn from_vk(handle_kind: MemoryHandleKind, props: vk::ExternalMemoryProperties) -> Self {
        let f = props.external_memory_features;
        ExternalCapabilities {
            handle_kind,
            exportable: f.contains(vk::ExternalMemoryFeatureFlags::EXPORTABLE),
            importable: f.contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE),
            dedicated_only: f.contains(vk::ExternalMemoryFeatureFlags::DEDICATED_ONLY),
        }
    }

    fn none(handle_kind: MemoryHandleKind) -> Self {
        ExternalCapabilities { handle_kind, exportable: false, importable: false, dedicated_only: false }
    }

    /// Fails with [`Error::Unsupported`] unless exportable.
    pub fn require_exportable(&self, what: &str, query: &str) -> Result<()> {
        if self.exportable {
            return Ok(());
        }
        Err(Error::unsupported(
            format!("exporting {what} as {}", self.handle_kind),
            "the driver does not report VK_EXTERNAL_MEMORY_FEATURE_EXPORTABLE_BIT",
            query.to_string(),
            "choose another handle kind or memory location (`lava-flow info` lists what this device exports)",
        ))
    }

    /// Fails with [`Error::Unsupported`] unless importable.
    pub fn require_importable(&self, what: &str, query: &str) -> Result<()> {
        if self.importable {
            return Ok(());
        }
        Err(Error::unsupported(
            format!("importing {what} as {}", self.handle_kind),
            "the driver does not report VK_EXTERNAL_MEMORY_FEATURE_IMPORTABLE_BIT",
            query.to_string(),
            "share it as another handle kind (`lava-flow info` lists what this device imports)",
        ))
    }
}

fn kind_enabled(ctx: &VulkanContext, kind: MemoryHandleKind) -> bool {
    let ext = ctx.extensions();
    match kind {
        MemoryHandleKind::OpaqueFd => ext.external_memory_fd,
        MemoryHandleKind::DmaBuf => ext.external_memory_fd && ext.external_memory_dma_buf,
        MemoryHandleKind::HostMemfd => ext.external_memory_host,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// `vkGetPhysicalDeviceExternalBufferProperties` for buffers of `usage` shared as `kind`.
pub fn buffer_capabilities(
    ctx: &VulkanContext,
    usage: vk::BufferUsageFlags,
    kind: MemoryHandleKind,
) -> ExternalCapabilities {
    if !kind_enabled(ctx, kind) {
        return ExternalCapabilities::none(kind);
    }
    let info = vk::PhysicalDeviceExternalBufferInfo::default().usage(usage).handle_type(vk_memory_handle_type(kind));
    let mut out = vk::ExternalBufferProperties::default();
    // SAFETY: the physical device was enumerated from the context's instance, which the context keeps
    // alive; `info` (handle type enabled on the device, checked above) and `out` outlive the call.
    unsafe { ctx.instance().get_physical_device_external_buffer_properties(ctx.physical_device(), &info, &mut out) };
    ExternalCapabilities::from_vk(kind, out.external_memory_properties)
}

/// An image's creation parameters, as the capability query needs them.
#[derive(Clone, Copy, Debug)]
pub struct ImageQuery {
    /// Format.
    pub format: vk::Format,
    /// 1D, 2D or 3D.
    pub image_type: vk::ImageType,
    /// Linear or optimal.
    pub tiling: vk::ImageTiling,
    /// Usage flags.
    pub usage: vk::ImageUsageFlags,
    /// Create flags.
    pub flags: vk::ImageCreateFlags,
}

/// Limits for an image that the driver supports at all (`vkGetPhysicalDeviceImageFormatProperties2`).
#[derive(Clone, Copy, Debug)]
pub struct ImageLimits {
    /// Largest extent.
    pub max_extent: vk::Extent3D,
    /// Most array layers.
    pub max_array_layers: u32,
}

/// `vkGetPhysicalDeviceImageFormatProperties2` with `VkPhysicalDeviceExternalImageFormatInfo`:
/// whether images of `query` can be shared as `kind`. An image the driver cannot create at all is
/// [`Error::Unsupported`].
pub fn image_capabilities(
    ctx: &VulkanContext,
    query: ImageQuery,
    kind: MemoryHandleKind,
) -> Result<(ExternalCapabilities, ImageLimits)> {
    let describe =
        || format!("{:?} {:?} {:?} image with usage {:?}", query.format, query.image_type, query.tiling, query.usage);
    let mut external_info =
        vk::PhysicalDeviceExternalImageFormatInfo::default().handle_type(vk_memory_handle_type(kind));
    let mut info = vk::PhysicalDeviceImageFormatInfo2::default()
        .format(query.format)
        .ty(query.image_type)
        .tiling(query.tiling)
        .usage(query.usage)
        .flags(query.flags);
    let enabled = kind_enabled(ctx, kind);
    if enabled {
        info = info.push_next(&mut external_info);
    }
    let mut external_props = vk::ExternalImageFormatProperties::default();
    let mut props = vk::ImageFormatProperties2::default().push_next(&mut external_props);
    // SAFETY: the physical device belongs to the context's instance, alive while ctx is; the external
    // image info is chained only when its handle kind's extension is enabled; all locals outlive the call.
    let r = unsafe {
        ctx.instance().get_physical_device_image_format_properties2(ctx.physical_device(), &info, &mut props)
    };
    match r {
        Ok(()) => {}
        Err(vk::Result::ERROR_FORMAT_NOT_SUPPORTED) => {
            return Err(Error::unsupported(
                describe(),
                if enabled {
                    format!("the driver cannot create it shareable as {kind} (VK_ERROR_FORMAT_NOT_SUPPORTED)")
                } else {
                    "the driver cannot create it (VK_ERROR_FORMAT_NOT_SUPPORTED)".to_string()
                },
                "vkGetPhysicalDeviceImageFormatProperties2",
                "try optimal tiling, a 2D image, fewer layers or another format",
            ))
        }
        Err(e) => return Err(Error::vk("vkGetPhysicalDeviceImageFormatProperties2", e, describe())),
    }
    let limits = ImageLimits {
        max_extent: props.image_format_properties.max_extent,
        max_array_layers: props.image_format_properties.max_array_layers,
    };
    let caps = if enabled {
        ExternalCapabilities::from_vk(kind, external_props.external_memory_properties)
    } else {
        ExternalCapabilities::none(kind)
    };
    Ok((caps, limits))
}

/// `vkGetPhysicalDeviceImageFormatProperties2` without external memory: the limits of a private
/// image of `query`, or [`Error::Unsupported`] where the driver cannot create it at all.
pub(crate) fn image_limits(ctx: &VulkanContext, query: ImageQuery) -> Result<ImageLimits> {
    let info = vk::PhysicalDeviceImageFormatInfo2::default()
        .format(query.format)
        .ty(query.image_type)
        .tiling(query.tiling)
        .usage(query.usage)
        .flags(query.flags);
    let mut props = vk::ImageFormatProperties2::default();
    // SAFETY: the physical device was enumerated from the context's instance, which the context
    // keeps alive; `info` and `props` are locals with empty pNext chains that outlive the call.
    let r = unsafe {
        ctx.instance().get_physical_device_image_format_properties2(ctx.physical_device(), &info, &mut props)
    };
    match r {
        Ok(()) => Ok(ImageLimits {
            max_extent: props.image_format_properties.max_extent,
            max_array_layers: props.image_format_properties.max_array_layers,
        }),
        Err(vk::Result::ERROR_FORMAT_NOT_SUPPORTED) => Err(Error::unsupported(
            format!("{:?} {:?} {:?} image with usage {:?}", query.format, query.image_type, query.tiling, query.usage),
            "the driver cannot create it (VK_ERROR_FORMAT_NOT_SUPPORTED)",
            "vkGetPhysicalDeviceImageFormatProperties2",
            "try optimal tiling, a 2D image, fewer layers or another format",
        )),
        Err(e) => Err(Error::vk("vkGetPhysicalDeviceImageFormatProperties2", e, "querying image limits")),
    }
}

/// The memory handle kinds lava-flow knows, for tables.
pub const MEMORY_HANDLE_KINDS: [MemoryHandleKind; 3] =
    [MemoryHandleKind::OpaqueFd, MemoryHandleKind::DmaBuf, MemoryHandleKind::HostMemfd];

/// The usage lava-flow gives shareable buffers by default.
pub const DEFAULT_BUFFER_USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::STORAGE_BUFFER.as_raw()
        | vk::BufferUsageFlags::TRANSFER_SRC.as_raw()
        | vk::BufferUsageFlags::TRANSFER_DST.as_raw(),
);

/// Buffer export/import capabilities of every handle kind, for `lava-flow info`.
pub fn buffer_capability_table(ctx: &VulkanContext) -> Vec<ExternalCapabilities> {
    MEMORY_HANDLE_KINDS.iter().map(|k| buffer_capabilities(ctx, DEFAULT_BUFFER_USAGE, *k)).collect()
}

/// Image (RGBA8, 2D, optimal and linear) export/import capabilities of the fd handle kinds.
pub fn image_capability_table(ctx: &VulkanContext) -> Vec<(vk::ImageTiling, ExternalCapabilities)> {
    let mut out = Vec::new();
    for tiling in [vk::ImageTiling::OPTIMAL, vk::ImageTiling::LINEAR] {
        for kind in [MemoryHandleKind::OpaqueFd, MemoryHandleKind::DmaBuf] {
            let q = ImageQuery {
                format: vk::Format::R8G8B8A8_UNORM,
                image_type: vk::ImageType::TYPE_2D,
                tiling,
                usage: vk::ImageUsageFlags::TRANSFER_SRC
                    | vk::ImageUsageFlags::TRANSFER_DST
                    | vk::ImageUsageFlags::SAMPLED,
                flags: vk::ImageCreateFlags::empty(),
            };
            let caps = image_capabilities(ctx, q, kind).map(|c| c.0).unwrap_or(ExternalCapabilities::none(kind));
            out.push((tiling, caps));
        }
    }
    out
}
