//! Headless GL contexts through EGL, chosen by device identity, and the make-current rule.

use std::ffi::{c_char, c_void, CStr};
use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::ThreadId;

use khronos_egl as egl;
use raw_gpu_handle::{DeviceIdentity, Uuid};

use super::functions::{self as f, GlFunctions};
use crate::error::{DriverCode, EglCode, GlCode};
use crate::{Error, Result};

const EGL_PLATFORM_DEVICE_EXT: egl::Enum = 0x313F;
const EGL_PLATFORM_SURFACELESS_MESA: egl::Enum = 0x31DD;
const EGL_DRM_DEVICE_FILE_EXT: egl::Int = 0x3233;

type GetPlatformDisplayExt = unsafe extern "system" fn(egl::Enum, *mut c_void, *const egl::Int) -> *mut c_void;
type QueryDevicesExt = unsafe extern "system" fn(egl::Int, *mut *mut c_void, *mut egl::Int) -> egl::Boolean;
type QueryDeviceStringExt = unsafe extern "system" fn(*mut c_void, egl::Int) -> *const c_char;

/// libEGL, loaded once per process, with the client extensions lava-flow uses.
pub(crate) struct Egl {
    pub(crate) api: egl::DynamicInstance<egl::EGL1_4>,
    client_extensions: String,
    get_platform_display: Option<GetPlatformDisplayExt>,
    query_devices: Option<QueryDevicesExt>,
    query_device_string: Option<QueryDeviceStringExt>,
}

static EGL: OnceLock<std::result::Result<Egl, String>> = OnceLock::new();

pub(crate) fn egl() -> Result<&'static Egl> {
    let loaded = EGL.get_or_init(|| {
        // SAFETY: libEGL.so.1 is the Khronos EGL library (libglvnd or Mesa's); loading it runs its
        // initialisers, which EGL implementations are designed for. khronos-egl opens it with
        // RTLD_NODELETE so it is never unloaded while pointers from it live.
        let api = unsafe { egl::DynamicInstance::<egl::EGL1_4>::load_required_from_filename("libEGL.so.1") }
            .map_err(|e| e.to_string())?;
        // EGL_NO_DISPLAY query of client extensions (EGL_EXT_client_extensions); absent -> error.
        let client_extensions =
            api.query_string(None, egl::EXTENSIONS).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let has = |name: &str| client_extensions.split_ascii_whitespace().any(|e| e == name);
        let lookup = |name: &str| api.get_proc_address(name);
        // Each pointer below is eglGetProcAddress's answer for an EGL extension function whose
        // client extension is listed, transmuted to its prototype from the EGL registry.
        let get_platform_display = has("EGL_EXT_platform_base")
            .then(|| lookup("eglGetPlatformDisplayEXT"))
            .flatten()
            // SAFETY: a non-null pointer to eglGetPlatformDisplayEXT, whose registry prototype is
            // GetPlatformDisplayExt; fn pointers of every signature have one size and representation.
            .map(|p| unsafe { std::mem::transmute::<extern "system" fn(), GetPlatformDisplayExt>(p) });
        let query_devices = (has("EGL_EXT_device_enumeration") || has("EGL_EXT_device_base"))
            .then(|| lookup("eglQueryDevicesEXT"))
            .flatten()
            // SAFETY: a non-null pointer to eglQueryDevicesEXT, whose registry prototype is QueryDevicesExt.
            .map(|p| unsafe { std::mem::transmute::<extern "system" fn(), QueryDevicesExt>(p) });
        let query_device_string = (has("EGL_EXT_device_query") || has("EGL_EXT_device_base"))
            .then(|| lookup("eglQueryDeviceStringEXT"))
            .flatten()
            // SAFETY: a non-null pointer to eglQueryDeviceStringEXT, whose registry prototype is
            // QueryDeviceStringExt.
            .map(|p| unsafe { std::mem::transmute::<extern "system" fn(), QueryDeviceStringExt>(p) });
        Ok(Egl { api, client_extensions, get_platform_display, query_devices, query_device_string })
    });
    loaded.as_ref().map_err(|reason| Error::LibraryUnavailable {
        library: "libEGL.so.1",
        reason: reason.clone(),
        advice: "install an EGL implementation: `apt-get install libegl1 libegl-mesa0` for Mesa's software GL, or the GPU vendor's driver (NVIDIA ships libEGL_nvidia through libglvnd)".into(),
    })
}

