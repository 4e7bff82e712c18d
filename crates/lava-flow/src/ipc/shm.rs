//! Host memory other processes can map: a sealed memfd and its shared mapping.
//!
//! The creator seals the size (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): a peer that could
//! shrink the file would make every access past the new end a `SIGBUS` in this process. Mapping a
//! received fd therefore requires the shrink seal and a size at least as large as asked for.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use raw_gpu_handle::{DeviceIdentity, ExportedMemory, Memory, MemoryDescription, MemoryHandleKind, MemoryProperties};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::{Error, Result};

/// A shared, read-write mapping of a sealed memfd.
#[derive(Debug)]
pub struct SharedMemfd {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; access to its bytes goes through
// raw-pointer copies and atomics whose synchronization is the users' protocol.
unsafe impl Send for SharedMemfd {}
// SAFETY: as above; `&self` methods only read through raw pointers or hand out atomics.
unsafe impl Sync for SharedMemfd {}

fn map_shared(fd: BorrowedFd<'_>, len: usize) -> Result<NonNull<u8>> {
    // SAFETY: a fresh mapping chosen by the kernel (null hint) does not alias any Rust object; the
    // fd is a memfd whose size is sealed at or above `len`, so every mapped byte is backed.
    let ptr = unsafe {
        rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, fd, 0)
    }
    .map_err(|e| Error::io(format!("mapping {len} bytes of shared host memory"), e.into()))?;
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::io("mapping shared host memory", std::io::Error::other("null")))
}

impl SharedMemfd {
    /// Creates `len` bytes of zeroed host memory (`memfd_create`, `ftruncate`), seals its size and
    /// maps it.
    pub fn create(name: &str, len: usize) -> Result<SharedMemfd> {
        if len == 0 {
            return Err(Error::invalid("shared host memory size", "is zero", "ask for at least one byte"));
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| Error::io("creating a memfd (memfd_create)", e.into()))?;
        rustix::fs::ftruncate(&fd, len as u64)
            .map_err(|e| Error::io(format!("sizing a memfd to {len} bytes"), e.into()))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| Error::io("sealing the memfd's size", e.into()))?;
        let ptr = map_shared(fd.as_fd(), len)?;
        Ok(SharedMemfd { fd, ptr, len })
    }

    /// Maps the first `len` bytes of a memfd received from another process. Refuses fds that are
    /// not sealed against shrinking or are smaller than `len`.
    pub fn map(fd: OwnedFd, len: usize) -> Result<SharedMemfd> {
        if len == 0 {
            return Err(Error::invalid("shared host memory size", "is zero", "map at least one byte"));
        }
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| Error::InvalidHandle {
            what: "shared host memory".into(),
            reason: format!("it has no seals to query ({e}): not a memfd"),
            advice: "share host memory as a memfd created with MFD_ALLOW_SEALING".into(),
        })?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Error::InvalidHandle {
                what: "shared host memory".into(),
                reason:
                    "the memfd is not sealed against shrinking (F_SEAL_SHRINK), so its owner could make this process \
                         fault with SIGBUS"
                        .into(),
                advice: "seal the memfd with F_SEAL_SHRINK before sharing it".into(),
            });
        }
        let size = rustix::fs::fstat(&fd).map_err(|e| Error::io("querying the memfd's size", e.into()))?.st_size;
        if (size as u64) < len as u64 {
            return Err(Error::InvalidHandle {
                what: "shared host memory".into(),
                reason: format!("the memfd holds {size} bytes, fewer than the {len} described"),
                advice: "share the memfd with its true size".into(),
            });
        }
        let ptr = map_shared(fd.as_fd(), len)?;
        Ok(SharedMemfd { fd, ptr, len })
    }

    /// Maps host memory described by an export (`MemoryHandleKind::HostMemfd`).
    pub fn from_exported(memory: ExportedMemory) -> Result<SharedMemfd> {
        if memory.description.handle_kind != MemoryHandleKind::HostMemfd {
            return Err(Error::invalid(
                "memory to map on the host",
                format!("its handle kind is {}, not host-memfd", memory.description.handle_kind),
                "import device memory through a GPU API instead",
            ));
        }
        let len = usize::try_from(memory.description.allocation_size)
            .map_err(|_| Error::invalid("shared host memory size", "does not fit this address space", "map less"))?;
        SharedMemfd::map(memory.handle, len)
    }

    /// A description of this memory for other processes, with a duplicate of the fd.
    pub fn export(&self) -> Result<ExportedMemory> {
        let handle = self.fd.try_clone().map_err(|e| Error::io("duplicating a memfd", e))?;
        Ok(Memory {
            handle,
            description: MemoryDescription {
                handle_kind: MemoryHandleKind::HostMemfd,
                allocation_size: self.len as u64,
                memory_type_index: 0,
                memory_properties: MemoryProperties::HOST_VISIBLE | MemoryProperties::HOST_COHERENT,
                dedicated: false,
                device: DeviceIdentity::default(),
                allocation_id: None,
            },
        })
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Mapped bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never: sizes are at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::invalid(
                "shared host memory range",
                format!("{len} bytes at offset {offset} exceed the {} mapped", self.len),
                "stay inside the mapping",
            )),
        }
    }

    /// Copies `data` into the mapping at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: the range is inside the mapping (checked); the source is a distinct Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len()) };
        Ok(())
    }

    /// Copies `out.len()` bytes at `offset` out of the mapping.
    pub fn read_into(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check(offset, out.len())?;
        // SAFETY: the range is inside the mapping (checked); the destination is a distinct Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// The mapping as a byte slice.
    ///
    /// # Safety
    /// No process may write the bytes while the slice lives (the caller's protocol, such as a ring
    /// slot owned by the reader, must guarantee it).
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes for as long as `self`; the caller rules out writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapping as a mutable byte slice.
    ///
    /// # Safety
    /// No other process or thread may read or write the bytes while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: the mapping is `len` writable bytes; the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// A 64-bit atomic at `offset` (8-byte aligned), shared with every process mapping the memfd.
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64> {
        self.check(offset, 8)?;
        if offset % 8 != 0 {
            return Err(Error::invalid("atomic offset", format!("{offset} is not 8-byte aligned"), "align it"));
        }
        // SAFETY: in bounds and aligned (the mapping is page aligned); shared memory is only ever
        // accessed atomically at this offset by the protocol that asks for it.
        Ok(unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() })
    }

    /// A 32-bit atomic at `offset` (4-byte aligned), usable as a futex word across processes.
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32> {
        self.check(offset, 4)?;
        if offset % 4 != 0 {
            return Err(Error::invalid("atomic offset", format!("{offset} is not 4-byte aligned"), "align it"));
        }
        // SAFETY: in bounds and aligned; accessed only atomically at this offset.
        Ok(unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() })
    }
}

impl Drop for SharedMemfd {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `map_shared`, unmapped only here; the
        // borrows handed out by `&self` methods cannot outlive `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
