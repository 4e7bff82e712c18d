//! Exportable images (1D, 2D, 3D and arrays; linear or optimal tiling), their import, and
//! uploads and downloads through staging buffers.
//!
//! Layout convention: lava-flow leaves a shared image in `VK_IMAGE_LAYOUT_GENERAL` and released to
//! `VK_QUEUE_FAMILY_EXTERNAL` after each of its own operations, and acquires it back (from
//! `GENERAL`) before the next. Other APIs (CUDA, GL with `GL_LAYOUT_GENERAL_EXT`, OpenCL) may
//! use it in between.

use std::sync::{Arc, Mutex};

use ash::vk;
use raw_gpu_handle::{
    ExportedTexture, Extent3d, MemoryHandleKind, TextureDescription, TextureDimension, TextureFormat, TextureHandle,
    TextureTiling, TextureUsage,
};

use super::buffer::{
    allocate_for, check_size, Buffer, BufferOptions, DedicatedPolicy, MemoryChoice, MemoryKind, Requirements,
};
use super::caps::{image_capabilities, image_limits, ImageQuery};
use super::format::{vk_format, vk_image_type, vk_memory_handle_type};
use super::memory::{DedicatedTo, DeviceMemory};
use crate::{Error, Result, VulkanContext};

/// Linear or optimal tiling for a new image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ImageTiling {
    /// The driver's tiling; fastest, importable by the same driver only.
    #[default]
    Optimal,
    /// Row-major with the pitches the driver reports.
    Linear,
}

/// How to create an image.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Texel format.
    pub format: TextureFormat,
    /// 1D, 2D, 3D or array.
    pub dimension: TextureDimension,
    /// Size in texels.
    pub extent: Extent3d,
    /// Layers (1 unless an array).
    pub array_layers: u32,
    /// Tiling.
    pub tiling: ImageTiling,
    /// Usage beyond transfer (always on).
    pub usage: TextureUsage,
    /// Memory kind (device-local or host-visible; images cannot live in shared host memory).
    pub memory: MemoryKind,
    /// Export handle kind (`Some(OpaqueFd)` by default).
    pub export: Option<MemoryHandleKind>,
    /// Dedicated allocation policy.
    pub dedicated: DedicatedPolicy,
}

impl ImageOptions {
    /// An exportable optimal 2D image.
    pub fn d2(format: TextureFormat, width: u32, height: u32) -> Self {
        ImageOptions {
            format,
            dimension: TextureDimension::D2,
            extent: Extent3d { width, height, depth: 1 },
            array_layers: 1,
            tiling: ImageTiling::Optimal,
            usage: TextureUsage { sampled: true, storage: false, color_attachment: false, transfer: true },
            memory: MemoryKind::DeviceLocal,
            export: Some(MemoryHandleKind::OpaqueFd),
            dedicated: DedicatedPolicy::Auto,
        }
    }

    /// An exportable optimal 2D array image.
    pub fn d2_array(format: TextureFormat, width: u32, height: u32, layers: u32) -> Self {
        ImageOptions { dimension: TextureDimension::D2Array, array_layers: layers, ..Self::d2(format, width, height) }
    }

    /// An exportable optimal 3D image.
    pub fn d3(format: TextureFormat, width: u32, height: u32, depth: u32) -> Self {
        ImageOptions {
            dimension: TextureDimension::D3,
            extent: Extent3d { width, height, depth },
            ..Self::d2(format, width, height)
        }
    }

    /// Sets the tiling.
    pub fn tiling(mut self, tiling: ImageTiling) -> Self {
        self.tiling = tiling;
        self
    }

    /// Sets the usage.
    pub fn usage(mut self, usage: TextureUsage) -> Self {
        self.usage = usage;
        self
    }

    /// Sets the memory kind.
    pub fn memory(mut self, memory: MemoryKind) -> Self {
        self.memory = memory;
        self
    }

