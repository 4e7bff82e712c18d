//! The Vulkan side of the CUDA self-tests and benchmarks, in plain ash calls: exportable
//! buffers, images and semaphores, staging copies, and submissions that wait for and signal
//! semaphores without a host wait. The benchmarks' "raw" figures are measured on these calls.

use std::os::fd::{FromRawFd, OwnedFd};

use ash::vk;
use raw_gpu_handle::{
    BufferDescription, ExportedBuffer, ExportedSemaphore, ExportedTexture, Memory, MemoryDescription, MemoryHandleKind,
    MemoryProperties, Semaphore, SemaphoreDescription, SemaphoreHandleKind, SemaphoreKind, Texture, TextureDescription,
    TextureDimension, TextureFormat, TextureTiling, TextureUsage,
};

use crate::{Error, Result, VulkanContext};

/// The Vulkan format of a shareable texture format.
pub(crate) fn vk_format(format: TextureFormat) -> vk::Format {
    use TextureFormat::*;
    match format {
        R8Unorm => vk::Format::R8_UNORM,
        Rg8Unorm => vk::Format::R8G8_UNORM,
        Rgba8Unorm => vk::Format::R8G8B8A8_UNORM,
        Rgba8Uint => vk::Format::R8G8B8A8_UINT,
        R16Float => vk::Format::R16_SFLOAT,
        Rgba16Float => vk::Format::R16G16B16A16_SFLOAT,
        R32Uint => vk::Format::R32_UINT,
        R32Float => vk::Format::R32_SFLOAT,
        Rg32Float => vk::Format::R32G32_SFLOAT,
        Rgba32Float => vk::Format::R32G32B32A32_SFLOAT,
        Rgba32Uint => vk::Format::R32G32B32A32_UINT,
        #[allow(unreachable_patterns)]
        _ => vk::Format::UNDEFINED,
    }
}

const OPAQUE_FD: vk::ExternalMemoryHandleTypeFlags = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;

/// A Vulkan allocation with its memory type, freed on drop.
pub(crate) struct VkMemory {
    ctx: VulkanContext,
    pub(crate) memory: vk::DeviceMemory,
    pub(crate) size: u64,
    pub(crate) type_index: u32,
    pub(crate) properties: vk::MemoryPropertyFlags,
    pub(crate) dedicated: bool,
    pub(crate) exportable: bool,
}

impl Drop for VkMemory {
    fn drop(&mut self) {
        // SAFETY: the resources bound to it are destroyed first (their owners drop before this).
        unsafe { self.ctx.device().free_memory(self.memory, None) };
    }
}

/// What an allocation is for.
#[derive(Clone, Copy)]
pub(crate) enum Dedicated {
    Buffer(vk::Buffer),
    Image(vk::Image),
}

impl VkMemory {
    fn allocate(
        ctx: &VulkanContext,
        req: vk::MemoryRequirements,
        required: vk::MemoryPropertyFlags,
        exportable: bool,
        dedicated: Option<Dedicated>,
    ) -> Result<VkMemory> {
        let type_index = ctx
            .find_memory_type(req.memory_type_bits, required, vk::MemoryPropertyFlags::empty())
            .ok_or_else(|| {
                Error::unsupported(
                    format!("{required:?} memory for a resource"),
                    format!("no memory type in {:#x} has those properties", req.memory_type_bits),
                    "vkGetPhysicalDeviceMemoryProperties",
                    "use another device (`lava-flow info`)",
                )
            })?;
        let mut export = vk::ExportMemoryAllocateInfo::default().handle_types(OPAQUE_FD);
        let mut dedicated_info = vk::MemoryDedicatedAllocateInfo::default();
        match dedicated {
            Some(Dedicated::Buffer(b)) => dedicated_info = dedicated_info.buffer(b),
            Some(Dedicated::Image(i)) => dedicated_info = dedicated_info.image(i),
            None => {}
        }
        let mut info = vk::MemoryAllocateInfo::default().allocation_size(req.size).memory_type_index(type_index);
        if exportable {
            info = info.push_next(&mut export);
        }
        if dedicated.is_some() {
            info = info.push_next(&mut dedicated_info);
        }
        // SAFETY: info and its chain live across the call.
        let memory = unsafe { ctx.device().allocate_memory(&info, None) }
            .map_err(|r| Error::vk("vkAllocateMemory", r, format!("allocating {} bytes", req.size)))?;
        Ok(VkMemory {
            ctx: ctx.clone(),
            memory,
            size: req.size,
            type_index,
            properties: ctx.memory_properties().memory_types[type_index as usize].property_flags,
            dedicated: dedicated.is_some(),
            exportable,
        })
    }

