//! The receiving end: a fixed set of host slots, one credit per free slot.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use mpi::point_to_point::{Destination, Source as _};
use mpi::request;
use mpi::traits::*;

use super::context::MpiContext;
use super::sender::tags;
use super::wire::{Control, FrameInfo, MAX_CHUNK, MAX_CONTROL};
use super::Rank;
use crate::{Buffer, Error, Result};

/// How a receiver is set up.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReceiverOptions {
    /// The largest frame it takes, in bytes (each slot holds one).
    pub max_frame: u64,
    /// How many frames may be in flight or held at once (credits).
    pub slots: u32,
    /// The size of the chunks frames travel in (at most [`MAX_CHUNK`]).
    pub chunk: u64,
    /// How long [`MpiReceiver::recv`] waits for a frame before [`Error::Timeout`].
    pub timeout: Duration,
}

impl ReceiverOptions {
    /// Frames up to `max_frame` bytes, 4 slots, chunks of 4 MiB, a 30-second timeout.
    pub fn new(max_frame: u64) -> Self {
        ReceiverOptions { max_frame, slots: 4, chunk: 4 << 20, timeout: Duration::from_secs(30) }
    }

    /// How many frames may be in flight or held at once.
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// The chunk size.
    pub fn chunk(mut self, chunk: u64) -> Self {
        self.chunk = chunk;
        self
    }

    /// How long `recv` waits.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The most slots a receiver takes: credits are counted in `u32`, and a receiver's slots are
/// allocated up front.
const MAX_SLOTS: u32 = 4096;

/// The receiving end of a channel from another rank. Frames land in its own host slots.
pub struct MpiReceiver<'c> {
    mpi: &'c MpiContext,
    peer: Rank,
    frame_tag: i32,
    credit_tag: i32,
    options: ReceiverOptions,
    state: RefCell<State>,
}

struct State {
    /// Free slots' memory; a frame takes one and gives it back when dropped.
    free: Vec<Vec<u8>>,
    /// The next sequence number expected.
    next: u64,
    /// The sender said no frame follows.
    ended: bool,
    /// A protocol error broke the stream.
    broken: Option<String>,
}

impl std::fmt::Debug for MpiReceiver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("MpiReceiver")
            .field("peer", &self.peer)
            .field("frame_tag", &self.frame_tag)
            .field("free_slots", &state.free.len())
            .field("next", &state.next)
            .finish()
    }
}

impl<'c> MpiReceiver<'c> {
    /// Allocates the slots and greets the sender of channel `channel` on rank `peer` (which may
    /// connect before or after).
    pub fn new(mpi: &'c MpiContext, peer: Rank, channel: u16, options: &ReceiverOptions) -> Result<MpiReceiver<'c>> {
        mpi.check_peer(peer)?;
        let o = options;
        if o.max_frame == 0 || o.slots == 0 || o.slots > MAX_SLOTS || o.chunk == 0 || o.chunk > MAX_CHUNK {
            return Err(Error::invalid(
                format!("a receiver of {} slots for frames up to {} bytes in chunks of {}", o.slots, o.max_frame, o.chunk),
                format!("slots must be 1 to {MAX_SLOTS}, frames non-empty, chunks 1 byte to {MAX_CHUNK} (MPI counts are C ints)"),
                "use ReceiverOptions::new(max_frame) and adjust from there",
            ));
        }
        let total = o.max_frame.checked_mul(u64::from(o.slots)).filter(|&t| usize::try_from(t).is_ok());
        let Some(total) = total else {
            return Err(Error::invalid(
                format!("{} slots of {} bytes", o.slots, o.max_frame),
                "their total overflows this platform's address space",
                "ask for fewer or smaller slots",
            ));
        };
        crate::limits::check_host_memory(
            &format!("{} MPI receive slots of {}", o.slots, crate::limits::human_bytes(o.max_frame)),
            total,
            "ask for fewer slots or smaller frames",
        )?;
        let free = (0..o.slots).map(|_| vec![0u8; o.max_frame as usize]).collect();
        let (frame_tag, credit_tag) = tags(channel);
        let receiver = MpiReceiver {
            mpi,
            peer,
            frame_tag,
            credit_tag,
            options: options.clone(),
            state: RefCell::new(State { free, next: 0, ended: false, broken: None }),
        };
        let hello = Control::Hello { slots: o.slots, max_frame: o.max_frame, chunk: o.chunk }.encode();
        receiver.peer_process().send_with_tag(&hello[..], credit_tag);
        Ok(receiver)
    }

    fn peer_process(&self) -> mpi::topology::Process<'_> {
        self.mpi.world().process_at_rank(self.peer)
    }

