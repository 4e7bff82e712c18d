//! A live server against real clients: other processes sharing host memory, buffers and textures;
//! malformed, oversized and fd-mismatched messages; clients that die; peers of another uid.
//! Every failure is followed by a check that the server's process holds no more fds than before
//! and that a good client is still served.

mod ipc_support;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use ipc_support::{child_command, child_role, pattern_bytes, run_ok, TempDir};
use lava_flow::ipc::shm;
use lava_flow::ipc::socket::{connect_seqpacket, recv_datagram, send_with_fds};
use lava_flow::ipc::wire::{decode, encode, ErrorCode, Message, NamedDescription, ObjectDescription, MAX_MESSAGE_LEN};
use lava_flow::ipc::{Client, NamedObject, Server, ServerConfig, SharedObject};
use lava_flow::raw_gpu_handle::{
    AllocationId, BufferDescription, BufferHandle, DeviceIdentity, ExportedBuffer, ExportedMemory, ExportedSemaphore,
    Extent3d, MemoryDescription, MemoryHandle, MemoryHandleKind, MemoryProperties, SemaphoreDescription,
    SemaphoreHandleKind, SemaphoreKind, TextureDescription, TextureDimension, TextureFormat, TextureHandle,
    TextureTiling, TextureUsage, Uuid,
};
use lava_flow::Error;
use lava_flow_diag::testing;
use rustix::fs::{MemfdFlags, SealFlags};

const SIZE: usize = 1 << 20;
const SEED: u32 = 7;
const WAIT: Duration = Duration::from_secs(10);

fn socket_env() -> std::path::PathBuf {
    std::env::var_os("LAVA_FLOW_TEST_SOCKET").expect("LAVA_FLOW_TEST_SOCKET").into()
}

fn texture_description() -> TextureDescription {
    TextureDescription {
        format: TextureFormat::Rgba8Unorm,
        dimension: TextureDimension::D2,
        extent: Extent3d { width: 64, height: 32, depth: 1 },
        array_layers: 1,
        tiling: TextureTiling::Linear { row_pitch: 512, array_pitch: 0, depth_pitch: 0 },
        usage: TextureUsage { sampled: true, storage: false, color_attachment: false, transfer: true },
        offset: 128 * 1024,
        size: 512 * 32,
    }
}

/// Host memory with the pattern, published whole, as a buffer in it and as a linear texture in it.
fn serve_shared_memory(server: &Server) -> lava_flow::SharedHostMemory {
    let mut memory = shm::create(SIZE).unwrap();
    memory.write(0, &pattern_bytes(SEED, SIZE)).unwrap();
    server.publish(NamedObject::new("memory", shm::export(&memory).unwrap())).unwrap();
    let buffer = BufferHandle::new(
        shm::export(&memory).unwrap(),
        BufferDescription { offset: 4096, size: 64 * 1024, alignment: 4096 },
    );
    server.publish(NamedObject::new("buffer", buffer)).unwrap();
    let texture = TextureHandle::new(shm::export(&memory).unwrap(), texture_description());
    server.publish(NamedObject::new("texture", texture)).unwrap();
    memory
}

fn map_memory_of(object: SharedObject) -> lava_flow::SharedHostMemory {
    let memory = match object {
        SharedObject::Memory(m) => m,
        SharedObject::Buffer(b) => b.memory,
        SharedObject::Texture(t) => t.memory,
        other => panic!("expected memory, got a {}", other.kind_name()),
    };
    shm::map_exported(memory).unwrap()
}

fn share_child() {
    let client = Client::connect(socket_env()).unwrap();
    let mut objects = client.get_all().unwrap();
    let names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["memory", "buffer", "texture"]);
    let expected = pattern_bytes(SEED, SIZE);

    let texture = objects.pop().unwrap().object;
    let ObjectDescription::Texture { texture: td, .. } = texture.description() else { panic!("not a texture") };
    assert_eq!(td, texture_description());
    let mapped = map_memory_of(texture);
    let TextureTiling::Linear { row_pitch, .. } = td.tiling else { unreachable!() };
    let row5 = td.offset as usize + 5 * row_pitch as usize;
    let row = mapped.read(row5, 64 * 4).unwrap();
    assert_eq!(row, &expected[row5..row5 + row.len()], "texture row 5 seen through the texture's own fd");

    let buffer = objects.pop().unwrap().object;
    let ObjectDescription::Buffer { buffer: bd, .. } = buffer.description() else { panic!("not a buffer") };
    let mapped = map_memory_of(buffer);
    let bytes = mapped.read(bd.offset as usize, bd.size as usize).unwrap();
    assert_eq!(bytes, &expected[bd.offset as usize..(bd.offset + bd.size) as usize]);

    let mut memory = map_memory_of(objects.pop().unwrap().object);
    let all = memory.read(0, SIZE).unwrap();
    assert!(all == expected, "the whole allocation holds the server's pattern");
    // Answer through the same pages: the parent sees this without any copy over the socket.
    memory.write(SIZE - 4096, &pattern_bytes(99, 4096)).unwrap();

    // And hand memory of our own back to the server.
    let mut own = shm::create(8192).unwrap();
    own.write(0, &pattern_bytes(1234, 8192)).unwrap();
    client.publish(&[NamedObject::new("from-child", shm::export(&own).unwrap())]).unwrap();
    println!("child: verified {} bytes through memory, buffer and texture fds and published its own", SIZE);
}

