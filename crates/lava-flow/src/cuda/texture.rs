//! Vulkan images seen by CUDA: optimal tiling as mipmapped arrays, linear tiling as pitched
//! memory.
//!
//! CUDA arrays have the driver's private (block-linear) layout, which is what an optimal-tiled
//! Vulkan image on the same driver has too, so `cuExternalMemoryGetMappedMipmappedArray` gives
//! CUDA the image itself. A linear-tiled image is row-major with Vulkan's pitches: no CUDA array
//! has that layout, so it is mapped as a buffer and described by its pitches instead (usable with
//! `cuMemcpy2D`/`3D` and `CU_RESOURCE_TYPE_PITCH2D` texture objects).

use raw_gpu_handle::{ExportedTexture, TextureDescription, TextureDimension, TextureFormat, TextureTiling};

use super::{check, cu_error, CudaBuffer, CudaDevice, ImportedMemory};
use cudarc::driver::sys;

use crate::{Error, Result};

/// The CUDA array format and channel count of a texture format. 8-bit normalized formats are
/// 8-bit unsigned integers to CUDA (normalization is a texture-object setting), as in NVIDIA's
/// Vulkan interop samples.
pub fn array_format(format: TextureFormat) -> Option<(sys::CUarray_format, u32)> {
    use sys::CUarray_format::*;
    use TextureFormat::*;
    Some(match format {
        R8Unorm => (CU_AD_FORMAT_UNSIGNED_INT8, 1),
        Rg8Unorm => (CU_AD_FORMAT_UNSIGNED_INT8, 2),
        Rgba8Unorm | Rgba8Uint => (CU_AD_FORMAT_UNSIGNED_INT8, 4),
        R16Float => (CU_AD_FORMAT_HALF, 1),
        Rgba16Float => (CU_AD_FORMAT_HALF, 4),
        R32Uint => (CU_AD_FORMAT_UNSIGNED_INT32, 1),
        R32Float => (CU_AD_FORMAT_FLOAT, 1),
        Rg32Float => (CU_AD_FORMAT_FLOAT, 2),
        Rgba32Float => (CU_AD_FORMAT_FLOAT, 4),
        Rgba32Uint => (CU_AD_FORMAT_UNSIGNED_INT32, 4),
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// The `CUDA_ARRAY3D_DESCRIPTOR` of a Vulkan image (`cuMipmappedArrayCreate`'s rules: 1D has
/// height and depth 0, 2D depth 0, layered arrays carry the layer count in depth and
/// `CUDA_ARRAY3D_LAYERED`).
pub(crate) fn array_descriptor(desc: &TextureDescription) -> Result<sys::CUDA_ARRAY3D_DESCRIPTOR> {
    let Some((format, channels)) = array_format(desc.format) else {
        return Err(Error::unsupported(
            format!("a {} texture in CUDA", desc.format),
            "no CUDA array format matches it",
            "CUarray_format",
            "use one of raw_gpu_handle::TextureFormat::ALL",
        ));
    };
    let e = desc.extent;
    let (height, depth) = match desc.dimension {
        TextureDimension::D1 => (0, 0),
        TextureDimension::D1Array => (0, desc.array_layers),
        TextureDimension::D2 => (e.height, 0),
        TextureDimension::D2Array => (e.height, desc.array_layers),
        TextureDimension::D3 => (e.height, e.depth),
    };
    let mut flags = 0;
    if desc.dimension.is_array() {
        flags |= sys::CUDA_ARRAY3D_LAYERED;
    }
    if desc.usage.color_attachment {
        // CUDA docs (cuExternalMemoryGetMappedMipmappedArray): required for render targets.
        flags |= sys::CUDA_ARRAY3D_COLOR_ATTACHMENT;
    }
    if desc.usage.storage {
        flags |= sys::CUDA_ARRAY3D_SURFACE_LDST;
    }
    Ok(sys::CUDA_ARRAY3D_DESCRIPTOR {
        Width: e.width as usize,
        Height: height as usize,
        Depth: depth as usize,
        Format: format,
        NumChannels: channels,
        Flags: flags,
    })
}

/// How CUDA sees an imported texture.
pub enum TextureStorage {
    /// An optimal-tiled image: a one-level mipmapped array and its level 0.
    Array {
        /// The mipmapped array (`cuExternalMemoryGetMappedMipmappedArray`).
        mipmapped: sys::CUmipmappedArray,
        /// Level 0 (`cuMipmappedArrayGetLevel`): the image, for copies, textures and surfaces.
        level0: sys::CUarray,
    },
    /// A linear-tiled image: its bytes with Vulkan's pitches.
    Pitched {
        /// The image's bytes (offset 0 is texel (0, 0) of layer 0).
        buffer: CudaBuffer<u8>,
        /// Bytes between rows.
        row_pitch: u64,
        /// Bytes between array layers (or 3D slices).
        slice_pitch: u64,
    },
}

/// An imported Vulkan image. Holds its [`ImportedMemory`], so the import outlives it.
pub struct CudaTexture {
    memory: ImportedMemory,
    description: TextureDescription,
    storage: TextureStorage,
}

// SAFETY: CUDA array handles are driver handles, not tied to a thread; the driver API is thread
// safe and lava-flow binds the context before each call; the Pitched variant is Send itself.
unsafe impl Send for CudaTexture {}
// SAFETY: as for Send; no method mutates the handles through &CudaTexture.
unsafe impl Sync for CudaTexture {}

impl std::fmt::Debug for CudaTexture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaTexture")
            .field("description", &self.description)
            .field("array", &matches!(self.storage, TextureStorage::Array { .. }))
            .finish()
    }
}

impl Drop for CudaTexture {
    fn drop(&mut self) {
        if let TextureStorage::Array { mipmapped, .. } = self.storage {
            let device = self.memory.device();
            if !device.bind_for_drop("a mapped mipmapped array") {
                return;
            }
            // SAFETY: the array came from cuExternalMemoryGetMappedMipmappedArray (CUDA: free it with
            // cuMipmappedArrayDestroy) and is destroyed only here, once; its import is still alive
            // (self.memory drops after this); the context was bound just above.
            let r = unsafe { sys::cuMipmappedArrayDestroy(mipmapped) };
            if r != sys::CUresult::CUDA_SUCCESS {
                device.defer_error(cu_error("cuMipmappedArrayDestroy", r, "releasing a mapped mipmapped array"));
            }
        }
    }
}

/// Bytes of one tightly packed row, the number of rows per layer and the number of layers or
/// slices, for copies.
fn packed_shape(desc: &TextureDescription) -> (usize, usize, usize) {
    let row = desc.extent.width as usize * desc.format.texel_size() as usize;
    let rows = match desc.dimension {
        TextureDimension::D1 | TextureDimension::D1Array => 1,
        _ => desc.extent.height as usize,
    };
    let layers = match desc.dimension {
        TextureDimension::D3 => desc.extent.depth as usize,
        _ => desc.array_layers as usize,
    };
    (row, rows, layers)
}

/// Bytes a pitched layout of `layers` slices of `rows` rows spans, or `None` where the slices
/// overlap (a slice pitch below a slice's rows) or the size overflows 64 bits. Checked arithmetic:
/// the pitches come from another process's description, and a wrapped product would let copies
/// run past the mapping.
fn pitched_bytes(rows: usize, layers: usize, row_pitch: u64, slice_pitch: u64) -> Option<u64> {
    let layer_bytes = (rows as u64).checked_mul(row_pitch)?;
    if layers > 1 && slice_pitch < layer_bytes {
        return None;
    }
    (layers as u64).saturating_sub(1).checked_mul(slice_pitch)?.checked_add(layer_bytes)
}

impl CudaTexture {
    pub(crate) fn import(device: &CudaDevice, texture: ExportedTexture) -> Result<CudaTexture> {
        // Check everything that can be checked before the fd is consumed; early returns drop it.
        let desc = texture.texture;
        desc.validate()
            .map_err(|e| Error::invalid("texture description", e.0, "pass the description exactly as exported"))?;
        let total = texture.memory.description.allocation_size;
        if desc.offset.checked_add(desc.size).is_none_or(|end| end > total) {
            return Err(Error::invalid(
                format!("texture of {} bytes at offset {}", desc.size, desc.offset),
                format!("its allocation holds {total} bytes"),
                "pass the description exactly as exported",
            ));
        }
        match &desc.tiling {
            TextureTiling::Optimal => {
                let array_desc = array_descriptor(&desc)?;
                let memory = device.import_memory(texture.memory)?;
                Self::map_array(memory, desc, array_desc)
            }
            TextureTiling::Linear { row_pitch, array_pitch, depth_pitch } => {
                let (row_pitch, array_pitch, depth_pitch) = (*row_pitch, *array_pitch, *depth_pitch);
                let slice_pitch = match desc.dimension {
                    TextureDimension::D3 => depth_pitch,
                    TextureDimension::D1Array | TextureDimension::D2Array => array_pitch,
                    _ => 0,
                };
                let (_, rows, layers) = packed_shape(&desc);
                let needed = pitched_bytes(rows, layers, row_pitch, slice_pitch);
                if needed.is_none_or(|n| n > desc.size) {
                    let needed = needed.map_or("an impossible layout".to_string(), |n| n.to_string());
                    return Err(Error::invalid(
                        "linear texture pitches",
                        format!(
                            "row pitch {row_pitch} and slice pitch {slice_pitch} for {rows} rows and {layers} \
                             layers need {needed} bytes; the texture has {}",
                            desc.size
                        ),
                        "pass the layout Vulkan reported (vkGetImageSubresourceLayout)",
                    ));
                }
                let memory = device.import_memory(texture.memory)?;
                let buffer = memory.map_buffer(desc.offset, desc.size)?;
                Ok(CudaTexture {
                    memory,
                    description: desc,
                    storage: TextureStorage::Pitched { buffer, row_pitch, slice_pitch },
                })
            }
            TextureTiling::DrmModifier { modifier, .. } => Err(Error::unsupported(
                format!("a texture with DRM format modifier {modifier:#x} in CUDA"),
                "CUDA imports opaque-fd images as mipmapped arrays (optimal tiling) only",
                "cuExternalMemoryGetMappedMipmappedArray",
                "export the image with optimal or linear tiling",
            )),
        }
    }

    fn map_array(
        memory: ImportedMemory,
        description: TextureDescription,
        array_desc: sys::CUDA_ARRAY3D_DESCRIPTOR,
    ) -> Result<CudaTexture> {
        let device = memory.device().clone();
        device.bind()?;
        let mip_desc = sys::CUDA_EXTERNAL_MEMORY_MIPMAPPED_ARRAY_DESC {
            offset: description.offset,
            arrayDesc: array_desc,
            numLevels: 1,
            reserved: [0; 16],
        };
        let mut mipmapped: sys::CUmipmappedArray = std::ptr::null_mut();
        // SAFETY: bind() made the context current; the import is alive (`memory`); mip_desc is fully
        // initialised, its offset and the texture's size lie inside the allocation (checked in import),
        // and the array's extent comes from a validated description; `mipmapped` is a valid out-pointer.
        let r = unsafe { sys::cuExternalMemoryGetMappedMipmappedArray(&mut mipmapped, memory.raw(), &mip_desc) };
        check(r, "cuExternalMemoryGetMappedMipmappedArray", || {
            format!(
                "mapping a {}x{}x{} {} {:?} image with {} layers (flags {:#x})",
                description.extent.width,
                description.extent.height,
                description.extent.depth,
                description.format,
                description.dimension,
                description.array_layers,
                array_desc.Flags
            )
        })?;
        let mut level0: sys::CUarray = std::ptr::null_mut();
        // SAFETY: mipmapped is the live one-level array made just above; level 0 exists; `level0` is a
        // valid out-pointer.
        let r = unsafe { sys::cuMipmappedArrayGetLevel(&mut level0, mipmapped, 0) };
        if let Err(e) = check(r, "cuMipmappedArrayGetLevel", || "reading level 0 of a mapped image".into()) {
            // SAFETY: mipmapped was just created, is not stored anywhere, and is destroyed only here.
            unsafe { sys::cuMipmappedArrayDestroy(mipmapped) };
            return Err(e);
        }
        Ok(CudaTexture { memory, description, storage: TextureStorage::Array { mipmapped, level0 } })
    }

    /// The texture's description.
    pub fn description(&self) -> &TextureDescription {
        &self.description
    }

    /// How CUDA sees it (array or pitched memory).
    pub fn storage(&self) -> &TextureStorage {
        &self.storage
    }

    /// Level 0 as a CUDA array, for optimal-tiled images; `None` for linear ones.
    pub fn array(&self) -> Option<sys::CUarray> {
        match self.storage {
            TextureStorage::Array { level0, .. } => Some(level0),
            TextureStorage::Pitched { .. } => None,
        }
    }

    /// The import it is mapped from.
    pub fn memory(&self) -> &ImportedMemory {
        &self.memory
    }

    /// Size of [`copy_from_host`](Self::copy_from_host)'s data: tightly packed texels of every
    /// layer (or 3D slice), layer after layer.
    pub fn packed_size(&self) -> usize {
        let (row, rows, layers) = packed_shape(&self.description);
        row * rows * layers
    }

    /// Copies tightly packed texels (all layers) into the image and waits.
    pub fn copy_from_host(&self, data: &[u8]) -> Result<()> {
        self.copy(Direction::Upload(data))
    }

    /// Copies the image out as tightly packed texels (all layers) and waits.
    pub fn copy_to_host(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.packed_size()];
        self.copy(Direction::Download(&mut out))?;
        Ok(out)
    }

    fn copy(&self, dir: Direction<'_>) -> Result<()> {
        let (row, rows, layers) = packed_shape(&self.description);
        let host_len = match &dir {
            Direction::Upload(d) => d.len(),
            Direction::Download(d) => d.len(),
        };
        if host_len != row * rows * layers {
            return Err(Error::invalid(
                format!("texture copy of {host_len} bytes"),
                format!(
                    "the texture holds {} tightly packed bytes ({layers} x {rows} rows of {row})",
                    row * rows * layers
                ),
                "pass exactly packed_size() bytes",
            ));
        }
        let device = self.memory.device();
        device.bind()?;
        let stream = device.stream().cu_stream();
        let upload = matches!(dir, Direction::Upload(_));
        let host_ptr = match dir {
            Direction::Upload(d) => d.as_ptr() as *mut std::ffi::c_void,
            Direction::Download(d) => d.as_mut_ptr().cast(),
        };
        // Every copy enqueued is waited for before returning, even when a later one failed, so no
        // copy still reads or writes the host slice once its borrow ends.
        let enqueued = (|| -> Result<()> {
            match &self.storage {
                TextureStorage::Array { level0, .. } => {
                    let host = |p| Side {
                        memory_type: sys::CUmemorytype::CU_MEMORYTYPE_HOST,
                        host: p,
                        device: 0,
                        array: std::ptr::null_mut(),
                        pitch: row,
                        height: rows,
                    };
                    let array = Side {
                        memory_type: sys::CUmemorytype::CU_MEMORYTYPE_ARRAY,
                        host: std::ptr::null_mut(),
                        device: 0,
                        array: *level0,
                        pitch: 0,
                        height: 0,
                    };
                    let (src, dst) = if upload { (host(host_ptr), array) } else { (array, host(host_ptr)) };
                    let copy = memcpy3d(&src, &dst, row, rows, layers);
                    // SAFETY: the context is current; the host range is row*rows*layers bytes (checked above) and
                    // outlives the copy (the stream is waited for before returning, even on error); level 0 has
                    // exactly that extent.
                    let r = unsafe { sys::cuMemcpy3DAsync_v2(&copy, stream) };
                    check(r, "cuMemcpy3DAsync_v2", || {
                        format!("copying {host_len} bytes between host and a CUDA array")
                    })?;
                }
                TextureStorage::Pitched { buffer, row_pitch, slice_pitch } => {
                    for layer in 0..layers {
                        let dev = buffer.device_ptr_raw() + layer as u64 * slice_pitch;
                        // SAFETY: layer < layers, so layer*row*rows < row*rows*layers, the host range's length (checked
                        // above): the pointer stays inside the host slice.
                        let host_layer = unsafe { host_ptr.cast::<u8>().add(layer * row * rows) };
                        let host = Side {
                            memory_type: sys::CUmemorytype::CU_MEMORYTYPE_HOST,
                            host: host_layer.cast(),
                            device: 0,
                            array: std::ptr::null_mut(),
                            pitch: row,
                            height: rows,
                        };
                        let pitched = Side {
                            memory_type: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                            host: std::ptr::null_mut(),
                            device: dev,
                            array: std::ptr::null_mut(),
                            pitch: *row_pitch as usize,
                            height: rows,
                        };
                        let (src, dst) = if upload { (host, pitched) } else { (pitched, host) };
                        let copy = memcpy2d(&src, &dst, row, rows);
                        // SAFETY: the context is current; the device range (layer*slice_pitch + rows*row_pitch at most)
                        // lies inside the mapping (checked at import with overflow-checked arithmetic); the host layer
                        // holds row*rows bytes; the stream is waited for before the host borrow ends.
                        let r = unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream) };
                        check(r, "cuMemcpy2DAsync_v2", || format!("copying layer {layer} of a linear texture"))?;
                    }
                }
            }
            Ok(())
        })();
        // SAFETY: bind() made the context current above; lava-flow's stream belongs to it and the
        // device (held by self.memory) keeps it alive.
        let synced = check(unsafe { sys::cuStreamSynchronize(stream) }, "cuStreamSynchronize", || {
            "waiting for a texture copy".into()
        });
        enqueued?;
        synced
    }
}

