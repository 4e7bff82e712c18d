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

/// A semaphore's OS handle (of tier `H`) with its description
/// ([`ExportedSemaphore`](crate::ExportedSemaphore) owns its fd).
///
/// `#[non_exhaustive]`: build it with [`new`](Self::new), destructure it with `..`.
#[derive(Debug)]
#[non_exhaustive]
pub struct SemaphoreHandle<H> {
    /// The OS handle.
    pub handle: H,
    /// What it is.
    pub description: SemaphoreDescription,
}

impl<H> SemaphoreHandle<H> {
    /// Pairs an OS handle with what it is.
    pub fn new(handle: H, description: SemaphoreDescription) -> Self {
        SemaphoreHandle { handle, description }
    }

    /// The device and driver that made the semaphore.
    pub fn device(&self) -> &DeviceIdentity {
        &self.description.device
    }

    /// Binary or timeline.
    pub fn kind(&self) -> SemaphoreKind {
        self.description.kind
    }

    /// How to interpret the handle.
    pub fn handle_kind(&self) -> SemaphoreHandleKind {
        self.description.handle_kind
    }

    /// Splits into the handle and the description.
    pub fn into_parts(self) -> (H, SemaphoreDescription) {
        (self.handle, self.description)
    }
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

/// A fence's OS handle (of tier `H`) with its description
/// ([`ExportedFence`](crate::ExportedFence) owns its fd).
///
/// `#[non_exhaustive]`: build it with [`new`](Self::new), destructure it with `..`.
#[derive(Debug)]
#[non_exhaustive]
pub struct FenceHandle<H> {
    /// The OS handle.
    pub handle: H,
    /// What it is.
    pub description: FenceDescription,
}

impl<H> FenceHandle<H> {
    /// Pairs an OS handle with what it is.
    pub fn new(handle: H, description: FenceDescription) -> Self {
        FenceHandle { handle, description }
    }

    /// The device and driver that made the fence.
    pub fn device(&self) -> &DeviceIdentity {
        &self.description.device
    }

    /// How to interpret the handle.
    pub fn handle_kind(&self) -> FenceHandleKind {
        self.description.handle_kind
    }

    /// Splits into the handle and the description.
    pub fn into_parts(self) -> (H, FenceDescription) {
        (self.handle, self.description)
    }
}

#[cfg(all(unix, feature = "std"))]
impl<H: std::os::fd::AsFd> SemaphoreHandle<H> {
    /// Borrows the fd.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.handle.as_fd()
    }
}

#[cfg(all(unix, feature = "std"))]
impl<H: std::os::fd::AsFd> FenceHandle<H> {
    /// Borrows the fd.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.handle.as_fd()
    }
}

/// An exported semaphore owning its fd.
#[cfg(all(unix, feature = "std"))]
pub type ExportedSemaphore = SemaphoreHandle<std::os::fd::OwnedFd>;
/// An exported fence owning its fd.
#[cfg(all(unix, feature = "std"))]
pub type ExportedFence = FenceHandle<std::os::fd::OwnedFd>;

#[cfg(all(unix, feature = "std"))]
impl ExportedSemaphore {
    /// Duplicates the fd.
    pub fn try_clone(&self) -> std::io::Result<ExportedSemaphore> {
        Ok(SemaphoreHandle { handle: self.handle.try_clone()?, description: self.description })
    }
}

#[cfg(all(unix, feature = "std"))]
impl ExportedFence {
    /// Duplicates the fd.
    pub fn try_clone(&self) -> std::io::Result<ExportedFence> {
        Ok(FenceHandle { handle: self.handle.try_clone()?, description: self.description })
    }
}
