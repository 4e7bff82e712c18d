//! The GL entry points lava-flow calls, loaded through `eglGetProcAddress`.
//!
//! A hand-written table rather than glow: glow 0.18 has no `GL_EXT_memory_object(_fd)` or
//! `GL_EXT_semaphore(_fd)` entry points, and a generated binding of all of GL would be thousands of
//! lines for the few dozen functions sharing needs. Every pointer is resolved once per context; with
//! EGL 1.5 / `EGL_KHR_get_all_proc_addresses` (Mesa, NVIDIA, libglvnd) `eglGetProcAddress` returns core
//! functions too. A non-null pointer does not prove the context supports the function (libglvnd hands
//! out dispatch stubs for any name), so lava-flow checks extension strings before calling optional
//! entries.

#![allow(missing_docs)]

use std::ffi::c_void;

/// `GLenum`.
pub type GLenum = u32;
/// `GLuint`.
pub type GLuint = u32;
/// `GLint`.
pub type GLint = i32;
/// `GLsizei`.
pub type GLsizei = i32;
/// `GLsizeiptr` / `GLintptr`.
pub type GLsizeiptr = isize;
/// `GLbitfield`.
pub type GLbitfield = u32;
/// `GLboolean`.
pub type GLboolean = u8;

// Core GL enums lava-flow uses (values from the GL registry, gl.xml).
pub const NO_ERROR: GLenum = 0;
pub const INVALID_ENUM: GLenum = 0x0500;
pub const INVALID_VALUE: GLenum = 0x0501;
pub const INVALID_OPERATION: GLenum = 0x0502;
pub const OUT_OF_MEMORY: GLenum = 0x0505;
pub const INVALID_FRAMEBUFFER_OPERATION: GLenum = 0x0506;
pub const CONTEXT_LOST: GLenum = 0x0507;
pub const VENDOR: GLenum = 0x1F00;
pub const RENDERER: GLenum = 0x1F01;
pub const VERSION: GLenum = 0x1F02;
pub const EXTENSIONS: GLenum = 0x1F03;
pub const NUM_EXTENSIONS: GLenum = 0x821D;
pub const COPY_READ_BUFFER: GLenum = 0x8F36;
pub const COPY_WRITE_BUFFER: GLenum = 0x8F37;
pub const SHADER_STORAGE_BUFFER: GLenum = 0x90D2;
pub const STREAM_DRAW: GLenum = 0x88E0;
pub const STREAM_READ: GLenum = 0x88E1;
pub const MAP_READ_BIT: GLbitfield = 0x0001;
pub const MAP_WRITE_BIT: GLbitfield = 0x0002;
pub const PACK_ALIGNMENT: GLenum = 0x0D05;
pub const UNPACK_ALIGNMENT: GLenum = 0x0CF5;
pub const PACK_ROW_LENGTH: GLenum = 0x0D02;
pub const PACK_SKIP_ROWS: GLenum = 0x0D03;
pub const PACK_SKIP_PIXELS: GLenum = 0x0D04;
pub const PACK_SKIP_IMAGES: GLenum = 0x806B;
pub const PACK_IMAGE_HEIGHT: GLenum = 0x806C;
pub const UNPACK_ROW_LENGTH: GLenum = 0x0CF2;
pub const UNPACK_SKIP_ROWS: GLenum = 0x0CF3;
pub const UNPACK_SKIP_PIXELS: GLenum = 0x0CF4;
pub const UNPACK_SKIP_IMAGES: GLenum = 0x806D;
pub const UNPACK_IMAGE_HEIGHT: GLenum = 0x806E;
pub const PIXEL_PACK_BUFFER: GLenum = 0x88EB;
pub const PIXEL_UNPACK_BUFFER: GLenum = 0x88EC;
pub const TEXTURE_1D: GLenum = 0x0DE0;
pub const TEXTURE_2D: GLenum = 0x0DE1;
pub const TEXTURE_3D: GLenum = 0x806F;
pub const TEXTURE_1D_ARRAY: GLenum = 0x8C18;
pub const TEXTURE_2D_ARRAY: GLenum = 0x8C1A;
pub const TEXTURE_MIN_FILTER: GLenum = 0x2801;
pub const TEXTURE_MAG_FILTER: GLenum = 0x2800;
pub const NEAREST: GLint = 0x2600;
pub const READ_FRAMEBUFFER: GLenum = 0x8CA8;
pub const COLOR_ATTACHMENT0: GLenum = 0x8CE0;
pub const FRAMEBUFFER_COMPLETE: GLenum = 0x8CD5;
pub const COMPUTE_SHADER: GLenum = 0x91B9;
pub const COMPILE_STATUS: GLenum = 0x8B81;
pub const LINK_STATUS: GLenum = 0x8B82;
pub const INFO_LOG_LENGTH: GLenum = 0x8B84;
pub const READ_ONLY: GLenum = 0x88B8;
pub const WRITE_ONLY: GLenum = 0x88B9;
pub const READ_WRITE: GLenum = 0x88BA;
pub const ALL_BARRIER_BITS: GLbitfield = 0xFFFF_FFFF;
pub const RED: GLenum = 0x1903;
pub const RG: GLenum = 0x8227;
pub const RGBA: GLenum = 0x1908;
pub const RED_INTEGER: GLenum = 0x8D94;
pub const RGBA_INTEGER: GLenum = 0x8D99;
pub const UNSIGNED_BYTE: GLenum = 0x1401;
pub const UNSIGNED_INT: GLenum = 0x1405;
pub const FLOAT: GLenum = 0x1406;
pub const HALF_FLOAT: GLenum = 0x140B;
pub const R8: GLenum = 0x8229;
pub const RG8: GLenum = 0x822B;
pub const RGBA8: GLenum = 0x8058;
pub const RGBA8UI: GLenum = 0x8D7C;
pub const R16F: GLenum = 0x822D;
pub const RGBA16F: GLenum = 0x881A;
pub const R32UI: GLenum = 0x8236;
pub const R32F: GLenum = 0x822E;
pub const RG32F: GLenum = 0x8230;
pub const RGBA32F: GLenum = 0x8814;
pub const RGBA32UI: GLenum = 0x8D70;

