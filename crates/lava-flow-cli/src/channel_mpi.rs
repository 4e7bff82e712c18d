//! `lava-flow channel --transport mpi` and `channel bench --transport mpi`, run under
//! `mpirun -n 2`: rank 0 produces, rank 1 consumes, every frame checked (docs/REMOTE.md).

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use lava_flow::channel::run::{check_pattern, fill_pattern, Latency};
use lava_flow::remote::{MpiContext, MpiReceiver, MpiSender, ReceiverOptions, Source, StagedMemory};
use lava_flow::vulkan::MemoryKind;
use lava_flow::{Buffer, BufferOptions, SharedHostMemory, VulkanContext};
use lava_flow_diag::bench::remote as raw_bench;

use crate::CmdResult;

/// Where frames live on either rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// A host-visible Vulkan buffer per slot.
    Vulkan,
    /// Shared host memory (a memfd) per slot.
    Host,
}

/// What one run moves.
pub struct RunArgs {
    pub memory: Memory,
    pub size: u64,
    pub frames: u64,
    pub slots: u32,
    pub timeout: Duration,
    pub json: bool,
}

/// What the bench measures.
pub struct BenchArgs {
    pub memory: Memory,
    pub sizes: Vec<u64>,
    pub slots: u32,
    pub timeout: Duration,
    pub json: bool,
}

/// The channel number both ranks use (the bench's raw-against-lava-flow loops use 0 and up, three
/// per size).
const CHANNEL: u16 = 500;

