//! Versioned plain structs: options in, descriptions in and out.
//!
//! Every struct starts with `uint32_t struct_size`, which the caller sets to `sizeof` the struct
//! as its header declares it. The rule, for each struct:
//! - `struct_size` smaller than this library's version 1 of the struct: refused with
//!   `LAVA_FLOW_ERROR_STRUCT_SIZE` (nothing is read or written past the first field);
//! - larger (a program compiled against a newer header, run with this older library): accepted
//!   when every byte this library does not know is zero, as Linux's `copy_struct_from_user` does
//!   (a newer field left at zero asks for nothing new); refused otherwise, and refused above
//!   [`LAVA_FLOW_STRUCT_SIZE_MAX`] bytes. Output structs get the unknown bytes zeroed;
//! - fields that name an enum are `uint32_t` (any value a C caller writes is checked, never
//!   trusted as an enum), and flags are `uint32_t` 0 or 1.
//!
//! What cannot be detected: that the memory behind the pointer really is `struct_size` bytes.

use raw_gpu_handle::{
    AllocationId, DeviceIdentity, MemoryDescription, MemoryHandleKind, MemoryProperties, TextureDescription,
    TextureDimension, TextureFormat, TextureTiling, Uuid,
};

use crate::status::{CError, CResult, LavaFlowStatus};

/// The largest `struct_size` accepted: a struct of a newer header is far smaller; a larger value
/// is a wrong pointer or an uninitialised field.
pub const LAVA_FLOW_STRUCT_SIZE_MAX: u32 = 4096;

/// A struct C passes by pointer with `struct_size` first.
///
/// # Safety
/// Implementors are `#[repr(C)]`, start with a `u32` `struct_size`, and hold only integers and
/// arrays of integers, so that every bit pattern is a valid value.
pub unsafe trait Versioned: Copy + 'static {
    /// The C type's name, for messages.
    const NAME: &'static str;
    /// Sets the `struct_size` field.
    fn set_struct_size(&mut self, size: u32);
}

fn size_of<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

fn struct_size_error<T: Versioned>(given: u32, why: &str) -> CError {
    CError::new(
        LavaFlowStatus::LAVA_FLOW_ERROR_STRUCT_SIZE,
        format!(
            "{}.struct_size is {given}, {why}; this library knows version 1 of {} ({} bytes): set \
             struct_size = sizeof({}) and zero the fields you do not use",
            T::NAME,
            T::NAME,
            size_of::<T>(),
            T::NAME
        ),
    )
}

/// Reads and checks `struct_size` (see the module's rule). Returns it.
///
/// # Safety
/// `ptr` is not NULL and valid for reads of 4 bytes, and of `struct_size` bytes if that is at
/// most [`LAVA_FLOW_STRUCT_SIZE_MAX`].
unsafe fn checked_size<T: Versioned>(ptr: *const T) -> CResult<u32> {
    // SAFETY: the caller guarantees 4 readable bytes; read_unaligned needs no alignment.
    let given = unsafe { ptr.cast::<u32>().read_unaligned() };
    if given < size_of::<T>() {
        return Err(struct_size_error::<T>(given, "smaller than the struct"));
    }
    if given > LAVA_FLOW_STRUCT_SIZE_MAX {
        return Err(struct_size_error::<T>(
            given,
            &format!("above the largest accepted ({LAVA_FLOW_STRUCT_SIZE_MAX})"),
        ));
    }
    Ok(given)
}

/// Reads an input struct from C.
///
/// # Safety
/// `ptr` is NULL or valid for reads of its `struct_size` bytes (at most
/// [`LAVA_FLOW_STRUCT_SIZE_MAX`] are read).
pub unsafe fn read_in<T: Versioned>(ptr: *const T, what: &str) -> CResult<T> {
    if ptr.is_null() {
        return Err(CError::null(what));
    }
    // SAFETY: not NULL; the caller guarantees struct_size readable bytes.
    let given = unsafe { checked_size(ptr)? };
    let known = size_of::<T>() as usize;
    // SAFETY: the bytes past the known struct lie within the caller's struct_size.
    let tail = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>().add(known), given as usize - known) };
    if let Some(at) = tail.iter().position(|b| *b != 0) {
        return Err(struct_size_error::<T>(
            given,
            &format!(
                "and byte {} is not zero: it belongs to a field this library does not know (a newer header's)",
                known + at
            ),
        ));
    }
    // SAFETY: readable as checked; every bit pattern is a valid T (Versioned's contract).
    Ok(unsafe { ptr.read_unaligned() })
}

