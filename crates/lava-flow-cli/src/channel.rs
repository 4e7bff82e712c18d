//! `lava-flow channel`: one end of a channel (`lava_flow::channel`) per process, or
//! `lava-flow channel bench`, which starts the consumers as child processes of this binary and
//! measures frames per second, GB/s and hand-off latency, every frame checked by every consumer.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use lava_flow::channel::run::{run_consumer, run_producer, RunConfig, RunReport};
use lava_flow::channel::{
    check_options, ChannelOptions, FrameMemory, Policy, ViewApi, Views, MAX_CONSUMERS, MAX_SLOTS,
};
use lava_flow::vulkan::MemoryKind;

use crate::serve::parse_size;
use crate::CmdResult;

/// Which end this process is.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Create the pool, serve it on `--socket`, send `--frames` frames to `--consumers`.
    Producer,
    /// Connect to `--socket` and check every frame until the producer ends the channel.
    Consumer,
}

/// Where frames live and how consumers view them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Exportable Vulkan buffers (host-visible memory), imported by each consumer's Vulkan device.
    Vulkan,
    /// Sealed memfds mapped by every process.
    Host,
    /// Vulkan buffers, each consumer viewing them as CUDA buffers (imported once per slot) and
    /// checking every frame through CUDA.
    Cuda,
    /// Vulkan buffers, viewed and checked through OpenCL buffers.
    Opencl,
    /// Vulkan buffers, viewed and checked through OpenGL buffers (EGL, headless).
    Gl,
}

/// How the two ends reach each other.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A Unix socket between processes of one host; frames are shared, not copied.
    Local,
    /// Two MPI ranks, on one host or two (run under `mpirun -n 2`: rank 0 produces, rank 1
    /// consumes); frames are sent (needs the `mpi` feature; docs/REMOTE.md).
    Mpi,
}

/// What `acquire` does when every frame is in flight.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyArg {
    /// Wait for a consumer to release one (slow consumers hold the producer back).
    Block,
    /// Take back the oldest frame nobody took yet (slow consumers skip frames).
    DropOldest,
}

#[derive(clap::Args, Clone)]
pub struct EndArgs {
    /// Which end this process is (required unless `bench`).
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// The channel's Unix socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Bytes per frame (K, M, G suffixes).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub size: u64,
    /// Frames to send (producer); a consumer takes frames until the producer ends the channel.
    #[arg(long, default_value_t = 10_000)]
    pub frames: u64,
    /// Consumers the producer waits for before its first frame.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CONSUMERS)))]
    pub consumers: u32,
    /// Frames in the pool (1 to 32).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SLOTS)))]
    pub slots: u32,
    /// Where frames live, and the API consumers view and check them through.
    #[arg(long, value_enum, default_value = "vulkan")]
    pub api: Api,
    /// What the producer does when every frame is in flight.
    #[arg(long, value_enum, default_value = "block")]
    pub policy: PolicyArg,
    /// Consumer: microseconds to hold each frame before releasing it (a slow consumer).
    #[arg(long, default_value_t = 0)]
    pub hold_us: u64,
    /// Longest wait for the other side, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// How the ends reach each other (`mpi`: under `mpirun -n 2`, no --role or --socket).
    #[arg(long, value_enum, default_value = "local")]
    pub transport: Transport,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Clone)]
