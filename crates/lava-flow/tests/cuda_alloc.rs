//! CUDA allocates (`cuMemCreate`, exported with `cuMemExportToShareableHandle`), and Vulkan,
//! OpenGL, OpenCL and another process import: data checked both ways, buffers of one allocation
//! sharing one export and one import, the granularity-rounded size, bad input refused with typed
//! errors and fds counted. GPU only: skipped with the reason elsewhere.

mod cuda_common;
mod ipc_support;

use std::time::Duration;

use cuda_common::devices;
use ipc_support::{child_command, child_role, run_ok, TempDir};
use lava_flow::cuda::{CudaAllocation, CudaDevice, BUFFER_ALIGNMENT};
use lava_flow::ipc::ServerConfig;
use lava_flow::pool::BlockImporter;
use lava_flow::raw_gpu_handle::{MemoryHandleKind, MemoryProperties};
use lava_flow::{Buffer, Error, VulkanContext};
use lava_flow_diag::pattern::{
    attach, serve_pattern, AttachApi, AttachOptions, ServeMemory, ServeOptions, PATTERN_NAME,
};
use lava_flow_diag::testing;

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed).to_le_bytes()[i % 4]).collect()
}

/// An exportable allocation of `size` bytes, or None after printing why: the device attributes
/// that `allocate_exportable` queries first say no (a capability answer, not a failure).
fn allocate(cuda: &CudaDevice, size: u64) -> Option<CudaAllocation> {
    match cuda.allocate_exportable(size) {
        Ok(a) => Some(a),
        Err(e @ Error::Unsupported { .. }) => {
            testing::skip_refused("cuda", "CU_DEVICE_ATTRIBUTE_", e);
            None
        }
        Err(e) => panic!("allocating {size} bytes: {e}"),
    }
}

#[test]
fn an_allocation_is_rounded_to_the_granularity_and_describes_the_vulkan_device_of_its_gpu() {
    let Some((ctx, cuda)) = devices() else { return };
    let support = cuda.export_support().unwrap();
    println!("{support:?}");
    let Some(allocation) = allocate(&cuda, 1000) else { return };
    let granularity = support.granularity.unwrap();
    assert_eq!(allocation.size(), granularity, "1000 bytes round up to one granule");
    assert_eq!(allocation.requested_size(), 1000);
    let d = allocation.description();
    assert_eq!(d.handle_kind, MemoryHandleKind::OpaqueFd);
    assert_eq!(d.allocation_size, allocation.size());
    assert!(!d.dedicated);
    assert!(d.allocation_id.is_some());
    assert_eq!(d.device.device_uuid, cuda.uuid());
    assert_eq!(d.device, ctx.identity(), "the Vulkan device of the same GPU, driver UUID included");
    assert!(d.memory_properties.contains(MemoryProperties::DEVICE_LOCAL), "{}", d.memory_properties);
    let vk_type = ctx.memory_properties().memory_types[d.memory_type_index as usize].property_flags;
    assert_eq!(lava_flow::vulkan::memory_properties(vk_type), d.memory_properties);
    assert_ne!(allocation.device_ptr_raw(), 0);
}

#[test]
fn cuda_writes_vulkan_reads_and_vulkan_writes_cuda_reads() {
    let Some((ctx, cuda)) = devices() else { return };
    let Some(allocation) = allocate(&cuda, 3 << 20) else { return };
    let size = 1 << 20;
    let cuda_buffer = allocation.buffer(1 << 20, size).unwrap();
    let data = pattern(size as usize, 7);
    cuda_buffer.copy_from_host(&data).unwrap();
    let mut vk_buffer = Buffer::import(&ctx, cuda_buffer.export().unwrap()).unwrap();
    assert_eq!(vk_buffer.size(), size);
    assert!(vk_buffer.read(0, size).unwrap() == data, "Vulkan sees what CUDA wrote");
    let update = pattern(4096, 99);
    vk_buffer.write(8192, &update).unwrap();
    let back = cuda_buffer.copy_to_host().unwrap();
    assert!(back[8192..8192 + 4096] == update[..], "CUDA sees what Vulkan wrote");
    assert!(back[..8192] == data[..8192], "the rest is untouched");
    // A 32-bit fill by CUDA, read by Vulkan.
    cuda_buffer.fill_u32(0xC0FF_EE00).unwrap();
    let words = vk_buffer.read(0, 16).unwrap();
    assert_eq!(words, [0x00, 0xEE, 0xFF, 0xC0].repeat(4));
    // The allocation may go first: the Vulkan import keeps the physical memory.
    drop(cuda_buffer);
    drop(allocation);
    vk_buffer.write(0, &[1, 2, 3, 4]).unwrap();
    assert_eq!(vk_buffer.read(0, 4).unwrap(), [1, 2, 3, 4]);
}