/// khronos-egl's error as the `EGLint` `eglGetError` returned.
fn egl_code(e: egl::Error) -> EglCode {
    EglCode(egl::Int::from(e))
}

impl Egl {
    fn has_client_extension(&self, name: &str) -> bool {
        self.client_extensions.split_ascii_whitespace().any(|e| e == name)
    }

    fn error(&self, call: &'static str, action: impl Into<String>, advice: &str) -> Error {
        // `None` is EGL_SUCCESS: the failed call recorded no error.
        let code = self.api.get_error().map_or(EglCode::SUCCESS, egl_code);
        Error::Api { api: "EGL", action: action.into(), call, code: DriverCode::Egl(code), advice: advice.into() }
    }
}

/// One EGL display lava-flow can open a headless context on.
#[derive(Clone, Debug)]
struct Candidate {
    platform: &'static str,
    label: String,
    display: egl::Display,
}

/// The displays to probe, best first: every EGL device (`EGL_EXT_platform_device`, NVIDIA's
/// headless path) except Mesa's software device, then Mesa's surfaceless platform (llvmpipe and
/// Mesa hardware drivers without a window system).
fn candidates(egl: &Egl) -> Vec<Candidate> {
    let mut out = Vec::new();
    let Some(get_platform_display) = egl.get_platform_display else { return out };
    let surfaceless = egl.has_client_extension("EGL_MESA_platform_surfaceless");
    if let (Some(query_devices), true) = (egl.query_devices, egl.has_client_extension("EGL_EXT_platform_device")) {
        let mut count: egl::Int = 0;
        // SAFETY: the EGL_EXT_device_enumeration entry point (listed above); with max_devices 0 and a
        // null array it only writes the count, through a pointer to a local.
        let ok = unsafe { query_devices(0, std::ptr::null_mut(), &mut count) } == egl::TRUE;
        let mut devices = vec![std::ptr::null_mut::<c_void>(); if ok { count.max(0) as usize } else { 0 }];
        if !devices.is_empty() {
            // SAFETY: `devices` has room for `count` handles, the max_devices passed, so EGL writes at most
            // that many; `count` is a valid out-pointer.
            let ok = unsafe { query_devices(count, devices.as_mut_ptr(), &mut count) } == egl::TRUE;
            devices.truncate(if ok { count.max(0) as usize } else { 0 });
        }
        for (i, device) in devices.into_iter().enumerate() {
            let query = |name: egl::Int| -> Option<String> {
                let q = egl.query_device_string?;
                // SAFETY: `device` came from eglQueryDevicesEXT and EGL devices live for the process; `name` is
                // EGL_EXTENSIONS or, only when the device lists EGL_EXT_device_drm, EGL_DRM_DEVICE_FILE_EXT.
                let p = unsafe { q(device, name) };
                // SAFETY: a non-null result is a NUL-terminated string owned by EGL for the device's lifetime
                // (the process); it is copied before anything else is called.
                (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            };
            let extensions = query(egl::EXTENSIONS).unwrap_or_default();
            let software = extensions.split_ascii_whitespace().any(|e| e == "EGL_MESA_device_software");
            if software && surfaceless {
                continue;
            }
            let label = if software {
                format!("EGL device {i} (software)")
            } else if let Some(file) = extensions
                .split_ascii_whitespace()
                .any(|e| e == "EGL_EXT_device_drm")
                .then(|| query(EGL_DRM_DEVICE_FILE_EXT))
                .flatten()
            {
                format!("EGL device {i} ({file})")
            } else {
                format!("EGL device {i}")
            };
            let attribs = [egl::NONE];
            // SAFETY: EGL_PLATFORM_DEVICE_EXT takes an EGLDeviceEXT from eglQueryDevicesEXT as its native
            // display; the attribute list is a NONE-terminated local that outlives the call.
            let display = unsafe { get_platform_display(EGL_PLATFORM_DEVICE_EXT, device, attribs.as_ptr()) };
            if !display.is_null() {
                // SAFETY: a non-null EGLDisplay that eglGetPlatformDisplayEXT returned, valid for the process.
                out.push(Candidate { platform: "device", label, display: unsafe { egl::Display::from_ptr(display) } });
            }
        }
    }
    if surfaceless {
        let attribs = [egl::NONE];
        // SAFETY: the surfaceless platform takes EGL_DEFAULT_DISPLAY (null) as native display.
        let display =
            unsafe { get_platform_display(EGL_PLATFORM_SURFACELESS_MESA, std::ptr::null_mut(), attribs.as_ptr()) };
        if !display.is_null() {
            out.push(Candidate {
                platform: "surfaceless",
                label: "Mesa surfaceless".into(),
                // SAFETY: a non-null EGLDisplay that eglGetPlatformDisplayEXT returned, valid for the process.
                display: unsafe { egl::Display::from_ptr(display) },
            });
        }
    }
    out
}

/// What `lava-flow info` and device selection know about one GL device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GlDeviceInfo {
    /// Position in lava-flow's probe order (EGL devices, then Mesa surfaceless).
    pub index: usize,
    /// "device" (`EGL_EXT_platform_device`) or "surfaceless" (`EGL_MESA_platform_surfaceless`).
    pub platform: &'static str,
    /// The EGL device or platform, in words.
    pub label: String,
    /// The context's API: "OpenGL 4.5 core" or "OpenGL ES 3.2".
    pub api: &'static str,
    /// `GL_VENDOR`.
    pub vendor: String,
    /// `GL_RENDERER`.
    pub renderer: String,
    /// `GL_VERSION`.
    pub version: String,
    /// `GL_DEVICE_UUID_EXT` (index 0) and `GL_DRIVER_UUID_EXT`.
    #[serde(serialize_with = "serialize_identity")]
    pub identity: DeviceIdentity,
    /// `GL_EXT_memory_object_fd`: opaque-fd memory imports as buffers and textures.
    pub memory_object_fd: bool,
    /// `GL_EXT_semaphore_fd`: opaque-fd binary semaphores import.
    pub semaphore_fd: bool,
    /// What imports, in words ("opaque-fd memory", "opaque-fd binary semaphores").
    pub imports: Vec<&'static str>,
    /// Whether the driver places buffers and textures at the offset given to
    /// `glBufferStorageMemEXT` / `glTexStorageMem*EXT`. llvmpipe ignores it (every resource starts
    /// at the memory object's first byte), so lava-flow refuses non-zero offsets there.
    pub honours_memory_offset: bool,
}

