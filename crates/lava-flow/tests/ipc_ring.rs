//! The zero-copy ring between two real processes: thousands of frames, every one checked by the
//! consumer, ended by a count, by the consumer, or by the producer's stop flag.

mod ipc_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipc_support::{child_command, child_role, TempDir};
use lava_flow::ipc::ring::{check_sync, run_consumer, run_producer, RingConfig, RingReport, RingSync};

const FRAMES: u64 = 5000;

fn consumer_child() {
    let role = child_role().unwrap();
    let (role, sync) = match role.strip_suffix("-timeline") {
        Some(r) => (r.to_owned(), RingSync::TimelineSemaphore),
        None => (role, RingSync::Auto),
    };
    let config = RingConfig {
        socket: std::env::var_os("LAVA_FLOW_TEST_SOCKET").unwrap().into(),
        frames: role.strip_prefix("consume-").and_then(|n| n.parse().ok()),
        sync,
        ..RingConfig::default()
    };
    let report = run_consumer(&config).expect("the consumer checks every frame");
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
    println!("{report}");
}

/// Starts the consumer in another process once the producer's socket exists.
fn spawn_consumer(test: &str, role: &str, socket: &std::path::Path) -> std::thread::JoinHandle<serde_json::Value> {
    let mut cmd = child_command(test, role);
    cmd.env("LAVA_FLOW_TEST_SOCKET", socket);
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        for _ in 0..1000 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = ipc_support::run_ok(cmd, "the consumer process");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout.lines().find_map(|l| l.split_once("REPORT ").map(|(_, r)| r)).expect("the consumer's report");
        serde_json::from_str(line).unwrap()
    })
}

fn config(socket: &std::path::Path) -> RingConfig {
    RingConfig {
        socket: socket.into(),
        slots: 4,
        slot_size: 64 * 1024,
        sync: RingSync::HostCounters,
        ..Default::default()
    }
}

fn print(report: &RingReport) {
    println!("{report}");
}

#[test]
fn ring_passes_thousands_of_checked_frames_between_processes() {
    if child_role().is_some() {
        return consumer_child();
    }
    let dir = TempDir::new("ring", 0o700);
    let socket = dir.path().join("ring.sock");
    let consumer = spawn_consumer("ring_passes_thousands_of_checked_frames_between_processes", "consume-all", &socket);
    let producer = run_producer(&RingConfig { frames: Some(FRAMES), ..config(&socket) }).unwrap();
    print(&producer);
    let consumer = consumer.join().unwrap();
    assert_eq!(producer.frames, FRAMES);
    assert_eq!(producer.ended_by, "count");
    assert_eq!(consumer["frames"], FRAMES, "{consumer}");
    assert_eq!(consumer["ended_by"], "peer-finished");
    assert_eq!(consumer["latency"]["samples"], FRAMES, "every frame's hand-off was measured");
    assert!(!socket.exists(), "the producer's socket is gone once the consumer attached");
}

#[test]
fn ring_runs_until_the_consumer_stops_it() {
    if child_role().is_some() {
        return consumer_child();
    }
    let dir = TempDir::new("ring-stop", 0o700);
    let socket = dir.path().join("ring.sock");
    let consumer = spawn_consumer("ring_runs_until_the_consumer_stops_it", "consume-2000", &socket);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = run_producer(&RingConfig { frames: None, stop: Some(stop), ..config(&socket) }).unwrap();
    print(&producer);
    let consumer = consumer.join().unwrap();
    assert_eq!(consumer["frames"], 2000);
    assert_eq!(consumer["ended_by"], "count");
    assert_eq!(producer.ended_by, "peer-stopped");
    assert!((2000..=2004).contains(&producer.frames), "the producer ran on at most one ring ahead: {producer}");
}

