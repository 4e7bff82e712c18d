//! The Python client printed in docs/PROTOCOL.md, run as written against a live server, and its
//! parser fed every kind of object description. Skips where python3 is missing.

mod ipc_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use ipc_support::{pattern_bytes, TempDir};
use lava_flow::ipc::shm;
use lava_flow::ipc::wire::{encode, Message, NamedDescription, ObjectDescription, HEADER_LEN};
use lava_flow::ipc::{NamedObject, Server, ServerConfig};
use lava_flow::raw_gpu_handle::{
    AllocationId, BufferDescription, BufferHandle, DeviceIdentity, Extent3d, FenceDescription, FenceHandleKind,
    MemoryDescription, MemoryHandleKind, MemoryProperties, PlaneLayout, SemaphoreDescription, SemaphoreHandleKind,
    SemaphoreKind, TextureDescription, TextureDimension, TextureFormat, TextureHandle, TextureTiling, TextureUsage,
    Uuid,
};
use lava_flow::vulkan::MemoryLocation;
use lava_flow_diag::pattern::{serve_pattern, ServeMemory, ServeOptions, PATTERN_NAME};
use serde_json::Value;

/// The first ```python block after the Python heading of docs/PROTOCOL.md, written to `dir`.
fn write_client(dir: &Path) -> PathBuf {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/PROTOCOL.md")).unwrap();
    let section = doc.split_once("## A client in Python").expect("PROTOCOL.md has the Python section").1;
    let code = section.split_once("```python\n").unwrap().1.split_once("```").unwrap().0;
    let path = dir.join("client.py");
    std::fs::write(&path, code).unwrap();
    path
}

fn python() -> Option<&'static str> {
    let ok = Command::new("python3").arg("-c").arg("import socket; socket.recv_fds").output().ok()?;
    ok.status.success().then_some("python3")
}

