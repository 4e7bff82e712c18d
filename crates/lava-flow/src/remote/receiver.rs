//! The receiving end: a fixed set of host slots, one credit per free slot.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use mpi::point_to_point::{Destination, Source as _};
use mpi::request;
use mpi::traits::*;

use super::backoff::Backoff;
use super::context::MpiContext;
use super::sender::tags;
use super::wire::{travels_inline, Control, FrameInfo, INLINE_MAX, MAX_CHUNK, MAX_CONTROL};
use super::{Rank, StagedMemory};
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
    /// Slots freed whose credits have not been sent yet (sent in batches, and always before
    /// the receiver waits).
    pending: u32,
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
        let slot_size = o.max_frame.checked_add(MAX_CONTROL as u64);
        let total = slot_size.and_then(|s| s.checked_mul(u64::from(o.slots))).filter(|&t| usize::try_from(t).is_ok());
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
        // A header (and a small frame inline after it) is received into a slot too.
        let free = (0..o.slots).map(|_| vec![0u8; o.max_frame as usize + MAX_CONTROL]).collect();
        let (frame_tag, credit_tag) = tags(channel);
        let receiver = MpiReceiver {
            mpi,
            peer,
            frame_tag,
            credit_tag,
            options: options.clone(),
            state: RefCell::new(State { free, next: 0, ended: false, broken: None, pending: 0 }),
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
        let Some((info, mut slot, start)) = self.next_frame(timeout)? else { return Ok(None) };
        if start == 0 {
            if let Err(e) = self.recv_chunks(&mut slot, info.len) {
                self.state.borrow_mut().free.push(slot);
                return Err(e);
            }
        }
        Ok(Some(RemoteFrame { receiver: self, slot: Some(slot), start, info }))
    }

    /// Receives the next frame straight into `buffer` (a Vulkan [`Buffer`], shared host memory or
    /// any [`StagedMemory`], at offset 0) and returns what it carried: each chunk's receive into
    /// host staging overlaps the copy-in ([`StagedMemory::write`]) of the chunk before. The frame's slot serves as staging and is freed (a credit goes back) before
    /// this returns.
    pub fn recv_into<M: StagedMemory + ?Sized>(&self, buffer: &mut M, timeout: Duration) -> Result<Option<FrameInfo>> {
        let Some((info, mut slot, start)) = self.next_frame(timeout)? else { return Ok(None) };
        let result = if start > 0 {
            self.check_fits(&info, buffer).and_then(|()| buffer.write(0, &slot[start..start + info.len as usize]))
        } else if self.check_fits(&info, buffer).is_err() {
            // The chunks must still be taken off the wire: into the slot, then refused.
            self.recv_chunks(&mut slot, info.len).and_then(|()| self.check_fits(&info, buffer))
        } else {
            self.stage_into(&mut slot, &info, buffer)
        };
        self.state.borrow_mut().free.push(slot);
        self.grant(1);
        result.map(|()| Some(info))
    }

    /// Receives the next frame into `image` (an image of the sender's format and extent: the
    /// frame must hold exactly its tightly packed texels, [`MpiSender::send_image`](super::MpiSender::send_image)),
    /// uploaded through a staging copy; the slot is freed before this returns.
    pub fn recv_image(&self, image: &crate::Image, timeout: Duration) -> Result<Option<FrameInfo>> {
        let Some(frame) = self.recv_timeout(timeout)? else { return Ok(None) };
        image.upload(frame.bytes()).map_err(|e| match e {
            Error::InvalidArgument { what, reason, .. } => Error::invalid(
                format!("frame {} ({what})", frame.info().sequence),
                reason,
                "receive into an image of the sender's format, extent and layer count",
            ),
            other => other,
        })?;
        Ok(Some(frame.info().clone()))
    }

    fn check_fits<M: StagedMemory + ?Sized>(&self, info: &FrameInfo, buffer: &M) -> Result<()> {
        if info.len > buffer.size() {
            return Err(Error::invalid(
                format!("frame {} of {} bytes", info.sequence, info.len),
                format!("the buffer holds {} bytes", buffer.size()),
                "receive into a buffer at least ReceiverOptions::max_frame large",
            ));
        }
        Ok(())
    }

    /// The chunks of a frame of `len` bytes into the start of `slot`, every receive posted at once.
    fn recv_chunks(&self, slot: &mut [u8], len: u64) -> Result<()> {
        let process = self.peer_process();
        let frame_tag = self.frame_tag;
        let statuses = request::scope(|scope| {
            let receives: Vec<_> = slot[..len as usize]
                .chunks_mut(self.options.chunk as usize)
                .map(|piece| {
                    let want = piece.len();
                    (want, process.immediate_receive_into_with_tag(scope, piece, frame_tag))
                })
                .collect();
            receives.into_iter().map(|(want, r)| (want, r.wait().count(u8::equivalent_datatype()))).collect::<Vec<_>>()
        });
        if let Some((want, got)) = statuses.into_iter().find(|&(want, got)| got as usize != want) {
            return Err(self.broke(format!("a chunk of {got} bytes where {want} were due")));
        }
        Ok(())
    }

    fn stage_into<M: StagedMemory + ?Sized>(&self, slot: &mut [u8], info: &FrameInfo, buffer: &mut M) -> Result<()> {
        let chunk = self.options.chunk;
        let chunks = info.len.div_ceil(chunk);
        let size_of = |k: u64| (info.len - k * chunk).min(chunk) as usize;
        let process = self.peer_process();
        let frame_tag = self.frame_tag;
        let half = slot.len() / 2;
        if (half as u64) < chunk {
            // A slot too small for two chunks: no overlap, chunk by chunk.
            for k in 0..chunks {
                let piece = &mut slot[..size_of(k)];
                process.receive_into_with_tag(piece, frame_tag);
                buffer.write(k * chunk, piece)?;
            }
            return Ok(());
        }
        // Two halves of the slot: one receiving chunk k + 1 while the other is copied in.
        let (a, b) = slot.split_at_mut(half);
        process.receive_into_with_tag(&mut a[..size_of(0)], frame_tag);
        for k in 0..chunks {
            let (ready, receiving) = if k % 2 == 0 { (&*a, &mut *b) } else { (&*b, &mut *a) };
            let next = k + 1;
            let written = request::scope(|scope| {
                let receive = (next < chunks).then(|| {
                    process.immediate_receive_into_with_tag(scope, &mut receiving[..size_of(next)], frame_tag)
                });
                let written = buffer.write(k * chunk, &ready[..size_of(k)]);
                if let Some(receive) = receive {
                    receive.wait();
                }
                written
            });
            written?;
        }
        Ok(())
    }

    /// Waits for the next frame's header and takes a slot for it; `None` at the end of the
    /// stream. Returns the slot and where the frame's bytes start in it: after the header where
    /// they came inline, else 0 (its chunks follow, for the caller to receive).
    fn next_frame(&self, timeout: Duration) -> Result<Option<(FrameInfo, Vec<u8>, usize)>> {
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
        let mut backoff = None;
        let status = loop {
            if let Some(status) = process.immediate_probe_with_tag(self.frame_tag) {
                break status;
            }
            // About to wait: every credit owed goes out first, or the sender could be waiting
            // for one too.
            let backoff = backoff.get_or_insert_with(|| {
                self.flush_credits();
                Backoff::new()
            });
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout {
                    action: format!("waiting for a frame from rank {} (tag {})", self.peer, self.frame_tag),
                    timeout,
                });
            }
            backoff.pause();
        };
        let count = status.count(u8::equivalent_datatype());
        // The largest message due here: a control message, or a header with a frame inline (never
        // more than a slot holds, so a receive can never overflow the slot).
        let inline_max = (INLINE_MAX as usize).max(MAX_CONTROL).min(self.options.max_frame as usize + MAX_CONTROL);
        if count < 0 || count as usize > inline_max {
            return Err(self.broke(format!("a {count}-byte message where a frame header was due")));
        }
        let count = count as usize;
        let mut slot = self.state.borrow_mut().free.pop().expect("checked above: a slot is free");
        process.receive_into_with_tag(&mut slot[..count], self.frame_tag);
        let decoded = Control::decode_prefix(&slot[..count]);
        let mut state = self.state.borrow_mut();
        state.free.push(slot);
        drop(state);
        let (info, start) = match decoded {
            Ok((Control::Frame(info), start)) => (info, start),
            Ok((Control::End { frames }, _)) => {
                let mut state = self.state.borrow_mut();
                state.ended = true;
                if frames != state.next {
                    let reason = format!("the sender ended after {frames} frames, {} arrived", state.next);
                    drop(state);
                    return Err(self.broke(reason));
                }
                return Ok(None);
            }
            Ok((other, _)) => return Err(self.broke(format!("{other:?} on the frame tag"))),
            Err(e) => return Err(self.broke(e.to_string())),
        };
        let inline = count - start;
        let mut state = self.state.borrow_mut();
        let reason = if info.sequence != state.next {
            Some(format!("frame {} where frame {} was due", info.sequence, state.next))
        } else if info.len > self.options.max_frame {
            Some(format!("a frame of {} bytes, over the {} this receiver takes", info.len, self.options.max_frame))
        } else if inline > 0 && inline as u64 != info.len {
            Some(format!("a frame of {} bytes with {inline} bytes inline", info.len))
        } else if inline == 0 && info.len > 0 && travels_inline(start, info.len) {
            Some(format!(
                "a frame of {} bytes not inline (frames whose message stays within {INLINE_MAX} bytes are)",
                info.len
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            drop(state);
            return Err(self.broke(reason));
        }
        state.next += 1;
        let slot = state.free.pop().expect("the slot was just put back");
        // A frame whose bytes came inline starts after its header; chunks land at 0.
        let start = if inline > 0 || info.len == 0 { start } else { 0 };
        Ok(Some((info, slot, start)))
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

    /// Owes the sender `count` more credits; sends them once half the slots' worth are owed
    /// (the rest go out before the receiver next waits).
    fn grant(&self, count: u32) {
        let mut state = self.state.borrow_mut();
        state.pending += count;
        let due = state.pending >= (self.options.slots / 2).max(1);
        drop(state);
        if due {
            self.flush_credits();
        }
    }

    /// Sends every credit owed, unless the sender has ended.
    fn flush_credits(&self) {
        let mut state = self.state.borrow_mut();
        let count = std::mem::take(&mut state.pending);
        if count == 0 || state.ended {
            return;
        }
        drop(state);
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
    /// Where the frame's bytes start in the slot.
    start: usize,
    info: FrameInfo,
}

impl RemoteFrame<'_, '_> {
    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        let slot = self.slot.as_deref().unwrap_or_default();
        &slot[self.start..self.start + self.info.len as usize]
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
