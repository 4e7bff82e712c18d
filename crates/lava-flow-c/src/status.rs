//! Status codes, the thread-local error message, and the guard every extern function runs in.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use lava_flow::Error;

/// What a call did. `LAVA_FLOW_OK` is 0; every other value is an error whose message
/// `lava_flow_last_error()` returns on the same thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowStatus {
    /// Success.
    LAVA_FLOW_OK = 0,
    /// A pointer argument that must not be NULL was NULL.
    LAVA_FLOW_ERROR_NULL_POINTER = 1,
    /// A handle that is not a live lava-flow handle of the expected type: destroyed already, never
    /// made by lava-flow, or a handle of another type.
    LAVA_FLOW_ERROR_INVALID_HANDLE = 2,
    /// A size, offset, format, enum value, name (one not published, too) or other argument is wrong.
    LAVA_FLOW_ERROR_INVALID_ARGUMENT = 3,
    /// A struct's `struct_size` is smaller than this library's version 1 of it, or larger with
    /// non-zero bytes this library does not know.
    LAVA_FLOW_ERROR_STRUCT_SIZE = 4,
    /// An fd that is closed, or not the kind of object the call needs (a pipe where a GPU export
    /// was expected).
    LAVA_FLOW_ERROR_INVALID_FD = 5,
    /// The driver or platform cannot do what was asked (a capability query said no).
    LAVA_FLOW_ERROR_UNSUPPORTED = 6,
    /// A native library (libvulkan, libcuda, libEGL, libOpenCL) could not be loaded.
    LAVA_FLOW_ERROR_LIBRARY_UNAVAILABLE = 7,
    /// No device matched the request.
    LAVA_FLOW_ERROR_DEVICE_NOT_FOUND = 8,
    /// An export was offered to a device or driver other than its exporter's.
    LAVA_FLOW_ERROR_INCOMPATIBLE_DEVICE = 9,
    /// Not enough memory of the requested kind.
    LAVA_FLOW_ERROR_OUT_OF_MEMORY = 10,
    /// A Vulkan, CUDA, OpenCL, OpenGL or EGL call failed (the message names it and its code).
    LAVA_FLOW_ERROR_DRIVER = 11,
    /// A wait did not finish in time.
    LAVA_FLOW_ERROR_TIMEOUT = 12,
    /// The peer process broke the protocol.
    LAVA_FLOW_ERROR_PROTOCOL = 13,
    /// A peer was refused (credentials, version).
    LAVA_FLOW_ERROR_PEER_REFUSED = 14,
    /// An OS call failed.
    LAVA_FLOW_ERROR_IO = 15,
    /// A read-back differed from what was written.
    LAVA_FLOW_ERROR_MISMATCH = 16,
    /// A bug in lava-flow (a Rust panic, caught at the boundary). Please report the message.
    LAVA_FLOW_ERROR_INTERNAL = 17,
    /// Every frame of a channel is in flight (`lava_flow_channel_producer_try_acquire`).
    LAVA_FLOW_ERROR_FULL = 18,
    /// The channel ended cleanly: its producer finished or was destroyed, and every frame it sent
    /// was delivered before this status (`lava_flow_channel_consumer_recv`).
    LAVA_FLOW_ERROR_CLOSED = 19,
    /// The other end of a channel is gone without ending it (the producer exited or was killed,
    /// or disconnected this consumer); frames sent before were delivered.
    LAVA_FLOW_ERROR_DISCONNECTED = 20,
}

use LavaFlowStatus::*;

/// An error on its way to C: the status and the message.
#[derive(Debug)]
pub struct CError {
    /// The code returned.
    pub status: LavaFlowStatus,
    /// What `lava_flow_last_error` will say.
    pub message: String,
}

impl CError {
    /// An error of `status` saying `message`.
    pub fn new(status: LavaFlowStatus, message: impl Into<String>) -> CError {
        CError { status, message: message.into() }
    }

    /// A NULL pointer where `what` was needed.
    pub fn null(what: &str) -> CError {
        CError::new(LAVA_FLOW_ERROR_NULL_POINTER, format!("{what} is NULL: pass a valid pointer"))
    }

    /// A wrong argument.
    pub fn invalid(message: impl Into<String>) -> CError {
        CError::new(LAVA_FLOW_ERROR_INVALID_ARGUMENT, message)
    }
}

/// The status a library error maps to.
pub fn status_of(e: &Error) -> LavaFlowStatus {
    match e {
        Error::LibraryUnavailable { .. } => LAVA_FLOW_ERROR_LIBRARY_UNAVAILABLE,
        Error::DeviceNotFound { .. } => LAVA_FLOW_ERROR_DEVICE_NOT_FOUND,
        Error::Vulkan { .. } | Error::Api { .. } => LAVA_FLOW_ERROR_DRIVER,
        Error::Unsupported { .. } => LAVA_FLOW_ERROR_UNSUPPORTED,
        Error::IncompatibleDevice(_) | Error::IncompatibleSyncDevice { .. } => LAVA_FLOW_ERROR_INCOMPATIBLE_DEVICE,
        Error::InvalidArgument { .. } => LAVA_FLOW_ERROR_INVALID_ARGUMENT,
        Error::InvalidHandle { .. } => LAVA_FLOW_ERROR_INVALID_FD,
        Error::OutOfMemory { .. } => LAVA_FLOW_ERROR_OUT_OF_MEMORY,
        Error::Timeout { .. } => LAVA_FLOW_ERROR_TIMEOUT,
        Error::Protocol { .. } => LAVA_FLOW_ERROR_PROTOCOL,
        Error::PeerRefused { .. } => LAVA_FLOW_ERROR_PEER_REFUSED,
        Error::Io { .. } => LAVA_FLOW_ERROR_IO,
        Error::Mismatch { .. } => LAVA_FLOW_ERROR_MISMATCH,
        Error::Full { .. } => LAVA_FLOW_ERROR_FULL,
        Error::Closed { clean: true, .. } => LAVA_FLOW_ERROR_CLOSED,
        Error::Closed { clean: false, .. } => LAVA_FLOW_ERROR_DISCONNECTED,
        // Errors recorded while dropping earlier objects are driver errors; new variants default
        // to the driver's too until they get their own code.
        _ => LAVA_FLOW_ERROR_DRIVER,
    }
}