    /// A fresh opaque fd for the allocation (`vkGetMemoryFdKHR`).
    pub(crate) fn export_fd(&self) -> Result<OwnedFd> {
        let loader = self.ctx.external_memory_fd()?;
        let info = vk::MemoryGetFdInfoKHR::default().memory(self.memory).handle_type(OPAQUE_FD);
        // SAFETY: the memory was allocated exportable as opaque fd.
        let fd = unsafe { loader.get_memory_fd(&info) }
            .map_err(|r| Error::vk("vkGetMemoryFdKHR", r, "exporting memory as an opaque fd"))?;
        // SAFETY: vkGetMemoryFdKHR returns a new fd that the caller owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub(crate) fn description(&self) -> MemoryDescription {
        MemoryDescription {
            handle_kind: MemoryHandleKind::OpaqueFd,
            allocation_size: self.size,
            memory_type_index: self.type_index,
            memory_properties: MemoryProperties(self.properties.as_raw()),
            dedicated: self.dedicated,
            device: self.ctx.identity(),
            allocation_id: None,
        }
    }
}

/// A buffer with its own allocation.
pub(crate) struct VkBuffer {
    pub(crate) ctx: VulkanContext,
    pub(crate) buffer: vk::Buffer,
    pub(crate) size: u64,
    pub(crate) alignment: u64,
    // Dropped after the buffer (field order): memory is freed once nothing is bound to it.
    pub(crate) memory: VkMemory,
}

impl Drop for VkBuffer {
    fn drop(&mut self) {
        // SAFETY: no submitted work uses the buffer (every submission here is waited for).
        unsafe { self.ctx.device().destroy_buffer(self.buffer, None) };
    }
}

/// Whether an exportable allocation is dedicated: when the driver requires or prefers it, or
/// always when asked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum DedicatedChoice {
    Auto,
    Always,
}

impl VkBuffer {
    /// A buffer usable for storage and transfers, in memory with `required` properties,
    /// exportable as an opaque fd when `exportable`.
    pub(crate) fn new(
        ctx: &VulkanContext,
        size: u64,
        required: vk::MemoryPropertyFlags,
        exportable: bool,
        dedicated: DedicatedChoice,
    ) -> Result<VkBuffer> {
        let device = ctx.device();
        let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(OPAQUE_FD);
        let mut info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(
                vk::BufferUsageFlags::STORAGE_BUFFER
                    | vk::BufferUsageFlags::TRANSFER_SRC
                    | vk::BufferUsageFlags::TRANSFER_DST,
            )
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        if exportable {
            info = info.push_next(&mut external);
        }
        // SAFETY: info and its chain live across the call.
        let buffer = unsafe { device.create_buffer(&info, None) }
            .map_err(|r| Error::vk("vkCreateBuffer", r, format!("creating a {size}-byte buffer")))?;
        let result = (|| {
            let mut dedicated_req = vk::MemoryDedicatedRequirements::default();
            let mut req2 = vk::MemoryRequirements2::default().push_next(&mut dedicated_req);
            let info = vk::BufferMemoryRequirementsInfo2::default().buffer(buffer);
            // SAFETY: buffer is valid; req2's chain lives across the call.
            unsafe { device.get_buffer_memory_requirements2(&info, &mut req2) };
            let req = req2.memory_requirements;
            let wants_dedicated = dedicated_req.requires_dedicated_allocation == vk::TRUE
                || dedicated_req.prefers_dedicated_allocation == vk::TRUE
                || dedicated == DedicatedChoice::Always;
            let memory = VkMemory::allocate(
                ctx,
                req,
                required,
                exportable,
                (exportable && wants_dedicated).then_some(Dedicated::Buffer(buffer)),
            )?;
            // SAFETY: memory is fresh and large enough (its size is the requirement's).
            unsafe { device.bind_buffer_memory(buffer, memory.memory, 0) }
                .map_err(|r| Error::vk("vkBindBufferMemory", r, "binding buffer memory"))?;
            Ok((memory, req.alignment))
        })();
        match result {
            Ok((memory, alignment)) => Ok(VkBuffer { ctx: ctx.clone(), buffer, size, alignment, memory }),
            Err(e) => {
                // SAFETY: nothing uses the buffer yet.
                unsafe { device.destroy_buffer(buffer, None) };
                Err(e)
            }
        }
    }

    /// A device-local exportable buffer.
    pub(crate) fn exportable(ctx: &VulkanContext, size: u64, dedicated: DedicatedChoice) -> Result<VkBuffer> {
        Self::new(ctx, size, vk::MemoryPropertyFlags::DEVICE_LOCAL, true, dedicated)
    }

    /// A host-visible, coherent staging buffer.
    pub(crate) fn staging(ctx: &VulkanContext, size: u64) -> Result<VkBuffer> {
        Self::new(
            ctx,
            size,
            vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
            false,
            DedicatedChoice::Auto,
        )
    }