pub enum Sub {
    /// Start consumer processes, produce for them here and measure, every frame checked
    ///
    /// One run per frame size and consumer count: frames/s, GB/s and hand-off latency p50/p99.
    Bench(BenchArgs),
}

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Frame sizes, comma-separated (K, M, G suffixes).
    #[arg(long, value_delimiter = ',', default_value = "64K,16M", value_parser = parse_size)]
    pub size: Vec<u64>,
    /// Consumer counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub consumers: Vec<u32>,
    /// Frames per run (the 16 MiB runs and larger send a tenth of them, at least 100).
    #[arg(long, default_value_t = 20_000)]
    pub frames: u64,
    /// Frames in the pool.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SLOTS)))]
    pub slots: u32,
    /// Where frames live, and the API consumers view and check them through.
    #[arg(long, value_enum, default_value = "vulkan")]
    pub api: Api,
    /// What the producer does when every frame is in flight.
    #[arg(long, value_enum, default_value = "block")]
    pub policy: PolicyArg,
    /// Longest wait for the other side, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// How the ends reach each other (`mpi`: run under `mpirun -n 2`; raw rsmpi is measured beside it).
    #[arg(long, value_enum, default_value = "local")]
    pub transport: Transport,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub sub: Option<Sub>,
    #[command(flatten)]
    pub end: EndArgs,
}

fn memory(api: Api) -> FrameMemory {
    match api {
        Api::Host => FrameMemory::Host,
        Api::Vulkan | Api::Cuda | Api::Opencl | Api::Gl => FrameMemory::Vulkan(MemoryKind::HostVisible),
    }
}

/// The consumer's views: frames of `--api cuda|opencl|gl` are imported into that API once per
/// slot and checked through it.
fn views(api: Api) -> lava_flow::Result<Views> {
    match api {
        Api::Vulkan | Api::Host => Ok(Views::default()),
        Api::Cuda => Views::matching(ViewApi::Cuda),
        Api::Opencl => Views::matching(ViewApi::OpenCl),
        Api::Gl => Views::matching(ViewApi::Gl),
    }
}

fn api_name(api: Api) -> &'static str {
    match api {
        Api::Vulkan => "vulkan",
        Api::Host => "host",
        Api::Cuda => "cuda",
        Api::Opencl => "opencl",
        Api::Gl => "gl",
    }
}

fn policy(p: PolicyArg) -> Policy {
    match p {
        PolicyArg::Block => Policy::Block,
        PolicyArg::DropOldest => Policy::DropOldest,
    }
}

fn options(size: u64, slots: u32, api: Api, p: PolicyArg, consumers: u32, timeout: u64) -> CmdResultOf<ChannelOptions> {
    let options = ChannelOptions {
        slots,
        frame_size: size,
        memory: memory(api),
        views: views(api)?,
        policy: policy(p),
        max_consumers: consumers.max(8),
        timeout: Duration::from_secs(timeout),
        ..ChannelOptions::default()
    };
    // Before anything is allocated or a consumer started: sizes the machine cannot hold are
    // refused here.
    check_options(&options)?;
    Ok(options)
}

type CmdResultOf<T> = Result<T, Box<dyn std::error::Error>>;