#[test]
fn two_processes_share_host_memory_buffers_and_textures() {
    if child_role().as_deref() == Some("share") {
        return share_child();
    }
    let dir = TempDir::new("share", 0o700);
    let path = dir.path().join("server.sock");
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    let memory = serve_shared_memory(&server);
    let before = testing::open_fd_count();

    let mut child = child_command("two_processes_share_host_memory_buffers_and_textures", "share");
    child.env("LAVA_FLOW_TEST_SOCKET", &path);
    run_ok(child, "the child process");

    let written = memory.read(SIZE - 4096, 4096).unwrap();
    assert_eq!(written, pattern_bytes(99, 4096), "the child's writes are visible in the parent's mapping");

    let from_child = server.remove("from-child").expect("the child published an object");
    let theirs = map_memory_of(from_child.object);
    let bytes = theirs.read(0, 8192).unwrap();
    assert_eq!(bytes, pattern_bytes(1234, 8192));
    drop(theirs);

    assert!(server.wait_idle(WAIT));
    let stats = server.stats();
    assert_eq!((stats.connections_accepted, stats.requests_served, stats.messages_rejected), (1, 2, 0), "{stats:?}");
    assert_eq!(stats.objects_sent, 3);
    assert_eq!(testing::open_fd_count(), before, "fds of the parent after the child came and went");
}

/// A memfd to attach to malformed messages: a real fd the server must close.
fn some_fd() -> OwnedFd {
    shm::export(&shm::create(4096).unwrap()).unwrap().handle
}

fn memory_description() -> ObjectDescription {
    ObjectDescription::Memory(shm::export(&shm::create(4096).unwrap()).unwrap().description)
}

fn publish_bytes(count: usize) -> Vec<u8> {
    encode(&Message::Publish(
        (0..count).map(|i| NamedDescription { name: format!("p{i}"), description: memory_description() }).collect(),
    ))
    .unwrap()
}

