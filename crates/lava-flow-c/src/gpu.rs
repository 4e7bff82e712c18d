//! Importers: OpenGL (headless EGL), CUDA and OpenCL. Each loads its driver library at run time:
//! a machine without it gets `LAVA_FLOW_ERROR_LIBRARY_UNAVAILABLE` from the `_create` call.

use lava_flow::cuda::{CudaBuffer, CudaDevice};
use lava_flow::gl::{GlBuffer, GlContext, GlTexture};
use lava_flow::ipc::SharedObject;
use lava_flow::opencl::{ClBuffer, ClContext};

use crate::handles::{get, remove, write_handle, Handle};
use crate::memory::{bytes_in, bytes_out, check_out, clone_export, put, wrong_kind, LavaFlowExport};
use crate::status::{guard, CError, CResult, LavaFlowStatus};
use crate::structs::LavaFlowDeviceIdentity;

/// A headless EGL/OpenGL context of lava-flow's own (current only inside lava-flow's calls).
pub struct LavaFlowGlContext {
    _opaque: [u8; 0],
}

/// A GL buffer object over imported memory.
pub struct LavaFlowGlBuffer {
    _opaque: [u8; 0],
}

/// A GL texture over imported memory.
pub struct LavaFlowGlTexture {
    _opaque: [u8; 0],
}

/// A CUDA device with its primary context.
pub struct LavaFlowCudaDevice {
    _opaque: [u8; 0],
}

/// Imported memory mapped as CUDA device memory.
pub struct LavaFlowCudaBuffer {
    _opaque: [u8; 0],
}

/// An OpenCL context and queue on one device.
pub struct LavaFlowOpenClContext {
    _opaque: [u8; 0],
}

/// Imported memory as an OpenCL buffer (`cl_mem`).
pub struct LavaFlowOpenClBuffer {
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
    LavaFlowGlContext => GlContext,
    LavaFlowGlBuffer => GlBuffer,
    LavaFlowGlTexture => GlTexture,
    LavaFlowCudaDevice => CudaDevice,
    LavaFlowCudaBuffer => CudaBuffer<u8>,
    LavaFlowOpenClContext => ClContext,
    LavaFlowOpenClBuffer => ClBuffer,
}

/// # Safety
/// `identity` is NULL or readable.
unsafe fn identity_in(identity: *const LavaFlowDeviceIdentity) -> CResult<Option<raw_gpu_handle::DeviceIdentity>> {
    if identity.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL, readable by the caller's contract; plain integers, any bits valid.
    Some(unsafe { identity.read_unaligned() }.to_rust()).transpose()
}

/// # Safety
/// `identity` is NULL (refused) or readable.
unsafe fn identity_required(identity: *const LavaFlowDeviceIdentity) -> CResult<raw_gpu_handle::DeviceIdentity> {
    // SAFETY: the caller's contract.
    unsafe { identity_in(identity) }?.ok_or_else(|| CError::null("identity"))
}

fn check_len(what: &str, len: usize, size: u64) -> CResult {
    if len as u64 != size {
        return Err(CError::invalid(format!("{what}: len is {len}, the buffer holds {size} bytes: pass its size")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// OpenGL

/// A headless GL context on the device `identity` names (the exporter's, from an export's
/// description), or on EGL's first device when `identity` is NULL.
///
/// # Safety
/// `identity` is NULL or readable; `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_context_create(
    identity: *const LavaFlowDeviceIdentity,
    out: *mut *mut LavaFlowGlContext,
) -> LavaFlowStatus {
    guard("lava_flow_gl_context_create", || {
        check_out(out, "out")?;
        // SAFETY: the caller's contract on `identity`.
        let gl = match unsafe { identity_in(identity)? } {
            Some(id) => GlContext::for_identity(&id)?,
            None => GlContext::new()?,
        };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, gl) };
        Ok(())
    })
}

/// Releases a GL context handle (NULL: nothing). Buffers and textures keep it alive.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_context_destroy(gl: *mut LavaFlowGlContext) -> LavaFlowStatus {
    guard("lava_flow_gl_context_destroy", || remove(gl).map(drop))
}