    fn description_stub(&self) -> TextureDescription {
        TextureDescription {
            format: self.format,
            dimension: self.dimension,
            extent: self.extent,
            array_layers: self.array_layers,
            tiling: match self.tiling {
                ImageTiling::Optimal => TextureTiling::Optimal,
                ImageTiling::Linear => TextureTiling::Linear { row_pitch: u64::MAX, array_pitch: 0, depth_pitch: 0 },
            },
            usage: self.usage,
            offset: 0,
            // Not known until the driver reports the image's memory requirements; the largest
            // value passes `validate`'s checks of the extent against the size.
            size: u64::MAX,
        }
    }
}

fn vk_usage(usage: TextureUsage) -> vk::ImageUsageFlags {
    let mut f = vk::ImageUsageFlags::TRANSFER_SRC | vk::ImageUsageFlags::TRANSFER_DST;
    if usage.sampled {
        f |= vk::ImageUsageFlags::SAMPLED;
    }
    if usage.storage {
        f |= vk::ImageUsageFlags::STORAGE;
    }
    if usage.color_attachment {
        f |= vk::ImageUsageFlags::COLOR_ATTACHMENT;
    }
    f
}

/// A `VkImage` bound to a [`DeviceMemory`], which it keeps alive.
pub struct Image {
    ctx: VulkanContext,
    image: vk::Image,
    memory: Arc<DeviceMemory>,
    description: TextureDescription,
    vk_format: vk::Format,
    /// `UNDEFINED` until first written, then `GENERAL` (released to external after each use).
    layout: Mutex<vk::ImageLayout>,
    /// Whether dropping this destroys the `VkImage` (false for an image adopted unowned).
    owned: bool,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").field("description", &self.description).field("memory", &self.memory).finish()
    }
}

struct Created {
    image: vk::Image,
    query: ImageQuery,
}

fn create_vk_image(ctx: &VulkanContext, d: &TextureDescription, kind: Option<MemoryHandleKind>) -> Result<Created> {
    d.validate()
        .map_err(|e| Error::invalid("a texture description", e.to_string(), "fix the extent, layers or pitch"))?;
    let format = vk_format(d.format);
    let tiling = match d.tiling {
        TextureTiling::Optimal => vk::ImageTiling::OPTIMAL,
        TextureTiling::Linear { .. } => vk::ImageTiling::LINEAR,
        TextureTiling::DrmModifier { .. } => {
            return Err(Error::unsupported(
                "a DRM-modifier image",
                "lava-flow creates and imports linear and optimal images only",
                "VK_EXT_image_drm_format_modifier",
                "use linear or optimal tiling",
            ))
        }
    };
    let query = ImageQuery {
        format,
        image_type: vk_image_type(d.dimension),
        tiling,
        usage: vk_usage(d.usage),
        flags: vk::ImageCreateFlags::empty(),
    };
    let what = format!(
        "a {}x{}x{} {} {:?} {:?} image with {} layers",
        d.extent.width, d.extent.height, d.extent.depth, d.format, d.dimension, tiling, d.array_layers
    );
    // Private images are checked against the driver's limits too: vkCreateImage beyond them is
    // undefined behaviour (VUID-VkImageCreateInfo-extent-02252 and the like), not an error.
    let (caps, limits) = match kind {
        Some(kind) => {
            let (caps, limits) = image_capabilities(ctx, query, kind)?;
            (Some(caps), limits)
        }
        None => (None, image_limits(ctx, query)?),
    };
    if d.array_layers > limits.max_array_layers
        || d.extent.width > limits.max_extent.width
        || d.extent.height > limits.max_extent.height
        || d.extent.depth > limits.max_extent.depth
    {
        return Err(Error::unsupported(
            what,
            format!("the driver allows at most {:?} with {} layers for it", limits.max_extent, limits.max_array_layers),
            "vkGetPhysicalDeviceImageFormatProperties2 (maxExtent, maxArrayLayers)",
            "use a smaller image, fewer layers, or optimal tiling",
        ));
    }
    if let Some(caps) = caps {
        caps.require_exportable(
            &what,
            "vkGetPhysicalDeviceImageFormatProperties2 with VkPhysicalDeviceExternalImageFormatInfo",
        )
        .or_else(|e| if caps.importable { Ok(()) } else { Err(e) })?;
    }
    let mut external = vk::ExternalMemoryImageCreateInfo::default();
    let mut info = vk::ImageCreateInfo::default()
        .image_type(query.image_type)
        .format(format)
        .extent(vk::Extent3D { width: d.extent.width, height: d.extent.height, depth: d.extent.depth })
        .mip_levels(1)
        .array_layers(d.array_layers)
        .samples(vk::SampleCountFlags::TYPE_1)
        .tiling(tiling)
        .usage(query.usage)
        .sharing_mode(vk::SharingMode::EXCLUSIVE)
        .initial_layout(vk::ImageLayout::UNDEFINED);
    if let Some(kind) = kind {
        external = external.handle_types(vk_memory_handle_type(kind));
        info = info.push_next(&mut external);
    }
    // SAFETY: `info` and its external-memory chain are locals that outlive the call; the format,
    // type, tiling, usage and extent were checked against the driver's limits above.
    let image = unsafe { ctx.device().create_image(&info, None) }
        .map_err(|r| Error::vk("vkCreateImage", r, format!("creating a {:?} {} image", d.dimension, d.format)))?;
    Ok(Created { image, query })
}