enum Direction<'a> {
    Upload(&'a [u8]),
    Download(&'a mut [u8]),
}

/// One side of a CUDA copy.
struct Side {
    memory_type: sys::CUmemorytype,
    host: *mut std::ffi::c_void,
    device: sys::CUdeviceptr,
    array: sys::CUarray,
    pitch: usize,
    height: usize,
}

fn memcpy3d(src: &Side, dst: &Side, width_bytes: usize, height: usize, depth: usize) -> sys::CUDA_MEMCPY3D {
    sys::CUDA_MEMCPY3D {
        srcXInBytes: 0,
        srcY: 0,
        srcZ: 0,
        srcLOD: 0,
        srcMemoryType: src.memory_type,
        srcHost: src.host,
        srcDevice: src.device,
        srcArray: src.array,
        reserved0: std::ptr::null_mut(),
        srcPitch: src.pitch,
        srcHeight: src.height,
        dstXInBytes: 0,
        dstY: 0,
        dstZ: 0,
        dstLOD: 0,
        dstMemoryType: dst.memory_type,
        dstHost: dst.host,
        dstDevice: dst.device,
        dstArray: dst.array,
        reserved1: std::ptr::null_mut(),
        dstPitch: dst.pitch,
        dstHeight: dst.height,
        WidthInBytes: width_bytes,
        Height: height,
        Depth: depth,
    }
}

fn memcpy2d(src: &Side, dst: &Side, width_bytes: usize, height: usize) -> sys::CUDA_MEMCPY2D {
    sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: src.memory_type,
        srcHost: src.host,
        srcDevice: src.device,
        srcArray: src.array,
        srcPitch: src.pitch,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: dst.memory_type,
        dstHost: dst.host,
        dstDevice: dst.device,
        dstArray: dst.array,
        dstPitch: dst.pitch,
        WidthInBytes: width_bytes,
        Height: height,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raw_gpu_handle::{Extent3d, TextureUsage};

    fn desc(dimension: TextureDimension, extent: (u32, u32, u32), layers: u32) -> TextureDescription {
        TextureDescription {
            format: TextureFormat::Rgba8Unorm,
            dimension,
            extent: Extent3d { width: extent.0, height: extent.1, depth: extent.2 },
            array_layers: layers,
            tiling: TextureTiling::Optimal,
            usage: TextureUsage { sampled: true, storage: false, color_attachment: true, transfer: true },
            offset: 0,
            size: 1 << 20,
        }
    }

    #[test]
    fn array_descriptors_follow_cuda_rules() {
        let d = array_descriptor(&desc(TextureDimension::D1, (64, 1, 1), 1)).unwrap();
        assert_eq!((d.Width, d.Height, d.Depth, d.Flags & sys::CUDA_ARRAY3D_LAYERED), (64, 0, 0, 0));
        let d = array_descriptor(&desc(TextureDimension::D1Array, (64, 1, 1), 5)).unwrap();
        assert_eq!((d.Width, d.Height, d.Depth), (64, 0, 5));
        assert_ne!(d.Flags & sys::CUDA_ARRAY3D_LAYERED, 0);
        let d = array_descriptor(&desc(TextureDimension::D2, (64, 32, 1), 1)).unwrap();
        assert_eq!((d.Width, d.Height, d.Depth), (64, 32, 0));
        assert_ne!(d.Flags & sys::CUDA_ARRAY3D_COLOR_ATTACHMENT, 0);
        assert_eq!(d.Flags & sys::CUDA_ARRAY3D_SURFACE_LDST, 0);
        let d = array_descriptor(&desc(TextureDimension::D2Array, (64, 32, 1), 3)).unwrap();
        assert_eq!((d.Width, d.Height, d.Depth), (64, 32, 3));
        assert_ne!(d.Flags & sys::CUDA_ARRAY3D_LAYERED, 0);
        let d = array_descriptor(&desc(TextureDimension::D3, (8, 8, 8), 1)).unwrap();
        assert_eq!((d.Width, d.Height, d.Depth, d.Flags & sys::CUDA_ARRAY3D_LAYERED), (8, 8, 8, 0));
        assert_eq!((d.Format, d.NumChannels), (sys::CUarray_format::CU_AD_FORMAT_UNSIGNED_INT8, 4));
    }

    #[test]
    fn every_format_has_a_cuda_array_format_of_its_texel_size() {
        use sys::CUarray_format::*;
        for f in TextureFormat::ALL {
            let (format, channels) = array_format(f).unwrap();
            let channel_size = match format {
                CU_AD_FORMAT_UNSIGNED_INT8 => 1,
                CU_AD_FORMAT_HALF => 2,
                CU_AD_FORMAT_UNSIGNED_INT32 | CU_AD_FORMAT_FLOAT => 4,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(channel_size * channels, f.texel_size(), "{f}");
            assert_eq!(channels, f.channels(), "{f}");
        }
    }

    #[test]
    fn pitched_layouts_that_overflow_or_overlap_are_refused() {
        assert_eq!(pitched_bytes(8, 1, 256, 0), Some(2048));
        assert_eq!(pitched_bytes(8, 3, 256, 2048), Some(2 * 2048 + 2048));
        assert_eq!(pitched_bytes(8, 3, 256, 1024), None, "slices overlap");
        // Products that wrap to a small number used to pass the size check.
        assert_eq!(pitched_bytes(16, 1, 1 << 60, 0), None);
        assert_eq!(pitched_bytes(1, 1 << 20, 64, u64::MAX / 2), None);
    }

    #[test]
    fn packed_shape_counts_layers_and_slices() {
        assert_eq!(packed_shape(&desc(TextureDimension::D1Array, (16, 1, 1), 4)), (64, 1, 4));
        assert_eq!(packed_shape(&desc(TextureDimension::D2, (16, 8, 1), 1)), (64, 8, 1));
        assert_eq!(packed_shape(&desc(TextureDimension::D3, (4, 4, 6), 1)), (16, 4, 6));
    }
}
