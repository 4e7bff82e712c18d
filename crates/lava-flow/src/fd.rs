//! What an fd handed to an import really is, checked before a driver sees it.
//!
//! Drivers react badly to fds of the wrong kind (some crash, some map whatever file they are
//! given), so every importer first asks [`inspect`] and refuses closed fds, pipes, sockets,
//! directories and plain files where a GPU export is expected, with a typed error.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::FileType;

use crate::{Error, Result};

/// The kind of object behind an fd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// Not an open fd (`EBADF`).
    Closed,
    /// A pipe or FIFO.
    Pipe,
    /// A socket.
    Socket,
    /// A directory.
    Directory,
    /// An anonymous memory file (`memfd_create`), with its size.
    Memfd {
        /// Size in bytes (`st_size`).
        size: u64,
    },
    /// A regular file on a file system, with its size.
    RegularFile {
        /// Size in bytes.
        size: u64,
    },
    /// A character device (GPU drivers' own fds are often these).
    CharDevice,
    /// Anything else: anonymous inodes (DMA-BUF, sync_file, eventfd), block devices.
    Other {
        /// What `/proc/self/fd` says it points to.
        target: String,
    },
}

impl FdKind {
    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            FdKind::Closed => "a closed fd (EBADF)".into(),
            FdKind::Pipe => "a pipe".into(),
            FdKind::Socket => "a socket".into(),
            FdKind::Directory => "a directory".into(),
            FdKind::Memfd { size } => format!("a memfd of {size} bytes"),
            FdKind::RegularFile { size } => format!("a regular file of {size} bytes"),
            FdKind::CharDevice => "a character device".into(),
            FdKind::Other { target } => target.clone(),
        }
    }
}

fn link_target(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Finds out what `fd` is.
pub fn inspect(fd: BorrowedFd<'_>) -> FdKind {
    let stat = match rustix::fs::fstat(fd) {
        Ok(s) => s,
        Err(_) => return FdKind::Closed,
    };
    let size = stat.st_size.max(0) as u64;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Fifo => FdKind::Pipe,
        FileType::Socket => FdKind::Socket,
        FileType::Directory => FdKind::Directory,
        FileType::CharacterDevice => FdKind::CharDevice,
        FileType::RegularFile => {
            let target = link_target(fd.as_raw_fd());
            if target.starts_with("/memfd:") {
                FdKind::Memfd { size }
            } else {
                FdKind::RegularFile { size }
            }
        }
        _ => FdKind::Other { target: link_target(fd.as_raw_fd()) },
    }
}

/// Whether the raw fd number is open, without taking ownership.
fn is_open(fd: &OwnedFd) -> bool {
    rustix::io::fcntl_getfd(fd).is_ok()
}

/// Checks that `fd` can be a driver's memory export of at least `min_size` bytes. Refuses closed
/// fds, pipes, sockets, directories and regular files (which no GPU driver exports). A memfd is
/// accepted (software drivers export memfds) when it is large enough.
///
/// On error the fd is consumed: closed once if it was open, forgotten if it was not (closing a
/// number that is not open would be a double close).
pub(crate) fn check_memory_fd(fd: OwnedFd, what: &str, min_size: u64, host_memory: bool) -> Result<OwnedFd> {
    if !is_open(&fd) {
        // The number is not an open fd, so there is nothing to close; dropping the OwnedFd would
        // close a number some other part of the process may reuse at any time.
        std::mem::forget(fd);
        return Err(Error::InvalidHandle {
            what: what.into(),
            reason: "it is not an open fd (EBADF)".into(),
            advice: "pass the fd exactly as exported, and do not close it before importing".into(),
        });
    }
    let kind = inspect(std::os::fd::AsFd::as_fd(&fd));
    let refuse = |reason: String| Error::InvalidHandle {
        what: what.into(),
        reason,
        advice: "pass the fd an export returned (e.g. `export_fd()`), not another file".into(),
    };
    match kind {
        FdKind::Memfd { size } | FdKind::RegularFile { size }
            if host_memory || matches!(kind, FdKind::Memfd { .. }) =>
        {
            if size < min_size {
                return Err(Error::invalid(
                    format!("{what} of {min_size} bytes"),
                    format!("the fd holds only {size} bytes, so the description's size is larger than the allocation"),
                    "use the allocation size the exporter reported",
                ));
            }
            Ok(fd)
        }
        FdKind::CharDevice | FdKind::Other { .. } if !host_memory => Ok(fd),
        other => Err(refuse(format!("it is {}, which no GPU driver exports as memory", other.describe()))),
    }
}

/// Runs an import that takes ownership of an fd on success (Vulkan, CUDA, GL and OpenCL imports
/// all do), handing it a duplicate so the caller's fd is consumed exactly once whatever the driver
/// does on failure. Some drivers close the fd even when the import fails (NVIDIA's Vulkan driver
/// does for a wrong allocation size), which would make a plain "close it on failure" rule close it
/// twice. After a failure the duplicate is closed only if its number still names the same file.
pub fn import_consuming<T>(fd: OwnedFd, import: impl FnOnce(std::os::fd::RawFd) -> Result<T>) -> Result<T> {
    let dup =
        rustix::io::fcntl_dupfd_cloexec(&fd, 0).map_err(|e| Error::io("duplicating an fd for import", e.into()))?;
    let identity = |f: BorrowedFd<'_>| rustix::fs::fstat(f).ok().map(|s| (s.st_dev, s.st_ino));
    let before = identity(std::os::fd::AsFd::as_fd(&dup));
    let raw = dup.as_raw_fd();
    // From here the duplicate may be owned by the driver; we only track its number.
    let raw_dup = std::os::fd::IntoRawFd::into_raw_fd(dup);
    let result = import(raw);
    drop(fd); // the caller's fd: consumed in every case
    if result.is_err() {
        // SAFETY: we only borrow the number to compare identities; it is not closed here.
        let still_ours = rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(raw_dup) }).is_ok()
            // SAFETY: as above.
            && identity(unsafe { BorrowedFd::borrow_raw(raw_dup) }) == before;
        if still_ours {
            // SAFETY: the driver did not take or close the duplicate, so we still own it.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw_dup) });
        }
    }
    result
}

/// [`check_memory_fd`] for an exported allocation, plus a check of its size against the exporter
/// when the allocation was made in this process. Consumes the fd on error.
pub(crate) fn check_exported_memory(
    fd: OwnedFd,
    description: &raw_gpu_handle::MemoryDescription,
    what: &str,
) -> Result<OwnedFd> {
    let fd = check_memory_fd(fd, what, description.allocation_size, false)?;
    crate::vulkan::check_against_exporter(description)?;
    Ok(fd)
}