fn image_requirements(ctx: &VulkanContext, image: vk::Image) -> Requirements {
    let mut dedicated = vk::MemoryDedicatedRequirements::default();
    let mut reqs2 = vk::MemoryRequirements2::default().push_next(&mut dedicated);
    let info = vk::ImageMemoryRequirementsInfo2::default().image(image);
    // SAFETY: `image` was created on ctx's device and is alive; the requirements struct and its
    // dedicated-requirements chain are locals that outlive the call.
    unsafe { ctx.device().get_image_memory_requirements2(&info, &mut reqs2) };
    Requirements {
        reqs: reqs2.memory_requirements,
        prefers_dedicated: dedicated.prefers_dedicated_allocation == vk::TRUE,
        requires_dedicated: dedicated.requires_dedicated_allocation == vk::TRUE,
    }
}

fn linear_layout(ctx: &VulkanContext, image: vk::Image, d: &TextureDescription) -> TextureTiling {
    let sub = vk::ImageSubresource { aspect_mask: vk::ImageAspectFlags::COLOR, mip_level: 0, array_layer: 0 };
    // SAFETY: callers pass only LINEAR images of ctx's device, alive for the call; every lava-flow
    // format is a colour format, so the COLOR aspect of mip 0, layer 0 names an existing subresource.
    let layout = unsafe { ctx.device().get_image_subresource_layout(image, sub) };
    TextureTiling::Linear {
        row_pitch: layout.row_pitch,
        array_pitch: if d.dimension.is_array() { layout.array_pitch } else { 0 },
        depth_pitch: if d.dimension == TextureDimension::D3 { layout.depth_pitch } else { 0 },
    }
}

impl Image {
    /// Creates an image and its memory, checking the capability query first.
    pub fn new(ctx: &VulkanContext, options: &ImageOptions) -> Result<Image> {
        ctx.check_deferred()?;
        if options.memory == MemoryKind::SharedHost {
            return Err(Error::unsupported(
                "an image in shared host memory",
                "VK_EXT_external_memory_host imports host memory for buffers; images there are not portable",
                "VK_EXT_external_memory_host",
                "share a buffer in host memory, or put the image in device memory",
            ));
        }
        let mut d = options.description_stub();
        let Created { image, query } = create_vk_image(ctx, &d, options.export)?;
        let fail = |e: Error| {
            // SAFETY: on every path that calls `fail` the image was never bound or used by a command.
            unsafe { ctx.device().destroy_image(image, None) };
            Err(e)
        };
        let r = image_requirements(ctx, image);
        let required = match options.memory {
            MemoryKind::DeviceLocal => vk::MemoryPropertyFlags::DEVICE_LOCAL,
            _ => vk::MemoryPropertyFlags::HOST_VISIBLE,
        };
        if let Err(e) = check_size(ctx, r.reqs.size, required, "an image", false) {
            return fail(e);
        }
        let dedicated_only = match options.export {
            Some(kind) => image_capabilities(ctx, query, kind).map(|c| c.0.dedicated_only).unwrap_or(false),
            None => false,
        };
        let choice = MemoryChoice {
            policy: options.dedicated,
            dedicated_only,
            kind: options.memory,
            export: options.export,
            target: DedicatedTo::Image(image),
            what: "image",
        };
        let memory = match allocate_for(ctx, &r, r.reqs.size, &choice) {
            Ok(m) => m,
            Err(e) => return fail(e),
        };
        // SAFETY: the image is fresh and unbound; allocate_for chose a memory type from its
        // requirements' memory_type_bits with at least r.reqs.size bytes; offset 0 is aligned; a
        // dedicated allocation was made for this very image.
        if let Err(e) = unsafe { ctx.device().bind_image_memory(image, memory.handle(), 0) } {
            return fail(Error::vk("vkBindImageMemory", e, "binding a new image"));
        }
        d.size = r.reqs.size;
        if options.tiling == ImageTiling::Linear {
            d.tiling = linear_layout(ctx, image, &d);
        }
        Ok(Image {
            ctx: ctx.clone(),
            image,
            memory: Arc::new(memory),
            vk_format: query.format,
            description: d,
            layout: Mutex::new(vk::ImageLayout::UNDEFINED),
            owned: true,
        })
    }