fn serialize_identity<S: serde::Serializer>(id: &DeviceIdentity, s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("DeviceIdentity", 2)?;
    st.serialize_field("device_uuid", &id.device_uuid.to_string())?;
    st.serialize_field("driver_uuid", &id.driver_uuid.to_string())?;
    st.end()
}

/// Who has the context current, and what to restore when they let go.
struct Owner {
    thread: Option<ThreadId>,
    depth: usize,
    saved: Saved,
}

#[derive(Clone, Copy)]
struct Saved {
    api: egl::Enum,
    display: Option<egl::Display>,
    draw: Option<egl::Surface>,
    read: Option<egl::Surface>,
    context: Option<egl::Context>,
}

pub(crate) struct GlInner {
    egl: &'static Egl,
    display: egl::Display,
    context: egl::Context,
    client_api: egl::Enum,
    pub(crate) gl: GlFunctions,
    pub(crate) info: GlDeviceInfo,
    pub(crate) desktop: bool,
    /// Extra device UUIDs of a multi-device context (`GL_NUM_DEVICE_UUIDS_EXT` > 1).
    device_uuids: Vec<Uuid>,
    owner: Mutex<Owner>,
    released: Condvar,
    deferred_errors: Mutex<Vec<crate::error::DeferredError>>,
}

// SAFETY: the EGL handles are plain identifiers valid on any thread, and EGL calls are thread
// safe. GL calls happen only through CurrentGl, which the `owner` mutex grants to one thread at a
// time and which is !Send, so no GL call runs on a thread where the context is not current.
unsafe impl Send for GlInner {}
// SAFETY: as for Send; shared access only reads fields fixed after `open` or goes through the
// mutexes.
unsafe impl Sync for GlInner {}