    /// A fresh fd plus the description an importer needs.
    pub(crate) fn export(&self) -> Result<ExportedBuffer> {
        Ok(ExportedBuffer {
            memory: Memory { handle: self.memory.export_fd()?, description: self.memory.description() },
            buffer: BufferDescription { offset: 0, size: self.size, alignment: self.alignment },
        })
    }

    /// Runs `f` on the mapped bytes of a host-visible buffer.
    pub(crate) fn with_mapped<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Result<R> {
        let device = self.ctx.device();
        // SAFETY: the memory is host-visible, not mapped elsewhere, and size is inside it.
        let ptr = unsafe { device.map_memory(self.memory.memory, 0, self.size, vk::MemoryMapFlags::empty()) }
            .map_err(|r| Error::vk("vkMapMemory", r, "mapping a staging buffer"))?;
        // SAFETY: the mapping is size bytes long and exclusively ours until unmapped.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), self.size as usize) };
        let r = f(bytes);
        // SAFETY: mapped above.
        unsafe { device.unmap_memory(self.memory.memory) };
        Ok(r)
    }

    /// Writes `data` at offset 0 through a staging copy, then releases the buffer to
    /// `VK_QUEUE_FAMILY_EXTERNAL` so another API may read it.
    pub(crate) fn write_and_release(&self, data: &[u8]) -> Result<()> {
        let staging = VkBuffer::staging(&self.ctx, data.len() as u64)?;
        staging.with_mapped(|m| m.copy_from_slice(data))?;
        let family = self.ctx.queue_family_index();
        self.ctx.run_commands(|dev, cmd| {
            let region = [vk::BufferCopy::default().size(data.len() as u64)];
            // SAFETY: both buffers are valid and large enough; cmd is recording.
            unsafe { dev.cmd_copy_buffer(cmd, staging.buffer, self.buffer, &region) };
            let release = [vk::BufferMemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .src_queue_family_index(family)
                .dst_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
                .buffer(self.buffer)
                .size(vk::WHOLE_SIZE)];
            // SAFETY: as above.
            unsafe {
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                    vk::DependencyFlags::empty(),
                    &[],
                    &release,
                    &[],
                )
            };
        })
    }

    /// Acquires the buffer from `VK_QUEUE_FAMILY_EXTERNAL` (after another API wrote it) and
    /// reads `len` bytes at offset 0 through a staging copy.
    pub(crate) fn acquire_and_read(&self, len: u64) -> Result<Vec<u8>> {
        let staging = VkBuffer::staging(&self.ctx, len)?;
        let family = self.ctx.queue_family_index();
        self.ctx.run_commands(|dev, cmd| {
            let acquire = [vk::BufferMemoryBarrier::default()
                .dst_access_mask(vk::AccessFlags::TRANSFER_READ)
                .src_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
                .dst_queue_family_index(family)
                .buffer(self.buffer)
                .size(vk::WHOLE_SIZE)];
            // SAFETY: valid buffers; cmd is recording.
            unsafe {
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TOP_OF_PIPE,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::DependencyFlags::empty(),
                    &[],
                    &acquire,
                    &[],
                );
                dev.cmd_copy_buffer(cmd, self.buffer, staging.buffer, &[vk::BufferCopy::default().size(len)]);
            }
        })?;
        staging.with_mapped(|m| m.to_vec())
    }
}

/// An image with its own allocation, tracked as being in `GENERAL` layout and owned by
/// `VK_QUEUE_FAMILY_EXTERNAL` between operations.
pub(crate) struct VkImage {
    pub(crate) ctx: VulkanContext,
    pub(crate) image: vk::Image,
    pub(crate) description: TextureDescription,
    initialized: std::cell::Cell<bool>,
    pub(crate) memory: VkMemory,
}

impl Drop for VkImage {
    fn drop(&mut self) {
        // SAFETY: no submitted work uses the image (every submission here is waited for).
        unsafe { self.ctx.device().destroy_image(self.image, None) };
    }
}

fn image_extent(d: &TextureDescription) -> vk::Extent3D {
    vk::Extent3D { width: d.extent.width, height: d.extent.height, depth: d.extent.depth }
}

fn color_layers(d: &TextureDescription) -> vk::ImageSubresourceRange {
    vk::ImageSubresourceRange::default()
        .aspect_mask(vk::ImageAspectFlags::COLOR)
        .level_count(1)
        .layer_count(d.array_layers)
}