    /// Imports an exported texture. Refuses a description that does not fit its allocation or
    /// whose linear pitches differ from what this device would lay out. Consumes the fd whether the
    /// import succeeds or fails (docs/OWNERSHIP.md): on success Vulkan owns it, on failure
    /// lava-flow closes it exactly once. The image starts in `GENERAL`, owned by the external side.
    pub fn import(ctx: &VulkanContext, exported: ExportedTexture) -> Result<Image> {
        ctx.check_deferred()?;
        let TextureHandle { memory, texture: d, .. } = exported;
        let md = memory.description;
        raw_gpu_handle::check_compatible(md.handle_kind, &md.device, &ctx.identity())?;
        if d.offset.checked_add(d.size).is_none_or(|end| end > md.allocation_size) {
            return Err(Error::invalid(
                format!("a texture of {} bytes at offset {}", d.size, d.offset),
                format!("the allocation holds {} bytes", md.allocation_size),
                "pass the texture description the exporter gave, unchanged",
            ));
        }
        let Created { image, .. } = create_vk_image(ctx, &d, Some(md.handle_kind))?;
        let fail = |e: Error| {
            // SAFETY: on every path that calls `fail` the image is not bound (or its bind failed) and no
            // command uses it; the imported memory, if any, is dropped after it.
            unsafe { ctx.device().destroy_image(image, None) };
            Err(e)
        };
        let r = image_requirements(ctx, image);
        if md.dedicated && d.offset != 0 {
            return fail(Error::invalid(
                format!("a texture at offset {} of a dedicated allocation", d.offset),
                "a dedicated allocation is bound to its image at offset 0 (VUID-vkBindImageMemory-memory-01509)",
                "pass the texture description the exporter gave, unchanged",
            ));
        }
        if r.reqs.size > d.size || d.offset % r.reqs.alignment.max(1) != 0 {
            return fail(Error::invalid(
                format!("a texture of {} bytes at offset {}", d.size, d.offset),
                format!("this device needs {} bytes aligned to {} for that image", r.reqs.size, r.reqs.alignment),
                "import on the exporting device and driver, with the exporter's description",
            ));
        }
        if let TextureTiling::Linear { row_pitch, .. } = d.tiling {
            if let TextureTiling::Linear { row_pitch: here, .. } = linear_layout(ctx, image, &d) {
                if here != row_pitch {
                    return fail(Error::invalid(
                        format!("a linear texture with row pitch {row_pitch}"),
                        format!("this device lays the image out with row pitch {here}"),
                        "import on the exporting device and driver",
                    ));
                }
            }
        }
        let dedicated = md.dedicated.then_some(DedicatedTo::Image(image));
        let memory = match DeviceMemory::import(ctx, memory, dedicated) {
            Ok(m) => Arc::new(m),
            Err(e) => return fail(e),
        };
        if r.reqs.memory_type_bits & (1 << memory.memory_type_index()) == 0 {
            return fail(Error::invalid(
                format!("an image in memory type {}", memory.memory_type_index()),
                format!(
                    "the image allows only memory types {:#b} (VUID-vkBindImageMemory-memory-01047)",
                    r.reqs.memory_type_bits
                ),
                "import on the exporting device and driver, with the exporter's description",
            ));
        }
        // SAFETY: the image is fresh and unbound; the memory is of a type it accepts (checked just
        // above); d.offset is aligned and d.offset + r.reqs.size fits the allocation (reqs.size <=
        // d.size and d.offset + d.size <= allocation size, checked above); a dedicated import was
        // made for this very image and is bound at offset 0 (checked above).
        if let Err(e) = unsafe { ctx.device().bind_image_memory(image, memory.handle(), d.offset) } {
            return fail(Error::vk("vkBindImageMemory", e, "binding an imported image"));
        }
        Ok(Image {
            ctx: ctx.clone(),
            image,
            memory,
            vk_format: vk_format(d.format),
            description: d,
            layout: Mutex::new(vk::ImageLayout::GENERAL),
            owned: true,
        })
    }