/// Writes an output struct to C, keeping the caller's `struct_size` and zeroing the bytes past
/// the known struct.
///
/// # Safety
/// `ptr` is NULL or valid for reads and writes of its `struct_size` bytes.
pub unsafe fn write_out<T: Versioned>(ptr: *mut T, mut value: T, what: &str) -> CResult {
    if ptr.is_null() {
        return Err(CError::null(what));
    }
    // SAFETY: not NULL; the caller guarantees struct_size readable bytes.
    let given = unsafe { checked_size(ptr)? };
    let known = size_of::<T>() as usize;
    value.set_struct_size(given);
    // SAFETY: the caller guarantees struct_size writable bytes, of which known + the tail are.
    unsafe {
        ptr.write_unaligned(value);
        std::ptr::write_bytes(ptr.cast::<u8>().add(known), 0, given as usize - known);
    }
    Ok(())
}

macro_rules! versioned {
    ($($t:ident),*) => {$(
        // SAFETY: #[repr(C)], `struct_size: u32` first, integer fields only (see the struct).
        unsafe impl Versioned for $t {
            const NAME: &'static str = stringify!($t);
            fn set_struct_size(&mut self, size: u32) {
                self.struct_size = size;
            }
        }
    )*};
}

/// How an exported allocation's fd is to be read (`LavaFlowBufferDesc.handle_kind`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowMemoryHandleKind {
    /// A driver-private fd: importable by the same device and driver only.
    LAVA_FLOW_MEMORY_HANDLE_OPAQUE_FD = 1,
    /// A Linux DMA-BUF.
    LAVA_FLOW_MEMORY_HANDLE_DMA_BUF = 2,
    /// A memfd holding host memory (any process may mmap it).
    LAVA_FLOW_MEMORY_HANDLE_HOST_MEMFD = 3,
}

/// What an export holds (`lava_flow_export_kind`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowObjectKind {
    /// A whole allocation.
    LAVA_FLOW_OBJECT_MEMORY = 1,
    /// A buffer in an allocation.
    LAVA_FLOW_OBJECT_BUFFER = 2,
    /// A texture in an allocation.
    LAVA_FLOW_OBJECT_TEXTURE = 3,
    /// A semaphore.
    LAVA_FLOW_OBJECT_SEMAPHORE = 4,
    /// A fence.
    LAVA_FLOW_OBJECT_FENCE = 5,
}

/// Where a buffer or image is allocated (`LavaFlowBufferOptions.memory`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowMemoryKind {
    /// Device-local memory (the default).
    LAVA_FLOW_MEMORY_DEVICE_LOCAL = 0,
    /// Host-visible device memory.
    LAVA_FLOW_MEMORY_HOST_VISIBLE = 1,
    /// A memfd imported into the device (buffers only), exported as that memfd.
    LAVA_FLOW_MEMORY_SHARED_HOST = 2,
}

/// Texel formats (`LavaFlowImageOptions.format`, `LavaFlowTextureDesc.format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowTextureFormat {
    /// 8-bit red, normalized.
    LAVA_FLOW_FORMAT_R8_UNORM = 1,
    /// 8-bit red and green, normalized.
    LAVA_FLOW_FORMAT_RG8_UNORM = 2,
    /// 8-bit RGBA, normalized.
    LAVA_FLOW_FORMAT_RGBA8_UNORM = 3,
    /// 8-bit RGBA, unsigned integer.
    LAVA_FLOW_FORMAT_RGBA8_UINT = 4,
    /// 16-bit float red.
    LAVA_FLOW_FORMAT_R16_FLOAT = 5,
    /// 16-bit float RGBA.
    LAVA_FLOW_FORMAT_RGBA16_FLOAT = 6,
    /// 32-bit unsigned red.
    LAVA_FLOW_FORMAT_R32_UINT = 7,
    /// 32-bit float red.
    LAVA_FLOW_FORMAT_R32_FLOAT = 8,
    /// 32-bit float red and green.
    LAVA_FLOW_FORMAT_RG32_FLOAT = 9,
    /// 32-bit float RGBA.
    LAVA_FLOW_FORMAT_RGBA32_FLOAT = 10,
    /// 32-bit unsigned RGBA.
    LAVA_FLOW_FORMAT_RGBA32_UINT = 11,
}

/// How a texture's texels are laid out (`LavaFlowTextureDesc.tiling`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowTiling {
    /// Rows one after another (`row_pitch` apart).
    LAVA_FLOW_TILING_LINEAR = 1,
    /// The driver's own layout.
    LAVA_FLOW_TILING_OPTIMAL = 2,
    /// A DRM format modifier (`drm_modifier`).
    LAVA_FLOW_TILING_DRM_MODIFIER = 3,
}

