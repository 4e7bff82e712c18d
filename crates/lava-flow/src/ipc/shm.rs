//! Host memory across processes: [`SharedHostMemory`] (a sealed memfd and its shared mapping) as
//! it travels over the socket, and the atomics a protocol such as the ring keeps in it.
//!
//! A memfd from another process is mapped only if it is sealed against shrinking
//! (`F_SEAL_SHRINK`): its owner could otherwise truncate it and turn every access past the new end
//! into a `SIGBUS` in this process. [`SharedHostMemory::create`] seals what it makes.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64};

use raw_gpu_handle::{DeviceIdentity, ExportedMemory, Memory, MemoryDescription, MemoryHandleKind, MemoryProperties};
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
    Ok(Memory {
        handle: memory.try_clone_fd()?,
        description: MemoryDescription {
            handle_kind: MemoryHandleKind::HostMemfd,
            allocation_size: memory.len() as u64,
            memory_type_index: 0,
            memory_properties: MemoryProperties::HOST_VISIBLE | MemoryProperties::HOST_COHERENT,
            dedicated: false,
            device: DeviceIdentity::default(),
            allocation_id: None,
        },
    })
}

fn check(memory: &SharedHostMemory, offset: usize, size: usize) -> Result<()> {
    if offset.checked_add(size).is_none_or(|end| end > memory.len()) || offset % size != 0 {
        return Err(Error::invalid(
            "atomic in shared memory",
            format!("{size} bytes at offset {offset} are outside the {} mapped or misaligned", memory.len()),
            "use an aligned offset inside the mapping",
        ));
    }
    Ok(())
}

/// The 64-bit atomic at `offset` (8-byte aligned), shared with every process mapping the memory.
pub fn atomic_u64(memory: &SharedHostMemory, offset: usize) -> Result<&AtomicU64> {
    check(memory, offset, 8)?;
    // SAFETY: in bounds and aligned (mappings are page aligned); the protocol that asks for this
    // offset only ever accesses it atomically; the borrow cannot outlive the mapping.
    Ok(unsafe { &*memory.as_ptr().add(offset).cast::<AtomicU64>() })
}

/// The 32-bit atomic at `offset` (4-byte aligned); usable as a futex word across processes.
pub fn atomic_u32(memory: &SharedHostMemory, offset: usize) -> Result<&AtomicU32> {
    check(memory, offset, 4)?;
    // SAFETY: as for `atomic_u64`.
    Ok(unsafe { &*memory.as_ptr().add(offset).cast::<AtomicU32>() })
}
