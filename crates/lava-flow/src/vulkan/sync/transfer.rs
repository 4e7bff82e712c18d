//! Queue family ownership transfers to and from `VK_QUEUE_FAMILY_EXTERNAL`, with image layouts.
//!
//! A buffer or image made with `VK_SHARING_MODE_EXCLUSIVE` belongs to one queue family. Before
//! another API, device or process uses it, the owner records a *release* barrier (its queue
//! family to `VK_QUEUE_FAMILY_EXTERNAL`) and signals a semaphore; when it comes back, an
//! *acquire* barrier (external to its queue family) runs after the wait. Without them the
//! contents are undefined by the spec, even where a driver happens to keep them (most published
//! interop samples skip this; it then breaks on drivers that compress images).
//!
//! Layouts: the transition happens once, between release and acquire; the release's and the
//! acquire's `oldLayout`/`newLayout` must be the same pair. Between two Vulkan devices both sides
//! record the same pair. With OpenGL (GL_EXT_semaphore) the pair's far side is what GL is told:
//! the release's `newLayout` goes to `glWaitSemaphoreEXT` as the texture's source layout
//! ([`gl_layout`]), and the layout GL passes to `glSignalSemaphoreEXT` is the acquire's
//! `oldLayout`. CUDA and OpenCL take no layouts: release to `GENERAL` for them.

use ash::vk;

use crate::vulkan::{Buffer, Image};
use crate::{Error, Result};

/// A pipeline stage and the memory accesses made in it: what happened before a release, or what
/// comes after an acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageAccess {
    /// The pipeline stage(s).
    pub stage: vk::PipelineStageFlags,
    /// The accesses in those stages.
    pub access: vk::AccessFlags,
}

impl StageAccess {
    /// Transfer writes (`vkCmdCopy*`, `vkCmdFillBuffer`, clears).
    pub const TRANSFER_WRITE: StageAccess =
        StageAccess { stage: vk::PipelineStageFlags::TRANSFER, access: vk::AccessFlags::TRANSFER_WRITE };
    /// Transfer reads (the source of a copy).
    pub const TRANSFER_READ: StageAccess =
        StageAccess { stage: vk::PipelineStageFlags::TRANSFER, access: vk::AccessFlags::TRANSFER_READ };
    /// Compute shader reads and writes.
    pub const COMPUTE_READ_WRITE: StageAccess = StageAccess {
        stage: vk::PipelineStageFlags::COMPUTE_SHADER,
        access: vk::AccessFlags::from_raw(
            vk::AccessFlags::SHADER_READ.as_raw() | vk::AccessFlags::SHADER_WRITE.as_raw(),
        ),
    };
    /// Anything: every stage, every read and write. Correct everywhere, slower than needed.
    pub const ANY: StageAccess = StageAccess {
        stage: vk::PipelineStageFlags::ALL_COMMANDS,
        access: vk::AccessFlags::from_raw(
            vk::AccessFlags::MEMORY_READ.as_raw() | vk::AccessFlags::MEMORY_WRITE.as_raw(),
        ),
    };

    /// A stage and its accesses.
    pub const fn new(stage: vk::PipelineStageFlags, access: vk::AccessFlags) -> StageAccess {
        StageAccess { stage, access }
    }
}

/// Release and acquire barriers for buffers and images crossing to or from
/// `VK_QUEUE_FAMILY_EXTERNAL`, recorded with one `vkCmdPipelineBarrier`.
///
/// ```no_run
/// # use ash::vk;
/// # use lava_flow::vulkan::sync::{OwnershipTransfer, StageAccess};
/// # fn f(ctx: &lava_flow::VulkanContext, buffer: vk::Buffer, image: vk::Image) -> lava_flow::Result<()> {
/// let family = ctx.queue_family_index();
/// let release = OwnershipTransfer::new()
///     .release_buffer(family, buffer, 0, vk::WHOLE_SIZE, StageAccess::TRANSFER_WRITE)
///     .release_image(
///         family,
///         image,
///         OwnershipTransfer::color_range(),
///         vk::ImageLayout::TRANSFER_DST_OPTIMAL,
///         vk::ImageLayout::GENERAL,
///         StageAccess::TRANSFER_WRITE,
///     );
/// release.validate()?;
/// ctx.run_commands(|device, cmd| {
///     // SAFETY: buffer and image are live objects of ctx's device; cmd is recording on its queue family.
///     unsafe { release.record(device, cmd) }
/// })?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct OwnershipTransfer {
    src_stage: vk::PipelineStageFlags,
    dst_stage: vk::PipelineStageFlags,
    buffers: Vec<vk::BufferMemoryBarrier<'static>>,
    images: Vec<vk::ImageMemoryBarrier<'static>>,
}

