//! Vulkan contexts, the allocator, buffers, images, host memory and exports.

use std::ffi::c_int;
use std::sync::Mutex;

use lava_flow::ipc::SharedObject;
use lava_flow::vulkan::{AllocationStrategy, ImageTiling, MemoryKind};
use lava_flow::{Buffer, BufferOptions, Image, ImageOptions, MemoryAllocator, SharedHostMemory, VulkanContext};

use crate::fds::{consume_on_success, give_fd};
use crate::handles::{get, remove, write_handle, Handle};
use crate::status::{guard, CError, CResult, LavaFlowStatus};
use crate::structs::{
    format_from, read_in, write_out, LavaFlowBufferDesc, LavaFlowDeviceIdentity, LavaFlowObjectKind,
    LavaFlowTextureDesc, Versioned,
};

/// A Vulkan instance and device (`VulkanContext`). Buffers, images and imports keep it alive:
/// destroying it while they live is allowed.
pub struct LavaFlowContext {
    _opaque: [u8; 0],
}

/// Allocates exportable buffers and images (`MemoryAllocator`), one Vulkan context per device
/// index, opened on first use.
pub struct LavaFlowAllocator {
    _opaque: [u8; 0],
}

/// A Vulkan buffer in exportable memory, made here or imported.
pub struct LavaFlowBuffer {
    _opaque: [u8; 0],
}

/// A Vulkan image in exportable memory, made here or imported.
pub struct LavaFlowImage {
    _opaque: [u8; 0],
}

/// Host memory in a memfd that other processes and devices can map (`SharedHostMemory`).
pub struct LavaFlowHostMemory {
    _opaque: [u8; 0],
}

/// An exported object (memory, buffer, texture, semaphore or fence) with the fd that owns it: what
/// one process hands another, what an importer takes. Importing from it never uses it up: each
/// import gets its own duplicate of the fd.
pub struct LavaFlowExport {
    _opaque: [u8; 0],
}

macro_rules! handles {
    ($($c:ident => $obj:ty),* $(,)?) => {$(
        impl Handle for $c {
            type Object = $obj;
            const NAME: &'static str = stringify!($c);
        }
    )*};
}

handles! {
    LavaFlowContext => VulkanContext,
    LavaFlowAllocator => MemoryAllocator,
    LavaFlowBuffer => Mutex<Buffer>,
    LavaFlowImage => Image,
    LavaFlowHostMemory => Mutex<SharedHostMemory>,
    LavaFlowExport => SharedObject,
}

/// Checks an out-pointer for a new handle.
pub(crate) fn check_out<T>(out: *mut *mut T, what: &str) -> CResult {
    if out.is_null() {
        return Err(CError::null(what));
    }
    Ok(())
}

/// `len` bytes at `data` as a slice; NULL is allowed only for `len` 0.
///
/// # Safety
/// `data` is NULL or valid for reads of `len` bytes for the returned lifetime.
pub(crate) unsafe fn bytes_in<'a>(data: *const std::ffi::c_void, len: usize, what: &str) -> CResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(CError::null(what));
    }
    // SAFETY: not NULL, `len` readable bytes by the caller's contract; u8 needs no alignment.
    Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

/// `len` bytes at `data` as a mutable slice; NULL is allowed only for `len` 0.
///
/// # Safety
/// `data` is NULL or valid for writes of `len` bytes, not read or written by anything else, for
/// the returned lifetime.
pub(crate) unsafe fn bytes_out<'a>(data: *mut std::ffi::c_void, len: usize, what: &str) -> CResult<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if data.is_null() {
        return Err(CError::null(what));
    }
    // SAFETY: not NULL, `len` writable bytes used by nothing else, by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), len) })
}

/// Writes a value through a non-NULL-checked out pointer.
///
/// # Safety
/// `out` is NULL or valid for a write of one `T`.
pub(crate) unsafe fn put<T>(out: *mut T, value: T, what: &str) -> CResult {
    if out.is_null() {
        return Err(CError::null(what));
    }
    // SAFETY: not NULL, writable by the caller's contract; no alignment needed.
    unsafe { out.write_unaligned(value) };
    Ok(())
}

