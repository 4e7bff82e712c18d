use crate::{Memory, TextureDescription};

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

/// A buffer: its memory (with handle) and where it lies in it.
#[derive(Debug)]
pub struct Buffer<H> {
    /// The allocation holding the buffer.
    pub memory: Memory<H>,
    /// The buffer's place in it.
    pub buffer: BufferDescription,
}

/// A texture: its memory (with handle) and its shape and layout.
#[derive(Debug)]
pub struct Texture<H> {
    /// The allocation holding the texture.
    pub memory: Memory<H>,
    /// The texture's shape, format and place in the memory.
    pub texture: TextureDescription,
}

/// An exported buffer owning its fd.
#[cfg(unix)]
pub type ExportedBuffer = Buffer<std::os::fd::OwnedFd>;
/// An exported texture owning its fd.
#[cfg(unix)]
pub type ExportedTexture = Texture<std::os::fd::OwnedFd>;

#[cfg(unix)]
impl ExportedBuffer {
    /// Duplicates the fd: the explicit way to feed a second importer.
    pub fn try_clone(&self) -> std::io::Result<ExportedBuffer> {
        Ok(Buffer { memory: self.memory.try_clone()?, buffer: self.buffer })
    }
}

#[cfg(unix)]
impl ExportedTexture {
    /// Duplicates the fd: the explicit way to feed a second importer.
    pub fn try_clone(&self) -> std::io::Result<ExportedTexture> {
        Ok(Texture { memory: self.memory.try_clone()?, texture: self.texture.clone() })
    }
}
