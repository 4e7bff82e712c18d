use core::fmt;

/// How an allocation's OS handle is to be interpreted by the importer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum MemoryHandleKind {
    /// A driver-private fd (`VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT`,
    /// `CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD`, `GL_HANDLE_TYPE_OPAQUE_FD_EXT`,
    /// `CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR`). Importable only by the same device and driver.
    OpaqueFd,
    /// A Linux DMA-BUF fd (`VK_EXTERNAL_MEMORY_HANDLE_TYPE_DMA_BUF_BIT_EXT`); may cross drivers.
    DmaBuf,
    /// A memfd (or any mmap-able fd) holding host memory, imported into Vulkan with
    /// `VK_EXT_external_memory_host`. Any process may `mmap` it; no device identity is needed.
    HostMemfd,
    /// A Windows NT handle (`VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_WIN32_BIT`).
    #[cfg(windows)]
    OpaqueWin32,
}

impl MemoryHandleKind {
    /// Whether importing needs the exporter's device and driver UUIDs to match the importer's.
    pub fn requires_same_driver(self) -> bool {
        match self {
            MemoryHandleKind::OpaqueFd => true,
            #[cfg(windows)]
            MemoryHandleKind::OpaqueWin32 => true,
            MemoryHandleKind::DmaBuf | MemoryHandleKind::HostMemfd => false,
        }
    }

    /// A short stable name, as used in tables and the wire protocol.
    pub fn name(self) -> &'static str {
        match self {
            MemoryHandleKind::OpaqueFd => "opaque-fd",
            MemoryHandleKind::DmaBuf => "dma-buf",
            MemoryHandleKind::HostMemfd => "host-memfd",
            #[cfg(windows)]
            MemoryHandleKind::OpaqueWin32 => "opaque-win32",
        }
    }
}

impl fmt::Display for MemoryHandleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a semaphore's OS handle is to be interpreted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum SemaphoreHandleKind {
    /// `VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD_BIT`; CUDA's `OPAQUE_FD` (binary) or
    /// `TIMELINE_SEMAPHORE_FD` (timeline), GL's `GL_HANDLE_TYPE_OPAQUE_FD_EXT`, OpenCL's
    /// `CL_SEMAPHORE_HANDLE_OPAQUE_FD_KHR`. Reference semantics: the fd names the semaphore itself.
    OpaqueFd,
    /// `VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_SYNC_FD_BIT`: a Linux sync_file holding one pending
    /// signal (copy semantics, binary semaphores only).
    SyncFd,
}

impl SemaphoreHandleKind {
    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            SemaphoreHandleKind::OpaqueFd => "opaque-fd",
            SemaphoreHandleKind::SyncFd => "sync-fd",
        }
    }
}

impl fmt::Display for SemaphoreHandleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a fence's OS handle is to be interpreted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum FenceHandleKind {
    /// `VK_EXTERNAL_FENCE_HANDLE_TYPE_OPAQUE_FD_BIT` (reference semantics).
    OpaqueFd,
    /// `VK_EXTERNAL_FENCE_HANDLE_TYPE_SYNC_FD_BIT` (a sync_file, copy semantics).
    SyncFd,
}

impl FenceHandleKind {
    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            FenceHandleKind::OpaqueFd => "opaque-fd",
            FenceHandleKind::SyncFd => "sync-fd",
        }
    }
}

impl fmt::Display for FenceHandleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The owned OS handle of this platform (`OwnedFd` on Unix).
#[cfg(all(unix, feature = "std"))]
pub type OwnedHandle = std::os::fd::OwnedFd;
/// The borrowed OS handle of this platform (`BorrowedFd` on Unix).
#[cfg(all(unix, feature = "std"))]
pub type BorrowedHandle<'a> = std::os::fd::BorrowedFd<'a>;
/// The raw OS handle of this platform (`RawFd` on Unix): a number nobody owns.
#[cfg(all(unix, feature = "std"))]
pub type RawHandle = std::os::fd::RawFd;
