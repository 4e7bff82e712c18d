//! Shared objects with their fds: what a server holds and a client receives.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use raw_gpu_handle::{
    BufferHandle, ExportedBuffer, ExportedFence, ExportedMemory, ExportedSemaphore, ExportedTexture, FenceHandle,
    MemoryDescription, MemoryHandle, MemoryHandleKind, SemaphoreHandle, TextureHandle,
};
use rustix::fs::{FileType, SealFlags};

use super::wire::{NamedDescription, ObjectDescription};
use crate::{Error, Result};

/// One exported object with the fd that owns it.
#[derive(Debug)]
pub enum SharedObject {
    /// A whole allocation.
    Memory(ExportedMemory),
    /// A buffer in an allocation.
    Buffer(ExportedBuffer),
    /// A texture in an allocation.
    Texture(ExportedTexture),
    /// A semaphore.
    Semaphore(ExportedSemaphore),
    /// A fence.
    Fence(ExportedFence),
}

impl SharedObject {
    /// Joins a description with the fd that came for it.
    pub fn from_parts(description: ObjectDescription, fd: OwnedFd) -> SharedObject {
        match description {
            ObjectDescription::Memory(d) => SharedObject::Memory(MemoryHandle::new(fd, d)),
            ObjectDescription::Buffer { memory, buffer } => {
                SharedObject::Buffer(BufferHandle::new(MemoryHandle::new(fd, memory), buffer))
            }
            ObjectDescription::Texture { memory, texture } => {
                SharedObject::Texture(TextureHandle::new(MemoryHandle::new(fd, memory), texture))
            }
            ObjectDescription::Semaphore(d) => SharedObject::Semaphore(SemaphoreHandle::new(fd, d)),
            ObjectDescription::Fence(d) => SharedObject::Fence(FenceHandle::new(fd, d)),
        }
    }

    /// The description, without the fd.
    pub fn description(&self) -> ObjectDescription {
        match self {
            SharedObject::Memory(m) => ObjectDescription::Memory(m.description),
            SharedObject::Buffer(b) => ObjectDescription::Buffer { memory: b.memory.description, buffer: b.buffer },
            SharedObject::Texture(t) => {
                ObjectDescription::Texture { memory: t.memory.description, texture: t.texture.clone() }
            }
            SharedObject::Semaphore(s) => ObjectDescription::Semaphore(s.description),
            SharedObject::Fence(f) => ObjectDescription::Fence(f.description),
        }
    }

    /// Borrows the fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            SharedObject::Memory(m) => m.handle.as_fd(),
            SharedObject::Buffer(b) => b.memory.handle.as_fd(),
            SharedObject::Texture(t) => t.memory.handle.as_fd(),
            SharedObject::Semaphore(s) => s.handle.as_fd(),
            SharedObject::Fence(f) => f.handle.as_fd(),
        }
    }

    /// Gives up the fd and returns it with the description.
    pub fn into_parts(self) -> (ObjectDescription, OwnedFd) {
        let description = self.description();
        let fd = match self {
            SharedObject::Memory(m) => m.handle,
            SharedObject::Buffer(b) => b.memory.handle,
            SharedObject::Texture(t) => t.memory.handle,
            SharedObject::Semaphore(s) => s.handle,
            SharedObject::Fence(f) => f.handle,
        };
        (description, fd)
    }

    /// Duplicates the fd (`F_DUPFD_CLOEXEC`): each importer needs its own.
    pub fn try_clone(&self) -> Result<SharedObject> {
        let fd = self.fd().try_clone_to_owned().map_err(|e| Error::io("duplicating the fd of a shared object", e))?;
        Ok(SharedObject::from_parts(self.description(), fd))
    }

    /// "memory", "buffer", "texture", "semaphore" or "fence".
    pub fn kind_name(&self) -> &'static str {
        match self {
            SharedObject::Memory(_) => "memory",
            SharedObject::Buffer(_) => "buffer",
            SharedObject::Texture(_) => "texture",
            SharedObject::Semaphore(_) => "semaphore",
            SharedObject::Fence(_) => "fence",
        }
    }

    /// Checks the fd against the description, as far as anything outside the driver that made it
    /// can tell (docs/PROTOCOL.md, "What the server checks"):
    ///
    /// - host-memfd memory: a memfd, sealed against shrinking (`F_SEAL_SHRINK`), holding at least
    ///   the allocation size;
    /// - device memory (opaque fd, DMA-BUF), semaphores and fences: not a pipe, socket, directory,
    ///   block device or regular file on a file system (a memfd, a DMA-BUF, an anonymous inode or a
    ///   character device passes, since drivers export those); memory whose size the fd shows (a
    ///   memfd, a DMA-BUF) holds at least the allocation size.
    ///
    /// The error says what the fd is and what its description claims.
    pub fn check_handle(&self) -> Result<()> {
        let reason = match self.memory() {
            Some(m) => check_memory_handle(m.handle.as_fd(), &m.description),
            None => check_sync_handle(self.fd()),
        };
        reason.map_err(|reason| Error::InvalidHandle {
            what: format!("shared {}", self.kind_name()),
            reason,
            advice: "share the fd an export returned, with its description unchanged (host memory: a memfd sealed \
                     with F_SEAL_SHRINK, as ipc::shm::create makes)"
                .into(),
        })
    }

    /// The memory, where this object is or lives in one.
    pub fn memory(&self) -> Option<&ExportedMemory> {
        match self {
            SharedObject::Memory(m) => Some(m),
            SharedObject::Buffer(b) => Some(&b.memory),
            SharedObject::Texture(t) => Some(&t.memory),
            _ => None,
        }
    }
}