impl VkImage {
    /// A device-local, exportable image of one mip level.
    pub(crate) fn exportable(
        ctx: &VulkanContext,
        format: TextureFormat,
        dimension: TextureDimension,
        extent: (u32, u32, u32),
        array_layers: u32,
        linear: bool,
        usage: TextureUsage,
    ) -> Result<VkImage> {
        let device = ctx.device();
        let image_type = match dimension {
            TextureDimension::D1 | TextureDimension::D1Array => vk::ImageType::TYPE_1D,
            TextureDimension::D2 | TextureDimension::D2Array => vk::ImageType::TYPE_2D,
            TextureDimension::D3 => vk::ImageType::TYPE_3D,
        };
        let mut vk_usage = vk::ImageUsageFlags::TRANSFER_SRC | vk::ImageUsageFlags::TRANSFER_DST;
        if usage.sampled {
            vk_usage |= vk::ImageUsageFlags::SAMPLED;
        }
        if usage.storage {
            vk_usage |= vk::ImageUsageFlags::STORAGE;
        }
        if usage.color_attachment {
            vk_usage |= vk::ImageUsageFlags::COLOR_ATTACHMENT;
        }
        let tiling = if linear { vk::ImageTiling::LINEAR } else { vk::ImageTiling::OPTIMAL };
        let mut external = vk::ExternalMemoryImageCreateInfo::default().handle_types(OPAQUE_FD);
        let info = vk::ImageCreateInfo::default()
            .image_type(image_type)
            .format(vk_format(format))
            .extent(vk::Extent3D { width: extent.0, height: extent.1, depth: extent.2 })
            .mip_levels(1)
            .array_layers(array_layers)
            .samples(vk::SampleCountFlags::TYPE_1)
            .tiling(tiling)
            .usage(vk_usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .initial_layout(vk::ImageLayout::UNDEFINED)
            .push_next(&mut external);
        // SAFETY: info and its chain live across the call.
        let image = unsafe { device.create_image(&info, None) }
            .map_err(|r| Error::vk("vkCreateImage", r, format!("creating a {format} image")))?;
        let result = (|| {
            let mut dedicated_req = vk::MemoryDedicatedRequirements::default();
            let mut req2 = vk::MemoryRequirements2::default().push_next(&mut dedicated_req);
            let info = vk::ImageMemoryRequirementsInfo2::default().image(image);
            // SAFETY: image is valid; req2's chain lives across the call.
            unsafe { device.get_image_memory_requirements2(&info, &mut req2) };
            let req = req2.memory_requirements;
            let wants_dedicated = dedicated_req.requires_dedicated_allocation == vk::TRUE
                || dedicated_req.prefers_dedicated_allocation == vk::TRUE;
            let memory = VkMemory::allocate(
                ctx,
                req,
                vk::MemoryPropertyFlags::DEVICE_LOCAL,
                true,
                wants_dedicated.then_some(Dedicated::Image(image)),
            )?;
            // SAFETY: memory is fresh and as large as required.
            unsafe { device.bind_image_memory(image, memory.memory, 0) }
                .map_err(|r| Error::vk("vkBindImageMemory", r, "binding image memory"))?;
            let tiling = if linear {
                let sub = vk::ImageSubresource::default().aspect_mask(vk::ImageAspectFlags::COLOR);
                // SAFETY: a linear image's layout may be queried for mip 0, layer 0.
                let layout = unsafe { device.get_image_subresource_layout(image, sub) };
                if layout.offset != 0 {
                    return Err(Error::unsupported(
                        "a linear image whose first texel is not at its memory offset",
                        format!("the driver placed it at offset {}", layout.offset),
                        "vkGetImageSubresourceLayout",
                        "use optimal tiling",
                    ));
                }
                TextureTiling::Linear {
                    row_pitch: layout.row_pitch,
                    array_pitch: layout.array_pitch,
                    depth_pitch: layout.depth_pitch,
                }
            } else {
                TextureTiling::Optimal
            };
            let description = TextureDescription {
                format,
                dimension,
                extent: raw_gpu_handle::Extent3d { width: extent.0, height: extent.1, depth: extent.2 },
                array_layers,
                tiling,
                usage: TextureUsage { transfer: true, ..usage },
                offset: 0,
                size: req.size,
            };
            Ok((memory, description))
        })();
        match result {
            Ok((memory, description)) => {
                Ok(VkImage { ctx: ctx.clone(), image, description, initialized: std::cell::Cell::new(false), memory })
            }
            Err(e) => {
                // SAFETY: nothing uses the image yet.
                unsafe { device.destroy_image(image, None) };
                Err(e)
            }
        }
    }

    /// A fresh fd plus the description an importer needs.
    pub(crate) fn export(&self) -> Result<ExportedTexture> {
        Ok(Texture {
            memory: Memory { handle: self.memory.export_fd()?, description: self.memory.description() },
            texture: self.description.clone(),
        })
    }

    /// Bytes of tightly packed texels of all layers.
    pub(crate) fn packed_size(&self) -> u64 {
        let d = &self.description;
        u64::from(d.extent.width)
            * u64::from(d.extent.height)
            * u64::from(d.extent.depth)
            * u64::from(d.array_layers)
            * u64::from(d.format.texel_size())
    }

    fn copy_region(&self) -> vk::BufferImageCopy {
        vk::BufferImageCopy::default()
            .image_subresource(
                vk::ImageSubresourceLayers::default()
                    .aspect_mask(vk::ImageAspectFlags::COLOR)
                    .layer_count(self.description.array_layers),
            )
            .image_extent(image_extent(&self.description))
    }

    /// The barrier that takes the image from the external owner (or from `UNDEFINED` the first
    /// time) into `layout` on this queue.
    fn acquire_barrier(&self, layout: vk::ImageLayout, access: vk::AccessFlags) -> vk::ImageMemoryBarrier<'static> {
        let family = self.ctx.queue_family_index();
        let first = !self.initialized.get();
        vk::ImageMemoryBarrier::default()
            .old_layout(if first { vk::ImageLayout::UNDEFINED } else { vk::ImageLayout::GENERAL })
            .new_layout(layout)
            .dst_access_mask(access)
            .src_queue_family_index(if first { vk::QUEUE_FAMILY_IGNORED } else { vk::QUEUE_FAMILY_EXTERNAL })
            .dst_queue_family_index(if first { vk::QUEUE_FAMILY_IGNORED } else { family })
            .image(self.image)
            .subresource_range(color_layers(&self.description))
    }

