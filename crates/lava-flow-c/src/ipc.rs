//! The protocol's server and client (docs/PROTOCOL.md).

use std::ffi::{c_char, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use lava_flow::ipc::{Client, NamedObject, Server, ServerConfig, SharedObject};

use crate::handles::{get, remove, write_handle, Handle};
use crate::memory::{check_out, clone_export, LavaFlowExport};
use crate::status::{guard, CError, CResult, LavaFlowStatus};
use crate::structs::{read_in, write_out, Versioned};

/// A server sharing exports with other processes over a Unix socket.
pub struct LavaFlowServer {
    _opaque: [u8; 0],
}

/// A connection to a server.
pub struct LavaFlowClient {
    _opaque: [u8; 0],
}

impl Handle for LavaFlowServer {
    type Object = Server;
    const NAME: &'static str = "LavaFlowServer";
}

impl Handle for LavaFlowClient {
    type Object = Mutex<Client>;
    const NAME: &'static str = "LavaFlowClient";
}

/// How to run a server (NULL options: the defaults below). Version 1: 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LavaFlowServerOptions {
    /// `sizeof(LavaFlowServerOptions)`.
    pub struct_size: u32,
    /// Most clients served at once; 0: 64.
    pub max_clients: u32,
    /// 1: clients may publish objects into the server; 0: they may not (default 1 when the options
    /// are NULL).
    pub accept_publish: u32,
    /// A client that sends nothing for this many milliseconds is disconnected; 0: never.
    pub idle_timeout_ms: u32,
}

/// What a server did so far. Version 1: 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LavaFlowServerStats {
    /// `sizeof(LavaFlowServerStats)`.
    pub struct_size: u32,
    /// Zero.
    pub reserved: u32,
    /// Connections that passed the credential check.
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_active: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// Requests answered.
    pub requests_served: u64,
    /// Objects sent to clients.
    pub objects_sent: u64,
}

// SAFETY: #[repr(C)], `struct_size: u32` first, integer fields only.
unsafe impl Versioned for LavaFlowServerOptions {
    const NAME: &'static str = "LavaFlowServerOptions";
    fn set_struct_size(&mut self, size: u32) {
        self.struct_size = size;
    }
}

// SAFETY: #[repr(C)], `struct_size: u32` first, integer fields only.
unsafe impl Versioned for LavaFlowServerStats {
    const NAME: &'static str = "LavaFlowServerStats";
    fn set_struct_size(&mut self, size: u32) {
        self.struct_size = size;
    }
}

/// A C string argument.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string that stays valid during the call.
unsafe fn c_str<'a>(s: *const c_char, what: &str) -> CResult<&'a CStr> {
    if s.is_null() {
        return Err(CError::null(what));
    }
    // SAFETY: not NULL and NUL-terminated by the caller's contract.
    Ok(unsafe { CStr::from_ptr(s) })
}

/// # Safety
/// As [`c_str`].
pub(crate) unsafe fn c_path<'a>(s: *const c_char) -> CResult<&'a Path> {
    // SAFETY: the caller's contract.
    Ok(Path::new(OsStr::from_bytes(unsafe { c_str(s, "path")? }.to_bytes())))
}

/// # Safety
/// As [`c_str`].
unsafe fn c_name<'a>(s: *const c_char) -> CResult<&'a str> {
    // SAFETY: the caller's contract.
    unsafe { c_str(s, "name")? }
        .to_str()
        .map_err(|_| CError::invalid("name is not UTF-8: object names are UTF-8 (docs/PROTOCOL.md)"))
}

/// Binds a server to the Unix socket `path` (a stale socket file is replaced; a live server's is
/// refused) and serves in background threads until destroyed.
///
/// # Safety
/// `path` is a NUL-terminated string; `options` is NULL or points at `options->struct_size`
/// readable bytes; `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_server_create(
    path: *const c_char,
    options: *const LavaFlowServerOptions,
    out: *mut *mut LavaFlowServer,
) -> LavaFlowStatus {
    guard("lava_flow_server_create", || {
        check_out(out, "out")?;
        // SAFETY: the caller's contract on `path`.
        let path = unsafe { c_path(path)? };
        let mut config = ServerConfig::default();
        if !options.is_null() {
            // SAFETY: the caller's contract on `options`.
            let o = unsafe { read_in(options, "options")? };
            if o.max_clients != 0 {
                config.max_clients = o.max_clients as usize;
            }
            config.accept_publish = match o.accept_publish {
                0 => false,
                1 => true,
                other => {
                    return Err(CError::invalid(format!("LavaFlowServerOptions.accept_publish is {other}: use 0 or 1")))
                }
            };
            config.idle_timeout = (o.idle_timeout_ms != 0).then(|| Duration::from_millis(o.idle_timeout_ms.into()));
        }
        let server = Server::bind(path, config)?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, server) };
        Ok(())
    })
}