macro_rules! shared_kind {
    ($($variant:ident($ty:ident) = $name:literal),* $(,)?) => {$(
        impl From<$ty> for SharedObject {
            fn from(v: $ty) -> Self {
                SharedObject::$variant(v)
            }
        }

        impl TryFrom<SharedObject> for $ty {
            type Error = WrongKind;

            /// The object, where it is of this kind; else the object back, in a [`WrongKind`].
            fn try_from(object: SharedObject) -> std::result::Result<Self, WrongKind> {
                match object {
                    SharedObject::$variant(v) => Ok(v),
                    object => Err(WrongKind { wanted: $name, object: Box::new(object) }),
                }
            }
        }

        impl FromShared for $ty {
            fn from_shared(object: SharedObject) -> std::result::Result<Self, WrongKind> {
                Self::try_from(object)
            }
        }
    )*};
}

shared_kind!(
    Memory(ExportedMemory) = "memory",
    Buffer(ExportedBuffer) = "buffer",
    Texture(ExportedTexture) = "texture",
    Semaphore(ExportedSemaphore) = "semaphore",
    Fence(ExportedFence) = "fence",
);

/// What [`Client::get`](super::Client::get) returns: one kind of shared object
/// (`ExportedMemory`, `ExportedBuffer`, `ExportedTexture`, `ExportedSemaphore`, `ExportedFence`,
/// each through its `TryFrom<SharedObject>`), or [`SharedObject`] itself for any kind.
pub trait FromShared: Sized {
    /// The object as `Self`, or back in a [`WrongKind`] when it is of another kind.
    fn from_shared(object: SharedObject) -> std::result::Result<Self, WrongKind>;
}

impl FromShared for SharedObject {
    fn from_shared(object: SharedObject) -> std::result::Result<Self, WrongKind> {
        Ok(object)
    }
}

/// A shared object of another kind than the one asked for (`ExportedBuffer::try_from` given a
/// semaphore, say). It holds the object, so nothing is lost: its fd closes when it drops.
#[derive(Debug)]
pub struct WrongKind {
    /// The kind that was asked for ("memory", "buffer", "texture", "semaphore" or "fence").
    pub wanted: &'static str,
    /// The object that came, with its fd (boxed: a texture's description is large).
    pub object: Box<SharedObject>,
}

impl std::fmt::Display for WrongKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a {} was asked for and this is a {} object", self.wanted, self.object.kind_name())
    }
}

impl std::error::Error for WrongKind {}

impl WrongKind {
    /// The error for the object named `name`.
    pub fn into_error(self, name: &str) -> Error {
        Error::invalid(
            format!("object kind of {name:?}"),
            format!(
                "a {} was asked for and the server holds a {} object under that name",
                self.wanted,
                self.object.kind_name()
            ),
            format!(
                "ask for the kind that is published (`Client::get::<SharedObject>` takes any), or publish a {} \
                 under this name",
                self.wanted
            ),
        )
    }
}

impl From<WrongKind> for Error {
    fn from(e: WrongKind) -> Error {
        Error::invalid(
            "object kind",
            e.to_string(),
            "convert a SharedObject to the kind it holds (see SharedObject::kind_name)",
        )
    }
}

/// A shared object with the name it is shared under.
#[derive(Debug)]
pub struct NamedObject {
    /// 1 to 64 bytes of printable ASCII (see [`check_name`](super::wire::check_name)).
    pub name: String,
    /// The object and its fd.
    pub object: SharedObject,
}