fn memory_kind(code: u32) -> CResult<MemoryKind> {
    Ok(match code {
        0 => MemoryKind::DeviceLocal,
        1 => MemoryKind::HostVisible,
        2 => MemoryKind::SharedHost,
        other => {
            return Err(CError::invalid(format!(
                "memory {other} is no LavaFlowMemoryKind: use LAVA_FLOW_MEMORY_DEVICE_LOCAL (0), _HOST_VISIBLE (1) \
                 or _SHARED_HOST (2)"
            )))
        }
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while the lock was held was caught at the boundary; the object is still whole
    // (lava-flow's methods leave it consistent on error).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn index(value: u32) -> usize {
    value as usize
}

/// An export of the kind `want`, duplicated for one importer.
pub(crate) fn clone_export(export: *const LavaFlowExport) -> CResult<SharedObject> {
    Ok(get(export, "export")?.try_clone()?)
}

/// An export of another kind than the call takes (`expected`: "buffer", "texture", ...).
pub(crate) fn wrong_kind(expected: &str, got: &SharedObject) -> CError {
    CError::invalid(format!(
        "the export is a {}, not a {expected}: pass an export of a {expected} (lava_flow_export_kind tells them apart)",
        got.kind_name()
    ))
}

// ---------------------------------------------------------------------------------------------
// Contexts

/// Opens Vulkan on the device at `device_index` (in `vkEnumeratePhysicalDevices` order).
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_context_create(device_index: u32, out: *mut *mut LavaFlowContext) -> LavaFlowStatus {
    guard("lava_flow_context_create", || {
        check_out(out, "out")?;
        let ctx = VulkanContext::with_index(index(device_index))?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, ctx) };
        Ok(())
    })
}

/// The device and driver of a context.
///
/// # Safety
/// `identity` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_context_identity(
    context: *const LavaFlowContext,
    identity: *mut LavaFlowDeviceIdentity,
) -> LavaFlowStatus {
    guard("lava_flow_context_identity", || {
        let ctx = get(context, "context")?;
        // SAFETY: writable by the caller's contract; NULL is refused by put.
        unsafe { put(identity, LavaFlowDeviceIdentity::from(ctx.identity()), "identity") }
    })
}

/// Releases a context handle (NULL: nothing). Objects made from it keep the device alive.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_context_destroy(context: *mut LavaFlowContext) -> LavaFlowStatus {
    guard("lava_flow_context_destroy", || remove(context).map(drop))
}

// ---------------------------------------------------------------------------------------------
// Allocator

/// An allocator that opens each Vulkan device index on first use.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_allocator_create(out: *mut *mut LavaFlowAllocator) -> LavaFlowStatus {
    guard("lava_flow_allocator_create", || {
        check_out(out, "out")?;
        let allocator = MemoryAllocator::new()?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, allocator) };
        Ok(())
    })
}

/// An allocator whose device index 0 is `context`.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_allocator_create_for_context(
    context: *const LavaFlowContext,
    out: *mut *mut LavaFlowAllocator,
) -> LavaFlowStatus {
    guard("lava_flow_allocator_create_for_context", || {
        check_out(out, "out")?;
        let ctx = get(context, "context")?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, MemoryAllocator::with_context(VulkanContext::clone(&ctx))) };
        Ok(())
    })
}

/// The allocator's context for `device_index` (opened now if it was not yet), as a new context
/// handle (destroy it when done; the allocator keeps its own).
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_allocator_context(
    allocator: *const LavaFlowAllocator,
    device_index: u32,
    out: *mut *mut LavaFlowContext,
) -> LavaFlowStatus {
    guard("lava_flow_allocator_context", || {
        check_out(out, "out")?;
        let ctx = get(allocator, "allocator")?.context(index(device_index))?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, ctx) };
        Ok(())
    })
}

/// Releases an allocator handle (NULL: nothing). Buffers and images it made stay valid.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_allocator_destroy(allocator: *mut LavaFlowAllocator) -> LavaFlowStatus {
    guard("lava_flow_allocator_destroy", || remove(allocator).map(drop))
}

// ---------------------------------------------------------------------------------------------
// Buffers

