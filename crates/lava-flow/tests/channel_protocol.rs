//! The channel protocol at its edges, in one process: a consumer joining late, drop-oldest taking
//! back only what nobody took, metadata limits, and malformed or impossible messages from either
//! side answered with clear errors (never a crash, a hang, or a slot lost).

mod ipc_support;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use ipc_support::TempDir;
use lava_flow::channel::run::{check_pattern, fill_pattern};
use lava_flow::channel::wire::{self, ChannelMessage, FrameMessage, Hello, MemoryCode, SyncCode};
use lava_flow::channel::{Channel, ChannelOptions, Consumer, FrameMemory, Metadata, Policy, Producer};
use lava_flow::ipc::{shm, socket, wire as ipc_wire, NamedObject};
use lava_flow::Error;

fn host(slots: u32, policy: Policy) -> ChannelOptions {
    ChannelOptions {
        slots,
        frame_size: 4096,
        memory: FrameMemory::Host,
        policy,
        timeout: Duration::from_secs(5),
        ..ChannelOptions::default()
    }
}

fn send_pattern(producer: &mut Producer) -> u64 {
    let mut frame = producer.acquire().unwrap();
    let k = frame.sequence();
    let mut bytes = vec![0u8; 4096];
    fill_pattern(&mut bytes, k);
    frame.write(0, &bytes).unwrap();
    frame.send(Metadata::bytes(4096)).unwrap();
    k
}

/// Connects a consumer in another thread while this one lets the producer accept it.
fn connect(producer: &mut Producer, options: ChannelOptions) -> Consumer {
    let path = producer.path().to_path_buf();
    let want = producer.consumers() + 1;
    let t = std::thread::spawn(move || Channel::consumer(&path, options).unwrap());
    producer.wait_for_consumers(want, Duration::from_secs(5)).unwrap();
    t.join().unwrap()
}

fn check(consumer: &Consumer, k: u64) {
    let frame = consumer.recv().unwrap();
    assert_eq!(frame.sequence(), k);
    let mut bytes = vec![0u8; 4096];
    frame.read_into(0, &mut bytes).unwrap();
    check_pattern(&bytes, k).unwrap();
}

#[test]
fn a_late_consumer_starts_at_the_newest_frame() {
    let dir = TempDir::new("channel", 0o700);
    let mut producer = Channel::producer(dir.path().join("c.sock"), host(4, Policy::Block)).unwrap();
    for _ in 0..10 {
        send_pattern(&mut producer);
    }
    let consumer = connect(&mut producer, host(4, Policy::Block));
    check(&consumer, 9);
    let k = send_pattern(&mut producer);
    check(&consumer, k);
    assert_eq!(consumer.stats().dropped, 0, "frames before joining are not losses");
    producer.drain(Duration::from_secs(5)).unwrap();
    assert_eq!(producer.in_flight(), 0);
}

#[test]
fn drop_oldest_takes_back_only_frames_nobody_took() {
    let dir = TempDir::new("channel", 0o700);
    let mut producer = Channel::producer(dir.path().join("c.sock"), host(2, Policy::DropOldest)).unwrap();
    let consumer = connect(&mut producer, host(2, Policy::DropOldest));
    send_pattern(&mut producer); // 0
    let held = consumer.recv().unwrap(); // frame 0 is taken: never taken back
    send_pattern(&mut producer); // 1 in slot 2, queued
                                 // Both slots in flight: the next acquire takes back frame 1 (queued), not frame 0 (held).
    send_pattern(&mut producer); // 2
    send_pattern(&mut producer); // 3: takes back 2
    assert_eq!(producer.stats().dropped, 2);
    assert_eq!(held.sequence(), 0);
    let mut bytes = vec![0u8; 4096];
    held.read_into(0, &mut bytes).unwrap();
    check_pattern(&bytes, 0).unwrap();
    drop(held);
    // Frames 1 and 2 were taken back: the consumer skips their messages and gets 3.
    check(&consumer, 3);
    assert_eq!(consumer.stats().dropped, 2);
    // With every frame held, even drop-oldest is full.
    send_pattern(&mut producer);
    send_pattern(&mut producer);
    let a = consumer.recv().unwrap();
    let b = consumer.recv().unwrap();
    assert_eq!((a.sequence(), b.sequence()), (4, 5));
    assert!(matches!(producer.try_acquire().err().unwrap(), Error::Full { .. }));
}