#[test]
fn buffers_of_one_allocation_share_one_import() {
    let Some((ctx, cuda)) = devices() else { return };
    let Some(allocation) = allocate(&cuda, 2 << 20) else { return };
    let (count, each) = (8u64, 64u64 << 10);
    let importer = BlockImporter::new(&ctx);
    let mut imported = Vec::new();
    for i in 0..count {
        let buffer = allocation.buffer(i * (256 << 10), each).unwrap();
        buffer.copy_from_host(&pattern(each as usize, i as u32)).unwrap();
        imported.push(importer.import_buffer(buffer.export().unwrap()).unwrap());
    }
    let stats = importer.stats();
    assert_eq!((stats.misses, stats.hits), (1, count - 1), "one import for the whole allocation: {stats:?}");
    for (i, b) in imported.iter().enumerate() {
        assert!(b.read(0, each).unwrap() == pattern(each as usize, i as u32), "buffer {i} at its offset");
    }
}

#[test]
fn bad_sizes_and_offsets_are_refused_before_allocating() {
    let Some(cuda) = testing::or_skip("cuda", CudaDevice::open(0)) else { return };
    let support = cuda.export_support().unwrap();
    if !support.can_export() {
        return testing::skip_capability("cuda", format!("device 0 cannot export allocations: {support:?}"));
    }
    assert!(matches!(cuda.allocate_exportable(0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(cuda.allocate_exportable(u64::MAX), Err(Error::InvalidArgument { .. })));
    let (_, total) = cuda.mem_get_info().unwrap();
    let e = cuda.allocate_exportable(total + 1).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { code: None, .. }), "{e}");
    let Some(allocation) = allocate(&cuda, 4096) else { return };
    let size = allocation.size();
    assert!(allocation.buffer(0, 0).is_err(), "empty");
    assert!(allocation.buffer(0, size + 1).is_err(), "past the end");
    assert!(allocation.buffer(size, 1).is_err(), "starts at the end");
    assert!(allocation.buffer(BUFFER_ALIGNMENT / 2, 16).is_err(), "unaligned offset");
    assert!(allocation.buffer(u64::MAX - 1, 2).is_err(), "offset overflow");
    let b = allocation.buffer(BUFFER_ALIGNMENT, 16).unwrap();
    assert!(b.copy_from_host(&[0u8; 15]).is_err(), "wrong host length");
}

#[test]
fn a_wrong_size_description_is_refused_and_no_fd_leaks() {
    let Some((ctx, cuda)) = devices() else { return };
    let Some(allocation) = allocate(&cuda, 4096) else { return };
    let before = testing::open_fd_count();
    for _ in 0..10 {
        drop(allocation.export().unwrap());
    }
    assert_eq!(testing::open_fd_count(), before, "exported fds belong to the caller and close on drop");
    let mut exported = allocation.whole().unwrap().export().unwrap();
    exported.memory.description.allocation_size += allocation.size();
    let e = Buffer::import(&ctx, exported).unwrap_err();
    // Refused by lava-flow before the driver sees it: the size recorded when CUDA allocated
    // (fd::check_against_exporter), or the fd's own size where the driver's fd shows one.
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    println!("wrong size refused: {e}");
    assert_eq!(testing::open_fd_count(), before, "the refused import closed its fd");
    // A description naming another device is refused by the identity check.
    let mut exported = allocation.whole().unwrap().export().unwrap();
    exported.memory.description.device.device_uuid.0[0] ^= 0xff;
    let e = Buffer::import(&ctx, exported).unwrap_err();
    assert!(matches!(e, Error::IncompatibleDevice(_)), "{e}");
    assert_eq!(testing::open_fd_count(), before);
}