impl OwnershipTransfer {
    /// No barriers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mip level 0, array layer 0 of a color image: what lava-flow exports.
    pub fn color_range() -> vk::ImageSubresourceRange {
        vk::ImageSubresourceRange::default()
            .aspect_mask(vk::ImageAspectFlags::COLOR)
            .base_mip_level(0)
            .level_count(1)
            .base_array_layer(0)
            .layer_count(vk::REMAINING_ARRAY_LAYERS)
    }

    /// Releases `buffer[offset .. offset + size]` (`size` may be `vk::WHOLE_SIZE`) from
    /// `queue_family` to `VK_QUEUE_FAMILY_EXTERNAL`, making `last_use`'s writes available.
    pub fn release_buffer(
        mut self,
        queue_family: u32,
        buffer: vk::Buffer,
        offset: u64,
        size: u64,
        last_use: StageAccess,
    ) -> Self {
        self.src_stage |= last_use.stage;
        self.dst_stage |= vk::PipelineStageFlags::BOTTOM_OF_PIPE;
        self.buffers.push(
            vk::BufferMemoryBarrier::default()
                .src_access_mask(last_use.access)
                .dst_access_mask(vk::AccessFlags::empty())
                .src_queue_family_index(queue_family)
                .dst_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
                .buffer(buffer)
                .offset(offset)
                .size(size),
        );
        self
    }

