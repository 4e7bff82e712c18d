//! Frames between MPI ranks (feature `mpi`): the transport under channels whose two ends run on
//! different hosts (docs/REMOTE.md).
//!
//! Open MPI as Debian ships it is not CUDA-aware, so every frame crosses as host bytes: a host
//! frame is sent straight from its memory; a frame in a Vulkan [`Buffer`](crate::Buffer) is copied
//! out chunk by chunk into host staging, with the copy-out of one chunk overlapping the send of the
//! one before (and, on the other side, the receive of one chunk overlapping the copy-in of the one
//! before).
//!
//! - **Explicit set-up.** [`MpiContext::initialize`] initializes MPI (asking for
//!   `MPI_THREAD_MULTIPLE`) and finalizes it when dropped; nothing is initialized behind the
//!   caller's back. Senders and receivers borrow the context, so none outlives MPI.
//! - **Order.** One tag per channel and direction; MPI's non-overtaking rule keeps a channel's
//!   frames in the order sent.
//! - **Backpressure by credits.** The receiver owns a fixed number of slots and grants one credit
//!   per free slot; the sender sends only against a credit, so nothing piles up inside MPI. A
//!   [`RemoteFrame`] returns its slot (and a credit) when dropped.
//! - **Chunks.** Frames travel in chunks of the receiver's chunk size (at most 1 GiB, under MPI's
//!   `int` count limit), which also lets staging overlap the transfer.
//! - **Faults.** Waits for a credit, a frame or the peer's greeting end with
//!   [`Error::Timeout`](crate::Error::Timeout) after the options' timeout; a malformed control
//!   message is an [`Error::Protocol`](crate::Error::Protocol). A rank that dies ends the job under
//!   `mpirun` (Open MPI's default error handler), so the survivor never waits forever.
//!
//! ```no_run
//! use lava_flow::remote::{MpiContext, MpiReceiver, MpiSender, ReceiverOptions, Source};
//! use std::time::Duration;
//!
//! let mpi = MpiContext::initialize()?;
//! if mpi.rank() == 0 {
//!     let mut tx = MpiSender::connect(&mpi, 1, 0, Duration::from_secs(10))?;
//!     tx.send(Source::Host(&[1, 2, 3, 4]), b"metadata")?;
//! } else {
//!     let rx = MpiReceiver::new(&mpi, 0, 0, &ReceiverOptions::new(1 << 20))?;
//!     if let Some(frame) = rx.recv()? {
//!         assert_eq!(frame.bytes(), &[1, 2, 3, 4]);
//!     } // (the frame, which borrows `rx`, drops here)
//!     drop(rx);
//! }
//! # Ok::<(), lava_flow::Error>(())
//! ```

mod backoff;
mod context;
mod receiver;
mod sender;
mod wire;

/// The MPI bindings (rsmpi) lava-flow's transport is built on, for calls it does not wrap.
pub use ::mpi;
pub use context::MpiContext;
pub use receiver::{MpiReceiver, ReceiverOptions, RemoteFrame};
pub use sender::{MpiSender, Source};
pub use wire::{FrameInfo, INLINE_MAX, MAX_CHUNK, MAX_METADATA};

/// Memory a frame is copied out of or into chunk by chunk (host staging on either side of MPI):
/// Vulkan buffers and shared host memory, whose bytes another device or process may touch, so
/// they are never a `&[u8]`.
pub trait StagedMemory {
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Copies `out.len()` bytes at `offset` out.
    fn read_into(&self, offset: u64, out: &mut [u8]) -> crate::Result<()>;
    /// Copies `data` in at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> crate::Result<()>;
}

impl StagedMemory for crate::Buffer {
    fn size(&self) -> u64 {
        crate::Buffer::size(self)
    }
    fn read_into(&self, offset: u64, out: &mut [u8]) -> crate::Result<()> {
        crate::Buffer::read_into(self, offset, out)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> crate::Result<()> {
        crate::Buffer::write(self, offset, data)
    }
}

impl StagedMemory for crate::SharedHostMemory {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_into(&self, offset: u64, out: &mut [u8]) -> crate::Result<()> {
        crate::SharedHostMemory::read_into(self, host_offset(offset)?, out)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> crate::Result<()> {
        crate::SharedHostMemory::write(self, host_offset(offset)?, data)
    }
}

fn host_offset(offset: u64) -> crate::Result<usize> {
    usize::try_from(offset).map_err(|_| {
        crate::Error::invalid(
            format!("offset {offset}"),
            "beyond this platform's address space",
            "use a smaller offset",
        )
    })
}

/// An MPI rank in `MPI_COMM_WORLD`.
pub type Rank = i32;

/// docs/REMOTE.md, whose Rust samples are compiled as doc tests here, so they cannot drift.
#[doc = include_str!("../../../../docs/REMOTE.md")]
#[cfg(doctest)]
pub struct RemoteDocSamples;
