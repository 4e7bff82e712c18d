//! Vulkan export and import latency by size: lava-flow's `Buffer::export_fd` and `Buffer::import`
//! against the raw calls they stand on (vkGetMemoryFdKHR; vkCreateBuffer + vkAllocateMemory with
//! VkImportMemoryFdInfoKHR + vkBindBufferMemory), between two VkDevices on the same GPU.
//!
//! Both sides import the same exporter's memory with the same size and memory type; what each
//! call returns is dropped (closed, freed) outside the timed part. The ratio is what lava-flow's
//! checks and bookkeeping add.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use ash::vk;
use lava_flow::vulkan::caps::DEFAULT_BUFFER_USAGE;
use lava_flow::{Buffer, BufferOptions, VulkanContext};
use lava_flow_diag::bench::median_time;

use super::{us, Bench, Row};
use crate::table::bytes;

pub fn rows(bench: &mut Bench) -> lava_flow::Result<()> {
    let a = VulkanContext::new()?;
    let b = VulkanContext::with_uuid(a.identity().device_uuid)?;
    let sizes: &[u64] = if bench.quick { &[64 << 10, 1 << 20] } else { &[64 << 10, 1 << 20, 16 << 20, 256 << 20] };
    let (warmup, iterations) = if bench.quick { (3, 20) } else { (10, 200) };
    let ext = ash::khr::external_memory_fd::Device::new(a.instance(), a.device());
    for &size in sizes {
        let exporter = Buffer::new(&a, &BufferOptions::new(size))?;
        let memory = exporter.memory();
        let handle_type = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;

        let raw_export = || -> lava_flow::Result<OwnedFd> {
            let info = vk::MemoryGetFdInfoKHR::default().memory(memory.handle()).handle_type(handle_type);
            // SAFETY: `memory` is the exporter buffer's allocation, made by Buffer::new with the default
            // opaque-fd export (so the extension the loader needs is enabled), alive across the call.
            let fd = unsafe { ext.get_memory_fd(&info) }.map_err(|r| vk_error("vkGetMemoryFdKHR", r))?;
            // SAFETY: on success vkGetMemoryFdKHR returns a new open fd whose ownership passes to us.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let none = || Ok(());
        let lf_export = median_time(warmup, iterations, none, |()| exporter.export_fd())?;
        let raw_export_t = median_time(warmup, iterations, none, |()| raw_export())?;
        bench.rows.push(
            Row::new("vulkan", format!("export {} buffer", bytes(size)), us(lf_export), Some(us(raw_export_t)), "us")
                .iterations(iterations),
        );

        let lf_import = median_time(warmup, iterations, || exporter.export_fd(), |e| Buffer::import(&b, e))?;
        let raw_import_t = median_time(warmup, iterations, raw_export, |fd| {
            raw_import(&b, fd, memory.size(), memory.memory_type_index(), memory.dedicated(), size)
        })?;
        bench.rows.push(
            Row::new(
                "vulkan",
                format!("import {} buffer on a 2nd device", bytes(size)),
                us(lf_import),
                Some(us(raw_import_t)),
                "us",
            )
            .iterations(iterations),
        );
    }
    copy_bandwidth(bench, &a, &b)
}

/// vkCmdCopyBuffer between two buffers imported on the second device (exported by the first)
/// against the same copy between two buffers allocated there without export: what importing
/// costs the work done on the memory. GB/s count the bytes read and written.
fn copy_bandwidth(bench: &mut Bench, a: &VulkanContext, b: &VulkanContext) -> lava_flow::Result<()> {
    let (len, warmup, iterations) = if bench.quick { (16u64 << 20, 1, 5) } else { (256u64 << 20, 2, 20) };
    let native = || Buffer::new(b, &BufferOptions::new(len).export(None));
    let (native_src, native_dst) = (native()?, native()?);
    let (exported_src, exported_dst) =
        (Buffer::new(a, &BufferOptions::new(len))?, Buffer::new(a, &BufferOptions::new(len))?);
    let imported_src = Buffer::import(b, exported_src.export_fd()?)?;
    let imported_dst = Buffer::import(b, exported_dst.export_fd()?)?;
    // Every page written first: untouched private memory reads as the kernel's shared zero page,
    // which would flatter the native side.
    for buffer in [&native_src, &native_dst, &imported_src, &imported_dst] {
        buffer.fill(0x5a5a_5a5a)?;
    }
    // The two copies alternate, so a change of load on the machine weighs on both alike.
    let (mut imported_times, mut native_times) = (Vec::new(), Vec::new());
    for i in 0..warmup + iterations {
        let timed = |src: &Buffer, dst: &Buffer| -> lava_flow::Result<std::time::Duration> {
            let start = std::time::Instant::now();
            src.copy_to(dst)?;
            Ok(start.elapsed())
        };
        let (t_imported, t_native) = (timed(&imported_src, &imported_dst)?, timed(&native_src, &native_dst)?);
        if i >= warmup {
            imported_times.push(t_imported);
            native_times.push(t_native);
        }
    }
    let middle = |mut v: Vec<std::time::Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (imported, native_t) = (middle(imported_times), middle(native_times));
    let gbps = |t: std::time::Duration| 2.0 * len as f64 / t.as_secs_f64() / 1e9;
    bench.rows.push(
        Row::new(
            "vulkan",
            format!("copy bandwidth {}: imported vs native memory", bytes(len)),
            gbps(imported),
            Some(gbps(native_t)),
            "GB/s",
        )
        .iterations(iterations),
    );
    Ok(())
}

fn vk_error(call: &'static str, result: vk::Result) -> lava_flow::Error {
    lava_flow::Error::Vulkan {
        action: "measuring the raw-API baseline".into(),
        call,
        result,
        advice: "see `lava-flow info` for what this device supports".into(),
    }
}

/// What a raw import made, destroyed on drop (outside the timed part, like lava-flow's `Buffer`).
struct RawImport<'a> {
    dev: &'a ash::Device,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
}