    /// The barrier that hands the image to another API in `GENERAL` layout.
    fn release_barrier(&self, layout: vk::ImageLayout, access: vk::AccessFlags) -> vk::ImageMemoryBarrier<'static> {
        vk::ImageMemoryBarrier::default()
            .old_layout(layout)
            .new_layout(vk::ImageLayout::GENERAL)
            .src_access_mask(access)
            .src_queue_family_index(self.ctx.queue_family_index())
            .dst_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
            .image(self.image)
            .subresource_range(color_layers(&self.description))
    }

    /// Uploads tightly packed texels of all layers, then releases the image to another API in
    /// `GENERAL` layout.
    pub(crate) fn upload_and_release(&self, data: &[u8]) -> Result<()> {
        if data.len() as u64 != self.packed_size() {
            return Err(Error::invalid(
                format!("image upload of {} bytes", data.len()),
                format!("the image holds {} tightly packed bytes", self.packed_size()),
                "pass every texel of every layer",
            ));
        }
        let staging = VkBuffer::staging(&self.ctx, data.len() as u64)?;
        staging.with_mapped(|m| m.copy_from_slice(data))?;
        let acquire = [self.acquire_barrier(vk::ImageLayout::TRANSFER_DST_OPTIMAL, vk::AccessFlags::TRANSFER_WRITE)];
        let release = [self.release_barrier(vk::ImageLayout::TRANSFER_DST_OPTIMAL, vk::AccessFlags::TRANSFER_WRITE)];
        let region = [self.copy_region()];
        self.ctx.run_commands(|dev, cmd| {
            // SAFETY: valid image and buffer, barriers over the whole image; cmd is recording.
            unsafe {
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TOP_OF_PIPE,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::DependencyFlags::empty(),
                    &[],
                    &[],
                    &acquire,
                );
                dev.cmd_copy_buffer_to_image(
                    cmd,
                    staging.buffer,
                    self.image,
                    vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                    &region,
                );
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                    vk::DependencyFlags::empty(),
                    &[],
                    &[],
                    &release,
                );
            }
        })?;
        self.initialized.set(true);
        Ok(())
    }

    /// Makes the image usable by another API before anything was written to it from Vulkan
    /// (transition from `UNDEFINED` to `GENERAL`, released to the external owner).
    pub(crate) fn initialize_and_release(&self) -> Result<()> {
        if self.initialized.get() {
            return Ok(());
        }
        let to_general = [vk::ImageMemoryBarrier::default()
            .old_layout(vk::ImageLayout::UNDEFINED)
            .new_layout(vk::ImageLayout::GENERAL)
            .src_queue_family_index(self.ctx.queue_family_index())
            .dst_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
            .image(self.image)
            .subresource_range(color_layers(&self.description))];
        self.ctx.run_commands(|dev, cmd| {
            // SAFETY: valid image; cmd is recording.
            unsafe {
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TOP_OF_PIPE,
                    vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                    vk::DependencyFlags::empty(),
                    &[],
                    &[],
                    &to_general,
                )
            };
        })?;
        self.initialized.set(true);
        Ok(())
    }

    /// Acquires the image from another API and downloads tightly packed texels of all layers,
    /// then releases it again.
    pub(crate) fn acquire_and_download(&self) -> Result<Vec<u8>> {
        let staging = VkBuffer::staging(&self.ctx, self.packed_size())?;
        let acquire = [self.acquire_barrier(vk::ImageLayout::TRANSFER_SRC_OPTIMAL, vk::AccessFlags::TRANSFER_READ)];
        let release = [self.release_barrier(vk::ImageLayout::TRANSFER_SRC_OPTIMAL, vk::AccessFlags::empty())];
        let region = [self.copy_region()];
        self.ctx.run_commands(|dev, cmd| {
            // SAFETY: valid image and buffer; cmd is recording.
            unsafe {
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TOP_OF_PIPE,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::DependencyFlags::empty(),
                    &[],
                    &[],
                    &acquire,
                );
                dev.cmd_copy_image_to_buffer(
                    cmd,
                    self.image,
                    vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                    staging.buffer,
                    &region,
                );
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                    vk::DependencyFlags::empty(),
                    &[],
                    &[],
                    &release,
                );
            }
        })?;
        self.initialized.set(true);
        staging.with_mapped(|m| m.to_vec())
    }
}