/// A device and driver, as exports name them. Not versioned: UUIDs do not grow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LavaFlowDeviceIdentity {
    /// `VkPhysicalDeviceIDProperties::deviceUUID` (CUDA's and OpenCL's device UUID match it).
    pub device_uuid: [u8; 16],
    /// `VkPhysicalDeviceIDProperties::driverUUID`.
    pub driver_uuid: [u8; 16],
    /// The device LUID where `has_luid` is 1.
    pub luid: [u8; 8],
    /// 1 when `luid` is set, else 0.
    pub has_luid: u32,
    /// Zero.
    pub reserved: u32,
}

impl From<DeviceIdentity> for LavaFlowDeviceIdentity {
    fn from(d: DeviceIdentity) -> Self {
        LavaFlowDeviceIdentity {
            device_uuid: d.device_uuid.0,
            driver_uuid: d.driver_uuid.0,
            luid: d.luid.unwrap_or_default(),
            has_luid: d.luid.is_some() as u32,
            reserved: 0,
        }
    }
}

impl LavaFlowDeviceIdentity {
    /// The identity, checking the flag.
    pub fn to_rust(self) -> CResult<DeviceIdentity> {
        let luid = match self.has_luid {
            0 => None,
            1 => Some(self.luid),
            other => return Err(CError::invalid(format!("LavaFlowDeviceIdentity.has_luid is {other}: use 0 or 1"))),
        };
        Ok(DeviceIdentity { device_uuid: Uuid(self.device_uuid), driver_uuid: Uuid(self.driver_uuid), luid })
    }
}

/// A buffer in an exported allocation: everything an importer needs besides the fd. Filled by
/// `lava_flow_export_buffer_desc`; read by `lava_flow_export_from_fd` (another transport carried
/// it). Version 1: 120 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LavaFlowBufferDesc {
    /// `sizeof(LavaFlowBufferDesc)`.
    pub struct_size: u32,
    /// One of `LavaFlowMemoryHandleKind`.
    pub handle_kind: u32,
    /// Size of the whole allocation (not of the buffer).
    pub allocation_size: u64,
    /// The exporter's Vulkan memory type index.
    pub memory_type_index: u32,
    /// `VkMemoryPropertyFlags` of that type.
    pub memory_properties: u32,
    /// 1 for a dedicated allocation, else 0.
    pub dedicated: u32,
    /// 1 when `allocation_id` is set, else 0.
    pub has_allocation_id: u32,
    /// The allocation's identity (importers' caches), little-endian.
    pub allocation_id: [u8; 16],
    /// The exporter.
    pub device: LavaFlowDeviceIdentity,
    /// The buffer's offset in the allocation.
    pub offset: u64,
    /// The buffer's size.
    pub size: u64,
    /// The buffer's required alignment.
    pub alignment: u64,
}

/// A texture in an exported allocation (output only in version 1). Version 1: 160 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LavaFlowTextureDesc {
    /// `sizeof(LavaFlowTextureDesc)`.
    pub struct_size: u32,
    /// One of `LavaFlowMemoryHandleKind`.
    pub handle_kind: u32,
    /// Size of the whole allocation.
    pub allocation_size: u64,
    /// The exporter's Vulkan memory type index.
    pub memory_type_index: u32,
    /// `VkMemoryPropertyFlags` of that type.
    pub memory_properties: u32,
    /// 1 for a dedicated allocation, else 0.
    pub dedicated: u32,
    /// 1 when `allocation_id` is set, else 0.
    pub has_allocation_id: u32,
    /// The allocation's identity, little-endian.
    pub allocation_id: [u8; 16],
    /// The exporter.
    pub device: LavaFlowDeviceIdentity,
    /// One of `LavaFlowTextureFormat`.
    pub format: u32,
    /// 1: 1D, 2: 1D array, 3: 2D, 4: 2D array, 5: 3D.
    pub dimension: u32,
    /// Width in texels.
    pub width: u32,
    /// Height in texels.
    pub height: u32,
    /// Depth in texels.
    pub depth: u32,
    /// Array layers.
    pub array_layers: u32,
    /// One of `LavaFlowTiling`.
    pub tiling: u32,
    /// Zero.
    pub reserved: u32,
    /// Bytes between rows (linear tiling), else 0.
    pub row_pitch: u64,
    /// The DRM format modifier (DRM-modifier tiling), else 0.
    pub drm_modifier: u64,
    /// The texture's offset in the allocation.
    pub offset: u64,
    /// The texture's size in the allocation.
    pub size: u64,
}

