//! Host memory across processes: [`SharedHostMemory`] (a sealed memfd and its shared mapping) as
//! it travels over the socket, and the atomics a protocol such as the ring keeps in it.
//!
//! A memfd from another process is mapped only if it is sealed against shrinking
//! (`F_SEAL_SHRINK`): its owner could otherwise truncate it and turn every access past the new end
//! into a `SIGBUS` in this process. [`SharedHostMemory::create`] seals what it makes.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64};

use raw_gpu_handle::{
    DeviceIdentity, ExportedMemory, MemoryDescription, MemoryHandle, MemoryHandleKind, MemoryProperties,
};
use rustix::fs::SealFlags;

use crate::{Error, Result, SharedHostMemory};

/// Creates `len` bytes (rounded up to the page size) of zeroed, sealed, shareable host memory.
pub fn create(len: usize) -> Result<SharedHostMemory> {
    SharedHostMemory::create(len as u64, 1)
}

/// Maps the first `len` bytes of a memfd received from another process, refusing one that is not
/// sealed against shrinking or holds fewer bytes. The fd is consumed either way.
pub fn map_sealed(fd: OwnedFd, len: u64) -> Result<SharedHostMemory> {
    let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| Error::InvalidHandle {
        what: "shared host memory".into(),
        reason: format!("its seals cannot be queried ({e}): it is not a memfd"),
        advice: "share host memory as a memfd created with MFD_ALLOW_SEALING and sealed with F_SEAL_SHRINK".into(),
    })?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err(Error::InvalidHandle {
            what: "shared host memory".into(),
            reason: "the memfd is not sealed against shrinking (F_SEAL_SHRINK), so its owner could make this process \
                     fault with SIGBUS"
                .into(),
            advice: "seal the memfd with F_SEAL_SHRINK before sharing it".into(),
        });
    }
    SharedHostMemory::from_fd(fd, len)
}

/// Maps host memory described by an export (`MemoryHandleKind::HostMemfd`), whole.
pub fn map_exported(memory: ExportedMemory) -> Result<SharedHostMemory> {
    if memory.description.handle_kind != MemoryHandleKind::HostMemfd {
        return Err(Error::invalid(
            "memory to map on the host",
            format!("its handle kind is {}, not host-memfd", memory.description.handle_kind),
            "import device memory through a GPU API instead",
        ));
    }
    map_sealed(memory.handle, memory.description.allocation_size)
}

/// Describes host memory for other processes, with a duplicate of its fd. The description names
/// no device: any process may map it.
pub fn export(memory: &SharedHostMemory) -> Result<ExportedMemory> {
    Ok(MemoryHandle::new(
        memory.try_clone_fd()?,
        MemoryDescription {
            handle_kind: MemoryHandleKind::HostMemfd,
            allocation_size: memory.len() as u64,
            memory_type_index: 0,
            memory_properties: MemoryProperties::HOST_VISIBLE | MemoryProperties::HOST_COHERENT,
            dedicated: false,
            device: DeviceIdentity::default(),
            allocation_id: None,
        },
    ))
}

fn check(memory: &SharedHostMemory, offset: usize, size: usize, count: usize) -> Result<()> {
    let bytes = size.checked_mul(count);
    if bytes.and_then(|b| offset.checked_add(b)).is_none_or(|end| end > memory.len()) || offset % size != 0 {
        return Err(Error::invalid(
            "atomic in shared memory",
            format!("{count} x {size} bytes at offset {offset} are outside the {} mapped or misaligned", memory.len()),
            "use an aligned offset inside the mapping",
        ));
    }
    Ok(())
}

// Why handing out `&AtomicU64`/`&AtomicU32` over shared memory is sound:
// - alignment: the mapping starts on a page boundary (`mmap`), and `check` requires the offset to
//   be a multiple of the atomic's size, which on every target lava-flow builds for (64-bit Linux)
//   is also its alignment;
// - lifetime: the reference borrows `memory`, which keeps the pages mapped until it is dropped,
//   and the memfd is sealed against shrinking (`map_sealed`), so the pages cannot vanish under it;
// - concurrent access: an atomic may be modified by anyone at any time, which is exactly what
//   another process does to these bytes; this process never makes a `&[u8]` over them from safe
//   code (`SharedHostMemory` copies with volatile accesses), so no reference promises otherwise.
// Mixing plain copies and atomics on the same bytes at the same time, or atomics of two sizes on
// overlapping bytes, is a protocol error the borrow checker cannot see: across processes the copy
// may see a torn value; within one process it is a data race under Rust's memory model (volatile
// is not atomic, and mixed-size atomics may not race), which safe code can reach by calling these
// functions from two threads. Protocols (the ring) keep them apart.

/// The 64-bit atomic at `offset` (8-byte aligned), shared with every process mapping the memory.
pub fn atomic_u64(memory: &SharedHostMemory, offset: usize) -> Result<&AtomicU64> {
    check(memory, offset, 8, 1)?;
    // SAFETY: in bounds and 8-byte aligned (page-aligned mapping, offset checked); the borrow of
    // `memory` keeps the mapping alive; atomics tolerate concurrent writers (see above).
    Ok(unsafe { &*memory.as_ptr().add(offset).cast::<AtomicU64>() })
}

/// `count` consecutive 64-bit atomics from `offset` (8-byte aligned): data words shared with
/// another process, which each side reads and writes with atomic loads and stores.
pub fn atomic_u64_slice(memory: &SharedHostMemory, offset: usize, count: usize) -> Result<&[AtomicU64]> {
    check(memory, offset, 8, count)?;
    // SAFETY: `count` words in bounds and 8-byte aligned (checked); the borrow of `memory` keeps
    // the mapping alive; atomics tolerate concurrent writers (see above).
    Ok(unsafe { std::slice::from_raw_parts(memory.as_ptr().add(offset).cast::<AtomicU64>(), count) })
}

/// The 32-bit atomic at `offset` (4-byte aligned); usable as a futex word across processes.
pub fn atomic_u32(memory: &SharedHostMemory, offset: usize) -> Result<&AtomicU32> {
    check(memory, offset, 4, 1)?;
    // SAFETY: in bounds and 4-byte aligned (page-aligned mapping, offset checked); the borrow of
    // `memory` keeps the mapping alive; atomics tolerate concurrent writers (see above).
    Ok(unsafe { &*memory.as_ptr().add(offset).cast::<AtomicU32>() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn atomics_are_checked_for_bounds_and_alignment() {
        let memory = create(4096).unwrap();
        assert!(atomic_u64(&memory, 4088).is_ok());
        assert!(atomic_u64(&memory, 4092).is_err(), "misaligned");
        assert!(atomic_u64(&memory, 4096).is_err(), "past the end");
        assert!(atomic_u32(&memory, 4).is_ok());
        assert!(atomic_u32(&memory, 6).is_err(), "misaligned");
        assert!(atomic_u64_slice(&memory, 8, 511).is_ok());
        assert!(atomic_u64_slice(&memory, 8, 512).is_err(), "runs past the end");
        assert!(atomic_u64_slice(&memory, 8, usize::MAX).is_err(), "an overflowing count is refused");
        atomic_u64_slice(&memory, 16, 2).unwrap()[1].store(0x0102_0304_0506_0708, Ordering::Relaxed);
        assert_eq!(memory.read(24, 8).unwrap(), 0x0102_0304_0506_0708u64.to_ne_bytes());
    }
}
