//! Measurements for `lava-flow bench`: OpenCL import latency through lava-flow against the raw
//! `clCreateBufferWithProperties`, and copy bandwidth on imported memory against native
//! `clCreateBuffer` memory.

use std::os::fd::IntoRawFd;
use std::time::Instant;

use cl3::ext as cl;

use lava_flow::opencl::{cl_error, ClContext};
use lava_flow::vulkan::{Buffer, BufferOptions};
use lava_flow::{Result, VulkanContext};

use super::median;
pub use super::Row;

/// Releases an event an enqueue call returned (none for a null one).
fn release_event(event: cl::cl_event) {
    if !event.is_null() {
        // SAFETY: an event returned to us by an enqueue call, released once here.
        let _ = unsafe { cl3::event::release_event(event) };
    }
}

fn row(case: String, lava_flow: f64, raw: f64, unit: &'static str, iterations: usize) -> Row {
    Row::new("opencl", case, lava_flow, Some(raw), unit).iterations(iterations.clamp(1, u32::MAX as usize) as u32)
}

/// Import latency of one buffer of each size in `sizes`, `iterations` times, in microseconds
/// (median): `ClContext::import_buffer` against the bare `clCreateBufferWithProperties` call.
/// Exporting the fd and releasing the `cl_mem` are outside the timing.
pub fn import_latency(vk: &VulkanContext, sizes: &[u64], iterations: usize) -> Result<Vec<Row>> {
    let cl = ClContext::for_identity(&vk.identity())?;
    let mut rows = Vec::new();
    for &size in sizes {
        let buffer = Buffer::new(vk, &BufferOptions::new(size))?;
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for i in 0..=iterations.max(1) {
            // Iteration 0 warms caches and driver paths up and is not counted.
            let exported = buffer.export_fd()?;
            let t = Instant::now();
            let imported = cl.import_buffer(exported)?;
            if i > 0 {
                ours.push(t.elapsed().as_secs_f64() * 1e6);
            }
            drop(imported);

            let exported = buffer.export_fd()?;
            let alloc = exported.memory.description.allocation_size as usize;
            let fd = exported.memory.handle.into_raw_fd();
            let props = [
                cl::CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR as cl::cl_mem_properties,
                fd as cl::cl_mem_properties,
                cl::CL_MEM_DEVICE_HANDLE_LIST_KHR,
                cl.device() as cl::cl_mem_properties,
                cl::CL_MEM_DEVICE_HANDLE_LIST_END_KHR,
                0,
            ];
            let t = Instant::now();
            // SAFETY: the context is alive; the property list is a 0-terminated local naming a fresh export
            // of this device's memory (OpenCL takes the fd on success) and this device; size is the allocation's.
            let mem = unsafe {
                cl3::memory::create_buffer_with_properties(
                    cl.context(),
                    props.as_ptr(),
                    cl::CL_MEM_READ_WRITE,
                    alloc,
                    std::ptr::null_mut(),
                )
            };
            if i > 0 {
                raw.push(t.elapsed().as_secs_f64() * 1e6);
            }
            // On failure the raw baseline leaves the fd to the driver rather than risk closing it
            // twice (some drivers close it on failure): at most one fd for a failed benchmark.
            let mem = mem.map_err(|c| cl_error("clCreateBufferWithProperties", c, "the raw import baseline"))?;
            // SAFETY: our own reference to the buffer just created, released once.
            let _ = unsafe { cl3::memory::release_mem_object(mem) };
        }
        rows.push(row(format!("OpenCL buffer import, {size} bytes"), median(ours), median(raw), "us", iterations));
    }
    Ok(rows)
}

fn copy_rate(cl: &ClContext, src: cl::cl_mem, dst: cl::cl_mem, size: usize, iterations: usize) -> Result<f64> {
    let copy = || -> Result<()> {
        // SAFETY: the queue is cl's; src and dst are live buffers of cl's context holding at least
        // `size` bytes each (callers keep them alive until cl.finish()); no wait list.
        let e =
            unsafe { cl3::command_queue::enqueue_copy_buffer(cl.queue(), src, dst, 0, 0, size, 0, std::ptr::null()) }
                .map_err(|c| cl_error("clEnqueueCopyBuffer", c, "copying for the bandwidth benchmark"))?;
        release_event(e);
        Ok(())
    };
    copy()?; // warm-up
    cl.finish()?;
    let t = Instant::now();
    for _ in 0..iterations.max(1) {
        copy()?;
    }
    cl.finish()?;
    let secs = t.elapsed().as_secs_f64();
    // Bytes read plus bytes written, as the project's figures count them.
    Ok(2.0 * size as f64 * iterations.max(1) as f64 / secs / 1e9)
}

/// Device-to-device copy bandwidth (`clEnqueueCopyBuffer`, counting read and write) between two
/// imported Vulkan buffers, against two native `clCreateBuffer` buffers of the same size, in GB/s.
pub fn copy_bandwidth(vk: &VulkanContext, size: u64, iterations: usize) -> Result<Vec<Row>> {
    let cl = ClContext::for_identity(&vk.identity())?;
    let (a, b) = (Buffer::new(vk, &BufferOptions::new(size))?, Buffer::new(vk, &BufferOptions::new(size))?);
    let (ia, ib) = (cl.import_buffer(a.export_fd()?)?, cl.import_buffer(b.export_fd()?)?);
    cl.acquire(&[&ia, &ib])?;
    let imported = copy_rate(&cl, ia.mem(), ib.mem(), size as usize, iterations);
    cl.release(&[&ia, &ib])?;
    let imported = imported?;
    let native = |()| -> Result<cl::cl_mem> {
        // SAFETY: the context is alive; a plain device allocation of `size` bytes with no host pointer.
        unsafe { cl3::memory::create_buffer(cl.context(), cl::CL_MEM_READ_WRITE, size as usize, std::ptr::null_mut()) }
            .map_err(|c| cl_error("clCreateBuffer", c, "allocating native memory for the baseline"))
    };
    let na = native(())?;
    let result = native(()).and_then(|nb| {
        let r = copy_rate(&cl, na, nb, size as usize, iterations);
        // SAFETY: our own reference to nb, released once; copy_rate finished the queue.
        let _ = unsafe { cl3::memory::release_mem_object(nb) };
        r
    });
    // SAFETY: our own reference to na, released once; copy_rate finished the queue.
    let _ = unsafe { cl3::memory::release_mem_object(na) };
    let native = result?;
    Ok(vec![row(
        format!("OpenCL copy bandwidth, {size} bytes: imported Vulkan memory vs clCreateBuffer"),
        imported,
        native,
        "GB/s",
        iterations,
    )])
}
