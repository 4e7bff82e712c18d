//! `lava-flow selftest`'s OpenCL rows: Vulkan -> OpenCL and OpenCL -> Vulkan, for a buffer (the
//! OpenCL side transforms it with a kernel) and an image.

use raw_gpu_handle::TextureFormat;

use lava_flow::opencl::{ClContext, KernelArg};
use lava_flow::vulkan::{Buffer, BufferOptions, Image, ImageOptions, ImageTiling, MemoryKind};
use lava_flow::{Error, Result, VulkanContext};

/// One path of the self-test: `Ok` with what was proved, or the error (an
/// [`Error::is_unavailable`] error means this machine cannot do it).
#[derive(Debug)]
pub struct SelftestCase {
    /// The path, e.g. "Vulkan -> OpenCL buffer".
    pub path: &'static str,
    /// What was proved, or why not.
    pub result: Result<String>,
}

/// The paths [`selftest`] runs (its cases' `path`s), in order.
pub const PATHS: [&str; 4] =
    ["Vulkan -> OpenCL buffer", "OpenCL -> Vulkan buffer", "Vulkan -> OpenCL image", "OpenCL -> Vulkan image"];

fn pattern(len: usize, seed: u32) -> Vec<u8> {
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

fn vk_gpu_write(buffer: &Buffer, data: &[u8]) -> Result<()> {
    let mut staging = Buffer::new(
        buffer.context(),
        &BufferOptions::new(data.len() as u64).memory(MemoryKind::HostVisible).export(None),
    )?;
    staging.write(0, data)?;
    staging.copy_region_to(0, buffer, 0, data.len() as u64)
}

fn vk_gpu_read(buffer: &Buffer, len: u64) -> Result<Vec<u8>> {
    let staging = Buffer::new(buffer.context(), &BufferOptions::new(len).memory(MemoryKind::HostVisible).export(None))?;
    buffer.copy_region_to(0, &staging, 0, len)?;
    staging.read(0, len)
}

fn mismatch(what: &str, got: &[u8], want: &[u8]) -> Error {
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    Error::Mismatch { what: what.to_string(), detail: format!("byte {first} of {} differs", want.len()) }
}

fn follow_on(path: &'static str, first: &Error) -> Error {
    if let Some(absent) = super::same_absence(first) {
        absent
    } else if first.is_unavailable() {
        Error::unsupported(path, format!("OpenCL is unavailable: {first}"), "see the first row", "see the first row")
    } else {
        Error::invalid(path, format!("not run: the OpenCL set-up it shares failed ({first})"), "see the first row")
    }
}

fn pair(
    first: Result<String>,
    second: impl FnOnce() -> Result<String>,
    path2: &'static str,
) -> (Result<String>, Result<String>) {
    match first {
        Ok(s) => (Ok(s), second()),
        Err(e) => {
            let f = follow_on(path2, &e);
            (Err(e), Err(f))
        }
    }
}

/// Runs the OpenCL paths against `vk`'s device: a 4 MiB buffer that a kernel transforms, and a
/// 256x256 RGBA8 image, each written on one side and compared on the other.
pub fn selftest(vk: &VulkanContext) -> Vec<SelftestCase> {
    let cl = match ClContext::for_identity(&vk.identity()) {
        Ok(cl) => cl,
        Err(e) => {
            let mut out: Vec<SelftestCase> =
                PATHS[1..].iter().map(|p| SelftestCase { path: p, result: Err(follow_on(p, &e)) }).collect();
            out.insert(0, SelftestCase { path: PATHS[0], result: Err(e) });
            return out;
        }
    };
    let name = format!("{} / {}", cl.info().platform, cl.info().name);
    let mut out = Vec::new();

    let words = 1usize << 20;
    let setup = (|| {
        let buffer = Buffer::new(vk, &BufferOptions::new(words as u64 * 4))?;
        let data = pattern(words * 4, 11);
        vk_gpu_write(&buffer, &data)?;
        let clbuf = cl.import_buffer(buffer.export_fd()?)?;
        Ok((buffer, clbuf, data))
    })();
    let (first, second) = match setup {
        Ok((buffer, clbuf, data)) => {
            let first = clbuf.read(0, data.len()).and_then(|got| {
                if got == data {
                    Ok(format!("{} bytes written by Vulkan read back by {name}", data.len()))
                } else {
                    Err(mismatch("reading a Vulkan buffer in OpenCL", &got, &data))
                }
            });
            pair(
                first,
                || {
                    let mut kernel = cl.build_kernel(
                        "__kernel void flip(__global uint* x) { size_t i = get_global_id(0); x[i] = ~x[i]; }",
                        "flip",
                    )?;
                    cl.acquire(&[&clbuf])?;
                    let run = kernel.enqueue(&[KernelArg::Buffer(&clbuf)], &[words]);
                    cl.release(&[&clbuf])?;
                    run?;
                    cl.finish()?;
                    let got = vk_gpu_read(&buffer, data.len() as u64)?;
                    let want: Vec<u8> = data.iter().map(|b| !b).collect();
                    if got == want {
                        Ok(format!("{words} words transformed by an OpenCL kernel read back by Vulkan"))
                    } else {
                        Err(mismatch("reading an OpenCL kernel's output in Vulkan", &got, &want))
                    }
                },
                PATHS[1],
            )
        }
        Err(e) => pair(Err(e), || unreachable!(), PATHS[1]),
    };
    out.push(SelftestCase { path: PATHS[0], result: first });
    out.push(SelftestCase { path: PATHS[1], result: second });

    let tiling = if cl.info().opaque_fd_images_linear { ImageTiling::Linear } else { ImageTiling::Optimal };
    let setup = (|| {
        let image = Image::new(vk, &ImageOptions::d2(TextureFormat::Rgba8Unorm, 256, 256).tiling(tiling))?;
        let data = pattern(image.packed_size() as usize, 12);
        image.upload(&data)?;
        let climg = cl.import_image(image.export_fd()?)?;
        Ok((image, climg, data))
    })();
    let (third, fourth) = match setup {
        Ok((image, climg, data)) => {
            let third = climg.read().and_then(|got| {
                if got == data {
                    Ok(format!("256x256 RGBA8 {tiling:?} image uploaded by Vulkan read back by {name}"))
                } else {
                    Err(mismatch("reading a Vulkan image in OpenCL", &got, &data))
                }
            });
            pair(
                third,
                || {
                    let update = pattern(data.len(), 13);
                    climg.write(&update)?;
                    let got = image.download()?;
                    if got == update {
                        Ok("256x256 RGBA8 texels written by OpenCL downloaded by Vulkan".into())
                    } else {
                        Err(mismatch("reading OpenCL texels in Vulkan", &got, &update))
                    }
                },
                PATHS[3],
            )
        }
        Err(e) => pair(Err(e), || unreachable!(), PATHS[3]),
    };
    out.push(SelftestCase { path: PATHS[2], result: third });
    out.push(SelftestCase { path: PATHS[3], result: fourth });
    if let Err(e) = cl.check_deferred() {
        out.push(SelftestCase { path: "OpenCL objects released", result: Err(e) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows after a failed set-up say what the first said: a missing library or device stays
    /// missing (so `LAVA_FLOW_REQUIRE=opencl` fails every row), a failure stays a failure.
    #[test]
    fn rows_after_the_first_keep_its_kind_of_error() {
        let missing =
            Error::LibraryUnavailable { library: "libOpenCL.so.1", reason: "absent".into(), advice: "x".into() };
        assert!(matches!(follow_on(PATHS[1], &missing), Error::LibraryUnavailable { .. }));
        let no_device = Error::DeviceNotFound {
            api: "OpenCL",
            wanted: "with UUID 1".into(),
            found: "none".into(),
            advice: "x".into(),
        };
        assert!(matches!(follow_on(PATHS[2], &no_device), Error::DeviceNotFound { .. }));
        let refused = Error::unsupported("an image", "the driver says no", "a query", "x");
        assert!(matches!(follow_on(PATHS[3], &refused), Error::Unsupported { .. }));
        let broken = Error::invalid("x", "y", "z");
        assert!(!follow_on(PATHS[3], &broken).is_unavailable());
    }
}
