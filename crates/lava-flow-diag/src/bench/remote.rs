//! Frames between two MPI ranks: lava-flow's `remote` transport against raw rsmpi send/receive
//! of the same sizes, in the same run (rank 0 sends, rank 1 receives; run under `mpirun -n 2`).
//!
//! Each size runs three rounds, raw and lava-flow alternating; the figures are the medians.
//!
//! The raw loop is the floor: one `MPI_Send` per frame into one reused receive buffer, no flow
//! control, no header. lava-flow adds a header message per frame, chunking, and credits (the
//! receiver's slots bound what is in flight). Both loops check every frame's first 8 bytes (its
//! sequence number), so neither can skip work.

use std::time::{Duration, Instant};

use lava_flow::remote::mpi::point_to_point::{Destination, Source as _};
use lava_flow::remote::mpi::topology::Communicator;
use lava_flow::remote::{MpiContext, MpiReceiver, MpiSender, ReceiverOptions, Source};
use lava_flow::{Error, Result};

use super::Row;

/// The raw loop's tag (lava-flow's channels use 1000 and up).
const RAW_TAG: i32 = 77;

/// One frame size's figures, on rank 0.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figures {
    /// Frame size in bytes.
    pub size: u64,
    /// Frames per loop.
    pub frames: u64,
    /// Raw send/receive: GB/s and microseconds per frame.
    pub raw_gbps: f64,
    /// See `raw_gbps`.
    pub raw_us_per_frame: f64,
    /// lava-flow: GB/s and microseconds per frame.
    pub lava_flow_gbps: f64,
    /// See `lava_flow_gbps`.
    pub lava_flow_us_per_frame: f64,
}

impl Figures {
    /// lava-flow's bandwidth over raw's.
    pub fn ratio(&self) -> f64 {
        self.lava_flow_gbps / self.raw_gbps
    }

    /// What lava-flow adds per frame, in microseconds.
    pub fn added_us(&self) -> f64 {
        self.lava_flow_us_per_frame - self.raw_us_per_frame
    }

    /// As `lava-flow bench` rows: bandwidth, and time per frame.
    pub fn rows(&self, transport: &str) -> [Row; 2] {
        let size = lava_flow::limits::human_bytes(self.size);
        let mut bw =
            Row::new("mpi", format!("{transport}: {size} frames"), self.lava_flow_gbps, Some(self.raw_gbps), "GB/s");
        bw.iterations = self.frames as u32;
        let mut lat = Row::new(
            "mpi",
            format!("{transport}: time per {size} frame"),
            self.lava_flow_us_per_frame,
            Some(self.raw_us_per_frame),
            "us",
        );
        lat.iterations = self.frames as u32;
        [bw, lat]
    }
}

/// How many frames of `size` bytes a loop sends: about `budget` bytes, from 200 to 20,000 frames.
pub fn frames_for(size: u64, budget: u64) -> u64 {
    (budget / size.max(1)).clamp(200, 20_000)
}

/// Runs every size on both ranks (rank 0 sends, rank 1 receives); returns the figures on rank 0
/// and nothing on rank 1. `channel` picks the tags; `slots` and `chunk` set up lava-flow's
/// receiver.
pub fn run(mpi: &MpiContext, sizes: &[u64], budget: u64, slots: u32, chunk: u64) -> Result<Vec<Figures>> {
    if mpi.size() != 2 {
        return Err(Error::invalid(
            format!("an MPI benchmark in a job of {} ranks", mpi.size()),
            "it needs exactly two: rank 0 sends, rank 1 receives",
            "run it under `mpirun -n 2`",
        ));
    }
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let frames = frames_for(size, budget);
        // Three rounds, raw and lava-flow alternating, and the median of each: one short run is
        // at the mercy of whatever else the machine does in those milliseconds.
        let (mut raws, mut lavas) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            raws.extend(raw_loop(mpi, size, frames)?);
            let channel = (i * ROUNDS + round) as u16;
            lavas.extend(lava_flow_loop(mpi, channel, size, frames, slots, chunk)?);
        }
        if let (Some(raw), Some(lava)) = (median(raws), median(lavas)) {
            let gbps = |t: Duration| (size * frames) as f64 / t.as_secs_f64() / 1e9;
            let per = |t: Duration| t.as_secs_f64() * 1e6 / frames as f64;
            out.push(Figures {
                size,
                frames,
                raw_gbps: gbps(raw),
                raw_us_per_frame: per(raw),
                lava_flow_gbps: gbps(lava),
                lava_flow_us_per_frame: per(lava),
            });
        }
    }
    Ok(out)
}