    /// Describes an image the caller created and bound to `memory` (memory it allocated itself,
    /// described with [`DeviceMemory::from_raw`]), so that lava-flow exports, uploads and
    /// downloads it. `description` says how it was created (format, dimension, extent, layers,
    /// tiling with the driver's linear pitches, usage) and where it lies (`offset`, and `size`:
    /// its memory requirements' size).
    ///
    /// Checks the description's shape, and against the image's memory requirements and layout:
    /// size, alignment, offset 0 for a dedicated allocation, a memory type the image accepts, the
    /// linear row pitch. With `owned`, dropping it destroys the `VkImage`; without, lava-flow never
    /// does.
    ///
    /// # Safety
    ///
    /// The caller promises that:
    /// - `image` is a live `VkImage` of `memory`'s device, created as `description` says (with one mip
    ///   level, one sample, exclusive sharing, transfer source and destination usage, and
    ///   `VkExternalMemoryImageCreateInfo::handleTypes` including the memory's export kind), and bound
    ///   to `memory` at `description.offset`; for a dedicated allocation, it is the image the
    ///   allocation is dedicated to;
    /// - `layout` is `UNDEFINED` (lava-flow may discard the contents on first use) or `GENERAL`
    ///   released to `VK_QUEUE_FAMILY_EXTERNAL`, as lava-flow leaves shared images, and the caller
    ///   keeps to that convention (docs/ADOPTING.md) while lava-flow holds it;
    /// - with `owned`, nothing else destroys it; without, it stays alive until the returned image drops.
    pub unsafe fn from_raw(
        memory: Arc<DeviceMemory>,
        image: vk::Image,
        description: TextureDescription,
        layout: vk::ImageLayout,
        owned: bool,
    ) -> Result<Image> {
        let ctx = memory.context().clone();
        let d = description;
        let what = format!(
            "describing a caller's {}x{}x{} {} image at offset {} of a {}-byte allocation",
            d.extent.width,
            d.extent.height,
            d.extent.depth,
            d.format,
            d.offset,
            memory.size()
        );
        d.validate().map_err(|e| Error::invalid(what.clone(), e.to_string(), "fix the extent, layers or pitch"))?;
        if image == vk::Image::null() {
            return Err(Error::invalid(what, "the handle is VK_NULL_HANDLE", "pass the image"));
        }
        if layout != vk::ImageLayout::UNDEFINED && layout != vk::ImageLayout::GENERAL {
            return Err(Error::invalid(
                what,
                format!("layout {layout:?}: lava-flow tracks shared images in UNDEFINED or GENERAL only"),
                "transition it to GENERAL and release it to VK_QUEUE_FAMILY_EXTERNAL first, or pass a fresh image as UNDEFINED",
            ));
        }
        if matches!(d.tiling, TextureTiling::DrmModifier { .. }) {
            return Err(Error::unsupported(
                what,
                "lava-flow creates and imports linear and optimal images only",
                "VK_EXT_image_drm_format_modifier",
                "use linear or optimal tiling",
            ));
        }
        let r = image_requirements(&ctx, image);
        if r.reqs.size > d.size
            || d.offset % r.reqs.alignment.max(1) != 0
            || d.offset.checked_add(d.size).is_none_or(|end| end > memory.size())
        {
            return Err(Error::invalid(
                what,
                format!(
                    "the image needs {} bytes aligned to {}, and the description says {} bytes \
                     (VUID-vkBindImageMemory-memoryOffset-01048, -size-01049)",
                    r.reqs.size, r.reqs.alignment, d.size
                ),
                "pass the offset it was bound at and its memory requirements' size",
            ));
        }
        if memory.dedicated() && d.offset != 0 {
            return Err(Error::invalid(
                what,
                "a dedicated allocation is bound to its image at offset 0 (VUID-vkBindImageMemory-memory-01509)",
                "pass offset 0",
            ));
        }
        if r.reqs.memory_type_bits & (1 << memory.memory_type_index()) == 0 {
            return Err(Error::invalid(
                what,
                format!(
                    "the image allows only memory types {:#b}, and the memory is of type {} (VUID-vkBindImageMemory-memory-01047)",
                    r.reqs.memory_type_bits,
                    memory.memory_type_index()
                ),
                "describe the memory the image is bound to",
            ));
        }
        if let TextureTiling::Linear { row_pitch, .. } = d.tiling {
            if let TextureTiling::Linear { row_pitch: here, .. } = linear_layout(&ctx, image, &d) {
                if here != row_pitch {
                    return Err(Error::invalid(
                        what,
                        format!(
                            "the driver lays the image out with row pitch {here}, the description says {row_pitch}"
                        ),
                        "take the pitches from vkGetImageSubresourceLayout",
                    ));
                }
            }
        }
        Ok(Image {
            ctx,
            image,
            memory,
            vk_format: vk_format(d.format),
            description: d,
            layout: Mutex::new(layout),
            owned,
        })
    }

