//! The server: a listening `SOCK_SEQPACKET` socket at a path, a thread per client, objects shared
//! by name.
//!
//! Safety at the boundary: the socket file is created with mode 0600 (in a private 0700
//! directory, then renamed into place, so the umask never matters and nobody can connect before
//! the mode is set); each peer's `SO_PEERCRED` uid must be the server's own or listed in
//! [`ServerConfig::allow_uids`]; reads are bounded in size ([`MAX_MESSAGE_LEN`], [`MAX_FDS`]) and
//! time ([`ServerConfig::idle_timeout`]); a message that fails to decode gets an `ERROR` reply and
//! its fds are closed at once, and the connection (and every other one) goes on. Published fds
//! are checked against their descriptions
//! ([`SharedObject::check_handle`](super::SharedObject::check_handle)), descriptions of one
//! allocation against each other ([`check_consistent`]), and memory of a private pool block of
//! this process is never published ([`check_publishable`](crate::pool::check_publishable)).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::net::SocketFlags;

use super::object::{join, NamedObject};
use super::socket::{borrow_all, recv_datagram, send_message, set_timeouts, unix_address, Received};
use super::wire::{
    check_consistent, decode, ErrorCode, Message, NamedDescription, WireError, MAX_FDS, MAX_MESSAGE_LEN,
};
use crate::{Error, Result};

/// How a server behaves towards its clients.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Uids other than the server's own effective uid that may connect. Empty: only the same user.
    pub allow_uids: Vec<u32>,
    /// Permission bits of the socket file. 0600 unless other users are allowed, who then also need
    /// write permission on the socket (0660 with a shared group, or 0666) and search permission on
    /// its directory. The uid check applies whatever the mode.
    pub socket_mode: u32,
    /// Most clients served at once; the next one gets a `busy` error and is closed.
    pub max_clients: usize,
    /// A client that sends nothing for this long is disconnected. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// A reply that cannot be sent within this time ends the connection.
    pub send_timeout: Duration,
    /// Whether clients may `PUBLISH` objects into the server.
    pub accept_publish: bool,
    /// Most objects the server holds (at most [`MAX_FDS`], so `GET` of everything fits one message).
    pub max_objects: usize,
    /// A connection that sent this many rejected messages is closed. `not-found` answers (a `GET`
    /// of a name not published yet, a `WAIT` that timed out) are not rejections and do not count.
    pub max_errors_per_connection: u32,
    /// Longest a `WAIT` is held before it is answered `not-found` (the client may wait again).
    pub max_wait: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            allow_uids: Vec::new(),
            socket_mode: 0o600,
            max_clients: 64,
            idle_timeout: Some(Duration::from_secs(30)),
            send_timeout: Duration::from_secs(5),
            accept_publish: true,
            max_objects: MAX_FDS,
            max_errors_per_connection: 16,
            max_wait: Duration::from_secs(60),
        }
    }
}

/// Counters of what a server did, for tests, logs and `lava-flow serve`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections that passed the credential check.
    pub connections_accepted: u64,
    /// Connections refused by the uid check.
    pub connections_refused: u64,
    /// Connections refused because `max_clients` were being served.
    pub connections_busy: u64,
    /// Connections being served now.
    pub connections_active: u64,
    /// Connections served and closed.
    pub connections_closed: u64,
    /// Connections closed because the client was silent for `idle_timeout`.
    pub idle_timeouts: u64,
    /// Requests answered successfully (`GET`, `WAIT`, `PUBLISH`).
    pub requests_served: u64,
    /// Objects handed out in `OBJECTS` replies.
    pub objects_sent: u64,
    /// Messages answered with an `ERROR` other than `not-found` (malformed, oversized, unexpected,
    /// busy, ...); they count towards [`ServerConfig::max_errors_per_connection`].
    pub messages_rejected: u64,
    /// `GET`s of a name nobody published and `WAIT`s that timed out, answered `not-found`.
    pub names_not_found: u64,
    /// fds that arrived with client messages.
    pub fds_received: u64,
    /// fds that arrived with rejected messages and were closed.
    pub fds_closed_on_rejection: u64,
}

