//! Vulkan: the allocating side. Contexts, exportable memory, buffers and images, imports,
//! capability queries and synchronization, on ash with libvulkan loaded at run time.

mod context;

pub use context::{DeviceSelector, EnabledExtensions, PhysicalDeviceInfo, VulkanContext};
pub mod sync;
pub use sync::{Fence, OwnershipTransfer, RecordedCommands, Semaphore, Submission, SyncCapabilities};