    /// Exports the image: a fresh fd plus the full texture description.
    pub fn export_fd(&self) -> Result<ExportedTexture> {
        Ok(TextureHandle::new(self.memory.export_fd()?, self.description.clone()))
    }

    /// The texture description exports carry.
    pub fn description(&self) -> &TextureDescription {
        &self.description
    }

    /// The Vulkan handle.
    pub fn handle(&self) -> vk::Image {
        self.image
    }

    /// The Vulkan format.
    pub fn format(&self) -> vk::Format {
        self.vk_format
    }

    /// The memory it is bound to.
    pub fn memory(&self) -> &Arc<DeviceMemory> {
        &self.memory
    }

    /// The context.
    pub fn context(&self) -> &VulkanContext {
        &self.ctx
    }

    /// Bytes of all layers, tightly packed (what `upload` takes and `download` returns).
    pub fn packed_size(&self) -> u64 {
        let d = &self.description;
        u64::from(d.extent.width)
            * u64::from(d.extent.height)
            * u64::from(d.extent.depth)
            * u64::from(d.array_layers)
            * u64::from(d.format.texel_size())
    }

    fn region(&self) -> vk::BufferImageCopy {
        let d = &self.description;
        vk::BufferImageCopy {
            buffer_offset: 0,
            buffer_row_length: 0,
            buffer_image_height: 0,
            image_subresource: vk::ImageSubresourceLayers {
                aspect_mask: vk::ImageAspectFlags::COLOR,
                mip_level: 0,
                base_array_layer: 0,
                layer_count: d.array_layers,
            },
            image_offset: vk::Offset3D::default(),
            image_extent: vk::Extent3D { width: d.extent.width, height: d.extent.height, depth: d.extent.depth },
        }
    }