/// How to allocate a buffer. Version 1: 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LavaFlowBufferOptions {
    /// `sizeof(LavaFlowBufferOptions)`.
    pub struct_size: u32,
    /// One of `LavaFlowMemoryKind` (0: device-local).
    pub memory: u32,
    /// Size in bytes (not 0).
    pub size: u64,
    /// Vulkan device index (0: the first device).
    pub device_index: u32,
    /// 1: add the slack OpenGL importers need after the buffer (docs/GL.md); 0: none.
    pub for_gl: u32,
    /// One of `LavaFlowAllocationStrategy` (0: lava-flow decides). A buffer published to other
    /// processes needs its own allocation: `LAVA_FLOW_ALLOCATION_DEDICATED` (a pooled buffer's fd
    /// would map its neighbours too, so publishing one is refused; docs/POOLS.md).
    pub strategy: u32,
    /// Zero.
    pub reserved: u32,
}

/// `LavaFlowBufferOptions.strategy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowAllocationStrategy {
    /// Small buffers from pooled blocks, large ones on their own.
    LAVA_FLOW_ALLOCATION_AUTO = 0,
    /// Always from a pooled block (not publishable to other processes).
    LAVA_FLOW_ALLOCATION_POOLED = 1,
    /// Always its own allocation (what other processes may be given).
    LAVA_FLOW_ALLOCATION_DEDICATED = 2,
}

// SAFETY: #[repr(C)], `struct_size: u32` first, integer fields only.
unsafe impl Versioned for LavaFlowBufferOptions {
    const NAME: &'static str = "LavaFlowBufferOptions";
    fn set_struct_size(&mut self, size: u32) {
        self.struct_size = size;
    }
}

/// Allocates an exportable buffer as `options` say.
///
/// # Safety
/// `options` is NULL (refused) or points at `options->struct_size` readable bytes; `out` is NULL
/// (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_buffer_create(
    allocator: *const LavaFlowAllocator,
    options: *const LavaFlowBufferOptions,
    out: *mut *mut LavaFlowBuffer,
) -> LavaFlowStatus {
    guard("lava_flow_buffer_create", || {
        check_out(out, "out")?;
        let allocator = get(allocator, "allocator")?;
        // SAFETY: the caller's contract on `options`.
        let o = unsafe { read_in(options, "options")? };
        let strategy = match o.strategy {
            0 => AllocationStrategy::Auto,
            1 => AllocationStrategy::Pooled,
            2 => AllocationStrategy::Dedicated,
            other => {
                return Err(CError::invalid(format!(
                    "LavaFlowBufferOptions.strategy is {other}: use LAVA_FLOW_ALLOCATION_AUTO (0), _POOLED (1) or \
                     _DEDICATED (2)"
                )))
            }
        };
        let mut rust = BufferOptions::new(o.size).memory(memory_kind(o.memory)?).strategy(strategy);
        match o.for_gl {
            0 => {}
            1 => rust = rust.for_gl(),
            other => return Err(CError::invalid(format!("LavaFlowBufferOptions.for_gl is {other}: use 0 or 1"))),
        }
        let buffer = allocator.allocate_buffer(index(o.device_index), &rust)?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, Mutex::new(buffer)) };
        Ok(())
    })
}

/// Imports a buffer export into `context` (another device or this one). The export stays valid:
/// the import takes its own duplicate of the fd.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_buffer_import(
    context: *const LavaFlowContext,
    export: *const LavaFlowExport,
    out: *mut *mut LavaFlowBuffer,
) -> LavaFlowStatus {
    guard("lava_flow_buffer_import", || {
        check_out(out, "out")?;
        let ctx = get(context, "context")?;
        let buffer = match clone_export(export)? {
            SharedObject::Buffer(b) => Buffer::import(&ctx, b)?,
            other => return Err(wrong_kind("buffer", &other)),
        };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, Mutex::new(buffer)) };
        Ok(())
    })
}

/// The buffer's size in bytes.
///
/// # Safety
/// `size` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_buffer_size(buffer: *const LavaFlowBuffer, size: *mut u64) -> LavaFlowStatus {
    guard("lava_flow_buffer_size", || {
        let b = get(buffer, "buffer")?;
        let value = lock(&b).size();
        // SAFETY: the caller's contract on `size`.
        unsafe { put(size, value, "size") }
    })
}