/// `sendmsg` without the library's limit on fds, as a hostile client would.
fn send_unchecked(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = vec![std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let sent = rustix::net::sendmsg(sock, &[std::io::IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL).unwrap();
    assert_eq!(sent, bytes.len());
}

/// Sends raw bytes with `n_fds` fresh fds on a new connection and returns the decoded reply.
fn send_raw(path: &std::path::Path, bytes: &[u8], n_fds: usize) -> Message {
    let sock = connect_seqpacket(path).unwrap();
    lava_flow::ipc::socket::set_timeouts(sock.as_fd(), Some(WAIT), Some(WAIT)).unwrap();
    let fds: Vec<OwnedFd> = (0..n_fds).map(|_| some_fd()).collect();
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    send_unchecked(sock.as_fd(), bytes, &borrowed);
    drop(fds);
    let reply = recv_datagram(sock.as_fd(), MAX_MESSAGE_LEN).unwrap().expect("a reply");
    assert!(reply.fds.is_empty(), "an error reply carries no fds");
    decode(&reply.bytes, 0).unwrap()
}

/// A header with message type 99 and no payload.
fn unknown_type() -> Vec<u8> {
    let mut bytes = encode(&Message::Ok).unwrap();
    bytes[6] = 99;
    bytes
}

fn check_good_client(path: &std::path::Path) {
    let client = Client::connect(path).unwrap();
    let memory = map_memory_of(client.get_one("memory").unwrap());
    let head = memory.read(0, 4096).unwrap();
    assert_eq!(head, pattern_bytes(SEED, 4096));
}

#[test]
fn malformed_messages_get_errors_close_their_fds_and_the_server_keeps_serving() {
    let dir = TempDir::new("malformed", 0o700);
    let path = dir.path().join("server.sock");
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    let _memory = serve_shared_memory(&server);
    let baseline = testing::open_fd_count();

    let good_publish = publish_bytes(2);
    let mut bad_version = good_publish.clone();
    bad_version[4] = 9;
    let mut bad_enum = good_publish.clone();
    bad_enum[16 + 4 + 4 + 2] = 77; // first object's memory handle kind (after "p0")
    let mut short_payload = encode(&Message::Get { name: "memory".into() }).unwrap();
    short_payload.truncate(short_payload.len() - 3);
    let mut long_length = encode(&Message::Ok).unwrap();
    long_length[8] = 100;
    let objects_from_client = {
        let m = Message::Objects(vec![NamedDescription { name: "x".into(), description: memory_description() }]);
        encode(&m).unwrap()
    };

    let cases: Vec<(&str, Vec<u8>, usize, ErrorCode)> = vec![
        ("garbage", b"GET /memory HTTP/1.1\r\n\r\n".to_vec(), 0, ErrorCode::Malformed),
        ("garbage with fds", vec![0xff; 40], 3, ErrorCode::Malformed),
        ("half a header", good_publish[..8].to_vec(), 2, ErrorCode::Malformed),
        ("truncated payload", short_payload, 0, ErrorCode::Malformed),
        ("header promises more payload", long_length, 0, ErrorCode::Malformed),
        ("oversized message", vec![0u8; MAX_MESSAGE_LEN + 1000], 0, ErrorCode::TooLarge),
        ("oversized message with fds", vec![0u8; 2 * MAX_MESSAGE_LEN], 4, ErrorCode::TooLarge),
        ("too many fds", good_publish.clone(), 70, ErrorCode::TooLarge),
        ("fewer fds than the header", good_publish.clone(), 1, ErrorCode::FdCountMismatch),
        ("more fds than the header", good_publish.clone(), 3, ErrorCode::FdCountMismatch),
        ("fds on a GET", encode(&Message::Get { name: String::new() }).unwrap(), 1, ErrorCode::FdCountMismatch),
        ("unknown version", bad_version, 2, ErrorCode::UnsupportedVersion),
        ("unknown enum value", bad_enum, 2, ErrorCode::Malformed),
        ("OBJECTS from a client", objects_from_client, 1, ErrorCode::Unexpected),
        ("ERROR from a client", encode(&Message::error(ErrorCode::Busy, "x")).unwrap(), 0, ErrorCode::Unexpected),
        ("GET of a missing name", encode(&Message::Get { name: "nope".into() }).unwrap(), 0, ErrorCode::NotFound),
        ("an empty datagram", Vec::new(), 0, ErrorCode::Malformed),
        ("an empty datagram with fds", Vec::new(), 2, ErrorCode::Malformed),
        ("unknown message type", unknown_type(), 0, ErrorCode::Unexpected),
        ("unknown message type with fds", unknown_type(), 1, ErrorCode::Unexpected),
        (
            "fds on a WAIT",
            encode(&Message::Wait { name: "memory".into(), timeout_ms: 0 }).unwrap(),
            1,
            ErrorCode::FdCountMismatch,
        ),
    ];
    let (mut rejected, mut not_found) = (0, 0);
    for (what, bytes, n_fds, code) in cases {
        let reply = send_raw(&path, &bytes, n_fds);
        match reply {
            Message::Error { code: got, ref text } => {
                assert_eq!(got, code, "{what}: {text}");
                eprintln!("{what}: {got}: {text}");
            }
            other => panic!("{what}: expected an error, got {other:?}"),
        }
        if code == ErrorCode::NotFound {
            not_found += 1;
        } else {
            rejected += 1;
        }
        assert!(server.wait_idle(WAIT), "{what}: the connection was not closed");
        assert_eq!(testing::open_fd_count(), baseline, "{what}: fds left open in the server's process");
        assert_eq!(server.objects().len(), 3, "{what}: nothing was stored");
        check_good_client(&path);
    }
    let stats = server.stats();
    assert_eq!(stats.messages_rejected, rejected, "{stats:?}");
    assert_eq!(stats.names_not_found, not_found, "not-found answers are not rejections: {stats:?}");
    // 70 fds were cut to the 64 the server receives; the kernel closed the rest.
    assert_eq!(stats.fds_closed_on_rejection, stats.fds_received, "{stats:?}");

    // Several bad messages on one connection, then a good request on the same connection.
    let client = Client::connect(&path).unwrap();
    for _ in 0..3 {
        let (reply, fds) = client.request(&Message::Publish(vec![]), &[some_fd().as_fd()]).unwrap();
        assert!(matches!(reply, Message::Error { code: ErrorCode::FdCountMismatch, .. }), "{reply:?}");
        assert!(fds.is_empty());
    }
    assert_eq!(client.get_objects("memory").unwrap().len(), 1);
    drop(client);
    assert!(server.wait_idle(WAIT));
    assert_eq!(testing::open_fd_count(), baseline);

    // A good publish is stored, keeps exactly its fds, and gives them back on removal.
    let client = Client::connect(&path).unwrap();
    let own = shm::create(4096).unwrap();
    client.publish(&[NamedObject::new("good", shm::export(&own).unwrap())]).unwrap();
    let err = client.publish(&[NamedObject::new("good", shm::export(&own).unwrap())]).unwrap_err();
    assert!(err.to_string().contains("already published"), "{err}");
    drop((client, own));
    assert!(server.wait_idle(WAIT));
    assert_eq!(testing::open_fd_count(), baseline + 1, "the stored object holds one fd");
    drop(server.remove("good"));
    assert_eq!(testing::open_fd_count(), baseline);
}

fn killed_child() {
    let role = child_role().unwrap();
    let path = socket_env();
    let sock = connect_seqpacket(&path).unwrap();
    match role.as_str() {
        // Ask for objects and never read the reply (it sits in our queue with its fds).
        "killed-after-get" => {
            send_with_fds(sock.as_fd(), &encode(&Message::Get { name: String::new() }).unwrap(), &[]).unwrap()
        }
        // Send fds with a message whose header disagrees, and never read the error.
        "killed-after-bad-publish" => {
            let fd = some_fd();
            send_with_fds(sock.as_fd(), &publish_bytes(3), &[fd.as_fd()]).unwrap();
        }
        // Connect and say nothing.
        _ => {}
    }
    println!("ready");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn clients_killed_mid_conversation_leave_nothing_behind() {
    if child_role().is_some() {
        return killed_child();
    }
    let dir = TempDir::new("killed", 0o700);
    let path = dir.path().join("server.sock");
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    let _memory = serve_shared_memory(&server);
    let baseline = testing::open_fd_count();
    for (role, stat) in
        [("killed-after-get", "served"), ("killed-after-bad-publish", "rejected"), ("killed-silent", "")]
    {
        let before = server.stats();
        let mut cmd = child_command("clients_killed_mid_conversation_leave_nothing_behind", role);
        cmd.env("LAVA_FLOW_TEST_SOCKET", &path).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let (_, handled) = server.wait_for(WAIT, |s| match stat {
            "served" => s.requests_served > before.requests_served,
            "rejected" => s.messages_rejected > before.messages_rejected,
            _ => s.connections_accepted > before.connections_accepted,
        });
        assert!(handled, "{role}: the server never saw the child");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(server.wait_idle(WAIT), "{role}: the dead client's connection is still open");
        assert_eq!(testing::open_fd_count(), baseline, "{role}: fds left open in the server's process");
        check_good_client(&path);
    }
}

#[test]
fn idle_and_surplus_clients_are_disconnected() {
    let dir = TempDir::new("idle", 0o700);
    let path = dir.path().join("server.sock");
    let config = ServerConfig { idle_timeout: Some(Duration::from_millis(200)), max_clients: 1, ..Default::default() };
    let server = Server::bind(&path, config).unwrap();
    let _memory = serve_shared_memory(&server);
    let baseline = testing::open_fd_count();

    let first = Client::connect(&path).unwrap();
    assert!(server.wait_for(WAIT, |s| s.connections_active == 1).1);
    let second = Client::connect(&path).unwrap();
    let (reply, _) = second.receive().unwrap();
    assert!(matches!(reply, Message::Error { code: ErrorCode::Busy, .. }), "{reply:?}");
    drop(second);

    let (stats, timed_out) = server.wait_for(WAIT, |s| s.idle_timeouts == 1 && s.connections_active == 0);
    assert!(timed_out, "the silent client was not disconnected: {stats:?}");
    assert_eq!(stats.connections_busy, 1);
    let err = first.get_objects("memory").unwrap_err();
    assert!(matches!(err, Error::Protocol { .. } | Error::Io { .. }), "{err}");
    drop(first);
    assert_eq!(testing::open_fd_count(), baseline);
    check_good_client(&path);
}

#[test]
fn socket_is_private_whatever_the_umask_and_paths_are_checked() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = TempDir::new("mode", 0o755);
    let path = dir.path().join("server.sock");
    // nextest runs this test alone in its process, so changing the umask affects nothing else.
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let server = Server::bind(&path, ServerConfig::default());
    rustix::process::umask(old);
    let server = server.unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, [std::ffi::OsString::from("server.sock")], "no private bind directory is left");

    let err = Server::bind(&path, ServerConfig::default()).unwrap_err();
    assert!(err.to_string().contains("another server is listening"), "{err}");
    drop(server);
    assert!(!path.exists(), "the server removes its socket file");
    // A socket file whose server is gone is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale); // the file stays, nobody listens
    assert!(path.exists());
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    check_server_answers(&server);
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    assert!(Server::bind(dir.path().join("file"), ServerConfig::default()).is_err());
    let long = dir.path().join("x".repeat(120));
    assert!(matches!(Server::bind(long, ServerConfig::default()), Err(Error::InvalidArgument { .. })));
}

fn check_server_answers(server: &Server) {
    let client = Client::connect(server.path()).unwrap();
    assert!(client.get_all().unwrap().is_empty());
}

fn other_uid_child() {
    let role = child_role().unwrap();
    assert_eq!(rustix::process::getuid().as_raw(), 65534, "the child runs as nobody");
    let client = Client::connect(socket_env()).expect("the socket's mode lets this user connect");
    match role.as_str() {
        "other-uid-refused" => {
            let err = client.get_all().unwrap_err();
            assert!(matches!(err, Error::PeerRefused { .. }), "{err}");
            assert!(err.to_string().contains("uid 65534"), "{err}");
            println!("refused as expected: {err}");
        }
        _ => {
            let memory = map_memory_of(client.get_one("memory").unwrap());
            let head = memory.read(0, 4096).unwrap();
            assert_eq!(head, pattern_bytes(SEED, 4096));
            println!("allowed uid read the memory");
        }
    }
}

#[test]
fn a_peer_of_another_uid_is_refused_by_the_credential_check() {
    if child_role().is_some() {
        return other_uid_child();
    }
    if !rustix::process::geteuid().is_root() {
        return lava_flow_diag::testing::skip("root", "running a client as another uid needs root (setpriv)");
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().find(|p| std::path::Path::new(p).exists())
    else {
        return lava_flow_diag::testing::skip("root", "setpriv is not installed (util-linux)");
    };
    // The directory and socket are open to everyone so that only the uid check can refuse.
    let dir = TempDir::new("uid", 0o755);
    let test = "a_peer_of_another_uid_is_refused_by_the_credential_check";
    for (role, allow) in [("other-uid-refused", vec![]), ("other-uid-allowed", vec![65534])] {
        let path = dir.path().join(format!("{role}.sock"));
        let config = ServerConfig { socket_mode: 0o666, allow_uids: allow, ..Default::default() };
        let server = Server::bind(&path, config).unwrap();
        let _memory = serve_shared_memory(&server);
        let baseline = testing::open_fd_count();
        let inner = child_command(test, role);
        let mut cmd = std::process::Command::new(setpriv);
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(inner.get_program())
            .args(inner.get_args())
            .env(ipc_support::ROLE, role)
            .env("LAVA_FLOW_TEST_SOCKET", &path);
        run_ok(cmd, role);
        // A refusal is counted once its connection is closed; a served client once it is gone.
        let refused = role == "other-uid-refused";
        let (stats, settled) = server.wait_for(WAIT, |s| {
            s.connections_active == 0 && if refused { s.connections_refused == 1 } else { s.connections_closed == 1 }
        });
        assert!(settled, "{role}: {stats:?}");
        if role == "other-uid-refused" {
            assert_eq!((stats.connections_refused, stats.connections_accepted), (1, 0), "{stats:?}");
            assert_eq!(stats.objects_sent, 0);
        } else {
            assert_eq!((stats.connections_refused, stats.connections_accepted, stats.objects_sent), (0, 1, 1));
        }
        assert_eq!(testing::open_fd_count(), baseline, "{role}: fds left open in the server's process");
        check_good_client(&path);
    }
}

#[test]
fn host_memory_that_could_shrink_or_is_short_is_not_mapped() {
    let before = testing::open_fd_count();
    let unsealed = rustix::fs::memfd_create("unsealed", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&unsealed, 8192).unwrap();
    let e = shm::map_sealed(unsealed, 8192).unwrap_err();
    assert!(matches!(e, Error::InvalidHandle { .. }) && e.to_string().contains("F_SEAL_SHRINK"), "{e}");

    let short = rustix::fs::memfd_create("short", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&short, 4096).unwrap();
    rustix::fs::fcntl_add_seals(&short, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    assert!(shm::map_sealed(short, 8192).is_err(), "a memfd smaller than described is refused");

    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    assert!(shm::map_sealed(pipe_r, 4096).is_err(), "a pipe is not host memory");
    drop(_pipe_w);
    assert_eq!(testing::open_fd_count(), before, "every refused fd was closed");
}

fn host_description(size: u64) -> MemoryDescription {
    MemoryDescription { allocation_size: size, ..shm::export(&shm::create(4096).unwrap()).unwrap().description }
}

fn device_description(size: u64) -> MemoryDescription {
    MemoryDescription {
        handle_kind: MemoryHandleKind::OpaqueFd,
        allocation_size: size,
        memory_type_index: 1,
        memory_properties: MemoryProperties::DEVICE_LOCAL,
        dedicated: false,
        device: DeviceIdentity { device_uuid: Uuid([0x11; 16]), driver_uuid: Uuid([0x22; 16]), luid: None },
        allocation_id: Some(AllocationId(0x5eed)),
    }
}

fn memfd(size: u64, seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

fn regular_file(size: u64) -> OwnedFd {
    let path = std::env::temp_dir().join(format!("lava-flow-server-file-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(size).unwrap();
    std::fs::remove_file(&path).unwrap();
    file.into()
}

/// The server's reply to a PUBLISH of one object with `fd`, sent on a new connection.
fn publish_raw(path: &std::path::Path, name: &str, description: ObjectDescription, fd: OwnedFd) -> Message {
    let sock = connect_seqpacket(path).unwrap();
    lava_flow::ipc::socket::set_timeouts(sock.as_fd(), Some(WAIT), Some(WAIT)).unwrap();
    let bytes = encode(&Message::Publish(vec![NamedDescription { name: name.into(), description }])).unwrap();
    send_with_fds(sock.as_fd(), &bytes, &[fd.as_fd()]).unwrap();
    drop(fd);
    let reply = recv_datagram(sock.as_fd(), MAX_MESSAGE_LEN).unwrap().expect("a reply");
    decode(&reply.bytes, reply.fds.len()).unwrap()
}

/// Host memory must be a memfd sealed against shrinking and as large as described; device memory,
/// semaphores and fences no pipe, socket or file. The server refuses the rest (`malformed`), closes
/// the fds and stores nothing; the same objects published in-process are refused too.
#[test]
fn published_fds_must_match_their_descriptions() {
    let dir = TempDir::new("fd-checks", 0o700);
    let path = dir.path().join("server.sock");
    let baseline = testing::open_fd_count();
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    let sealed = SealFlags::SHRINK | SealFlags::GROW;
    let host = |size| ObjectDescription::Memory(host_description(size));
    let device = |size| ObjectDescription::Memory(device_description(size));
    let semaphore = ObjectDescription::Semaphore(SemaphoreDescription {
        kind: SemaphoreKind::Binary,
        handle_kind: SemaphoreHandleKind::OpaqueFd,
        device: device_description(1).device,
    });
    let pipe = || -> OwnedFd { rustix::pipe::pipe().unwrap().0 };
    let socket = || -> OwnedFd { std::os::unix::net::UnixStream::pair().unwrap().0.into() };
    let cases: Vec<(&str, ObjectDescription, OwnedFd, &str)> = vec![
        ("an unsealed memfd as host memory", host(8192), memfd(8192, SealFlags::empty()), "F_SEAL_SHRINK"),
        ("a memfd sealed against growing only", host(8192), memfd(8192, SealFlags::GROW), "F_SEAL_SHRINK"),
        ("a 4 KiB memfd described as 1 MiB of host memory", host(1 << 20), memfd(4096, sealed), "fewer than"),
        ("a pipe as host memory", host(4096), pipe(), "a pipe"),
        ("a socket as host memory", host(4096), socket(), "a socket"),
        ("a regular file as host memory", host(4096), regular_file(4096), "a regular file"),
        ("/dev/null as host memory", host(4096), std::fs::File::open("/dev/null").unwrap().into(), "character"),
        ("a pipe as device memory", device(4096), pipe(), "a pipe"),
        ("a socket as device memory", device(4096), socket(), "a socket"),
        ("a regular file as device memory", device(4096), regular_file(4096), "a regular file"),
        ("a 4 KiB memfd described as 1 MiB of device memory", device(1 << 20), memfd(4096, sealed), "fewer than"),
        ("a pipe as a semaphore", semaphore.clone(), pipe(), "a pipe"),
        ("a directory as a semaphore", semaphore, std::fs::File::open("/").unwrap().into(), "a directory"),
    ];
    for (what, description, fd, says) in cases {
        let before = testing::open_fd_count();
        match publish_raw(&path, "suspect", description, fd) {
            Message::Error { code: ErrorCode::Malformed, text } => {
                assert!(text.contains("does not match its description") && text.contains(says), "{what}: {text}");
                eprintln!("{what}: {text}");
            }
            other => panic!("{what}: expected a malformed error, got {other:?}"),
        }
        assert!(server.wait_idle(WAIT), "{what}");
        assert!(server.objects().is_empty(), "{what}: nothing is stored");
        assert_eq!(testing::open_fd_count(), before - 1, "{what}: the refused fd was closed, here and there");
    }
    // What the descriptions say, the fds are: accepted.
    assert_eq!(publish_raw(&path, "host", host(8192), memfd(8192, sealed)), Message::Ok);
    assert_eq!(publish_raw(&path, "device", device(4096), memfd(8192, SealFlags::empty())), Message::Ok);
    // In-process publishes pass the same checks.
    let unsealed = MemoryHandle::new(memfd(8192, SealFlags::empty()), host_description(8192));
    let e = server.publish(NamedObject::new("local", unsealed)).unwrap_err();
    assert!(matches!(e, Error::InvalidHandle { .. }) && e.to_string().contains("F_SEAL_SHRINK"), "{e}");
    assert_eq!(server.objects().len(), 2);
    drop(server);
    assert_eq!(testing::open_fd_count(), baseline);
}

/// `Client::get::<T>` hands out the kind asked for; another kind is an error naming the object,
/// the kind asked for and the kind held, and the object's fd is closed with it.
#[test]
fn a_typed_get_names_the_kind_asked_for_and_the_kind_held() {
    let dir = TempDir::new("typed", 0o700);
    let path = dir.path().join("server.sock");
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    let memory = shm::create(8192).unwrap();
    server.publish(NamedObject::new("memory", shm::export(&memory).unwrap())).unwrap();
    let baseline = testing::open_fd_count();
    let client = Client::connect(&path).unwrap();
    for e in [
        client.get::<ExportedBuffer>("memory").map(drop).unwrap_err(),
        client.get::<ExportedSemaphore>("memory").map(drop).unwrap_err(),
    ] {
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("\"memory\"") && text.contains("the server holds a memory object"), "{text}");
        assert!(text.contains("a buffer was asked for") || text.contains("a semaphore was asked for"), "{text}");
    }
    // The right kind, with the short paths to what a reader looks at first.
    let exported = client.get::<ExportedMemory>("memory").unwrap();
    assert_eq!((exported.allocation_size(), exported.handle_kind()), (8192, MemoryHandleKind::HostMemfd));
    assert_eq!(exported.device(), &exported.description.device);
    drop(exported);
    assert!(matches!(client.get::<SharedObject>("memory").unwrap(), SharedObject::Memory(_)));
    // The fds of the refused objects were closed with them.
    drop(client);
    assert!(server.wait_idle(WAIT));
    assert_eq!(testing::open_fd_count(), baseline, "fds of objects of the wrong kind were left open");
}

/// Objects already held and a new PUBLISH must describe one allocation id alike; a contradicting
/// one is refused, so every later `GET ""` stays a message a validating client accepts.
#[test]
fn a_publish_that_contradicts_a_held_description_is_refused() {
    let dir = TempDir::new("consistent", 0o700);
    let path = dir.path().join("server.sock");
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    let memory = shm::create(1 << 20).unwrap();
    let described = |size| {
        MemoryHandle::new(
            shm::export(&memory).unwrap().handle,
            MemoryDescription { allocation_id: Some(AllocationId(42)), ..host_description(size) },
        )
    };
    let client = Client::connect(&path).unwrap();
    client.publish(&[NamedObject::new("a", described(1 << 20))]).unwrap();
    // The same allocation again, described alike: fine.
    client.publish(&[NamedObject::new("again", described(1 << 20))]).unwrap();
    let e = client.publish(&[NamedObject::new("b", described(1 << 19))]).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("malformed") && text.contains("\"a\"") && text.contains("\"b\""), "{text}");
    let e = server.publish(NamedObject::new("b", described(1 << 19))).unwrap_err();
    assert!(e.to_string().contains("different descriptions"), "{e}");
    let all = client.get_all().expect("GET \"\" decodes");
    assert_eq!(all.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["a", "again"]);
}

/// Polling with `GET` for a name not published yet is not misbehaviour: 40 not-found answers on
/// one connection, then the name appears and the same connection gets it. An empty datagram on
/// that connection is answered with an error, and the connection goes on.
#[test]
fn a_client_polling_for_a_name_is_not_dropped() {
    let dir = TempDir::new("poll", 0o700);
    let path = dir.path().join("server.sock");
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    let client = Client::connect(&path).unwrap();
    for i in 0..40 {
        let e = client.get::<ExportedMemory>("later").unwrap_err();
        assert!(e.to_string().contains("no object is named"), "poll {i}: {e}");
    }
    send_with_fds(client.socket(), &[], &[]).unwrap();
    let (reply, _) = client.receive().unwrap();
    assert!(matches!(reply, Message::Error { code: ErrorCode::Malformed, .. }), "{reply:?}");
    let memory = shm::create(4096).unwrap();
    server.publish(NamedObject::new("later", shm::export(&memory).unwrap())).unwrap();
    client.get::<ExportedMemory>("later").unwrap();
    // The server counts a reply once it is sent, so the count can trail the client's receipt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut stats = server.stats();
    while stats.requests_served < 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
        stats = server.stats();
    }
    assert_eq!((stats.names_not_found, stats.messages_rejected, stats.requests_served), (40, 1, 1), "{stats:?}");
}

/// `WAIT` answers as soon as the name is published, `not-found` when its time is up (or the
/// server's limit on one wait, after which `Client::wait_for` waits again); a client that hangs
/// up, or a server that stops, ends a wait at once.
#[test]
fn wait_answers_when_the_name_is_published() {
    let dir = TempDir::new("wait", 0o700);
    let path = dir.path().join("server.sock");
    let config = ServerConfig { max_wait: Duration::from_millis(150), ..Default::default() };
    let server = std::sync::Arc::new(Server::bind(&path, config).unwrap());
    let client = Client::connect(&path).unwrap();

    let started = std::time::Instant::now();
    let e = client.wait_for("soon", Duration::from_millis(400)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(400), "waited the whole timeout");
    // The server answered not-found at its 150 ms limit, and the client asked again.
    assert!(server.stats().names_not_found >= 2, "{:?}", server.stats());

    let memory = shm::create(4096).unwrap();
    let export = shm::export(&memory).unwrap();
    let publisher = {
        let server = server.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            server.publish(NamedObject::new("soon", export)).unwrap();
        })
    };
    let started = std::time::Instant::now();
    let object = client.wait_for("soon", WAIT).unwrap();
    let waited = started.elapsed();
    publisher.join().unwrap();
    assert!(matches!(object, SharedObject::Memory(_)));
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(5), "{waited:?}");
    // Present already: answered at once, even with a zero timeout.
    let (reply, fds) = client.request(&Message::Wait { name: "soon".into(), timeout_ms: 0 }, &[]).unwrap();
    assert!(matches!(reply, Message::Objects(ref o) if o.len() == 1) && fds.len() == 1, "{reply:?}");
    let (reply, _) = client.request(&Message::Wait { name: "never".into(), timeout_ms: 0 }, &[]).unwrap();
    assert!(matches!(reply, Message::Error { code: ErrorCode::NotFound, .. }), "{reply:?}");
    drop(client);
    assert!(server.wait_idle(WAIT));
    let rejected = server.stats().messages_rejected;
    assert_eq!(rejected, 0, "waits that ran out are not rejections");

    // A waiting client that hangs up frees its connection long before the wait would end.
    let sock = connect_seqpacket(&path).unwrap();
    send_with_fds(sock.as_fd(), &encode(&Message::Wait { name: "never".into(), timeout_ms: 60_000 }).unwrap(), &[])
        .unwrap();
    assert!(server.wait_for(WAIT, |s| s.connections_active == 1).1);
    drop(sock);
    let started = std::time::Instant::now();
    assert!(server.wait_idle(WAIT));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // Stopping the server ends a wait in progress.
    let server = std::sync::Arc::into_inner(server).unwrap();
    let long = Server::bind(dir.path().join("long.sock"), ServerConfig::default()).unwrap();
    let sock = connect_seqpacket(long.path()).unwrap();
    send_with_fds(sock.as_fd(), &encode(&Message::Wait { name: "never".into(), timeout_ms: 60_000 }).unwrap(), &[])
        .unwrap();
    assert!(long.wait_for(WAIT, |s| s.connections_active == 1).1);
    let started = std::time::Instant::now();
    drop(long);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    drop((sock, server));
}

