//! The sending end: waits for credits, sends a header and the frame's chunks.

use std::time::{Duration, Instant, SystemTime};

use mpi::point_to_point::{Destination, Source as _};
use mpi::request;
use mpi::traits::*;

use super::backoff::Backoff;
use super::context::MpiContext;
use super::wire::{travels_inline, Control, MAX_CONTROL, MAX_METADATA};
use super::{Rank, StagedMemory};
use crate::{Buffer, Error, Result};

/// The tags of channel `channel`: frames (sender to receiver), then credits (receiver to sender).
pub(super) fn tags(channel: u16) -> (i32, i32) {
    let base = 1000 + 2 * i32::from(channel);
    (base, base + 1)
}

/// Where a frame's bytes are.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// Host memory, sent straight from it.
    Host(&'a [u8]),
    /// A Vulkan buffer, copied out chunk by chunk ([`Buffer::read_into`]) into host staging, each
    /// copy-out overlapping the send of the chunk before.
    Buffer(&'a Buffer),
    /// The first `len` bytes of any [`StagedMemory`] (shared host memory, a frame of a local
    /// channel), staged as a buffer is.
    Staged {
        /// Where the bytes are.
        memory: &'a dyn StagedMemory,
        /// How many, from the start (at most `memory.size()`).
        len: u64,
    },
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Source::Host(_) => "Host",
            Source::Buffer(_) => "Buffer",
            Source::Staged { .. } => "Staged",
        };
        f.debug_struct("Source").field("kind", &kind).field("len", &self.len()).finish()
    }
}

impl Source<'_> {
    fn len(&self) -> u64 {
        match self {
            Source::Host(bytes) => bytes.len() as u64,
            Source::Buffer(buffer) => buffer.size(),
            Source::Staged { len, .. } => *len,
        }
    }
}

/// The sending end of a channel to another rank.
pub struct MpiSender<'c> {
    mpi: &'c MpiContext,
    peer: Rank,
    frame_tag: i32,
    credit_tag: i32,
    slots: u32,
    max_frame: u64,
    chunk: u64,
    credits: u32,
    sent: u64,
    closed: bool,
    /// Host staging for buffer frames: two chunks, one sending while the other fills.
    staging: [Vec<u8>; 2],
    /// A frame's header (and its bytes, where they travel inline), reused from frame to frame.
    message: Vec<u8>,
}

impl std::fmt::Debug for MpiSender<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiSender")
            .field("peer", &self.peer)
            .field("frame_tag", &self.frame_tag)
            .field("credits", &self.credits)
            .field("sent", &self.sent)
            .finish()
    }
}

