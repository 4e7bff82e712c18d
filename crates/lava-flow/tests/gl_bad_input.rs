//! Bad input to the GL importer: each case gives its typed error, never a hang or crash, and
//! the fd handed over is closed exactly once (the process's fd count drops by one).
#![cfg(feature = "gl")]

mod common;

use std::os::fd::OwnedFd;

use lava_flow::error::GlCode;
use lava_flow::gl::GlContext;
use lava_flow::raw_gpu_handle::{
    ExportedBuffer, ExportedSemaphore, ExportedTexture, MemoryHandleKind, PlaneLayout, SemaphoreDescription,
    SemaphoreHandle, SemaphoreHandleKind, SemaphoreKind, TextureTiling, Uuid,
};
use lava_flow::{Buffer, BufferOptions, DriverCode, Error, Image, ImageOptions, VulkanContext};
use lava_flow_diag::testing::{self, open_fd_count};

fn setup() -> Option<(VulkanContext, GlContext, Buffer)> {
    let vk = common::vulkan()?;
    let gl = testing::or_skip("gl", GlContext::for_identity(&vk.identity()))?;
    let buffer = Buffer::new(&vk, &BufferOptions::new(65536).for_gl()).unwrap();
    Some((vk, gl, buffer))
}

/// Imports `exported` (whose fd is open now) and checks that it is refused and its fd closed once.
fn refused_buffer(gl: &GlContext, exported: ExportedBuffer) -> Error {
    let before = open_fd_count();
    let err = gl.import_buffer(exported).expect_err("the import must be refused");
    assert_eq!(open_fd_count(), before - 1, "the refused import closed its fd exactly once: {err}");
    gl.check_deferred().unwrap();
    err
}

fn with_fd(mut exported: ExportedBuffer, fd: OwnedFd) -> ExportedBuffer {
    exported.memory.handle = fd;
    exported
}

#[test]
fn uuid_mismatch_is_refused() {
    let Some((_vk, gl, buffer)) = setup() else { return };
    let mut exported = buffer.export_fd().unwrap();
    exported.memory.description.device.device_uuid = Uuid([0x42; 16]);
    let err = refused_buffer(&gl, exported);
    assert!(matches!(err, Error::IncompatibleDevice(_)), "{err}");
    assert!(err.to_string().contains("device UUIDs differ"), "{err}");

    let mut exported = buffer.export_fd().unwrap();
    exported.memory.description.device.driver_uuid = Uuid([0x43; 16]);
    let err = refused_buffer(&gl, exported);
    assert!(err.to_string().contains("driver UUIDs differ"), "{err}");

    // No GL device has that identity: opening one for it fails with the devices it found.
    let err = GlContext::for_identity(&lava_flow::raw_gpu_handle::DeviceIdentity {
        device_uuid: Uuid([0x42; 16]),
        driver_uuid: Uuid([0x43; 16]),
        luid: None,
    })
    .expect_err("no such GL device");
    assert!(matches!(err, Error::DeviceNotFound { api: "OpenGL", .. }), "{err}");
    assert!(err.to_string().contains(&gl.identity().device_uuid.to_string()), "it lists what exists: {err}");
}

#[test]
fn wrong_sizes_are_refused() {
    let Some((_vk, gl, buffer)) = setup() else { return };
    // An allocation larger than the fd holds.
    let mut exported = buffer.export_fd().unwrap();
    exported.memory.description.allocation_size = 1 << 30;
    let err = refused_buffer(&gl, exported);
    // lava-flow refuses it up front where the fd has a size (llvmpipe's memfd); a driver's own fd
    // (NVIDIA) is refused by glImportMemoryFdEXT.
    assert!(matches!(err, Error::InvalidArgument { .. } | Error::InvalidHandle { .. } | Error::Api { .. }), "{err}");
    // A buffer that does not fit its allocation.
    let mut exported = buffer.export_fd().unwrap();
    exported.buffer.size = exported.memory.description.allocation_size + 1;
    let err = refused_buffer(&gl, exported);
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let mut exported = buffer.export_fd().unwrap();
    exported.buffer.offset = u64::MAX - 4;
    let err = refused_buffer(&gl, exported);
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // Zero sizes.
    let mut exported = buffer.export_fd().unwrap();
    exported.buffer.size = 0;
    assert!(matches!(refused_buffer(&gl, exported), Error::InvalidArgument { .. }));
    let mut exported = buffer.export_fd().unwrap();
    exported.memory.description.allocation_size = 0;
    assert!(matches!(refused_buffer(&gl, exported), Error::InvalidArgument { .. }));
}

