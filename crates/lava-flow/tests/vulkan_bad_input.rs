//! Bad input to the Vulkan side: each case gives its typed error, and the process's fd count is
//! unchanged afterwards (nothing leaked, nothing closed twice).

mod common;

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use ash::vk;
use common::{two_devices, vulkan};
use lava_flow::error::DriverCode;
use lava_flow::raw_gpu_handle::{BufferHandle, ExportedBuffer, MemoryProperties, Uuid};
use lava_flow::vulkan::MemoryKind;
use lava_flow::{Buffer, BufferOptions, Error, Image, ImageOptions, MemoryAllocator, MemoryLocation};
use lava_flow_diag::testing::open_fd_count;

/// A real export to tamper with.
fn export(ctx: &lava_flow::VulkanContext) -> (Buffer, ExportedBuffer) {
    let buffer = Buffer::new(ctx, &BufferOptions::new(65536)).unwrap();
    let exported = buffer.export_fd().unwrap();
    (buffer, exported)
}

fn with_fd(mut exported: ExportedBuffer, fd: OwnedFd) -> ExportedBuffer {
    exported.memory.handle = fd;
    exported
}

/// Runs `import` and checks its error and the fd count. `before` is taken after the tampered
/// export was built (so its fd counts as open), and the failed import must close it.
fn refused(b: &lava_flow::VulkanContext, exported: ExportedBuffer, fd_was_open: bool) -> Error {
    let before = open_fd_count();
    let err = Buffer::import(b, exported).expect_err("the import must be refused");
    let expected = if fd_was_open { before - 1 } else { before };
    assert_eq!(open_fd_count(), expected, "the failed import closed its fd exactly once: {err}");
    err
}

#[test]
fn closed_fd_is_refused() {
    let Some((a, b)) = two_devices() else { return };
    let (_buffer, exported) = export(&a);
    let file = std::fs::File::open("/dev/null").unwrap();
    let number = file.into_raw_fd();
    // SAFETY: `number` is an fd this test just opened and owns, closed once here to make it stale.
    unsafe { libc_close(number) };
    // SAFETY: deliberately breaks OwnedFd's contract (the number is closed), as a buggy caller
    // would; the import must recognise it and forget it, not close it. Each test runs in its own
    // process, so no other thread reuses the number meanwhile.
    let stale = unsafe { OwnedFd::from_raw_fd(number) };
    let err = refused(&b, with_fd(exported, stale), false);
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    assert!(err.to_string().contains("EBADF"), "{err}");
}

