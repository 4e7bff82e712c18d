//! Shareable host memory: a memfd that any process can `mmap`, and that Vulkan imports with
//! `VK_EXT_external_memory_host`. This is the practical form of the `VK_EXT_map_memory_fd` idea:
//! the allocating process and the mapping process need not be the same, and the GPU reads and
//! writes the very pages the other process sees.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::{Error, Result};

/// A shared mapping of a memfd (or any mmap-able fd). Unmapped on drop.
pub struct SharedHostMemory {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; access to its bytes is governed by the borrow rules
// of `as_slice`/`as_mut_slice` (within this process) and by the user's synchronization with other
// processes and the GPU, exactly as for any shared memory.
unsafe impl Send for SharedHostMemory {}
// SAFETY: see Send; `&self` only hands out shared slices.
unsafe impl Sync for SharedHostMemory {}

impl std::fmt::Debug for SharedHostMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedHostMemory").field("len", &self.len).finish()
    }
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

impl SharedHostMemory {
    /// Creates a zero-filled memfd of at least `size` bytes (rounded up to `alignment` and the
    /// page size) and maps it. Growing and shrinking are sealed off, so an importer can trust the
    /// size it sees. A size larger than the host memory this process can still get
    /// ([`crate::limits::host_memory_available`]) is refused with [`Error::OutOfMemory`] before
    /// the memfd is made.
    pub fn create(size: u64, alignment: u64) -> Result<SharedHostMemory> {
        if size == 0 {
            return Err(Error::invalid(
                "shared host memory of 0 bytes",
                "the size is zero",
                "ask for at least one byte",
            ));
        }
        let len = size.checked_next_multiple_of(alignment.max(page_size())).ok_or_else(|| {
            Error::invalid(format!("shared host memory of {size} bytes"), "the size overflows", "ask for less")
        })?;
        // The memfd's pages are charged to RAM (and the memory cgroup) as they are touched: a size
        // the machine cannot hold is refused here, not by the OOM killer later.
        crate::limits::check_host_memory(
            &format!("shared host memory of {size} bytes"),
            len,
            "ask for less, or free memory first",
        )?;
        let fd = rustix::fs::memfd_create("lava-flow-shared", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| Error::io("creating a memfd for shared host memory", e.into()))?;
        rustix::fs::ftruncate(&fd, len).map_err(|e| Error::io(format!("sizing a memfd to {len} bytes"), e.into()))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| Error::io("sealing the shared memfd's size", e.into()))?;
        Self::map(fd, len)
    }

    /// Maps shared host memory received from another process (for example an exported buffer's
    /// `HostMemfd` handle). `size` is the exporter's allocation size; the fd must hold at least
    /// that many bytes. The fd is consumed on success and closed on failure.
    pub fn from_fd(fd: OwnedFd, size: u64) -> Result<SharedHostMemory> {
        let fd = crate::fd::check_memory_fd(fd, "shared host memory", size, true)?;
        if size == 0 {
            return Err(Error::invalid(
                "shared host memory of 0 bytes",
                "the size is zero",
                "pass the exporter's size",
            ));
        }
        Self::map(fd, size)
    }

    fn map(fd: OwnedFd, len: u64) -> Result<SharedHostMemory> {
        let len_usize = usize::try_from(len).map_err(|_| {
            Error::invalid(format!("a mapping of {len} bytes"), "it exceeds the address space", "map less")
        })?;
        // SAFETY: a fresh shared mapping chosen by the kernel; nothing else lives at that address.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len_usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| Error::io(format!("mapping {len} bytes of shared host memory"), e.into()))?;
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::io("mmap", std::io::Error::other("null mapping")))?;
        Ok(SharedHostMemory { fd, ptr, len: len_usize })
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for a successfully created one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes. Other processes and the GPU may write them concurrently: synchronize (a
    /// semaphore, a fence wait, a shared counter) before trusting what you read.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is live for self's lifetime and len bytes long.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for as_slice; &mut self excludes other borrows in this process.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A duplicate of the memfd to hand to another process.
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.fd.try_clone().map_err(|e| Error::io("duplicating the shared memory fd", e))
    }
}

impl Drop for SharedHostMemory {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping made in `map`; nothing borrows it any more.
        // munmap of a valid mapping cannot fail in a way worth reporting.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
