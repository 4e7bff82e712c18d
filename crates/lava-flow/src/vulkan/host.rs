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
///
/// # Host access to memory others may write
///
/// Every byte of a shared mapping may be written at any moment by another process, or by a GPU
/// that imported it. Rust's rules for references (`&[u8]` promises that nothing changes the bytes
/// while it lives, `&mut [u8]` that nothing else even reads them) cannot hold there, so lava-flow
/// never hands out such a reference from safe code. It offers instead:
///
/// - copies in and out ([`SharedHostMemory::read`], [`read_into`](SharedHostMemory::read_into),
///   [`write`](SharedHostMemory::write)), made with volatile accesses: each byte is read or
///   written exactly once, where the code says, and no Rust reference to the shared bytes ever
///   exists. A copy that races with another writer may see a mix of old and new bytes (make the
///   other side wait, with a semaphore, a fence or a counter, to get a consistent copy); it is
///   never undefined behaviour. `write` takes `&mut self`, so within this process one writer at
///   a time goes through one mapping;
/// - atomics at aligned offsets (`lava_flow::ipc::shm::atomic_u64`, `atomic_u32`,
///   `atomic_u64_slice`) for protocols that share counters and data words with other processes;
/// - [`as_ptr`](SharedHostMemory::as_ptr), and `unsafe` slice views
///   ([`as_slice`](SharedHostMemory::as_slice), [`as_mut_slice`](SharedHostMemory::as_mut_slice))
///   whose `# Safety` contract is exactly the promise a reference makes, for code that can keep it
///   (a protocol that gives this process the bytes exclusively for a while).
///
/// A reference from safe code does not compile:
///
/// ```compile_fail,E0133
/// fn first_byte(memory: &lava_flow::SharedHostMemory) -> u8 {
///     memory.as_slice()[0] // unsafe: another process may write these bytes
/// }
/// ```
///
/// Neither does writing through a shared borrow (two threads could write the same bytes at once):
///
/// ```compile_fail,E0596
/// fn stamp(memory: &lava_flow::SharedHostMemory) -> lava_flow::Result<()> {
///     memory.write(0, b"lava")
/// }
/// ```
pub struct SharedHostMemory {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the struct owns its fd and its mapping; neither is tied to a thread. Its bytes are only
// reached through raw pointers (volatile copies, atomics) or through `unsafe` views whose callers
// promise exclusivity, so moving the owner to another thread cannot create a reference race.
unsafe impl Send for SharedHostMemory {}
// SAFETY: what `&self` offers is sound from several threads at once: `read`/`read_into` make
// volatile copies (bytes may be torn by a writer in another process or device, see the module
// docs), `as_ptr` hands out a raw pointer, and the atomics of `ipc::shm` are atomics. Writing takes
// `&mut self`, and the only `&[u8]` is `unsafe`, under a contract the caller keeps. A copy that
// overlaps in time with `ipc::shm` atomics on the same bytes in this process would be a data race
// under Rust's memory model (volatile is not atomic): protocols keep the two apart (ipc/shm.rs).
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
        // SAFETY: a null hint lets the kernel pick an unused range, so the new mapping replaces no memory
        // Rust knows about; `fd` is an open fd we own and len_usize > 0 (callers refuse size 0).
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

    /// Start of the mapping (page aligned). Another process or a device may write the bytes
    /// behind it at any time: read and write them with volatile or atomic accesses, or keep the
    /// contract of [`as_slice`](Self::as_slice) before making references.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check_range(&self, offset: usize, len: usize, what: &str) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::invalid(
                format!("{what} {len} bytes at offset {offset} of shared host memory"),
                format!("the mapping holds {} bytes", self.len),
                "stay inside the mapping",
            ));
        }
        Ok(())
    }

    /// Copies `out.len()` bytes from `offset` into `out`. Bytes another process or a device
    /// writes during the copy may come out torn (old and new mixed): order the copy after their
    /// writes (a semaphore, a fence wait, a shared counter) to read a consistent state.
    pub fn read_into(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check_range(offset, out.len(), "reading")?;
        // SAFETY: the range lies inside the live mapping (checked above, and `self` keeps it
        // mapped for the call); the copy only uses raw pointers into it, so concurrent writers
        // elsewhere can tear bytes but not break any reference's promise.
        unsafe { copy_from_shared(self.ptr.as_ptr().add(offset), out) };
        Ok(())
    }

    /// Copies `len` bytes from `offset` out (see [`read_into`](Self::read_into)).
    pub fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        self.check_range(offset, len, "reading")?;
        let mut out = vec![0u8; len];
        self.read_into(offset, &mut out)?;
        Ok(out)
    }

    /// Copies `data` in at `offset`. `&mut self` keeps other threads of this process from
    /// writing through this mapping at the same time; another process or a device may still
    /// access the bytes, so tell it when they are ready (a semaphore, a counter).
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len(), "writing")?;
        // SAFETY: the range lies inside the live mapping (checked above); the copy only uses raw
        // pointers into it (no reference to the shared bytes exists).
        unsafe { copy_to_shared(data, self.ptr.as_ptr().add(offset)) };
        Ok(())
    }

    /// The bytes, as a slice.
    ///
    /// # Safety
    /// While the slice lives, nothing may write these bytes: no other process that maps the
    /// memfd, no device that imported it (GPU work through Vulkan, CUDA, OpenCL, GL), and no
    /// other mapping or atomic in this process. Ensure it by protocol (the other side waits
    /// for a signal this process gives after dropping the slice) or by never sharing the memory.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is live and `len` bytes long for as long as `self` is borrowed; the
        // caller promises that nobody writes the bytes while the slice lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    ///
    /// # Safety
    /// While the slice lives, nothing else may read or write these bytes: no other process that
    /// maps the memfd, no device that imported it, and no other mapping or atomic in this process.
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is live and `len` bytes long; `&mut self` excludes other borrows of
        // this mapping, and the caller promises that no other party touches the bytes meanwhile.
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