/// What rank 1 reports after a run.
#[derive(serde::Serialize)]
struct Report {
    transport: &'static str,
    memory: &'static str,
    frame_size: u64,
    frames: u64,
    elapsed_s: f64,
    frames_per_second: f64,
    bytes_per_second: f64,
    /// From the sender's send to the receiver holding the checked frame (one host's clock; across
    /// hosts it includes their clocks' offset).
    latency: Option<Latency>,
    host_names: [String; 2],
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn init() -> Result<MpiContext, Box<dyn std::error::Error>> {
    let mpi = MpiContext::initialize()?;
    if mpi.size() != 2 {
        return Err(crate::UsageError(format!(
            "--transport mpi runs as exactly two ranks (rank 0 produces, rank 1 consumes), this job has {}: \
             start it with `mpirun -n 2 lava-flow channel ... --transport mpi`",
            mpi.size()
        ))
        .into());
    }
    Ok(mpi)
}

/// One frame of memory in this rank's own pool: a Vulkan buffer or shared host memory.
fn frame_memory(memory: Memory, size: u64) -> Result<Box<dyn StagedMemory>, Box<dyn std::error::Error>> {
    Ok(match memory {
        Memory::Vulkan => {
            let ctx = VulkanContext::new()?;
            Box::new(Buffer::new(&ctx, &BufferOptions::new(size).memory(MemoryKind::HostVisible))?)
        }
        Memory::Host => Box::new(SharedHostMemory::create(size, 4096)?),
    })
}

/// `lava-flow channel --transport mpi`: one run, rank 1 prints its report.
pub fn run(a: &RunArgs) -> CmdResult {
    let mpi = init()?;
    let report = transfer(&mpi, a.memory, a.size, a.frames, a.slots, a.timeout)?;
    if let Some(report) = report {
        if a.json {
            crate::emit(&(serde_json::to_string_pretty(&report)? + "\n"))?;
        } else {
            crate::emit(&format!("{}\n", text(&report)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn text(r: &Report) -> String {
    let lat = |f: fn(&Latency) -> u64| r.latency.as_ref().map_or("-".into(), |l| format!("{:.1}", f(l) as f64 / 1e3));
    format!(
        "channel over MPI ({} frames, {} -> {}): {} frames of {} checked, {:.0} frames/s, {:.2} GB/s, hand-off \
         p50 {} us, p99 {} us",
        r.memory,
        r.host_names[0],
        r.host_names[1],
        r.frames,
        crate::table::bytes(r.frame_size),
        r.frames_per_second,
        r.bytes_per_second / 1e9,
        lat(|l| l.p50_ns),
        lat(|l| l.p99_ns),
    )
}

/// Rank 0 fills and sends `frames` frames of its pool; rank 1 receives each into its pool and
/// checks it. Returns rank 1's report (`None` on rank 0).
fn transfer(
    mpi: &MpiContext,
    api: Memory,
    size: u64,
    frames: u64,
    slots: u32,
    timeout: Duration,
) -> Result<Option<Report>, Box<dyn std::error::Error>> {
    let host_name = mpi.host_name();
    let memory_name = match api {
        Memory::Host => "host",
        Memory::Vulkan => "vulkan",
    };
    if mpi.rank() == 0 {
        let mut pool: Vec<Box<dyn StagedMemory>> =
            (0..slots).map(|_| frame_memory(api, size)).collect::<Result<_, _>>()?;
        let mut bytes = vec![0u8; size as usize];
        let mut tx = MpiSender::connect(mpi, 1, CHANNEL, timeout)?;
        for k in 0..frames {
            // The frame is written before it is sent, as a producer of a local channel does.
            let frame = &mut pool[(k % u64::from(slots)) as usize];
            fill_pattern(&mut bytes, k);
            frame.write(0, &bytes)?;
            tx.send_timeout(Source::Staged { memory: frame.as_ref(), len: size }, &[], timeout)?;
        }
        drop(tx);
        send_host_name(mpi, &host_name);
        Ok(None)
    } else {
        let mut pool: Vec<Box<dyn StagedMemory>> =
            (0..slots).map(|_| frame_memory(api, size)).collect::<Result<_, _>>()?;
        let options = ReceiverOptions::new(size).slots(slots).timeout(timeout);
        let rx = MpiReceiver::new(mpi, 0, CHANNEL, &options)?;
        let mut bytes = vec![0u8; size as usize];
        let mut latencies = Vec::with_capacity(frames as usize);
        let mut started = None;
        let mut got = 0u64;
        loop {
            let frame = &mut pool[(got % u64::from(slots)) as usize];
            let Some(info) = rx.recv_into(frame.as_mut(), timeout)? else { break };
            let held = now_ns();
            started.get_or_insert_with(Instant::now);
            latencies.push(held.saturating_sub(info.sent_at_ns));
            if info.sequence != got || info.len != size {
                return Err(format!("frame {got}: got frame {} of {} bytes", info.sequence, info.len).into());
            }
            frame.read_into(0, &mut bytes)?;
            check_pattern(&bytes, got)?;
            got += 1;
        }
        let elapsed = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        if got != frames {
            return Err(format!("rank 1 checked {got} frames, {frames} were due").into());
        }
        let peer_host = receive_host_name(mpi);
        Ok(Some(Report {
            transport: "mpi",
            memory: memory_name,
            frame_size: size,
            frames: got,
            elapsed_s: elapsed,
            frames_per_second: got as f64 / elapsed.max(1e-9),
            bytes_per_second: (got * size) as f64 / elapsed.max(1e-9),
            latency: Latency::of(latencies),
            host_names: [peer_host, host_name],
        }))
    }
}

const HOST_TAG: i32 = 99;

fn send_host_name(mpi: &MpiContext, name: &str) {
    use lava_flow::remote::mpi::point_to_point::Destination;
    use lava_flow::remote::mpi::topology::Communicator;
    mpi.universe().world().process_at_rank(1).send_with_tag(name.as_bytes(), HOST_TAG);
}

fn receive_host_name(mpi: &MpiContext) -> String {
    use lava_flow::remote::mpi::point_to_point::Source as _;
    use lava_flow::remote::mpi::topology::Communicator;
    let (bytes, _) = mpi.universe().world().process_at_rank(0).receive_vec_with_tag::<u8>(HOST_TAG);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `lava-flow channel bench --transport mpi`: per size, raw rsmpi send/receive against
/// lava-flow's transport (both checking every frame's number), then a channel run checking every
/// byte of every frame.
pub fn bench(b: &BenchArgs) -> CmdResult {
    let mpi = init()?;
    let budget = 1 << 30;
    let figures = raw_bench::run(&mpi, &b.sizes, budget, b.slots.max(8), 4 << 20)?;
    let mut checked = Vec::new();
    for &size in &b.sizes {
        let frames = raw_bench::frames_for(size, budget / 4);
        if let Some(r) = transfer(&mpi, b.memory, size, frames, b.slots, b.timeout)? {
            checked.push(r);
        }
    }
    mpi.barrier();
    if mpi.rank() != 0 {
        // Rank 0 prints; rank 1 sends its channel reports there.
        let json = serde_json::to_vec(&checked)?;
        use lava_flow::remote::mpi::point_to_point::Destination;
        use lava_flow::remote::mpi::topology::Communicator;
        mpi.universe().world().process_at_rank(0).send_with_tag(&json[..], HOST_TAG + 1);
        return Ok(ExitCode::SUCCESS);
    }
    let checked: Vec<serde_json::Value> = {
        use lava_flow::remote::mpi::point_to_point::Source as _;
        use lava_flow::remote::mpi::topology::Communicator;
        let (bytes, _) = mpi.universe().world().process_at_rank(1).receive_vec_with_tag::<u8>(HOST_TAG + 1);
        serde_json::from_slice(&bytes)?
    };
    if b.json {
        let out = serde_json::json!({ "raw_against_lava_flow": figures, "channel": checked });
        crate::emit(&(serde_json::to_string_pretty(&out)? + "\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = crate::table::Table::new(&[
        "frame",
        "frames",
        "raw GB/s",
        "lava-flow GB/s",
        "ratio",
        "raw us/frame",
        "lava-flow us/frame",
        "added us",
        "channel GB/s",
        "hand-off p50 (us)",
        "p99 (us)",
    ]);
    for f in &figures {
        let c = checked.iter().find(|c| c["frame_size"].as_u64() == Some(f.size));
        let field = |k: &str| c.and_then(|c| c[k].as_f64());
        let lat = |k: &str| c.and_then(|c| c["latency"][k].as_f64()).map_or("-".into(), |v| format!("{:.1}", v / 1e3));
        table.row([
            crate::table::bytes(f.size),
            f.frames.to_string(),
            format!("{:.2}", f.raw_gbps),
            format!("{:.2}", f.lava_flow_gbps),
            format!("{:.2}", f.ratio()),
            format!("{:.2}", f.raw_us_per_frame),
            format!("{:.2}", f.lava_flow_us_per_frame),
            format!("{:.2}", f.added_us()),
            field("bytes_per_second").map_or("-".into(), |v| format!("{:.2}", v / 1e9)),
            lat("p50_ns"),
            lat("p99_ns"),
        ]);
    }
    crate::emit(&format!(
        "channel bench over MPI ({}, {} frames in the channel runs): raw rsmpi send/receive against lava-flow's \
         transport (host frames, each frame's number checked), then the channel run (frames filled in rank 0's \
         pool, received into rank 1's, every byte checked)\n{}",
        mpi.library_version().lines().next().unwrap_or(""),
        match b.memory {
            Memory::Host => "host",
            Memory::Vulkan => "vulkan",
        },
        table.render(2)
    ))?;
    Ok(ExitCode::SUCCESS)
}