/// Publishes `export` under `name` (replacing an object of that name). The server keeps its own
/// duplicate: the export stays the caller's.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_server_publish(
    server: *const LavaFlowServer,
    name: *const c_char,
    export: *const LavaFlowExport,
) -> LavaFlowStatus {
    guard("lava_flow_server_publish", || {
        let server = get(server, "server")?;
        // SAFETY: the caller's contract on `name`.
        let name = unsafe { c_name(name)? };
        Ok(server.publish(NamedObject::new(name, clone_export(export)?))?)
    })
}

/// Withdraws the object published under `name` (`LAVA_FLOW_ERROR_INVALID_ARGUMENT` if none is).
/// Clients that received it keep what they imported.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_server_remove(server: *const LavaFlowServer, name: *const c_char) -> LavaFlowStatus {
    guard("lava_flow_server_remove", || {
        let server = get(server, "server")?;
        // SAFETY: the caller's contract on `name`.
        let name = unsafe { c_name(name)? };
        match server.remove(name) {
            Some(_) => Ok(()),
            None => Err(CError::invalid(format!("no object is published under {name:?}"))),
        }
    })
}

/// The server's counters. Set `stats->struct_size` first.
///
/// # Safety
/// `stats` is NULL (refused) or points at `stats->struct_size` readable and writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_server_stats(
    server: *const LavaFlowServer,
    stats: *mut LavaFlowServerStats,
) -> LavaFlowStatus {
    guard("lava_flow_server_stats", || {
        let s = get(server, "server")?.stats();
        let value = LavaFlowServerStats {
            struct_size: 0,
            reserved: 0,
            connections_accepted: s.connections_accepted,
            connections_active: s.connections_active,
            connections_closed: s.connections_closed,
            requests_served: s.requests_served,
            objects_sent: s.objects_sent,
        };
        // SAFETY: the caller's contract on `stats`.
        unsafe { write_out(stats, value, "stats") }
    })
}

/// Stops the server (NULL: nothing): closes its connections, removes the socket file, closes the
/// fds it held. Clients keep what they imported.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_server_destroy(server: *mut LavaFlowServer) -> LavaFlowStatus {
    guard("lava_flow_server_destroy", || remove(server).map(drop))
}

/// Connects to the server at `path`, waiting at most `timeout_ms` for it to accept.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_client_connect(
    path: *const c_char,
    timeout_ms: u32,
    out: *mut *mut LavaFlowClient,
) -> LavaFlowStatus {
    guard("lava_flow_client_connect", || {
        check_out(out, "out")?;
        // SAFETY: the caller's contract on `path`.
        let path = unsafe { c_path(path)? };
        let client = Client::connect_with_timeout(path, Duration::from_millis(timeout_ms.into()))?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, Mutex::new(client)) };
        Ok(())
    })
}

fn lock(c: &Mutex<Client>) -> std::sync::MutexGuard<'_, Client> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asks for the object published under `name`: a new export (with its fd, received over the
/// socket) that the caller destroys. A name not published is `LAVA_FLOW_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `name` is a NUL-terminated string; `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_client_get(
    client: *const LavaFlowClient,
    name: *const c_char,
    out: *mut *mut LavaFlowExport,
) -> LavaFlowStatus {
    guard("lava_flow_client_get", || {
        check_out(out, "out")?;
        let client = get(client, "client")?;
        // SAFETY: the caller's contract on `name`.
        let name = unsafe { c_name(name)? };
        let object: SharedObject = lock(&client).get(name)?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, object) };
        Ok(())
    })
}

/// As `lava_flow_client_get`, waiting at most `timeout_ms` for `name` to be published
/// (`LAVA_FLOW_ERROR_TIMEOUT` after that).
///
/// # Safety
/// `name` is a NUL-terminated string; `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_client_wait_for(
    client: *const LavaFlowClient,
    name: *const c_char,
    timeout_ms: u32,
    out: *mut *mut LavaFlowExport,
) -> LavaFlowStatus {
    guard("lava_flow_client_wait_for", || {
        check_out(out, "out")?;
        let client = get(client, "client")?;
        // SAFETY: the caller's contract on `name`.
        let name = unsafe { c_name(name)? };
        let object = lock(&client).wait_for(name, Duration::from_millis(timeout_ms.into()))?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, object) };
        Ok(())
    })
}

/// Publishes `export` into the server under `name` (the server must accept publishing). A
/// duplicate of its fd is sent: the export stays the caller's.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_client_publish(
    client: *const LavaFlowClient,
    name: *const c_char,
    export: *const LavaFlowExport,
) -> LavaFlowStatus {
    guard("lava_flow_client_publish", || {
        let client = get(client, "client")?;
        // SAFETY: the caller's contract on `name`.
        let name = unsafe { c_name(name)? };
        let object = NamedObject::new(name, clone_export(export)?);
        let published = lock(&client).publish(&[object]);
        Ok(published?)
    })
}

/// Closes the connection (NULL: nothing). Exports received stay valid.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_client_destroy(client: *mut LavaFlowClient) -> LavaFlowStatus {
    guard("lava_flow_client_destroy", || remove(client).map(drop))
}