#[test]
fn gl_and_opencl_import_cuda_allocated_buffers() {
    let Some((ctx, cuda)) = devices() else { return };
    let Some(allocation) = allocate(&cuda, 1 << 20) else { return };
    let buffer = allocation.buffer(0, 1 << 20).unwrap();
    let data = pattern(1 << 20, 3);
    buffer.copy_from_host(&data).unwrap();
    let mut cases = testing::Cases::new("importers", 2);
    #[cfg(feature = "gl")]
    match lava_flow::gl::GlContext::for_identity(&ctx.identity()) {
        Ok(gl) => {
            let imported = gl.import_buffer(buffer.export().unwrap()).unwrap();
            assert!(imported.read(0, 1 << 20).unwrap() == data, "GL sees what CUDA wrote");
            cases.ran();
        }
        Err(e) if e.is_unavailable() => cases.skip("gl", "gl", e),
        Err(e) => panic!("GL: {e}"),
    }
    #[cfg(not(feature = "gl"))]
    cases.skip("gl", "gl", "built without the `gl` feature");
    #[cfg(feature = "opencl")]
    match lava_flow::opencl::ClContext::for_identity(&ctx.identity()) {
        Ok(cl) => {
            let imported = cl.import_buffer(buffer.export().unwrap()).unwrap();
            assert!(imported.read(0, 1 << 20).unwrap() == data, "OpenCL sees what CUDA wrote");
            cases.ran();
        }
        Err(e) if e.is_unavailable() => cases.skip("opencl", "opencl", e),
        Err(e) => panic!("OpenCL: {e}"),
    }
    #[cfg(not(feature = "opencl"))]
    cases.skip("opencl", "opencl", "built without the `opencl` feature");
    cases.finish();
}

fn attach_child() {
    let socket = std::env::var_os("LAVA_FLOW_TEST_SOCKET").unwrap();
    let Some(report) = testing::or_skip("vulkan", attach(&AttachOptions::new(socket, AttachApi::Vulkan))) else {
        println!("CHILD-SKIPPED");
        return;
    };
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
}

#[test]
fn another_process_imports_a_cuda_allocation_into_vulkan() {
    if child_role().is_some() {
        return attach_child();
    }
    let Some(cuda) = testing::or_skip("cuda", CudaDevice::open(0)) else { return };
    if testing::or_skip("vulkan", VulkanContext::new()).is_none() {
        return;
    }
    let support = cuda.export_support().unwrap();
    if !support.can_export() {
        return testing::skip_capability("cuda", format!("device 0 cannot export allocations: {support:?}"));
    }
    let dir = TempDir::new("serve-cuda", 0o700);
    let socket = dir.path().join("serve.sock");
    let options = ServeOptions {
        socket: socket.clone(),
        size: 1 << 20,
        memory: ServeMemory::Cuda { ordinal: 0 },
        image: None,
        config: ServerConfig::default(),
    };
    let served = serve_pattern(&options).unwrap();
    let mut cmd = child_command("another_process_imports_a_cuda_allocation_into_vulkan", "attach-vulkan");
    cmd.env("LAVA_FLOW_TEST_SOCKET", &socket);
    let out = run_ok(cmd, "attach-vulkan");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("CHILD-SKIPPED"), "Vulkan opened here but not in the child: {stdout}");
    let line = stdout.lines().find_map(|l| l.split_once("REPORT ").map(|(_, r)| r)).expect("the child's report");
    let report: serde_json::Value = serde_json::from_str(line).unwrap();
    println!("{report:#}");
    let object = &report["objects"][0];
    assert_eq!((&object["name"], &object["kind"]), (&PATTERN_NAME.into(), &"buffer".into()));
    assert_eq!(object["bytes_checked"], 1 << 20);
    assert!(served.server().wait_idle(Duration::from_secs(10)));
}
