//! API-neutral descriptions of GPU objects that can be shared between APIs and processes.
//!
//! A shared GPU object is an OS handle (a file descriptor on Linux) plus everything the importing
//! API needs to rebuild the object from it: the size of the whole allocation, the memory type, the
//! identity of the device and driver that made it, and for textures the format and layout. This
//! crate holds those descriptions and the rules that decide whether an import may be attempted. It
//! has no GPU code and no dependency (`serde` is optional).
//!
//! # `no_std`
//!
//! The crate is `no_std` (it needs `alloc` for a texture's plane list and error texts). The
//! descriptions, handle kinds, device identities and [`check_compatible`] are always there. The
//! fd-holding tiers below need `std::os::fd` and come with the `std` feature (on by default), as
//! `raw-window-handle` does.
//!
//! # Names
//!
//! | what | name | example |
//! |---|---|---|
//! | an object without its OS handle (what travels as JSON) | `*Description` | [`BufferDescription`] |
//! | an object with an OS handle of tier `H` | `*Handle<H>` | [`BufferHandle<H>`] |
//! | the owned tier (`OwnedFd`) | `Exported*` | [`ExportedBuffer`] = `BufferHandle<OwnedFd>` |
//! | the borrowed tier (`BorrowedFd`) | `Borrowed*` | [`BorrowedMemory`] = `MemoryHandle<BorrowedFd>` |
//! | the raw tier (`RawFd`) | `Raw*` | [`RawMemory`] = `MemoryHandle<RawFd>` |
//! | how to read the OS handle | `*HandleKind` | [`MemoryHandleKind`] |
//!
//! The `*Handle` structs are `#[non_exhaustive]`: build them with `new`, read their public
//! fields (or the accessors, such as [`BufferHandle::device`] and [`BufferHandle::size`]), and
//! destructure them with `..`:
//!
//! ```
//! use raw_gpu_handle::{
//!     BufferDescription, BufferHandle, DeviceIdentity, MemoryDescription, MemoryHandle, MemoryHandleKind,
//!     MemoryProperties,
//! };
//!
//! let memory = MemoryDescription {
//!     handle_kind: MemoryHandleKind::HostMemfd,
//!     allocation_size: 4096,
//!     memory_type_index: 0,
//!     memory_properties: MemoryProperties::HOST_VISIBLE,
//!     dedicated: false,
//!     device: DeviceIdentity::default(),
//!     allocation_id: None,
//! };
//! // Any handle tier; an `i32` stands for a raw fd here.
//! let buffer = BufferHandle::new(MemoryHandle::new(7, memory), BufferDescription { offset: 0, size: 1024, alignment: 256 });
//! assert_eq!((buffer.size(), buffer.offset(), buffer.device()), (1024, 0, &DeviceIdentity::default()));
//! let BufferHandle { memory, buffer: place, .. } = buffer;
//! assert_eq!((memory.allocation_size(), place.size), (4096, 1024));
//! ```
//!
//! A struct expression does not build one outside this crate, so that fields can be added later:
//!
//! ```compile_fail,E0639
//! use raw_gpu_handle::{BufferDescription, BufferHandle, MemoryHandle};
//!
//! fn place(memory: MemoryHandle<i32>, buffer: BufferDescription) -> BufferHandle<i32> {
//!     BufferHandle { memory, buffer } // use BufferHandle::new(memory, buffer)
//! }
//! ```
//!
//! Every shareable object comes in three tiers, like `raw-window-handle`:
//!
//! | tier | handle type | who closes it |
//! |---|---|---|
//! | raw ([`RawMemory`], ...) | `RawFd` | nobody: a plain number, for FFI |
//! | borrowed ([`BorrowedMemory`], ...) | `BorrowedFd` | the owner it borrows from |
//! | owned ([`ExportedMemory`], ...) | `OwnedFd` | this value, on drop |
//!
//! Importers take the owned tier, and an import consumes the handle whether it succeeds or fails.
//! On success the importing API owns it (Vulkan, CUDA, OpenGL and OpenCL all take ownership of an
//! imported fd). On failure the importer closes it exactly once, and never closes an fd number it
//! cannot prove it still owns. lava-flow's importers follow this rule (its docs/OWNERSHIP.md
//! explains how). To try another importer after a failure, `try_clone` the handle first.
//!
//! The crate does no checks by itself beyond [`check_compatible`]; the libraries that import must
//! follow the rules written on each type.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

mod compat;
mod handle;
mod identity;
mod memory;
mod resource;
mod sync;
mod texture;

pub use compat::{check_compatible, IncompatibleDevice};
#[cfg(all(unix, feature = "std"))]
pub use handle::{BorrowedHandle, OwnedHandle, RawHandle};
pub use handle::{FenceHandleKind, MemoryHandleKind, SemaphoreHandleKind};
pub use identity::{DeviceIdentity, Uuid};
pub use memory::{AllocationId, MemoryDescription, MemoryHandle, MemoryProperties};
#[cfg(all(unix, feature = "std"))]
pub use memory::{BorrowedMemory, ExportedMemory, RawMemory};
pub use resource::{BufferDescription, BufferHandle, TextureHandle};
#[cfg(all(unix, feature = "std"))]
pub use resource::{ExportedBuffer, ExportedTexture};
#[cfg(all(unix, feature = "std"))]
pub use sync::{ExportedFence, ExportedSemaphore};
pub use sync::{FenceDescription, FenceHandle, SemaphoreDescription, SemaphoreHandle, SemaphoreKind};
pub use texture::{
    Extent3d, PlaneLayout, TextureDescription, TextureDimension, TextureError, TextureFormat, TextureTiling,
    TextureUsage,
};