/// A memfd of the right size passes lava-flow's fd checks and glImportMemoryFdEXT (Mesa reports a
/// failed import only when storage is placed); the refusal keeps GL's own error as a value.
#[test]
fn a_memfd_that_is_no_export_gives_gls_typed_code() {
    let Some((_vk, gl, buffer)) = setup() else { return };
    let exported = buffer.export_fd().unwrap();
    let memfd = rustix::fs::memfd_create("not-an-export", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, exported.memory.description.allocation_size).unwrap();
    let tampered = with_fd(exported, memfd);
    let before = open_fd_count();
    let left_open = lava_flow::fd::failed_import_fds().left_open;
    let err = gl.import_buffer(tampered).expect_err("a memfd of zeros is no export");
    let leaked = (lava_flow::fd::failed_import_fds().left_open - left_open) as usize;
    assert_eq!(open_fd_count(), before - 1 + leaked, "{err}");
    println!("memfd: {err}");
    if gl.info().renderer.contains("llvmpipe") {
        assert!(
            matches!(
                err,
                Error::Api { call: "glBufferStorageMemEXT", code: DriverCode::Gl(GlCode::OUT_OF_MEMORY), .. }
            ),
            "{err}"
        );
        assert_eq!(err.gl_code(), Some(GlCode::OUT_OF_MEMORY));
        assert!(err.to_string().contains("failed with GL_OUT_OF_MEMORY while"), "{err}");
    } else if let Some(code) = err.driver_code() {
        assert!(matches!(code, DriverCode::Gl(_) | DriverCode::GlFalse), "{err}");
    }
    gl.check_deferred().unwrap();
}

#[test]
fn foreign_fds_are_refused() {
    let Some((_vk, gl, buffer)) = setup() else { return };
    // A pipe: a driver would block reading it.
    let (read, write) = rustix::pipe::pipe().unwrap();
    drop(write);
    let err = refused_buffer(&gl, with_fd(buffer.export_fd().unwrap(), read));
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    assert!(err.to_string().contains("pipe"), "{err}");
    // A socket.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(b);
    let err = refused_buffer(&gl, with_fd(buffer.export_fd().unwrap(), OwnedFd::from(a)));
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    // A regular file, even a large one.
    let path = std::env::temp_dir().join(format!("lava-flow-gl-regular-{}", std::process::id()));
    let linked = std::fs::File::create(&path).unwrap();
    linked.set_len(1 << 20).unwrap();
    let err = refused_buffer(&gl, with_fd(buffer.export_fd().unwrap(), OwnedFd::from(linked)));
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    assert!(err.to_string().contains("regular file"), "{err}");
    std::fs::remove_file(&path).ok();
    // A closed fd number: refused without closing anything.
    let file = std::fs::File::open("/dev/null").unwrap();
    let number = std::os::fd::IntoRawFd::into_raw_fd(file);
    // SAFETY: `number` is an fd this test just opened and owns, closed once here to make it stale.
    drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(number) });
    // SAFETY: deliberately breaks OwnedFd's contract (the number is closed), as a buggy caller
    // would; the import must recognise it and forget it, not close it. Each test runs in its own
    // process, so no other thread reuses the number meanwhile.
    let stale = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(number) };
    let exported = with_fd(buffer.export_fd().unwrap(), stale);
    let before = open_fd_count();
    let err = gl.import_buffer(exported).expect_err("a closed fd");
    assert!(matches!(err, Error::InvalidHandle { .. }) && err.to_string().contains("EBADF"), "{err}");
    assert_eq!(open_fd_count(), before, "nothing was closed for a number that was not open");
    // /dev/null is a character device but not an export: the driver refuses it or its storage.
    let null = std::fs::File::open("/dev/null").unwrap();
    let before = open_fd_count();
    let left_open = lava_flow::fd::failed_import_fds().left_open;
    let result = gl.import_buffer(with_fd(buffer.export_fd().unwrap(), OwnedFd::from(null)));
    let err = result.expect_err("/dev/null is not GPU memory");
    assert!(matches!(err, Error::Api { .. } | Error::InvalidHandle { .. } | Error::Unsupported { .. }), "{err}");
    // The caller's /dev/null is closed once by lava-flow; GL's copy is closed by GL (Mesa closes
    // it) or, where lava-flow cannot prove the number still its copy, left open and counted.
    let leaked = (lava_flow::fd::failed_import_fds().left_open - left_open) as usize;
    assert_eq!(open_fd_count(), before - 1 + leaked, "{err}");
    println!("/dev/null: {err}");
    gl.check_deferred().unwrap();
}