struct State {
    stats: ServerStats,
    clients: HashMap<u64, Arc<OwnedFd>>,
}

struct Shared {
    config: ServerConfig,
    euid: u32,
    objects: Mutex<Vec<NamedObject>>,
    /// Notified whenever objects are added, and when the server stops (waking `WAIT`s).
    published: Condvar,
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
    next_client: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn objects(&self) -> MutexGuard<'_, Vec<NamedObject>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn count(&self, f: impl FnOnce(&mut ServerStats)) {
        f(&mut self.state().stats);
        self.changed.notify_all();
    }
}

/// A running server. Dropping it stops accepting, disconnects every client, joins its threads,
/// closes the objects' fds and removes the socket file.
pub struct Server {
    shared: Arc<Shared>,
    path: PathBuf,
    inode: (u64, u64),
    wake: Option<OwnedFd>,
    accept_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("path", &self.path).finish()
    }
}

fn refuse_existing(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        return Err(Error::invalid(
            format!("socket path {}", path.display()),
            "a file that is not a socket is in the way",
            "choose another path or remove the file",
        ));
    }
    // The probe never connects to the live server (see `socket_is_live`), so it takes none of
    // that server's client slots and is not counted by it.
    if super::socket::socket_is_live(path)? {
        return Err(Error::invalid(
            format!("socket path {}", path.display()),
            "another server is listening there",
            "stop it or choose another path",
        ));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing the stale socket {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

fn private_dir_near(path: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir =
        parent.join(format!(".lava-flow-bind-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    // The error names the user's directory: the private one is an implementation detail.
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "the directory does not exist",
            std::io::ErrorKind::PermissionDenied => "this user may not create files in that directory",
            _ => "the directory cannot be written",
        };
        Error::io(
            format!(
                "creating the socket {} in {}: {why}; choose a directory that exists and that you can write",
                path.display(),
                parent.display()
            ),
            e,
        )
    })?;
    // The umask may have removed bits we need; it cannot have added any.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))?;
    Ok(dir)
}

/// Binds a listening `SOCK_SEQPACKET` socket at `path` with `mode` (in a private directory, then
/// renamed into place; a stale socket is replaced, a live one refused): the socket and its
/// (device, inode) for removing exactly this file later.
pub(crate) fn bind_listener(path: &Path, mode: u32) -> Result<(OwnedFd, (u64, u64))> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    unix_address(path)?;
    refuse_existing(path)?;
    let dir = private_dir_near(path)?;
    let temp = dir.join("s");
    let result = (|| {
        let sock = super::socket::seqpacket_socket()?;
        rustix::net::bind(&sock, &unix_address(&temp)?)
            .map_err(|e| Error::io(format!("binding a Unix socket at {}", temp.display()), e.into()))?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| Error::io(format!("setting the mode of {}", temp.display()), e))?;
        rustix::net::listen(&sock, 64).map_err(|e| Error::io("listening on the Unix socket", e.into()))?;
        std::fs::rename(&temp, path)
            .map_err(|e| Error::io(format!("moving the socket into place at {}", path.display()), e))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok((sock, (meta.dev(), meta.ino())))
    })();
    let _ = std::fs::remove_file(&temp);
    let _ = std::fs::remove_dir(&dir);
    result
}