#[test]
fn metadata_travels_and_limits_are_enforced() {
    let dir = TempDir::new("channel", 0o700);
    let mut producer = Channel::producer(dir.path().join("c.sock"), host(2, Policy::Block)).unwrap();
    let consumer = connect(&mut producer, host(2, Policy::Block));
    let metadata = Metadata {
        len: 64 * 4 * 4,
        dtype: wire::DType::F32,
        shape: vec![64, 4],
        strides: vec![4, 1],
        timestamp: 12345,
        user: vec![7; wire::MAX_USER_DATA],
    };
    producer.acquire().unwrap().send(metadata.clone()).unwrap();
    assert_eq!(consumer.recv().unwrap().metadata(), &metadata);
    let too_long = producer.acquire().unwrap().send(Metadata::bytes(4097)).unwrap_err();
    assert!(too_long.to_string().contains("frames hold 4096"), "{too_long}");
    let user = Metadata { user: vec![0; wire::MAX_USER_DATA + 1], ..Metadata::bytes(1) };
    assert!(producer.acquire().unwrap().send(user).unwrap_err().to_string().contains("user data"));
    // A refused send returns the frame: both slots are still there.
    let a = producer.try_acquire().unwrap();
    drop(a);
    let bad = ChannelOptions { slots: 0, ..host(2, Policy::Block) };
    let e = Channel::producer(dir.path().join("d.sock"), bad).unwrap_err();
    assert!(e.to_string().contains("slot count"), "{e}");
}

/// A raw client: reads the handshake like a consumer, then says whatever the test wants.
fn raw_consumer(producer: &mut Producer) -> OwnedFd {
    let sock = socket::connect_seqpacket(producer.path()).unwrap();
    producer.wait_for_consumers(1, Duration::from_secs(5)).unwrap();
    let hello = socket::recv_datagram(sock.as_fd(), 65536).unwrap().unwrap();
    assert!(matches!(wire::decode(&hello.bytes, u32::MAX).unwrap(), ChannelMessage::Hello(_)));
    let objects = socket::recv_datagram(sock.as_fd(), 65536).unwrap().unwrap();
    assert_eq!(objects.fds.len(), 3, "two slots and the claim words");
    sock
}

