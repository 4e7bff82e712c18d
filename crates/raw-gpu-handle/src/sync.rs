use crate::{DeviceIdentity, FenceHandleKind, SemaphoreHandleKind};

/// Binary or timeline semaphore.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum SemaphoreKind {
    /// Signalled once, waited once (`VK_SEMAPHORE_TYPE_BINARY`; the only kind GL and OpenCL have).
    Binary,
    /// A 64-bit counter that only grows (`VK_SEMAPHORE_TYPE_TIMELINE`; CUDA's
    /// `TIMELINE_SEMAPHORE_FD`). Shared timeline semaphores should be signalled on the device only.
    Timeline,
}

/// What an exported semaphore is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SemaphoreDescription {
    /// Binary or timeline.
    pub kind: SemaphoreKind,
    /// How to interpret the handle.
    pub handle_kind: SemaphoreHandleKind,
    /// The device and driver that made it.
    pub device: DeviceIdentity,
}

/// A semaphore's handle with its description.
#[derive(Debug)]
pub struct Semaphore<H> {
    /// The OS handle.
    pub handle: H,
    /// What it is.
    pub description: SemaphoreDescription,
}

/// What an exported fence is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FenceDescription {
    /// How to interpret the handle.
    pub handle_kind: FenceHandleKind,
    /// The device and driver that made it.
    pub device: DeviceIdentity,
}

/// A fence's handle with its description.
#[derive(Debug)]
pub struct Fence<H> {
    /// The OS handle.
    pub handle: H,
    /// What it is.
    pub description: FenceDescription,
}

/// An exported semaphore owning its fd.
#[cfg(unix)]
pub type ExportedSemaphore = Semaphore<std::os::fd::OwnedFd>;
/// An exported fence owning its fd.
#[cfg(unix)]
pub type ExportedFence = Fence<std::os::fd::OwnedFd>;

#[cfg(unix)]
impl ExportedSemaphore {
    /// Duplicates the fd.
    pub fn try_clone(&self) -> std::io::Result<ExportedSemaphore> {
        Ok(Semaphore { handle: self.handle.try_clone()?, description: self.description })
    }
}
