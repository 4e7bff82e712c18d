//! Channels between real processes: every frame's data and order checked by each consumer,
//! backpressure, fan-out to a slow consumer, a consumer killed mid-stream, a producer killed
//! mid-stream. The producer runs in the test process, consumers in re-runs of this test binary
//! (or the other way round where the producer is the one killed).

mod ipc_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ipc_support::{child_command, child_role, TempDir};
use lava_flow::channel::run::{check_pattern, fill_pattern, run_consumer, run_producer, RunConfig, RunReport};
use lava_flow::channel::{Channel, ChannelOptions, FrameMemory, Metadata, Policy};
use lava_flow::vulkan::MemoryKind;
use lava_flow::{Error, VulkanContext};
use lava_flow_diag::testing::{open_fd_count, or_skip};

const SOCKET: &str = "LAVA_FLOW_TEST_SOCKET";

fn vulkan_available() -> bool {
    or_skip("vulkan", VulkanContext::new()).is_some()
}

fn options(memory: FrameMemory, frame_size: u64, slots: u32) -> ChannelOptions {
    ChannelOptions { slots, frame_size, memory, timeout: Duration::from_secs(10), ..ChannelOptions::default() }
}

/// The child side of every test: a role name and the socket from the environment.
fn child(role: &str) {
    let socket: std::path::PathBuf = std::env::var_os(SOCKET).unwrap().into();
    let config = RunConfig { socket: socket.clone(), frames: None, ..RunConfig::default() };
    match role {
        "consume" => report(run_consumer(&config)),
        "consume-slow" => report(run_consumer(&RunConfig { hold: Duration::from_millis(3), ..config })),
        "hold" => {
            // Takes every frame it can and never releases one: the test kills it.
            let consumer = Channel::consumer(&socket, ChannelOptions::default()).unwrap();
            let mut held = Vec::new();
            while held.len() < consumer.slots() as usize {
                held.push(consumer.recv().unwrap());
            }
            println!("HOLDING {}", held.len());
            std::thread::sleep(Duration::from_secs(60));
        }
        "produce-then-hang" => {
            // Sends five frames nobody has taken yet, says so, and waits to be killed.
            let mut producer = Channel::producer(&socket, options(FrameMemory::Host, 4096, 8)).unwrap();
            producer.wait_for_consumers(1, Duration::from_secs(10)).unwrap();
            let mut pattern = vec![0u8; 4096];
            for _ in 0..5 {
                let mut frame = producer.acquire().unwrap();
                fill_pattern(&mut pattern, frame.sequence());
                frame.write(0, &pattern).unwrap();
                frame.send(Metadata::bytes(4096)).unwrap();
            }
            println!("SENT 5");
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown child role {other}"),
    }
}

fn report(result: lava_flow::Result<RunReport>) {
    let report = result.expect("the consumer checks every frame");
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
    println!("{report}");
}

/// Starts `role` in a child process of test `test`, with stdout piped.
fn spawn(test: &str, role: &str, socket: &std::path::Path) -> Child {
    let mut cmd = child_command(test, role);
    cmd.env(SOCKET, socket).stdout(Stdio::piped()).stderr(Stdio::inherit());
    cmd.spawn().expect("starting the child process")
}

/// Waits for the child to exit successfully and returns its report.
fn report_of(child: Child, what: &str) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} exited with {}:\n{stdout}", out.status);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("REPORT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("{what}: {stdout}"));
    serde_json::from_str(line).unwrap()
}

/// Reads the child's stdout until a line holds `prefix` (the test harness may have printed the
/// test's name before it on the same line).
fn wait_line(child: &mut Child, prefix: &str) -> BufReader<std::process::ChildStdout> {
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the child ended before printing {prefix}");
        if line.contains(prefix) {
            return reader;
        }
    }
}

fn kill(child: &mut Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    child.wait().unwrap();
}

fn cases(memory: &str) -> Option<FrameMemory> {
    match memory {
        "host" => Some(FrameMemory::Host),
        _ => vulkan_available().then_some(FrameMemory::Vulkan(MemoryKind::HostVisible)),
    }
}