/// Copies `len` bytes from `data` into the buffer at `offset` (a staged copy; waits for it).
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_buffer_write(
    buffer: *const LavaFlowBuffer,
    offset: u64,
    data: *const std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_buffer_write", || {
        let b = get(buffer, "buffer")?;
        // SAFETY: the caller's contract on `data`.
        let data = unsafe { bytes_in(data, len, "data")? };
        let written = lock(&b).write(offset, data);
        Ok(written?)
    })
}

/// Copies `len` bytes of the buffer from `offset` into `out` (a staged copy; waits for it).
///
/// # Safety
/// `out` is valid for writes of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_buffer_read(
    buffer: *const LavaFlowBuffer,
    offset: u64,
    out: *mut std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_buffer_read", || {
        let b = get(buffer, "buffer")?;
        // SAFETY: the caller's contract on `out`.
        let out = unsafe { bytes_out(out, len, "out")? };
        let read = lock(&b).read_into(offset, out);
        Ok(read?)
    })
}

/// Exports the buffer: a new export with a fresh fd (destroy it when done).
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_buffer_export(
    buffer: *const LavaFlowBuffer,
    out: *mut *mut LavaFlowExport,
) -> LavaFlowStatus {
    guard("lava_flow_buffer_export", || {
        check_out(out, "out")?;
        let b = get(buffer, "buffer")?;
        let exported = lock(&b).export_fd()?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, SharedObject::Buffer(exported)) };
        Ok(())
    })
}

/// Releases a buffer (NULL: nothing). Exports made from it stay valid.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_buffer_destroy(buffer: *mut LavaFlowBuffer) -> LavaFlowStatus {
    guard("lava_flow_buffer_destroy", || remove(buffer).map(drop))
}

// ---------------------------------------------------------------------------------------------
// Images

/// How to allocate a 2D image (or 2D array). Version 1: 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LavaFlowImageOptions {
    /// `sizeof(LavaFlowImageOptions)`.
    pub struct_size: u32,
    /// One of `LavaFlowTextureFormat`.
    pub format: u32,
    /// Width in texels.
    pub width: u32,
    /// Height in texels.
    pub height: u32,
    /// Array layers: 0 or 1 for a plain 2D image, more for a 2D array.
    pub array_layers: u32,
    /// `LAVA_FLOW_MEMORY_DEVICE_LOCAL` (0) or `_HOST_VISIBLE` (1).
    pub memory: u32,
    /// Vulkan device index.
    pub device_index: u32,
    /// One of `LavaFlowTiling`: 0 or `LAVA_FLOW_TILING_OPTIMAL` for the driver's tiling,
    /// `LAVA_FLOW_TILING_LINEAR` for rows.
    pub tiling: u32,
}

// SAFETY: #[repr(C)], `struct_size: u32` first, integer fields only.
unsafe impl Versioned for LavaFlowImageOptions {
    const NAME: &'static str = "LavaFlowImageOptions";
    fn set_struct_size(&mut self, size: u32) {
        self.struct_size = size;
    }
}

/// Allocates an exportable image as `options` say.
///
/// # Safety
/// `options` is NULL (refused) or points at `options->struct_size` readable bytes; `out` is NULL
/// (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_image_create(
    allocator: *const LavaFlowAllocator,
    options: *const LavaFlowImageOptions,
    out: *mut *mut LavaFlowImage,
) -> LavaFlowStatus {
    guard("lava_flow_image_create", || {
        check_out(out, "out")?;
        let allocator = get(allocator, "allocator")?;
        // SAFETY: the caller's contract on `options`.
        let o = unsafe { read_in(options, "options")? };
        let format = format_from(o.format)?;
        let mut rust = if o.array_layers > 1 {
            ImageOptions::d2_array(format, o.width, o.height, o.array_layers)
        } else {
            ImageOptions::d2(format, o.width, o.height)
        };
        rust = rust.memory(memory_kind(o.memory)?);
        rust = rust.tiling(match o.tiling {
            0 | 2 => ImageTiling::Optimal,
            1 => ImageTiling::Linear,
            other => {
                return Err(CError::invalid(format!(
                    "LavaFlowImageOptions.tiling is {other}: use LAVA_FLOW_TILING_OPTIMAL (2) or _LINEAR (1)"
                )))
            }
        });
        let image = allocator.allocate_image(index(o.device_index), &rust)?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, image) };
        Ok(())
    })
}

