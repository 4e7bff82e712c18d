//! Vulkan: the allocating side. Contexts, exportable memory, buffers and images, imports,
//! capability queries and synchronization, on ash with libvulkan loaded at run time.

mod buffer;
pub mod caps;
mod context;
mod format;
mod host;
mod image;
mod limits;
mod live;
mod location;
mod memory;

#[doc(hidden)]
pub use buffer::GL_BUFFER_SLACK;
pub use buffer::{
    candidate_types, AllocationStrategy, Buffer, BufferOptions, DedicatedPolicy, MappedBuffer, MemoryKind,
};
#[doc(hidden)]
pub use context::record_command_buffer;
pub use context::{
    ContextOptions, DeviceSelector, EnabledExtensions, ForeignMemoryTarget, PhysicalDeviceInfo, RawVulkan,
    VulkanContext,
};
pub use format::{memory_properties, vk_format, vk_image_type, vk_memory_handle_type};
pub(crate) use format::{HOST_MEMFD_PROPERTIES, MEMORY_PROPERTY_BITS};
pub use host::SharedHostMemory;
pub use image::{Image, ImageOptions, ImageTiling};
#[doc(hidden)]
pub use live::{live_objects, LiveObjects};
pub use location::MemoryLocation;
pub(crate) use memory::{allocation_id_prefix, next_allocation_id};
pub use memory::{DedicatedTo, DeviceMemory, MemoryOrigin};

pub(crate) use memory::AllocateParams;
pub mod sync;
pub use sync::{Fence, OwnershipTransfer, RecordedCommands, Semaphore, Submission, SyncCapabilities};
