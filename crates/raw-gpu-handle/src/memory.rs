use core::fmt;

use crate::{DeviceIdentity, MemoryHandleKind};

/// Property flags of the memory type an allocation came from.
///
/// The bit values are Vulkan's `VkMemoryPropertyFlagBits`, so a Vulkan importer can pass them
/// through; other APIs only read them (for example to know whether the memory is host-visible).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemoryProperties(pub u32);

impl MemoryProperties {
    /// Fastest for the device (`VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT`).
    pub const DEVICE_LOCAL: Self = Self(0x1);
    /// Mappable by the host (`VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT`).
    pub const HOST_VISIBLE: Self = Self(0x2);
    /// Host writes need no flush (`VK_MEMORY_PROPERTY_HOST_COHERENT_BIT`).
    pub const HOST_COHERENT: Self = Self(0x4);
    /// Cached on the host (`VK_MEMORY_PROPERTY_HOST_CACHED_BIT`).
    pub const HOST_CACHED: Self = Self(0x8);

    /// Whether every bit of `other` is set here.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for MemoryProperties {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for MemoryProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemoryProperties({self})")
    }
}

impl fmt::Display for MemoryProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::DEVICE_LOCAL, "DEVICE_LOCAL"),
            (Self::HOST_VISIBLE, "HOST_VISIBLE"),
            (Self::HOST_COHERENT, "HOST_COHERENT"),
            (Self::HOST_CACHED, "HOST_CACHED"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let rest = self.0 & !0xF;
        if rest != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{rest:#x}")?;
            first = false;
        }
        if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}

/// A stable identity of one exported allocation, unique per exporter for the life of the
/// machine's processes (random exporter part plus a counter). Importers key caches by it, so a
/// second buffer carved from the same allocation (a pool block) re-uses the first import.
///
/// With `serde` it travels as a 32-digit hex string, since JSON numbers cannot hold 128 bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct AllocationId(pub u128);

impl fmt::Display for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for AllocationId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for AllocationId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <alloc::borrow::Cow<'de, str>>::deserialize(d)?;
        u128::from_str_radix(&text, 16).map(AllocationId).map_err(serde::de::Error::custom)
    }
}

/// Everything an importer needs to know about an exported allocation, without its handle.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemoryDescription {
    /// How to interpret the handle.
    pub handle_kind: MemoryHandleKind,
    /// Size of the whole allocation in bytes (not of one buffer in it). CUDA
    /// (`CUDA_EXTERNAL_MEMORY_HANDLE_DESC::size`) and Vulkan (`VkMemoryAllocateInfo::allocationSize`)
    /// must be given exactly this.
    pub allocation_size: u64,
    /// The exporter's memory type index. A Vulkan importer on the same device uses it as is
    /// (`VUID-VkMemoryAllocateInfo-allocationSize-01742` requires the same type).
    pub memory_type_index: u32,
    /// The property flags of that memory type.
    pub memory_properties: MemoryProperties,
    /// Whether it is a dedicated allocation (`VkMemoryDedicatedAllocateInfo`). CUDA must then be
    /// given `CUDA_EXTERNAL_MEMORY_DEDICATED`, and a Vulkan importer must bind it to an identical
    /// resource through a dedicated import.
    pub dedicated: bool,
    /// The device and driver that made it.
    pub device: DeviceIdentity,
    /// The allocation's identity, for importers' caches. `None` where the exporter gives none.
    pub allocation_id: Option<AllocationId>,
}

/// An allocation's OS handle together with its description, generic over the handle tier
/// ([`ExportedMemory`](crate::ExportedMemory), [`BorrowedMemory`](crate::BorrowedMemory),
/// [`RawMemory`](crate::RawMemory) with `std`).
///
/// `#[non_exhaustive]`: build it with [`new`](Self::new), destructure it with `..`.
#[derive(Debug)]
#[non_exhaustive]
pub struct MemoryHandle<H> {
    /// The OS handle (owned, borrowed or raw).
    pub handle: H,
    /// What the handle holds.
    pub description: MemoryDescription,
}

impl<H> MemoryHandle<H> {
    /// Pairs an OS handle with what it holds.
    pub fn new(handle: H, description: MemoryDescription) -> Self {
        MemoryHandle { handle, description }
    }

    /// The device and driver that made the allocation.
    pub fn device(&self) -> &DeviceIdentity {
        &self.description.device
    }

    /// How to interpret the handle.
    pub fn handle_kind(&self) -> MemoryHandleKind {
        self.description.handle_kind
    }

    /// Size of the whole allocation in bytes.
    pub fn allocation_size(&self) -> u64 {
        self.description.allocation_size
    }

    /// Splits into the handle and the description.
    pub fn into_parts(self) -> (H, MemoryDescription) {
        (self.handle, self.description)
    }
}

#[cfg(all(unix, feature = "std"))]
impl<H: std::os::fd::AsFd> MemoryHandle<H> {
    /// Borrows the fd.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.handle.as_fd()
    }
}

/// Exported memory that owns its fd: dropping it closes the fd; importing consumes it.
#[cfg(all(unix, feature = "std"))]
pub type ExportedMemory = MemoryHandle<std::os::fd::OwnedFd>;
/// Exported memory whose fd is borrowed from an owner that outlives it.
#[cfg(all(unix, feature = "std"))]
pub type BorrowedMemory<'a> = MemoryHandle<std::os::fd::BorrowedFd<'a>>;
/// Exported memory as a plain fd number, for FFI; nobody owns the fd through it.
#[cfg(all(unix, feature = "std"))]
pub type RawMemory = MemoryHandle<std::os::fd::RawFd>;

#[cfg(all(unix, feature = "std"))]
impl ExportedMemory {
    /// Borrows the handle.
    pub fn as_borrowed(&self) -> BorrowedMemory<'_> {
        use std::os::fd::AsFd;
        MemoryHandle { handle: self.handle.as_fd(), description: self.description }
    }

    /// Duplicates the fd (`F_DUPFD_CLOEXEC`): the explicit way to feed a second importer.
    pub fn try_clone(&self) -> std::io::Result<ExportedMemory> {
        Ok(MemoryHandle { handle: self.handle.try_clone()?, description: self.description })
    }

    /// Gives up ownership of the fd, returning its number; the caller must close it.
    pub fn into_raw(self) -> RawMemory {
        use std::os::fd::IntoRawFd;
        MemoryHandle { handle: self.handle.into_raw_fd(), description: self.description }
    }
}

#[cfg(all(unix, feature = "std"))]
impl BorrowedMemory<'_> {
    /// Duplicates the borrowed fd into an owned export.
    pub fn try_clone_to_owned(&self) -> std::io::Result<ExportedMemory> {
        Ok(MemoryHandle { handle: self.handle.try_clone_to_owned()?, description: self.description })
    }
}

#[cfg(all(unix, feature = "std"))]
impl RawMemory {
    /// Takes ownership of a raw fd.
    ///
    /// # Safety
    /// `self.handle` must be an open fd that nothing else owns or will close.
    pub unsafe fn into_owned(self) -> ExportedMemory {
        use std::os::fd::FromRawFd;
        // SAFETY: the caller guarantees the fd is open and unowned, which is all `from_raw_fd` asks.
        let handle = unsafe { std::os::fd::OwnedFd::from_raw_fd(self.handle) };
        MemoryHandle { handle, description: self.description }
    }
}