/// Copies `dst.len()` bytes from `src`, memory that another process or device may write: volatile
/// loads (8 bytes at a time where `src` is aligned), so each byte is read once, where the copy
/// reads it, and no reference to the shared bytes is made.
///
/// # Safety
/// `src` must be valid for reads of `dst.len()` bytes for the whole call.
pub(crate) unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let head = src.align_offset(8).min(len);
    let words = (len - head) / 8;
    let out = dst.as_mut_ptr();
    // SAFETY: every index below is < len, and the caller made src valid for len bytes; the word
    // loads are at `src + head + 8 w`, 8-byte aligned (`align_offset`), inside the range; `out`
    // is a distinct, exclusively borrowed buffer of len bytes written with unaligned stores.
    unsafe {
        for i in 0..head {
            *out.add(i) = std::ptr::read_volatile(src.add(i));
        }
        let src_words = src.add(head).cast::<u64>();
        for w in 0..words {
            let v = std::ptr::read_volatile(src_words.add(w));
            out.add(head + 8 * w).cast::<u64>().write_unaligned(v);
        }
        for i in head + 8 * words..len {
            *out.add(i) = std::ptr::read_volatile(src.add(i));
        }
    }
}

/// Copies `src` to `dst`, memory that another process or device may read or write: volatile
/// stores (8 bytes at a time where `dst` is aligned); no reference to the shared bytes is made.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes for the whole call, and no other thread
/// of this process may access those bytes during it except through volatile or atomic accesses
/// (callers hold `&mut` of the mapping's owner).
pub(crate) unsafe fn copy_to_shared(src: &[u8], dst: *mut u8) {
    let len = src.len();
    let head = dst.align_offset(8).min(len);
    let words = (len - head) / 8;
    let from = src.as_ptr();
    // SAFETY: as in `copy_from_shared` with the roles swapped: every index is < len, the word
    // stores are 8-byte aligned inside the caller's range, and `from` is read unaligned.
    unsafe {
        for i in 0..head {
            std::ptr::write_volatile(dst.add(i), *from.add(i));
        }
        let dst_words = dst.add(head).cast::<u64>();
        for w in 0..words {
            let v = from.add(head + 8 * w).cast::<u64>().read_unaligned();
            std::ptr::write_volatile(dst_words.add(w), v);
        }
        for i in head + 8 * words..len {
            std::ptr::write_volatile(dst.add(i), *from.add(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The volatile copies move every byte, whatever the alignment of either side.
    #[test]
    fn copies_in_and_out_at_every_alignment() {
        let mut memory = SharedHostMemory::create(4096, 1).unwrap();
        let data: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for offset in 0..9 {
            for len in [0, 1, 7, 8, 9, 63, 64, 65, 191] {
                let chunk = &data[offset..offset + len];
                memory.write(offset, chunk).unwrap();
                assert_eq!(memory.read(offset, len).unwrap(), chunk, "offset {offset} len {len}");
                let mut unaligned = vec![0u8; len + 3];
                memory.read_into(offset, &mut unaligned[3..]).unwrap();
                assert_eq!(&unaligned[3..], chunk);
            }
        }
        let e = memory.read(4090, 7).unwrap_err().to_string();
        assert!(e.contains("4096"), "{e}");
        assert!(memory.write(usize::MAX, &[1]).is_err(), "an offset past the end is refused");
    }

    /// Two mappings of one memfd (as two processes have) see each other's copies.
    #[test]
    fn a_second_mapping_sees_the_first_ones_writes() {
        let mut a = SharedHostMemory::create(8192, 1).unwrap();
        let b = SharedHostMemory::from_fd(a.try_clone_fd().unwrap(), 8192).unwrap();
        a.write(4093, b"lava-flow").unwrap();
        assert_eq!(b.read(4093, 9).unwrap(), b"lava-flow");
    }
}