/// A headless GL context (EGL, no window) on one device, able to import lava-flow's exports.
///
/// Cheap to clone (reference counted); every imported buffer, texture and semaphore keeps it alive.
///
/// **Threading rule**: a GL context is current on at most one thread at a time. Every lava-flow
/// call on GL objects makes the context current on the calling thread for the call's duration
/// (blocking while another thread holds it) and then restores whatever context and client API that
/// thread had before, so it never disturbs the application's own GL state. Hold a guard from
/// [`GlContext::make_current`] across a run of calls (or your own GL calls) to avoid the switches;
/// the guard is not `Send` and nests on one thread.
#[derive(Clone)]
pub struct GlContext {
    pub(crate) inner: Arc<GlInner>,
}

impl std::fmt::Debug for GlContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlContext")
            .field("renderer", &self.inner.info.renderer)
            .field("identity", &self.inner.info.identity)
            .finish()
    }
}

/// Proof that a [`GlContext`] is current on this thread; derefs to the [`GlFunctions`] table.
/// Dropping it restores the thread's previous context.
pub struct CurrentGl<'a> {
    inner: &'a GlInner,
    _not_send: PhantomData<*const ()>,
}

impl std::ops::Deref for CurrentGl<'_> {
    type Target = GlFunctions;
    fn deref(&self) -> &GlFunctions {
        &self.inner.gl
    }
}

impl CurrentGl<'_> {
    /// Reads and clears the GL error flags; `Err` names `call` and the first error.
    pub fn check(&self, call: &'static str, action: impl Into<String>) -> Result<()> {
        let mut first = f::NO_ERROR;
        // glGetError reports one flag per call; drain them all so later checks start clean.
        for _ in 0..16 {
            // SAFETY: this guard exists only while the context is current on this thread (it is !Send);
            // glGetError takes no arguments.
            let e = unsafe { (self.inner.gl.get_error)() };
            if e == f::NO_ERROR {
                break;
            }
            if first == f::NO_ERROR {
                first = e;
            }
        }
        if first == f::NO_ERROR {
            Ok(())
        } else {
            Err(gl_error(call, first, action, &self.inner.info))
        }
    }

    /// Drains pending GL errors without reporting them (before a call whose error is checked).
    pub(crate) fn clear_errors(&self) {
        for _ in 0..16 {
            // SAFETY: this guard exists only while the context is current on this thread; glGetError takes no
            // arguments.
            if unsafe { (self.inner.gl.get_error)() } == f::NO_ERROR {
                break;
            }
        }
    }

    /// Whether the context is desktop GL (else GLES).
    pub fn is_desktop(&self) -> bool {
        self.inner.desktop
    }
}

pub(crate) fn gl_error(call: &'static str, code: u32, action: impl Into<String>, info: &GlDeviceInfo) -> Error {
    let advice = match code {
        f::OUT_OF_MEMORY => {
            "the driver has no room for the object, or refuses its size: free GL objects or import less"
        }
        f::INVALID_VALUE => "a size, offset or handle was refused: pass the export's description unchanged",
        f::INVALID_OPERATION => {
            "the object is in a state that forbids this call (already has storage, or the extension is absent)"
        }
        f::INVALID_ENUM => "the driver does not accept this format or target",
        f::CONTEXT_LOST => "the GL context was lost: create a new GlContext",
        _ => "see `lava-flow info` for what this GL device supports",
    };
    Error::Api {
        api: "OpenGL",
        action: format!("{} (on {})", action.into(), info.renderer),
        call,
        code: DriverCode::Gl(GlCode(code)),
        advice: advice.into(),
    }
}

impl Drop for CurrentGl<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.inner.release_current() {
            self.inner.defer_error(e);
        }
    }
}

