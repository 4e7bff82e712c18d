//! The client side: connect to a server's socket, ask for objects by name, publish objects.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::object::{join, FromShared, NamedObject, SharedObject};
use super::socket::{connect_seqpacket, recv_datagram, send_message, set_timeouts};
use super::wire::{decode, ErrorCode, Message, MAX_MESSAGE_LEN};
use crate::{Error, Result};

/// How long a client waits for a reply unless told otherwise.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`Client::wait_for`] asks again with `GET` when the server predates `WAIT`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A connection to a lava-flow server.
#[derive(Debug)]
pub struct Client {
    sock: OwnedFd,
    path: PathBuf,
    /// The receive timeout set on the socket (restored after a `WAIT`).
    reply_timeout: Option<Duration>,
}

impl Client {
    /// Connects to the server at `path`, waiting at most [`DEFAULT_REPLY_TIMEOUT`] for each reply.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_with_timeout(path, DEFAULT_REPLY_TIMEOUT)
    }

    /// Connects, waiting at most `timeout` for each reply.
    pub fn connect_with_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Client> {
        let path = path.as_ref().to_path_buf();
        let sock = connect_seqpacket(&path)?;
        set_timeouts(sock.as_fd(), Some(timeout), Some(timeout))?;
        Ok(Client { sock, path, reply_timeout: Some(timeout) })
    }

    /// Uses an already connected seqpacket socket (one inherited from a parent, say), with the
    /// timeouts it has.
    pub fn from_socket(sock: OwnedFd) -> Client {
        let reply_timeout =
            rustix::net::sockopt::socket_timeout(&sock, rustix::net::sockopt::Timeout::Recv).ok().flatten();
        Client { sock, path: PathBuf::new(), reply_timeout }
    }

    /// The connected socket.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Sends a message with fds and returns the reply with its fds. `ERROR` replies come back as
    /// messages here; [`get`](Client::get) and [`publish`](Client::publish) turn them into errors.
    pub fn request(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(Message, Vec<OwnedFd>)> {
        let sent = send_message(self.sock.as_fd(), message, fds);
        let reply = self.receive();
        match (sent, reply) {
            (_, Ok(r)) => Ok(r),
            // A server that refused us may close before reading: its reply is still queued.
            (Err(e), Err(_)) => Err(e),
            (Ok(()), Err(e)) => Err(e),
        }
    }

    /// Receives one message (a pending `ERROR`, or the reply to a raw request).
    pub fn receive(&self) -> Result<(Message, Vec<OwnedFd>)> {
        let mut reset_seen = false;
        let received = loop {
            match recv_datagram(self.sock.as_fd(), MAX_MESSAGE_LEN) {
                // The kernel reports a reset once and then hands out what was queued before it.
                Err(Error::Io { source, .. })
                    if !reset_seen && source.raw_os_error() == Some(rustix::io::Errno::CONNRESET.raw_os_error()) =>
                {
                    reset_seen = true;
                }
                other => break other?,
            }
        };
        let Some(received) = received else {
            return Err(Error::Protocol {
                reason: format!("the server at {} closed the connection without a reply", self.path.display()),
                advice: "check the server's log; it may have been stopped".into(),
            });
        };
        if received.truncated || received.fds_truncated {
            return Err(Error::Protocol {
                reason: "the server's reply exceeds the protocol's limits".into(),
                advice: "the server does not follow docs/PROTOCOL.md".into(),
            });
        }
        let message = decode(&received.bytes, received.fds.len())?;
        Ok((message, received.fds))
    }

    /// Asks for the object named `name` as a `T`: [`ExportedMemory`](raw_gpu_handle::ExportedMemory),
    /// [`ExportedBuffer`](raw_gpu_handle::ExportedBuffer), [`ExportedTexture`](raw_gpu_handle::ExportedTexture),
    /// [`ExportedSemaphore`](raw_gpu_handle::ExportedSemaphore), [`ExportedFence`](raw_gpu_handle::ExportedFence),
    /// or [`SharedObject`] for any kind.
    ///
    /// ```no_run
    /// # fn main() -> lava_flow::Result<()> {
    /// use lava_flow::ipc::Client;
    /// use lava_flow::raw_gpu_handle::ExportedBuffer;
    ///
    /// let client = Client::connect("/run/user/1000/lava-flow.sock")?;
    /// let frames = client.get::<ExportedBuffer>("frames")?;
    /// println!("{} bytes on {}", frames.size(), frames.device());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// An object of another kind is an [`Error::InvalidArgument`] naming the kind asked for and
    /// the kind the server holds.
    pub fn get<T: FromShared>(&self, name: &str) -> Result<T> {
        T::from_shared(self.get_one(name)?).map_err(|e| e.into_error(name))
    }

    /// Asks for the objects named `name`: one, or all of them for `""`.
    pub fn get_objects(&self, name: &str) -> Result<Vec<NamedObject>> {
        let (reply, fds) = self.request(&Message::Get { name: name.to_owned() }, &[])?;
        match reply {
            Message::Objects(descriptions) => join(descriptions, fds),
            other => Err(reply_error(other, "GET")),
        }
    }

    /// Asks for every object the server holds.
    pub fn get_all(&self) -> Result<Vec<NamedObject>> {
        self.get_objects("")
    }

    /// Asks for one object by name, of any kind ([`get`](Self::get) asks for one kind).
    pub fn get_one(&self, name: &str) -> Result<SharedObject> {
        one_object(self.get_objects(name)?, name)
    }

    /// Waits until an object named `name` is published (at most `timeout`), then returns it.
    ///
    /// Sends `WAIT` (docs/PROTOCOL.md), again after each `not-found` the server answers when its
    /// own limit on one wait passes, until `timeout` is spent; then the error is
    /// [`Error::Timeout`]. A server that predates `WAIT` (it answers `unexpected`, or `malformed`
    /// as lava-flow servers did before `WAIT` existed) is polled with `GET` every
    /// [`POLL_INTERVAL`] instead; `not-found` answers never count against a connection.
    pub fn wait_for(&self, name: &str, timeout: Duration) -> Result<SharedObject> {
        super::wire::check_name(name, false)?;
        // Past any real deadline (and no overflow for Duration::MAX): about 136 years.
        let deadline = Instant::now() + timeout.min(Duration::from_secs(1 << 32));
        loop {
            // One WAIT asks for at most u32::MAX ms (49 days); a longer timeout waits again.
            let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(u32::MAX.into()));
            let ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX);
            // The reply may take the whole wait, plus the usual time for a reply.
            let patience = left.saturating_add(self.reply_timeout.unwrap_or(DEFAULT_REPLY_TIMEOUT));
            set_timeouts(self.sock.as_fd(), Some(patience), self.reply_timeout)?;
            let answer = self.request(&Message::Wait { name: name.to_owned(), timeout_ms: ms }, &[]);
            set_timeouts(self.sock.as_fd(), self.reply_timeout, self.reply_timeout)?;
            let (reply, fds) = answer?;
            match reply {
                Message::Objects(descriptions) => return one_object(join(descriptions, fds)?, name),
                Message::Error { code: ErrorCode::NotFound, .. } if Instant::now() < deadline => {}
                Message::Error { code: ErrorCode::NotFound, .. } => return Err(wait_timeout(name, timeout)),
                Message::Error { code: ErrorCode::Unexpected | ErrorCode::Malformed, .. } => {
                    return self.poll_for(name, deadline, timeout)
                }
                other => return Err(reply_error(other, "WAIT")),
            }
        }
    }

    /// [`wait_for`](Self::wait_for) against a server without `WAIT`: `GET` until the name is there.
    fn poll_for(&self, name: &str, deadline: Instant, timeout: Duration) -> Result<SharedObject> {
        loop {
            let (reply, fds) = self.request(&Message::Get { name: name.to_owned() }, &[])?;
            match reply {
                Message::Objects(descriptions) => return one_object(join(descriptions, fds)?, name),
                Message::Error { code: ErrorCode::NotFound, .. } => {}
                other => return Err(reply_error(other, "GET")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(wait_timeout(name, timeout));
            }
            std::thread::sleep(left.min(POLL_INTERVAL));
        }
    }

    /// Hands objects to the server (it keeps duplicates of their fds; these stay open here).
    ///
    /// Memory of a private pool block of this process is refused before anything is sent
    /// ([`check_publishable`](crate::pool::check_publishable)): its fd would show the server and
    /// every client of it all the other buffers of the block.
    pub fn publish(&self, objects: &[NamedObject]) -> Result<()> {
        for o in objects {
            if let Some(m) = o.object.memory() {
                crate::pool::check_publishable(&o.name, &m.description)?;
            }
        }
        let descriptions = objects.iter().map(NamedObject::named_description).collect();
        let fds: Vec<BorrowedFd<'_>> = objects.iter().map(|o| o.object.fd()).collect();
        let (reply, _) = self.request(&Message::Publish(descriptions), &fds)?;
        match reply {
            Message::Ok => Ok(()),
            other => Err(reply_error(other, "PUBLISH")),
        }
    }
}

