//! Sending bytes with file descriptors attached (`SCM_RIGHTS`) over a Unix-domain stream socket.
//!
//! The received fds arrive as [`OwnedFd`] with `O_CLOEXEC` set, so a message that is rejected
//! closes them when dropped and none leak into child processes.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::{Error, Result};

/// Most fds one message may carry; the kernel's limit (`SCM_MAX_FD`) is 253.
pub const MAX_FDS_PER_MESSAGE: usize = 64;

/// Sends `bytes` with `fds` attached in one `sendmsg`. The fds stay owned by the caller (the
/// kernel duplicates them into the receiver).
pub fn send_with_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(Error::invalid(
            format!("a message with {} fds", fds.len()),
            format!("at most {MAX_FDS_PER_MESSAGE} fds travel in one message"),
            "split the objects over several messages",
        ));
    }
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Error::invalid("fds to send", "they do not fit the control buffer", "send fewer fds"));
    }
    let mut sent = 0;
    while sent < bytes.len() || (sent == 0 && bytes.is_empty()) {
        let iov = [IoSlice::new(&bytes[sent..])];
        let n = match sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::io("sending a message over a Unix socket", e.into())),
        };
        if bytes.is_empty() {
            break;
        }
        sent += n;
        // The fds went with the first chunk; later chunks carry none.
        control = SendAncillaryBuffer::new(&mut []);
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and the fds sent with them. Returns the byte count (0 at
/// end of stream) and the fds. Fds beyond what the control buffer holds are reported as an error
/// (`MSG_CTRUNC`) after closing the ones received.
pub fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>)> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::io("receiving a message from a Unix socket", e.into())),
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        drop(fds);
        return Err(Error::Protocol {
            reason: format!("the peer sent more than {MAX_FDS_PER_MESSAGE} fds in one message (MSG_CTRUNC)"),
            advice: "send fewer fds per message".into(),
        });
    }
    Ok((msg.bytes, fds))
}

/// Receives exactly `buf.len()` bytes, collecting the fds that arrive with them.
pub fn recv_exact_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Vec<OwnedFd>> {
    let mut got = 0;
    let mut fds = Vec::new();
    while got < buf.len() {
        let (n, more) = recv_with_fds(socket.as_fd(), &mut buf[got..])?;
        fds.extend(more);
        if n == 0 {
            return Err(Error::Protocol {
                reason: format!("the peer closed the connection after {got} of {} bytes", buf.len()),
                advice: "check that the peer is alive and speaks the same protocol".into(),
            });
        }
        got += n;
    }
    Ok(fds)
}
