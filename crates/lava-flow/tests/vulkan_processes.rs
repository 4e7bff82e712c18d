//! Vulkan memory shared between two real processes: the fd travels by SCM_RIGHTS over a Unix
//! socket or by inheritance, the description as JSON. Each test re-runs itself as the child.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};

use common::{child_role, inheritable, pattern, run_child, take_inherited, vulkan};
use lava_flow::ipc::fd_passing::{recv_exact_with_fds, send_with_fds};
use lava_flow::raw_gpu_handle::{
    BufferDescription, BufferHandle, MemoryDescription, MemoryHandle, TextureDescription, TextureHandle,
};
use lava_flow::vulkan::MemoryKind;
use lava_flow::{Buffer, BufferOptions, Image, ImageOptions, SharedHostMemory};

fn socket_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("lava-flow-test-{tag}-{}.sock", std::process::id()))
}

/// Sends a JSON header and one fd.
fn send(stream: &UnixStream, header: &serde_json::Value, fd: std::os::fd::BorrowedFd<'_>) {
    let bytes = serde_json::to_vec(header).unwrap();
    let len = (bytes.len() as u32).to_le_bytes();
    send_with_fds(stream.as_fd(), &len, &[fd]).unwrap();
    send_with_fds(stream.as_fd(), &bytes, &[]).unwrap();
}