impl GlInner {
    fn acquire_current(&self) -> Result<()> {
        let me = std::thread::current().id();
        let mut owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match owner.thread {
                Some(t) if t == me => {
                    owner.depth += 1;
                    return Ok(());
                }
                Some(_) => owner = self.released.wait(owner).unwrap_or_else(|p| p.into_inner()),
                None => break,
            }
        }
        let api = &self.egl.api;
        let saved = Saved {
            api: api.query_api(),
            display: api.get_current_display(),
            draw: api.get_current_surface(egl::DRAW),
            read: api.get_current_surface(egl::READ),
            context: api.get_current_context(),
        };
        if saved.api != self.client_api {
            api.bind_api(self.client_api)
                .map_err(|_| self.egl.error("eglBindAPI", "selecting the GL client API", "the EGL lacks this API"))?;
        }
        if let Err(e) = api.make_current(self.display, None, None, Some(self.context)) {
            let err = Error::Api {
                api: "EGL",
                action: format!("making the {} context current", self.info.renderer),
                call: "eglMakeCurrent",
                code: DriverCode::Egl(egl_code(e)),
                advice: "EGL_BAD_ACCESS means the context is current on a thread outside lava-flow's guard; otherwise the driver lacks EGL_KHR_surfaceless_context".into(),
            };
            let _ = api.bind_api(saved.api);
            return Err(err);
        }
        owner.thread = Some(me);
        owner.depth = 1;
        owner.saved = saved;
        Ok(())
    }

    fn release_current(&self) -> Result<()> {
        let mut owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        owner.depth = owner.depth.saturating_sub(1);
        if owner.depth > 0 {
            return Ok(());
        }
        let saved = owner.saved;
        let api = &self.egl.api;
        let restored = match (saved.context, saved.display) {
            (Some(ctx), Some(display)) if ctx != self.context => {
                if saved.api != self.client_api {
                    // Making our context non-current first: the other API's context may be on
                    // another display.
                    let _ = api.make_current(self.display, None, None, None);
                    let _ = api.bind_api(saved.api);
                }
                api.make_current(display, saved.draw, saved.read, Some(ctx))
            }
            _ => {
                let r = api.make_current(self.display, None, None, None);
                if saved.api != self.client_api {
                    let _ = api.bind_api(saved.api);
                }
                r
            }
        };
        owner.thread = None;
        drop(owner);
        self.released.notify_one();
        restored.map_err(|e| Error::Api {
            api: "EGL",
            action: "restoring the thread's previous GL context".into(),
            call: "eglMakeCurrent",
            code: DriverCode::Egl(egl_code(e)),
            advice: "the previous context was destroyed while lava-flow's was current".into(),
        })
    }

    pub(crate) fn current(&self) -> Result<CurrentGl<'_>> {
        self.acquire_current()?;
        Ok(CurrentGl { inner: self, _not_send: PhantomData })
    }

    pub(crate) fn defer_error(&self, error: impl Into<crate::error::DeferredError>) {
        self.deferred_errors.lock().unwrap_or_else(|p| p.into_inner()).push(error.into());
    }

    /// Opens a context on `candidate` and reads what it is. `index` is its probe position.
    fn open(egl: &'static Egl, candidate: &Candidate, index: usize) -> Result<GlInner> {
        let api = &egl.api;
        let display = candidate.display;
        api.initialize(display).map_err(|e| Error::Api {
            api: "EGL",
            action: format!("initializing {}", candidate.label),
            call: "eglInitialize",
            code: DriverCode::Egl(egl_code(e)),
            advice: "the EGL driver for this device is missing or broken (`lava-flow info` lists GL devices)".into(),
        })?;
        let display_exts = api.query_string(Some(display), egl::EXTENSIONS).map(|s| s.to_string_lossy().into_owned());
        let display_exts = display_exts.unwrap_or_default();
        let has = |n: &str| display_exts.split_ascii_whitespace().any(|e| e == n);
        if !has("EGL_KHR_surfaceless_context") {
            return Err(Error::unsupported(
                format!("a headless GL context on {}", candidate.label),
                "the display lacks EGL_KHR_surfaceless_context",
                "EGL_KHR_surfaceless_context",
                "use a driver with surfaceless contexts (Mesa, NVIDIA)",
            ));
        }
        let previous_api = api.query_api();
        let attempts: [(egl::Enum, egl::Int, &'static str, &[egl::Int]); 2] = [
            (
                egl::OPENGL_API,
                egl::OPENGL_BIT,
                "OpenGL 4.5 core",
                &[
                    egl::CONTEXT_MAJOR_VERSION,
                    4,
                    egl::CONTEXT_MINOR_VERSION,
                    5,
                    egl::CONTEXT_OPENGL_PROFILE_MASK,
                    egl::CONTEXT_OPENGL_CORE_PROFILE_BIT,
                    egl::NONE,
                ],
            ),
            (
                egl::OPENGL_ES_API,
                egl::OPENGL_ES3_BIT,
                "OpenGL ES 3.2",
                &[egl::CONTEXT_MAJOR_VERSION, 3, egl::CONTEXT_MINOR_VERSION, 2, egl::NONE],
            ),
        ];
        let mut created = None;
        let mut failures = Vec::new();
        for (client_api, bit, name, attribs) in attempts {
            if api.bind_api(client_api).is_err() {
                failures.push(format!("{name}: eglBindAPI refused"));
                continue;
            }
            let config = if has("EGL_KHR_no_config_context") || has("EGL_MESA_configless_context") {
                // SAFETY: EGL_NO_CONFIG_KHR (null) is a valid config on displays with EGL_KHR_no_config_context
                // or EGL_MESA_configless_context, checked just above.
                Some(unsafe { egl::Config::from_ptr(std::ptr::null_mut()) })
            } else {
                api.choose_first_config(display, &[egl::RENDERABLE_TYPE, bit, egl::NONE]).ok().flatten()
            };
            let Some(config) = config else {
                failures.push(format!("{name}: no EGL config"));
                continue;
            };
            match api.create_context(display, config, None, attribs) {
                Ok(ctx) => {
                    created = Some((ctx, client_api, name));
                    break;
                }
                Err(e) => failures.push(format!("{name}: eglCreateContext {e:?}")),
            }
        }
        let _ = api.bind_api(previous_api);
        let Some((context, client_api, api_name)) = created else {
            return Err(Error::unsupported(
                format!("a GL 4.5 core or GLES 3.2 context on {}", candidate.label),
                failures.join("; "),
                "EGL_KHR_create_context",
                "use a driver with desktop GL 4.5 or GLES 3.2 (Mesa 22+, NVIDIA)",
            ));
        };
        let gl = match GlFunctions::load(|name| api.get_proc_address(name)) {
            Ok(gl) => gl,
            Err(missing) => {
                let _ = api.destroy_context(display, context);
                return Err(Error::unsupported(
                    format!("GL entry points on {}", candidate.label),
                    format!("eglGetProcAddress found none for {}", missing.join(", ")),
                    "EGL_KHR_get_all_proc_addresses",
                    "use an EGL 1.5 implementation (libglvnd, Mesa, NVIDIA)",
                ));
            }
        };
        let placeholder = GlDeviceInfo {
            index,
            platform: candidate.platform,
            label: candidate.label.clone(),
            api: api_name,
            vendor: String::new(),
            renderer: candidate.label.clone(),
            version: String::new(),
            identity: DeviceIdentity::default(),
            memory_object_fd: false,
            semaphore_fd: false,
            imports: Vec::new(),
            honours_memory_offset: true,
        };
        let mut inner = GlInner {
            egl,
            display,
            context,
            client_api,
            gl,
            info: placeholder,
            desktop: client_api == egl::OPENGL_API,
            device_uuids: Vec::new(),
            owner: Mutex::new(Owner {
                thread: None,
                depth: 0,
                saved: Saved { api: previous_api, display: None, draw: None, read: None, context: None },
            }),
            released: Condvar::new(),
            deferred_errors: Mutex::new(Vec::new()),
        };
        // On error, dropping `inner` destroys the context.
        let (info, uuids) = inner.describe()?;
        inner.info = info;
        inner.device_uuids = uuids;
        Ok(inner)
    }

    /// Reads strings, extensions and UUIDs with the context current.
    fn describe(&self) -> Result<(GlDeviceInfo, Vec<Uuid>)> {
        let gl = self.current()?;
        let string = |name: u32| {
            // SAFETY: `gl` keeps the context current; glGetString takes an enum and returns a static string
            // or null.
            let p = unsafe { (gl.get_string)(name) };
            if p.is_null() {
                String::new()
            } else {
                // SAFETY: non-null, so a NUL-terminated string the GL owns for the context's lifetime; copied at once.
                unsafe { CStr::from_ptr(p.cast()) }.to_string_lossy().into_owned()
            }
        };
        let mut info = self.info.clone();
        info.vendor = string(f::VENDOR);
        info.renderer = string(f::RENDERER);
        info.version = string(f::VERSION);
        let mut count: f::GLint = 0;
        // SAFETY: `gl` keeps the context current; one GLint out, a local.
        unsafe { (gl.get_integerv)(f::NUM_EXTENSIONS, &mut count) };
        let mut extensions = Vec::with_capacity(count.max(0) as usize);
        for i in 0..count.max(0) as u32 {
            // SAFETY: `gl` keeps the context current; i < GL_NUM_EXTENSIONS (an out-of-range index would
            // only raise a GL error).
            let p = unsafe { (gl.get_stringi)(f::EXTENSIONS, i) };
            if !p.is_null() {
                // SAFETY: non-null, so a NUL-terminated string the GL owns for the context's lifetime; copied at once.
                extensions.push(unsafe { CStr::from_ptr(p.cast()) }.to_string_lossy().into_owned());
            }
        }
        gl.clear_errors();
        let has = |n: &str| extensions.iter().any(|e| e == n);
        info.memory_object_fd = has("GL_EXT_memory_object") && has("GL_EXT_memory_object_fd");
        info.semaphore_fd = has("GL_EXT_semaphore") && has("GL_EXT_semaphore_fd");
        if !(has("GL_EXT_memory_object") || has("GL_EXT_semaphore")) {
            return Err(Error::unsupported(
                format!("GL memory import on {}", info.renderer),
                "the context has neither GL_EXT_memory_object nor GL_EXT_semaphore, so it cannot report its device UUID",
                "GL_EXT_external_objects",
                "use a driver with GL_EXT_memory_object_fd (Mesa 20+, NVIDIA)",
            ));
        }
        let mut driver = [0u8; f::UUID_SIZE_EXT];
        // SAFETY: `gl` keeps the context current, and the context has GL_EXT_memory_object or
        // GL_EXT_semaphore (checked above), which define the query; it writes GL_UUID_SIZE_EXT (16)
        // bytes, the size of `driver`.
        unsafe { (gl.get_unsigned_bytev_ext)(f::DRIVER_UUID_EXT, driver.as_mut_ptr()) };
        let mut n: f::GLint = 0;
        // SAFETY: `gl` keeps the context current; one GLint out, a local.
        unsafe { (gl.get_integerv)(f::NUM_DEVICE_UUIDS_EXT, &mut n) };
        let mut uuids = Vec::new();
        for i in 0..n.max(1) as u32 {
            let mut device = [0u8; f::UUID_SIZE_EXT];
            // SAFETY: as for the driver UUID: 16 bytes out into `device`; an index past
            // GL_NUM_DEVICE_UUIDS_EXT only raises a GL error.
            unsafe { (gl.get_unsigned_bytei_v_ext)(f::DEVICE_UUID_EXT, i, device.as_mut_ptr()) };
            uuids.push(Uuid(device));
        }
        gl.check("glGetUnsignedBytei_vEXT", "reading GL_DEVICE_UUID_EXT and GL_DRIVER_UUID_EXT")?;
        // llvmpipe's resource_from_memobj drops the offset (Mesa 22.3, and later versions read the
        // same way): a resource at offset N would alias the allocation's first bytes.
        info.honours_memory_offset = !info.renderer.starts_with("llvmpipe");
        info.identity = DeviceIdentity { device_uuid: uuids[0], driver_uuid: Uuid(driver), luid: None };
        info.imports = [
            (info.memory_object_fd, "opaque-fd memory (buffers, textures)"),
            (info.semaphore_fd, "opaque-fd binary semaphores"),
        ]
        .into_iter()
        .filter_map(|(on, what)| on.then_some(what))
        .collect();
        Ok((info, uuids))
    }

    /// Whether this context can import opaque handles of `identity` (device UUID among the
    /// context's, same driver UUID).
    fn matches(&self, identity: &DeviceIdentity) -> bool {
        identity.driver_uuid == self.info.identity.driver_uuid && self.device_uuids.contains(&identity.device_uuid)
    }
}

