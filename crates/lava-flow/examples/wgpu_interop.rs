//! A wgpu device (Vulkan backend) shares a buffer and a texture through lava-flow with a second
//! Vulkan device, with OpenGL (lava-flow's `gl` feature) and with another process (served over
//! lava-flow's protocol), data checked both ways (docs/ADOPTING.md, "wgpu").
//!
//! wgpu cannot allocate exportable memory, so the memory comes from lava-flow: lava-flow adopts
//! wgpu's device (reached through `wgpu::hal`), allocates an exportable buffer and image on it, and
//! hands wgpu a buffer and a texture made from them (`create_buffer_from_hal`,
//! `create_texture_from_hal`). The export goes to another device like any lava-flow export.
//!
//! Run: `cargo run -p lava-flow --example wgpu_interop` (the other process is this program again,
//! started as `wgpu_interop attach SOCKET SEED_IN SEED_OUT`).

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use lava_flow::ash::vk;
use lava_flow::ipc::{Client, NamedObject, Server, ServerConfig, SharedObject};
use lava_flow::raw_gpu_handle::TextureFormat;
use lava_flow::vulkan::{DedicatedPolicy, RawVulkan};
use lava_flow::{Buffer, BufferOptions, Image, ImageOptions, VulkanContext};
use wgpu::hal::api::Vulkan;

const BUFFER_SIZE: u64 = 64 * 1024;
const SIDE: u32 = 64; // 64 RGBA8 texels a row: 256 bytes, wgpu's row alignment for copies.

#[cfg(feature = "gl")]
type Gl = lava_flow::gl::GlContext;
/// Without lava-flow's `gl` feature there is no GL leg.
#[cfg(not(feature = "gl"))]
type Gl = std::convert::Infallible;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("attach") {
        let [_, socket, seed_in, seed_out] = &args[..] else {
            return Err("usage: wgpu_interop attach SOCKET SEED_IN SEED_OUT".into());
        };
        return attach(Path::new(socket), seed_in.parse()?, seed_out.parse()?);
    }
    #[cfg(feature = "gl")]
    let gl = match Gl::new() {
        Ok(gl) => Some(gl),
        Err(e) if e.is_unavailable() => {
            println!("no OpenGL here, the GL leg does not run: {e}");
            None
        }
        Err(e) => return Err(e.into()),
    };
    #[cfg(not(feature = "gl"))]
    let gl = None;
    let exe = std::env::current_exe()?;
    let peer = move |socket: &Path, seed_in: u32, seed_out: u32| {
        let mut cmd = Command::new(&exe);
        cmd.arg("attach").arg(socket).arg(seed_in.to_string()).arg(seed_out.to_string());
        cmd
    };
    run(gl.as_ref(), &peer)
}

/// How to start the other process: a command that runs [`attach`] with these arguments.
pub type Peer<'a> = &'a dyn Fn(&Path, u32, u32) -> Command;

/// The whole exchange; `gl`: also share with OpenGL; `peer`: starts the other process.
pub fn run(gl: Option<&Gl>, peer: Peer<'_>) -> Result<()> {
    // wgpu as a renderer would open it. wgpu-hal enables VK_KHR_external_memory_fd on its device
    // whenever the adapter offers it.
    let instance =
        wgpu::Instance::new(&wgpu::InstanceDescriptor { backends: wgpu::Backends::VULKAN, ..Default::default() });
    let adapter = block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let (device, queue) = block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))?;

    // lava-flow adopts wgpu's device, without a drop callback: wgpu owns it and destroys it after
    // every lava-flow object is gone (they are dropped before `device` below).
    let ctx = {
        // SAFETY: the device was created by wgpu's Vulkan backend, so the downcast succeeds; the
        // hal device is only read here, while `device` is alive.
        let hal = unsafe { device.as_hal::<Vulkan>() }.ok_or("wgpu chose a backend other than Vulkan")?;
        let shared = hal.shared_instance();
        let raw = RawVulkan::new(
            shared.entry().clone(),
            shared.raw_instance().clone(),
            hal.raw_physical_device(),
            hal.raw_device().clone(),
            hal.queue_family_index(),
            shared.instance_api_version(),
        )
        .queue_index(hal.queue_index())
        .enabled_extensions(hal.enabled_device_extensions());
        // SAFETY: the handles are wgpu's live instance, physical device and device, with the API
        // version and extension list wgpu created them with; no callback, so lava-flow never
        // destroys them, and every lava-flow object made here drops before `device`. The queue is
        // shared with wgpu, which takes no lock lava-flow knows of: this program calls wgpu and
        // lava-flow from one thread, one after the other, never at once.
        unsafe { VulkanContext::from_raw(raw, None)? }
    };
    let other = VulkanContext::with_uuid(ctx.identity().device_uuid)?;
    println!("wgpu's device ({}) adopted; the other device is a second VkDevice on it", ctx.info().name);

    share_buffer(&ctx, &other, gl, peer, &device, &queue)?;
    share_texture(&ctx, &other, gl, peer, &device, &queue)?;
    println!("buffer and texture: the bytes match both ways");
    Ok(())
}