#[test]
fn ring_producer_stop_flag_ends_both_sides() {
    if child_role().is_some() {
        return consumer_child();
    }
    let dir = TempDir::new("ring-flag", 0o700);
    let socket = dir.path().join("ring.sock");
    let consumer = spawn_consumer("ring_producer_stop_flag_ends_both_sides", "consume-all", &socket);
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        let socket = socket.clone();
        std::thread::spawn(move || {
            // Stop once the consumer has attached (the socket goes away) and frames flowed a while.
            while socket.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let producer = run_producer(&RingConfig { frames: None, stop: Some(stop), ..config(&socket) }).unwrap();
    stopper.join().unwrap();
    print(&producer);
    let consumer = consumer.join().unwrap();
    assert_eq!(producer.ended_by, "stopped");
    assert!(producer.frames > 0);
    assert_eq!(consumer["frames"], producer.frames, "the consumer drained every published frame");
    assert_eq!(consumer["ended_by"], "peer-finished");
}

#[test]
fn bad_ring_configurations_are_refused() {
    let dir = TempDir::new("ring-bad", 0o700);
    let socket = dir.path().join("ring.sock");
    for bad in [
        RingConfig { slots: 0, ..config(&socket) },
        RingConfig { slots: 33, ..config(&socket) },
        RingConfig { slot_size: 12, ..config(&socket) },
        RingConfig { frames: None, stop: None, ..config(&socket) },
    ] {
        let e = run_producer(&bad).unwrap_err();
        assert!(matches!(e, lava_flow::Error::InvalidArgument { .. }), "{e}");
    }
    if let Err(why) = check_sync(RingSync::TimelineSemaphore) {
        // Where the driver cannot share timeline semaphores, asking for them is refused up front.
        let e = run_producer(&RingConfig { sync: RingSync::TimelineSemaphore, ..config(&socket) }).unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert_eq!(e.to_string(), why.to_string());
    }
    // Nobody serves: the consumer reports it instead of waiting forever.
    assert!(run_consumer(&config(&socket)).is_err());
}

#[test]
fn ring_with_timeline_semaphores_passes_checked_frames() {
    if child_role().is_some() {
        return consumer_child();
    }
    let dir = TempDir::new("ring-timeline", 0o700);
    let socket = dir.path().join("ring.sock");
    let config = RingConfig { frames: Some(FRAMES), sync: RingSync::TimelineSemaphore, ..config(&socket) };
    // Where exported timeline semaphores exist (the GPU machine) this must run; elsewhere it skips
    // with the capability query's answer.
    if let Err(e) = check_sync(RingSync::TimelineSemaphore) {
        lava_flow_diag::testing::skip("semaphores", e);
        return;
    }
    let test = "ring_with_timeline_semaphores_passes_checked_frames";
    let consumer = spawn_consumer(test, "consume-all-timeline", &socket);
    let producer = run_producer(&config).unwrap();
    print(&producer);
    let consumer = consumer.join().unwrap();
    println!("{consumer}");
    assert_eq!(producer.frames, FRAMES);
    assert_eq!(producer.ended_by, "count");
    assert!(producer.sync.contains("timeline semaphores"), "{producer}");
    assert_eq!(consumer["sync"], producer.sync, "both sides signal through the semaphores");
    assert_eq!(consumer["frames"], FRAMES, "{consumer}");
    assert_eq!(consumer["ended_by"], "peer-finished");
    assert_eq!(consumer["latency"]["samples"], FRAMES, "every frame's hand-off was measured");
}

#[test]
fn ring_with_timeline_semaphores_stops_when_the_consumer_does() {
    if child_role().is_some() {
        return consumer_child();
    }
    if let Err(e) = check_sync(RingSync::TimelineSemaphore) {
        lava_flow_diag::testing::skip("semaphores", e);
        return;
    }
    let dir = TempDir::new("ring-timeline-stop", 0o700);
    let socket = dir.path().join("ring.sock");
    let test = "ring_with_timeline_semaphores_stops_when_the_consumer_does";
    let consumer = spawn_consumer(test, "consume-2000-timeline", &socket);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = run_producer(&RingConfig {
        frames: None,
        stop: Some(stop),
        sync: RingSync::TimelineSemaphore,
        ..config(&socket)
    })
    .unwrap();
    print(&producer);
    let consumer = consumer.join().unwrap();
    assert_eq!(consumer["frames"], 2000);
    assert_eq!(consumer["ended_by"], "count");
    assert_eq!(producer.ended_by, "peer-stopped", "the producer woke from its semaphore wait: {producer}");
    assert!((2000..=2004).contains(&producer.frames), "the producer ran on at most one ring ahead: {producer}");
}

/// `Auto` picks timeline semaphores where the driver shares them and host counters elsewhere;
/// the consumer (also `Auto`) follows the producer.
#[test]
fn ring_auto_signal_follows_what_the_driver_shares() {
    if child_role().is_some() {
        return consumer_child();
    }
    let dir = TempDir::new("ring-auto", 0o700);
    let socket = dir.path().join("ring.sock");
    let consumer = spawn_consumer("ring_auto_signal_follows_what_the_driver_shares", "consume-all", &socket);
    let producer = run_producer(&RingConfig { frames: Some(2000), sync: RingSync::Auto, ..config(&socket) }).unwrap();
    print(&producer);
    let consumer = consumer.join().unwrap();
    match check_sync(RingSync::TimelineSemaphore) {
        Ok(()) => assert!(producer.sync.contains("timeline semaphores"), "{producer}"),
        Err(why) => {
            assert_eq!(producer.sync, "host counters + futex", "{producer}");
            println!("host counters, since: {why}");
        }
    }
    assert_eq!(consumer["sync"], producer.sync);
    assert_eq!(consumer["frames"], 2000);
}

/// A consumer that asks for another signal than the producer chose is refused, and the producer
/// hears of it at once instead of waiting out its timeout.
#[test]
fn ring_consumer_asking_for_another_signal_is_refused() {
    let dir = TempDir::new("ring-mismatch", 0o700);
    let socket = dir.path().join("ring.sock");
    let timeout = Duration::from_secs(20);
    let producer = {
        let config = RingConfig { frames: Some(10), timeout, ..config(&socket) };
        std::thread::spawn(move || run_producer(&config))
    };
    for _ in 0..1000 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = std::time::Instant::now();
    let e = run_consumer(&RingConfig { sync: RingSync::TimelineSemaphore, ..config(&socket) }).unwrap_err();
    assert!(e.to_string().contains("the producer signals with host counters"), "{e}");
    let e = producer.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("could not set up its side of the ring"), "{e}");
    assert!(started.elapsed() < timeout / 2, "the producer stopped waiting for its consumer at once");
}

/// A ring larger than the host memory the machine can give (four slots of twice `MemAvailable`)
/// is refused before anything is allocated or served: no socket appears, and the error names the
/// size asked for and the limit.
#[test]
fn a_ring_larger_than_the_machine_is_refused_before_allocating() {
    let dir = TempDir::new("ring-huge", 0o700);
    let socket = dir.path().join("ring.sock");
    let available = lava_flow::limits::host_memory_available().expect("Linux reports its available memory");
    let slot_size = usize::try_from(available.bytes * 2).unwrap() & !7;
    let huge = RingConfig { slot_size, timeout: Duration::from_secs(1), ..config(&socket) };
    let e = run_producer(&huge).unwrap_err();
    assert!(matches!(e, lava_flow::Error::OutOfMemory { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains(&format!("4 slots of {slot_size} bytes")), "the error names the ring asked for: {text}");
    assert!(text.contains(&format!("{} bytes", 4 * slot_size as u64 + 4096)), "and its total: {text}");
    assert!(text.contains(&available.source), "and the limit: {text}");
    assert!(!socket.exists(), "nothing was served");
    assert!(lava_flow::ipc::ring::check_producer_config(&huge).is_err(), "the same check, callable up front");
}