impl Drop for GlInner {
    fn drop(&mut self) {
        // SAFETY-free: every object made from this context held an Arc to it and is gone, and no
        // guard is alive (guards borrow the context). A context current on no thread is destroyed
        // at once; EGL reports errors we cannot surface here, so they are ignored.
        let _ = self.egl.api.destroy_context(self.display, self.context);
        // The display is not terminated: EGLDisplay handles are process-wide and other users in
        // the process may share it (EGL 1.5 section 3.2).
    }
}

impl GlContext {
    /// Lists every GL device lava-flow can open a headless context on, with UUIDs and what imports.
    pub fn enumerate() -> Result<Vec<GlDeviceInfo>> {
        let egl = egl()?;
        let mut out = Vec::new();
        for (i, c) in candidates(egl).iter().enumerate() {
            if let Ok(inner) = GlInner::open(egl, c, i) {
                out.push(inner.info.clone());
            }
        }
        Ok(out)
    }

    /// Opens the first GL device that can import memory (`GL_EXT_memory_object_fd`).
    pub fn new() -> Result<GlContext> {
        Self::open_matching("(any with GL_EXT_memory_object_fd)", |inner| inner.info.memory_object_fd)
    }

    /// Opens the GL device whose `GL_DEVICE_UUID_EXT` and `GL_DRIVER_UUID_EXT` equal `identity`'s:
    /// the only one that may import opaque fds exported with that identity.
    pub fn for_identity(identity: &DeviceIdentity) -> Result<GlContext> {
        Self::open_matching(&format!("with {identity}"), |inner| inner.matches(identity))
    }