unsafe fn libc_close(fd: i32) {
    // SAFETY: this function's contract: the caller owns `fd`, which is closed once, here.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

#[test]
fn regular_file_is_refused() {
    let Some((a, b)) = two_devices() else { return };
    let (_buffer, exported) = export(&a);
    let path = std::env::temp_dir().join(format!("lava-flow-regular-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let file: OwnedFd = std::fs::File::open(&path).unwrap().into();
    std::fs::remove_file(&path).unwrap();
    let err = refused(&b, with_fd(exported, file), true);
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    assert!(err.to_string().contains("regular file"), "{err}");
}

#[test]
fn pipe_is_refused() {
    let Some((a, b)) = two_devices() else { return };
    let (_buffer, exported) = export(&a);
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(writer);
    let err = refused(&b, with_fd(exported, reader), true);
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    assert!(err.to_string().contains("pipe"), "{err}");
}

#[test]
fn socket_is_refused() {
    let Some((a, b)) = two_devices() else { return };
    let (_buffer, exported) = export(&a);
    let (one, _other) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = refused(&b, with_fd(exported, one.into()), true);
    assert!(err.to_string().contains("socket"), "{err}");
}

#[test]
fn size_larger_than_the_allocation_is_refused() {
    let Some((a, b)) = two_devices() else { return };
    let (_buffer, mut exported) = export(&a);
    exported.memory.description.allocation_size *= 16;
    let err = refused(&b, exported, true);
    assert!(matches!(err, Error::InvalidArgument { .. } | Error::Vulkan { .. }), "{err}");
    // A buffer reaching past the allocation is refused before any driver call.
    let (_buffer, mut exported) = export(&a);
    exported.buffer.size = exported.memory.description.allocation_size + 1;
    let err = refused(&b, exported, true);
    assert!(err.to_string().contains("allocation holds"), "{err}");
}

/// A memfd of the right size passes lava-flow's fd checks (software drivers export memfds), so
/// the driver itself refuses it, and the error keeps the driver's `VkResult` as a value: callers
/// match on `VK_ERROR_INVALID_EXTERNAL_HANDLE` instead of parsing text.
#[test]
fn a_memfd_that_is_no_export_gives_the_drivers_typed_code() {
    let Some((a, b)) = two_devices() else { return };
    let (_buffer, exported) = export(&a);
    let size = exported.memory.description.allocation_size;
    let memfd = rustix::fs::memfd_create("not-an-export", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, size).unwrap();
    let err = refused(&b, with_fd(exported, memfd), true);
    let Some(result) = err.vk_result() else { panic!("the driver refused it, so its VkResult is kept: {err}") };
    assert_eq!(err.driver_code(), Some(DriverCode::Vulkan(result)), "{err}");
    assert!(result.as_raw() < 0, "an error code: {err}");
    if b.info().driver_name.eq_ignore_ascii_case("llvmpipe") {
        // lavapipe checks the memfd's header (Mesa's os_import_memory_fd).
        assert!(
            matches!(
                err,
                Error::Vulkan { result: vk::Result::ERROR_INVALID_EXTERNAL_HANDLE, call: "vkAllocateMemory", .. }
            ),
            "{err}"
        );
        assert_eq!(err.driver_code().unwrap().to_string(), "VK_ERROR_INVALID_EXTERNAL_HANDLE");
    }
}

#[test]
fn wrong_memory_type_is_refused() {
    let Some((a, b)) = two_devices() else { return };
    let count = b.memory_properties().memory_type_count;
    let (_buffer, mut exported) = export(&a);
    exported.memory.description.memory_type_index = count;
    let err = refused(&b, exported, true);
    assert!(err.to_string().contains("memory type"), "{err}");
    let (_buffer, mut exported) = export(&a);
    exported.memory.description.memory_properties =
        MemoryProperties(exported.memory.description.memory_properties.0 ^ 0x8);
    let err = refused(&b, exported, true);
    assert!(err.to_string().contains("properties"), "{err}");
}

/// An allocation of this process described with another (valid) memory type than its own is
/// refused before the driver: an opaque-fd import must name the exporter's type
/// (VUID-VkMemoryAllocateInfo-allocationSize-01742), and drivers do not all check it.
#[test]
fn another_memory_type_than_the_exporters_is_refused_in_the_exporting_process() {
    let Some((a, b)) = two_devices() else { return };
    let (_buffer, mut exported) = export(&a);
    let own = exported.memory.description.memory_type_index;
    let count = b.memory_properties().memory_type_count;
    exported.memory.description.memory_type_index =
        if own + 1 < count { own + 1 } else { (own + count - 1) % count.max(1) };
    if exported.memory.description.memory_type_index == own {
        exported.memory.description.memory_type_index = count; // one type only: name one past it
    }
    let err = refused(&b, exported, true);
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("01742") && err.to_string().contains(&format!("memory type {own}")), "{err}");
}

#[test]
fn another_devices_uuids_are_refused() {
    let Some((a, b)) = two_devices() else { return };
    let (_buffer, mut exported) = export(&a);
    exported.memory.description.device.device_uuid = Uuid([0x42; 16]);
    let err = refused(&b, exported, true);
    assert!(matches!(err, Error::IncompatibleDevice(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&Uuid([0x42; 16]).to_string()) && text.contains(&b.identity().device_uuid.to_string()),
        "{text}"
    );
    let (_buffer, mut exported) = export(&a);
    exported.memory.description.device.driver_uuid = Uuid([0x17; 16]);
    let err = refused(&b, exported, true);
    assert!(err.to_string().contains("driver UUIDs differ"), "{err}");
}

#[test]
fn non_dedicated_import_of_a_dedicated_allocation_is_refused() {
    let Some((a, b)) = two_devices() else { return };
    let (_buffer, exported) = export(&a);
    let BufferHandle { mut memory, .. } = exported;
    memory.description.dedicated = true;
    let before = open_fd_count();
    let err = lava_flow::vulkan::DeviceMemory::import(&b, memory, None).unwrap_err();
    assert_eq!(open_fd_count(), before - 1);
    assert!(err.to_string().contains("dedicated"), "{err}");
}

#[test]
fn zero_size_and_impossible_requests_are_refused_up_front() {
    let Some(ctx) = vulkan() else { return };
    let before = open_fd_count();
    let err = Buffer::new(&ctx, &BufferOptions::new(0)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = Buffer::new(&ctx, &BufferOptions::new(1 << 52)).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    assert!(err.to_string().contains("heap"), "{err}");
    let err = Buffer::new(&ctx, &BufferOptions::new(0).memory(MemoryKind::SharedHost)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err =
        Image::new(&ctx, &ImageOptions::d2(lava_flow::raw_gpu_handle::TextureFormat::Rgba8Unorm, 0, 4)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err =
        Image::new(&ctx, &ImageOptions::d2(lava_flow::raw_gpu_handle::TextureFormat::Rgba8Unorm, 1 << 20, 1 << 20))
            .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. } | Error::OutOfMemory { .. }), "{err}");
    assert_eq!(open_fd_count(), before);
}

#[test]
fn unsupported_requests_name_the_rule() {
    let Some(ctx) = vulkan() else { return };
    let err = Image::new(
        &ctx,
        &ImageOptions::d2(lava_flow::raw_gpu_handle::TextureFormat::Rgba8Unorm, 4, 4).memory(MemoryKind::SharedHost),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Unsupported { .. }) && err.to_string().contains("VK_EXT_external_memory_host"),
        "{err}"
    );
    let err = Buffer::new(
        &ctx,
        &BufferOptions::new(4096)
            .memory(MemoryKind::SharedHost)
            .export(Some(lava_flow::raw_gpu_handle::MemoryHandleKind::OpaqueFd)),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn unknown_device_is_a_typed_error() {
    let Some(allocator) = lava_flow_diag::testing::or_skip("vulkan", MemoryAllocator::new()) else { return };
    let err = allocator.allocate(64, MemoryLocation::SharedHost { device_id: 7 }).unwrap_err();
    assert!(matches!(err, Error::DeviceNotFound { .. }), "{err}");
    let err = lava_flow::VulkanContext::with_uuid(Uuid([9; 16])).unwrap_err();
    assert!(err.to_string().contains("lava-flow info"), "{err}");
}

#[test]
fn the_process_keeps_working_after_every_refusal() {
    let Some((a, b)) = two_devices() else { return };
    for _ in 0..3 {
        let (_buffer, mut exported) = export(&a);
        exported.memory.description.device.device_uuid = Uuid([1; 16]);
        let _ = Buffer::import(&b, exported).unwrap_err();
    }
    let (buffer, exported) = export(&a);
    buffer.fill(3).unwrap();
    let imported = Buffer::import(&b, exported).unwrap();
    assert!(imported.read(0, 64).unwrap().chunks(4).all(|c| c == 3u32.to_ne_bytes()));
}
