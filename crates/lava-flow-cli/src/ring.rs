//! `lava-flow ring`: a producer and a consumer process passing frames through a ring of shared
//! buffers without copying (`lava_flow::ipc::ring`); reports frames per second and hand-off
//! latency, every frame checked by the consumer.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lava_flow::ipc::ring::{
    check_producer_config, run_consumer, run_producer, RingConfig, RingReport, RingSync, MAX_SLOTS,
};

use crate::serve::parse_size;
use crate::stop::StopSignal;
use crate::CmdResult;

/// Which side this process plays.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Start the consumer as a second process and produce for it.
    Both,
    /// Produce into a ring served on `--socket`.
    Producer,
    /// Consume from the ring served on `--socket`.
    Consumer,
}

/// How the two sides signal frames and free slots.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// Producer: timeline semaphores where the Vulkan driver shares them, else host counters.
    /// Consumer: what the producer chose.
    Auto,
    /// Counters in shared host memory with a futex wait (any machine).
    HostCounters,
    /// Vulkan timeline semaphores exported by the producer, imported by the consumer (refused
    /// where the driver cannot share them; `lava-flow info` says why).
    #[value(alias = "semaphore", alias = "timeline")]
    TimelineSemaphore,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value = "both")]
    pub role: Role,
    /// The Unix socket the producer serves the ring on (needed for `producer` and `consumer`;
    /// default for `both`: a fresh path in the temporary directory).
    #[arg(long, value_name = "PATH", required_if_eq_any([("role", "producer"), ("role", "consumer")]))]
    pub socket: Option<PathBuf>,
    /// Buffers in the ring (1 to 32).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SLOTS)))]
    pub slots: u32,
    /// Bytes per frame (K, M, G suffixes; a multiple of 8). The producer refuses a ring larger
    /// than the host memory the machine can still give it.
    #[arg(long, default_value = "1M", value_parser = parse_frame_size)]
    pub size: u64,
    /// Frames to pass; 0 runs until SIGINT (Ctrl-C) or SIGTERM, Enter on a terminal, or the
    /// other side stops.
    #[arg(long, default_value_t = 10_000)]
    pub frames: u64,
    /// How the sides signal each other.
    #[arg(long, value_enum, default_value = "auto")]
    pub sync: Sync,
    /// Longest wait for the other side, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Print JSON (one report per side) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A frame size: a size ([`parse_size`]) that is a positive multiple of 8 (the ring checks
/// frames a 64-bit word at a time).
fn parse_frame_size(text: &str) -> Result<u64, String> {
    let n = parse_size(text)?;
    if n == 0 || n % 8 != 0 {
        return Err(format!("a frame of {n} bytes is not a positive multiple of 8 bytes (e.g. 8, 4K, 1M)"));
    }
    Ok(n)
}

fn config(args: &Args, socket: PathBuf) -> Result<RingConfig, Box<dyn std::error::Error>> {
    let slot_size = usize::try_from(args.size).map_err(|_| format!("a frame of {} bytes is too large", args.size))?;
    Ok(RingConfig {
        socket,
        slots: args.slots,
        slot_size,
        frames: (args.frames > 0).then_some(args.frames),
        stop: None,
        sync: match args.sync {
            Sync::Auto => RingSync::Auto,
            Sync::HostCounters => RingSync::HostCounters,
            Sync::TimelineSemaphore => RingSync::TimelineSemaphore,
        },
        timeout: Duration::from_secs(args.timeout),
        ..RingConfig::default()
    })
}

pub fn run(args: &Args) -> CmdResult {
    let socket = match (&args.socket, args.role) {
        (Some(p), _) => p.clone(),
        (None, Role::Both) => std::env::temp_dir().join(format!("lava-flow-ring-{}.sock", std::process::id())),
        (None, _) => {
            return Err(crate::UsageError("--socket is needed for --role producer and --role consumer".into()).into())
        }
    };
    let mut config = config(args, socket)?;
    if args.role != Role::Consumer {
        // Before anything is allocated or a consumer process started: a ring the machine cannot
        // hold is refused here, with the size and the limit.
        check_producer_config(&RingConfig { stop: Some(Arc::default()), ..config.clone() })?;
    }
    // SIGINT and SIGTERM end the run cleanly: each side stops, tells the other and reports.
    let stop = StopSignal::install()?;
    config.stop = Some(stop.flag());
    if config.frames.is_none() {
        stop_on_enter(&stop, args.role != Role::Consumer);
    }
    let result = match args.role {
        Role::Producer => {
            eprintln!(
                "ring: serving {} slots of {} bytes on {}",
                config.slots,
                config.slot_size,
                config.socket.display()
            );
            run_producer(&config).map_err(Into::into).and_then(|r| print_reports(args.json, &[r]))
        }
        Role::Consumer => consume(&config).map_err(Into::into).and_then(|r| print_reports(args.json, &[r])),
        Role::Both => both(args, &config, &stop),
    };
    if stop.stopped() {
        eprintln!("ring: stopped by {}", stop.reason());
    }
    result
}

