//! Shared helpers of the CUDA tests: open Vulkan and the CUDA device with its UUID (or skip with
//! the reason), and export a semaphore with plain ash calls.
#![allow(dead_code)]

use std::os::fd::{FromRawFd, OwnedFd};

use ash::vk;
use lava_flow::cuda::CudaDevice;
use lava_flow::raw_gpu_handle::{
    ExportedSemaphore, SemaphoreDescription, SemaphoreHandle, SemaphoreHandleKind, SemaphoreKind,
};
use lava_flow::VulkanContext;
use lava_flow_diag::testing;

/// The default Vulkan device and the CUDA device with the same UUID, or None after printing why
/// (panics instead when LAVA_FLOW_REQUIRE names the missing API).
pub fn devices() -> Option<(VulkanContext, CudaDevice)> {
    let ctx = testing::or_skip("vulkan", VulkanContext::new())?;
    let cuda = testing::or_skip("cuda", CudaDevice::for_identity(&ctx.identity()))?;
    Some((ctx, cuda))
}

/// A Vulkan semaphore exported as an opaque fd, destroyed on drop.
pub struct VkExportedSemaphore {
    ctx: VulkanContext,
    pub semaphore: vk::Semaphore,
}

impl Drop for VkExportedSemaphore {
    fn drop(&mut self) {
        // SAFETY: the CUDA tests wait for all Vulkan and CUDA work using the semaphore before dropping
        // its owner (on the passing path), so no queue operation uses it.
        unsafe { self.ctx.device().destroy_semaphore(self.semaphore, None) };
    }
}

/// Creates an exportable semaphore of `kind` and exports it; None (after printing why) when the
/// device lacks external semaphores.
pub fn export_semaphore(ctx: &VulkanContext, kind: SemaphoreKind) -> Option<(VkExportedSemaphore, ExportedSemaphore)> {
    let ext = ctx.extensions();
    if !ext.external_semaphore_fd || (kind == SemaphoreKind::Timeline && !ext.timeline_semaphore) {
        testing::skip("semaphores", format!("{} lacks exportable {kind:?} semaphores", ctx.info().name));
        return None;
    }
    let mut export =
        vk::ExportSemaphoreCreateInfo::default().handle_types(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
    let mut timeline = vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
    let mut info = vk::SemaphoreCreateInfo::default().push_next(&mut export);
    if kind == SemaphoreKind::Timeline {
        info = info.push_next(&mut timeline);
    }
    // SAFETY: the device has VK_KHR_external_semaphore_fd and, for a timeline, the timeline feature
    // (checked above); `info` and its chain are locals that outlive the call.
    let semaphore = unsafe { ctx.device().create_semaphore(&info, None) }.expect("vkCreateSemaphore");
    let owner = VkExportedSemaphore { ctx: ctx.clone(), semaphore };
    let loader = ash::khr::external_semaphore_fd::Device::new(ctx.instance(), ctx.device());
    let get = vk::SemaphoreGetFdInfoKHR::default()
        .semaphore(semaphore)
        .handle_type(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
    // SAFETY: the semaphore was created exportable as an opaque fd on the loader's device.
    let fd = unsafe { loader.get_semaphore_fd(&get) }.expect("vkGetSemaphoreFdKHR");
    // SAFETY: vkGetSemaphoreFdKHR returned a new open fd whose ownership passed to us.
    let handle = unsafe { OwnedFd::from_raw_fd(fd) };
    let exported = SemaphoreHandle::new(
        handle,
        SemaphoreDescription { kind, handle_kind: SemaphoreHandleKind::OpaqueFd, device: ctx.identity() },
    );
    Some((owner, exported))
}