    /// The next frame, waiting up to the options' timeout; `Ok(None)` once the sender has ended
    /// the stream and every frame it sent was received.
    pub fn recv(&self) -> Result<Option<RemoteFrame<'_, 'c>>> {
        self.recv_timeout(self.options.timeout)
    }

    /// The next frame, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<RemoteFrame<'_, 'c>>> {
        let Some(info) = self.next_header(timeout)? else { return Ok(None) };
        let Some(mut slot) = self.state.borrow_mut().free.pop() else {
            // next_header checked that a slot is free; nothing else takes one.
            unreachable!("a header was taken with no free slot");
        };
        let process = self.peer_process();
        let len = info.len as usize;
        let mut short = None;
        for piece in slot[..len].chunks_mut(self.options.chunk as usize) {
            let status = process.receive_into_with_tag(piece, self.frame_tag);
            let got = status.count(u8::equivalent_datatype());
            if got as usize != piece.len() {
                short = Some(format!("a chunk of {got} bytes where {} were due", piece.len()));
                break;
            }
        }
        if let Some(reason) = short {
            self.state.borrow_mut().free.push(slot);
            return Err(self.broke(reason));
        }
        Ok(Some(RemoteFrame { receiver: self, slot: Some(slot), info }))
    }

    /// Receives the next frame straight into `buffer` (at offset 0) and returns what it carried:
    /// each chunk's receive into host staging overlaps the copy-in ([`Buffer::write`]) of the
    /// chunk before. The frame's slot serves as staging and is freed (a credit goes back) before
    /// this returns.
    pub fn recv_into(&self, buffer: &mut Buffer, timeout: Duration) -> Result<Option<FrameInfo>> {
        let Some(info) = self.next_header(timeout)? else { return Ok(None) };
        if info.len > buffer.size() {
            // The chunks must still be taken off the wire: into the slot, then refused.
            drop(self.recv_chunks_into_slot(&info)?);
            return Err(Error::invalid(
                format!("frame {} of {} bytes", info.sequence, info.len),
                format!("the buffer holds {} bytes", buffer.size()),
                "receive into a buffer at least ReceiverOptions::max_frame large",
            ));
        }
        let mut slot = self.state.borrow_mut().free.pop().expect("next_header checked that a slot is free");
        let result = self.stage_into(&mut slot, &info, buffer);
        self.state.borrow_mut().free.push(slot);
        self.grant(1);
        result.map(|()| Some(info))
    }

    fn stage_into(&self, slot: &mut [u8], info: &FrameInfo, buffer: &mut Buffer) -> Result<()> {
        let chunk = self.options.chunk;
        let chunks = info.len.div_ceil(chunk);
        let size_of = |k: u64| (info.len - k * chunk).min(chunk) as usize;
        // Two halves of the slot: one receiving chunk k + 1 while the other is copied in.
        let half = (chunk as usize).min(slot.len() / 2).max(1);
        if chunks == 0 {
            return Ok(());
        }
        let process = self.peer_process();
        if (half as u64) < chunk || slot.len() < 2 * half {
            // A slot too small for two chunks: no overlap, chunk by chunk.
            for k in 0..chunks {
                let piece = &mut slot[..size_of(k)];
                process.receive_into_with_tag(piece, self.frame_tag);
                buffer.write(k * chunk, piece)?;
            }
            return Ok(());
        }
        let (a, b) = slot.split_at_mut(half);
        let mut stages = [a, &mut b[..half]];
        process.receive_into_with_tag(&mut stages[0][..size_of(0)], self.frame_tag);
        for k in 0..chunks {
            let (first, second) = stages.split_at_mut(1);
            let (ready, receiving) =
                if k % 2 == 0 { (&*first[0], &mut *second[0]) } else { (&*second[0], &mut *first[0]) };
            let next = k + 1;
            let frame_tag = self.frame_tag;
            let written = request::scope(|scope| {
                let req = (next < chunks).then(|| {
                    process.immediate_receive_into_with_tag(scope, &mut receiving[..size_of(next)], frame_tag)
                });
                let written = buffer.write(k * chunk, &ready[..size_of(k)]);
                if let Some(req) = req {
                    req.wait();
                }
                written
            });
            written?;
        }
        Ok(())
    }

    /// Waits for the next header; checks it; `None` at the end of the stream.
    fn next_header(&self, timeout: Duration) -> Result<Option<FrameInfo>> {
        {
            let state = self.state.borrow();
            if let Some(reason) = &state.broken {
                return Err(Error::Protocol {
                    reason: format!("the channel from rank {} broke earlier: {reason}", self.peer),
                    advice: "make a new receiver and sender".into(),
                });
            }
            if state.ended {
                return Ok(None);
            }
            if state.free.is_empty() {
                return Err(Error::invalid(
                    "receiving a frame",
                    format!("all {} slots are held by frames not yet dropped", self.options.slots),
                    "drop a frame before receiving the next, or ask for more slots",
                ));
            }
        }
        let process = self.peer_process();
        let deadline = Instant::now().checked_add(timeout);
        let status = loop {
            if let Some(status) = process.immediate_probe_with_tag(self.frame_tag) {
                break status;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout {
                    action: format!("waiting for a frame from rank {} (tag {})", self.peer, self.frame_tag),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_micros(20));
        };
        let count = status.count(u8::equivalent_datatype());
        if count < 0 || count as usize > MAX_CONTROL {
            return Err(self.broke(format!("a {count}-byte message where a frame header was due")));
        }
        let mut bytes = vec![0u8; count as usize];
        process.receive_into_with_tag(&mut bytes[..], self.frame_tag);
        let info = match Control::decode(&bytes) {
            Ok(Control::Frame(info)) => info,
            Ok(Control::End { frames }) => {
                let mut state = self.state.borrow_mut();
                state.ended = true;
                if frames != state.next {
                    let reason = format!("the sender ended after {frames} frames, {} arrived", state.next);
                    drop(state);
                    return Err(self.broke(reason));
                }
                return Ok(None);
            }
            Ok(other) => return Err(self.broke(format!("{other:?} on the frame tag"))),
            Err(e) => return Err(self.broke(e.to_string())),
        };
        let mut state = self.state.borrow_mut();
        if info.sequence != state.next {
            let reason = format!("frame {} where frame {} was due", info.sequence, state.next);
            drop(state);
            return Err(self.broke(reason));
        }
        if info.len > self.options.max_frame {
            let reason =
                format!("a frame of {} bytes, over the {} this receiver takes", info.len, self.options.max_frame);
            drop(state);
            return Err(self.broke(reason));
        }
        state.next += 1;
        Ok(Some(info))
    }

    fn recv_chunks_into_slot(&self, info: &FrameInfo) -> Result<RemoteFrame<'_, 'c>> {
        let mut slot = self.state.borrow_mut().free.pop().expect("next_header checked that a slot is free");
        for piece in slot[..info.len as usize].chunks_mut(self.options.chunk as usize) {
            self.peer_process().receive_into_with_tag(piece, self.frame_tag);
        }
        Ok(RemoteFrame { receiver: self, slot: Some(slot), info: info.clone() })
    }

    /// Marks the stream broken (every later call says why) and returns the error.
    fn broke(&self, reason: String) -> Error {
        self.state.borrow_mut().broken = Some(reason.clone());
        Error::Protocol {
            reason: format!("the channel from rank {}: {reason}", self.peer),
            advice: "both ranks must run the same lava-flow version, and nothing else may send on the channel's tags"
                .into(),
        }
    }

    /// Gives `count` credits back to the sender, unless it has ended.
    fn grant(&self, count: u32) {
        if self.state.borrow().ended {
            return;
        }
        let credit = Control::Credit { count }.encode();
        self.peer_process().send_with_tag(&credit[..], self.credit_tag);
    }
}