/// Imports a buffer export as a GL buffer object (`GL_EXT_memory_object_fd`). The export stays
/// valid.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_import_buffer(
    gl: *const LavaFlowGlContext,
    export: *const LavaFlowExport,
    out: *mut *mut LavaFlowGlBuffer,
) -> LavaFlowStatus {
    guard("lava_flow_gl_import_buffer", || {
        check_out(out, "out")?;
        let gl = get(gl, "gl")?;
        let buffer = match clone_export(export)? {
            SharedObject::Buffer(b) => gl.import_buffer(b)?,
            other => return Err(wrong_kind("buffer", &other)),
        };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, buffer) };
        Ok(())
    })
}

/// The GL buffer object's name (valid in lava-flow's GL context).
///
/// # Safety
/// `name` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_buffer_name(buffer: *const LavaFlowGlBuffer, name: *mut u32) -> LavaFlowStatus {
    guard("lava_flow_gl_buffer_name", || {
        let v = get(buffer, "buffer")?.name();
        // SAFETY: the caller's contract on `name`.
        unsafe { put(name, v, "name") }
    })
}

/// The GL buffer's size in bytes.
///
/// # Safety
/// `size` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_buffer_size(buffer: *const LavaFlowGlBuffer, size: *mut u64) -> LavaFlowStatus {
    guard("lava_flow_gl_buffer_size", || {
        let v = get(buffer, "buffer")?.size();
        // SAFETY: the caller's contract on `size`.
        unsafe { put(size, v, "size") }
    })
}

/// Reads `len` bytes of the GL buffer from `offset` through GL (`glGetBufferSubData` or a mapping).
///
/// # Safety
/// `out` is valid for writes of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_buffer_read(
    buffer: *const LavaFlowGlBuffer,
    offset: u64,
    out: *mut std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_gl_buffer_read", || {
        let b = get(buffer, "buffer")?;
        // SAFETY: the caller's contract on `out`.
        let out = unsafe { bytes_out(out, len, "out")? };
        let bytes = b.read(offset, len)?;
        out.copy_from_slice(&bytes);
        Ok(())
    })
}

/// Writes `len` bytes into the GL buffer at `offset` through GL.
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_buffer_write(
    buffer: *const LavaFlowGlBuffer,
    offset: u64,
    data: *const std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_gl_buffer_write", || {
        let b = get(buffer, "buffer")?;
        // SAFETY: the caller's contract on `data`.
        let data = unsafe { bytes_in(data, len, "data")? };
        Ok(b.write(offset, data)?)
    })
}

/// Releases a GL buffer (NULL: nothing).
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_buffer_destroy(buffer: *mut LavaFlowGlBuffer) -> LavaFlowStatus {
    guard("lava_flow_gl_buffer_destroy", || remove(buffer).map(drop))
}

/// Imports a texture export as a GL texture. The export stays valid.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_import_texture(
    gl: *const LavaFlowGlContext,
    export: *const LavaFlowExport,
    out: *mut *mut LavaFlowGlTexture,
) -> LavaFlowStatus {
    guard("lava_flow_gl_import_texture", || {
        check_out(out, "out")?;
        let gl = get(gl, "gl")?;
        let texture = match clone_export(export)? {
            SharedObject::Texture(t) => gl.import_texture(t)?,
            other => return Err(wrong_kind("texture", &other)),
        };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, texture) };
        Ok(())
    })
}

/// The GL texture's name and target (`GL_TEXTURE_2D`, ...), valid in lava-flow's GL context.
///
/// # Safety
/// `name` and `target` are NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_texture_name(
    texture: *const LavaFlowGlTexture,
    name: *mut u32,
    target: *mut u32,
) -> LavaFlowStatus {
    guard("lava_flow_gl_texture_name", || {
        let t = get(texture, "texture")?;
        // SAFETY: the caller's contract on `name` and `target`.
        unsafe {
            put(name, t.name(), "name")?;
            put(target, t.target(), "target")
        }
    })
}

/// Bytes of the texture's texels packed row after row.
///
/// # Safety
/// `size` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_texture_packed_size(
    texture: *const LavaFlowGlTexture,
    size: *mut u64,
) -> LavaFlowStatus {
    guard("lava_flow_gl_texture_packed_size", || {
        let v = get(texture, "texture")?.packed_size() as u64;
        // SAFETY: the caller's contract on `size`.
        unsafe { put(size, v, "size") }
    })
}

/// Reads the packed texels through GL (`len` must be the packed size).
///
/// # Safety
/// `out` is valid for writes of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_texture_read(
    texture: *const LavaFlowGlTexture,
    out: *mut std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_gl_texture_read", || {
        let t = get(texture, "texture")?;
        check_len("lava_flow_gl_texture_read", len, t.packed_size() as u64)?;
        let texels = t.read()?;
        // SAFETY: the caller's contract on `out`.
        unsafe { bytes_out(out, len, "out")? }.copy_from_slice(&texels);
        Ok(())
    })
}

