//! CUDA imports of Vulkan buffers: data both ways, several mappings, the dedicated flag, refusals
//! (UUID, size, fd kind) with fd accounting, kernels through cudarc, and no leak over 1,000
//! import/free cycles. GPU only: skipped with the reason elsewhere.

mod cuda_common;

use cuda_common::devices;
use lava_flow::cuda::CudaDevice;
use lava_flow::raw_gpu_handle::Uuid;
use lava_flow::vulkan::DedicatedPolicy;
use lava_flow::{Buffer, BufferOptions, Error};
use lava_flow_diag::selftest::cuda as selftest;
use lava_flow_diag::testing;

#[test]
fn buffer_round_trips_both_ways_at_several_sizes() {
    let Some((ctx, cuda)) = devices() else { return };
    for size in [4096, 64 << 10, 1000 * 1000, 64 << 20] {
        selftest::buffer_vulkan_to_cuda(&ctx, &cuda, size).unwrap_or_else(|e| panic!("vulkan->cuda {size}: {e}"));
        selftest::buffer_cuda_to_vulkan(&ctx, &cuda, size).unwrap_or_else(|e| panic!("cuda->vulkan {size}: {e}"));
    }
}

#[test]
fn several_mappings_of_one_import_see_the_same_bytes() {
    let Some((ctx, cuda)) = devices() else { return };
    let size = 8u64 << 20;
    let mut buffer = Buffer::new(&ctx, &BufferOptions::new(size)).unwrap();
    let data = selftest::pattern(size as usize, 11);
    buffer.write(0, &data).unwrap();
    let exported = buffer.export_fd().unwrap();
    let place = exported.buffer;
    let memory = cuda.import_memory(exported.memory).unwrap();
    let whole = memory.map_buffer(place.offset, size).unwrap();
    let half = size / 2;
    let second = memory.map_buffer(place.offset + half, half).unwrap();
    // The import handle may go: each mapping keeps it alive.
    drop(memory);
    assert_eq!(whole.copy_to_host().unwrap(), data);
    assert_eq!(second.copy_to_host().unwrap(), &data[half as usize..]);
    // A write through one mapping shows through the other and in Vulkan.
    let new_half = selftest::pattern(half as usize, 12);
    second.copy_from_host(&new_half).unwrap();
    let seen = whole.copy_to_host().unwrap();
    assert_eq!(&seen[half as usize..], &new_half[..]);
    assert_eq!(&buffer.read(half, half).unwrap()[..], &new_half[..]);
}

#[test]
fn mapping_outlives_the_vulkan_buffer_and_allocation() {
    let Some((ctx, cuda)) = devices() else { return };
    let size = 1u64 << 20;
    let mut buffer = Buffer::new(&ctx, &BufferOptions::new(size)).unwrap();
    let data = selftest::pattern(size as usize, 13);
    buffer.write(0, &data).unwrap();
    let mapped = cuda.import_buffer(buffer.export_fd().unwrap()).unwrap();
    drop(buffer);
    drop(ctx);
    // The CUDA import holds the memory object's payload (external memory is reference counted).
    assert_eq!(mapped.copy_to_host().unwrap(), data);
}

#[test]
fn dedicated_allocation_is_imported_with_the_dedicated_flag() {
    let Some((ctx, cuda)) = devices() else { return };
    let size = 32u64 << 20;
    let mut buffer = Buffer::new(&ctx, &BufferOptions::new(size).dedicated(DedicatedPolicy::Always)).unwrap();
    let data = selftest::pattern(size as usize, 14);
    buffer.write(0, &data).unwrap();
    let exported = buffer.export_fd().unwrap();
    assert!(exported.memory.description.dedicated, "{:?}", exported.memory.description);
    let mapped = cuda.import_buffer(exported).unwrap();
    assert_eq!(mapped.copy_to_host().unwrap(), data);
}