impl Drop for MpiReceiver<'_> {
    /// Tells a sender still running that no more credits will come.
    fn drop(&mut self) {
        if !self.state.get_mut().ended {
            let bye = Control::Bye.encode();
            self.peer_process().send_with_tag(&bye[..], self.credit_tag);
        }
    }
}

/// A received frame in one of the receiver's slots; dropping it frees the slot and gives the
/// sender a credit.
///
/// Its bytes are this process's own memory (MPI wrote them before the frame was handed out, and
/// no one else can), so they are a plain `&[u8]`.
pub struct RemoteFrame<'r, 'c> {
    receiver: &'r MpiReceiver<'c>,
    slot: Option<Vec<u8>>,
    info: FrameInfo,
}

impl RemoteFrame<'_, '_> {
    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        let slot = self.slot.as_deref().unwrap_or_default();
        &slot[..self.info.len as usize]
    }

    /// Sequence number, length, send time and metadata.
    pub fn info(&self) -> &FrameInfo {
        &self.info
    }

    /// The sender's metadata.
    pub fn metadata(&self) -> &[u8] {
        &self.info.metadata
    }

    /// Copies the frame into `buffer` at `offset` (for a device frame: [`Buffer::write`]).
    pub fn copy_to(&self, buffer: &mut Buffer, offset: u64) -> Result<()> {
        buffer.write(offset, self.bytes())
    }
}

impl std::fmt::Debug for RemoteFrame<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFrame").field("info", &self.info).finish()
    }
}

impl Drop for RemoteFrame<'_, '_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.receiver.state.borrow_mut().free.push(slot);
            self.receiver.grant(1);
        }
    }
}