    fn open_matching(wanted: &str, accept: impl Fn(&GlInner) -> bool) -> Result<GlContext> {
        let egl = egl()?;
        let candidates = candidates(egl);
        let mut found = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            match GlInner::open(egl, c, i) {
                Ok(inner) if accept(&inner) => return Ok(GlContext { inner: Arc::new(inner) }),
                Ok(inner) => found.push(format!("[{i}] {} {}", inner.info.renderer, inner.info.identity)),
                Err(e) => found.push(format!("[{i}] {}: {e}", c.label)),
            }
        }
        Err(Error::DeviceNotFound {
            api: "OpenGL",
            wanted: wanted.to_string(),
            found: if found.is_empty() {
                "EGL offers no device platform (EGL_EXT_platform_device) and no surfaceless platform (EGL_MESA_platform_surfaceless)".into()
            } else {
                found.join(", ")
            },
            advice: "import on the GL device of the exporting GPU and driver (`lava-flow info` lists GL devices and UUIDs); opaque fds never cross drivers".into(),
        })
    }

    /// Name, UUIDs and import capabilities of this context's device.
    pub fn info(&self) -> &GlDeviceInfo {
        &self.inner.info
    }

    /// The device identity imports are checked against.
    pub fn identity(&self) -> DeviceIdentity {
        self.inner.info.identity
    }

    /// Whether this is a desktop GL context (else GLES 3.2).
    pub fn is_desktop(&self) -> bool {
        self.inner.desktop
    }

    /// Makes the context current on this thread until the guard drops (see the threading rule on
    /// [`GlContext`]). Blocks while another thread holds it.
    pub fn make_current(&self) -> Result<CurrentGl<'_>> {
        self.check_deferred()?;
        self.inner.current()
    }

    /// Resolves any GL or EGL function (for your own bindings, e.g.
    /// `glow::Context::from_loader_function`). Call what it returns only while the context is current.
    pub fn get_proc_address(&self, name: &str) -> Option<extern "system" fn()> {
        if name.as_bytes().contains(&0) {
            return None;
        }
        self.inner.egl.api.get_proc_address(name)
    }

    /// Returns (and clears) errors recorded while dropping GL objects of this context.
    pub fn check_deferred(&self) -> Result<()> {
        let mut errs = self.inner.deferred_errors.lock().unwrap_or_else(|p| p.into_inner());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Deferred(std::mem::take(&mut *errs)))
        }
    }

    /// `glFinish`: waits until GL has executed everything submitted. On drivers without
    /// `GL_EXT_semaphore_fd` (llvmpipe) this plus host-side ordering is how GL work is ordered
    /// before Vulkan's.
    pub fn finish(&self) -> Result<()> {
        let gl = self.make_current()?;
        // SAFETY: the guard keeps the context current on this thread; glFinish takes no arguments.
        unsafe { (gl.finish)() };
        gl.check("glFinish", "waiting for GL work")
    }

    /// `glFlush`: submits queued GL work (needed after `glSignalSemaphoreEXT` so that another
    /// API's wait can complete).
    pub fn flush(&self) -> Result<()> {
        let gl = self.make_current()?;
        // SAFETY: the guard keeps the context current on this thread; glFlush takes no arguments.
        unsafe { (gl.flush)() };
        gl.check("glFlush", "submitting GL work")
    }
}