#[test]
fn uuid_mismatch_is_refused_naming_both_and_the_fd_is_closed_once() {
    let Some((ctx, cuda)) = devices() else { return };
    let buffer = Buffer::new(&ctx, &BufferOptions::new(1 << 20)).unwrap();
    let before = testing::open_fd_count();
    let mut exported = buffer.export_fd().unwrap();
    let bogus = Uuid([0x42; 16]);
    exported.memory.description.device.device_uuid = bogus;
    let err = cuda.import_buffer(exported).unwrap_err();
    assert!(matches!(err, Error::IncompatibleDevice(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains(&bogus.to_string()) && text.contains(&cuda.uuid().to_string()), "{text}");
    assert_eq!(testing::open_fd_count(), before, "the refused fd is closed exactly once");

    let err = CudaDevice::with_uuid(bogus).unwrap_err();
    assert!(matches!(err, Error::DeviceNotFound { api: "CUDA", .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&bogus.to_string()) && text.contains(&cuda.uuid().to_string()), "{text}");
    // The refusal did not disturb the device.
    selftest::buffer_vulkan_to_cuda(&ctx, &cuda, 1 << 16).unwrap();
}

#[test]
fn size_mismatch_is_refused_and_the_fd_is_closed_once() {
    let Some((ctx, cuda)) = devices() else { return };
    // Warm up: the first import may open driver files that stay open.
    selftest::buffer_vulkan_to_cuda(&ctx, &cuda, 1 << 16).unwrap();
    let buffer = Buffer::new(&ctx, &BufferOptions::new(4 << 20)).unwrap();
    let before = testing::open_fd_count();
    let mut exported = buffer.export_fd().unwrap();
    exported.memory.description.allocation_size += 64 << 20;
    let err = cuda.import_buffer(exported).unwrap_err();
    assert!(!err.is_unavailable(), "a wrong size is an error, not a missing feature: {err}");
    assert_eq!(testing::open_fd_count(), before, "the refused fd is closed exactly once");

    // A mapping outside the allocation is refused before the driver sees it.
    let memory = cuda.import_memory(buffer.export_fd().unwrap().memory).unwrap();
    let total = memory.description().allocation_size;
    for (offset, size) in [(0, total + 1), (total, 1), (u64::MAX, 2), (0, 0)] {
        let err = memory.map_buffer(offset, size).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{offset}+{size}: {err}");
    }
    drop(memory);
    selftest::buffer_cuda_to_vulkan(&ctx, &cuda, 1 << 16).unwrap();
}

#[test]
fn fds_that_are_not_exports_are_refused_and_closed_once() {
    let Some((ctx, cuda)) = devices() else { return };
    selftest::buffer_vulkan_to_cuda(&ctx, &cuda, 1 << 16).unwrap();
    let buffer = Buffer::new(&ctx, &BufferOptions::new(1 << 20)).unwrap();
    let before = testing::open_fd_count();
    let (read, write) = rustix::pipe::pipe().unwrap();
    drop(write);
    let mut exported = buffer.export_fd().unwrap();
    exported.memory.handle = read;
    let err = cuda.import_buffer(exported).unwrap_err();
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    assert_eq!(testing::open_fd_count(), before, "both the pipe and the replaced export fd are closed");
}

#[test]
fn no_cuda_memory_or_fd_leak_across_1000_import_free_cycles() {
    let Some((ctx, cuda)) = devices() else { return };
    let size = 16u64 << 20;
    let buffer = Buffer::new(&ctx, &BufferOptions::new(size)).unwrap();
    let cycle = || {
        let memory = cuda.import_memory(buffer.export_fd().unwrap().memory).unwrap();
        let a = memory.map_buffer(0, size).unwrap();
        let b = memory.map_buffer(size / 2, size / 2).unwrap();
        assert_eq!(a.len() as u64 + b.len() as u64, size + size / 2);
    };
    for _ in 0..10 {
        cycle();
    }
    let (free_before, _) = cuda.mem_get_info().unwrap();
    let fds_before = testing::open_fd_count();
    for _ in 0..1000 {
        cycle();
    }
    cuda.check_deferred().unwrap();
    let (free_after, _) = cuda.mem_get_info().unwrap();
    assert_eq!(testing::open_fd_count(), fds_before, "fds leaked");
    // One buffer's worth of slack for the driver's own bookkeeping; a leak of the imports or
    // mappings would be 1,000 times that.
    assert!(
        free_after + size >= free_before,
        "CUDA free memory fell from {free_before} to {free_after} over 1,000 cycles"
    );
}

#[test]
fn kernels_launched_through_cudarc_read_and_write_imported_memory() {
    use lava_flow::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
    use lava_flow::cuda::cudarc::nvrtc::Ptx;

    let Some((ctx, cuda)) = devices() else { return };
    let words = 1usize << 20;
    let mut buffer = Buffer::new(&ctx, &BufferOptions::new(words as u64 * 4)).unwrap();
    let input: Vec<u32> = (0..words as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    let bytes: Vec<u8> = input.iter().flat_map(|w| w.to_ne_bytes()).collect();
    buffer.write(0, &bytes).unwrap();
    let mut mapped = cuda.import_buffer(buffer.export_fd().unwrap()).unwrap().cast::<u32>().unwrap();
    assert_eq!(mapped.len(), words);

    let module = cuda.context().load_module(Ptx::from_src(lava_flow::cuda::KERNELS_PTX)).unwrap();
    let f = module.load_function("lf_mul3_add").unwrap();
    let stream = cuda.stream();
    let (n, add) = (words as u32, 7u32);
    let mut launch = stream.launch_builder(&f);
    launch.arg(&mut mapped).arg(&n).arg(&add);
    // SAFETY: lf_mul3_add takes (u32* x, u32 n, u32 add), the argument types pushed in order; it
    // touches x[0..n) only, and `mapped` holds n words; the stream is synchronised before `mapped`
    // is read or dropped.
    unsafe { launch.launch(LaunchConfig::for_num_elems(n)) }.unwrap();
    stream.synchronize().unwrap();

    // cudarc's copies take the buffer as DevicePtr too.
    let through_cudarc: Vec<u32> = stream.clone_dtoh(&mapped).unwrap();
    let from_vulkan = buffer.read(0, words as u64 * 4).unwrap();
    for (i, w) in input.iter().enumerate() {
        let want = w.wrapping_mul(3).wrapping_add(add);
        assert_eq!(through_cudarc[i], want, "word {i} through cudarc");
        assert_eq!(u32::from_ne_bytes(from_vulkan[i * 4..i * 4 + 4].try_into().unwrap()), want, "word {i} in Vulkan");
    }
    let mut host = vec![5u32; words];
    stream.memcpy_htod(&host, &mut mapped).unwrap();
    stream.synchronize().unwrap();
    mapped.copy_to_host_into(&mut host).unwrap();
    assert!(host.iter().all(|w| *w == 5));
}
