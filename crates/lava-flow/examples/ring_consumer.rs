//! Consumes and checks every frame of the ring that `ring_producer` (another process) serves,
//! then prints frames per second and hand-off latency.
//!
//! ```text
//! cargo run --release --example ring_consumer -- --socket /tmp/ring.sock [--frames N] [--json]
//! ```
//! Without `--frames` it runs until the producer finishes or Enter is pressed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lava_flow::ipc::ring::{run_consumer, RingConfig, RingSync};

fn main() {
    let mut config = RingConfig { frames: None, ..RingConfig::default() };
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--socket" => config.socket = value().into(),
            "--frames" => config.frames = Some(number(&value())).filter(|n| *n > 0),
            "--timeout-s" => config.timeout = std::time::Duration::from_secs(number(&value())),
            "--sync" => config.sync = sync(&value()),
            "--json" => json = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    config.stop = Some(stop.clone());
    std::thread::spawn(move || {
        let mut line = String::new();
        // Only a line typed by someone stops the run; a closed standard input (a script) does not.
        if matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0) {
            stop.store(true, Ordering::Relaxed);
        }
    });
    match run_consumer(&config) {
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
    eprintln!("{problem}\nusage: ring_consumer [--socket PATH] [--frames N] [--timeout-s S] [--sync auto|host-counters|timeline-semaphore] [--json]");
    std::process::exit(2)
}