impl Server {
    /// Creates the socket at `path` (mode [`ServerConfig::socket_mode`], 0600 by default) and starts
    /// serving. A stale socket file nobody listens on is replaced; a live one is an error.
    pub fn bind(path: impl AsRef<Path>, config: ServerConfig) -> Result<Server> {
        let path = path.as_ref().to_path_buf();
        if config.max_objects > MAX_FDS {
            return Err(Error::invalid(
                "ServerConfig::max_objects",
                format!("{} exceeds {MAX_FDS}, the most objects one reply can carry", config.max_objects),
                format!("use at most {MAX_FDS}"),
            ));
        }
        if config.max_clients == 0 {
            return Err(Error::invalid("ServerConfig::max_clients", "is zero", "allow at least one client"));
        }
        let (listener, inode) = bind_listener(&path, config.socket_mode)?;
        let (wake_r, wake_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::io("creating the server's wake-up pipe", e.into()))?;
        let shared = Arc::new(Shared {
            config,
            euid: rustix::process::geteuid().as_raw(),
            objects: Mutex::new(Vec::new()),
            published: Condvar::new(),
            state: Mutex::new(State { stats: ServerStats::default(), clients: HashMap::new() }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            next_client: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        let accept_thread = std::thread::Builder::new()
            .name("lava-flow-accept".into())
            .spawn(move || accept_loop(thread_shared, listener, wake_r))
            .map_err(|e| Error::io("starting the server thread", e))?;
        Ok(Server { shared, path, inode, wake: Some(wake_w), accept_thread: Some(accept_thread) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds an object that clients can `GET`. Names are unique.
    ///
    /// Refused: an invalid name or description; an fd that is not what its description says
    /// ([`SharedObject::check_handle`](super::SharedObject::check_handle): host memory must be a
    /// memfd sealed against shrinking and large enough, device memory no pipe, socket or file); a
    /// description of an allocation that an object already held describes otherwise; memory of a
    /// private pool block ([`check_publishable`](crate::pool::check_publishable): its fd would show
    /// peers every other buffer of the block).
    pub fn publish(&self, object: NamedObject) -> Result<()> {
        super::wire::check_name(&object.name, false)?;
        super::wire::validate_description(&object.object.description())?;
        check_local_object(&object)?;
        let mut objects = self.shared.objects();
        let result = insert_objects(&mut objects, vec![object], self.shared.config.max_objects);
        drop(objects);
        self.shared.published.notify_all();
        result.map_err(|(code, reason)| {
            Error::invalid("object to publish", format!("{code}: {reason}"), "use a new name or remove objects first")
        })
    }

    /// Removes an object and hands it back.
    pub fn remove(&self, name: &str) -> Option<NamedObject> {
        let mut objects = self.shared.objects();
        let i = objects.iter().position(|o| o.name == name)?;
        Some(objects.remove(i))
    }

    /// The names and descriptions of the objects held now.
    pub fn objects(&self) -> Vec<NamedDescription> {
        self.shared.objects().iter().map(NamedObject::named_description).collect()
    }

    /// The counters so far.
    pub fn stats(&self) -> ServerStats {
        self.shared.state().stats
    }

    /// Waits until `until` holds for the counters or `timeout` passes; returns the last counters
    /// and whether the condition held.
    pub fn wait_for(&self, timeout: Duration, until: impl Fn(&ServerStats) -> bool) -> (ServerStats, bool) {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state();
        loop {
            if until(&state.stats) {
                return (state.stats, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (state.stats, false);
            }
            state = self.shared.changed.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits until no client is connected.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.connections_active == 0).1
    }

    /// Stops the server (as dropping it does), returning the final counters.
    pub fn shutdown(mut self) -> ServerStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        {
            // Taken so that a WAIT between its stop check and its sleep cannot miss the wake-up.
            let _objects = self.shared.objects();
            self.shared.published.notify_all();
        }
        if let Some(w) = self.wake.take() {
            let _ = rustix::io::write(&w, &[1]);
        }
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        self.shared.objects().clear();
        // Remove the socket file only if it is still ours.
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: Arc<Shared>, listener: OwnedFd, wake: OwnedFd) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(&listener, PollFlags::IN), PollFd::new(&wake, PollFlags::IN)];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
        if !fds[1].revents().is_empty() || shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        let conn = match rustix::net::accept_with(&listener, SocketFlags::CLOEXEC) {
            Ok(c) => c,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN | rustix::io::Errno::CONNABORTED) => continue,
            Err(_) => {
                // Out of fds or similar: back off rather than spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        threads.retain(|t| !t.is_finished());
        if let Some(t) = admit(&shared, conn) {
            threads.push(t);
        }
    }
    // Disconnect every client, then wait for their threads.
    for sock in shared.state().clients.values() {
        let _ = rustix::net::shutdown(sock.as_fd(), rustix::net::Shutdown::Both);
    }
    for t in threads {
        let _ = t.join();
    }
}

fn reply_and_close(sock: OwnedFd, code: ErrorCode, text: String, send_timeout: Duration) {
    let _ = set_timeouts(sock.as_fd(), Some(send_timeout), Some(send_timeout));
    let _ = send_message(sock.as_fd(), &Message::error(code, text), &[]);
}

fn admit(shared: &Arc<Shared>, conn: OwnedFd) -> Option<JoinHandle<()>> {
    let config = &shared.config;
    let uid = match rustix::net::sockopt::socket_peercred(&conn) {
        Ok(cred) => cred.uid.as_raw(),
        Err(e) => {
            reply_and_close(conn, ErrorCode::Refused, format!("SO_PEERCRED failed: {e}"), config.send_timeout);
            // Counted once the connection is closed, so that a counter never runs ahead of the fds.
            shared.count(|s| s.connections_refused += 1);
            return None;
        }
    };
    if uid != shared.euid && !config.allow_uids.contains(&uid) {
        let text = format!(
            "peer uid {uid} is not allowed: this server runs as uid {} and allows {:?} besides (SO_PEERCRED check); \
             start the server with that uid in allow_uids",
            shared.euid, config.allow_uids
        );
        reply_and_close(conn, ErrorCode::Refused, text, config.send_timeout);
        shared.count(|s| s.connections_refused += 1);
        return None;
    }
    let id = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let sock = Arc::new(conn);
    {
        let mut state = shared.state();
        if state.clients.len() >= config.max_clients {
            drop(state);
            let text = format!("{} clients are being served, the limit; try again later", config.max_clients);
            if let Ok(conn) = Arc::try_unwrap(sock) {
                reply_and_close(conn, ErrorCode::Busy, text, config.send_timeout);
            }
            shared.count(|s| s.connections_busy += 1);
            return None;
        }
        state.clients.insert(id, sock.clone());
        state.stats.connections_accepted += 1;
        state.stats.connections_active += 1;
    }
    shared.changed.notify_all();
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new().name(format!("lava-flow-client-{id}")).spawn(move || {
        serve_client(&thread_shared, sock.as_fd());
        let mut state = thread_shared.state();
        state.clients.remove(&id);
        drop(sock);
        state.stats.connections_active -= 1;
        state.stats.connections_closed += 1;
        drop(state);
        thread_shared.changed.notify_all();
    });
    match spawned {
        Ok(t) => Some(t),
        Err(_) => {
            let mut state = shared.state();
            state.clients.remove(&id);
            state.stats.connections_active -= 1;
            state.stats.connections_closed += 1;
            None
        }
    }
}

fn insert_objects(
    objects: &mut Vec<NamedObject>,
    new: Vec<NamedObject>,
    max: usize,
) -> std::result::Result<(), (ErrorCode, String)> {
    if let Some(o) = new.iter().find(|n| objects.iter().any(|o| o.name == n.name)) {
        return Err((ErrorCode::Unexpected, format!("an object named {:?} is already published", o.name)));
    }
    if objects.len() + new.len() > max {
        return Err((ErrorCode::Busy, format!("the server holds {} objects and takes at most {max}", objects.len())));
    }
    // Every GET '' must stay a message a validating client accepts: one allocation id, one
    // description, across everything held.
    let held: Vec<NamedDescription> = objects.iter().map(NamedObject::named_description).collect();
    let added: Vec<NamedDescription> = new.iter().map(NamedObject::named_description).collect();
    check_consistent(&held, &added).map_err(|e| (e.code, e.reason))?;
    objects.extend(new);
    Ok(())
}

/// The checks an object published from this process passes besides its description's: its fd
/// matches the description, and it is no private pool block's memory.
fn check_local_object(object: &NamedObject) -> Result<()> {
    if let Some(m) = object.object.memory() {
        crate::pool::check_publishable(&object.name, &m.description)?;
    }
    object.object.check_handle()
}

/// What the server does with one message.
enum Answer {
    /// Send this reply with these fds.
    Reply(Message, Vec<OwnedFd>),
    /// Send an `ERROR` with this code and text.
    Refuse(ErrorCode, String),
    /// The client hung up while its `WAIT` was held: close the connection.
    Hangup,
}

/// The `OBJECTS` reply for `name` ("" for all), or `None` where no object has that name.
fn objects_reply(objects: &[NamedObject], name: &str) -> Option<Answer> {
    let chosen: Vec<&NamedObject> = objects.iter().filter(|o| name.is_empty() || o.name == name).collect();
    if chosen.is_empty() && !name.is_empty() {
        return None;
    }
    let mut descriptions = Vec::with_capacity(chosen.len());
    let mut dups = Vec::with_capacity(chosen.len());
    for o in chosen {
        match o.object.fd().try_clone_to_owned() {
            Ok(dup) => dups.push(dup),
            Err(e) => {
                return Some(Answer::Refuse(ErrorCode::Internal, format!("duplicating the fd of {:?}: {e}", o.name)))
            }
        }
        descriptions.push(o.named_description());
    }
    Some(Answer::Reply(Message::Objects(descriptions), dups))
}

/// Whether the client closed its end (`POLLHUP`); a client that only stopped sending still waits.
fn hung_up(sock: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&sock, PollFlags::empty())];
    matches!(rustix::event::poll(&mut fds, Some(&rustix::time::Timespec::default())), Ok(n) if n > 0)
        && fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR)
}

/// Holds a `WAIT` until `name` is published, the time is up, the server stops or the client
/// hangs up.
fn wait_for_name(shared: &Shared, sock: BorrowedFd<'_>, name: &str, timeout: Duration) -> Answer {
    let timeout = timeout.min(shared.config.max_wait);
    let deadline = Instant::now() + timeout;
    let mut objects = shared.objects();
    loop {
        if let Some(answer) = objects_reply(&objects, name) {
            return answer;
        }
        let now = Instant::now();
        if now >= deadline || shared.stopping.load(Ordering::SeqCst) {
            return Answer::Refuse(
                ErrorCode::NotFound,
                format!(
                    "no object named {name:?} was published within {} ms; WAIT again to go on waiting",
                    timeout.as_millis()
                ),
            );
        }
        // Woken by every publish; the slice bounds how long a client that hung up holds the thread.
        let slice = (deadline - now).min(Duration::from_millis(200));
        objects = shared.published.wait_timeout(objects, slice).unwrap_or_else(|p| p.into_inner()).0;
        if hung_up(sock) {
            return Answer::Hangup;
        }
    }
}

/// What the server answers to one decoded request.
fn respond(shared: &Shared, sock: BorrowedFd<'_>, message: Message, fds: Vec<OwnedFd>) -> Answer {
    match message {
        Message::Get { name } => objects_reply(&shared.objects(), &name).unwrap_or_else(|| {
            Answer::Refuse(
                ErrorCode::NotFound,
                format!("no object is named {name:?}; GET \"\" lists them all, WAIT waits for one to be published"),
            )
        }),
        Message::Wait { name, timeout_ms } => {
            wait_for_name(shared, sock, &name, Duration::from_millis(u64::from(timeout_ms)))
        }
        Message::Publish(descriptions) => {
            if !shared.config.accept_publish {
                return Answer::Refuse(ErrorCode::Unexpected, "this server does not take published objects".into());
            }
            let new = match join(descriptions, fds) {
                Ok(new) => new,
                Err(e) => return Answer::Refuse(ErrorCode::FdCountMismatch, e.to_string()),
            };
            if let Some((i, o, e)) =
                new.iter().enumerate().find_map(|(i, o)| o.object.check_handle().err().map(|e| (i, o, e)))
            {
                return Answer::Refuse(
                    ErrorCode::Malformed,
                    format!("object {i} ({:?}) does not match its description: {e}", o.name),
                );
            }
            let mut objects = shared.objects();
            let inserted = insert_objects(&mut objects, new, shared.config.max_objects);
            drop(objects);
            shared.published.notify_all();
            match inserted {
                Ok(()) => Answer::Reply(Message::Ok, Vec::new()),
                Err((code, text)) => Answer::Refuse(code, text),
            }
        }
        other => Answer::Refuse(
            ErrorCode::Unexpected,
            format!("a client may send GET, WAIT or PUBLISH, not {:?}", other.message_type()),
        ),
    }
}

/// After a read of zero bytes without fds: whether the client is gone (an orderly end of the
/// connection) rather than having sent an empty datagram. A peer that shut down its sending side
/// with nothing queued is gone; if a datagram is still queued, the zero bytes were one.
fn ended(sock: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&sock, PollFlags::RDHUP)];
    let hung_up = matches!(rustix::event::poll(&mut fds, Some(&rustix::time::Timespec::default())), Ok(n) if n > 0)
        && fds[0].revents().intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR);
    if !hung_up {
        return false;
    }
    let mut byte = [0u8; 1];
    let peeked = rustix::net::recv(sock, &mut byte, rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT);
    !matches!(peeked, Ok((n, _)) if n > 0)
}

