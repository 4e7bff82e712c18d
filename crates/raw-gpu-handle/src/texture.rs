use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Texel formats a texture may be shared in. Each maps to one Vulkan format, one CUDA array
/// format with a channel count, one GL internal format and one OpenCL image format.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum TextureFormat {
    /// One 8-bit unsigned normalized channel.
    R8Unorm,
    /// Two 8-bit unsigned normalized channels.
    Rg8Unorm,
    /// Four 8-bit unsigned normalized channels.
    Rgba8Unorm,
    /// Four 8-bit unsigned integer channels.
    Rgba8Uint,
    /// One 16-bit float channel.
    R16Float,
    /// Four 16-bit float channels.
    Rgba16Float,
    /// One 32-bit unsigned integer channel.
    R32Uint,
    /// One 32-bit float channel.
    R32Float,
    /// Two 32-bit float channels.
    Rg32Float,
    /// Four 32-bit float channels.
    Rgba32Float,
    /// Four 32-bit unsigned integer channels.
    Rgba32Uint,
}

impl TextureFormat {
    /// Every format, for tables and tests.
    pub const ALL: [TextureFormat; 11] = [
        TextureFormat::R8Unorm,
        TextureFormat::Rg8Unorm,
        TextureFormat::Rgba8Unorm,
        TextureFormat::Rgba8Uint,
        TextureFormat::R16Float,
        TextureFormat::Rgba16Float,
        TextureFormat::R32Uint,
        TextureFormat::R32Float,
        TextureFormat::Rg32Float,
        TextureFormat::Rgba32Float,
        TextureFormat::Rgba32Uint,
    ];

    /// Bytes per texel.
    pub fn texel_size(self) -> u32 {
        self.channels() * self.channel_size()
    }

    /// Number of channels.
    pub fn channels(self) -> u32 {
        use TextureFormat::*;
        match self {
            R8Unorm | R16Float | R32Uint | R32Float => 1,
            Rg8Unorm | Rg32Float => 2,
            Rgba8Unorm | Rgba8Uint | Rgba16Float | Rgba32Float | Rgba32Uint => 4,
        }
    }

    /// Bytes per channel.
    pub fn channel_size(self) -> u32 {
        use TextureFormat::*;
        match self {
            R8Unorm | Rg8Unorm | Rgba8Unorm | Rgba8Uint => 1,
            R16Float | Rgba16Float => 2,
            R32Uint | R32Float | Rg32Float | Rgba32Float | Rgba32Uint => 4,
        }
    }

    /// A short stable name.
    pub fn name(self) -> &'static str {
        use TextureFormat::*;
        match self {
            R8Unorm => "r8unorm",
            Rg8Unorm => "rg8unorm",
            Rgba8Unorm => "rgba8unorm",
            Rgba8Uint => "rgba8uint",
            R16Float => "r16float",
            Rgba16Float => "rgba16float",
            R32Uint => "r32uint",
            R32Float => "r32float",
            Rg32Float => "rg32float",
            Rgba32Float => "rgba32float",
            Rgba32Uint => "rgba32uint",
        }
    }
}

impl fmt::Display for TextureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The shape of a texture. Arrays carry their layer count in [`TextureDescription::array_layers`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum TextureDimension {
    /// One-dimensional: height and depth are 1.
    D1,
    /// An array of 1D layers.
    D1Array,
    /// Two-dimensional: depth is 1.
    D2,
    /// An array of 2D layers.
    D2Array,
    /// Three-dimensional; one layer.
    D3,
}

impl TextureDimension {
    /// Whether the texture has several layers.
    pub fn is_array(self) -> bool {
        matches!(self, TextureDimension::D1Array | TextureDimension::D2Array)
    }
}

/// Width, height and depth in texels.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Extent3d {
    /// Texels per row.
    pub width: u32,
    /// Rows (1 for 1D textures).
    pub height: u32,
    /// Slices (1 unless 3D).
    pub depth: u32,
}

/// Where one plane of a DRM-modifier texture lies in the memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PlaneLayout {
    /// Offset of the plane from the texture's offset.
    pub offset: u64,
    /// Size of the plane in bytes.
    pub size: u64,
    /// Bytes between rows.
    pub row_pitch: u64,
}

/// How texels are laid out in memory.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum TextureTiling {
    /// Row-major; importers that read memory directly (a CUDA linear buffer, GL's linear tiling)
    /// need the pitches. `array_pitch` is the distance between layers, `depth_pitch` between 3D
    /// slices (Vulkan's `VkSubresourceLayout`).
    Linear {
        /// Bytes between the starts of two rows.
        row_pitch: u64,
        /// Bytes between the starts of two array layers (0 when not an array).
        array_pitch: u64,
        /// Bytes between the starts of two depth slices (0 when not 3D).
        depth_pitch: u64,
    },
    /// The driver's private tiling (`VK_IMAGE_TILING_OPTIMAL`): importable only by the same driver,
    /// as a CUDA mipmapped array or a GL texture with `GL_OPTIMAL_TILING_EXT`.
    Optimal,
    /// An explicit DRM format modifier and per-plane layout (`VK_EXT_image_drm_format_modifier`).
    DrmModifier {
        /// The modifier (`DRM_FORMAT_MOD_*`).
        modifier: u64,
        /// One entry per memory plane.
        planes: Vec<PlaneLayout>,
    },
}

