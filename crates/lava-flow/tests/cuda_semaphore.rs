//! Timeline and binary semaphores shared between Vulkan and CUDA: ordering over many rounds in
//! both directions with no host wait in between, and refused imports with fd accounting.
//! GPU only: skipped with the reason elsewhere.

mod cuda_common;

use cuda_common::{devices, export_semaphore};
use lava_flow::raw_gpu_handle::{SemaphoreHandleKind, SemaphoreKind, Uuid};
use lava_flow::Error;
use lava_flow_diag::selftest::cuda as selftest;
use lava_flow_diag::testing;

#[test]
fn timeline_orders_vulkan_then_cuda_over_1000_rounds() {
    let Some((ctx, cuda)) = devices() else { return };
    if export_semaphore(&ctx, SemaphoreKind::Timeline).is_none() {
        return;
    }
    selftest::semaphore_vulkan_to_cuda(&ctx, &cuda, SemaphoreKind::Timeline, 1000).unwrap();
}

#[test]
fn timeline_orders_cuda_then_vulkan_over_1000_rounds() {
    let Some((ctx, cuda)) = devices() else { return };
    if export_semaphore(&ctx, SemaphoreKind::Timeline).is_none() {
        return;
    }
    selftest::semaphore_cuda_to_vulkan(&ctx, &cuda, SemaphoreKind::Timeline, 1000).unwrap();
}

#[test]
fn binary_semaphores_order_both_ways_over_200_rounds() {
    let Some((ctx, cuda)) = devices() else { return };
    if export_semaphore(&ctx, SemaphoreKind::Binary).is_none() {
        return;
    }
    selftest::semaphore_vulkan_to_cuda(&ctx, &cuda, SemaphoreKind::Binary, 200).unwrap();
    selftest::semaphore_cuda_to_vulkan(&ctx, &cuda, SemaphoreKind::Binary, 200).unwrap();
}

#[test]
fn timeline_signal_from_cuda_reaches_vulkan_value() {
    let Some((ctx, cuda)) = devices() else { return };
    let Some((owner, exported)) = export_semaphore(&ctx, SemaphoreKind::Timeline) else { return };
    let imported = cuda.import_semaphore(exported).unwrap();
    assert_eq!(imported.kind(), SemaphoreKind::Timeline);
    imported.signal(cuda.stream(), 42).unwrap();
    cuda.synchronize().unwrap();
    // SAFETY: `owner` holds a live timeline semaphore of ctx's device; no external sync is needed.
    let value = unsafe { ctx.device().get_semaphore_counter_value(owner.semaphore) }.unwrap();
    assert_eq!(value, 42);
}

#[test]
fn refused_semaphore_imports_close_the_fd_once() {
    let Some((ctx, cuda)) = devices() else { return };
    let Some((_owner, exported)) = export_semaphore(&ctx, SemaphoreKind::Timeline) else { return };
    drop(cuda.import_semaphore(exported).unwrap());
    // Each case counts fds with its export open (a driver may keep files per semaphore object), and
    // expects exactly that one fd gone after the refusal.

    let Some((_owner2, mut exported)) = export_semaphore(&ctx, SemaphoreKind::Timeline) else { return };
    let bogus = Uuid([0x17; 16]);
    exported.description.device.device_uuid = bogus;
    let with_export = testing::open_fd_count();
    let err = cuda.import_semaphore(exported).unwrap_err();
    assert!(matches!(err, Error::IncompatibleDevice(_)), "{err}");
    assert!(err.to_string().contains(&bogus.to_string()), "{err}");
    assert_eq!(testing::open_fd_count(), with_export - 1);

    let Some((_owner3, mut exported)) = export_semaphore(&ctx, SemaphoreKind::Binary) else { return };
    exported.description.handle_kind = SemaphoreHandleKind::SyncFd;
    let with_export = testing::open_fd_count();
    let err = cuda.import_semaphore(exported).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert_eq!(testing::open_fd_count(), with_export - 1);

    let Some((_owner4, mut exported)) = export_semaphore(&ctx, SemaphoreKind::Timeline) else { return };
    let (read, write) = rustix::pipe::pipe().unwrap();
    drop(write);
    exported.handle = read;
    let with_export = testing::open_fd_count();
    let err = cuda.import_semaphore(exported).unwrap_err();
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    assert_eq!(testing::open_fd_count(), with_export - 1);
}
