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
///
/// A memfd (any regular file) is handed over as a new open file description of the same file
/// (reopened through `/proc/self/fd`) rather than a plain duplicate: Mesa's software drivers check an imported memfd
/// with `lseek(fd, 0)` then `read(header)`, and duplicates share one file offset, so two imports
/// at once of exports of one allocation (all duplicates of one fd) could read each other's offset
/// and be refused.
pub fn import_consuming<T>(fd: OwnedFd, import: impl FnOnce(std::os::fd::RawFd) -> Result<T>) -> Result<T> {
    // Only memory files reach an import as regular files (check_memory_fd refuses the others), so
    // the file type alone says whether to reopen: one fstat, no readlink.
    let regular = rustix::fs::fstat(&fd).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
    let dup = if regular { reopen(&fd) } else { None };
    let dup = match dup {
        Some(d) => d,
        None => {
            rustix::io::fcntl_dupfd_cloexec(&fd, 0).map_err(|e| Error::io("duplicating an fd for import", e.into()))?
        }
    };
    let identity = |f: BorrowedFd<'_>| rustix::fs::fstat(f).ok().map(|s| (s.st_dev, s.st_ino));
    let before = identity(std::os::fd::AsFd::as_fd(&dup));
    let raw = dup.as_raw_fd();
    // From here the duplicate may be owned by the driver; we only track its number.
    let raw_dup = std::os::fd::IntoRawFd::into_raw_fd(dup);
    let result = import(raw);
    drop(fd); // the caller's fd: consumed in every case
    if result.is_err() {
        // SAFETY: bends BorrowedFd's contract: the number may have been closed by the driver, or closed
        // and reused by another thread; the borrow lasts one fcntl/fstat call, which reads no memory and
        // closes nothing.
        let still_ours = rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(raw_dup) }).is_ok()
            // SAFETY: as above.
            && identity(unsafe { BorrowedFd::borrow_raw(raw_dup) }) == before;
        if still_ours {
            // SAFETY: NOT proven sound: an open number with the duplicate's (st_dev, st_ino) is taken as proof
            // that we still own it, but every NVIDIA export has the same pair (docs/OWNERSHIP.md), so a
            // number the driver closed and another thread's export reused passes, and this closes that
            // thread's fd. A known gap, to be replaced by a rule that never guesses.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw_dup) });
        }
    }
    result
}

/// A new open file description of the file behind `fd` (its own file offset), with the same
/// access mode; None where `/proc` cannot give one.
fn reopen(fd: &OwnedFd) -> Option<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let access = rustix::fs::fcntl_getfl(fd).ok()? & OFlags::RWMODE;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::open(path.as_str(), access | OFlags::CLOEXEC, Mode::empty()).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memfd_reaches_the_importer_with_a_file_offset_of_its_own() {
        let fd = rustix::fs::memfd_create("offset", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        let twin = rustix::io::dup(&fd).unwrap();
        rustix::fs::seek(&twin, rustix::fs::SeekFrom::Start(100)).unwrap();
        let seen = import_consuming(fd, |raw| {
            // SAFETY: `raw` is the duplicate import_consuming owns and keeps open for the closure's call.
            let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
            let offset = rustix::fs::seek(borrowed, rustix::fs::SeekFrom::Current(0)).unwrap();
            rustix::fs::seek(borrowed, rustix::fs::SeekFrom::Start(7)).unwrap();
            Err::<u64, _>(Error::invalid("test", format!("offset {offset}"), "-"))
        });
        // A plain duplicate would have shown the twin's offset, and moved it.
        assert!(seen.unwrap_err().to_string().contains("offset 0"));
        assert_eq!(rustix::fs::seek(&twin, rustix::fs::SeekFrom::Current(0)).unwrap(), 100);
    }
}
