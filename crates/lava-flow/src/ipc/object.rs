//! Shared objects with their fds: what a server holds and a client receives.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use raw_gpu_handle::{
    Buffer, ExportedBuffer, ExportedFence, ExportedMemory, ExportedSemaphore, ExportedTexture, Fence, Memory,
    Semaphore, Texture,
};

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
            ObjectDescription::Memory(d) => SharedObject::Memory(Memory { handle: fd, description: d }),
            ObjectDescription::Buffer { memory, buffer } => {
                SharedObject::Buffer(Buffer { memory: Memory { handle: fd, description: memory }, buffer })
            }
            ObjectDescription::Texture { memory, texture } => {
                SharedObject::Texture(Texture { memory: Memory { handle: fd, description: memory }, texture })
            }
            ObjectDescription::Semaphore(d) => SharedObject::Semaphore(Semaphore { handle: fd, description: d }),
            ObjectDescription::Fence(d) => SharedObject::Fence(Fence { handle: fd, description: d }),
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

impl From<ExportedMemory> for SharedObject {
    fn from(v: ExportedMemory) -> Self {
        SharedObject::Memory(v)
    }
}
impl From<ExportedBuffer> for SharedObject {
    fn from(v: ExportedBuffer) -> Self {
        SharedObject::Buffer(v)
    }
}
impl From<ExportedTexture> for SharedObject {
    fn from(v: ExportedTexture) -> Self {
        SharedObject::Texture(v)
    }
}
impl From<ExportedSemaphore> for SharedObject {
    fn from(v: ExportedSemaphore) -> Self {
        SharedObject::Semaphore(v)
    }
}
impl From<ExportedFence> for SharedObject {
    fn from(v: ExportedFence) -> Self {
        SharedObject::Fence(v)
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