impl NamedObject {
    /// Names an object.
    pub fn new(name: impl Into<String>, object: impl Into<SharedObject>) -> NamedObject {
        NamedObject { name: name.into(), object: object.into() }
    }

    /// The wire description.
    pub fn named_description(&self) -> NamedDescription {
        NamedDescription { name: self.name.clone(), description: self.object.description() }
    }

    /// Duplicates the fd.
    pub fn try_clone(&self) -> Result<NamedObject> {
        Ok(NamedObject { name: self.name.clone(), object: self.object.try_clone()? })
    }
}

/// Pairs decoded descriptions with the fds received for them (equal counts, checked by `decode`).
pub(crate) fn join(descriptions: Vec<NamedDescription>, fds: Vec<OwnedFd>) -> Result<Vec<NamedObject>> {
    if descriptions.len() != fds.len() {
        return Err(Error::Protocol {
            reason: format!("{} objects arrived with {} fds", descriptions.len(), fds.len()),
            advice: "send exactly one fd per object".into(),
        });
    }
    Ok(descriptions
        .into_iter()
        .zip(fds)
        .map(|(d, fd)| NamedObject { name: d.name, object: SharedObject::from_parts(d.description, fd) })
        .collect())
}

/// What the kernel says an fd is: its type, `st_size` and `/proc/self/fd` link.
struct FdFacts {
    kind: FileType,
    size: u64,
    target: String,
}

impl FdFacts {
    fn of(fd: BorrowedFd<'_>) -> std::result::Result<FdFacts, String> {
        let stat = rustix::fs::fstat(fd).map_err(|e| format!("fstat fails ({e})"))?;
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(FdFacts { kind: FileType::from_raw_mode(stat.st_mode), size: stat.st_size.max(0) as u64, target })
    }

    /// A memfd, a DMA-BUF or an anonymous inode: what drivers export; regular files elsewhere
    /// live on a file system no driver exports from.
    fn is_driver_file(&self) -> bool {
        ["/memfd:", "/dmabuf:", "anon_inode:"].iter().any(|p| self.target.starts_with(p))
    }

    fn describe(&self) -> String {
        let what = match self.kind {
            FileType::Fifo => "a pipe",
            FileType::Socket => "a socket",
            FileType::Directory => "a directory",
            FileType::BlockDevice => "a block device",
            FileType::CharacterDevice => "a character device",
            FileType::RegularFile => "a regular file",
            FileType::Symlink => "a symbolic link",
            _ => "an anonymous inode",
        };
        if self.target.is_empty() {
            what.to_owned()
        } else {
            format!("{what} ({})", self.target)
        }
    }

    /// Pipes, sockets, directories, block devices and files on a file system: never a driver's
    /// export of memory, a semaphore or a fence.
    fn refuse_non_driver(&self) -> std::result::Result<(), String> {
        let refused = match self.kind {
            FileType::Fifo | FileType::Socket | FileType::Directory | FileType::BlockDevice | FileType::Symlink => true,
            FileType::RegularFile => !self.is_driver_file(),
            _ => false,
        };
        if refused {
            return Err(format!("it is {}, which no GPU driver exports", self.describe()));
        }
        Ok(())
    }
}

fn check_memory_handle(fd: BorrowedFd<'_>, d: &MemoryDescription) -> std::result::Result<(), String> {
    let facts = FdFacts::of(fd)?;
    let short = |size: u64| {
        format!(
            "the fd holds {size} bytes, fewer than the allocation size of {} bytes its description names",
            d.allocation_size
        )
    };
    if d.handle_kind == MemoryHandleKind::HostMemfd {
        if facts.kind != FileType::RegularFile {
            return Err(format!("host memory must be a memfd, and this fd is {}", facts.describe()));
        }
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| {
            format!("host memory must be a memfd, and this fd is {} whose seals cannot be read ({e})", facts.describe())
        })?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err("the host memfd is not sealed against shrinking (F_SEAL_SHRINK): its owner could truncate it \
                        and make every process that maps it fault with SIGBUS"
                .into());
        }
        if facts.size < d.allocation_size {
            return Err(short(facts.size));
        }
        return Ok(());
    }
    facts.refuse_non_driver()?;
    // Sizes are known for memfds (Mesa's software drivers export these) and DMA-BUFs; a
    // character device or an anonymous inode shows none.
    let sized = facts.target.starts_with("/memfd:") || facts.target.starts_with("/dmabuf:");
    if sized && facts.size < d.allocation_size {
        return Err(short(facts.size));
    }
    Ok(())
}

fn check_sync_handle(fd: BorrowedFd<'_>) -> std::result::Result<(), String> {
    FdFacts::of(fd)?.refuse_non_driver()
}