#[test]
fn two_processes_pass_every_frame_in_order_without_leaking_fds() {
    const TEST: &str = "two_processes_pass_every_frame_in_order_without_leaking_fds";
    if let Some(role) = child_role() {
        return child(&role);
    }
    for memory in ["host", "vulkan"] {
        let Some(frame_memory) = cases(memory) else { continue };
        let dir = TempDir::new("channel", 0o700);
        let socket = dir.path().join("c.sock");
        let fds_before = open_fd_count();
        let consumer = spawn(TEST, "consume", &socket);
        let frames = 2000;
        let producer = run_producer(&RunConfig {
            socket: socket.clone(),
            options: options(frame_memory, 64 * 1024, 4),
            frames: Some(frames),
            consumers: 1,
            ..RunConfig::default()
        })
        .unwrap();
        println!("{memory}: {producer}");
        let consumer = report_of(consumer, "the consumer");
        assert_eq!(consumer["frames"], frames, "{memory}: {consumer}");
        assert_eq!(consumer["dropped"], 0, "{memory}: {consumer}");
        assert_eq!(consumer["ended_by"], "peer-finished", "{memory}: {consumer}");
        assert_eq!(consumer["memory"], memory);
        assert_eq!(consumer["latency"]["samples"], frames);
        let stats = producer.producer.unwrap();
        assert_eq!((stats.frames_sent, stats.deliveries, stats.dropped), (frames, frames, 0));
        // Each slot's fd went to the consumer once, at the handshake: nothing is left open here.
        assert_eq!(open_fd_count(), fds_before, "{memory}: the producer's fds are back to where they were");
        assert!(!socket.exists(), "the socket file is removed when the producer ends");
    }
}

#[test]
fn three_processes_fan_out_and_a_slow_consumer_holds_back_or_is_skipped() {
    const TEST: &str = "three_processes_fan_out_and_a_slow_consumer_holds_back_or_is_skipped";
    if let Some(role) = child_role() {
        return child(&role);
    }
    for policy in [Policy::Block, Policy::DropOldest] {
        let dir = TempDir::new("channel", 0o700);
        let socket = dir.path().join("c.sock");
        let fast = spawn(TEST, "consume", &socket);
        let slow = spawn(TEST, "consume-slow", &socket);
        let frames = 400;
        let producer = run_producer(&RunConfig {
            socket: socket.clone(),
            options: ChannelOptions { policy, ..options(FrameMemory::Host, 16 * 1024, 4) },
            frames: Some(frames),
            consumers: 2,
            ..RunConfig::default()
        })
        .unwrap();
        println!("{policy:?}: {producer}");
        let (fast, slow) = (report_of(fast, "the fast consumer"), report_of(slow, "the slow consumer"));
        println!("{policy:?}: fast {fast}\n{policy:?}: slow {slow}");
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
        // Every frame a consumer got was checked word by word and in order (run_consumer); the
        // ones it did not get are counted as dropped.
        for c in [&fast, &slow] {
            assert_eq!(n(c, "frames") + n(c, "dropped"), frames, "{policy:?}: {c}");
            assert_eq!(c["ended_by"], "peer-finished");
        }
        match policy {
            Policy::Block => {
                assert_eq!(
                    (n(&fast, "frames"), n(&slow, "frames")),
                    (frames, frames),
                    "block: everyone gets everything"
                );
                // 400 frames held 3 ms each by the slow consumer: the producer could not outrun it.
                assert!(producer.elapsed_s > 1.0, "the slow consumer held the producer back: {producer}");
            }
            Policy::DropOldest => {
                assert!(n(&slow, "dropped") > 0, "drop-oldest skips the slow consumer: {slow}");
                assert!(n(&fast, "frames") > n(&slow, "frames"), "the fast consumer gets more: {fast} {slow}");
                let stats = producer.producer.unwrap();
                assert!(stats.dropped > 0 && stats.frames_sent == frames, "{stats:?}");
            }
        }
    }
}

#[test]
fn a_consumer_killed_mid_stream_has_its_frames_reclaimed() {
    const TEST: &str = "a_consumer_killed_mid_stream_has_its_frames_reclaimed";
    if let Some(role) = child_role() {
        return child(&role);
    }
    let dir = TempDir::new("channel", 0o700);
    let socket = dir.path().join("c.sock");
    let slots = 4;
    let mut producer = Channel::producer(&socket, options(FrameMemory::Host, 4096, slots)).unwrap();
    let mut holder = spawn(TEST, "hold", &socket);
    producer.wait_for_consumers(1, Duration::from_secs(10)).unwrap();
    for _ in 0..slots {
        producer.acquire().unwrap().send(Metadata::bytes(8)).unwrap();
    }
    // Backpressure: every frame is in flight.
    let e = producer.try_acquire().err().expect("every slot is in flight");
    assert!(matches!(e, Error::Full { in_flight: 4, .. }), "{e}");
    let _stdout = wait_line(&mut holder, "HOLDING");
    kill(&mut holder);
    // The hang-up releases everything the consumer held, and the producer goes on.
    let start = Instant::now();
    for _ in 0..3 * slots {
        producer.acquire().unwrap().send(Metadata::bytes(8)).unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(2), "reclaimed at once, not after a timeout");
    let stats = producer.stats();
    assert_eq!((stats.consumers_joined, stats.consumers_lost), (1, 1), "{stats:?}");
    assert_eq!(producer.in_flight(), 0);
}

