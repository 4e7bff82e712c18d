//! Translation between raw-gpu-handle's API-neutral vocabulary and Vulkan's.

use ash::vk;
use raw_gpu_handle::{MemoryHandleKind, MemoryProperties, TextureDimension, TextureFormat};

/// The memory property bits docs/PROTOCOL.md defines (`VkMemoryPropertyFlags` device-local 1,
/// host-visible 2, host-coherent 4, host-cached 8); `ipc::wire` re-exports it.
pub(crate) const MEMORY_PROPERTY_BITS: u32 = 0xF;
/// The memory properties of every host-memfd description: host-visible and host-coherent.
pub(crate) const HOST_MEMFD_PROPERTIES: MemoryProperties = MemoryProperties(0x6);

/// The Vulkan format of a shareable texture format.
pub fn vk_format(format: TextureFormat) -> vk::Format {
    match format {
        TextureFormat::R8Unorm => vk::Format::R8_UNORM,
        TextureFormat::Rg8Unorm => vk::Format::R8G8_UNORM,
        TextureFormat::Rgba8Unorm => vk::Format::R8G8B8A8_UNORM,
        TextureFormat::Rgba8Uint => vk::Format::R8G8B8A8_UINT,
        TextureFormat::R16Float => vk::Format::R16_SFLOAT,
        TextureFormat::Rgba16Float => vk::Format::R16G16B16A16_SFLOAT,
        TextureFormat::R32Uint => vk::Format::R32_UINT,
        TextureFormat::R32Float => vk::Format::R32_SFLOAT,
        TextureFormat::Rg32Float => vk::Format::R32G32_SFLOAT,
        TextureFormat::Rgba32Float => vk::Format::R32G32B32A32_SFLOAT,
        TextureFormat::Rgba32Uint => vk::Format::R32G32B32A32_UINT,
        _ => vk::Format::UNDEFINED,
    }
}

/// The Vulkan image type of a texture dimension.
pub fn vk_image_type(dimension: TextureDimension) -> vk::ImageType {
    match dimension {
        TextureDimension::D1 | TextureDimension::D1Array => vk::ImageType::TYPE_1D,
        TextureDimension::D2 | TextureDimension::D2Array => vk::ImageType::TYPE_2D,
        TextureDimension::D3 => vk::ImageType::TYPE_3D,
    }
}

/// The Vulkan external memory handle type of a handle kind.
pub fn vk_memory_handle_type(kind: MemoryHandleKind) -> vk::ExternalMemoryHandleTypeFlags {
    match kind {
        MemoryHandleKind::OpaqueFd => vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD,
        MemoryHandleKind::DmaBuf => vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT,
        MemoryHandleKind::HostMemfd => vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT,
        #[allow(unreachable_patterns)]
        _ => vk::ExternalMemoryHandleTypeFlags::empty(),
    }
}

/// Memory property flags as raw-gpu-handle carries them: Vulkan's device-local, host-visible,
/// host-coherent and host-cached bits, the ones docs/PROTOCOL.md defines. Other bits (protected,
/// lazily allocated, vendor bits) say nothing an importer in another API or process can use, and a
/// description carrying them is malformed on the wire.
pub fn memory_properties(flags: vk::MemoryPropertyFlags) -> MemoryProperties {
    MemoryProperties(flags.as_raw() & MEMORY_PROPERTY_BITS)
}