versioned!(LavaFlowBufferDesc, LavaFlowTextureDesc);

pub(crate) fn handle_kind_code(kind: MemoryHandleKind) -> u32 {
    match kind {
        MemoryHandleKind::OpaqueFd => LavaFlowMemoryHandleKind::LAVA_FLOW_MEMORY_HANDLE_OPAQUE_FD as u32,
        MemoryHandleKind::DmaBuf => LavaFlowMemoryHandleKind::LAVA_FLOW_MEMORY_HANDLE_DMA_BUF as u32,
        MemoryHandleKind::HostMemfd => LavaFlowMemoryHandleKind::LAVA_FLOW_MEMORY_HANDLE_HOST_MEMFD as u32,
        // Kinds of other platforms do not reach a Linux build.
        #[allow(unreachable_patterns)]
        _ => 0,
    }
}

pub(crate) fn handle_kind_from(code: u32) -> CResult<MemoryHandleKind> {
    Ok(match code {
        1 => MemoryHandleKind::OpaqueFd,
        2 => MemoryHandleKind::DmaBuf,
        3 => MemoryHandleKind::HostMemfd,
        other => {
            return Err(CError::invalid(format!(
                "handle_kind {other} is no LavaFlowMemoryHandleKind: use LAVA_FLOW_MEMORY_HANDLE_OPAQUE_FD (1), \
                 _DMA_BUF (2) or _HOST_MEMFD (3)"
            )))
        }
    })
}

pub(crate) const FORMATS: [TextureFormat; 11] = TextureFormat::ALL;

pub(crate) fn format_code(format: TextureFormat) -> u32 {
    FORMATS.iter().position(|f| *f == format).map_or(0, |i| i as u32 + 1)
}

pub(crate) fn format_from(code: u32) -> CResult<TextureFormat> {
    (code as usize).checked_sub(1).and_then(|i| FORMATS.get(i).copied()).ok_or_else(|| {
        CError::invalid(format!("format {code} is no LavaFlowTextureFormat: use a value from 1 to {}", FORMATS.len()))
    })
}

/// The memory part of a description, as the flat C fields.
pub(crate) struct MemoryFields {
    pub handle_kind: u32,
    pub allocation_size: u64,
    pub memory_type_index: u32,
    pub memory_properties: u32,
    pub dedicated: u32,
    pub has_allocation_id: u32,
    pub allocation_id: [u8; 16],
    pub device: LavaFlowDeviceIdentity,
}

impl From<&MemoryDescription> for MemoryFields {
    fn from(m: &MemoryDescription) -> Self {
        MemoryFields {
            handle_kind: handle_kind_code(m.handle_kind),
            allocation_size: m.allocation_size,
            memory_type_index: m.memory_type_index,
            memory_properties: m.memory_properties.0,
            dedicated: m.dedicated as u32,
            has_allocation_id: m.allocation_id.is_some() as u32,
            allocation_id: m.allocation_id.map_or([0; 16], |id| id.0.to_le_bytes()),
            device: m.device.into(),
        }
    }
}

fn flag(name: &str, value: u32) -> CResult<bool> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(CError::invalid(format!("{name} is {other}: use 0 or 1"))),
    }
}

impl LavaFlowBufferDesc {
    /// The description of a buffer in `memory`.
    pub(crate) fn new(memory: &MemoryDescription, offset: u64, size: u64, alignment: u64) -> Self {
        let m = MemoryFields::from(memory);
        LavaFlowBufferDesc {
            struct_size: size_of::<Self>(),
            handle_kind: m.handle_kind,
            allocation_size: m.allocation_size,
            memory_type_index: m.memory_type_index,
            memory_properties: m.memory_properties,
            dedicated: m.dedicated,
            has_allocation_id: m.has_allocation_id,
            allocation_id: m.allocation_id,
            device: m.device,
            offset,
            size,
            alignment,
        }
    }

    /// The Rust descriptions, every field checked.
    pub(crate) fn to_rust(self) -> CResult<(MemoryDescription, raw_gpu_handle::BufferDescription)> {
        let memory = MemoryDescription {
            handle_kind: handle_kind_from(self.handle_kind)?,
            allocation_size: self.allocation_size,
            memory_type_index: self.memory_type_index,
            memory_properties: MemoryProperties(self.memory_properties),
            dedicated: flag("LavaFlowBufferDesc.dedicated", self.dedicated)?,
            device: self.device.to_rust()?,
            allocation_id: flag("LavaFlowBufferDesc.has_allocation_id", self.has_allocation_id)?
                .then(|| AllocationId(u128::from_le_bytes(self.allocation_id))),
        };
        let end = self.offset.checked_add(self.size);
        if self.size == 0 || end.is_none_or(|end| end > self.allocation_size) {
            return Err(CError::invalid(format!(
                "LavaFlowBufferDesc: a buffer of {} bytes at offset {} does not fit in an allocation of {} bytes: \
                 pass the description the exporter gave, unchanged",
                self.size, self.offset, self.allocation_size
            )));
        }
        let buffer =
            raw_gpu_handle::BufferDescription { offset: self.offset, size: self.size, alignment: self.alignment };
        Ok((memory, buffer))
    }
}