    /// Acquires `buffer[offset .. offset + size]` from `VK_QUEUE_FAMILY_EXTERNAL` into
    /// `queue_family`, before `next_use`. Record it after waiting on the semaphore the other
    /// side signalled.
    pub fn acquire_buffer(
        mut self,
        queue_family: u32,
        buffer: vk::Buffer,
        offset: u64,
        size: u64,
        next_use: StageAccess,
    ) -> Self {
        self.src_stage |= vk::PipelineStageFlags::TOP_OF_PIPE;
        self.dst_stage |= next_use.stage;
        self.buffers.push(
            vk::BufferMemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::empty())
                .dst_access_mask(next_use.access)
                .src_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
                .dst_queue_family_index(queue_family)
                .buffer(buffer)
                .offset(offset)
                .size(size),
        );
        self
    }

    /// Releases `image`'s `range` from `queue_family` to `VK_QUEUE_FAMILY_EXTERNAL`,
    /// transitioning `old_layout` (its layout now) to `new_layout` (the layout the other side
    /// expects: `GENERAL` for CUDA and OpenCL, the layout given to `glWaitSemaphoreEXT` for GL,
    /// the acquire's pair for another Vulkan device).
    pub fn release_image(
        mut self,
        queue_family: u32,
        image: vk::Image,
        range: vk::ImageSubresourceRange,
        old_layout: vk::ImageLayout,
        new_layout: vk::ImageLayout,
        last_use: StageAccess,
    ) -> Self {
        self.src_stage |= last_use.stage;
        self.dst_stage |= vk::PipelineStageFlags::BOTTOM_OF_PIPE;
        self.images.push(
            vk::ImageMemoryBarrier::default()
                .src_access_mask(last_use.access)
                .dst_access_mask(vk::AccessFlags::empty())
                .old_layout(old_layout)
                .new_layout(new_layout)
                .src_queue_family_index(queue_family)
                .dst_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
                .image(image)
                .subresource_range(range),
        );
        self
    }

    /// Acquires `image`'s `range` from `VK_QUEUE_FAMILY_EXTERNAL` into `queue_family`,
    /// transitioning `old_layout` (the layout the other side left it in: the one it signalled
    /// with, or the release's `old_layout` between Vulkan devices) to `new_layout`, before
    /// `next_use`.
    pub fn acquire_image(
        mut self,
        queue_family: u32,
        image: vk::Image,
        range: vk::ImageSubresourceRange,
        old_layout: vk::ImageLayout,
        new_layout: vk::ImageLayout,
        next_use: StageAccess,
    ) -> Self {
        self.src_stage |= vk::PipelineStageFlags::TOP_OF_PIPE;
        self.dst_stage |= next_use.stage;
        self.images.push(
            vk::ImageMemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::empty())
                .dst_access_mask(next_use.access)
                .old_layout(old_layout)
                .new_layout(new_layout)
                .src_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
                .dst_queue_family_index(queue_family)
                .image(image)
                .subresource_range(range),
        );
        self
    }

    /// [`release_buffer`](Self::release_buffer) for all of a lava-flow [`Buffer`], from its
    /// context's queue family.
    pub fn release_whole_buffer(self, buffer: &Buffer, last_use: StageAccess) -> Self {
        let family = buffer.context().queue_family_index();
        self.release_buffer(family, buffer.handle(), 0, buffer.size(), last_use)
    }

    /// [`acquire_buffer`](Self::acquire_buffer) for all of a lava-flow [`Buffer`], into its
    /// context's queue family.
    pub fn acquire_whole_buffer(self, buffer: &Buffer, next_use: StageAccess) -> Self {
        let family = buffer.context().queue_family_index();
        self.acquire_buffer(family, buffer.handle(), 0, buffer.size(), next_use)
    }

    /// [`release_image`](Self::release_image) for every layer of a lava-flow [`Image`], from its
    /// context's queue family. lava-flow's own uploads and downloads leave images in `GENERAL`.
    pub fn release_whole_image(
        self,
        image: &Image,
        old_layout: vk::ImageLayout,
        new_layout: vk::ImageLayout,
        last_use: StageAccess,
    ) -> Self {
        let family = image.context().queue_family_index();
        self.release_image(family, image.handle(), Self::color_range(), old_layout, new_layout, last_use)
    }

    /// [`acquire_image`](Self::acquire_image) for every layer of a lava-flow [`Image`], into its
    /// context's queue family.
    pub fn acquire_whole_image(
        self,
        image: &Image,
        old_layout: vk::ImageLayout,
        new_layout: vk::ImageLayout,
        next_use: StageAccess,
    ) -> Self {
        let family = image.context().queue_family_index();
        self.acquire_image(family, image.handle(), Self::color_range(), old_layout, new_layout, next_use)
    }

    /// The buffer barriers, for your own `vkCmdPipelineBarrier`.
    pub fn buffer_barriers(&self) -> &[vk::BufferMemoryBarrier<'static>] {
        &self.buffers
    }

    /// The image barriers, for your own `vkCmdPipelineBarrier`.
    pub fn image_barriers(&self) -> &[vk::ImageMemoryBarrier<'static>] {
        &self.images
    }

    /// The source and destination stage masks the barriers need.
    pub fn stages(&self) -> (vk::PipelineStageFlags, vk::PipelineStageFlags) {
        (self.src_stage, self.dst_stage)
    }

    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty() && self.images.is_empty()
    }

    /// Checks the rules the Vulkan spec puts on these barriers that can be checked without the
    /// objects: a real queue family on our side, a layout to go to, an aspect, a non-empty range.
    pub fn validate(&self) -> Result<()> {
        let special = [vk::QUEUE_FAMILY_EXTERNAL, vk::QUEUE_FAMILY_IGNORED, vk::QUEUE_FAMILY_FOREIGN_EXT];
        let own_family = |src: u32, dst: u32| if src == vk::QUEUE_FAMILY_EXTERNAL { dst } else { src };
        for b in &self.buffers {
            if special.contains(&own_family(b.src_queue_family_index, b.dst_queue_family_index)) {
                return Err(bad_family());
            }
            if b.size == 0 {
                return Err(Error::invalid(
                    "buffer ownership transfer",
                    "the range is empty (VUID-VkBufferMemoryBarrier-size-01188)",
                    "pass the bytes to transfer, or vk::WHOLE_SIZE",
                ));
            }
        }
        for i in &self.images {
            if special.contains(&own_family(i.src_queue_family_index, i.dst_queue_family_index)) {
                return Err(bad_family());
            }
            if matches!(i.new_layout, vk::ImageLayout::UNDEFINED | vk::ImageLayout::PREINITIALIZED) {
                return Err(Error::invalid(
                    "image ownership transfer",
                    format!(
                        "new layout {:?} cannot be transitioned to (VUID-VkImageMemoryBarrier-newLayout-01198)",
                        i.new_layout
                    ),
                    "transition to GENERAL, or to the layout the other side uses",
                ));
            }
            let r = i.subresource_range;
            if r.aspect_mask.is_empty() || r.level_count == 0 || r.layer_count == 0 {
                return Err(Error::invalid(
                    "image ownership transfer",
                    "the subresource range has no aspect, level or layer",
                    "use OwnershipTransfer::color_range() for color images",
                ));
            }
        }
        Ok(())
    }

    /// Records the barriers with one `vkCmdPipelineBarrier` (nothing when empty). Call
    /// [`validate`](Self::validate) first.
    ///
    /// # Safety
    ///
    /// `cmd` must be a command buffer of `device` in the recording state, allocated from a pool
    /// of the queue family the barriers name; every buffer and image must be a live object of
    /// `device`, created with `VK_SHARING_MODE_EXCLUSIVE` and external memory; the stages and
    /// accesses must be ones that queue family supports; [`validate`](Self::validate) must accept
    /// the transfer (it accepts every one the `*_whole_buffer` builders make); for an acquire,
    /// the matching release must have happened on the other side before the semaphore this
    /// submission waits on was signalled.
    pub unsafe fn record(&self, device: &ash::Device, cmd: vk::CommandBuffer) {
        if self.is_empty() {
            return;
        }
        // SAFETY: this function's contract: cmd is recording on `device` for the barriers' queue
        // family, every handle is live, stages are supported and validate() accepts the barriers;
        // the barrier arrays belong to self, borrowed across the call.
        unsafe {
            device.cmd_pipeline_barrier(
                cmd,
                self.src_stage,
                self.dst_stage,
                vk::DependencyFlags::empty(),
                &[],
                &self.buffers,
                &self.images,
            )
        }
    }
}