/// Writes packed texels through GL (`len` must be the packed size).
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_texture_write(
    texture: *const LavaFlowGlTexture,
    data: *const std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_gl_texture_write", || {
        let t = get(texture, "texture")?;
        check_len("lava_flow_gl_texture_write", len, t.packed_size() as u64)?;
        // SAFETY: the caller's contract on `data`.
        Ok(t.write(unsafe { bytes_in(data, len, "data")? })?)
    })
}

/// Releases a GL texture (NULL: nothing).
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_gl_texture_destroy(texture: *mut LavaFlowGlTexture) -> LavaFlowStatus {
    guard("lava_flow_gl_texture_destroy", || remove(texture).map(drop))
}

// ---------------------------------------------------------------------------------------------
// CUDA

/// Opens the CUDA device at `ordinal` (its primary context).
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_cuda_device_create(
    ordinal: u32,
    out: *mut *mut LavaFlowCudaDevice,
) -> LavaFlowStatus {
    guard("lava_flow_cuda_device_create", || {
        check_out(out, "out")?;
        let device = CudaDevice::open(ordinal as usize)?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, device) };
        Ok(())
    })
}

/// Opens the CUDA device `identity` names (an export's exporter).
///
/// # Safety
/// `identity` is NULL (refused) or readable; `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_cuda_device_for_identity(
    identity: *const LavaFlowDeviceIdentity,
    out: *mut *mut LavaFlowCudaDevice,
) -> LavaFlowStatus {
    guard("lava_flow_cuda_device_for_identity", || {
        check_out(out, "out")?;
        // SAFETY: the caller's contract on `identity`.
        let device = CudaDevice::for_identity(&unsafe { identity_required(identity)? })?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, device) };
        Ok(())
    })
}

/// Releases a CUDA device handle (NULL: nothing). Imported buffers keep it alive.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_cuda_device_destroy(device: *mut LavaFlowCudaDevice) -> LavaFlowStatus {
    guard("lava_flow_cuda_device_destroy", || remove(device).map(drop))
}

/// Imports a buffer export as CUDA device memory (`cuImportExternalMemory`, then a mapping at
/// the buffer's offset). The export stays valid.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_cuda_import_buffer(
    device: *const LavaFlowCudaDevice,
    export: *const LavaFlowExport,
    out: *mut *mut LavaFlowCudaBuffer,
) -> LavaFlowStatus {
    guard("lava_flow_cuda_import_buffer", || {
        check_out(out, "out")?;
        let device = get(device, "device")?;
        let buffer = match clone_export(export)? {
            SharedObject::Buffer(b) => device.import_buffer(b)?,
            other => return Err(wrong_kind("buffer", &other)),
        };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, buffer) };
        Ok(())
    })
}

/// The buffer's device address (`CUdeviceptr`) and size, for kernels of the caller's. Valid until
/// the handle is destroyed.
///
/// # Safety
/// `device_pointer` and `size` are NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_cuda_buffer_pointer(
    buffer: *const LavaFlowCudaBuffer,
    device_pointer: *mut u64,
    size: *mut u64,
) -> LavaFlowStatus {
    guard("lava_flow_cuda_buffer_pointer", || {
        let b = get(buffer, "buffer")?;
        // SAFETY: the caller's contract on both pointers.
        unsafe {
            put(device_pointer, b.device_ptr_raw(), "device_pointer")?;
            put(size, b.size_bytes() as u64, "size")
        }
    })
}

/// Copies the whole buffer to `out` (`len` must be its size) and waits for the copy.
///
/// # Safety
/// `out` is valid for writes of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_cuda_buffer_read(
    buffer: *const LavaFlowCudaBuffer,
    out: *mut std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_cuda_buffer_read", || {
        let b = get(buffer, "buffer")?;
        check_len("lava_flow_cuda_buffer_read", len, b.size_bytes() as u64)?;
        // SAFETY: the caller's contract on `out`.
        Ok(b.copy_to_host_into(unsafe { bytes_out(out, len, "out")? })?)
    })
}

