use crate::{DeviceIdentity, MemoryHandle, TextureDescription};

/// Where a buffer lies inside its memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BufferDescription {
    /// Offset of the buffer from the start of the allocation; importers map at this offset
    /// (`CUDA_EXTERNAL_MEMORY_BUFFER_DESC::offset`, `glBufferStorageMemEXT`'s offset).
    pub offset: u64,
    /// Size of the buffer in bytes.
    pub size: u64,
    /// The alignment the offset honours (`VkMemoryRequirements::alignment`).
    pub alignment: u64,
}

/// A buffer: its memory (with handle of tier `H`) and where it lies in it
/// ([`ExportedBuffer`](crate::ExportedBuffer) owns its fd).
///
/// `#[non_exhaustive]`: build it with [`new`](Self::new), destructure it with `..`.
#[derive(Debug)]
#[non_exhaustive]
pub struct BufferHandle<H> {
    /// The allocation holding the buffer.
    pub memory: MemoryHandle<H>,
    /// The buffer's place in it.
    pub buffer: BufferDescription,
}

impl<H> BufferHandle<H> {
    /// Places a buffer in an allocation.
    pub fn new(memory: MemoryHandle<H>, buffer: BufferDescription) -> Self {
        BufferHandle { memory, buffer }
    }

    /// The device and driver that made the memory.
    pub fn device(&self) -> &DeviceIdentity {
        &self.memory.description.device
    }

    /// Size of the buffer in bytes (not of its allocation: see
    /// [`MemoryHandle::allocation_size`]).
    pub fn size(&self) -> u64 {
        self.buffer.size
    }

    /// Offset of the buffer in its allocation.
    pub fn offset(&self) -> u64 {
        self.buffer.offset
    }

    /// Splits into the memory and the buffer's place in it.
    pub fn into_parts(self) -> (MemoryHandle<H>, BufferDescription) {
        (self.memory, self.buffer)
    }
}

/// A texture: its memory (with handle of tier `H`) and its shape and layout
/// ([`ExportedTexture`](crate::ExportedTexture) owns its fd).
///
/// `#[non_exhaustive]`: build it with [`new`](Self::new), destructure it with `..`.
#[derive(Debug)]
#[non_exhaustive]
pub struct TextureHandle<H> {
    /// The allocation holding the texture.
    pub memory: MemoryHandle<H>,
    /// The texture's shape, format and place in the memory.
    pub texture: TextureDescription,
}

impl<H> TextureHandle<H> {
    /// Places a texture in an allocation.
    pub fn new(memory: MemoryHandle<H>, texture: TextureDescription) -> Self {
        TextureHandle { memory, texture }
    }

    /// The device and driver that made the memory.
    pub fn device(&self) -> &DeviceIdentity {
        &self.memory.description.device
    }

    /// Bytes the texture occupies in its allocation.
    pub fn size(&self) -> u64 {
        self.texture.size
    }

    /// Splits into the memory and the texture's description.
    pub fn into_parts(self) -> (MemoryHandle<H>, TextureDescription) {
        (self.memory, self.texture)
    }
}

#[cfg(all(unix, feature = "std"))]
impl<H: std::os::fd::AsFd> BufferHandle<H> {
    /// Borrows the memory's fd.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.memory.handle.as_fd()
    }
}

#[cfg(all(unix, feature = "std"))]
impl<H: std::os::fd::AsFd> TextureHandle<H> {
    /// Borrows the memory's fd.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.memory.handle.as_fd()
    }
}

/// An exported buffer owning its fd.
#[cfg(all(unix, feature = "std"))]
pub type ExportedBuffer = BufferHandle<std::os::fd::OwnedFd>;
/// An exported texture owning its fd.
#[cfg(all(unix, feature = "std"))]
pub type ExportedTexture = TextureHandle<std::os::fd::OwnedFd>;

#[cfg(all(unix, feature = "std"))]
impl ExportedBuffer {
    /// Duplicates the fd: the explicit way to feed a second importer.
    pub fn try_clone(&self) -> std::io::Result<ExportedBuffer> {
        Ok(BufferHandle { memory: self.memory.try_clone()?, buffer: self.buffer })
    }
}

#[cfg(all(unix, feature = "std"))]
impl ExportedTexture {
    /// Duplicates the fd: the explicit way to feed a second importer.
    pub fn try_clone(&self) -> std::io::Result<ExportedTexture> {
        Ok(TextureHandle { memory: self.memory.try_clone()?, texture: self.texture.clone() })
    }
}
