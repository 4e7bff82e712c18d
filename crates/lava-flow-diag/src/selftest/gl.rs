//! `lava-flow selftest`'s GL rows: Vulkan -> GL and GL -> Vulkan, for a buffer and a texture,
//! each proved by comparing bytes.

use raw_gpu_handle::TextureFormat;

use lava_flow::gl::GlContext;
use lava_flow::vulkan::{Buffer, BufferOptions, Image, ImageOptions, MemoryKind};
use lava_flow::{Error, Result, VulkanContext};

/// One path of the self-test and what happened: `Ok` with what was proved, or the error (an
/// [`Error::is_unavailable`] error means this machine cannot do it, not that it is broken).
#[derive(Debug)]
pub struct SelftestCase {
    /// The path, e.g. "Vulkan -> GL buffer".
    pub path: &'static str,
    /// What was proved, or why not.
    pub result: Result<String>,
}

pub(crate) fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 11) as u8
        })
        .collect()
}

/// Writes through a Vulkan transfer (a GPU write, not a host mapping).
pub(crate) fn vk_gpu_write(buffer: &Buffer, offset: u64, data: &[u8]) -> Result<()> {
    let mut staging = Buffer::new(
        buffer.context(),
        &BufferOptions::new(data.len() as u64).memory(MemoryKind::HostVisible).export(None),
    )?;
    staging.write(0, data)?;
    staging.copy_region_to(0, buffer, offset, data.len() as u64)
}

/// Reads through a Vulkan transfer into a staging buffer.
pub(crate) fn vk_gpu_read(buffer: &Buffer, offset: u64, len: u64) -> Result<Vec<u8>> {
    let staging = Buffer::new(buffer.context(), &BufferOptions::new(len).memory(MemoryKind::HostVisible).export(None))?;
    buffer.copy_region_to(offset, &staging, 0, len)?;
    staging.read(0, len)
}

fn mismatch(what: &str, got: &[u8], want: &[u8]) -> Error {
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    Error::Mismatch { what: what.to_string(), detail: format!("byte {first} of {} differs", want.len()) }
}

/// The same failure for every path after the first, keeping "unavailable" meaning unavailable.
pub(crate) fn follow_on(path: &'static str, first: &Error, api: &'static str) -> Error {
    if let Some(absent) = super::same_absence(first) {
        absent
    } else if first.is_unavailable() {
        Error::unsupported(path, format!("{api} is unavailable: {first}"), "see the first row", "see the first row")
    } else {
        Error::invalid(path, format!("not run: the {api} set-up it shares failed ({first})"), "see the first row")
    }
}

/// The paths [`selftest`] runs (its cases' `path`s), in order.
pub const PATHS: [&str; 4] =
    ["Vulkan -> GL buffer", "GL -> Vulkan buffer", "Vulkan -> GL texture", "GL -> Vulkan texture"];

/// Runs the GL paths against `vk`'s device: a 1 MiB buffer and a 256x256 RGBA8 optimal texture,
/// each written on one side and compared on the other.
pub fn selftest(vk: &VulkanContext) -> Vec<SelftestCase> {
    let gl = match GlContext::for_identity(&vk.identity()) {
        Ok(gl) => gl,
        Err(e) => {
            let mut out: Vec<SelftestCase> =
                PATHS[1..].iter().map(|p| SelftestCase { path: p, result: Err(follow_on(p, &e, "OpenGL")) }).collect();
            out.insert(0, SelftestCase { path: PATHS[0], result: Err(e) });
            return out;
        }
    };
    let renderer = gl.info().renderer.clone();
    let mut out = Vec::new();

    let size = 1u64 << 20;
    let buffer = Buffer::new(vk, &BufferOptions::new(size).for_gl());
    let imported = buffer.as_ref().map_err(|e| follow_on(PATHS[0], e, "Vulkan")).and_then(|b| {
        let data = pattern(size as usize, 7);
        vk_gpu_write(b, 0, &data)?;
        let glbuf = gl.import_buffer(b.export_fd()?)?;
        Ok((glbuf, data))
    });
    let (first, second) = match imported {
        Ok((glbuf, data)) => {
            let first = glbuf.read(0, size as usize).and_then(|got| {
                if got == data {
                    Ok(format!("{size} bytes written by Vulkan read back by {renderer}"))
                } else {
                    Err(mismatch("reading a Vulkan buffer in GL", &got, &data))
                }
            });
            let second = (|| {
                let update = pattern(size as usize, 8);
                glbuf.write(0, &update)?;
                gl.finish()?;
                let got = vk_gpu_read(buffer.as_ref().expect("imported above"), 0, size)?;
                if got == update {
                    Ok(format!("{size} bytes written by GL read back by Vulkan"))
                } else {
                    Err(mismatch("reading a GL write in Vulkan", &got, &update))
                }
            })();
            (first, second)
        }
        Err(e) => {
            let second = Err(follow_on(PATHS[1], &e, "OpenGL"));
            (Err(e), second)
        }
    };
    out.push(SelftestCase { path: PATHS[0], result: first });
    out.push(SelftestCase { path: PATHS[1], result: second });

    let image = Image::new(vk, &ImageOptions::d2(TextureFormat::Rgba8Unorm, 256, 256));
    let imported = image.as_ref().map_err(|e| follow_on(PATHS[2], e, "Vulkan")).and_then(|img| {
        let data = pattern(img.packed_size() as usize, 9);
        img.upload(&data)?;
        let tex = gl.import_texture(img.export_fd()?)?;
        Ok((tex, data))
    });
    let (third, fourth) = match imported {
        Ok((tex, data)) => {
            let third = tex.read().and_then(|got| {
                if got == data {
                    Ok(format!("256x256 RGBA8 optimal texture uploaded by Vulkan read back by {renderer}"))
                } else {
                    Err(mismatch("reading a Vulkan image in GL", &got, &data))
                }
            });
            let fourth = (|| {
                let update = pattern(data.len(), 10);
                tex.write(&update)?;
                gl.finish()?;
                let got = image.as_ref().expect("imported above").download()?;
                if got == update {
                    Ok("256x256 RGBA8 texels written by GL downloaded by Vulkan".to_string())
                } else {
                    Err(mismatch("reading GL texels in Vulkan", &got, &update))
                }
            })();
            (third, fourth)
        }
        Err(e) => {
            let fourth = Err(follow_on(PATHS[3], &e, "OpenGL"));
            (Err(e), fourth)
        }
    };
    out.push(SelftestCase { path: PATHS[2], result: third });
    out.push(SelftestCase { path: PATHS[3], result: fourth });
    if let Err(e) = gl.check_deferred() {
        out.push(SelftestCase { path: "GL objects released", result: Err(e) });
    }
    out
}

#[cfg(test)]
mod follow_on_tests {
    use super::*;

    /// A missing library or device stays missing in every row after the first, so that
    /// `LAVA_FLOW_REQUIRE=gl` fails every row, not only the first.
    #[test]
    fn rows_after_the_first_keep_its_kind_of_error() {
        let missing = Error::LibraryUnavailable { library: "libEGL.so.1", reason: "absent".into(), advice: "x".into() };
        assert!(matches!(follow_on(PATHS[1], &missing, "OpenGL"), Error::LibraryUnavailable { .. }));
        let no_device =
            Error::DeviceNotFound { api: "OpenGL", wanted: "w".into(), found: "none".into(), advice: "x".into() };
        assert!(matches!(follow_on(PATHS[2], &no_device, "OpenGL"), Error::DeviceNotFound { .. }));
    }
}
