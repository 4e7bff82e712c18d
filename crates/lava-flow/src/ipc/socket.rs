//! Datagrams with fds over `SOCK_SEQPACKET` Unix sockets: one `sendmsg` is one message, its fds
//! ride in one `SCM_RIGHTS` control message, and received fds become `OwnedFd`s before anything
//! looks at the bytes, so whatever happens next closes them exactly once. Sending is
//! [`fd_passing::send_with_fds`](super::fd_passing::send_with_fds); receiving here differs from
//! the stream version in reporting a datagram's truncation instead of reading on.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SocketAddrUnix, SocketFlags,
    SocketType,
};

use super::wire::MAX_FDS;
use crate::{Error, Result};

/// One received datagram.
#[derive(Debug)]
pub struct Received {
    /// The bytes, at most the buffer size asked for.
    pub bytes: Vec<u8>,
    /// The fds that came with it, already owned (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The datagram was longer than the buffer; its tail was discarded by the kernel.
    pub truncated: bool,
    /// More fds came than the control buffer holds; the kernel closed the rest.
    pub fds_truncated: bool,
}

/// A new close-on-exec `AF_UNIX` `SOCK_SEQPACKET` socket.
pub fn seqpacket_socket() -> Result<OwnedFd> {
    rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(|e| Error::io("creating a Unix SOCK_SEQPACKET socket", e.into()))
}

/// The socket address of `path` (at most 107 bytes).
pub fn unix_address(path: &Path) -> Result<SocketAddrUnix> {
    SocketAddrUnix::new(path).map_err(|e| {
        Error::invalid(
            format!("socket path {}", path.display()),
            format!("not usable as a Unix socket address ({e})"),
            "use a path shorter than 108 bytes without NUL bytes",
        )
    })
}

/// Connects a new seqpacket socket to the server at `path`.
pub fn connect_seqpacket(path: &Path) -> Result<OwnedFd> {
    let sock = seqpacket_socket()?;
    let addr = unix_address(path)?;
    rustix::net::connect(&sock, &addr)
        .map_err(|e| Error::io(format!("connecting to the lava-flow socket {}", path.display()), e.into()))?;
    Ok(sock)
}

/// Sets the receive and send timeouts (`SO_RCVTIMEO`, `SO_SNDTIMEO`); `None` waits forever.
pub fn set_timeouts(sock: BorrowedFd<'_>, recv: Option<Duration>, send: Option<Duration>) -> Result<()> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    set_socket_timeout(sock, Timeout::Recv, recv)
        .and_then(|()| set_socket_timeout(sock, Timeout::Send, send))
        .map_err(|e| Error::io("setting socket timeouts", e.into()))
}

pub use super::fd_passing::send_with_fds;

/// Receives one datagram of at most `max_len` bytes with at most [`MAX_FDS`] fds
/// (`MSG_CMSG_CLOEXEC`). `Ok(None)` is an orderly end of the connection (an empty datagram
/// without fds reads the same). Timeouts (`SO_RCVTIMEO`) are `Error::Timeout`.
pub fn recv_datagram(sock: BorrowedFd<'_>, max_len: usize) -> Result<Option<Received>> {
    let mut bytes = vec![0u8; max_len];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut bytes)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::WOULDBLOCK => {
                let timeout = rustix::net::sockopt::socket_timeout(sock, rustix::net::sockopt::Timeout::Recv)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                return Err(Error::Timeout { action: "waiting for a lava-flow message".into(), timeout });
            }
            Err(e) => return Err(Error::io("receiving a lava-flow message", e.into())),
        }
    };
    // Take ownership of every fd before looking at anything else.
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.bytes == 0 && fds.is_empty() && !msg.flags.contains(ReturnFlags::CTRUNC) {
        return Ok(None);
    }
    bytes.truncate(msg.bytes.min(max_len));
    Ok(Some(Received {
        bytes,
        fds,
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    }))
}

/// Sends an encoded message with fds (normally one per object; nothing here checks, so a peer's
/// validation can be exercised).
pub(crate) fn send_message(sock: BorrowedFd<'_>, message: &super::wire::Message, fds: &[BorrowedFd<'_>]) -> Result<()> {
    let bytes = super::wire::encode(message)?;
    send_with_fds(sock, &bytes, fds)
}

/// Borrows a list of owned fds.
pub(crate) fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}