/// Imports a texture export into `context`. The export stays valid.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_image_import(
    context: *const LavaFlowContext,
    export: *const LavaFlowExport,
    out: *mut *mut LavaFlowImage,
) -> LavaFlowStatus {
    guard("lava_flow_image_import", || {
        check_out(out, "out")?;
        let ctx = get(context, "context")?;
        let image = match clone_export(export)? {
            SharedObject::Texture(t) => Image::import(&ctx, t)?,
            other => return Err(wrong_kind("texture", &other)),
        };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, image) };
        Ok(())
    })
}

/// Bytes of the image's texels packed row after row (what upload and download take).
///
/// # Safety
/// `size` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_image_packed_size(image: *const LavaFlowImage, size: *mut u64) -> LavaFlowStatus {
    guard("lava_flow_image_packed_size", || {
        let value = get(image, "image")?.packed_size();
        // SAFETY: the caller's contract on `size`.
        unsafe { put(size, value, "size") }
    })
}

/// Uploads packed texels (`len` must be the packed size).
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_image_upload(
    image: *const LavaFlowImage,
    data: *const std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_image_upload", || {
        let image = get(image, "image")?;
        // SAFETY: the caller's contract on `data`.
        let data = unsafe { bytes_in(data, len, "data")? };
        Ok(image.upload(data)?)
    })
}

/// Downloads packed texels into `out` (`len` must be the packed size).
///
/// # Safety
/// `out` is valid for writes of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_image_download(
    image: *const LavaFlowImage,
    out: *mut std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_image_download", || {
        let image = get(image, "image")?;
        let packed = image.packed_size();
        if len as u64 != packed {
            return Err(CError::invalid(format!(
                "out holds {len} bytes; the image's packed texels are {packed} bytes (lava_flow_image_packed_size)"
            )));
        }
        let texels = image.download()?;
        // SAFETY: the caller's contract on `out`.
        unsafe { bytes_out(out, len, "out")? }.copy_from_slice(&texels);
        Ok(())
    })
}

/// Exports the image: a new export with a fresh fd.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_image_export(
    image: *const LavaFlowImage,
    out: *mut *mut LavaFlowExport,
) -> LavaFlowStatus {
    guard("lava_flow_image_export", || {
        check_out(out, "out")?;
        let exported = get(image, "image")?.export_fd()?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, SharedObject::Texture(exported)) };
        Ok(())
    })
}

/// Releases an image (NULL: nothing). Exports made from it stay valid.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_image_destroy(image: *mut LavaFlowImage) -> LavaFlowStatus {
    guard("lava_flow_image_destroy", || remove(image).map(drop))
}

// ---------------------------------------------------------------------------------------------
// Host memory

/// Shared host memory of `size` bytes (rounded up to `alignment`, a power of two; 0: the page
/// size), in a memfd sealed against shrinking.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_host_memory_create(
    size: u64,
    alignment: u64,
    out: *mut *mut LavaFlowHostMemory,
) -> LavaFlowStatus {
    guard("lava_flow_host_memory_create", || {
        check_out(out, "out")?;
        let memory = SharedHostMemory::create(size, alignment)?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, Mutex::new(memory)) };
        Ok(())
    })
}

/// Maps a memfd another process shared (`size` bytes of it).
///
/// fd: **consumed on success** (closed by lava-flow when the handle is destroyed; do not use or
/// close it after); **left to the caller on failure** (still open, still the caller's).
///
/// # Safety
/// `out` is NULL (refused) or writable; `fd` is an fd the caller owns.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_host_memory_from_fd(
    fd: c_int,
    size: u64,
    out: *mut *mut LavaFlowHostMemory,
) -> LavaFlowStatus {
    guard("lava_flow_host_memory_from_fd", || {
        check_out(out, "out")?;
        let memory = consume_on_success(fd, "fd", |owned| Ok(SharedHostMemory::from_fd(owned, size)?))?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, Mutex::new(memory)) };
        Ok(())
    })
}