/// Copies `len` bytes (the buffer's size) from `data` into the buffer and waits for the copy.
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_cuda_buffer_write(
    buffer: *const LavaFlowCudaBuffer,
    data: *const std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_cuda_buffer_write", || {
        let b = get(buffer, "buffer")?;
        check_len("lava_flow_cuda_buffer_write", len, b.size_bytes() as u64)?;
        // SAFETY: the caller's contract on `data`.
        Ok(b.copy_from_host(unsafe { bytes_in(data, len, "data")? })?)
    })
}

/// Releases a CUDA buffer (NULL: nothing).
///
/// # Safety
/// No kernel of the caller's still uses its device pointer.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_cuda_buffer_destroy(buffer: *mut LavaFlowCudaBuffer) -> LavaFlowStatus {
    guard("lava_flow_cuda_buffer_destroy", || remove(buffer).map(drop))
}

// ---------------------------------------------------------------------------------------------
// OpenCL

/// An OpenCL context and queue on the device `identity` names (its UUID, `cl_khr_device_uuid`).
///
/// # Safety
/// `identity` is NULL (refused) or readable; `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_opencl_context_create(
    identity: *const LavaFlowDeviceIdentity,
    out: *mut *mut LavaFlowOpenClContext,
) -> LavaFlowStatus {
    guard("lava_flow_opencl_context_create", || {
        check_out(out, "out")?;
        // SAFETY: the caller's contract on `identity`.
        let cl = ClContext::for_identity(&unsafe { identity_required(identity)? })?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, cl) };
        Ok(())
    })
}

/// Releases an OpenCL context handle (NULL: nothing). Imported buffers keep it alive.
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_opencl_context_destroy(cl: *mut LavaFlowOpenClContext) -> LavaFlowStatus {
    guard("lava_flow_opencl_context_destroy", || remove(cl).map(drop))
}

/// Imports a buffer export as an OpenCL buffer (`cl_khr_external_memory_opaque_fd`). The export
/// stays valid.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_opencl_import_buffer(
    cl: *const LavaFlowOpenClContext,
    export: *const LavaFlowExport,
    out: *mut *mut LavaFlowOpenClBuffer,
) -> LavaFlowStatus {
    guard("lava_flow_opencl_import_buffer", || {
        check_out(out, "out")?;
        let cl = get(cl, "cl")?;
        let buffer = match clone_export(export)? {
            SharedObject::Buffer(b) => cl.import_buffer(b)?,
            other => return Err(wrong_kind("buffer", &other)),
        };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, buffer) };
        Ok(())
    })
}

/// The buffer's `cl_mem` (owned by the handle: do not release it) and size.
///
/// # Safety
/// `mem` and `size` are NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_opencl_buffer_mem(
    buffer: *const LavaFlowOpenClBuffer,
    mem: *mut *mut std::ffi::c_void,
    size: *mut u64,
) -> LavaFlowStatus {
    guard("lava_flow_opencl_buffer_mem", || {
        let b = get(buffer, "buffer")?;
        // SAFETY: the caller's contract on both pointers.
        unsafe {
            put(mem, b.mem().cast::<std::ffi::c_void>(), "mem")?;
            put(size, b.size(), "size")
        }
    })
}

/// Reads `len` bytes from `offset` (acquires the buffer for OpenCL, reads, releases, waits).
///
/// # Safety
/// `out` is valid for writes of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_opencl_buffer_read(
    buffer: *const LavaFlowOpenClBuffer,
    offset: u64,
    out: *mut std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_opencl_buffer_read", || {
        let b = get(buffer, "buffer")?;
        // SAFETY: the caller's contract on `out`.
        let out = unsafe { bytes_out(out, len, "out")? };
        out.copy_from_slice(&b.read(offset, len)?);
        Ok(())
    })
}

/// Writes `len` bytes at `offset` (acquire, write, release, wait).
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn lava_flow_opencl_buffer_write(
    buffer: *const LavaFlowOpenClBuffer,
    offset: u64,
    data: *const std::ffi::c_void,
    len: usize,
) -> LavaFlowStatus {
    guard("lava_flow_opencl_buffer_write", || {
        let b = get(buffer, "buffer")?;
        // SAFETY: the caller's contract on `data`.
        Ok(b.write(offset, unsafe { bytes_in(data, len, "data")? })?)
    })
}

/// Releases an OpenCL buffer (NULL: nothing).
///
/// # Safety
/// No command of the caller's still uses its `cl_mem`.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_opencl_buffer_destroy(buffer: *mut LavaFlowOpenClBuffer) -> LavaFlowStatus {
    guard("lava_flow_opencl_buffer_destroy", || remove(buffer).map(drop))
}