/// A lava-flow buffer on wgpu's device; wgpu gets its own VkBuffer bound to the same memory.
fn share_buffer(
    ctx: &VulkanContext,
    other: &VulkanContext,
    gl: Option<&Gl>,
    peer: Peer<'_>,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
) -> Result<()> {
    // Not a dedicated allocation: a second VkBuffer is bound to this memory below. `for_gl`: the
    // slack some GL drivers need after a buffer they import (docs/GL.md).
    let options = BufferOptions::new(BUFFER_SIZE).dedicated(DedicatedPolicy::Never).for_gl();
    let shared = Buffer::new(ctx, &options)?;

    // wgpu destroys the VkBuffer it is given (hal's Buffer::from_raw has no drop callback), so it
    // gets one of its own, bound to lava-flow's memory; lava-flow keeps its buffer and the memory.
    let vk_device = ctx.device();
    let mut external =
        vk::ExternalMemoryBufferCreateInfo::default().handle_types(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
    let info = vk::BufferCreateInfo::default()
        .size(BUFFER_SIZE)
        .usage(options.usage)
        .sharing_mode(vk::SharingMode::EXCLUSIVE)
        .push_next(&mut external);
    // SAFETY: a valid create info on a live device; the buffer is handed to wgpu just below.
    let alias = unsafe { vk_device.create_buffer(&info, None)? };
    // SAFETY: the alias has the same size, usage and external handle type as lava-flow's buffer,
    // so the memory's type and the offset suit it; the memory is not a dedicated allocation.
    if let Err(e) = unsafe { vk_device.bind_buffer_memory(alias, shared.memory().handle(), shared.offset()) } {
        // SAFETY: the alias was never handed out.
        unsafe { vk_device.destroy_buffer(alias, None) };
        return Err(e.into());
    }
    let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::STORAGE;
    // SAFETY: the buffer was created on wgpu's device with matching size and usages (storage and
    // transfer both ways), bound to memory that stays allocated until `shared` drops, after this
    // function's wgpu buffer is destroyed; wgpu never maps it.
    let buffer = unsafe {
        device.create_buffer_from_hal::<Vulkan>(
            wgpu::hal::vulkan::Buffer::from_raw(alias),
            &wgpu::BufferDescriptor { label: Some("lava-flow"), size: BUFFER_SIZE, usage, mapped_at_creation: false },
        )
    };

    // wgpu writes, the other device reads.
    let wrote = pattern(BUFFER_SIZE as usize, 1);
    queue.write_buffer(&buffer, 0, &wrote);
    queue.submit([]);
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let imported = Buffer::import(other, shared.export_fd()?)?;
    if imported.read(0, BUFFER_SIZE)? != wrote {
        return Err("buffer: the other device read other bytes than wgpu wrote".into());
    }

    // The other device writes, wgpu reads.
    let mut imported = imported;
    let wrote = pattern(BUFFER_SIZE as usize, 2);
    imported.write(0, &wrote)?;
    let read = read_buffer(device, queue, &buffer, BUFFER_SIZE)?;
    if read != wrote {
        return Err("buffer: wgpu read other bytes than the other device wrote".into());
    }
    println!("buffer: {BUFFER_SIZE} bytes from wgpu to the other device and back");

    #[cfg(feature = "gl")]
    if let Some(gl) = gl {
        // wgpu writes, GL reads: wgpu's work has completed (poll), GL reads after it.
        let gl_buffer = gl.import_buffer(shared.export_fd()?)?;
        let wrote = pattern(BUFFER_SIZE as usize, 5);
        queue.write_buffer(&buffer, 0, &wrote);
        queue.submit([]);
        device.poll(wgpu::PollType::wait_indefinitely())?;
        if gl_buffer.read(0, BUFFER_SIZE as usize)? != wrote {
            return Err("buffer: GL read other bytes than wgpu wrote".into());
        }
        // GL writes, wgpu reads once GL has finished.
        let wrote = pattern(BUFFER_SIZE as usize, 6);
        gl_buffer.write(0, &wrote)?;
        gl.finish()?;
        if read_buffer(device, queue, &buffer, BUFFER_SIZE)? != wrote {
            return Err("buffer: wgpu read other bytes than GL wrote".into());
        }
        println!("buffer: {BUFFER_SIZE} bytes from wgpu to GL and back");
    }

    // wgpu writes, another process reads and writes, wgpu reads.
    let wrote = pattern(BUFFER_SIZE as usize, 9);
    queue.write_buffer(&buffer, 0, &wrote);
    queue.submit([]);
    device.poll(wgpu::PollType::wait_indefinitely())?;
    with_peer(peer, NamedObject::new("wgpu-buffer", shared.export_fd()?), 9, 10)?;
    if read_buffer(device, queue, &buffer, BUFFER_SIZE)? != pattern(BUFFER_SIZE as usize, 10) {
        return Err("buffer: wgpu read other bytes than the other process wrote".into());
    }
    println!("buffer: {BUFFER_SIZE} bytes from wgpu to another process and back");
    buffer.destroy();
    device.poll(wgpu::PollType::wait_indefinitely())?;
    Ok(())
}

/// A lava-flow image on wgpu's device, handed to wgpu as a texture it does not own.
fn share_texture(
    ctx: &VulkanContext,
    other: &VulkanContext,
    gl: Option<&Gl>,
    peer: Peer<'_>,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
) -> Result<()> {
    let image = Arc::new(Image::new(ctx, &ImageOptions::d2(TextureFormat::Rgba8Unorm, SIDE, SIDE))?);
    let exported = image.export_fd()?;
    let peer_export = image.export_fd()?;
    #[cfg(feature = "gl")]
    let gl_export = image.export_fd()?;

    let size = wgpu::Extent3d { width: SIDE, height: SIDE, depth_or_array_layers: 1 };
    let format = wgpu::TextureFormat::Rgba8Unorm;
    let hal_desc = wgpu::hal::TextureDescriptor {
        label: Some("lava-flow"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUses::COPY_SRC | wgpu::TextureUses::COPY_DST | wgpu::TextureUses::RESOURCE,
        memory_flags: wgpu::hal::MemoryFlags::empty(),
        view_formats: Vec::new(),
    };
    // wgpu calls the drop callback instead of destroying the VkImage: the callback holds
    // lava-flow's image (and so its memory) alive until wgpu is done with the texture.
    let keep = Arc::clone(&image);
    let released = Arc::downgrade(&image);
    // SAFETY: lava-flow created the image on wgpu's device as an optimal 2D RGBA8 image of this
    // size, one mip level and sample, with sampled and transfer usage, no view formats; the
    // callback keeps it alive until wgpu lets it go.
    let hal_texture = unsafe {
        let hal = device.as_hal::<Vulkan>().ok_or("wgpu chose a backend other than Vulkan")?;
        hal.texture_from_raw(image.handle(), &hal_desc, Some(Box::new(move || drop(keep))))
    };
    let desc = wgpu::TextureDescriptor {
        label: Some("lava-flow"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::COPY_SRC | wgpu::TextureUsages::COPY_DST | wgpu::TextureUsages::TEXTURE_BINDING,
        view_formats: &[],
    };
    // SAFETY: the hal texture was made on this device and matches `desc`.
    let texture = unsafe { device.create_texture_from_hal::<Vulkan>(hal_texture, &desc) };
    drop(image); // from here on, wgpu's texture holds the lava-flow image

    let len = (SIDE * SIDE * 4) as usize;
    let layout = wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(SIDE * 4), rows_per_image: Some(SIDE) };

    // wgpu writes, the other device reads.
    let wrote = pattern(len, 3);
    queue.write_texture(texture.as_image_copy(), &wrote, layout, size);
    queue.submit([]);
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let imported = Image::import(other, exported)?;
    if imported.download()? != wrote {
        return Err("texture: the other device read other texels than wgpu wrote".into());
    }

    // The other device writes, wgpu reads.
    let wrote = pattern(len, 4);
    imported.upload(&wrote)?;
    if read_texture(device, queue, &texture, layout, size)? != wrote {
        return Err("texture: wgpu read other texels than the other device wrote".into());
    }
    println!("texture: {SIDE}x{SIDE} RGBA8 from wgpu to the other device and back");

    #[cfg(feature = "gl")]
    if let Some(gl) = gl {
        let gl_texture = gl.import_texture(gl_export)?;
        let wrote = pattern(len, 7);
        queue.write_texture(texture.as_image_copy(), &wrote, layout, size);
        queue.submit([]);
        device.poll(wgpu::PollType::wait_indefinitely())?;
        if gl_texture.read()? != wrote {
            return Err("texture: GL read other texels than wgpu wrote".into());
        }
        let wrote = pattern(len, 8);
        gl_texture.write(&wrote)?;
        gl.finish()?;
        if read_texture(device, queue, &texture, layout, size)? != wrote {
            return Err("texture: wgpu read other texels than GL wrote".into());
        }
        println!("texture: {SIDE}x{SIDE} RGBA8 from wgpu to GL and back");
    }

    // wgpu writes, another process reads and writes, wgpu reads.
    queue.write_texture(texture.as_image_copy(), &pattern(len, 11), layout, size);
    queue.submit([]);
    device.poll(wgpu::PollType::wait_indefinitely())?;
    with_peer(peer, NamedObject::new("wgpu-texture", peer_export), 11, 12)?;
    if read_texture(device, queue, &texture, layout, size)? != pattern(len, 12) {
        return Err("texture: wgpu read other texels than the other process wrote".into());
    }
    println!("texture: {SIDE}x{SIDE} RGBA8 from wgpu to another process and back");
    texture.destroy();
    device.poll(wgpu::PollType::wait_indefinitely())?;
    if released.upgrade().is_some() {
        return Err("wgpu kept the texture's image after destroying the texture".into());
    }
    Ok(())
}

/// Serves `object` on a socket of its own, starts the other process on it and waits for it.
fn with_peer(peer: Peer<'_>, object: NamedObject, seed_in: u32, seed_out: u32) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("lava-flow-wgpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("peer.sock");
    let server = Server::bind(&socket, ServerConfig::default())?;
    server.publish(object)?;
    let status = peer(&socket, seed_in, seed_out).status();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    match status? {
        s if s.success() => Ok(()),
        s => Err(format!("the other process failed ({s})").into()),
    }
}

/// The other process: takes every object served at `socket` into a Vulkan device of its own,
/// checks that it holds `pattern(.., seed_in)` and writes `pattern(.., seed_out)`.
pub fn attach(socket: &Path, seed_in: u32, seed_out: u32) -> Result<()> {
    let client = Client::connect(socket)?;
    for named in client.get_all()? {
        match named.object {
            SharedObject::Buffer(exported) => {
                let ctx = VulkanContext::with_uuid(exported.device().device_uuid)?;
                let size = exported.buffer.size;
                let mut buffer = Buffer::import(&ctx, exported)?;
                if buffer.read(0, size)? != pattern(size as usize, seed_in) {
                    return Err(format!("{}: other bytes than wgpu wrote", named.name).into());
                }
                buffer.write(0, &pattern(size as usize, seed_out))?;
            }
            SharedObject::Texture(exported) => {
                let ctx = VulkanContext::with_uuid(exported.device().device_uuid)?;
                let image = Image::import(&ctx, exported)?;
                let texels = image.download()?;
                if texels != pattern(texels.len(), seed_in) {
                    return Err(format!("{}: other texels than wgpu wrote", named.name).into());
                }
                image.upload(&pattern(texels.len(), seed_out))?;
            }
            other => return Err(format!("{}: a {other:?} was not expected", named.name).into()),
        }
        println!("other process: {} checked and rewritten", named.name);
    }
    Ok(())
}

/// Copies `buffer` into a mappable one and reads it back on the host.
fn read_buffer(device: &wgpu::Device, queue: &wgpu::Queue, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
    queue.submit([encoder.finish()]);
    map_read(device, &staging)
}

/// Copies `texture` into a mappable buffer and reads it back on the host.
fn read_texture(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
    layout: wgpu::TexelCopyBufferLayout,
    size: wgpu::Extent3d,
) -> Result<Vec<u8>> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: u64::from(layout.bytes_per_row.unwrap_or(0)) * u64::from(size.height),
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        texture.as_image_copy(),
        wgpu::TexelCopyBufferInfo { buffer: &staging, layout },
        size,
    );
    queue.submit([encoder.finish()]);
    map_read(device, &staging)
}

fn map_read(device: &wgpu::Device, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    device.poll(wgpu::PollType::wait_indefinitely())?;
    rx.recv()??;
    let bytes = staging.slice(..).get_mapped_range().to_vec();
    staging.unmap();
    Ok(bytes)
}

/// wgpu's native futures are ready when first polled; this drives one to completion.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