/// Producer here, consumer in a second process (this binary with `--role consumer`).
fn both(args: &Args, config: &RingConfig, stop: &StopSignal) -> CmdResult {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["ring", "--role", "consumer", "--json", "--socket"])
        .arg(&config.socket)
        .args(["--frames", &args.frames.to_string(), "--timeout", &args.timeout.to_string()])
        .args(["--sync", sync_name(args.sync)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn()?;
    let produced = run_producer(config);
    if produced.is_err() {
        // The consumer would wait for a ring that is not coming until its timeout.
        let _ = child.kill();
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    let status = child.wait()?;
    let producer = produced?;
    let consumer = serde_json::from_str::<Vec<serde_json::Value>>(&out)
        .ok()
        .filter(|v| status.success() && v.len() == 1)
        .and_then(|mut v| v.pop());
    let consumer = match consumer {
        Some(c) => c,
        // Stopped before the consumer attached: the producer's report is the whole story.
        None if stop.stopped() && producer.frames == 0 => {
            eprintln!("ring: the consumer process ended before it attached ({status})");
            return print_reports(args.json, &[producer]);
        }
        None => return Err(format!("the consumer process failed ({status}); its output: {}", out.trim()).into()),
    };
    if args.json {
        let both = serde_json::Value::Array(vec![report_value(&producer), consumer]);
        crate::emit(&(serde_json::to_string_pretty(&both)? + "\n"))?;
    } else {
        crate::emit(&format!("{producer}\n{}\n", consumer["text"].as_str().unwrap_or_default()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A report as JSON, with its one-line text too (so `both` can print the consumer's).
fn report_value(r: &RingReport) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["text"] = serde_json::Value::String(r.to_string());
    v
}

fn sync_name(s: Sync) -> &'static str {
    match s {
        Sync::Auto => "auto",
        Sync::HostCounters => "host-counters",
        Sync::TimelineSemaphore => "timeline-semaphore",
    }
}

/// The consumer, waiting (up to the timeout) for the producer's socket to appear first, so the
/// two processes may start in either order. Stopped while it waits, it reports no frames.
fn consume(config: &RingConfig) -> lava_flow::Result<RingReport> {
    let started = Instant::now();
    let stopped = || config.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
    while !config.socket.exists() && started.elapsed() < config.timeout {
        if stopped() {
            return Ok(RingReport {
                role: "consumer",
                sync: "none (no producer appeared)".into(),
                slots: 0,
                slot_size: 0,
                frames: 0,
                elapsed: started.elapsed(),
                frames_per_second: 0.0,
                bytes_per_second: 0.0,
                latency: None,
                wake_latency: None,
                producer_waits: 0,
                ended_by: "stopped",
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    run_consumer(config)
}

fn print_reports(json: bool, reports: &[RingReport]) -> CmdResult {
    if json {
        let values = serde_json::Value::Array(reports.iter().map(report_value).collect());
        crate::emit(&(serde_json::to_string_pretty(&values)? + "\n"))?;
    } else {
        for r in reports {
            crate::emit(&format!("{r}\n"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// For `--frames 0`: on a terminal, a line typed on standard input sets the stop flag too. A
/// closed or redirected standard input (a script) does not stop the run: SIGINT or SIGTERM does.
fn stop_on_enter(stop: &StopSignal, say_how: bool) {
    if std::io::stdin().is_terminal() {
        let flag = stop.flag();
        eprintln!("ring: press Enter (or Ctrl-C) to stop");
        std::thread::spawn(move || {
            if matches!(std::io::stdin().read_line(&mut String::new()), Ok(n) if n > 0) {
                flag.store(true, Ordering::SeqCst);
            }
        });
    } else if say_how {
        eprintln!("ring: running until SIGINT (Ctrl-C) or SIGTERM");
    }
}