fn error_text(sock: BorrowedFd<'_>) -> String {
    socket::set_timeouts(sock, Some(Duration::from_secs(5)), None).unwrap();
    loop {
        let m = socket::recv_datagram(sock, 65536).unwrap().expect("an ERROR before the hang-up");
        match wire::decode(&m.bytes, u32::MAX) {
            Ok(ChannelMessage::Error { text }) => return text,
            Ok(_) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_consumer_sending_garbage_or_false_releases_is_disconnected_and_its_frames_freed() {
    let dir = TempDir::new("channel", 0o700);
    let mut producer = Channel::producer(dir.path().join("c.sock"), host(2, Policy::Block)).unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        ("garbage", b"hello there, producer".to_vec()),
        ("slot out of range", wire::encode(&ChannelMessage::Release { slot: 7, sequence: 0 }).unwrap()),
        ("frame not held", wire::encode(&ChannelMessage::Release { slot: 0, sequence: 99 }).unwrap()),
        ("a consumer sending END", wire::encode(&ChannelMessage::End { frames: 1 }).unwrap()),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let sock = raw_consumer(&mut producer);
        producer.acquire().unwrap().send(Metadata::bytes(8)).unwrap();
        // This frame, and from the second case on the newest earlier one (a late consumer's start).
        assert!(producer.in_flight() >= 1, "{what}");
        socket::send_with_fds(sock.as_fd(), bytes, &[]).unwrap();
        assert!(producer.drain(Duration::from_secs(5)).unwrap(), "{what}: the frame came back");
        let text = error_text(sock.as_fd());
        println!("{what}: {text}");
        assert_eq!(producer.consumers(), 0, "{what}: disconnected");
        assert_eq!(producer.in_flight(), 0, "{what}: its frame is free again");
        assert_eq!(producer.stats().consumers_broken, i as u64 + 1, "{what}");
        assert!(!text.is_empty());
    }
    // The producer goes on serving well-behaved consumers (which start at the newest frame, 3).
    let consumer = connect(&mut producer, host(2, Policy::Block));
    assert_eq!(consumer.recv().unwrap().sequence(), 3);
    let k = send_pattern(&mut producer);
    check(&consumer, k);
}

/// A fake producer: accepts one connection at `path`, sends a valid handshake over host memory,
/// then `then`.
fn fake_producer(dir: &TempDir, then: Vec<Vec<u8>>) -> (Consumer, std::thread::JoinHandle<()>) {
    let path = dir.path().join("fake.sock");
    let listener = socket::seqpacket_socket().unwrap();
    rustix::net::bind(&listener, &socket::unix_address(&path).unwrap()).unwrap();
    rustix::net::listen(&listener, 4).unwrap();
    let t = std::thread::spawn(move || {
        let conn = rustix::net::accept(&listener).unwrap();
        let hello = Hello {
            slots: 2,
            consumer: 0,
            frame_size: 4096,
            memory: MemoryCode::Host,
            sync: SyncCode::Messages,
            next_sequence: 0,
        };
        socket::send_with_fds(conn.as_fd(), &wire::encode(&ChannelMessage::Hello(hello)).unwrap(), &[]).unwrap();
        let objects: Vec<NamedObject> = vec![
            NamedObject::new("channel.slot.0", shm::export(&shm::create(4096).unwrap()).unwrap()),
            NamedObject::new("channel.slot.1", shm::export(&shm::create(4096).unwrap()).unwrap()),
            NamedObject::new("channel.claims", shm::export(&shm::create(4096).unwrap()).unwrap()),
        ];
        let descriptions = objects.iter().map(NamedObject::named_description).collect();
        let fds: Vec<BorrowedFd<'_>> = objects.iter().map(|o| o.object.fd()).collect();
        let bytes = ipc_wire::encode(&ipc_wire::Message::Objects(descriptions)).unwrap();
        socket::send_with_fds(conn.as_fd(), &bytes, &fds).unwrap();
        for m in then {
            socket::send_with_fds(conn.as_fd(), &m, &[]).unwrap();
        }
        // Keep the connection open until the consumer is done with it.
        let _ = socket::recv_datagram(conn.as_fd(), 64);
    });
    let consumer =
        Channel::consumer(&path, ChannelOptions { timeout: Duration::from_secs(5), ..Default::default() }).unwrap();
    (consumer, t)
}

#[test]
fn a_producer_sending_malformed_or_impossible_frames_gets_a_clear_error() {
    let dir = TempDir::new("channel", 0o700);
    let frame = |slot: u32, sequence: u64, len: u64| {
        wire::encode(&ChannelMessage::Frame(FrameMessage {
            slot,
            sequence,
            timeline: sequence + 1,
            sent_ns: 0,
            metadata: Metadata::bytes(len),
        }))
        .unwrap()
    };
    let mut bad_magic = frame(0, 0, 8);
    bad_magic[0] = b'X';
    let cases: [(&str, Vec<Vec<u8>>, &str); 5] = [
        ("slot out of range", vec![frame(5, 0, 8)], "slot 5 is not below"),
        ("bad magic", vec![bad_magic], "magic"),
        ("longer than a frame", vec![frame(0, 0, 5000)], "frames hold 4096"),
        ("out of order", vec![frame(0, 3, 8), frame(1, 2, 8)], "must increase"),
        (
            "a RELEASE from the producer",
            vec![wire::encode(&ChannelMessage::Release { slot: 0, sequence: 0 }).unwrap()],
            "may not send",
        ),
    ];
    for (what, messages, want) in cases {
        // The fake producer never sets claim words, so a well-formed frame reads as taken back and
        // is skipped; the malformed one ends the stream.
        let (consumer, producer) = fake_producer(&dir, messages);
        let e = loop {
            match consumer.recv() {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(matches!(e, Error::Closed { clean: false, .. }), "{what}: {e}");
        assert!(e.to_string().contains(want), "{what}: {e}");
        drop(consumer);
        producer.join().unwrap();
        let _ = std::fs::remove_file(dir.path().join("fake.sock"));
    }
}

#[test]
fn a_consumer_drains_a_cleanly_ended_channel_and_follows_a_restarted_producer() {
    let dir = TempDir::new("channel", 0o700);
    let path = dir.path().join("c.sock");
    let mut producer = Channel::producer(&path, host(4, Policy::Block)).unwrap();
    let consumer = connect(&mut producer, host(4, Policy::Block));
    let sent: Vec<u64> = (0..3).map(|_| send_pattern(&mut producer)).collect();
    drop(producer); // ends the channel: END follows the frames already sent
    for k in sent {
        check(&consumer, k);
    }
    let e = consumer.recv().unwrap_err();
    assert!(matches!(e, Error::Closed { clean: true, .. }), "{e}");
    assert!(e.to_string().contains("ended the channel after 3 frames"), "{e}");
    drop(consumer);
    assert!(!path.exists(), "the socket file went with the producer");

    // A consumer started before the producer waits for it (up to its timeout) and then gets
    // the new producer's frames, from sequence 0 again.
    let waiting = {
        let path = path.clone();
        std::thread::spawn(move || Channel::consumer(&path, host(4, Policy::Block)).unwrap())
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut producer = Channel::producer(&path, host(4, Policy::Block)).unwrap();
    producer.wait_for_consumers(1, Duration::from_secs(5)).unwrap();
    let consumer = waiting.join().unwrap();
    let k = send_pattern(&mut producer);
    assert_eq!(k, 0);
    check(&consumer, 0);
}

#[test]
fn a_frame_written_and_not_sent_is_never_shown_to_a_late_consumer() {
    let dir = TempDir::new("channel", 0o700);
    let mut producer = Channel::producer(dir.path().join("c.sock"), host(1, Policy::Block)).unwrap();
    send_pattern(&mut producer); // frame 0: the newest, its slot free again (nobody connected)
    let mut frame = producer.acquire().unwrap(); // the same slot: its bytes change
    frame.write(0, &[0xEE; 64]).unwrap();
    drop(frame); // never sent
    let consumer = connect(&mut producer, host(1, Policy::Block));
    assert!(consumer.try_recv().unwrap().is_none(), "no stale or half-written frame is offered");
    let k = send_pattern(&mut producer);
    check(&consumer, k);
}

/// Detached frames (the C API's frame handles): a detached write frame keeps its slot until it
/// is attached back, a detached read frame is not released until it is attached back and
/// dropped, and neither attaches to another end (it is handed back, its slot not lost).
#[test]
fn detached_frames_keep_their_slots_and_attach_only_to_their_end() {
    let dir = TempDir::new("channel", 0o700);
    let mut producer = Channel::producer(dir.path().join("c.sock"), host(1, Policy::Block)).unwrap();
    let mut other = Channel::producer(dir.path().join("o.sock"), host(1, Policy::Block)).unwrap();
    let consumer = connect(&mut producer, host(1, Policy::Block));
    let other_consumer = connect(&mut other, host(1, Policy::Block));

    let detached = producer.try_acquire().unwrap().detach();
    assert!(matches!(producer.try_acquire(), Err(Error::Full { .. })), "the detached frame holds the only slot");
    let Err(detached) = other.attach(detached) else { panic!("another producer's frame is refused") };
    let mut frame = producer.attach(detached).unwrap();
    let mut bytes = vec![0u8; 4096];
    fill_pattern(&mut bytes, 0);
    frame.write(0, &bytes).unwrap();
    frame.send(Metadata::bytes(4096)).unwrap();

    let held = consumer.recv().unwrap().detach();
    assert_eq!(held.sequence(), 0);
    assert_eq!(held.metadata().len, 4096);
    // Not released: the producer's only slot stays in flight.
    std::thread::sleep(Duration::from_millis(50));
    assert!(matches!(producer.try_acquire(), Err(Error::Full { .. })), "a detached read frame is still held");
    let held = other_consumer.attach(held).expect_err("another consumer's frame is refused");
    let frame = consumer.attach(held).unwrap();
    let mut back = vec![0u8; 4096];
    frame.read_into(0, &mut back).unwrap();
    check_pattern(&back, 0).unwrap();
    drop(frame); // released
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match producer.try_acquire() {
            Ok(frame) => break drop(frame),
            Err(Error::Full { .. }) if std::time::Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("the released slot did not come back: {e}"),
        }
    }
}

/// A frame is `frame_size` bytes even where its slot's memory is larger (host frames are whole
/// pages): writes and reads beyond it are refused with the frame's size.
#[test]
fn writes_and_reads_beyond_the_frame_are_refused() {
    let dir = std::env::temp_dir().join(format!("lava-flow-frame-range-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.sock");
    let options = ChannelOptions { frame_size: 100, slots: 1, memory: FrameMemory::Host, ..ChannelOptions::default() };
    let mut producer = Channel::producer(&path, options.clone()).unwrap();
    let consumer = std::thread::scope(|s| {
        let c = s.spawn(|| Channel::consumer(&path, options.clone()).unwrap());
        producer.wait_for_consumers(1, std::time::Duration::from_secs(10)).unwrap();
        c.join().unwrap()
    });
    let mut frame = producer.acquire().unwrap();
    let err = frame.write(90, &[0; 11]).unwrap_err();
    assert!(err.to_string().contains("hold 100 bytes"), "{err}");
    assert!(frame.write(u64::MAX, &[0; 2]).is_err());
    frame.write(90, &[7; 10]).unwrap();
    frame.send(Metadata::bytes(100)).unwrap();
    let got = consumer.recv().unwrap();
    let mut out = [0u8; 11];
    assert!(got.read_into(90, &mut out).unwrap_err().to_string().contains("hold 100 bytes"));
    got.read_into(90, &mut out[..10]).unwrap();
    assert_eq!(&out[..10], &[7; 10]);
    drop(got);
    drop(producer);
    let _ = std::fs::remove_dir_all(&dir);
}