fn serve_client(shared: &Shared, sock: BorrowedFd<'_>) {
    let config = &shared.config;
    if set_timeouts(sock, config.idle_timeout, Some(config.send_timeout)).is_err() {
        return;
    }
    let mut errors = 0u32;
    while !shared.stopping.load(Ordering::SeqCst) {
        let received = match recv_datagram(sock, MAX_MESSAGE_LEN) {
            Ok(Some(r)) => r,
            // Zero bytes: the end of the connection, or an empty datagram, which is a message too
            // short for a header and is answered like one.
            Ok(None) if ended(sock) => return,
            Ok(None) => Received { bytes: Vec::new(), fds: Vec::new(), truncated: false, fds_truncated: false },
            Err(Error::Timeout { .. }) => {
                shared.count(|s| s.idle_timeouts += 1);
                return;
            }
            Err(_) => return,
        };
        let fd_count = received.fds.len() as u64;
        shared.count(|s| s.fds_received += fd_count);
        let decoded = if received.truncated {
            Err(WireError {
                code: ErrorCode::TooLarge,
                reason: format!("message exceeds the limit of {MAX_MESSAGE_LEN} bytes"),
            })
        } else if received.fds_truncated {
            Err(WireError { code: ErrorCode::TooLarge, reason: format!("message carries more than {MAX_FDS} fds") })
        } else {
            decode(&received.bytes, received.fds.len())
        };
        let outcome = match decoded {
            Ok(message) => respond(shared, sock, message, received.fds),
            Err(e) => {
                // The fds of a rejected message close here, before the reply goes out.
                drop(received.fds);
                Answer::Refuse(e.code, e.reason)
            }
        };
        match outcome {
            Answer::Hangup => return,
            Answer::Reply(reply, fds) => {
                let objects = fds.len() as u64;
                let sent = send_message(sock, &reply, &borrow_all(&fds));
                drop(fds);
                if sent.is_err() {
                    return;
                }
                shared.count(|s| {
                    s.requests_served += 1;
                    s.objects_sent += objects;
                });
            }
            Answer::Refuse(code, text) => {
                // A rejected message's fds were dropped above or inside `respond` (a failed join
                // or a refused publish drops them with its arguments).
                let not_found = code == ErrorCode::NotFound;
                shared.count(|s| {
                    if not_found {
                        s.names_not_found += 1;
                    } else {
                        s.messages_rejected += 1;
                    }
                    s.fds_closed_on_rejection += fd_count;
                });
                // A name not published (yet) is an answer, not a fault: a client polling for it
                // is not dropped.
                errors += u32::from(!not_found);
                if send_message(sock, &Message::error(code, text), &[]).is_err()
                    || errors >= config.max_errors_per_connection
                {
                    return;
                }
            }
        }
    }
}