impl<'c> MpiSender<'c> {
    /// Waits up to `timeout` for the greeting of the receiver of channel `channel` on rank `peer`
    /// (it says how many frames may be in flight, how large they may be and the chunk size).
    pub fn connect(mpi: &'c MpiContext, peer: Rank, channel: u16, timeout: Duration) -> Result<MpiSender<'c>> {
        mpi.check_peer(peer)?;
        let (frame_tag, credit_tag) = tags(channel);
        let mut sender = MpiSender {
            mpi,
            peer,
            frame_tag,
            credit_tag,
            slots: 0,
            max_frame: 0,
            chunk: 0,
            credits: 0,
            sent: 0,
            closed: false,
            staging: [Vec::new(), Vec::new()],
            message: Vec::new(),
        };
        let deadline = Instant::now() + timeout;
        let backoff = Backoff::new();
        loop {
            match sender.poll_control()? {
                Some(Control::Hello { slots, max_frame, chunk }) => {
                    sender.slots = slots;
                    sender.credits = slots;
                    sender.max_frame = max_frame;
                    sender.chunk = chunk;
                    return Ok(sender);
                }
                // Credits and goodbyes of an earlier receiver on this channel: MPI keeps one
                // sender's messages on one tag in order, so whatever precedes the greeting is older
                // than it.
                Some(Control::Credit { .. } | Control::Bye) => {}
                Some(other) => {
                    return Err(Error::Protocol {
                        reason: format!("rank {peer} sent {other:?} before its greeting on channel {channel}"),
                        advice: "nothing else may use the channel's tags".into(),
                    })
                }
                None if Instant::now() >= deadline => {
                    return Err(Error::Timeout {
                        action: format!("waiting for the receiver of channel {channel} on rank {peer} to greet"),
                        timeout,
                    })
                }
                None => backoff.pause(),
            }
        }
    }

    /// The largest frame the receiver takes.
    pub fn max_frame(&self) -> u64 {
        self.max_frame
    }

    /// How many frames the receiver can still take now.
    pub fn credits(&self) -> u32 {
        self.credits
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends one frame with `metadata`, waiting for a credit as long as it takes (backpressure:
    /// the receiver holds every slot). Returns the frame's sequence number.
    pub fn send(&mut self, source: Source<'_>, metadata: &[u8]) -> Result<u64> {
        self.send_timeout(source, metadata, Duration::MAX)
    }

    /// As [`send`](Self::send), but gives up with [`Error::Timeout`] when no credit came within
    /// `timeout` (nothing is sent then).
    pub fn send_timeout(&mut self, source: Source<'_>, metadata: &[u8], timeout: Duration) -> Result<u64> {
        self.check_frame(&source, metadata)?;
        let deadline = Instant::now().checked_add(timeout);
        // Look for credits (and a goodbye) when none are left, and every 16th frame otherwise: a
        // receiver that closed is noticed within 16 frames, which its slots bound anyway, and a
        // probe per small frame costs as much as the frame.
        if self.credits == 0 || self.sent % 16 == 0 {
            self.take_credits()?;
        }
        let backoff = Backoff::new();
        while self.credits == 0 {
            self.take_credits()?;
            if self.credits > 0 {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout {
                    action: format!("waiting for rank {} to free a slot (it holds all {})", self.peer, self.slots),
                    timeout,
                });
            }
            backoff.pause();
        }
        self.send_now(source, metadata)
    }

    /// Sends an image's texels as one frame: every layer, tightly packed, as
    /// [`Image::download`](crate::Image::download) gives them (a staging copy on the GPU first).
    /// The receiver lands them in an image of the same format and extent with
    /// [`MpiReceiver::recv_image`](super::MpiReceiver::recv_image).
    pub fn send_image(&mut self, image: &crate::Image, metadata: &[u8]) -> Result<u64> {
        let texels = image.download()?;
        self.send(Source::Host(&texels), metadata)
    }

    /// Sends at once where the receiver has a free slot; `Ok(None)` where it has none.
    pub fn try_send(&mut self, source: Source<'_>, metadata: &[u8]) -> Result<Option<u64>> {
        self.check_frame(&source, metadata)?;
        self.take_credits()?;
        if self.credits == 0 {
            return Ok(None);
        }
        self.send_now(source, metadata).map(Some)
    }

    fn check_frame(&self, source: &Source<'_>, metadata: &[u8]) -> Result<()> {
        if self.closed {
            return Err(Error::PeerRefused {
                reason: format!("the receiver on rank {} closed the channel", self.peer),
                advice: "stop sending, or start a new receiver and connect again".into(),
            });
        }
        let len = source.len();
        if let Source::Staged { memory, len } = source {
            if *len > memory.size() {
                return Err(Error::invalid(
                    format!("sending {len} bytes of a {}-byte memory", memory.size()),
                    "the range lies beyond its end",
                    "send at most the memory's size",
                ));
            }
        }
        if len > self.max_frame {
            return Err(Error::invalid(
                format!("a frame of {len} bytes"),
                format!("the receiver on rank {} takes frames of at most {} bytes", self.peer, self.max_frame),
                "send smaller frames, or give the receiver a larger ReceiverOptions::max_frame",
            ));
        }
        if metadata.len() > MAX_METADATA {
            return Err(Error::invalid(
                format!("{} bytes of metadata", metadata.len()),
                format!("a frame carries at most {MAX_METADATA}"),
                "send less metadata, or put it in the frame",
            ));
        }
        Ok(())
    }

    /// Takes every credit (and goodbye) the receiver has sent, without waiting.
    fn take_credits(&mut self) -> Result<()> {
        while let Some(message) = self.poll_control()? {
            match message {
                Control::Credit { count } => {
                    let credits = self.credits.checked_add(count).filter(|&c| c <= self.slots);
                    self.credits = credits.ok_or_else(|| Error::Protocol {
                        reason: format!(
                            "rank {} granted {count} credits with {} outstanding, more than its {} slots",
                            self.peer, self.credits, self.slots
                        ),
                        advice: "both ranks must run the same lava-flow version".into(),
                    })?;
                }
                Control::Bye => {
                    self.closed = true;
                    return Err(Error::PeerRefused {
                        reason: format!("the receiver on rank {} closed the channel", self.peer),
                        advice: "stop sending, or start a new receiver and connect again".into(),
                    });
                }
                other => {
                    return Err(Error::Protocol {
                        reason: format!("rank {} sent {other:?} on the credit tag", self.peer),
                        advice: "nothing else may use the channel's tags".into(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The next message on the credit tag, if one has arrived.
    fn poll_control(&self) -> Result<Option<Control>> {
        let process = self.mpi.world().process_at_rank(self.peer);
        let Some(status) = process.immediate_probe_with_tag(self.credit_tag) else { return Ok(None) };
        let count = status.count(u8::equivalent_datatype());
        if count < 0 || count as usize > MAX_CONTROL {
            return Err(Error::Protocol {
                reason: format!("a {count}-byte message from rank {} on the credit tag", self.peer),
                advice: "nothing else may use the channel's tags".into(),
            });
        }
        let mut bytes = vec![0u8; count as usize];
        process.receive_into_with_tag(&mut bytes[..], self.credit_tag);
        Control::decode(&bytes).map(Some)
    }

    fn send_now(&mut self, source: Source<'_>, metadata: &[u8]) -> Result<u64> {
        let len = source.len();
        let sequence = self.sent;
        let sent_at_ns = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let mut header = std::mem::take(&mut self.message);
        Control::encode_frame_into(&mut header, sequence, len, sent_at_ns, metadata);
        let process = self.mpi.world().process_at_rank(self.peer);
        let frame_tag = self.frame_tag;
        if travels_inline(header.len(), len) {
            // One message: the header, then the bytes.
            let at = header.len();
            let filled = match source {
                Source::Host(bytes) => {
                    header.extend_from_slice(bytes);
                    Ok(())
                }
                Source::Buffer(buffer) => {
                    header.resize(at + len as usize, 0);
                    buffer.read_into(0, &mut header[at..])
                }
                Source::Staged { memory, .. } => {
                    header.resize(at + len as usize, 0);
                    memory.read_into(0, &mut header[at..])
                }
            };
            if let Err(e) = filled {
                self.message = header;
                return Err(e);
            }
            process.send_with_tag(&header[..], frame_tag);
            self.message = header;
        } else {
            process.send_with_tag(&header[..], frame_tag);
            self.message = header;
            let chunk = self.chunk as usize;
            match source {
                Source::Host(bytes) => {
                    // Every chunk is posted at once: MPI pipelines them, as it would one message.
                    request::scope(|scope| {
                        let sends: Vec<_> = bytes
                            .chunks(chunk)
                            .map(|piece| process.immediate_send_with_tag(scope, piece, frame_tag))
                            .collect();
                        for send in sends {
                            send.wait();
                        }
                    });
                }
                Source::Buffer(buffer) => self.send_staged(buffer, len)?,
                Source::Staged { memory, .. } => self.send_staged(memory, len)?,
            }
        }
        self.credits -= 1;
        self.sent += 1;
        Ok(sequence)
    }

    /// A buffer's bytes, chunk by chunk through two host staging halves: the send of chunk k
    /// overlaps the copy-out of chunk k + 1.
    fn send_staged(&mut self, buffer: &dyn StagedMemory, len: u64) -> Result<()> {
        let process = self.mpi.world().process_at_rank(self.peer);
        let frame_tag = self.frame_tag;
        let chunk = self.chunk;
        let chunks = len.div_ceil(chunk);
        let size_of = |k: u64| (len - k * chunk).min(chunk) as usize;
        let [a, b] = &mut self.staging;
        for stage in [&mut *a, &mut *b] {
            stage.resize(chunk.min(len) as usize, 0);
        }
        buffer.read_into(0, &mut a[..size_of(0)])?;
        for k in 0..chunks {
            let (sending, filling) = if k % 2 == 0 { (&*a, &mut *b) } else { (&*b, &mut *a) };
            let next = k + 1;
            // The scope waits for the send before either half is reused.
            let copied = request::scope(|scope| {
                let send = process.immediate_send_with_tag(scope, &sending[..size_of(k)], frame_tag);
                let copied =
                    if next < chunks { buffer.read_into(next * chunk, &mut filling[..size_of(next)]) } else { Ok(()) };
                send.wait();
                copied
            });
            copied?;
        }
        Ok(())
    }
}

impl Drop for MpiSender<'_> {
    /// Tells the receiver that no frame follows (it drains what came, then its `recv` returns
    /// `None`).
    fn drop(&mut self) {
        if !self.closed {
            let end = Control::End { frames: self.sent }.encode();
            self.mpi.world().process_at_rank(self.peer).send_with_tag(&end[..], self.frame_tag);
        }
    }
}
