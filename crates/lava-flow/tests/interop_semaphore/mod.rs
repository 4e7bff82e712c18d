//! Shared by gl_semaphore and opencl_semaphore: an exportable binary Vulkan semaphore the other API
//! imports (the staged GPU writes and reads are tests/common's vk_gpu_write and vk_gpu_read).
#![allow(dead_code)]

use ash::vk;
use lava_flow::raw_gpu_handle::{
    ExportedSemaphore, SemaphoreDescription, SemaphoreHandle, SemaphoreHandleKind, SemaphoreKind,
};
use lava_flow::VulkanContext;

/// An exportable binary Vulkan semaphore (VK_KHR_external_semaphore_fd, opaque fd).
pub struct VkSemaphore {
    ctx: VulkanContext,
    semaphore: vk::Semaphore,
}

impl VkSemaphore {
    pub fn new(ctx: &VulkanContext) -> VkSemaphore {
        let mut export =
            vk::ExportSemaphoreCreateInfo::default().handle_types(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
        let info = vk::SemaphoreCreateInfo::default().push_next(&mut export);
        // SAFETY: setup() checked the device has VK_KHR_external_semaphore_fd, so the export chain is
        // valid; `info` and its chain are locals that outlive the call.
        let semaphore = unsafe { ctx.device().create_semaphore(&info, None) }.unwrap();
        VkSemaphore { ctx: ctx.clone(), semaphore }
    }

    pub fn export(&self) -> ExportedSemaphore {
        let loader = ash::khr::external_semaphore_fd::Device::new(self.ctx.instance(), self.ctx.device());
        let info = vk::SemaphoreGetFdInfoKHR::default()
            .semaphore(self.semaphore)
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
        // SAFETY: the semaphore was created exportable as an opaque fd on the loader's device.
        let fd = unsafe { loader.get_semaphore_fd(&info) }.unwrap();
        // SAFETY: vkGetSemaphoreFdKHR returned a new open fd whose ownership passed to us.
        let handle = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        SemaphoreHandle::new(
            handle,
            SemaphoreDescription {
                kind: SemaphoreKind::Binary,
                handle_kind: SemaphoreHandleKind::OpaqueFd,
                device: self.ctx.identity(),
            },
        )
    }

    /// Submits an empty batch that signals the semaphore after all earlier work on the queue.
    pub fn signal(&self) {
        self.submit(&[], &[self.semaphore]);
    }

    /// Submits an empty batch that waits for the semaphore, and waits on the host for it.
    pub fn wait(&self) {
        self.submit(&[self.semaphore], &[]);
    }

    fn submit(&self, wait: &[vk::Semaphore], signal: &[vk::Semaphore]) {
        let dev = self.ctx.device();
        // SAFETY: the device is alive (self.ctx); the create info is a default local.
        let fence = unsafe { dev.create_fence(&vk::FenceCreateInfo::default(), None) }.unwrap();
        let stages = vec![vk::PipelineStageFlags::ALL_COMMANDS; wait.len()];
        let submit =
            [vk::SubmitInfo::default().wait_semaphores(wait).wait_dst_stage_mask(&stages).signal_semaphores(signal)];
        // SAFETY: with_queue holds the queue mutex; the batch has no command buffers; the semaphores are
        // live, and each test waits only for a binary semaphore whose signal it submitted (here or on
        // the other API) first; the fence is fresh; `submit` and `stages` outlive the call.
        self.ctx.with_queue(|q| unsafe { dev.queue_submit(q, &submit, fence) }).unwrap();
        // SAFETY: the fence belongs to this device and is alive until destroyed below.
        unsafe { dev.wait_for_fences(&[fence], true, 10_000_000_000) }.expect("the semaphore batch completes");
        // SAFETY: the wait returned Ok (else the test panicked above), so the batch completed and no
        // queue operation uses the fence.
        unsafe { dev.destroy_fence(fence, None) };
    }
}

impl Drop for VkSemaphore {
    fn drop(&mut self) {
        // SAFETY: on the passing path every batch using the semaphore was waited for (submit waits on
        // its fence), so no queue operation uses it.
        unsafe { self.ctx.device().destroy_semaphore(self.semaphore, None) };
    }
}