/// Rounds per size (the figures are their medians).
const ROUNDS: usize = 3;

fn median(mut times: Vec<Duration>) -> Option<Duration> {
    times.sort();
    times.get(times.len() / 2).copied()
}

fn stamp(frame: &mut [u8], seq: u64) {
    let n = frame.len().min(8);
    frame[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

fn check(frame: &[u8], seq: u64) -> Result<()> {
    let n = frame.len().min(8);
    if frame[..n] != seq.to_le_bytes()[..n] {
        return Err(Error::Mismatch {
            what: "an MPI frame".into(),
            detail: format!("frame {seq} carried another number"),
        });
    }
    Ok(())
}

/// Sends `frames` frames raw; rank 0 returns the time from the start to the receiver's
/// acknowledgement of the last.
fn raw_loop(mpi: &MpiContext, size: u64, frames: u64) -> Result<Option<Duration>> {
    let world = mpi.universe().world();
    let mut frame = vec![0u8; size as usize];
    mpi.barrier();
    if mpi.rank() == 0 {
        let peer = world.process_at_rank(1);
        let started = Instant::now();
        for seq in 0..frames {
            stamp(&mut frame, seq);
            peer.send_with_tag(&frame[..], RAW_TAG);
        }
        let (_ack, _) = peer.receive_with_tag::<u8>(RAW_TAG + 1);
        Ok(Some(started.elapsed()))
    } else {
        let peer = world.process_at_rank(0);
        for seq in 0..frames {
            peer.receive_into_with_tag(&mut frame[..], RAW_TAG);
            check(&frame, seq)?;
        }
        peer.send_with_tag(&1u8, RAW_TAG + 1);
        Ok(None)
    }
}

/// The same through lava-flow's sender and receiver.
fn lava_flow_loop(
    mpi: &MpiContext,
    channel: u16,
    size: u64,
    frames: u64,
    slots: u32,
    chunk: u64,
) -> Result<Option<Duration>> {
    let timeout = Duration::from_secs(60);
    if mpi.rank() == 0 {
        let mut frame = vec![0u8; size as usize];
        let mut tx = MpiSender::connect(mpi, 1, channel, timeout)?;
        mpi.barrier();
        let started = Instant::now();
        for seq in 0..frames {
            stamp(&mut frame, seq);
            tx.send(Source::Host(&frame), &[])?;
        }
        // The receiver's last credit says the last frame arrived and was checked.
        drop(tx);
        let world = mpi.universe().world();
        let (_ack, _) = world.process_at_rank(1).receive_with_tag::<u8>(RAW_TAG + 1);
        Ok(Some(started.elapsed()))
    } else {
        let options = ReceiverOptions::new(size).slots(slots).chunk(chunk.min(size.max(1))).timeout(timeout);
        let rx = MpiReceiver::new(mpi, 0, channel, &options)?;
        mpi.barrier();
        for seq in 0..frames {
            let frame = rx.recv()?.ok_or_else(|| Error::Protocol {
                reason: format!("the stream ended after {seq} of {frames} frames"),
                advice: "both ranks must run the same benchmark".into(),
            })?;
            check(frame.bytes(), seq)?;
        }
        if rx.recv()?.is_some() {
            return Err(Error::Protocol { reason: "a frame beyond the last".into(), advice: "-".into() });
        }
        mpi.universe().world().process_at_rank(0).send_with_tag(&1u8, RAW_TAG + 1);
        Ok(None)
    }
}