/// An exportable semaphore (binary or timeline).
pub(crate) struct VkSemaphore {
    pub(crate) ctx: VulkanContext,
    pub(crate) semaphore: vk::Semaphore,
    pub(crate) kind: SemaphoreKind,
}

impl Drop for VkSemaphore {
    fn drop(&mut self) {
        // SAFETY: no pending submission uses the semaphore (callers wait for their work).
        unsafe { self.ctx.device().destroy_semaphore(self.semaphore, None) };
    }
}

impl VkSemaphore {
    /// A semaphore exportable as an opaque fd.
    pub(crate) fn exportable(ctx: &VulkanContext, kind: SemaphoreKind) -> Result<VkSemaphore> {
        ctx.external_semaphore_fd()?;
        if kind == SemaphoreKind::Timeline && !ctx.extensions().timeline_semaphore {
            return Err(Error::unsupported(
                format!("timeline semaphores on {}", ctx.info().name),
                "the device lacks the timelineSemaphore feature",
                "VkPhysicalDeviceTimelineSemaphoreFeatures",
                "use a Vulkan 1.2 driver",
            ));
        }
        let mut export =
            vk::ExportSemaphoreCreateInfo::default().handle_types(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
        let mut type_info =
            vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE).initial_value(0);
        let mut info = vk::SemaphoreCreateInfo::default().push_next(&mut export);
        if kind == SemaphoreKind::Timeline {
            info = info.push_next(&mut type_info);
        }
        // SAFETY: info and its chain live across the call.
        let semaphore = unsafe { ctx.device().create_semaphore(&info, None) }
            .map_err(|r| Error::vk("vkCreateSemaphore", r, "creating an exportable semaphore"))?;
        Ok(VkSemaphore { ctx: ctx.clone(), semaphore, kind })
    }

    /// A fresh opaque fd for the semaphore.
    pub(crate) fn export(&self) -> Result<ExportedSemaphore> {
        let loader = self.ctx.external_semaphore_fd()?;
        let info = vk::SemaphoreGetFdInfoKHR::default()
            .semaphore(self.semaphore)
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
        // SAFETY: the semaphore was created exportable as an opaque fd.
        let fd = unsafe { loader.get_semaphore_fd(&info) }
            .map_err(|r| Error::vk("vkGetSemaphoreFdKHR", r, "exporting a semaphore"))?;
        Ok(Semaphore {
            // SAFETY: vkGetSemaphoreFdKHR returns a new fd that the caller owns.
            handle: unsafe { OwnedFd::from_raw_fd(fd) },
            description: SemaphoreDescription {
                kind: self.kind,
                handle_kind: SemaphoreHandleKind::OpaqueFd,
                device: self.ctx.identity(),
            },
        })
    }

    /// Sets a timeline semaphore's value from the host.
    pub(crate) fn host_signal(&self, value: u64) -> Result<()> {
        let info = vk::SemaphoreSignalInfo::default().semaphore(self.semaphore).value(value);
        // SAFETY: a timeline semaphore of this device.
        unsafe { self.ctx.device().signal_semaphore(&info) }
            .map_err(|r| Error::vk("vkSignalSemaphore", r, format!("signalling a timeline semaphore to {value}")))
    }

