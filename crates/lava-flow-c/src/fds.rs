//! fds across the boundary.
//!
//! **In.** A function that takes an `int fd` never gives that number to a driver or to the Rust
//! library. It makes its own duplicate (`fcntl(F_DUPFD_CLOEXEC)`) and hands the duplicate to the
//! Rust call, which consumes it whether it succeeds or fails (docs/OWNERSHIP.md). Then:
//! - on success, the caller's fd is closed: the call consumed it, as the Vulkan, CUDA and GL
//!   specifications say a successful import does;
//! - on failure, the caller's fd is left open and untouched: it is still the caller's, to retry
//!   elsewhere or close.
//!
//! This is provable: the caller's number is closed only after a successful call, when the caller
//! has given it up, and no driver ever saw it, so no driver can have closed it. A closed or
//! negative fd fails the duplication (`EBADF`) and is refused with `LAVA_FLOW_ERROR_INVALID_FD`
//! without anything being closed.
//!
//! **Out.** A function that returns an fd (`int *fd_out`) returns a fresh one (a new export or a
//! duplicate) that the caller owns and must close.

use std::ffi::c_int;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use crate::status::{CError, CResult, LavaFlowStatus};

/// A duplicate of the caller's `fd`, owned by lava-flow; the caller's fd is untouched.
pub fn dup_caller_fd(fd: c_int, what: &str) -> CResult<OwnedFd> {
    if fd < 0 {
        return Err(CError::new(
            LavaFlowStatus::LAVA_FLOW_ERROR_INVALID_FD,
            format!("{what} is {fd}, not an fd: pass the fd an export returned"),
        ));
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) reads no memory; on a number that is not open it fails with
    // EBADF and changes nothing.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        let os = std::io::Error::last_os_error();
        return Err(CError::new(
            LavaFlowStatus::LAVA_FLOW_ERROR_INVALID_FD,
            format!("{what} {fd} cannot be duplicated ({os}): pass an open fd that an export returned"),
        ));
    }
    // SAFETY: `copy` is a new fd this call just made; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Runs `import` on a duplicate of the caller's `fd`; closes the caller's fd only when it
/// succeeded (module docs).
pub fn consume_on_success<T>(fd: c_int, what: &str, import: impl FnOnce(OwnedFd) -> CResult<T>) -> CResult<T> {
    let copy = dup_caller_fd(fd, what)?;
    let value = import(copy)?;
    // SAFETY: the call succeeded, so by this function's contract (stated in the header for every
    // function that takes an fd) the caller has given `fd` up; it was open a moment ago
    // (the duplication succeeded) and no driver saw it. close(2) reads no memory.
    unsafe { libc::close(fd) };
    Ok(value)
}

/// Gives an fd to the caller through `out`.
///
/// # Safety
/// `out` is NULL or valid for a write of one `int`.
pub unsafe fn give_fd(out: *mut c_int, fd: OwnedFd) -> CResult {
    if out.is_null() {
        // `fd` is dropped (closed) here: the caller did not take it.
        return Err(CError::null("fd_out"));
    }
    // SAFETY: not NULL and writable by the caller's contract; no alignment needed.
    unsafe { out.write_unaligned(fd.into_raw_fd()) };
    Ok(())
}
