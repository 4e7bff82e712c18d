//! Produces frames into a zero-copy ring that `ring_consumer` (another process) reads.
//!
//! ```text
//! cargo run --release --example ring_producer -- --socket /tmp/ring.sock --frames 100000 --slots 4 --slot-size 1048576
//! cargo run --release --example ring_consumer -- --socket /tmp/ring.sock
//! ```
//! `--frames 0` runs until Enter is pressed or the consumer stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lava_flow::ipc::ring::{run_producer, RingConfig, RingSync};

fn main() {
    let mut config = RingConfig::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--socket" => config.socket = value().into(),
            "--frames" => config.frames = Some(number(&value())).filter(|n| *n > 0),
            "--slots" => config.slots = number(&value()) as u32,
            "--slot-size" => config.slot_size = number(&value()) as usize,
            "--timeout-s" => config.timeout = std::time::Duration::from_secs(number(&value())),
            "--sync" => config.sync = sync(&value()),
            "--json" => json = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    config.stop = Some(stop.clone());
    if config.frames.is_none() {
        std::thread::spawn(move || {
            // Only a line typed by someone stops the run; a closed standard input (a script) does not.
            if matches!(std::io::stdin().read_line(&mut String::new()), Ok(n) if n > 0) {
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    eprintln!("serving a ring of {} x {} bytes on {}", config.slots, config.slot_size, config.socket.display());
    match run_producer(&config) {
        Ok(report) if json => println!("{}", serde_json::to_string_pretty(&report).expect("reports serialize")),
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// `auto` (the producer picks timeline semaphores where the driver shares them; the consumer
/// follows the producer), `host-counters` or `timeline-semaphore`.
fn sync(text: &str) -> RingSync {
    match text {
        "auto" => RingSync::Auto,
        "host-counters" => RingSync::HostCounters,
        "timeline-semaphore" => RingSync::TimelineSemaphore,
        other => usage(&format!("--sync {other}: use auto, host-counters or timeline-semaphore")),
    }
}

fn number(text: &str) -> u64 {
    text.parse().unwrap_or_else(|_| usage(&format!("{text} is not a number")))
}

fn usage(problem: &str) -> ! {
    eprintln!("{problem}\nusage: ring_producer [--socket PATH] [--frames N (0: until Enter or the consumer stops)] [--slots N] [--slot-size BYTES] [--timeout-s S] [--sync auto|host-counters|timeline-semaphore] [--json]");
    std::process::exit(2)
}