fn bad_family() -> Error {
    Error::invalid(
        "queue family of an ownership transfer",
        "our side must be a real queue family index, not EXTERNAL, FOREIGN or IGNORED",
        "pass VulkanContext::queue_family_index()",
    )
}

/// The GL_EXT_semaphore layout enum (`GL_LAYOUT_*_EXT`) for a Vulkan image layout, to pass to
/// `glWaitSemaphoreEXT` / `glSignalSemaphoreEXT`; `UNDEFINED` is `GL_NONE`. `None` for layouts
/// GL has no name for.
pub fn gl_layout(layout: vk::ImageLayout) -> Option<u32> {
    Some(match layout {
        vk::ImageLayout::UNDEFINED => 0,
        vk::ImageLayout::GENERAL => 0x958D,
        vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL => 0x958E,
        vk::ImageLayout::DEPTH_STENCIL_ATTACHMENT_OPTIMAL => 0x958F,
        vk::ImageLayout::DEPTH_STENCIL_READ_ONLY_OPTIMAL => 0x9590,
        vk::ImageLayout::SHADER_READ_ONLY_OPTIMAL => 0x9591,
        vk::ImageLayout::TRANSFER_SRC_OPTIMAL => 0x9592,
        vk::ImageLayout::TRANSFER_DST_OPTIMAL => 0x9593,
        vk::ImageLayout::DEPTH_READ_ONLY_STENCIL_ATTACHMENT_OPTIMAL => 0x9530,
        vk::ImageLayout::DEPTH_ATTACHMENT_STENCIL_READ_ONLY_OPTIMAL => 0x9531,
        _ => return None,
    })
}