    fn barrier(
        &self,
        old: vk::ImageLayout,
        new: vk::ImageLayout,
        src_qf: u32,
        dst_qf: u32,
    ) -> vk::ImageMemoryBarrier<'static> {
        vk::ImageMemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::MEMORY_WRITE)
            .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE)
            .old_layout(old)
            .new_layout(new)
            .src_queue_family_index(src_qf)
            .dst_queue_family_index(dst_qf)
            .image(self.image)
            .subresource_range(vk::ImageSubresourceRange {
                aspect_mask: vk::ImageAspectFlags::COLOR,
                base_mip_level: 0,
                level_count: 1,
                base_array_layer: 0,
                layer_count: self.description.array_layers,
            })
    }

    /// Records: acquire (or first transition to GENERAL), `copy`, release to external.
    fn with_general_layout(&self, copy: impl FnOnce(&ash::Device, vk::CommandBuffer)) -> Result<()> {
        let mut layout = self.layout.lock().unwrap_or_else(|p| p.into_inner());
        let qf = self.ctx.queue_family_index();
        let first = if *layout == vk::ImageLayout::UNDEFINED {
            self.barrier(
                vk::ImageLayout::UNDEFINED,
                vk::ImageLayout::GENERAL,
                vk::QUEUE_FAMILY_IGNORED,
                vk::QUEUE_FAMILY_IGNORED,
            )
        } else {
            self.barrier(vk::ImageLayout::GENERAL, vk::ImageLayout::GENERAL, vk::QUEUE_FAMILY_EXTERNAL, qf)
        };
        let release = self.barrier(vk::ImageLayout::GENERAL, vk::ImageLayout::GENERAL, qf, vk::QUEUE_FAMILY_EXTERNAL);
        self.ctx.run_commands(|dev, cmd| {
            // SAFETY: cmd is recording (run_commands) and the barriers name this image, alive for the call;
            // the layout mutex is held, so `first`'s old layout is the image's current one.
            unsafe {
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TOP_OF_PIPE,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::DependencyFlags::empty(),
                    &[],
                    &[],
                    &[first],
                )
            };
            copy(dev, cmd);
            // SAFETY: cmd is still recording; the barrier names this live image, now in GENERAL.
            unsafe {
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                    vk::DependencyFlags::empty(),
                    &[],
                    &[],
                    &[release],
                )
            };
        })?;
        *layout = vk::ImageLayout::GENERAL;
        Ok(())
    }

    /// Uploads tightly packed texels (all layers, layer-major) through a staging buffer.
    pub fn upload(&self, data: &[u8]) -> Result<()> {
        let expected = self.packed_size();
        if data.len() as u64 != expected {
            return Err(Error::invalid(
                format!("an upload of {} bytes", data.len()),
                format!("the image holds {expected} tightly packed bytes"),
                "pass exactly width*height*depth*layers*texel size bytes",
            ));
        }
        let mut staging =
            Buffer::new(&self.ctx, &BufferOptions::new(expected).memory(MemoryKind::HostVisible).export(None))?;
        staging.write(0, data)?;
        let region = [self.region()];
        self.with_general_layout(|dev, cmd| {
            // SAFETY: cmd is recording; staging (TRANSFER_SRC, default usage) holds exactly packed_size
            // bytes for `region`, which covers the whole image; the image has TRANSFER_DST (vk_usage) and
            // is in GENERAL after the first barrier.
            unsafe {
                dev.cmd_copy_buffer_to_image(cmd, staging.handle(), self.image, vk::ImageLayout::GENERAL, &region)
            }
        })
    }

    /// Downloads all texels, tightly packed.
    pub fn download(&self) -> Result<Vec<u8>> {
        let size = self.packed_size();
        let staging = Buffer::new(&self.ctx, &BufferOptions::new(size).memory(MemoryKind::HostVisible).export(None))?;
        let region = [self.region()];
        self.with_general_layout(|dev, cmd| {
            // SAFETY: cmd is recording; staging (TRANSFER_DST, default usage) holds packed_size bytes, what
            // `region` writes; the image has TRANSFER_SRC (vk_usage) and is in GENERAL after the barrier.
            unsafe {
                dev.cmd_copy_image_to_buffer(cmd, self.image, vk::ImageLayout::GENERAL, staging.handle(), &region)
            }
        })?;
        staging.read(0, size)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: Drop has the image exclusively; lava-flow's own work on it finished before each call
            // returned (run_commands waits); the memory (Arc) is dropped after the image.
            unsafe { self.ctx.device().destroy_image(self.image, None) };
        }
    }
}
