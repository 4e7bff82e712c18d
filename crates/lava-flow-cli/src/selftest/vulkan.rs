//! Vulkan paths inside one process: buffers, images and shared host memory exported by one
//! VkDevice and imported by a second VkDevice (two VulkanContexts on the same physical device,
//! as another API or process would see it).
//!
//! Each path: device A writes a pattern, exports; device B imports, reads it back through a GPU
//! copy and checks every byte, writes a second pattern through a GPU copy; A reads and checks.

use lava_flow::raw_gpu_handle::TextureFormat;
use lava_flow::vulkan::{ImageTiling, MemoryKind};
use lava_flow::{Buffer, BufferOptions, Image, ImageOptions, VulkanContext};

use super::{check_bytes, pattern, spoil, Runner, Step};

/// Bytes moved each way by the buffer paths.
pub const BUFFER_SIZE: u64 = 1 << 20;

/// The images every run shares: name, options.
pub fn images() -> Vec<(&'static str, ImageOptions)> {
    vec![
        (
            "image 2D rgba8unorm 256x256 linear",
            ImageOptions::d2(TextureFormat::Rgba8Unorm, 256, 256).tiling(ImageTiling::Linear),
        ),
        ("image 2D rgba8unorm 256x256 optimal", ImageOptions::d2(TextureFormat::Rgba8Unorm, 256, 256)),
        ("image 2D array r32float 128x128x4 optimal", ImageOptions::d2_array(TextureFormat::R32Float, 128, 128, 4)),
        ("image 3D rgba16float 64x64x8 optimal", ImageOptions::d3(TextureFormat::Rgba16Float, 64, 64, 8)),
    ]
}

/// Reads a buffer through a GPU copy into a private buffer of the same device, so the check
/// sees what that device's GPU sees (not only a host mapping).
pub fn gpu_read(buffer: &Buffer) -> lava_flow::Result<Vec<u8>> {
    let tmp = Buffer::new(buffer.context(), &BufferOptions::new(buffer.size()).export(None))?;
    buffer.copy_to(&tmp)?;
    tmp.read(0, buffer.size())
}

/// Writes a buffer through a GPU copy from a private buffer of the same device.
pub fn gpu_write(buffer: &Buffer, data: &[u8]) -> lava_flow::Result<()> {
    let mut tmp = Buffer::new(buffer.context(), &BufferOptions::new(buffer.size()).export(None))?;
    tmp.write(0, data)?;
    tmp.copy_to(buffer)
}

const BUFFERS: [(&str, MemoryKind); 3] = [
    ("buffer device-local", MemoryKind::DeviceLocal),
    ("buffer host-visible", MemoryKind::HostVisible),
    ("buffer in shared host memory", MemoryKind::SharedHost),
];

fn path_name(name: &str, tag: &str) -> String {
    format!("vulkan: {name}, device A <-> device B{tag}")
}

/// Every path's name for one device (`tag` tells devices apart where there are several).
fn path_names(tag: &str) -> Vec<(&'static str, String)> {
    let names = BUFFERS.iter().map(|(name, _)| *name).chain(images().into_iter().map(|(name, _)| name));
    names.map(|name| ("vulkan", path_name(name, tag))).collect()
}

pub fn run(runner: &mut Runner) {
    // Asked before the devices are listed, so that a run narrowed to other groups creates no
    // Vulkan instance here: the names on a machine of one device, and with the tag that a
    // machine of several devices adds (" [device N]", which `--only` text may name).
    let names: Vec<String> = BUFFERS
        .iter()
        .map(|(name, _)| *name)
        .chain(images().iter().map(|(name, _)| *name))
        .map(|name| path_name(name, ""))
        .chain(["vulkan: two devices".to_string()])
        .collect();
    let tagged = names.iter().flat_map(|n| (0..64).map(move |k| format!("{n} [device {k}]")));
    if !runner.wants_any(names.iter().cloned().chain(tagged)) {
        return;
    }
    let devices = match VulkanContext::enumerate() {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => {
            let reason = "the Vulkan loader lists no devices";
            return runner.skip_all(("vulkan", "vulkan: two devices"), &path_names(""), reason);
        }
        Err(e) => return runner.skip_all(("vulkan", "vulkan: two devices"), &path_names(""), e.to_string()),
    };
    for device in &devices {
        let tag = if devices.len() > 1 { format!(" [device {}]", device.index) } else { String::new() };
        let pair = VulkanContext::with_index(device.index)
            .and_then(|a| VulkanContext::with_index(device.index).map(|b| (a, b)));
        let (a, b) = match pair {
            Ok(p) => p,
            Err(e) => {
                let summary = format!("vulkan: two devices{tag}");
                runner.skip_all(("vulkan", &summary), &path_names(&tag), e.to_string());
                continue;
            }
        };
        for (name, kind) in BUFFERS {
            let path = path_name(name, &tag);
            runner.run("vulkan", &path, BUFFER_SIZE, |r| buffer_between(&a, &b, kind, r.corrupt(&path)));
        }
        for (name, options) in images() {
            let path = path_name(name, &tag);
            let size = image_bytes(&options);
            runner.run("vulkan", &path, size, |r| image_between(&a, &b, &options, r.corrupt(&path)));
        }
    }
}

/// Tightly packed bytes of an image made with `options`.
pub fn image_bytes(o: &ImageOptions) -> u64 {
    u64::from(o.extent.width)
        * u64::from(o.extent.height)
        * u64::from(o.extent.depth)
        * u64::from(o.array_layers)
        * u64::from(o.format.texel_size())
}

fn buffer_between(a: &VulkanContext, b: &VulkanContext, kind: MemoryKind, corrupt: bool) -> Step {
    let mut exporter = Buffer::new(a, &BufferOptions::new(BUFFER_SIZE).memory(kind))?;
    let sent = pattern(1, BUFFER_SIZE as usize);
    exporter.write(0, &sent)?;
    let importer = Buffer::import(b, exporter.export_fd()?)?;
    check_bytes("device B's GPU copy of the import", &sent, &gpu_read(&importer)?)?;
    let reply = pattern(2, BUFFER_SIZE as usize);
    let mut written = reply.clone();
    if corrupt {
        spoil(&mut written);
    }
    gpu_write(&importer, &written)?;
    check_bytes("device A's read of what device B wrote", &reply, &exporter.read(0, BUFFER_SIZE)?)
}

fn image_between(a: &VulkanContext, b: &VulkanContext, options: &ImageOptions, corrupt: bool) -> Step {
    let exporter = Image::new(a, options)?;
    let size = exporter.packed_size() as usize;
    let sent = pattern(3, size);
    exporter.upload(&sent)?;
    let importer = Image::import(b, exporter.export_fd()?)?;
    check_bytes("device B's download of the imported image", &sent, &importer.download()?)?;
    let reply = pattern(4, size);
    let mut written = reply.clone();
    if corrupt {
        spoil(&mut written);
    }
    importer.upload(&written)?;
    check_bytes("device A's download of what device B uploaded", &reply, &exporter.download()?)
}