/// The Vulkan image layout for a GL_EXT_semaphore layout enum (the inverse of [`gl_layout`]).
pub fn vk_layout_from_gl(gl: u32) -> Option<vk::ImageLayout> {
    [
        vk::ImageLayout::UNDEFINED,
        vk::ImageLayout::GENERAL,
        vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL,
        vk::ImageLayout::DEPTH_STENCIL_ATTACHMENT_OPTIMAL,
        vk::ImageLayout::DEPTH_STENCIL_READ_ONLY_OPTIMAL,
        vk::ImageLayout::SHADER_READ_ONLY_OPTIMAL,
        vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
        vk::ImageLayout::TRANSFER_DST_OPTIMAL,
        vk::ImageLayout::DEPTH_READ_ONLY_STENCIL_ATTACHMENT_OPTIMAL,
        vk::ImageLayout::DEPTH_ATTACHMENT_STENCIL_READ_ONLY_OPTIMAL,
    ]
    .into_iter()
    .find(|l| gl_layout(*l) == Some(gl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gl_layouts_round_trip() {
        assert_eq!(gl_layout(vk::ImageLayout::GENERAL), Some(0x958D));
        assert_eq!(gl_layout(vk::ImageLayout::TRANSFER_DST_OPTIMAL), Some(0x9593));
        assert_eq!(gl_layout(vk::ImageLayout::PRESENT_SRC_KHR), None);
        for gl in [0, 0x958D, 0x958E, 0x958F, 0x9590, 0x9591, 0x9592, 0x9593, 0x9530, 0x9531] {
            let vk_layout = vk_layout_from_gl(gl).expect("every GL_EXT_semaphore layout maps");
            assert_eq!(gl_layout(vk_layout), Some(gl));
        }
        assert_eq!(vk_layout_from_gl(0x1234), None);
    }

    #[test]
    fn release_and_acquire_barriers_follow_the_spec() {
        let family = 3;
        let t = OwnershipTransfer::new()
            .release_buffer(family, vk::Buffer::null(), 16, 256, StageAccess::TRANSFER_WRITE)
            .acquire_image(
                family,
                vk::Image::null(),
                OwnershipTransfer::color_range(),
                vk::ImageLayout::GENERAL,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                StageAccess::TRANSFER_READ,
            );
        t.validate().unwrap();
        let b = t.buffer_barriers()[0];
        assert_eq!((b.src_queue_family_index, b.dst_queue_family_index), (family, vk::QUEUE_FAMILY_EXTERNAL));
        assert_eq!((b.src_access_mask, b.dst_access_mask), (vk::AccessFlags::TRANSFER_WRITE, vk::AccessFlags::empty()));
        assert_eq!((b.offset, b.size), (16, 256));
        let i = t.image_barriers()[0];
        assert_eq!((i.src_queue_family_index, i.dst_queue_family_index), (vk::QUEUE_FAMILY_EXTERNAL, family));
        assert_eq!((i.old_layout, i.new_layout), (vk::ImageLayout::GENERAL, vk::ImageLayout::TRANSFER_SRC_OPTIMAL));
        assert_eq!((i.src_access_mask, i.dst_access_mask), (vk::AccessFlags::empty(), vk::AccessFlags::TRANSFER_READ));
        let (src, dst) = t.stages();
        assert_eq!(src, vk::PipelineStageFlags::TRANSFER | vk::PipelineStageFlags::TOP_OF_PIPE);
        assert_eq!(dst, vk::PipelineStageFlags::BOTTOM_OF_PIPE | vk::PipelineStageFlags::TRANSFER);
    }

    #[test]
    fn invalid_transfers_are_refused() {
        let undefined = OwnershipTransfer::new().release_image(
            0,
            vk::Image::null(),
            OwnershipTransfer::color_range(),
            vk::ImageLayout::GENERAL,
            vk::ImageLayout::UNDEFINED,
            StageAccess::ANY,
        );
        assert!(matches!(undefined.validate(), Err(Error::InvalidArgument { .. })));
        let external_both = OwnershipTransfer::new().release_buffer(
            vk::QUEUE_FAMILY_EXTERNAL,
            vk::Buffer::null(),
            0,
            4,
            StageAccess::ANY,
        );
        assert!(external_both.validate().unwrap_err().to_string().contains("real queue family"));
        let empty = OwnershipTransfer::new().acquire_buffer(0, vk::Buffer::null(), 0, 0, StageAccess::ANY);
        assert!(empty.validate().is_err());
        assert!(OwnershipTransfer::new().is_empty());
    }
}