// GL_EXT_memory_object, GL_EXT_memory_object_fd, GL_EXT_semaphore, GL_EXT_semaphore_fd.
pub const TEXTURE_TILING_EXT: GLenum = 0x9580;
pub const DEDICATED_MEMORY_OBJECT_EXT: GLenum = 0x9581;
pub const NUM_TILING_TYPES_EXT: GLenum = 0x9582;
pub const TILING_TYPES_EXT: GLenum = 0x9583;
pub const OPTIMAL_TILING_EXT: GLint = 0x9584;
pub const LINEAR_TILING_EXT: GLint = 0x9585;
pub const HANDLE_TYPE_OPAQUE_FD_EXT: GLenum = 0x9586;
pub const NUM_DEVICE_UUIDS_EXT: GLenum = 0x9596;
pub const DEVICE_UUID_EXT: GLenum = 0x9597;
pub const DRIVER_UUID_EXT: GLenum = 0x9598;
pub const UUID_SIZE_EXT: usize = 16;
pub const LAYOUT_GENERAL_EXT: GLenum = 0x958D;
pub const LAYOUT_COLOR_ATTACHMENT_EXT: GLenum = 0x958E;
pub const LAYOUT_DEPTH_STENCIL_ATTACHMENT_EXT: GLenum = 0x958F;
pub const LAYOUT_DEPTH_STENCIL_READ_ONLY_EXT: GLenum = 0x9590;
pub const LAYOUT_SHADER_READ_ONLY_EXT: GLenum = 0x9591;
pub const LAYOUT_TRANSFER_SRC_EXT: GLenum = 0x9592;
pub const LAYOUT_TRANSFER_DST_EXT: GLenum = 0x9593;
pub const LAYOUT_DEPTH_READ_ONLY_STENCIL_ATTACHMENT_EXT: GLenum = 0x9530;
pub const LAYOUT_DEPTH_ATTACHMENT_STENCIL_READ_ONLY_EXT: GLenum = 0x9531;

/// The name of a GL error code ([`GlCode`](crate::error::GlCode)'s spec name).
pub fn error_name(code: GLenum) -> String {
    crate::error::GlCode(code).to_string()
}

