//! Bad input to the OpenCL importer: typed errors, no leak, no double close. OpenCL interop
//! exists only on the GPU machine: elsewhere these skip with the reason.
#![cfg(feature = "opencl")]

mod common;

use std::os::fd::OwnedFd;

use lava_flow::opencl::ClContext;
use lava_flow::raw_gpu_handle::{
    DeviceIdentity, ExportedBuffer, MemoryHandleKind, SemaphoreDescription, SemaphoreHandle, SemaphoreHandleKind,
    SemaphoreKind, TextureFormat, TextureTiling, Uuid,
};
use lava_flow::{Buffer, BufferOptions, Error, Image, ImageOptions, VulkanContext};
use lava_flow_diag::testing::{self, open_fd_count};

fn setup() -> Option<(VulkanContext, ClContext, Buffer)> {
    let vk = common::vulkan()?;
    let cl = testing::or_skip("opencl", ClContext::for_identity(&vk.identity()))?;
    let buffer = Buffer::new(&vk, &BufferOptions::new(1 << 16)).unwrap();
    Some((vk, cl, buffer))
}

fn refused(cl: &ClContext, exported: ExportedBuffer) -> Error {
    let before = open_fd_count();
    let err = cl.import_buffer(exported).expect_err("the import must be refused");
    assert_eq!(open_fd_count(), before - 1, "the refused import closed its fd exactly once: {err}");
    cl.check_deferred().unwrap();
    err
}

fn with_fd(mut exported: ExportedBuffer, fd: OwnedFd) -> ExportedBuffer {
    exported.memory.handle = fd;
    exported
}

#[test]
fn opencl_library_or_device_missing_is_a_typed_error() {
    // Runs everywhere: with no OpenCL (CPU machines) or no device of that identity, the error is
    // LibraryUnavailable or DeviceNotFound, never a panic.
    let nobody = DeviceIdentity { device_uuid: Uuid([0x5a; 16]), driver_uuid: Uuid([0xa5; 16]), luid: None };
    match ClContext::for_identity(&nobody) {
        Ok(cl) => panic!("no device has UUID 5a5a...: got {:?}", cl.info()),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::LibraryUnavailable { library: "libOpenCL.so.1", .. }
                        | Error::DeviceNotFound { api: "OpenCL", .. }
                ),
                "{e}"
            );
            println!("{e}");
        }
    }
}

#[test]
fn uuid_mismatch_is_refused() {
    let Some((_vk, cl, buffer)) = setup() else { return };
    let mut exported = buffer.export_fd().unwrap();
    exported.memory.description.device.device_uuid = Uuid([0x42; 16]);
    let err = refused(&cl, exported);
    assert!(matches!(err, Error::IncompatibleDevice(_) | Error::Unsupported { .. }), "{err}");
}

#[test]
fn wrong_sizes_are_refused() {
    let Some((_vk, cl, buffer)) = setup() else { return };
    let mut exported = buffer.export_fd().unwrap();
    exported.buffer.size = exported.memory.description.allocation_size + 1;
    assert!(matches!(refused(&cl, exported), Error::InvalidArgument { .. }));
    let mut exported = buffer.export_fd().unwrap();
    exported.buffer.offset = u64::MAX - 1;
    assert!(matches!(refused(&cl, exported), Error::InvalidArgument { .. }));
    if cl.info().external_memory_opaque_fd {
        // Claiming more than the allocation holds: the driver (or lava-flow's check) refuses it.
        let mut exported = buffer.export_fd().unwrap();
        exported.memory.description.allocation_size = 1 << 40;
        exported.buffer.size = 1 << 16;
        let err = refused(&cl, exported);
        assert!(
            matches!(err, Error::Api { .. } | Error::InvalidArgument { .. } | Error::InvalidHandle { .. }),
            "{err}"
        );
    }
}

#[test]
fn foreign_fds_are_refused() {
    let Some((_vk, cl, buffer)) = setup() else { return };
    if !cl.info().external_memory_opaque_fd {
        testing::skip("opencl", format!("{} cannot import memory", cl.info().name));
        return;
    }
    let (r, w) = rustix::pipe::pipe().unwrap();
    drop(w);
    let err = refused(&cl, with_fd(buffer.export_fd().unwrap(), r));
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    let path = std::env::temp_dir().join(format!("lava-flow-cl-regular-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(1 << 20).unwrap();
    let err = refused(&cl, with_fd(buffer.export_fd().unwrap(), OwnedFd::from(file)));
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    std::fs::remove_file(&path).ok();
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = refused(&cl, with_fd(buffer.export_fd().unwrap(), OwnedFd::from(a)));
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
}

#[test]
fn handle_kinds_and_image_layouts_opencl_cannot_import_are_refused() {
    let Some((vk, cl, buffer)) = setup() else { return };
    let mut exported = buffer.export_fd().unwrap();
    exported.memory.description.handle_kind = MemoryHandleKind::DmaBuf;
    assert!(matches!(refused(&cl, exported), Error::Unsupported { .. }));
    let image = Image::new(&vk, &ImageOptions::d2(TextureFormat::Rgba8Unorm, 32, 32)).unwrap();
    let mut t = image.export_fd().unwrap();
    t.texture.tiling = TextureTiling::DrmModifier { modifier: 0, planes: vec![] };
    let before = open_fd_count();
    let err = cl.import_image(t).expect_err("refused");
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert_eq!(open_fd_count(), before - 1);
    let mut t = image.export_fd().unwrap();
    t.texture.offset = 4096;
    let before = open_fd_count();
    assert!(matches!(cl.import_image(t).expect_err("refused"), Error::Unsupported { .. }));
    assert_eq!(open_fd_count(), before - 1);
}

#[test]
fn semaphores_opencl_cannot_import_are_refused() {
    let Some((vk, cl, _buffer)) = setup() else { return };
    let sem = |kind, handle_kind, fd: OwnedFd| {
        SemaphoreHandle::new(fd, SemaphoreDescription { kind, handle_kind, device: vk.identity() })
    };
    for (kind, handle_kind) in [
        (SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd),
        (SemaphoreKind::Binary, SemaphoreHandleKind::SyncFd),
        (SemaphoreKind::Binary, SemaphoreHandleKind::OpaqueFd),
    ] {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let before = open_fd_count();
        let err = cl.import_semaphore(sem(kind, handle_kind, r)).expect_err("refused");
        assert!(matches!(err, Error::Unsupported { .. } | Error::InvalidHandle { .. }), "{err}");
        assert_eq!(open_fd_count(), before - 1, "{err}");
    }
}