fn run_python(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("python3").args(args).env("PYTHONPATH", dir).current_dir(dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn the_documented_python_client_reads_a_live_server() {
    if python().is_none() {
        return lava_flow_diag::testing::skip(
            "python",
            "python3 (3.9 or later, with socket.recv_fds) is not installed",
        );
    }
    let dir = TempDir::new("python", 0o700);
    let client = write_client(dir.path());
    let socket = dir.path().join("server.sock");
    let server = Server::bind(&socket, ServerConfig::default()).unwrap();
    let mut memory = shm::create(1 << 16).unwrap();
    memory.write(0, &pattern_bytes(3, 1 << 16)).unwrap();
    server.publish(NamedObject::new("frames", shm::export(&memory).unwrap())).unwrap();
    let buffer =
        BufferHandle::new(shm::export(&memory).unwrap(), BufferDescription { offset: 256, size: 1024, alignment: 256 });
    server.publish(NamedObject::new("buffer", buffer)).unwrap();
    let texture = TextureDescription {
        format: TextureFormat::Rgba16Float,
        dimension: TextureDimension::D2Array,
        extent: Extent3d { width: 8, height: 4, depth: 1 },
        array_layers: 3,
        tiling: TextureTiling::Linear { row_pitch: 64, array_pitch: 256, depth_pitch: 0 },
        usage: TextureUsage { sampled: true, storage: true, color_attachment: false, transfer: true },
        offset: 4096,
        size: 768,
    };
    server.publish(NamedObject::new("image", TextureHandle::new(shm::export(&memory).unwrap(), texture))).unwrap();
    let path = socket.to_str().unwrap();

    let (ok, out, err) = run_python(dir.path(), &[client.to_str().unwrap(), path]);
    assert!(ok, "python client failed: {err}");
    let objects: Value = serde_json::from_str(&out).unwrap();
    let first16: String = pattern_bytes(3, 16).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(objects[0]["name"], "frames");
    assert_eq!(objects[0]["kind"], "memory");
    assert_eq!(objects[0]["memory"]["handle_kind"], "host-memfd");
    assert_eq!(objects[0]["memory"]["allocation_size"], 1 << 16);
    assert_eq!(objects[0]["memory"]["memory_properties"], 6);
    assert_eq!(objects[0]["first_bytes"], first16, "python mapped the same pages");
    assert_eq!(objects[1]["kind"], "buffer");
    assert_eq!(
        (&objects[1]["offset"], &objects[1]["size"], &objects[1]["alignment"]),
        (&256.into(), &1024.into(), &256.into())
    );
    let t = &objects[2]["texture"];
    assert_eq!(objects[2]["kind"], "texture");
    assert_eq!(t["format"], "rgba16float");
    assert_eq!(t["dimension"], "2d-array");
    assert_eq!(t["extent"], serde_json::json!([8, 4, 1]));
    assert_eq!((&t["array_layers"], &t["usage"], &t["tiling"]), (&3.into(), &0b1011.into(), &"linear".into()));
    assert_eq!(
        (&t["row_pitch"], &t["array_pitch"], &t["offset"], &t["size"]),
        (&64.into(), &256.into(), &4096.into(), &768.into())
    );

    let (ok, out, err) = run_python(dir.path(), &[client.to_str().unwrap(), path, "buffer"]);
    assert!(ok, "{err}");
    let objects: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(objects.as_array().unwrap().len(), 1);
    assert_eq!(objects[0]["name"], "buffer");

    let (ok, _, err) = run_python(dir.path(), &[client.to_str().unwrap(), path, "missing"]);
    assert!(!ok && err.contains("server error 5"), "{err}");
    assert!(server.wait_idle(std::time::Duration::from_secs(10)));
    assert_eq!(server.stats().requests_served, 2);
}

#[test]
fn the_documented_python_parser_reads_every_object_kind() {
    if python().is_none() {
        return lava_flow_diag::testing::skip(
            "python",
            "python3 (3.9 or later, with socket.recv_fds) is not installed",
        );
    }
    let dir = TempDir::new("python-parse", 0o700);
    write_client(dir.path());
    let device = DeviceIdentity { device_uuid: Uuid([0xab; 16]), driver_uuid: Uuid([0xcd; 16]), luid: Some([7; 8]) };
    let memory = MemoryDescription {
        handle_kind: MemoryHandleKind::OpaqueFd,
        allocation_size: 1 << 30,
        memory_type_index: 5,
        memory_properties: MemoryProperties::DEVICE_LOCAL,
        dedicated: true,
        device,
        allocation_id: Some(AllocationId(u128::MAX - 1)),
    };
    let drm = TextureDescription {
        format: TextureFormat::R8Unorm,
        dimension: TextureDimension::D2,
        extent: Extent3d { width: 640, height: 480, depth: 1 },
        array_layers: 1,
        tiling: TextureTiling::DrmModifier {
            modifier: 0x0100_0000_0000_0001,
            planes: vec![
                PlaneLayout { offset: 0, size: 307_200, row_pitch: 640 },
                PlaneLayout { offset: 307_200, size: 153_600, row_pitch: 640 },
            ],
        },
        usage: TextureUsage::default(),
        offset: 0,
        size: 460_800,
    };
    let objects = vec![
        NamedDescription { name: "dev".into(), description: ObjectDescription::Memory(memory) },
        NamedDescription { name: "nv12".into(), description: ObjectDescription::Texture { memory, texture: drm } },
        NamedDescription {
            name: "timeline".into(),
            description: ObjectDescription::Semaphore(SemaphoreDescription {
                kind: SemaphoreKind::Timeline,
                handle_kind: SemaphoreHandleKind::OpaqueFd,
                device,
            }),
        },
        NamedDescription {
            name: "fence".into(),
            description: ObjectDescription::Fence(FenceDescription { handle_kind: FenceHandleKind::SyncFd, device }),
        },
    ];
    let bytes = encode(&Message::Objects(objects)).unwrap();
    std::fs::write(dir.path().join("payload.bin"), &bytes[HEADER_LEN..]).unwrap();
    // The u128 id goes back as text: JSON numbers that large lose digits in serde_json.
    let script = "import client, json\n\
                  objs = client.objects(open('payload.bin', 'rb').read(), [3, 4, 5, 6])\n\
                  objs[0]['memory']['allocation_id'] = str(objs[0]['memory']['allocation_id'])\n\
                  print(json.dumps(objs))";
    let (ok, out, err) = run_python(dir.path(), &["-c", script]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let m = &v[0]["memory"];
    assert_eq!(
        (&m["handle_kind"], &m["dedicated"], &m["memory_type_index"]),
        (&"opaque-fd".into(), &true.into(), &5.into())
    );
    assert_eq!(m["allocation_id"], (u128::MAX - 1).to_string());
    assert_eq!(m["device"]["device_uuid"], "ab".repeat(16));
    assert_eq!(m["device"]["driver_uuid"], "cd".repeat(16));
    assert_eq!(m["device"]["luid"], "07".repeat(8));
    let t = &v[1]["texture"];
    assert_eq!((&t["tiling"], &t["modifier"]), (&"drm-modifier".into(), &0x0100_0000_0000_0001u64.into()));
    assert_eq!(t["planes"], serde_json::json!([[0, 307_200, 640], [307_200, 153_600, 640]]));
    assert_eq!(
        (&v[2]["kind"], &v[2]["timeline"], &v[2]["sync_fd"]),
        (&"semaphore".into(), &true.into(), &false.into())
    );
    assert_eq!((&v[3]["kind"], &v[3]["sync_fd"]), (&"fence".into(), &true.into()));
    assert_eq!(v[3]["fd"], 6, "object i is paired with fd i");
}

/// The Python client against `serve_pattern`'s shared host memory (`lava-flow serve --location
/// shared-host`): the descriptions carry no device and no memory type, as the client checks.
#[test]
fn the_documented_python_client_reads_served_shared_host_memory() {
    if python().is_none() {
        eprintln!("SKIPPED: python3 (3.9 or later, with socket.recv_fds) is not installed");
        return;
    }
    let Some(ctx) = lava_flow_diag::testing::or_skip("vulkan", lava_flow::VulkanContext::new()) else { return };
    let dir = TempDir::new("python-shared-host", 0o700);
    let client = write_client(dir.path());
    let socket = dir.path().join("serve.sock");
    let options = ServeOptions {
        socket: socket.clone(),
        size: 1 << 16,
        memory: ServeMemory::Vulkan(MemoryLocation::SharedHost { device_id: ctx.info().index }),
        image: None,
        config: ServerConfig::default(),
    };
    let Some(served) = lava_flow_diag::testing::or_skip("vulkan", serve_pattern(&options)) else { return };
    let (ok, out, err) = run_python(dir.path(), &[client.to_str().unwrap(), socket.to_str().unwrap(), PATTERN_NAME]);
    assert!(ok, "python client failed: {err}");
    let objects: Value = serde_json::from_str(&out).unwrap();
    let m = &objects[0]["memory"];
    assert_eq!(
        (&m["handle_kind"], &m["memory_type_index"], &m["memory_properties"]),
        (&"host-memfd".into(), &0.into(), &6.into())
    );
    assert_eq!(m["device"]["device_uuid"], "00".repeat(16));
    let first16: String = lava_flow_diag::pattern::pattern_bytes(16).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(objects[0]["first_bytes"], first16);
    drop(served);
}

/// `client.py SOCKET NAME MILLISECONDS` sends WAIT: it gets the object once it is published.
#[test]
fn the_documented_python_client_waits_for_a_name() {
    if python().is_none() {
        eprintln!("SKIPPED: python3 (3.9 or later, with socket.recv_fds) is not installed");
        return;
    }
    let dir = TempDir::new("python-wait", 0o700);
    let client = write_client(dir.path());
    let socket = dir.path().join("server.sock");
    let server = Server::bind(&socket, ServerConfig::default()).unwrap();
    let waiter = Command::new("python3")
        .args([client.to_str().unwrap(), socket.to_str().unwrap(), "late", "20000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(server.wait_for(std::time::Duration::from_secs(10), |s| s.connections_active == 1).1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let memory = shm::create(4096).unwrap();
    server.publish(NamedObject::new("late", shm::export(&memory).unwrap())).unwrap();
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let objects: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(objects[0]["name"], "late");
    // A wait that runs out is not-found (code 5).
    let (ok, _, err) = run_python(dir.path(), &[client.to_str().unwrap(), socket.to_str().unwrap(), "never", "100"]);
    assert!(!ok && err.contains("server error 5"), "{err}");
}

/// A server that hands out an unsealed memfd, or one smaller than described: the Python client
/// refuses to map it (mapping it would let the owner kill the client with SIGBUS).
#[test]
fn the_documented_python_client_checks_seals_and_size_before_mapping() {
    use rustix::fs::{MemfdFlags, SealFlags};
    if python().is_none() {
        eprintln!("SKIPPED: python3 (3.9 or later, with socket.recv_fds) is not installed");
        return;
    }
    let dir = TempDir::new("python-seals", 0o700);
    let client = write_client(dir.path());
    for (what, seals, real, described, says) in [
        ("unsealed", SealFlags::empty(), 8192, 8192, "not sealed against shrinking"),
        ("short", SealFlags::SHRINK | SealFlags::GROW, 4096, 1 << 20, "fewer than"),
        ("good", SealFlags::SHRINK | SealFlags::GROW, 8192, 8192, ""),
    ] {
        let socket = dir.path().join(format!("{what}.sock"));
        let fd = rustix::fs::memfd_create(what, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, real).unwrap();
        if !seals.is_empty() {
            rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        }
        let mut description = shm::export(&shm::create(4096).unwrap()).unwrap().description;
        description.allocation_size = described;
        // lava-flow's server refuses such fds, so a hand-made one answers the GET.
        let listener = lava_flow::ipc::socket::seqpacket_socket().unwrap();
        rustix::net::bind(&listener, &lava_flow::ipc::socket::unix_address(&socket).unwrap()).unwrap();
        rustix::net::listen(&listener, 1).unwrap();
        let serving = std::thread::spawn(move || {
            use std::os::fd::AsFd;
            let conn = rustix::net::accept(&listener).unwrap();
            lava_flow::ipc::socket::recv_datagram(conn.as_fd(), 65536).unwrap().expect("a GET");
            let named = NamedDescription { name: "frames".into(), description: ObjectDescription::Memory(description) };
            let bytes = encode(&Message::Objects(vec![named])).unwrap();
            lava_flow::ipc::socket::send_with_fds(conn.as_fd(), &bytes, &[fd.as_fd()]).unwrap();
        });
        let (ok, out, err) = run_python(dir.path(), &[client.to_str().unwrap(), socket.to_str().unwrap()]);
        serving.join().unwrap();
        if says.is_empty() {
            assert!(ok, "{what}: {err}");
            assert!(out.contains("first_bytes"), "{what}: {out}");
        } else {
            assert!(!ok && err.contains("refusing to map frames") && err.contains(says), "{what}: {err}");
        }
    }
}
