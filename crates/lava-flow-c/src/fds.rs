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

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// A pipe's two ends as raw numbers (the test closes them).
    fn pipe() -> (c_int, c_int) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two numbers pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        (fds[0], fds[1])
    }

    fn close(fd: c_int) {
        // SAFETY: the test made `fd` and closes it once.
        unsafe { libc::close(fd) };
    }

    fn is_open(fd: c_int) -> bool {
        // SAFETY: F_GETFD reads no memory; a closed number fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
    }

    /// The inode `fd` names, if it is open.
    fn inode(fd: c_int) -> Option<u64> {
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is writable; fstat on a closed number fails without writing.
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
    }

    #[test]
    fn a_failed_import_leaves_the_callers_fd_open() {
        let (r, w) = pipe();
        let e = consume_on_success(r, "fd", |_copy| -> CResult<()> { Err(CError::invalid("refused")) }).unwrap_err();
        assert_eq!(e.status, LavaFlowStatus::LAVA_FLOW_ERROR_INVALID_ARGUMENT);
        assert!(is_open(r), "the caller's fd was closed by a failed import");
        close(r);
        close(w);
    }

    #[test]
    fn a_successful_import_consumes_the_callers_fd_and_keeps_its_copy() {
        let (r, w) = pipe();
        let pipe_inode = inode(r);
        let copy = consume_on_success(r, "fd", Ok).unwrap();
        assert_eq!(inode(copy.as_raw_fd()), pipe_inode, "the import holds a copy of the caller's fd");
        // Closed; or, where another thread of the test process opened something since, that other thing.
        assert_ne!(inode(r), pipe_inode, "the caller's fd is still open after a successful import");
        close(w);
    }

    #[test]
    fn closed_and_negative_fds_are_refused() {
        for fd in [-1, -100] {
            let e = consume_on_success(fd, "fd", Ok).unwrap_err();
            assert_eq!(e.status, LavaFlowStatus::LAVA_FLOW_ERROR_INVALID_FD);
        }
        // A number far above any process's fd limit: never open (a closed pipe's number could be
        // reused by another test thread, and then closed by this one).
        let e = consume_on_success(0x7fff_0000, "fd", Ok).unwrap_err();
        assert_eq!(e.status, LavaFlowStatus::LAVA_FLOW_ERROR_INVALID_FD);
        assert!(e.message.contains("cannot be duplicated"), "{}", e.message);
    }
}