fn recv(stream: &UnixStream) -> (serde_json::Value, std::os::fd::OwnedFd) {
    let mut len = [0u8; 4];
    let mut fds = recv_exact_with_fds(stream.as_fd(), &mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    fds.extend(recv_exact_with_fds(stream.as_fd(), &mut body).unwrap());
    assert_eq!(fds.len(), 1, "exactly one fd arrives with the description");
    (serde_json::from_slice(&body).unwrap(), fds.pop().unwrap())
}

fn buffer_header(e: &lava_flow::raw_gpu_handle::ExportedBuffer) -> serde_json::Value {
    serde_json::json!({ "memory": e.memory.description, "buffer": e.buffer })
}

fn buffer_from(header: serde_json::Value, fd: std::os::fd::OwnedFd) -> lava_flow::raw_gpu_handle::ExportedBuffer {
    let description: MemoryDescription = serde_json::from_value(header["memory"].clone()).unwrap();
    let buffer: BufferDescription = serde_json::from_value(header["buffer"].clone()).unwrap();
    BufferHandle::new(MemoryHandle::new(fd, description), buffer)
}

const SIZE: usize = 256 * 1024;

#[test]
fn buffer_between_processes_over_scm_rights() {
    if child_role().as_deref() == Some("scm-importer") {
        let ctx = vulkan().expect("the parent found Vulkan, so must the child");
        let stream = UnixStream::connect(std::env::var("LAVA_FLOW_TEST_SOCKET").unwrap()).unwrap();
        let (header, fd) = recv(&stream);
        let mut imported = Buffer::import(&ctx, buffer_from(header, fd)).unwrap();
        assert_eq!(imported.read(0, SIZE as u64).unwrap(), pattern(SIZE, 10), "child sees the parent's bytes");
        imported.write(0, &pattern(SIZE, 11)).unwrap();
        (&stream).write_all(b"done").unwrap();
        return;
    }
    let Some(ctx) = vulkan() else { return };
    let mut buffer = Buffer::new(&ctx, &BufferOptions::new(SIZE as u64)).unwrap();
    buffer.write(0, &pattern(SIZE, 10)).unwrap();
    let path = socket_path("scm");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let path_text = path.to_string_lossy().into_owned();
    let child = std::thread::spawn(move || {
        run_child("buffer_between_processes_over_scm_rights", "scm-importer", &[("LAVA_FLOW_TEST_SOCKET", path_text)])
    });
    let (stream, _) = listener.accept().unwrap();
    let exported = buffer.export_fd().unwrap();
    send(&stream, &buffer_header(&exported), exported.memory.handle.as_fd());
    drop(exported);
    let mut done = [0u8; 4];
    (&stream).read_exact(&mut done).unwrap();
    child.join().unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(buffer.read(0, SIZE as u64).unwrap(), pattern(SIZE, 11), "parent sees the child's bytes");
}

#[test]
fn buffer_between_processes_by_inherited_fd() {
    if child_role().as_deref() == Some("inherit-importer") {
        let ctx = vulkan().expect("the parent found Vulkan, so must the child");
        let header: serde_json::Value = serde_json::from_str(&std::env::var("LAVA_FLOW_TEST_HEADER").unwrap()).unwrap();
        let fd = take_inherited("LAVA_FLOW_TEST_FD");
        let imported = Buffer::import(&ctx, buffer_from(header, fd)).unwrap();
        assert_eq!(imported.read(0, SIZE as u64).unwrap(), pattern(SIZE, 12));
        imported.fill(0xDEAD_BEEF).unwrap();
        return;
    }
    let Some(ctx) = vulkan() else { return };
    let mut buffer = Buffer::new(&ctx, &BufferOptions::new(SIZE as u64)).unwrap();
    buffer.write(0, &pattern(SIZE, 12)).unwrap();
    let exported = buffer.export_fd().unwrap();
    let (inherited, n) = inheritable(&exported.memory.handle);
    run_child(
        "buffer_between_processes_by_inherited_fd",
        "inherit-importer",
        &[("LAVA_FLOW_TEST_FD", n.to_string()), ("LAVA_FLOW_TEST_HEADER", buffer_header(&exported).to_string())],
    );
    drop(inherited);
    assert!(buffer.read(0, SIZE as u64).unwrap().chunks(4).all(|c| c == 0xDEAD_BEEFu32.to_ne_bytes()));
}

#[test]
fn optimal_image_between_processes() {
    let options = ImageOptions::d2(lava_flow::raw_gpu_handle::TextureFormat::Rgba8Unorm, 40, 30);
    let size = 40 * 30 * 4;
    if child_role().as_deref() == Some("image-importer") {
        let ctx = vulkan().expect("the parent found Vulkan, so must the child");
        let stream = UnixStream::connect(std::env::var("LAVA_FLOW_TEST_SOCKET").unwrap()).unwrap();
        let (header, fd) = recv(&stream);
        let description: MemoryDescription = serde_json::from_value(header["memory"].clone()).unwrap();
        let texture: TextureDescription = serde_json::from_value(header["texture"].clone()).unwrap();
        let image = Image::import(&ctx, TextureHandle::new(MemoryHandle::new(fd, description), texture)).unwrap();
        assert_eq!(image.download().unwrap(), pattern(size, 20));
        image.upload(&pattern(size, 21)).unwrap();
        (&stream).write_all(b"done").unwrap();
        return;
    }
    let Some(ctx) = vulkan() else { return };
    let image = Image::new(&ctx, &options).unwrap();
    image.upload(&pattern(size, 20)).unwrap();
    let path = socket_path("image");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let path_text = path.to_string_lossy().into_owned();
    let child = std::thread::spawn(move || {
        run_child("optimal_image_between_processes", "image-importer", &[("LAVA_FLOW_TEST_SOCKET", path_text)])
    });
    let (stream, _) = listener.accept().unwrap();
    let exported = image.export_fd().unwrap();
    let header = serde_json::json!({ "memory": exported.memory.description, "texture": exported.texture });
    send(&stream, &header, exported.memory.handle.as_fd());
    let mut done = [0u8; 4];
    (&stream).read_exact(&mut done).unwrap();
    child.join().unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(image.download().unwrap(), pattern(size, 21));
}

#[test]
fn host_memory_gpu_write_read_by_another_process_and_back() {
    const N: usize = 64 * 1024;
    match child_role().as_deref() {
        Some("mmap-reader") => {
            // No Vulkan here at all: the other process only maps the memfd.
            let fd = take_inherited("LAVA_FLOW_TEST_FD");
            let size: u64 = std::env::var("LAVA_FLOW_TEST_SIZE").unwrap().parse().unwrap();
            let mut view = SharedHostMemory::from_fd(fd, size).unwrap();
            let filled = view.read(0, N).unwrap();
            assert!(filled.chunks(4).all(|c| c == 0x0BAD_F00Du32.to_ne_bytes()), "GPU fill seen by mmap");
            view.write(0, &pattern(N, 30)).unwrap();
            return;
        }
        Some(other) => panic!("unknown child role {other}"),
        None => {}
    }
    let Some(ctx) = vulkan() else { return };
    let buffer = match Buffer::new(&ctx, &BufferOptions::new(N as u64).memory(MemoryKind::SharedHost)) {
        Ok(b) => b,
        Err(e) => {
            return lava_flow_diag::testing::skip_refused("vulkan", "vkGetPhysicalDeviceExternalBufferProperties", e)
        }
    };
    buffer.fill(0x0BAD_F00D).unwrap();
    let exported = buffer.export_fd().unwrap();
    let (inherited, n) = inheritable(&exported.memory.handle);
    run_child(
        "host_memory_gpu_write_read_by_another_process_and_back",
        "mmap-reader",
        &[
            ("LAVA_FLOW_TEST_FD", n.to_string()),
            ("LAVA_FLOW_TEST_SIZE", exported.memory.description.allocation_size.to_string()),
        ],
    );
    drop(inherited);
    // The other process's CPU writes, copied on the GPU into device memory.
    let device = Buffer::new(&ctx, &BufferOptions::new(N as u64)).unwrap();
    buffer.copy_to(&device).unwrap();
    assert_eq!(device.read(0, N as u64).unwrap(), pattern(N, 30), "GPU copy reads what the other process wrote");
}
