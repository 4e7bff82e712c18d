//! Vulkan -> OpenCL -> Vulkan ordered by shared binary semaphores
//! (cl_khr_external_semaphore_opaque_fd), over many rounds, with an OpenCL kernel doing the work.
//! Runs on the GPU machine; elsewhere skips with the reason.
#![cfg(feature = "opencl")]

mod common;
mod interop_semaphore;

use common::pattern;
use common::{vk_gpu_read, vk_gpu_write};
use interop_semaphore::VkSemaphore;
use lava_flow::opencl::{ClContext, KernelArg};
use lava_flow::{Buffer, BufferOptions, VulkanContext};
use lava_flow_diag::testing::{self, open_fd_count};

fn setup() -> Option<(VulkanContext, ClContext)> {
    let vk = common::vulkan()?;
    let cl = testing::or_skip("opencl", ClContext::for_identity(&vk.identity()))?;
    if !cl.info().external_semaphore_opaque_fd {
        testing::skip("semaphores", format!("{} lacks cl_khr_external_semaphore_opaque_fd", cl.info().name));
        return None;
    }
    if !vk.extensions().external_semaphore_fd {
        testing::skip("semaphores", format!("{} lacks VK_KHR_external_semaphore_fd", vk.info().name));
        return None;
    }
    Some((vk, cl))
}

#[test]
fn semaphores_order_rounds_vulkan_opencl_vulkan() {
    let Some((vk, cl)) = setup() else { return };
    let n: usize = 1 << 18;
    let buffer = Buffer::new(&vk, &BufferOptions::new(n as u64 * 4)).unwrap();
    let clbuf = cl.import_buffer(buffer.export_fd().unwrap()).unwrap();
    let (to_cl, to_vk) = (VkSemaphore::new(&vk), VkSemaphore::new(&vk));
    let before = open_fd_count();
    let cl_wait = cl.import_semaphore(to_cl.export()).unwrap();
    let cl_signal = cl.import_semaphore(to_vk.export()).unwrap();
    assert!(open_fd_count() <= before, "OpenCL took both semaphore fds");
    let mut kernel = cl
        .build_kernel("__kernel void add(__global uint* x, uint k) { size_t i = get_global_id(0); x[i] += k; }", "add")
        .unwrap();
    for round in 0..16u32 {
        let words: Vec<u32> =
            pattern(n * 4, round).chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        vk_gpu_write(&buffer, 0, &bytes);
        to_cl.signal();
        cl_wait.wait().unwrap();
        cl.acquire(&[&clbuf]).unwrap();
        kernel.enqueue(&[KernelArg::Buffer(&clbuf), KernelArg::U32(round + 1)], &[n]).unwrap();
        cl.release(&[&clbuf]).unwrap();
        cl_signal.signal().unwrap();
        to_vk.wait();
        let out = vk_gpu_read(&buffer, 0, n as u64 * 4);
        for (i, w) in out.chunks_exact(4).enumerate() {
            let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            assert_eq!(v, words[i].wrapping_add(round + 1), "round {round} word {i}");
        }
    }
    cl.finish().unwrap();
    cl.check_deferred().unwrap();
}