    /// Waits on the host until a timeline semaphore reaches `value`.
    pub(crate) fn host_wait(&self, value: u64, timeout: std::time::Duration) -> Result<()> {
        let sems = [self.semaphore];
        let values = [value];
        let info = vk::SemaphoreWaitInfo::default().semaphores(&sems).values(&values);
        // SAFETY: a timeline semaphore of this device; the arrays live across the call.
        match unsafe { self.ctx.device().wait_semaphores(&info, timeout.as_nanos().min(u64::MAX as u128) as u64) } {
            Ok(()) => Ok(()),
            Err(vk::Result::TIMEOUT) => {
                Err(Error::Timeout { action: format!("waiting for a timeline semaphore to reach {value}"), timeout })
            }
            Err(r) => {
                Err(Error::vk("vkWaitSemaphores", r, format!("waiting for a timeline semaphore to reach {value}")))
            }
        }
    }

    /// The current value of a timeline semaphore.
    pub(crate) fn value(&self) -> Result<u64> {
        // SAFETY: a timeline semaphore of this device.
        unsafe { self.ctx.device().get_semaphore_counter_value(self.semaphore) }
            .map_err(|r| Error::vk("vkGetSemaphoreCounterValue", r, "reading a timeline semaphore"))
    }
}

/// Submits work that waits for and signals semaphores, without waiting on the host.
pub(crate) struct Submitter {
    ctx: VulkanContext,
    pool: vk::CommandPool,
}

impl Drop for Submitter {
    fn drop(&mut self) {
        // SAFETY: wait for the queue so no command buffer of the pool is pending, then destroy it.
        unsafe {
            let _ = self.ctx.with_queue(|q| self.ctx.device().queue_wait_idle(q));
            self.ctx.device().destroy_command_pool(self.pool, None);
        }
    }
}

/// A semaphore operation in a submission: the semaphore and, for timelines, the value.
pub(crate) type SemOp<'a> = (&'a VkSemaphore, u64);

impl Submitter {
    pub(crate) fn new(ctx: &VulkanContext) -> Result<Submitter> {
        let info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(ctx.queue_family_index())
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: valid device.
        let pool = unsafe { ctx.device().create_command_pool(&info, None) }
            .map_err(|r| Error::vk("vkCreateCommandPool", r, "creating a command pool"))?;
        Ok(Submitter { ctx: ctx.clone(), pool })
    }

