//! A channel across MPI ranks (feature `mpi`): relays between a local channel and
//! [`remote`](crate::remote)'s transport, so that consumers on another host use frames exactly as
//! local ones.
//!
//! ```text
//! host A: producer --socket--> forward() --MPI--> serve() --socket--> consumers on host B
//! ```
//!
//! [`forward`] is a consumer of a local channel that sends every frame (its bytes and its
//! [`Metadata`]) to a rank; [`serve`] receives them on that rank into the frames of a local
//! [`Producer`]'s pool and sends them on to its consumers, which see ordinary channel frames
//! (Vulkan buffers or shared host memory, with the producer's metadata). Order is kept end to end;
//! backpressure too: a slow consumer on host B holds `serve` back, which stops granting MPI
//! credits, which holds `forward` back, which holds host A's producer back (policy `block`).

use std::time::Duration;

use super::wire::{self, ChannelMessage, FrameMessage};
use super::{Consumer, Metadata, Producer};
use crate::remote::{MpiReceiver, MpiSender, Source};
use crate::{Error, Result};

/// What a relay moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayStats {
    /// Frames relayed.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Sends every frame `consumer` receives to `sender`'s rank, with its metadata, and releases it
/// once sent; ends when the local channel ends (cleanly: `Ok`) or after `limit` frames.
pub fn forward(consumer: &Consumer, sender: &mut MpiSender<'_>, limit: Option<u64>) -> Result<RelayStats> {
    let mut stats = RelayStats::default();
    while limit.is_none_or(|l| stats.frames < l) {
        let frame = match consumer.recv() {
            Ok(frame) => frame,
            Err(Error::Closed { clean: true, .. }) => break,
            Err(e) => return Err(e),
        };
        let len = if frame.is_empty() { consumer.frame_size() } else { frame.len() };
        let meta = wire::encode(&ChannelMessage::Frame(FrameMessage {
            slot: 0,
            sequence: frame.sequence(),
            timeline: frame.sequence() + 1,
            sent_ns: 0,
            metadata: frame.metadata().clone(),
        }))
        .map_err(|e| Error::Protocol { reason: e.0, advice: "send metadata the channel's wire format takes".into() })?;
        let source = match (frame.buffer(), frame.host_memory()) {
            (Some(buffer), _) => Source::Staged { memory: buffer, len },
            (None, Some(memory)) => Source::Staged { memory, len },
            (None, None) => unreachable!("a frame is a Vulkan buffer or shared host memory"),
        };
        sender.send(source, &meta)?;
        stats.frames += 1;
        stats.bytes += len;
    }
    Ok(stats)
}

/// Receives frames from `receiver`'s rank into frames of `producer`'s pool and sends each on with
/// the metadata it came with; ends when the sending rank ends the stream. `timeout`: the longest
/// wait for one frame.
pub fn serve(receiver: &MpiReceiver<'_>, producer: &mut Producer, timeout: Duration) -> Result<RelayStats> {
    let mut stats = RelayStats::default();
    loop {
        let mut frame = producer.acquire()?;
        let info = match frame.buffer() {
            Some(buffer) => receiver.recv_into(buffer, timeout)?,
            None => {
                let memory = frame.host_memory().expect("a frame is a Vulkan buffer or shared host memory");
                receiver.recv_into(memory, timeout)?
            }
        };
        // The sending rank ended the stream: the unsent frame goes back to the pool.
        let Some(info) = info else { return Ok(stats) };
        // Frames from `forward` carry the channel's own FRAME encoding of their metadata; a bare
        // `MpiSender` may send none (plain bytes).
        let metadata = if info.metadata.is_empty() {
            Metadata::bytes(info.len)
        } else {
            match wire::decode(&info.metadata, 1) {
                Ok(ChannelMessage::Frame(f)) => f.metadata,
                Ok(other) => return Err(relay_error(format!("frame {} carried {other:?} as metadata", info.sequence))),
                Err(e) => return Err(relay_error(format!("frame {}'s metadata: {}", info.sequence, e.0))),
            }
        };
        frame.send(metadata)?;
        stats.frames += 1;
        stats.bytes += info.len;
    }
}

fn relay_error(reason: String) -> Error {
    Error::Protocol {
        reason,
        advice: "send frames to a relay with `channel::relay::forward` (or with no metadata)".into(),
    }
}