/// What the texture was created to be used for; importers need some of it (CUDA needs
/// `CUDA_ARRAY3D_COLOR_ATTACHMENT` for render targets, surface load/store needs storage).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TextureUsage {
    /// Read by samplers.
    pub sampled: bool,
    /// Read and written as a storage image / surface.
    pub storage: bool,
    /// Rendered to.
    pub color_attachment: bool,
    /// Copied from and to.
    pub transfer: bool,
}

/// The shape and layout of a shared texture. Textures have exactly one mip level and one sample
/// per texel: anything else is not shareable through this description.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TextureDescription {
    /// Texel format.
    pub format: TextureFormat,
    /// 1D, 2D, 3D or array.
    pub dimension: TextureDimension,
    /// Size of layer 0 in texels.
    pub extent: Extent3d,
    /// Number of array layers (1 unless an array).
    pub array_layers: u32,
    /// Memory layout.
    pub tiling: TextureTiling,
    /// Usage the texture was created with.
    pub usage: TextureUsage,
    /// Where the texture starts inside its memory.
    pub offset: u64,
    /// Bytes the texture occupies (`VkMemoryRequirements::size`).
    pub size: u64,
}

/// Why a texture description is not valid.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TextureError(pub String);

impl fmt::Display for TextureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::error::Error for TextureError {}

impl TextureDescription {
    /// Checks the description for internal consistency: extent and layers fit the dimension, no
    /// zero sizes, linear pitches large enough for a row.
    pub fn validate(&self) -> Result<(), TextureError> {
        let e = self.extent;
        if e.width == 0 || e.height == 0 || e.depth == 0 || self.array_layers == 0 {
            return Err(TextureError(format!(
                "texture extent {e:?} with {} layers has a zero dimension",
                self.array_layers
            )));
        }
        let ok = match self.dimension {
            TextureDimension::D1 => e.height == 1 && e.depth == 1 && self.array_layers == 1,
            TextureDimension::D1Array => e.height == 1 && e.depth == 1,
            TextureDimension::D2 => e.depth == 1 && self.array_layers == 1,
            TextureDimension::D2Array => e.depth == 1,
            TextureDimension::D3 => self.array_layers == 1,
        };
        if !ok {
            return Err(TextureError(format!(
                "a {:?} texture cannot have extent {}x{}x{} with {} layers",
                self.dimension, e.width, e.height, e.depth, self.array_layers
            )));
        }
        if let TextureTiling::Linear { row_pitch, .. } = self.tiling {
            let row = u64::from(e.width) * u64::from(self.format.texel_size());
            if row_pitch < row {
                return Err(TextureError(format!("linear row pitch {row_pitch} is smaller than a row of {row} bytes")));
            }
        }
        if self.size == 0 {
            return Err(TextureError("texture size is zero".into()));
        }
        // Every tiling stores at least the base level's texels: a description whose size is
        // smaller claims texels beyond its memory, which an importer would map.
        let packed = self.packed_base_level_bytes();
        if packed.is_none_or(|p| p > self.size) {
            return Err(TextureError(format!(
                "a {}x{}x{} texture of {} layers of {:?} holds {} bytes in its base level alone, but its size is {}",
                e.width,
                e.height,
                e.depth,
                self.array_layers,
                self.format,
                packed.map_or("more than 2^64".into(), |p| format!("{p}")),
                self.size
            )));
        }
        Ok(())
    }

    /// Bytes of the base mip level's texels, all layers, tightly packed (`None` where that
    /// overflows 64 bits): a lower bound of [`size`](Self::size) for every tiling.
    pub fn packed_base_level_bytes(&self) -> Option<u64> {
        let e = self.extent;
        u64::from(e.width)
            .checked_mul(u64::from(self.format.texel_size()))?
            .checked_mul(u64::from(e.height))?
            .checked_mul(u64::from(e.depth))?
            .checked_mul(u64::from(self.array_layers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d2(width: u32, height: u32, size: u64) -> TextureDescription {
        TextureDescription {
            format: TextureFormat::Rgba8Unorm,
            dimension: TextureDimension::D2,
            extent: Extent3d { width, height, depth: 1 },
            array_layers: 1,
            tiling: TextureTiling::Optimal,
            usage: TextureUsage { sampled: true, storage: false, color_attachment: false, transfer: true },
            offset: 0,
            size,
        }
    }

    #[test]
    fn a_size_below_the_base_levels_texels_is_refused() {
        assert!(d2(32, 32, 4096).validate().is_ok());
        let err = d2(32, 32, 4095).validate().unwrap_err();
        assert!(err.0.contains("4096 bytes in its base level"), "{}", err.0);
        assert_eq!(d2(65536, 65536, u64::MAX).packed_base_level_bytes(), Some(1 << 34));
        let mut huge = d2(u32::MAX, u32::MAX, u64::MAX);
        huge.dimension = TextureDimension::D2Array;
        huge.array_layers = u32::MAX;
        assert_eq!(huge.packed_base_level_bytes(), None);
        assert!(huge.validate().unwrap_err().0.contains("more than 2^64"));
    }
}