    /// Records a primary command buffer once, for repeated submission.
    pub(crate) fn record(&self, record: impl FnOnce(&ash::Device, vk::CommandBuffer)) -> Result<vk::CommandBuffer> {
        let device = self.ctx.device();
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool is ours and used from one thread.
        let cmd = unsafe { device.allocate_command_buffers(&alloc) }
            .map_err(|r| Error::vk("vkAllocateCommandBuffers", r, "allocating a command buffer"))?[0];
        // SAFETY: cmd is fresh.
        unsafe { device.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default()) }
            .map_err(|r| Error::vk("vkBeginCommandBuffer", r, "recording commands"))?;
        record(device, cmd);
        // SAFETY: cmd is recording.
        unsafe { device.end_command_buffer(cmd) }
            .map_err(|r| Error::vk("vkEndCommandBuffer", r, "recording commands"))?;
        Ok(cmd)
    }

    /// Submits `cmds` waiting for `waits` and signalling `signals`, with `fence` (may be null).
    pub(crate) fn submit(
        &self,
        cmds: &[vk::CommandBuffer],
        waits: &[SemOp<'_>],
        signals: &[SemOp<'_>],
        fence: vk::Fence,
    ) -> Result<()> {
        let wait_sems: Vec<vk::Semaphore> = waits.iter().map(|(s, _)| s.semaphore).collect();
        let wait_values: Vec<u64> = waits.iter().map(|(_, v)| *v).collect();
        let stages = vec![vk::PipelineStageFlags::ALL_COMMANDS; waits.len()];
        let signal_sems: Vec<vk::Semaphore> = signals.iter().map(|(s, _)| s.semaphore).collect();
        let signal_values: Vec<u64> = signals.iter().map(|(_, v)| *v).collect();
        let mut timeline = vk::TimelineSemaphoreSubmitInfo::default()
            .wait_semaphore_values(&wait_values)
            .signal_semaphore_values(&signal_values);
        let mut submit = vk::SubmitInfo::default()
            .command_buffers(cmds)
            .wait_semaphores(&wait_sems)
            .wait_dst_stage_mask(&stages)
            .signal_semaphores(&signal_sems);
        if waits.iter().chain(signals).any(|(s, _)| s.kind == SemaphoreKind::Timeline) {
            submit = submit.push_next(&mut timeline);
        }
        let device = self.ctx.device();
        self.ctx
            .with_queue(|q| {
                // SAFETY: the arrays live across the call; the command buffers are executable.
                unsafe { device.queue_submit(q, &[submit], fence) }
            })
            .map_err(|r| Error::vk("vkQueueSubmit", r, "submitting work with semaphores"))
    }

    /// Waits until the queue is idle.
    pub(crate) fn wait_idle(&self) -> Result<()> {
        self.ctx
            .with_queue(|q| {
                // SAFETY: the queue is locked.
                unsafe { self.ctx.device().queue_wait_idle(q) }
            })
            .map_err(|r| Error::vk("vkQueueWaitIdle", r, "waiting for the queue"))
    }
}

/// A fence for waiting on one submission.
pub(crate) struct VkFence {
    ctx: VulkanContext,
    pub(crate) fence: vk::Fence,
}

impl Drop for VkFence {
    fn drop(&mut self) {
        // SAFETY: callers wait for the fence before dropping it.
        unsafe { self.ctx.device().destroy_fence(self.fence, None) };
    }
}

impl VkFence {
    pub(crate) fn new(ctx: &VulkanContext) -> Result<VkFence> {
        // SAFETY: valid device.
        let fence = unsafe { ctx.device().create_fence(&vk::FenceCreateInfo::default(), None) }
            .map_err(|r| Error::vk("vkCreateFence", r, "creating a fence"))?;
        Ok(VkFence { ctx: ctx.clone(), fence })
    }

    /// Waits for the fence, then resets it.
    pub(crate) fn wait_and_reset(&self, timeout: std::time::Duration) -> Result<()> {
        let device = self.ctx.device();
        // SAFETY: the fence is of this device.
        match unsafe { device.wait_for_fences(&[self.fence], true, timeout.as_nanos() as u64) } {
            Ok(()) => {}
            Err(vk::Result::TIMEOUT) => {
                return Err(Error::Timeout { action: "waiting for a Vulkan submission".into(), timeout })
            }
            Err(r) => return Err(Error::vk("vkWaitForFences", r, "waiting for a Vulkan submission")),
        }
        // SAFETY: signalled and no longer in use.
        unsafe { device.reset_fences(&[self.fence]) }.map_err(|r| Error::vk("vkResetFences", r, "resetting a fence"))
    }
}

#[cfg(test)]
mod tests {
    //! These run on lavapipe here: they check the Vulkan half the CUDA paths rely on.
    use super::*;
    use crate::testing;
    use std::os::fd::AsRawFd;

    fn ctx() -> Option<VulkanContext> {
        testing::prefer_software_vulkan_if_no_gpu();
        testing::or_skip("vulkan", VulkanContext::new())
    }

    #[test]
    fn exported_buffer_describes_its_allocation_and_round_trips_data() {
        let Some(ctx) = ctx() else { return };
        if ctx.extensions().external_memory_fd {
            let buffer = VkBuffer::exportable(&ctx, 1 << 16, DedicatedChoice::Auto).unwrap();
            let data: Vec<u8> = (0..1 << 16).map(|i| (i * 7 % 251) as u8).collect();
            buffer.write_and_release(&data).unwrap();
            assert_eq!(buffer.acquire_and_read(data.len() as u64).unwrap(), data);
            let exported = buffer.export().unwrap();
            assert!(exported.memory.handle.as_raw_fd() >= 0);
            let d = exported.memory.description;
            assert!(d.allocation_size >= 1 << 16, "{d:?}");
            assert_eq!(d.device, ctx.identity());
            assert_eq!(exported.buffer.size, 1 << 16);
            let forced = VkBuffer::exportable(&ctx, 4096, DedicatedChoice::Always).unwrap();
            assert!(forced.export().unwrap().memory.description.dedicated);
        } else {
            testing::skip("vulkan", "no VK_KHR_external_memory_fd");
        }
    }

    #[test]
    fn exported_images_round_trip_texels_optimal_and_linear() {
        let Some(ctx) = ctx() else { return };
        if !ctx.extensions().external_memory_fd {
            testing::skip("vulkan", "no VK_KHR_external_memory_fd");
            return;
        }
        for linear in [false, true] {
            let usage = TextureUsage { sampled: true, storage: false, color_attachment: !linear, transfer: true };
            let (dim, extent, layers) =
                if linear { (TextureDimension::D2, (32, 8, 1), 1) } else { (TextureDimension::D2Array, (16, 8, 1), 3) };
            let image =
                VkImage::exportable(&ctx, TextureFormat::Rgba8Unorm, dim, extent, layers, linear, usage).unwrap();
            let data: Vec<u8> = (0..image.packed_size()).map(|i| (i % 253) as u8).collect();
            image.upload_and_release(&data).unwrap();
            assert_eq!(image.acquire_and_download().unwrap(), data, "linear={linear}");
            let exported = image.export().unwrap();
            assert_eq!(exported.texture.validate(), Ok(()));
            assert_eq!(matches!(exported.texture.tiling, TextureTiling::Linear { .. }), linear);
        }
    }
}