impl LavaFlowTextureDesc {
    /// The description of a texture in `memory`.
    pub(crate) fn new(memory: &MemoryDescription, t: &TextureDescription) -> Self {
        let m = MemoryFields::from(memory);
        let (tiling, row_pitch, drm_modifier) = match &t.tiling {
            TextureTiling::Linear { row_pitch, .. } => (LavaFlowTiling::LAVA_FLOW_TILING_LINEAR, *row_pitch, 0),
            TextureTiling::Optimal => (LavaFlowTiling::LAVA_FLOW_TILING_OPTIMAL, 0, 0),
            TextureTiling::DrmModifier { modifier, .. } => {
                (LavaFlowTiling::LAVA_FLOW_TILING_DRM_MODIFIER, 0, *modifier)
            }
        };
        let dimension = match t.dimension {
            TextureDimension::D1 => 1,
            TextureDimension::D1Array => 2,
            TextureDimension::D2 => 3,
            TextureDimension::D2Array => 4,
            TextureDimension::D3 => 5,
        };
        LavaFlowTextureDesc {
            struct_size: size_of::<Self>(),
            handle_kind: m.handle_kind,
            allocation_size: m.allocation_size,
            memory_type_index: m.memory_type_index,
            memory_properties: m.memory_properties,
            dedicated: m.dedicated,
            has_allocation_id: m.has_allocation_id,
            allocation_id: m.allocation_id,
            device: m.device,
            format: format_code(t.format),
            dimension,
            width: t.extent.width,
            height: t.extent.height,
            depth: t.extent.depth,
            array_layers: t.array_layers,
            tiling: tiling as u32,
            reserved: 0,
            row_pitch,
            drm_modifier,
            offset: t.offset,
            size: t.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_one_sizes_are_what_the_docs_say() {
        assert_eq!(std::mem::size_of::<LavaFlowBufferDesc>(), 120);
        assert_eq!(std::mem::size_of::<LavaFlowTextureDesc>(), 160);
        assert_eq!(std::mem::size_of::<LavaFlowDeviceIdentity>(), 48);
    }

    #[test]
    fn struct_size_rules() {
        let mut big = [0u8; 200];
        let desc = LavaFlowBufferDesc { struct_size: 200, size: 7, ..Default::default() };
        // SAFETY: LavaFlowBufferDesc is 120 bytes of plain integers; big holds 200.
        unsafe {
            std::ptr::copy_nonoverlapping((&desc as *const LavaFlowBufferDesc).cast::<u8>(), big.as_mut_ptr(), 120)
        };
        // SAFETY: big holds struct_size (200) readable bytes.
        let read = unsafe { read_in(big.as_ptr().cast::<LavaFlowBufferDesc>(), "desc") }.unwrap();
        assert_eq!(read.size, 7);
        big[150] = 1;
        // SAFETY: as above.
        let e = unsafe { read_in(big.as_ptr().cast::<LavaFlowBufferDesc>(), "desc") }.unwrap_err();
        assert_eq!(e.status, LavaFlowStatus::LAVA_FLOW_ERROR_STRUCT_SIZE);
        assert!(e.message.contains("byte 150"), "{}", e.message);
        let small = LavaFlowBufferDesc { struct_size: 8, ..Default::default() };
        // SAFETY: a whole struct.
        let e = unsafe { read_in(&small, "desc") }.unwrap_err();
        assert_eq!(e.status, LavaFlowStatus::LAVA_FLOW_ERROR_STRUCT_SIZE);
        // Output: the tail is zeroed and struct_size kept.
        big.fill(0xff);
        big[..4].copy_from_slice(&200u32.to_le_bytes());
        // SAFETY: 200 writable bytes.
        unsafe { write_out(big.as_mut_ptr().cast::<LavaFlowBufferDesc>(), desc, "out") }.unwrap();
        assert_eq!(&big[..4], &200u32.to_le_bytes());
        assert!(big[120..].iter().all(|b| *b == 0));
    }
}
