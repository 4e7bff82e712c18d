//! `MemoryLocation`: where [`MemoryAllocator`](crate::MemoryAllocator) puts an allocation
//! (`allocator.allocate(size, MemoryLocation::GpuVulkan { device_id })`).

use super::buffer::MemoryKind;

/// Where an allocation lives. `device_id` is the Vulkan device's index as `lava-flow info` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryLocation {
    /// Device-local Vulkan memory, exported as an opaque fd.
    GpuVulkan {
        /// Vulkan device index.
        device_id: usize,
    },
    /// Host-visible Vulkan memory, exported as an opaque fd.
    HostVisibleVulkan {
        /// Vulkan device index.
        device_id: usize,
    },
    /// A memfd any process can mmap, imported into the device with VK_EXT_external_memory_host
    /// and exported as that memfd.
    SharedHost {
        /// Vulkan device index.
        device_id: usize,
    },
}

impl MemoryLocation {
    /// The device index.
    pub fn device_id(self) -> usize {
        match self {
            MemoryLocation::GpuVulkan { device_id }
            | MemoryLocation::HostVisibleVulkan { device_id }
            | MemoryLocation::SharedHost { device_id } => device_id,
        }
    }

    /// The memory kind on that device.
    pub fn kind(self) -> MemoryKind {
        match self {
            MemoryLocation::GpuVulkan { .. } => MemoryKind::DeviceLocal,
            MemoryLocation::HostVisibleVulkan { .. } => MemoryKind::HostVisible,
            MemoryLocation::SharedHost { .. } => MemoryKind::SharedHost,
        }
    }
}
