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
    rustix::net::connect(&sock, &addr).map_err(|e| connect_error(path, e))?;
    Ok(sock)
}

/// Why connecting to `path` failed, in the user's terms: a file that is not a socket, a socket
/// file nobody listens on, a socket of another kind; else the OS error.
fn connect_error(path: &Path, e: rustix::io::Errno) -> Error {
    use std::os::unix::fs::FileTypeExt;
    let what = format!("the lava-flow socket {}", path.display());
    let kind = std::fs::symlink_metadata(path).ok().map(|m| m.file_type());
    match (e, kind) {
        (rustix::io::Errno::CONNREFUSED, Some(t)) if !t.is_socket() => Error::invalid(
            format!("socket path {}", path.display()),
            format!(
                "it is not a socket but a {} (connect: {e})",
                if t.is_dir() {
                    "directory"
                } else if t.is_file() {
                    "regular file"
                } else {
                    "file of another kind"
                }
            ),
            "give the path of the socket that `lava-flow serve --socket` (or the ring producer) created",
        ),
        (rustix::io::Errno::CONNREFUSED, Some(_)) => Error::io(
            format!(
                "connecting to {what}: no server is listening there (a socket left behind by a server that exited); \
                 start the server, or check the path"
            ),
            e.into(),
        ),
        (rustix::io::Errno::PROTOTYPE, _) => Error::invalid(
            format!("socket path {}", path.display()),
            format!("a socket of another type is listening there, not a lava-flow server's SOCK_SEQPACKET ({e})"),
            "give the path of a lava-flow server's socket",
        ),
        _ => Error::io(format!("connecting to {what}"), e.into()),
    }
}

/// Whether a live socket is bound at `path`, found without connecting to it. A `SOCK_DGRAM`
/// socket's `connect` to the path fails with `EPROTOTYPE` while a server's `SOCK_SEQPACKET`
/// socket is bound there, and with `ECONNREFUSED` when the file is left over from a process that
/// is gone; the kernel answers from the socket's type without queueing anything, so no server
/// ever accepts (or counts) the probe. A live datagram socket there accepts the connect, which
/// sends nothing, and counts as live.
pub fn socket_is_live(path: &Path) -> Result<bool> {
    let probe = rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None)
        .map_err(|e| Error::io("creating a Unix SOCK_DGRAM socket to probe a socket path", e.into()))?;
    match rustix::net::connect(&probe, &unix_address(path)?) {
        Ok(()) | Err(rustix::io::Errno::PROTOTYPE) => Ok(true),
        Err(rustix::io::Errno::CONNREFUSED | rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::io(format!("checking whether a server listens at {}", path.display()), e.into())),
    }
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
