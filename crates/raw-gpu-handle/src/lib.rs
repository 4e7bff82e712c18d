//! API-neutral descriptions of GPU objects that can be shared between APIs and processes.
//!
//! A shared GPU object is an OS handle (a file descriptor on Linux) plus everything the importing
//! API needs to rebuild the object from it: the size of the whole allocation, the memory type, the
//! identity of the device and driver that made it, and for textures the format and layout. This
//! crate holds those descriptions and the rules that decide whether an import may be attempted. It
//! has no GPU code and no dependency beyond `std` (`serde` is optional).
//!
//! Every shareable object comes in three tiers, like `raw-window-handle`:
//!
//! | tier | handle type | who closes it |
//! |---|---|---|
//! | raw ([`RawMemory`], ...) | [`RawFd`](std::os::fd::RawFd) | nobody: a plain number, for FFI |
//! | borrowed ([`BorrowedMemory`], ...) | [`BorrowedFd`](std::os::fd::BorrowedFd) | the owner it borrows from |
//! | owned ([`ExportedMemory`], ...) | [`OwnedFd`](std::os::fd::OwnedFd) | this value, on drop |
//!
//! Importers take the owned tier, and an import consumes the handle whether it succeeds or fails.
//! On success the importing API owns it (Vulkan, CUDA, OpenGL and OpenCL all take ownership of an
//! imported fd). On failure the importer closes it exactly once, and never closes an fd number it
//! cannot prove it still owns. lava-flow's importers follow this rule (its docs/OWNERSHIP.md
//! explains how). To try another importer after a failure, `try_clone` the handle first.
//!
//! The crate does no checks by itself beyond [`check_compatible`]; the libraries that import must
//! follow the rules written on each type.

#![warn(missing_docs)]

mod compat;
mod handle;
mod identity;
mod memory;
mod resource;
mod sync;
mod texture;

pub use compat::{check_compatible, IncompatibleDevice};
#[cfg(unix)]
pub use handle::{BorrowedHandle, OwnedHandle, RawHandle};
pub use handle::{FenceHandleKind, MemoryHandleKind, SemaphoreHandleKind};
pub use identity::{DeviceIdentity, Uuid};
pub use memory::{AllocationId, Memory, MemoryDescription, MemoryProperties};
#[cfg(unix)]
pub use memory::{BorrowedMemory, ExportedMemory, RawMemory};
pub use resource::{Buffer, BufferDescription, Texture};
#[cfg(unix)]
pub use resource::{ExportedBuffer, ExportedTexture};
#[cfg(unix)]
pub use sync::{ExportedFence, ExportedSemaphore};
pub use sync::{Fence, FenceDescription, Semaphore, SemaphoreDescription, SemaphoreKind};
pub use texture::{
    Extent3d, PlaneLayout, TextureDescription, TextureDimension, TextureError, TextureFormat, TextureTiling,
    TextureUsage,
};