impl From<Error> for CError {
    fn from(e: Error) -> CError {
        CError { status: status_of(&e), message: e.to_string() }
    }
}

/// `Result` of the bodies of extern functions.
pub type CResult<T = ()> = Result<T, CError>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    // A message with an interior NUL (from an OS or driver string) keeps what comes before it.
    let message = match CString::new(message) {
        Ok(m) => m,
        Err(e) => {
            let end = e.nul_position();
            let mut bytes = e.into_vec();
            bytes.truncate(end);
            CString::new(bytes).unwrap_or_default()
        }
    };
    LAST_ERROR.with(|slot| *slot.borrow_mut() = message);
}

/// Runs the body of the extern function `function`: its error, or a panic, becomes a status and
/// this thread's last error message.
pub fn guard(function: &str, body: impl FnOnce() -> CResult) -> LavaFlowStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => LAVA_FLOW_OK,
        Ok(Err(e)) => {
            set_last_error(format!("{function}: {}", e.message));
            e.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            set_last_error(format!(
                "{function}: internal error (a Rust panic, caught before it reached C): {what}; please report it"
            ));
            LAVA_FLOW_ERROR_INTERNAL
        }
    }
}

/// The message of the last call on this thread that returned an error ("" before any did).
/// Successful calls leave it as it was. The string belongs to lava-flow: it stays valid until the
/// next call on this thread that returns an error, and must not be freed.
#[no_mangle]
pub extern "C" fn lava_flow_last_error() -> *const c_char {
    // `with` fails only while the thread is being torn down; there is no message then.
    LAST_ERROR.try_with(|slot| slot.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

/// The name of a status ("LAVA_FLOW_ERROR_NULL_POINTER"), a static string; "LAVA_FLOW_UNKNOWN_STATUS"
/// for a value that is none of them.
#[no_mangle]
pub extern "C" fn lava_flow_status_name(status: i32) -> *const c_char {
    let name: &'static std::ffi::CStr = match status {
        0 => c"LAVA_FLOW_OK",
        1 => c"LAVA_FLOW_ERROR_NULL_POINTER",
        2 => c"LAVA_FLOW_ERROR_INVALID_HANDLE",
        3 => c"LAVA_FLOW_ERROR_INVALID_ARGUMENT",
        4 => c"LAVA_FLOW_ERROR_STRUCT_SIZE",
        5 => c"LAVA_FLOW_ERROR_INVALID_FD",
        6 => c"LAVA_FLOW_ERROR_UNSUPPORTED",
        7 => c"LAVA_FLOW_ERROR_LIBRARY_UNAVAILABLE",
        8 => c"LAVA_FLOW_ERROR_DEVICE_NOT_FOUND",
        9 => c"LAVA_FLOW_ERROR_INCOMPATIBLE_DEVICE",
        10 => c"LAVA_FLOW_ERROR_OUT_OF_MEMORY",
        11 => c"LAVA_FLOW_ERROR_DRIVER",
        12 => c"LAVA_FLOW_ERROR_TIMEOUT",
        13 => c"LAVA_FLOW_ERROR_PROTOCOL",
        14 => c"LAVA_FLOW_ERROR_PEER_REFUSED",
        15 => c"LAVA_FLOW_ERROR_IO",
        16 => c"LAVA_FLOW_ERROR_MISMATCH",
        17 => c"LAVA_FLOW_ERROR_INTERNAL",
        18 => c"LAVA_FLOW_ERROR_FULL",
        19 => c"LAVA_FLOW_ERROR_CLOSED",
        20 => c"LAVA_FLOW_ERROR_DISCONNECTED",
        _ => c"LAVA_FLOW_UNKNOWN_STATUS",
    };
    name.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_internal_with_its_message() {
        let status = guard("lava_flow_test", || panic!("boom"));
        assert_eq!(status, LAVA_FLOW_ERROR_INTERNAL);
        // SAFETY: lava_flow_last_error returns a NUL-terminated string valid until the next failing call.
        let message = unsafe { std::ffi::CStr::from_ptr(lava_flow_last_error()) }.to_string_lossy().into_owned();
        assert!(message.contains("boom") && message.contains("lava_flow_test"), "{message}");
    }

    #[test]
    fn every_status_has_its_name() {
        for (code, status) in [
            (0, LAVA_FLOW_OK),
            (4, LAVA_FLOW_ERROR_STRUCT_SIZE),
            (17, LAVA_FLOW_ERROR_INTERNAL),
            (18, LAVA_FLOW_ERROR_FULL),
            (20, LAVA_FLOW_ERROR_DISCONNECTED),
        ] {
            assert_eq!(status as i32, code);
            // SAFETY: static NUL-terminated strings.
            let name = unsafe { std::ffi::CStr::from_ptr(lava_flow_status_name(code)) };
            assert_eq!(name.to_str().unwrap(), format!("{status:?}"));
        }
    }
}