macro_rules! gl_table {
    ($( $(#[$doc:meta])* $field:ident = $name:literal : fn($($arg:ty),*) $(-> $ret:ty)?; )*) => {
        /// GL entry points, resolved through `eglGetProcAddress` for one context. Call them only
        /// while that context is current on the calling thread (hold a
        /// [`CurrentGl`](super::CurrentGl) guard, which derefs to this table).
        #[derive(Clone, Copy)]
        pub struct GlFunctions {
            $( $(#[$doc])* pub $field: unsafe extern "system" fn($($arg),*) $(-> $ret)?, )*
        }

        impl GlFunctions {
            /// Resolves every entry with `lookup`; returns the names it could not find.
            pub(crate) fn load(
                mut lookup: impl FnMut(&str) -> Option<extern "system" fn()>,
            ) -> Result<GlFunctions, Vec<&'static str>> {
                let mut missing = Vec::new();
                $(
                    let $field = lookup($name);
                    if $field.is_none() {
                        missing.push($name);
                    }
                )*
                if !missing.is_empty() {
                    return Err(missing);
                }
                Ok(GlFunctions {
                    $(
                        // SAFETY: eglGetProcAddress returned this pointer for the named GL
                        // function, whose C prototype (from gl.xml) is the type written here; fn
                        // pointers of every signature have the same size and representation.
                        $field: unsafe {
                            std::mem::transmute::<
                                extern "system" fn(),
                                unsafe extern "system" fn($($arg),*) $(-> $ret)?,
                            >($field.expect("checked above"))
                        },
                    )*
                })
            }
        }
    };
}

gl_table! {
    get_error = "glGetError": fn() -> GLenum;
    get_string = "glGetString": fn(GLenum) -> *const u8;
    get_stringi = "glGetStringi": fn(GLenum, GLuint) -> *const u8;
    get_integerv = "glGetIntegerv": fn(GLenum, *mut GLint);
    get_internalformativ = "glGetInternalformativ": fn(GLenum, GLenum, GLenum, GLsizei, *mut GLint);
    finish = "glFinish": fn();
    flush = "glFlush": fn();
    pixel_storei = "glPixelStorei": fn(GLenum, GLint);

    gen_buffers = "glGenBuffers": fn(GLsizei, *mut GLuint);
    delete_buffers = "glDeleteBuffers": fn(GLsizei, *const GLuint);
    bind_buffer = "glBindBuffer": fn(GLenum, GLuint);
    bind_buffer_base = "glBindBufferBase": fn(GLenum, GLuint, GLuint);
    buffer_sub_data = "glBufferSubData": fn(GLenum, GLsizeiptr, GLsizeiptr, *const c_void);
    /// Desktop GL only; GLES reads through `map_buffer_range`.
    get_buffer_sub_data = "glGetBufferSubData": fn(GLenum, GLsizeiptr, GLsizeiptr, *mut c_void);
    map_buffer_range = "glMapBufferRange": fn(GLenum, GLsizeiptr, GLsizeiptr, GLbitfield) -> *mut c_void;
    unmap_buffer = "glUnmapBuffer": fn(GLenum) -> GLboolean;
    buffer_data = "glBufferData": fn(GLenum, GLsizeiptr, *const c_void, GLenum);
    copy_buffer_sub_data = "glCopyBufferSubData": fn(GLenum, GLenum, GLsizeiptr, GLsizeiptr, GLsizeiptr);

    gen_textures = "glGenTextures": fn(GLsizei, *mut GLuint);
    delete_textures = "glDeleteTextures": fn(GLsizei, *const GLuint);
    bind_texture = "glBindTexture": fn(GLenum, GLuint);
    tex_parameteri = "glTexParameteri": fn(GLenum, GLenum, GLint);
    tex_sub_image_1d = "glTexSubImage1D": fn(GLenum, GLint, GLint, GLsizei, GLenum, GLenum, *const c_void);
    tex_sub_image_2d = "glTexSubImage2D":
        fn(GLenum, GLint, GLint, GLint, GLsizei, GLsizei, GLenum, GLenum, *const c_void);
    tex_sub_image_3d = "glTexSubImage3D":
        fn(GLenum, GLint, GLint, GLint, GLint, GLsizei, GLsizei, GLsizei, GLenum, GLenum, *const c_void);
    /// Desktop GL only; GLES reads through a framebuffer and `read_pixels`.
    get_tex_image = "glGetTexImage": fn(GLenum, GLint, GLenum, GLenum, *mut c_void);

    gen_framebuffers = "glGenFramebuffers": fn(GLsizei, *mut GLuint);
    delete_framebuffers = "glDeleteFramebuffers": fn(GLsizei, *const GLuint);
    bind_framebuffer = "glBindFramebuffer": fn(GLenum, GLuint);
    framebuffer_texture_2d = "glFramebufferTexture2D": fn(GLenum, GLenum, GLenum, GLuint, GLint);
    framebuffer_texture_layer = "glFramebufferTextureLayer": fn(GLenum, GLenum, GLuint, GLint, GLint);
    check_framebuffer_status = "glCheckFramebufferStatus": fn(GLenum) -> GLenum;
    read_pixels = "glReadPixels": fn(GLint, GLint, GLsizei, GLsizei, GLenum, GLenum, *mut c_void);

    create_shader = "glCreateShader": fn(GLenum) -> GLuint;
    shader_source = "glShaderSource": fn(GLuint, GLsizei, *const *const u8, *const GLint);
    compile_shader = "glCompileShader": fn(GLuint);
    get_shaderiv = "glGetShaderiv": fn(GLuint, GLenum, *mut GLint);
    get_shader_info_log = "glGetShaderInfoLog": fn(GLuint, GLsizei, *mut GLsizei, *mut u8);
    delete_shader = "glDeleteShader": fn(GLuint);
    create_program = "glCreateProgram": fn() -> GLuint;
    attach_shader = "glAttachShader": fn(GLuint, GLuint);
    link_program = "glLinkProgram": fn(GLuint);
    get_programiv = "glGetProgramiv": fn(GLuint, GLenum, *mut GLint);
    get_program_info_log = "glGetProgramInfoLog": fn(GLuint, GLsizei, *mut GLsizei, *mut u8);
    use_program = "glUseProgram": fn(GLuint);
    delete_program = "glDeleteProgram": fn(GLuint);
    uniform1ui = "glUniform1ui": fn(GLint, GLuint);
    bind_image_texture = "glBindImageTexture":
        fn(GLuint, GLuint, GLint, GLboolean, GLint, GLenum, GLenum);
    dispatch_compute = "glDispatchCompute": fn(GLuint, GLuint, GLuint);
    memory_barrier = "glMemoryBarrier": fn(GLbitfield);

    get_unsigned_bytev_ext = "glGetUnsignedBytevEXT": fn(GLenum, *mut u8);
    get_unsigned_bytei_v_ext = "glGetUnsignedBytei_vEXT": fn(GLenum, GLuint, *mut u8);
    create_memory_objects_ext = "glCreateMemoryObjectsEXT": fn(GLsizei, *mut GLuint);
    delete_memory_objects_ext = "glDeleteMemoryObjectsEXT": fn(GLsizei, *const GLuint);
    is_memory_object_ext = "glIsMemoryObjectEXT": fn(GLuint) -> GLboolean;
    memory_object_parameteriv_ext = "glMemoryObjectParameterivEXT": fn(GLuint, GLenum, *const GLint);
    import_memory_fd_ext = "glImportMemoryFdEXT": fn(GLuint, u64, GLenum, GLint);
    buffer_storage_mem_ext = "glBufferStorageMemEXT": fn(GLenum, GLsizeiptr, GLuint, u64);
    /// Desktop GL only (GLES has no 1D textures).
    tex_storage_mem_1d_ext = "glTexStorageMem1DEXT": fn(GLenum, GLsizei, GLenum, GLsizei, GLuint, u64);
    tex_storage_mem_2d_ext = "glTexStorageMem2DEXT":
        fn(GLenum, GLsizei, GLenum, GLsizei, GLsizei, GLuint, u64);
    tex_storage_mem_3d_ext = "glTexStorageMem3DEXT":
        fn(GLenum, GLsizei, GLenum, GLsizei, GLsizei, GLsizei, GLuint, u64);

    gen_semaphores_ext = "glGenSemaphoresEXT": fn(GLsizei, *mut GLuint);
    delete_semaphores_ext = "glDeleteSemaphoresEXT": fn(GLsizei, *const GLuint);
    is_semaphore_ext = "glIsSemaphoreEXT": fn(GLuint) -> GLboolean;
    import_semaphore_fd_ext = "glImportSemaphoreFdEXT": fn(GLuint, GLenum, GLint);
    wait_semaphore_ext = "glWaitSemaphoreEXT":
        fn(GLuint, GLuint, *const GLuint, GLuint, *const GLuint, *const GLenum);
    signal_semaphore_ext = "glSignalSemaphoreEXT":
        fn(GLuint, GLuint, *const GLuint, GLuint, *const GLuint, *const GLenum);
}

#[cfg(test)]
mod tests {
    /// The GL importer's own constants (what `glGetError` is compared with) agree.
    #[test]
    fn gl_names_agree_with_the_importers_constants() {
        use super as f;
        assert_eq!(crate::error::GlCode::OUT_OF_MEMORY.0, f::OUT_OF_MEMORY);
        assert_eq!(crate::error::GlCode::INVALID_VALUE.0, f::INVALID_VALUE);
        assert_eq!(crate::error::GlCode::INVALID_OPERATION.0, f::INVALID_OPERATION);
        assert_eq!(crate::error::GlCode::INVALID_ENUM.0, f::INVALID_ENUM);
        assert_eq!(crate::error::GlCode::CONTEXT_LOST.0, f::CONTEXT_LOST);
        assert_eq!(f::error_name(f::OUT_OF_MEMORY), "GL_OUT_OF_MEMORY");
    }
}