/// The mapping's address and length. The memory stays mapped until the handle is destroyed.
/// Other processes and devices may write it at any time: synchronize with them before reading
/// (a semaphore, a protocol message), as for any shared memory.
///
/// # Safety
/// `data` and `len` are NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_host_memory_data(
    memory: *const LavaFlowHostMemory,
    data: *mut *mut std::ffi::c_void,
    len: *mut u64,
) -> LavaFlowStatus {
    guard("lava_flow_host_memory_data", || {
        if data.is_null() {
            return Err(CError::null("data"));
        }
        let m = get(memory, "memory")?;
        let (ptr, length) = {
            let m = lock(&m);
            (m.as_ptr().cast::<std::ffi::c_void>(), m.len() as u64)
        };
        // SAFETY: the caller's contract on `len` and `data` (checked not NULL).
        unsafe {
            put(len, length, "len")?;
            put(data, ptr, "data")
        }
    })
}

/// Copies `len` bytes into the memory at `offset`.
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_host_memory_write(
    memory: *const LavaFlowHostMemory,
    offset: u64,
    data: *const std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_host_memory_write", || {
        let m = get(memory, "memory")?;
        // SAFETY: the caller's contract on `data`.
        let data = unsafe { bytes_in(data, len, "data")? };
        let offset = usize::try_from(offset).map_err(|_| CError::invalid(format!("offset {offset} is too large")))?;
        let written = lock(&m).write(offset, data);
        Ok(written?)
    })
}

/// Copies `len` bytes of the memory from `offset` into `out`.
///
/// # Safety
/// `out` is valid for writes of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_host_memory_read(
    memory: *const LavaFlowHostMemory,
    offset: u64,
    out: *mut std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_host_memory_read", || {
        let m = get(memory, "memory")?;
        // SAFETY: the caller's contract on `out`.
        let out = unsafe { bytes_out(out, len, "out")? };
        let offset = usize::try_from(offset).map_err(|_| CError::invalid(format!("offset {offset} is too large")))?;
        let read = lock(&m).read_into(offset, out);
        Ok(read?)
    })
}

/// A new fd of the memfd, owned by the caller (close it when done).
///
/// # Safety
/// `fd_out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_host_memory_dup_fd(
    memory: *const LavaFlowHostMemory,
    fd_out: *mut c_int,
) -> LavaFlowStatus {
    guard("lava_flow_host_memory_dup_fd", || {
        let m = get(memory, "memory")?;
        let fd = lock(&m).try_clone_fd()?;
        // SAFETY: the caller's contract on `fd_out`.
        unsafe { give_fd(fd_out, fd) }
    })
}

/// Exports the memory (kind `LAVA_FLOW_OBJECT_MEMORY`, handle kind host memfd) with a fresh fd.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_host_memory_export(
    memory: *const LavaFlowHostMemory,
    out: *mut *mut LavaFlowExport,
) -> LavaFlowStatus {
    guard("lava_flow_host_memory_export", || {
        check_out(out, "out")?;
        let m = get(memory, "memory")?;
        let exported = lava_flow::ipc::shm::export(&lock(&m))?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, SharedObject::Memory(exported)) };
        Ok(())
    })
}

/// Unmaps and releases host memory (NULL: nothing). Pointers from `lava_flow_host_memory_data`
/// are invalid after this.
///
/// # Safety
/// No pointer into the mapping is used after this call.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_host_memory_destroy(memory: *mut LavaFlowHostMemory) -> LavaFlowStatus {
    guard("lava_flow_host_memory_destroy", || remove(memory).map(drop))
}

// ---------------------------------------------------------------------------------------------
// Exports

/// What the export holds.
///
/// # Safety
/// `kind` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_export_kind(
    export: *const LavaFlowExport,
    kind: *mut LavaFlowObjectKind,
) -> LavaFlowStatus {
    guard("lava_flow_export_kind", || {
        let value = match &*get(export, "export")? {
            SharedObject::Memory(_) => LavaFlowObjectKind::LAVA_FLOW_OBJECT_MEMORY,
            SharedObject::Buffer(_) => LavaFlowObjectKind::LAVA_FLOW_OBJECT_BUFFER,
            SharedObject::Texture(_) => LavaFlowObjectKind::LAVA_FLOW_OBJECT_TEXTURE,
            SharedObject::Semaphore(_) => LavaFlowObjectKind::LAVA_FLOW_OBJECT_SEMAPHORE,
            SharedObject::Fence(_) => LavaFlowObjectKind::LAVA_FLOW_OBJECT_FENCE,
        };
        // SAFETY: the caller's contract on `kind`.
        unsafe { put(kind, value, "kind") }
    })
}