/// The single object named `name` that a reply must hold.
fn one_object(mut objects: Vec<NamedObject>, name: &str) -> Result<SharedObject> {
    match (objects.pop(), objects.is_empty()) {
        (Some(o), true) if o.name == name => Ok(o.object),
        _ => Err(Error::Protocol {
            reason: format!("asked for {name:?} and got a different set of objects"),
            advice: "the server does not follow docs/PROTOCOL.md".into(),
        }),
    }
}

fn wait_timeout(name: &str, timeout: Duration) -> Error {
    Error::Timeout { action: format!("waiting for an object named {name:?} to be published"), timeout }
}

fn reply_error(reply: Message, request: &str) -> Error {
    match reply {
        Message::Error { code: ErrorCode::Refused, text } => {
            Error::PeerRefused { reason: text, advice: "run as the server's user or have it allow your uid".into() }
        }
        Message::Error { code: ErrorCode::NotFound, text } => {
            Error::invalid("object name", text, "ask for \"\" to list every object the server holds")
        }
        Message::Error { code, text } => Error::Protocol {
            reason: format!("the server answered {request} with {code}: {text}"),
            advice: "see docs/PROTOCOL.md for what each error code means".into(),
        },
        other => Error::Protocol {
            reason: format!("the server answered {request} with {:?}", other.message_type()),
            advice: "the server does not follow docs/PROTOCOL.md".into(),
        },
    }
}