/// Against a server from before `WAIT` (it answers the unknown message type with an error),
/// `Client::wait_for` polls with `GET` until the name is there.
#[test]
fn wait_for_polls_a_server_that_predates_wait() {
    let dir = TempDir::new("old-server", 0o700);
    let path = dir.path().join("old.sock");
    let listener = lava_flow::ipc::socket::seqpacket_socket().unwrap();
    rustix::net::bind(&listener, &lava_flow::ipc::socket::unix_address(&path).unwrap()).unwrap();
    rustix::net::listen(&listener, 1).unwrap();
    let old = std::thread::spawn(move || {
        let conn = rustix::net::accept(&listener).unwrap();
        let memory = shm::create(4096).unwrap();
        let (mut waits, mut gets) = (0, 0);
        while let Some(received) = recv_datagram(conn.as_fd(), MAX_MESSAGE_LEN).unwrap() {
            let (reply, fds) = match received.bytes.get(6) {
                Some(6) => {
                    waits += 1;
                    (Message::error(ErrorCode::Malformed, "unknown message type 6"), vec![])
                }
                _ if gets < 3 => {
                    gets += 1;
                    (Message::error(ErrorCode::NotFound, "no object is named \"x\""), vec![])
                }
                _ => {
                    gets += 1;
                    let export = shm::export(&memory).unwrap();
                    let named = NamedDescription {
                        name: "x".into(),
                        description: ObjectDescription::Memory(export.description),
                    };
                    (Message::Objects(vec![named]), vec![export.handle])
                }
            };
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            send_with_fds(conn.as_fd(), &encode(&reply).unwrap(), &borrowed).unwrap();
        }
        (waits, gets)
    });
    let client = Client::connect(&path).unwrap();
    let object = client.wait_for("x", WAIT).unwrap();
    assert!(matches!(object, SharedObject::Memory(_)));
    drop(client);
    assert_eq!(old.join().unwrap(), (1, 4), "one WAIT, then GET until the name was there");
}