/// The description of a buffer export (a memory export reads as a buffer over the whole
/// allocation). Set `desc->struct_size` first.
///
/// # Safety
/// `desc` is NULL (refused) or points at `desc->struct_size` readable and writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_export_buffer_desc(
    export: *const LavaFlowExport,
    desc: *mut LavaFlowBufferDesc,
) -> LavaFlowStatus {
    guard("lava_flow_export_buffer_desc", || {
        let e = get(export, "export")?;
        let value = match &*e {
            SharedObject::Buffer(b) => {
                LavaFlowBufferDesc::new(&b.memory.description, b.buffer.offset, b.buffer.size, b.buffer.alignment)
            }
            SharedObject::Memory(m) => LavaFlowBufferDesc::new(&m.description, 0, m.description.allocation_size, 1),
            other => return Err(wrong_kind("buffer or memory", other)),
        };
        // SAFETY: the caller's contract on `desc`.
        unsafe { write_out(desc, value, "desc") }
    })
}

/// The description of a texture export. Set `desc->struct_size` first.
///
/// # Safety
/// `desc` is NULL (refused) or points at `desc->struct_size` readable and writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_export_texture_desc(
    export: *const LavaFlowExport,
    desc: *mut LavaFlowTextureDesc,
) -> LavaFlowStatus {
    guard("lava_flow_export_texture_desc", || {
        let e = get(export, "export")?;
        let value = match &*e {
            SharedObject::Texture(t) => LavaFlowTextureDesc::new(&t.memory.description, &t.texture),
            other => return Err(wrong_kind("texture", other)),
        };
        // SAFETY: the caller's contract on `desc`.
        unsafe { write_out(desc, value, "desc") }
    })
}

/// A new fd of the export (a duplicate), owned by the caller: send it to another process with
/// the description, or close it.
///
/// # Safety
/// `fd_out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_export_dup_fd(export: *const LavaFlowExport, fd_out: *mut c_int) -> LavaFlowStatus {
    guard("lava_flow_export_dup_fd", || {
        let e = get(export, "export")?;
        let fd = e.fd().try_clone_to_owned().map_err(|os| {
            CError::new(LavaFlowStatus::LAVA_FLOW_ERROR_IO, format!("duplicating the export's fd: {os}"))
        })?;
        // SAFETY: the caller's contract on `fd_out`.
        unsafe { give_fd(fd_out, fd) }
    })
}

/// A buffer export from a description and an fd that came by another way (a socket of the
/// application's own). The fd is checked against the description first (a pipe, socket or plain
/// file, or a memfd smaller than the allocation, is refused with `LAVA_FLOW_ERROR_INVALID_FD`).
///
/// fd: **consumed on success** (the export owns it); **left to the caller on failure** (still open,
/// still the caller's).
///
/// # Safety
/// `desc` is NULL (refused) or points at `desc->struct_size` readable bytes; `out` is NULL
/// (refused) or writable; `fd` is an fd the caller owns.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_export_from_fd(
    desc: *const LavaFlowBufferDesc,
    fd: c_int,
    out: *mut *mut LavaFlowExport,
) -> LavaFlowStatus {
    guard("lava_flow_export_from_fd", || {
        check_out(out, "out")?;
        // SAFETY: the caller's contract on `desc`.
        let (memory, buffer) = unsafe { read_in(desc, "desc")? }.to_rust()?;
        let object = consume_on_success(fd, "fd", |owned| {
            let object = SharedObject::from_parts(lava_flow::ipc::ObjectDescription::Buffer { memory, buffer }, owned);
            object.check_handle()?;
            Ok(object)
        })?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, object) };
        Ok(())
    })
}

/// Releases an export and closes its fd (NULL: nothing). Objects imported from it stay valid.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_export_destroy(export: *mut LavaFlowExport) -> LavaFlowStatus {
    guard("lava_flow_export_destroy", || remove(export).map(drop))
}
