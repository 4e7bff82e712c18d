//! What an fd handed to an import really is, checked before a driver sees it, and who owns it
//! afterwards.
//!
//! Drivers react badly to fds of the wrong kind (some crash, some map whatever file they are
//! given), so every importer first asks [`inspect`] and refuses closed fds, pipes, sockets,
//! directories and plain files where a GPU export is expected, with a typed error.
//!
//! Every import then runs through [`import_consuming`], which carries lava-flow's one ownership
//! rule: an import consumes the caller's fd whether it succeeds or fails (closed exactly once,
//! never handed to the driver), the driver gets a copy, and after a failure that copy's number is
//! closed only where lava-flow can prove it still names the copy ([`AfterFailure`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Whether the fd number is open, without taking ownership.
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

/// Whether the number `raw` is an open fd of this process. Asked of the number itself: no
/// `BorrowedFd` is made for a number that may not be open (or may belong to someone else).
fn number_is_open(raw: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the close-on-exec flag of the fd table entry `raw`; for a number
    // that is not open it fails with EBADF. No memory is passed, nothing is changed.
    unsafe { libc::fcntl(raw, libc::F_GETFD) != -1 }
}

/// `kcmp(pid, pid, KCMP_FILE, a, b)` for two numbers of this process: `Ok(true)` when both name
/// the same open file description, `Ok(false)` when both are open and name different ones,
/// `Err(EBADF)` when one of them is not open, `Err(EPERM | ENOSYS)` where a seccomp filter or a
/// kernel without `CONFIG_KCMP` refuses the call.
fn kcmp_file(a: RawFd, b: RawFd) -> std::io::Result<bool> {
    // include/uapi/linux/kcmp.h: enum kcmp_type { KCMP_FILE, ... }.
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(rustix::process::getpid().as_raw_nonzero().get());
    // SAFETY: kcmp(2) compares two entries of this process's fd table by the kernel objects they
    // point to. It takes integers only, dereferences no pointer of ours and changes no state, so
    // any argument values are sound (a number that is not open gives EBADF).
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a as libc::c_ulong, b as libc::c_ulong) };
    match r {
        0 => Ok(true),
        1..=3 => Ok(false),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Whether `a` and `b` name the same open file description (`kcmp(KCMP_FILE)`): true for an fd
/// and its `dup`s or `try_clone`s, false for two opens of one file, for instance two exports of
/// one NVIDIA allocation or a memfd and its reopening through `/proc/self/fd`. Errors where the
/// kernel or a seccomp filter refuses `kcmp` (`ENOSYS`, `EPERM`).
pub fn same_open_file_description(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> std::io::Result<bool> {
    kcmp_file(a.as_raw_fd(), b.as_raw_fd())
}

/// What lava-flow found, after a failed import, at the number of the copy it had handed the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// The number still named lava-flow's own open file description (a memory file reopened for
    /// this import, which nothing outside the import holds): lava-flow closed it.
    ClosedHere,
    /// The number was not open: the driver closed it (Mesa's Vulkan and GL drivers do on a failed
    /// import, NVIDIA's Vulkan driver on some). Nothing to close.
    ClosedByDriver,
    /// The number named another open file description: the driver closed the copy and the number
    /// went to another file, which is not lava-flow's. Left alone.
    NumberReused,
    /// The number named a description shared with the caller's other fds (a GPU driver's
    /// character device, a DMA-BUF, a sync_file), or `kcmp` was refused, so lava-flow could not
    /// prove the number was still its copy rather than a clone another thread made after the
    /// driver closed the copy. Left open: one fd leaked rather than another's closed.
    LeftOpen,
}

static CLOSED_HERE: AtomicU64 = AtomicU64::new(0);
static CLOSED_BY_DRIVER: AtomicU64 = AtomicU64::new(0);
static NUMBER_REUSED: AtomicU64 = AtomicU64::new(0);
static LEFT_OPEN: AtomicU64 = AtomicU64::new(0);

impl AfterFailure {
    fn record(self) {
        let counter = match self {
            AfterFailure::ClosedHere => &CLOSED_HERE,
            AfterFailure::ClosedByDriver => &CLOSED_BY_DRIVER,
            AfterFailure::NumberReused => &NUMBER_REUSED,
            AfterFailure::LeftOpen => &LEFT_OPEN,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many failed imports of this process ended each way ([`AfterFailure`]), since it started.
/// `left_open` is the number of fds lava-flow leaked rather than risk closing one it could not
/// prove its own (docs/OWNERSHIP.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailedImportFds {
    /// [`AfterFailure::ClosedHere`].
    pub closed_here: u64,
    /// [`AfterFailure::ClosedByDriver`].
    pub closed_by_driver: u64,
    /// [`AfterFailure::NumberReused`].
    pub number_reused: u64,
    /// [`AfterFailure::LeftOpen`]: fds leaked.
    pub left_open: u64,
}

impl FailedImportFds {
    /// Failed imports that reached a driver, all outcomes together.
    pub fn total(&self) -> u64 {
        self.closed_here + self.closed_by_driver + self.number_reused + self.left_open
    }

    /// The counts since `earlier`.
    pub fn since(&self, earlier: &FailedImportFds) -> FailedImportFds {
        FailedImportFds {
            closed_here: self.closed_here - earlier.closed_here,
            closed_by_driver: self.closed_by_driver - earlier.closed_by_driver,
            number_reused: self.number_reused - earlier.number_reused,
            left_open: self.left_open - earlier.left_open,
        }
    }
}

/// The process-wide counts of [`FailedImportFds`].
pub fn failed_import_fds() -> FailedImportFds {
    FailedImportFds {
        closed_here: CLOSED_HERE.load(Ordering::Relaxed),
        closed_by_driver: CLOSED_BY_DRIVER.load(Ordering::Relaxed),
        number_reused: NUMBER_REUSED.load(Ordering::Relaxed),
        left_open: LEFT_OPEN.load(Ordering::Relaxed),
    }
}

/// Runs an import that takes ownership of an fd on success (Vulkan memory, semaphores and fences,
/// CUDA, OpenCL and GL imports all go through here), so that every import follows one rule
/// (docs/OWNERSHIP.md):
///
/// - The caller's fd is consumed whatever happens, and closed exactly once by lava-flow: the
///   driver never sees it. A number that is not open (`EBADF`: an `OwnedFd` around a closed
///   number) is forgotten, not closed, and refused.
/// - The driver gets a copy: a new open file description of the same file for a memory file
///   (memfd, reopened through `/proc/self/fd`; it also gets its own file offset, which Mesa's
///   import reads from), else a duplicate. On success the driver owns the copy.
/// - After a failure the copy's number is closed only when lava-flow can prove it still names the
///   copy. Drivers differ (Mesa's Vulkan and GL drivers close the fd on a failed import, NVIDIA's
///   Vulkan driver does on some, the specifications only say that a successful import takes it),
///   and once a driver closed it the number may already be another thread's. lava-flow keeps a
///   second fd of the copy's description (the witness) and asks `kcmp(KCMP_FILE)` whether the
///   number still names it: see [`AfterFailure`] for each answer. Only a reopened memory file is
///   a proof, because only lava-flow holds that description; a duplicate shares its description
///   with the caller's clones, so a match may be a clone another thread made at that number, and
///   the number is left open ([`AfterFailure::LeftOpen`], counted in [`failed_import_fds`]).
pub fn import_consuming<T>(fd: OwnedFd, import: impl FnOnce(RawFd) -> Result<T>) -> Result<T> {
    import_traced(fd, import).0
}

/// [`import_consuming`], also saying what it found after a failure that reached `import`.
pub(crate) fn import_traced<T>(
    fd: OwnedFd,
    import: impl FnOnce(RawFd) -> Result<T>,
) -> (Result<T>, Option<AfterFailure>) {
    if !is_open(&fd) {
        // Not an open fd: closing the number could close a file opened since by someone else.
        std::mem::forget(fd);
        let err = Error::InvalidHandle {
            what: "an fd given to an import".into(),
            reason: "it is not an open fd (EBADF)".into(),
            advice: "pass the fd exactly as exported, and do not close it before importing".into(),
        };
        return (Err(err), None);
    }
    // Only memory files reach an import as regular files (the importers' checks refuse the
    // others), so the file type alone says whether to reopen: one fstat, no readlink.
    let regular = rustix::fs::fstat(&fd).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
    let copies = match if regular { reopen(&fd) } else { None } {
        Some(private) => rustix::io::fcntl_dupfd_cloexec(&private, 0).map(|witness| (private, Some(witness))),
        None => rustix::io::fcntl_dupfd_cloexec(&fd, 0).map(|copy| (copy, None)),
    };
    let (copy, private_witness) = match copies {
        Ok(c) => c,
        Err(e) => return (Err(Error::io("duplicating an fd for an import", e.into())), None),
    };
    // From here the copy may belong to the driver: only its number is kept.
    let raw = copy.into_raw_fd();
    let result = import(raw);
    let after = result.is_err().then(|| {
        let after = match &private_witness {
            Some(witness) => after_failure(raw, witness.as_fd(), true),
            // A duplicate shares the caller's description: the caller's fd is the witness.
            None => after_failure(raw, fd.as_fd(), false),
        };
        after.record();
        after
    });
    drop(private_witness);
    drop(fd); // the caller's fd: closed exactly once, in every case
    (result, after)
}

/// Decides, after a failed import, what to do with the number `raw` of the copy handed to the
/// driver. `witness` is another fd of the copy's open file description; `private` says that no
/// code outside this import holds that description.
fn after_failure(raw: RawFd, witness: BorrowedFd<'_>, private: bool) -> AfterFailure {
    match kcmp_file(raw, witness.as_raw_fd()) {
        // The witness is open (we hold it), so EBADF is about `raw`: the driver closed it.
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => AfterFailure::ClosedByDriver,
        Ok(false) => AfterFailure::NumberReused,
        Ok(true) if private => {
            // SAFETY: `raw` names the open file description this import created by reopening the
            // memory file; only the copy handed to the driver and the witness were fds of it, and
            // both were made here, so `raw` is that copy. The import failed, so the driver did not
            // take it (had it closed it, no other fd of this description could have been made
            // at that number), and we own it: closed once, here.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
            AfterFailure::ClosedHere
        }
        Ok(true) => AfterFailure::LeftOpen,
        // kcmp refused (seccomp, CONFIG_KCMP off): a closed number is still known to be closed;
        // an open one cannot be proved ours.
        Err(_) if !number_is_open(raw) => AfterFailure::ClosedByDriver,
        Err(_) => AfterFailure::LeftOpen,
    }
}

/// A new open file description of the file behind `fd` (its own file offset), with the same
/// access mode; None where `/proc` cannot give one.
fn reopen(fd: &OwnedFd) -> Option<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let access = rustix::fs::fcntl_getfl(fd).ok()? & OFlags::RWMODE;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::open(path.as_str(), access | OFlags::CLOEXEC, Mode::empty()).ok()
}

/// Checks that `fd` can be a driver's opaque-fd export of a semaphore or fence, before a driver
/// sees it: refuses closed fds, pipes, sockets, directories, plain files and memfds, which no GPU
/// driver exports as one (NVIDIA's are a character device, Mesa's DRM sync objects anonymous
/// inodes). On error the fd is consumed: closed once if it was open, forgotten if it was not.
pub(crate) fn check_sync_object_fd(fd: OwnedFd, what: &str) -> Result<OwnedFd> {
    let kind = inspect(fd.as_fd());
    let reason = match kind {
        FdKind::CharDevice | FdKind::Other { .. } => return Ok(fd),
        FdKind::Closed => {
            // Not an open fd: closing the number could close a file opened since by someone else.
            std::mem::forget(fd);
            "it is not an open fd (EBADF)".to_string()
        }
        other => format!("it is {}, which no GPU driver exports as a semaphore or fence", other.describe()),
    };
    Err(Error::InvalidHandle {
        what: what.into(),
        reason,
        advice: "pass the fd a semaphore or fence export returned, exactly once".into(),
    })
}

/// [`check_memory_fd`] for an exported allocation, plus a check of its size against the exporter
/// when the allocation was made in this process. Consumes the fd on error.
pub(crate) fn check_exported_memory(
    fd: OwnedFd,
    description: &raw_gpu_handle::MemoryDescription,
    what: &str,
) -> Result<OwnedFd> {
    let fd = check_memory_fd(fd, what, description.allocation_size, false)?;
    check_against_exporter(description)?;
    Ok(fd)
}

/// What this process knows of an allocation it made: its true size and memory type.
#[derive(Clone, Copy)]
struct Exported {
    size: u64,
    memory_type_index: u32,
}

/// Allocations exported from this process, by id, with their true sizes and memory types.
/// Importers in the same process check descriptions against it: NVIDIA's CUDA driver accepts an
/// opaque fd with a larger size than the allocation, which would map memory that is not there,
/// and a Vulkan import of an opaque fd must name the exporter's memory type
/// (`VUID-VkMemoryAllocateInfo-allocationSize-01742`).
fn exporters() -> std::sync::MutexGuard<'static, std::collections::HashMap<raw_gpu_handle::AllocationId, Exported>> {
    static EXPORTERS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<raw_gpu_handle::AllocationId, Exported>>,
    > = std::sync::OnceLock::new();
    EXPORTERS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Records an allocation this process made (and may export), with its true size and the memory
/// type its descriptions name, for [`check_exported_memory`]. The allocating layer calls it when
/// it creates the memory.
pub(crate) fn record_export(id: raw_gpu_handle::AllocationId, size: u64, memory_type_index: u32) {
    exporters().insert(id, Exported { size, memory_type_index });
}

/// Forgets an allocation recorded by [`record_export`] once its memory is freed.
pub(crate) fn forget_export(id: raw_gpu_handle::AllocationId) {
    exporters().remove(&id);
}

/// Refuses a description whose allocation was made in this process with another size or memory
/// type.
pub(crate) fn check_against_exporter(d: &raw_gpu_handle::MemoryDescription) -> Result<()> {
    let Some(id) = d.allocation_id else { return Ok(()) };
    let Some(exported) = exporters().get(&id).copied() else { return Ok(()) };
    if exported.size != d.allocation_size {
        return Err(Error::invalid(
            format!("an import of {} bytes of allocation {id}", d.allocation_size),
            format!("that allocation was made in this process with {} bytes", exported.size),
            "pass the description exactly as exported (importers must be given the whole allocation's size)",
        ));
    }
    if exported.memory_type_index != d.memory_type_index {
        return Err(Error::invalid(
            format!("an import of allocation {id} as memory type {}", d.memory_type_index),
            format!(
                "that allocation was made in this process with memory type {} \
                 (VUID-VkMemoryAllocateInfo-allocationSize-01742: an opaque-fd import names the exporter's type)",
                exported.memory_type_index
            ),
            "pass the description exactly as exported",
        ));
    }
    Ok(())
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
            // SAFETY: `raw` is the copy import_consuming hands the import; it stays open for the whole
            // closure call, and the borrow does not leave the closure.
            let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
            let offset = rustix::fs::seek(borrowed, rustix::fs::SeekFrom::Current(0)).unwrap();
            rustix::fs::seek(borrowed, rustix::fs::SeekFrom::Start(7)).unwrap();
            Err::<u64, _>(Error::invalid("test", format!("offset {offset}"), "-"))
        });
        // A plain duplicate would have shown the twin's offset, and moved it.
        assert!(seen.unwrap_err().to_string().contains("offset 0"));
        assert_eq!(rustix::fs::seek(&twin, rustix::fs::SeekFrom::Current(0)).unwrap(), 100);
    }

    fn memfd(size: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("fd-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        fd
    }

    fn refused<T>(what: &str) -> Result<T> {
        Err(Error::invalid(what, "the test's stand-in for a driver refused it", "-"))
    }

    /// What a driver that closes the fd on failure does, and what another thread may do in the
    /// same instant: the number `raw` is closed, then `other` is installed at that number.
    /// Returns the new fd at `raw`, which belongs to that other thread.
    fn close_then_reuse(raw: RawFd, other: BorrowedFd<'_>) -> OwnedFd {
        // SAFETY: `raw` is the copy the import handed this stand-in driver, which owns it for the
        // call. dup3 closes it and installs a copy of `other` at that number in one step, so no
        // other test thread's open can take the number in between and be closed here. It takes
        // integers only and reads no memory of ours.
        let n = unsafe { libc::dup3(other.as_raw_fd(), raw, libc::O_CLOEXEC) };
        assert_eq!(n, raw, "dup3: {}", std::io::Error::last_os_error());
        // SAFETY: dup3 just created the fd `n` and nothing else holds it: the scenario's other
        // thread (the caller of this helper) becomes its one owner.
        unsafe { OwnedFd::from_raw_fd(n) }
    }

    #[test]
    fn a_number_reused_by_another_open_of_the_same_memfd_is_not_closed() {
        // The fstat (device, inode) comparison this replaces took such an fd for the copy and
        // closed it: every open of one memfd (or of NVIDIA's device) has the same inode.
        let fd = memfd(4096);
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let theirs = rustix::fs::open(path.as_str(), rustix::fs::OFlags::RDWR, rustix::fs::Mode::empty()).unwrap();
        let mut reused = None;
        let (result, after) = import_traced(fd, |raw| {
            reused = Some(close_then_reuse(raw, theirs.as_fd()));
            refused::<()>("a memfd")
        });
        assert!(result.is_err());
        assert_eq!(after, Some(AfterFailure::NumberReused));
        let reused = reused.unwrap();
        assert!(same_open_file_description(reused.as_fd(), theirs.as_fd()).unwrap(), "the other thread's fd is intact");
    }

    #[test]
    fn a_number_reused_by_a_clone_of_the_callers_fd_is_left_open() {
        // A duplicate shares the caller's description, so a clone made at that number is
        // indistinguishable from the copy: left open (counted), never closed.
        let (reader, _writer) = rustix::pipe::pipe().unwrap();
        let clone = reader.try_clone().unwrap();
        let mut reused = None;
        let (result, after) = import_traced(reader, |raw| {
            reused = Some(close_then_reuse(raw, clone.as_fd()));
            refused::<()>("a pipe")
        });
        assert!(result.is_err());
        assert_eq!(after, Some(AfterFailure::LeftOpen));
        let reused = reused.unwrap();
        assert!(same_open_file_description(reused.as_fd(), clone.as_fd()).unwrap(), "the clone is intact");
    }

    #[test]
    fn a_copy_the_driver_left_is_closed_when_it_is_a_private_reopening() {
        let fd = memfd(4096);
        let (result, after) = import_traced(fd, |_| refused::<()>("a memfd"));
        assert!(result.is_err());
        assert_eq!(after, Some(AfterFailure::ClosedHere));
    }

    #[test]
    fn a_copy_the_driver_left_is_left_open_when_it_shares_the_callers_description() {
        let (reader, _writer) = rustix::pipe::pipe().unwrap();
        let witness = reader.try_clone().unwrap();
        let mut copy = -1;
        let (result, after) = import_traced(reader, |raw| {
            copy = raw;
            refused::<()>("a pipe")
        });
        assert!(result.is_err());
        assert_eq!(after, Some(AfterFailure::LeftOpen));
        // SAFETY: lava-flow left the copy open and forgot it; this test made the pipe, so the
        // copy is this test's to close (after checking that the number is still that copy).
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        assert!(same_open_file_description(copy.as_fd(), witness.as_fd()).unwrap());
    }

    #[test]
    fn a_copy_the_driver_closed_is_not_closed_again() {
        let fd = memfd(4096);
        let (result, after) = import_traced(fd, |raw| {
            // SAFETY: `raw` is the copy handed to this stand-in driver, which owns it for the call;
            // it closes it once, as Mesa's drivers do on a failed import.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
            refused::<()>("a memfd")
        });
        assert!(result.is_err());
        assert!(matches!(after, Some(AfterFailure::ClosedByDriver | AfterFailure::NumberReused)), "{after:?}");
    }

    #[test]
    fn a_successful_import_keeps_its_copy_and_closes_the_callers_fd() {
        let fd = memfd(4096);
        let caller = fd.as_raw_fd();
        let (result, after) = import_traced(fd, |raw| {
            // SAFETY: `raw` is the copy handed to the import, and a successful import owns it: this
            // is its one owner from here.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        });
        let copy = result.unwrap();
        assert_eq!(after, None);
        assert_ne!(copy.as_raw_fd(), caller);
        assert!(rustix::fs::fstat(&copy).is_ok());
    }

    #[test]
    fn a_closed_number_is_refused_and_not_closed() {
        // A number no fd can have (the kernel caps fd numbers below `fs.nr_open`, at most
        // 2^31 - 64), so that no other test thread's file can be at it: an fd closed by its
        // caller and reopened by another thread is what this check cannot catch.
        let number: RawFd = libc::c_int::MAX - 1;
        // SAFETY: breaks OwnedFd's invariant on purpose: `number` is not open, as in a buggy
        // caller's OwnedFd. import_traced checks it with F_GETFD and forgets it without closing
        // it (what this test checks); had it closed it, the close would fail with EBADF and
        // touch no one's fd, since no fd can be open at that number.
        let stale = unsafe { OwnedFd::from_raw_fd(number) };
        let mut called = false;
        let (result, after) = import_traced(stale, |_| {
            called = true;
            Ok(())
        });
        assert!(result.unwrap_err().to_string().contains("EBADF"));
        assert!(!called && after.is_none());
    }

    #[test]
    fn kcmp_tells_descriptions_apart() {
        let fd = memfd(1);
        let dup = fd.try_clone().unwrap();
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let reopened = rustix::fs::open(path.as_str(), rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()).unwrap();
        assert!(same_open_file_description(fd.as_fd(), dup.as_fd()).unwrap());
        assert!(!same_open_file_description(fd.as_fd(), reopened.as_fd()).unwrap());
    }
}
