//! `lava-flow ring`: a producer and a consumer process passing frames through a ring of shared
//! buffers without copying (`lava_flow::ipc::ring`); reports frames per second and hand-off
//! latency, every frame checked by the consumer.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lava_flow::ipc::ring::{run_consumer, run_producer, RingConfig, RingReport, RingSync};

use crate::serve::parse_size;
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
    /// The Unix socket the producer serves the ring on (default for `both`: a fresh path in the
    /// temporary directory).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Buffers in the ring.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Bytes per frame (K, M, G suffixes; a multiple of 8).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub size: u64,
    /// Frames to pass; 0 runs until Enter is pressed (or the other side stops).
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
        (None, _) => return Err("--socket is needed for --role producer and --role consumer".into()),
    };
    let mut config = config(args, socket)?;
    if config.frames.is_none() {
        config.stop = Some(stop_on_enter());
    }
    match args.role {
        Role::Producer => {
            eprintln!(
                "ring: serving {} slots of {} bytes on {}",
                config.slots,
                config.slot_size,
                config.socket.display()
            );
            print_reports(args.json, &[run_producer(&config)?])
        }
        Role::Consumer => print_reports(args.json, &[consume(&config)?]),
        Role::Both => both(args, &config),
    }
}

/// Producer here, consumer in a second process (this binary with `--role consumer`).
fn both(args: &Args, config: &RingConfig) -> CmdResult {
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
        .and_then(|mut v| v.pop())
        .ok_or_else(|| format!("the consumer process failed ({status}); its output: {}", out.trim()))?;
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
/// two processes may start in either order.
fn consume(config: &RingConfig) -> lava_flow::Result<RingReport> {
    let started = Instant::now();
    while !config.socket.exists() && started.elapsed() < config.timeout {
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

/// A flag set when a line is typed on a terminal's standard input; a closed or redirected one
/// (a script) never stops the run.
fn stop_on_enter() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    if std::io::stdin().is_terminal() {
        let flag = stop.clone();
        eprintln!("ring: press Enter to stop");
        std::thread::spawn(move || {
            if matches!(std::io::stdin().read_line(&mut String::new()), Ok(n) if n > 0) {
                flag.store(true, Ordering::Relaxed);
            }
        });
    }
    stop
}
