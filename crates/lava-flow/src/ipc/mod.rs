//! Handing exported objects to another process over Unix sockets.
//!
//! A [`Server`] listens on a `SOCK_SEQPACKET` socket and shares named objects (memory, buffers,
//! textures, semaphores, fences); a [`Client`] connects and asks for them. Each message is a small
//! versioned binary datagram ([`wire`]) with the objects' fds in `SCM_RIGHTS`; `docs/PROTOCOL.md`
//! writes the format down byte by byte for clients in other languages.
//!
//! ```no_run
//! use lava_flow::ipc::{shm, Client, NamedObject, Server, ServerConfig};
//! use lava_flow::raw_gpu_handle::ExportedMemory;
//!
//! let memory = shm::create(1 << 20)?;
//! let server = Server::bind("/tmp/lava-flow.sock", ServerConfig::default())?;
//! server.publish(NamedObject::new("frames", shm::export(&memory)?))?;
//!
//! // In another process:
//! let client = Client::connect("/tmp/lava-flow.sock")?;
//! let frames = client.get::<ExportedMemory>("frames")?;
//! println!("{} bytes from {}", frames.allocation_size(), frames.device());
//! # Ok::<(), lava_flow::Error>(())
//! ```

mod client;
pub mod fd_passing;
mod object;
pub mod ring;
mod server;
pub mod shm;
pub mod socket;
pub mod wire;

pub use client::{Client, DEFAULT_REPLY_TIMEOUT, POLL_INTERVAL};
pub use object::{FromShared, NamedObject, SharedObject, WrongKind};
pub(crate) use server::bind_listener;
pub use server::{Server, ServerConfig, ServerStats};
pub use wire::{ErrorCode, Message, NamedDescription, ObjectDescription, WireError};