pub fn run(args: &Args) -> CmdResult {
    if let Some(Sub::Bench(b)) = &args.sub {
        if b.transport == Transport::Mpi {
            return mpi_bench(b);
        }
        return bench(b);
    }
    let a = &args.end;
    if a.transport == Transport::Mpi {
        return mpi_run(a);
    }
    let (Some(role), Some(socket)) = (a.role, a.socket.clone()) else {
        return Err(crate::UsageError(
            "`lava-flow channel` needs --role and --socket (or the `bench` subcommand)".into(),
        )
        .into());
    };
    let options = options(a.size, a.slots, a.api, a.policy, a.consumers, a.timeout)?;
    let config = RunConfig {
        socket,
        options,
        frames: match role {
            Role::Producer => Some(a.frames),
            Role::Consumer => None,
        },
        consumers: a.consumers as usize,
        hold: Duration::from_micros(a.hold_us),
        check_all: true,
    };
    let report = match role {
        Role::Producer => {
            eprintln!(
                "channel: serving {} frames of {} bytes on {}, waiting for {} consumer(s)",
                a.slots,
                a.size,
                config.socket.display(),
                a.consumers
            );
            run_producer(&config)?
        }
        Role::Consumer => run_consumer(&config)?,
    };
    if a.json {
        crate::emit(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        crate::emit(&format!("{report}\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Before any consumer process starts: the view API opens here on the device the producer
/// will allocate on (the consumers open the same one), so a machine without it gets the
/// importer's error at once instead of a producer waiting for consumers that already failed.
fn preflight_view(api: Api) -> CmdResultOf<()> {
    let views = views(api)?;
    if views.apis().is_empty() {
        return Ok(());
    }
    let identity = lava_flow::VulkanContext::new()?.identity();
    #[cfg(feature = "gl")]
    if api == Api::Gl {
        lava_flow::gl::GlContext::for_identity(&identity)?;
    }
    #[cfg(feature = "cuda")]
    if api == Api::Cuda {
        lava_flow::cuda::CudaDevice::for_identity(&identity)?;
    }
    #[cfg(feature = "opencl")]
    if api == Api::Opencl {
        lava_flow::opencl::ClContext::for_identity(&identity)?;
    }
    let _ = identity;
    Ok(())
}

/// One bench run: `consumers` child processes and the producer here.
fn bench_run(b: &BenchArgs, size: u64, consumers: u32, n: u64) -> CmdResultOf<(RunReport, Vec<serde_json::Value>)> {
    let options = options(size, b.slots, b.api, b.policy, consumers, b.timeout)?;
    let socket = std::env::temp_dir().join(format!("lava-flow-channel-{}-{size}-{consumers}.sock", std::process::id()));
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = Vec::new();
    for _ in 0..consumers {
        let mut cmd = Command::new(&exe);
        cmd.args(["channel", "--role", "consumer", "--json", "--socket"])
            .arg(&socket)
            .args(["--api", api_name(b.api), "--timeout", &b.timeout.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        children.push(cmd.spawn()?);
    }
    let config = RunConfig {
        socket,
        options,
        frames: Some(n),
        consumers: consumers as usize,
        hold: Duration::ZERO,
        check_all: true,
    };
    let produced = run_producer(&config);
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for mut child in children {
        if produced.is_err() {
            // The consumers would wait for a producer that is not coming until their timeout.
            let _ = child.kill();
        }
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out)?;
        }
        let status = child.wait()?;
        match serde_json::from_str::<serde_json::Value>(&out) {
            Ok(v) if status.success() => reports.push(v),
            _ => failures.push(format!("a consumer process failed ({status}); its output: {}", out.trim())),
        }
    }
    let producer = produced?;
    if !failures.is_empty() {
        return Err(failures.join("\n").into());
    }
    Ok((producer, reports))
}

fn bench(b: &BenchArgs) -> CmdResult {
    if let Some(&bad) = b.consumers.iter().find(|&&c| c == 0 || c > MAX_CONSUMERS) {
        return Err(crate::UsageError(format!("--consumers {bad}: each count must be in 1..={MAX_CONSUMERS}")).into());
    }
    preflight_view(b.api)?;
    let mut rows = Vec::new();
    let mut table = crate::table::Table::new(&[
        "frame",
        "consumers",
        "frames",
        "frames/s",
        "GB/s",
        "p50 (us)",
        "p99 (us)",
        "waiting p50 (us)",
        "waiting p99 (us)",
        "sync",
    ]);
    let mut resources = Vec::new();
    for &size in &b.size {
        for &consumers in &b.consumers {
            let n = if size >= 16 << 20 { (b.frames / 10).max(100) } else { b.frames };
            let (producer, reports) = bench_run(b, size, consumers, n)?;
            for r in &reports {
                if r["frames"].as_u64() != Some(n) && b.policy == PolicyArg::Block {
                    return Err(format!("a consumer checked {} of {n} frames: {r}", r["frames"]).into());
                }
            }
            let us = |r: &serde_json::Value, l: &str, k: &str| r[l][k].as_f64().unwrap_or(f64::NAN) / 1e3;
            let worst = |l: &str, k: &str| reports.iter().map(|r| us(r, l, k)).fold(f64::NAN, f64::max);
            table.row([
                crate::table::bytes(size),
                consumers.to_string(),
                n.to_string(),
                format!("{:.0}", producer.frames_per_second),
                format!("{:.2}", producer.bytes_per_second / 1e9),
                format!("{:.1}", worst("latency", "p50_ns")),
                format!("{:.1}", worst("latency", "p99_ns")),
                format!("{:.1}", worst("wake_latency", "p50_ns")),
                format!("{:.1}", worst("wake_latency", "p99_ns")),
                producer.sync.to_string(),
            ]);
            let flat = |r: &serde_json::Value| {
                let r = &r["resources"];
                format!(
                    "fds {} -> {}, RSS {} -> {} KiB",
                    r["fds_first"], r["fds_last"], r["rss_kib_first"], r["rss_kib_last"]
                )
            };
            if let Ok(p) = serde_json::to_value(&producer) {
                if !p["resources"].is_null() {
                    let mut line = format!("{} x{consumers}: producer {}", crate::table::bytes(size), flat(&p));
                    for (i, r) in reports.iter().enumerate() {
                        line += &format!("; consumer {} ({} imports) {}", i + 1, r["imports"], flat(r));
                    }
                    resources.push(line);
                }
            }
            rows.push(serde_json::json!({
                "frame_size": size,
                "consumers": consumers,
                "producer": producer,
                "consumer_reports": reports,
            }));
        }
    }
    if b.json {
        crate::emit(&(serde_json::to_string_pretty(&rows)? + "\n"))?;
    } else {
        crate::emit(&format!(
            "channel bench ({} frames, {} slots, {:?} policy); latency: the slowest consumer's, from the producer's \
             send to the consumer holding the frame, over every frame (queueing included) and over the frames the \
             consumer was already waiting for; every frame checked by every consumer\n{}",
            api_name(b.api),
            b.slots,
            b.policy,
            table.render(2)
        ))?;
        crate::emit(&format!(
            "open fds and resident memory, after the first frame -> after the last:\n{}\n",
            resources.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Frames cross ranks as Vulkan or host memory.
#[cfg(feature = "mpi")]
fn mpi_memory(api: Api) -> Result<crate::channel_mpi::Memory, Box<dyn std::error::Error>> {
    match api {
        Api::Vulkan => Ok(crate::channel_mpi::Memory::Vulkan),
        Api::Host => Ok(crate::channel_mpi::Memory::Host),
        other => Err(crate::UsageError(format!(
            "--api {} with --transport mpi: frames cross ranks as Vulkan or host memory (use --api vulkan or host)",
            api_name(other)
        ))
        .into()),
    }
}

#[cfg(feature = "mpi")]
fn mpi_run(a: &EndArgs) -> CmdResult {
    crate::channel_mpi::run(&crate::channel_mpi::RunArgs {
        memory: mpi_memory(a.api)?,
        size: a.size,
        frames: a.frames,
        slots: a.slots,
        timeout: Duration::from_secs(a.timeout),
        json: a.json,
    })
}

#[cfg(feature = "mpi")]
fn mpi_bench(b: &BenchArgs) -> CmdResult {
    crate::channel_mpi::bench(&crate::channel_mpi::BenchArgs {
        memory: mpi_memory(b.api)?,
        sizes: b.size.clone(),
        slots: b.slots,
        timeout: Duration::from_secs(b.timeout),
        json: b.json,
    })
}

#[cfg(not(feature = "mpi"))]
fn mpi_run(_: &EndArgs) -> CmdResult {
    Err(no_mpi())
}

#[cfg(not(feature = "mpi"))]
fn mpi_bench(_: &BenchArgs) -> CmdResult {
    Err(no_mpi())
}

#[cfg(not(feature = "mpi"))]
fn no_mpi() -> Box<dyn std::error::Error> {
    crate::UsageError(
        "--transport mpi: this lava-flow was built without the `mpi` feature; build it with \
         `cargo build -p lava-flow-cli --features mpi` (needs Open MPI and libclang, docs/REMOTE.md)"
            .into(),
    )
    .into()
}