#[test]
fn a_killed_producer_leaves_its_sent_frames_to_drain_then_a_clear_error() {
    const TEST: &str = "a_killed_producer_leaves_its_sent_frames_to_drain_then_a_clear_error";
    if let Some(role) = child_role() {
        return child(&role);
    }
    let dir = TempDir::new("channel", 0o700);
    let socket = dir.path().join("c.sock");
    let mut producer = spawn(TEST, "produce-then-hang", &socket);
    let consumer = Channel::consumer(&socket, ChannelOptions::default()).unwrap();
    let _stdout = wait_line(&mut producer, "SENT");
    kill(&mut producer);
    let mut buf = vec![0u8; 4096];
    for k in 0..5 {
        let frame = consumer.recv().unwrap();
        assert_eq!(frame.sequence(), k);
        frame.read_into(0, &mut buf).unwrap();
        check_pattern(&buf, k).unwrap();
    }
    let start = Instant::now();
    let e = consumer.recv().unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1), "no hang: {e}");
    assert!(matches!(e, Error::Closed { clean: false, .. }), "{e}");
    assert!(e.to_string().contains("hung up without ending the channel"), "{e}");
    // And it stays closed.
    assert!(matches!(consumer.try_recv().unwrap_err(), Error::Closed { clean: false, .. }));
}

/// Where the Vulkan device exports timeline semaphores as opaque fds (GPU machines), a timeline
/// channel shares `channel.filled`: the consumer process imports it, waits for each frame's value
/// and still checks every word. Where it does not (lavapipe), asking for one is refused by the
/// capability query, before a socket exists.
#[test]
fn a_timeline_channel_signals_filled_frames_through_an_exported_semaphore() {
    const TEST: &str = "a_timeline_channel_signals_filled_frames_through_an_exported_semaphore";
    if let Some(role) = child_role() {
        return child(&role);
    }
    if !vulkan_available() {
        return;
    }
    let dir = TempDir::new("channel", 0o700);
    let socket = dir.path().join("c.sock");
    let options = ChannelOptions {
        sync: lava_flow::channel::ChannelSync::Timeline,
        ..options(FrameMemory::Vulkan(MemoryKind::HostVisible), 64 * 1024, 4)
    };
    let producer = match Channel::producer(&socket, options.clone()) {
        Ok(p) => p,
        Err(e) => {
            assert!(!socket.exists(), "refused before the socket was created");
            return lava_flow_diag::testing::skip_refused(
                "vulkan",
                "vkGetPhysicalDeviceExternalSemaphoreProperties",
                e,
            );
        }
    };
    assert!(producer.uses_timeline());
    drop(producer);
    let consumer = spawn(TEST, "consume", &socket);
    let frames = 1000;
    let producer = run_producer(&RunConfig {
        socket: socket.clone(),
        options,
        frames: Some(frames),
        consumers: 1,
        ..RunConfig::default()
    })
    .unwrap();
    assert_eq!(producer.sync, "messages + timeline semaphore");
    let consumer = report_of(consumer, "the consumer");
    assert_eq!(consumer["frames"], frames, "{consumer}");
    assert_eq!(consumer["sync"], "messages + timeline semaphore", "{consumer}");
}

/// A short soak: 20 000 small frames to a consumer process leave the producer's fds where they
/// were and its resident memory flat (no per-frame allocation kept, no import per frame).
#[test]
fn twenty_thousand_frames_leave_fds_and_memory_flat() {
    const TEST: &str = "twenty_thousand_frames_leave_fds_and_memory_flat";
    if let Some(role) = child_role() {
        return child(&role);
    }
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    let dir = TempDir::new("channel", 0o700);
    let socket = dir.path().join("c.sock");
    let consumer = spawn(TEST, "consume", &socket);
    let mut producer = Channel::producer(&socket, options(FrameMemory::Host, 256, 4)).unwrap();
    producer.wait_for_consumers(1, Duration::from_secs(10)).unwrap();
    let mut pattern = vec![0u8; 256];
    let mut send = |producer: &mut lava_flow::channel::Producer| {
        let mut frame = producer.acquire().unwrap();
        fill_pattern(&mut pattern, frame.sequence());
        frame.write(0, &pattern).unwrap();
        frame.send(Metadata::bytes(256)).unwrap();
    };
    for _ in 0..2000 {
        send(&mut producer);
    }
    let (fds, rss) = (open_fd_count(), rss_kib());
    for _ in 0..20_000 {
        send(&mut producer);
    }
    producer.drain(Duration::from_secs(10)).unwrap();
    let (fds_after, rss_after) = (open_fd_count(), rss_kib());
    drop(producer);
    let consumer = report_of(consumer, "the consumer");
    assert_eq!(consumer["frames"], 22_000, "{consumer}");
    assert_eq!(fds_after, fds, "no fd opened per frame");
    assert!(rss_after <= rss + 1024, "resident memory grew from {rss} KiB to {rss_after} KiB");
}