impl Drop for RawImport<'_> {
    fn drop(&mut self) {
        // SAFETY: no command ever used the buffer or the memory (the benchmark only imports and binds);
        // each is destroyed once, the buffer before its memory; a null memory handle is ignored.
        unsafe {
            self.dev.destroy_buffer(self.buffer, None);
            self.dev.free_memory(self.memory, None);
        }
    }
}

/// The raw import lava-flow's `Buffer::import` performs: a buffer, the imported memory with the
/// exporter's size and type (dedicated to the buffer where the export was), the bind.
fn raw_import(
    ctx: &VulkanContext,
    fd: OwnedFd,
    allocation_size: u64,
    type_index: u32,
    dedicated: bool,
    size: u64,
) -> lava_flow::Result<RawImport<'_>> {
    let dev = ctx.device();
    let handle_type = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;
    let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle_type);
    let info = vk::BufferCreateInfo::default()
        .size(size)
        .usage(DEFAULT_BUFFER_USAGE)
        .sharing_mode(vk::SharingMode::EXCLUSIVE)
        .push_next(&mut external);
    // SAFETY: `info` and its chain are locals that outlive the call; size > 0 (a benchmark size), the
    // default usage, and the opaque-fd type the exporter's device (the same GPU) exports.
    let buffer = unsafe { dev.create_buffer(&info, None) }.map_err(|r| vk_error("vkCreateBuffer", r))?;
    let mut objects = RawImport { dev, buffer, memory: vk::DeviceMemory::null() };
    // SAFETY: `buffer` was just created on this device and is alive.
    let _reqs = unsafe { dev.get_buffer_memory_requirements(buffer) };
    let raw_fd = fd.into_raw_fd();
    let mut import = vk::ImportMemoryFdInfoKHR::default().handle_type(handle_type).fd(raw_fd);
    let mut dedicated_info = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer);
    let mut alloc = vk::MemoryAllocateInfo::default()
        .allocation_size(allocation_size)
        .memory_type_index(type_index)
        .push_next(&mut import);
    if dedicated {
        alloc = alloc.push_next(&mut dedicated_info);
    }
    // The fd is left to the driver even when the import fails: some drivers close it then
    // (NVIDIA, on a wrong size), so closing it here could close an unrelated fd that reused the
    // number. lava-flow's own imports hand the driver a duplicate; the raw route does not pay
    // for one, and the benchmark stops.
    // SAFETY: `alloc` and its chain are locals that outlive the call; `raw_fd` is an open fd we own
    // until the driver takes it; size, memory type and dedicated flag are the exporter's, whose buffer
    // was made with the same parameters as `buffer` (the identical resource a dedicated import needs).
    objects.memory = unsafe { dev.allocate_memory(&alloc, None) }.map_err(|r| vk_error("vkAllocateMemory", r))?;
    // SAFETY: the buffer is fresh and unbound; the memory was imported with the exporter's size and
    // type for a buffer of these parameters on the same driver, so it fits at offset 0; a dedicated
    // import names this very buffer.
    unsafe { dev.bind_buffer_memory(buffer, objects.memory, 0) }.map_err(|r| vk_error("vkBindBufferMemory", r))?;
    Ok(objects)
}