#[test]
fn handle_kinds_gl_cannot_import_are_refused() {
    let Some((_vk, gl, buffer)) = setup() else { return };
    let mut exported = buffer.export_fd().unwrap();
    exported.memory.description.handle_kind = MemoryHandleKind::DmaBuf;
    let err = refused_buffer(&gl, exported);
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("GL_HANDLE_TYPE_OPAQUE_FD_EXT"), "{err}");
}

#[test]
fn bad_texture_descriptions_are_refused() {
    let Some((vk, gl, _buffer)) = setup() else { return };
    let image =
        Image::new(&vk, &ImageOptions::d2(lava_flow::raw_gpu_handle::TextureFormat::Rgba8Unorm, 32, 32)).unwrap();
    let refused = |exported: ExportedTexture| {
        let before = open_fd_count();
        let err = gl.import_texture(exported).expect_err("refused");
        assert_eq!(open_fd_count(), before - 1, "closed once: {err}");
        err
    };
    let mut t = image.export_fd().unwrap();
    t.texture.extent.width = 0;
    assert!(matches!(refused(t), Error::InvalidArgument { .. }));
    let mut t = image.export_fd().unwrap();
    t.texture.size = t.memory.description.allocation_size * 2;
    assert!(matches!(refused(t), Error::InvalidArgument { .. }));
    let mut t = image.export_fd().unwrap();
    t.texture.tiling =
        TextureTiling::DrmModifier { modifier: 0, planes: vec![PlaneLayout { offset: 0, size: 4096, row_pitch: 128 }] };
    let err = refused(t);
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let mut t = image.export_fd().unwrap();
    t.memory.description.device.device_uuid = Uuid([7; 16]);
    assert!(matches!(refused(t), Error::IncompatibleDevice(_)));
}

#[test]
fn semaphores_gl_cannot_import_are_refused() {
    let Some((vk, gl, _buffer)) = setup() else { return };
    let semaphore = |kind, handle_kind, fd: OwnedFd| -> ExportedSemaphore {
        SemaphoreHandle::new(fd, SemaphoreDescription { kind, handle_kind, device: vk.identity() })
    };
    let refused = |s: ExportedSemaphore| {
        let before = open_fd_count();
        let err = gl.import_semaphore(s).expect_err("refused");
        assert_eq!(open_fd_count(), before - 1, "closed once: {err}");
        err
    };
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let err = refused(semaphore(SemaphoreKind::Binary, SemaphoreHandleKind::OpaqueFd, r));
    if gl.info().semaphore_fd {
        assert!(matches!(err, Error::InvalidHandle { .. }), "{err}");
    } else {
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("GL_EXT_semaphore_fd"), "{err}");
    }
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let err = refused(semaphore(SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd, r));
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let err = refused(semaphore(SemaphoreKind::Binary, SemaphoreHandleKind::SyncFd, r));
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}
