//! The one error type of lava-flow.
//!
//! Every message says three things: what was asked, what refused it (the spec rule, the
//! `VkResult`, the CUDA or OpenCL code) and what to do about it.
//!
//! A driver's refusal keeps the driver's own result as a value, a [`DriverCode`], so callers match
//! on it rather than on text:
//!
//! ```no_run
//! use lava_flow::ash::vk;
//! use lava_flow::DriverCode;
//! # fn f(err: lava_flow::Error) {
//! match err.driver_code() {
//!     Some(DriverCode::Vulkan(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY)) => { /* ask for less */ }
//!     Some(code) => eprintln!("the driver said {code}"), // prints the spec name
//!     None => eprintln!("{err}"),
//! }
//! # }
//! ```

use std::fmt;
use std::time::Duration;

/// Result with lava-flow's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in lava-flow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A native library (libvulkan, libcuda, libEGL, libOpenCL) could not be loaded.
    #[error("could not load {library} ({reason}); {advice}")]
    LibraryUnavailable {
        /// The library's file name.
        library: &'static str,
        /// What the loader said.
        reason: String,
        /// What to install or set.
        advice: String,
    },

    /// No device of an API matched the request (index, UUID) or none exists.
    #[error("no {api} device {wanted}: {found}; {advice}")]
    DeviceNotFound {
        /// "Vulkan", "CUDA", "OpenCL", "OpenGL".
        api: &'static str,
        /// What was asked for ("at index 3", "with UUID ...").
        wanted: String,
        /// What exists.
        found: String,
        /// What to do.
        advice: String,
    },

    /// A Vulkan call returned an error.
    #[error("{call} returned {result} while {action}; {advice}")]
    Vulkan {
        /// What lava-flow was doing.
        action: String,
        /// The Vulkan entry point.
        call: &'static str,
        /// The `VkResult`.
        result: ash::vk::Result,
        /// What to do.
        advice: String,
    },

    /// A call into CUDA, OpenCL, OpenGL or EGL failed. `code` is the API's own result; its
    /// `Display` is the spec name (`CUDA_ERROR_INVALID_VALUE`, `CL_INVALID_VALUE`,
    /// `GL_OUT_OF_MEMORY`, `EGL_BAD_ACCESS`).
    #[error("{api} {call} failed with {code} while {action}; {advice}")]
    Api {
        /// "CUDA", "OpenCL", "OpenGL", "EGL".
        api: &'static str,
        /// What lava-flow was doing.
        action: String,
        /// The entry point.
        call: &'static str,
        /// The API's result code.
        code: DriverCode,
        /// What to do.
        advice: String,
    },

    /// The driver or platform cannot do what was asked (a capability query said no).
    #[error("{what} is not supported: {reason} ({rule}); {advice}")]
    Unsupported {
        /// What was asked.
        what: String,
        /// What refused it.
        reason: String,
        /// The spec rule or query that decides it.
        rule: String,
        /// What to do instead.
        advice: String,
    },

    /// An opaque handle was offered to a device or driver other than its exporter's.
    #[error(transparent)]
    IncompatibleDevice(#[from] raw_gpu_handle::IncompatibleDevice),

    /// A semaphore or fence handle that only its exporter's device and driver understand (opaque
    /// fd) was offered to another device or driver.
    #[error(
        "{what} exported by {exporter} cannot be imported by {importer}: {reason} (external semaphore and fence \
         handle types compatibility: opaque fds are only valid between the same physical device and the same \
         driver); import it on the exporting device, or share a sync fd"
    )]
    IncompatibleSyncDevice {
        /// What was to be imported ("opaque-fd timeline semaphore").
        what: &'static str,
        /// Who exported.
        exporter: raw_gpu_handle::DeviceIdentity,
        /// Who tried to import.
        importer: raw_gpu_handle::DeviceIdentity,
        /// Which UUIDs differ.
        reason: &'static str,
    },

    /// A size, offset, format or other argument is wrong.
    #[error("invalid {what}: {reason}; {advice}")]
    InvalidArgument {
        /// What was asked.
        what: String,
        /// Why it cannot be done.
        reason: String,
        /// What to do.
        advice: String,
    },

    /// An fd given to an import is closed, or is not the kind of object the import needs.
    #[error("the fd passed as {what} is not usable: {reason}; {advice}")]
    InvalidHandle {
        /// What the fd was supposed to be.
        what: String,
        /// What it turned out to be.
        reason: String,
        /// What to do.
        advice: String,
    },

    /// Not enough memory of the requested kind.
    #[error("out of memory: {what}; {advice}")]
    OutOfMemory {
        /// What was asked.
        what: String,
        /// What to do.
        advice: String,
        /// The driver's code where a driver call ran out (`VK_ERROR_OUT_OF_DEVICE_MEMORY`,
        /// `CUDA_ERROR_OUT_OF_MEMORY`); `None` where lava-flow's own size checks refused the request
        /// before any driver call.
        code: Option<DriverCode>,
    },

    /// A wait did not finish in time.
    #[error("timed out after {timeout:?} while {action}")]
    Timeout {
        /// What was waited for.
        action: String,
        /// How long.
        timeout: Duration,
    },

    /// A message from another process was malformed, or the peer broke the protocol.
    #[error("protocol error: {reason}; {advice}")]
    Protocol {
        /// What was wrong.
        reason: String,
        /// What to do.
        advice: String,
    },

    /// Every frame of a channel is in flight (`try_acquire`).
    #[error("{what}: all {in_flight} frames are in flight; {advice}")]
    Full {
        /// What was asked for.
        what: String,
        /// Frames in flight (the pool's size).
        in_flight: u32,
        /// What to do.
        advice: String,
    },

    /// The other end of a channel is gone: `clean` after the producer ended the channel, not
    /// clean where it hung up without ending it (exited or was killed), disconnected this end,
    /// or broke the protocol. Frames sent before were delivered.
    #[error("{what}: {reason}")]
    Closed {
        /// Which end saw it.
        what: String,
        /// Why.
        reason: String,
        /// Whether the producer ended the channel itself.
        clean: bool,
    },

    /// A peer was refused (credentials, version).
    #[error("peer refused: {reason}; {advice}")]
    PeerRefused {
        /// Why.
        reason: String,
        /// What to do.
        advice: String,
    },

    /// An OS call failed.
    #[error("{action}: {source}")]
    Io {
        /// What lava-flow was doing.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A round trip read back other bytes than were written (self-tests, end-to-end checks).
    #[error("data mismatch in {what}: {detail}; the driver or the synchronization between APIs is broken: report it with `lava-flow info`")]
    Mismatch {
        /// Which path or object.
        what: String,
        /// Where the data first differed.
        detail: String,
    },

    /// Errors that happened while dropping objects earlier, reported by the next call. Each keeps
    /// its own error, so a driver's code stays matchable ([`DeferredError::driver_code`]).
    #[error("errors while releasing earlier objects: {}", join(.0))]
    Deferred(Vec<DeferredError>),
}

fn join(errors: &[DeferredError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// One error found while dropping an object (a `Drop` cannot return it), kept for the next
/// fallible call of the object's context to return in [`Error::Deferred`].
#[derive(Debug)]
#[non_exhaustive]
pub struct DeferredError {
    /// What became of the object where the error alone does not say it ("leaking GL buffer 3").
    pub context: Option<String>,
    /// The error itself.
    pub error: Error,
}

impl DeferredError {
    /// An error with what became of the object, printed before it.
    pub fn new(context: impl Into<String>, error: Error) -> DeferredError {
        DeferredError { context: Some(context.into()), error }
    }

    /// The driver's code, if a driver call failed ([`Error::driver_code`]).
    pub fn driver_code(&self) -> Option<DriverCode> {
        self.error.driver_code()
    }
}

impl From<Error> for DeferredError {
    fn from(error: Error) -> DeferredError {
        DeferredError { context: None, error }
    }
}

impl fmt::Display for DeferredError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.context {
            Some(context) => write!(f, "{context}: {}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

/// The result code a driver API returned, kept as that API's own value. `Display` prints the
/// name the API's specification gives it (`VK_ERROR_OUT_OF_DEVICE_MEMORY`,
/// `CUDA_ERROR_INVALID_VALUE`, `CL_INVALID_VALUE`, `GL_OUT_OF_MEMORY`, `EGL_BAD_ALLOC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DriverCode {
    /// A `VkResult`.
    Vulkan(ash::vk::Result),
    /// A `CUresult` of the CUDA driver API.
    #[cfg(feature = "cuda")]
    Cuda(cudarc::driver::sys::CUresult),
    /// A `cl_int` error code of OpenCL.
    OpenCl(ClCode),
    /// A GL error, as `glGetError` returned it.
    Gl(GlCode),
    /// A GL query (`glIsMemoryObjectEXT`, `glIsSemaphoreEXT`) answered `GL_FALSE` for an object
    /// the preceding call should have created, while `glGetError` reported no error.
    GlFalse,
    /// An EGL error, as `eglGetError` returned it (`EGL_SUCCESS` where the failed call recorded
    /// none).
    Egl(EglCode),
}

impl fmt::Display for DriverCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverCode::Vulkan(r) => fmt::Display::fmt(&VkName(*r), f),
            // cudarc's `CUresult` variants carry the spec names (`CUDA_ERROR_INVALID_VALUE`).
            #[cfg(feature = "cuda")]
            DriverCode::Cuda(r) => write!(f, "{r:?}"),
            DriverCode::OpenCl(c) => fmt::Display::fmt(c, f),
            DriverCode::Gl(c) => fmt::Display::fmt(c, f),
            DriverCode::GlFalse => f.write_str("GL_FALSE"),
            DriverCode::Egl(c) => fmt::Display::fmt(c, f),
        }
    }
}

/// A `VkResult` by its spec name. ash's `Debug` is the name without `VK_` for the codes it knows
/// and the number otherwise (its `Display` is the spec's description sentence).
struct VkName(ash::vk::Result);

impl fmt::Display for VkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let debug = format!("{:?}", self.0);
        if debug.starts_with(|c: char| c.is_ascii_alphabetic()) {
            write!(f, "VK_{debug}")
        } else {
            write!(f, "VkResult {debug}")
        }
    }
}

/// An OpenCL `cl_int` result, with its spec name. Match it against the constants:
/// `DriverCode::OpenCl(ClCode::INVALID_VALUE)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClCode(pub i32);

/// A GL error (`GLenum`, as `glGetError` returns it), with its spec name. Match it against the
/// constants: `DriverCode::Gl(GlCode::OUT_OF_MEMORY)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GlCode(pub u32);

/// An EGL error (`EGLint`, as `eglGetError` returns it), with its spec name. Match it against
/// the constants: `DriverCode::Egl(EglCode::BAD_ACCESS)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EglCode(pub i32);

macro_rules! code_names {
    ($ty:ident, $prefix:literal, $unknown:literal, { $($name:ident = $value:expr,)* }) => {
        impl $ty {
            $(
                #[doc = concat!("`", $prefix, stringify!($name), "`")]
                pub const $name: $ty = $ty($value);
            )*

            /// The spec name of this code, or `None` for a value lava-flow does not know.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( v if v == $value => Some(concat!($prefix, stringify!($name))), )*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, $unknown, self.0),
                }
            }
        }
    };
}

code_names!(ClCode, "CL_", "OpenCL error {}", {
    SUCCESS = 0,
    DEVICE_NOT_FOUND = -1,
    DEVICE_NOT_AVAILABLE = -2,
    COMPILER_NOT_AVAILABLE = -3,
    MEM_OBJECT_ALLOCATION_FAILURE = -4,
    OUT_OF_RESOURCES = -5,
    OUT_OF_HOST_MEMORY = -6,
    PROFILING_INFO_NOT_AVAILABLE = -7,
    MEM_COPY_OVERLAP = -8,
    IMAGE_FORMAT_MISMATCH = -9,
    IMAGE_FORMAT_NOT_SUPPORTED = -10,
    BUILD_PROGRAM_FAILURE = -11,
    MAP_FAILURE = -12,
    MISALIGNED_SUB_BUFFER_OFFSET = -13,
    EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST = -14,
    COMPILE_PROGRAM_FAILURE = -15,
    LINKER_NOT_AVAILABLE = -16,
    LINK_PROGRAM_FAILURE = -17,
    DEVICE_PARTITION_FAILED = -18,
    KERNEL_ARG_INFO_NOT_AVAILABLE = -19,
    INVALID_VALUE = -30,
    INVALID_DEVICE_TYPE = -31,
    INVALID_PLATFORM = -32,
    INVALID_DEVICE = -33,
    INVALID_CONTEXT = -34,
    INVALID_QUEUE_PROPERTIES = -35,
    INVALID_COMMAND_QUEUE = -36,
    INVALID_HOST_PTR = -37,
    INVALID_MEM_OBJECT = -38,
    INVALID_IMAGE_FORMAT_DESCRIPTOR = -39,
    INVALID_IMAGE_SIZE = -40,
    INVALID_SAMPLER = -41,
    INVALID_BINARY = -42,
    INVALID_BUILD_OPTIONS = -43,
    INVALID_PROGRAM = -44,
    INVALID_PROGRAM_EXECUTABLE = -45,
    INVALID_KERNEL_NAME = -46,
    INVALID_KERNEL_DEFINITION = -47,
    INVALID_KERNEL = -48,
    INVALID_ARG_INDEX = -49,
    INVALID_ARG_VALUE = -50,
    INVALID_ARG_SIZE = -51,
    INVALID_KERNEL_ARGS = -52,
    INVALID_WORK_DIMENSION = -53,
    INVALID_WORK_GROUP_SIZE = -54,
    INVALID_WORK_ITEM_SIZE = -55,
    INVALID_GLOBAL_OFFSET = -56,
    INVALID_EVENT_WAIT_LIST = -57,
    INVALID_EVENT = -58,
    INVALID_OPERATION = -59,
    INVALID_GL_OBJECT = -60,
    INVALID_BUFFER_SIZE = -61,
    INVALID_MIP_LEVEL = -62,
    INVALID_GLOBAL_WORK_SIZE = -63,
    INVALID_PROPERTY = -64,
    INVALID_IMAGE_DESCRIPTOR = -65,
    INVALID_COMPILER_OPTIONS = -66,
    INVALID_LINKER_OPTIONS = -67,
    INVALID_DEVICE_PARTITION_COUNT = -68,
    INVALID_PIPE_SIZE = -69,
    INVALID_DEVICE_QUEUE = -70,
    INVALID_SPEC_ID = -71,
    MAX_SIZE_RESTRICTION_EXCEEDED = -72,
    PLATFORM_NOT_FOUND_KHR = -1001,
    CONTEXT_TERMINATED_KHR = -1121,
    INVALID_COMMAND_BUFFER_KHR = -1138,
    INVALID_SEMAPHORE_KHR = -1142,
});

impl ClCode {
    /// Not OpenCL's: the cl3 bindings' code for a `libOpenCL.so.1` that lacks an entry point.
    pub const DLOPEN_FUNCTION_NOT_AVAILABLE: ClCode = ClCode(-2001);
}

code_names!(GlCode, "GL_", "GL error {:#x}", {
    NO_ERROR = 0,
    INVALID_ENUM = 0x0500,
    INVALID_VALUE = 0x0501,
    INVALID_OPERATION = 0x0502,
    STACK_OVERFLOW = 0x0503,
    STACK_UNDERFLOW = 0x0504,
    OUT_OF_MEMORY = 0x0505,
    INVALID_FRAMEBUFFER_OPERATION = 0x0506,
    CONTEXT_LOST = 0x0507,
});

code_names!(EglCode, "EGL_", "EGL error {:#x}", {
    SUCCESS = 0x3000,
    NOT_INITIALIZED = 0x3001,
    BAD_ACCESS = 0x3002,
    BAD_ALLOC = 0x3003,
    BAD_ATTRIBUTE = 0x3004,
    BAD_CONFIG = 0x3005,
    BAD_CONTEXT = 0x3006,
    BAD_CURRENT_SURFACE = 0x3007,
    BAD_DISPLAY = 0x3008,
    BAD_MATCH = 0x3009,
    BAD_NATIVE_PIXMAP = 0x300A,
    BAD_NATIVE_WINDOW = 0x300B,
    BAD_PARAMETER = 0x300C,
    BAD_SURFACE = 0x300D,
    CONTEXT_LOST = 0x300E,
});

impl Error {
    /// The driver's result code, where a driver call failed ([`Error::Vulkan`], [`Error::Api`]);
    /// `None` for every other error (and for [`Error::Deferred`], whose entries each have theirs).
    pub fn driver_code(&self) -> Option<DriverCode> {
        match self {
            Error::Vulkan { result, .. } => Some(DriverCode::Vulkan(*result)),
            Error::Api { code, .. } => Some(*code),
            Error::OutOfMemory { code, .. } => *code,
            _ => None,
        }
    }

    /// The `VkResult`, where a Vulkan call failed.
    pub fn vk_result(&self) -> Option<ash::vk::Result> {
        match self.driver_code() {
            Some(DriverCode::Vulkan(result)) => Some(result),
            _ => None,
        }
    }

    /// The `CUresult`, where a CUDA call failed.
    #[cfg(feature = "cuda")]
    pub fn cuda_result(&self) -> Option<cudarc::driver::sys::CUresult> {
        match self.driver_code() {
            Some(DriverCode::Cuda(result)) => Some(result),
            _ => None,
        }
    }

    /// The OpenCL `cl_int`, where an OpenCL call failed.
    pub fn cl_code(&self) -> Option<ClCode> {
        match self.driver_code() {
            Some(DriverCode::OpenCl(code)) => Some(code),
            _ => None,
        }
    }

    /// The GL error, where a GL call raised one.
    pub fn gl_code(&self) -> Option<GlCode> {
        match self.driver_code() {
            Some(DriverCode::Gl(code)) => Some(code),
            _ => None,
        }
    }

    /// Shorthand for [`Error::Vulkan`], with advice for the common results (also for code that
    /// makes its own ash calls on a lava-flow context).
    pub fn vk(call: &'static str, result: ash::vk::Result, action: impl Into<String>) -> Error {
        let advice = match result {
            ash::vk::Result::ERROR_OUT_OF_DEVICE_MEMORY => "free device memory or ask for less",
            ash::vk::Result::ERROR_OUT_OF_HOST_MEMORY => "free host memory or ask for less",
            ash::vk::Result::ERROR_INVALID_EXTERNAL_HANDLE => {
                "the fd is not an export of this driver's memory of that size and type: pass the fd and description exactly as exported"
            }
            ash::vk::Result::ERROR_DEVICE_LOST => "the device was lost: recreate the context",
            ash::vk::Result::ERROR_INITIALIZATION_FAILED => "check that a Vulkan driver is installed (`lava-flow info`)",
            ash::vk::Result::ERROR_FEATURE_NOT_PRESENT | ash::vk::Result::ERROR_EXTENSION_NOT_PRESENT => {
                "the driver lacks this feature: see `lava-flow info`"
            }
            _ => "see `lava-flow info` for what this device supports",
        };
        Error::Vulkan { action: action.into(), call, result, advice: advice.into() }
    }

    /// Shorthand for [`Error::Io`].
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { action: action.into(), source }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>, advice: impl Into<String>) -> Error {
        Error::InvalidArgument { what: what.into(), reason: reason.into(), advice: advice.into() }
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(
        what: impl Into<String>,
        reason: impl Into<String>,
        rule: impl Into<String>,
        advice: impl Into<String>,
    ) -> Error {
        Error::Unsupported { what: what.into(), reason: reason.into(), rule: rule.into(), advice: advice.into() }
    }

    /// Whether this error means "this machine cannot do that" rather than a bug or bad input:
    /// a missing library or device ([`Error::LibraryUnavailable`], [`Error::DeviceNotFound`]), or
    /// a driver whose capability query says no ([`Error::Unsupported`]). `selftest` and `bench`
    /// list such paths as skipped. Tests tell the two apart: an API that cannot be opened skips
    /// the test (`lava_flow_diag::testing::or_skip`), while an `Unsupported` from an operation is
    /// a skip only where it is the refusal of the capability query the test expects to decide
    /// (`lava_flow_diag::testing::skip_refused`), and a failure otherwise.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::LibraryUnavailable { .. } | Error::DeviceNotFound { .. } | Error::Unsupported { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ash::vk;

    #[test]
    fn vulkan_codes_print_their_spec_names_and_stay_values() {
        let code = DriverCode::Vulkan(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY);
        assert_eq!(code.to_string(), "VK_ERROR_OUT_OF_DEVICE_MEMORY");
        assert_eq!(
            DriverCode::Vulkan(vk::Result::ERROR_INVALID_EXTERNAL_HANDLE).to_string(),
            "VK_ERROR_INVALID_EXTERNAL_HANDLE"
        );
        assert_eq!(DriverCode::Vulkan(vk::Result::from_raw(-123_456)).to_string(), "VkResult -123456");
        let e = Error::vk("vkAllocateMemory", vk::Result::ERROR_OUT_OF_DEVICE_MEMORY, "allocating 4 bytes");
        assert_eq!(e.driver_code(), Some(code));
        assert_eq!(e.vk_result(), Some(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY));
        assert!(matches!(e.driver_code(), Some(DriverCode::Vulkan(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY))));
        assert_eq!((e.cl_code(), e.gl_code()), (None, None));
        assert_eq!(Error::invalid("a", "b", "c").driver_code(), None);
    }

    #[test]
    fn a_driver_out_of_memory_keeps_its_code_and_lava_flows_own_refusal_has_none() {
        let driver = Error::OutOfMemory {
            what: "allocating 4 GiB".into(),
            advice: "ask for less".into(),
            code: Some(DriverCode::Vulkan(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY)),
        };
        assert_eq!(driver.vk_result(), Some(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY));
        assert_eq!(driver.driver_code().unwrap().to_string(), "VK_ERROR_OUT_OF_DEVICE_MEMORY");
        let ours = Error::OutOfMemory { what: "a 100 GiB ring".into(), advice: "ask for less".into(), code: None };
        assert_eq!(ours.driver_code(), None);
    }

    #[test]
    fn api_errors_print_the_codes_spec_name() {
        let e = Error::Api {
            api: "OpenCL",
            action: "importing a buffer".into(),
            call: "clCreateBufferWithProperties",
            code: DriverCode::OpenCl(ClCode(-30)),
            advice: "pass the description unchanged".into(),
        };
        assert_eq!(
            e.to_string(),
            "OpenCL clCreateBufferWithProperties failed with CL_INVALID_VALUE while importing a buffer; pass the \
             description unchanged"
        );
        assert_eq!(e.cl_code(), Some(ClCode::INVALID_VALUE));
        assert!(matches!(e, Error::Api { code: DriverCode::OpenCl(ClCode::INVALID_VALUE), .. }));
        assert_eq!(e.vk_result(), None);
        let e = Error::Api {
            api: "OpenGL",
            action: "placing storage".into(),
            call: "glBufferStorageMemEXT",
            code: DriverCode::Gl(GlCode(0x0505)),
            advice: "import less".into(),
        };
        assert!(e.to_string().contains("glBufferStorageMemEXT failed with GL_OUT_OF_MEMORY while"), "{e}");
        assert_eq!(e.gl_code(), Some(GlCode::OUT_OF_MEMORY));
        assert_eq!(DriverCode::GlFalse.to_string(), "GL_FALSE");
        assert_eq!(DriverCode::Egl(EglCode(0x3002)).to_string(), "EGL_BAD_ACCESS");
    }

    #[test]
    fn opencl_names_follow_the_headers() {
        for (code, name) in [
            (0, "CL_SUCCESS"),
            (-4, "CL_MEM_OBJECT_ALLOCATION_FAILURE"),
            (-5, "CL_OUT_OF_RESOURCES"),
            (-6, "CL_OUT_OF_HOST_MEMORY"),
            (-30, "CL_INVALID_VALUE"),
            (-59, "CL_INVALID_OPERATION"),
            (-64, "CL_INVALID_PROPERTY"),
            (-72, "CL_MAX_SIZE_RESTRICTION_EXCEEDED"),
            (-1142, "CL_INVALID_SEMAPHORE_KHR"),
        ] {
            assert_eq!(ClCode(code).to_string(), name);
            assert_eq!(DriverCode::OpenCl(ClCode(code)).to_string(), name);
        }
        // Every core code is named: -1 to -19 and -30 to -72 (-20 to -29 are unassigned).
        for code in (-19..=0).chain(-72..=-30) {
            assert!(ClCode(code).name().is_some(), "{code}");
        }
        assert_eq!(ClCode(-20).to_string(), "OpenCL error -20");
    }

    /// The table agrees with cl3's (which follows the Khronos headers) on every code both know.
    #[cfg(feature = "opencl")]
    #[test]
    fn opencl_names_agree_with_cl3() {
        for code in -2001..=0 {
            let theirs = cl3::error_codes::error_text(code);
            match ClCode(code).name() {
                Some(ours) => assert_eq!(ours, theirs, "{code}"),
                None if (-72..=0).contains(&code) => assert_eq!(theirs, "UNKNOWN_ERROR", "{code} is unnamed"),
                None => {}
            }
        }
        assert_eq!(ClCode::DLOPEN_FUNCTION_NOT_AVAILABLE.0, cl3::error_codes::DLOPEN_FUNCTION_NOT_AVAILABLE);
        assert_eq!(ClCode::INVALID_PROPERTY.0, cl3::ext::CL_INVALID_PROPERTY);
        assert_eq!(ClCode::INVALID_SEMAPHORE_KHR.0, cl3::ext::CL_INVALID_SEMAPHORE_KHR);
    }

    #[test]
    fn gl_names_follow_the_spec() {
        for (code, name) in [
            (0, "GL_NO_ERROR"),
            (0x0500, "GL_INVALID_ENUM"),
            (0x0501, "GL_INVALID_VALUE"),
            (0x0502, "GL_INVALID_OPERATION"),
            (0x0503, "GL_STACK_OVERFLOW"),
            (0x0504, "GL_STACK_UNDERFLOW"),
            (0x0505, "GL_OUT_OF_MEMORY"),
            (0x0506, "GL_INVALID_FRAMEBUFFER_OPERATION"),
            (0x0507, "GL_CONTEXT_LOST"),
        ] {
            assert_eq!(GlCode(code).to_string(), name);
        }
        assert_eq!(GlCode(0x1234).to_string(), "GL error 0x1234");
    }

    #[test]
    fn egl_names_follow_the_spec() {
        assert_eq!(EglCode(0x3000).to_string(), "EGL_SUCCESS");
        assert_eq!(EglCode(0x3001).to_string(), "EGL_NOT_INITIALIZED");
        assert_eq!(EglCode(0x3003).to_string(), "EGL_BAD_ALLOC");
        assert_eq!(EglCode(0x300E).to_string(), "EGL_CONTEXT_LOST");
        assert_eq!(EglCode(0x3100).to_string(), "EGL error 0x3100");
    }

    /// Every error khronos-egl knows has the same value and name here.
    #[cfg(feature = "gl")]
    #[test]
    fn egl_names_agree_with_khronos_egl() {
        use khronos_egl as egl;
        // `BadCurrentSurface` to `BAD_CURRENT_SURFACE`.
        let screaming = |camel: &str| {
            let mut out = String::new();
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        };
        let mut known = 0;
        for raw in 0x3000..0x3100 {
            if let Ok(e) = egl::Error::try_from(raw) {
                known += 1;
                assert_eq!(egl::Int::from(e), raw);
                let ours = EglCode(raw).name().unwrap_or_else(|| panic!("{raw:#x} ({e:?}) is unnamed"));
                assert_eq!(ours, format!("EGL_{}", screaming(&format!("{e:?}"))), "{raw:#x}");
            }
        }
        assert_eq!(known, 14, "khronos-egl's errors: EGL_NOT_INITIALIZED to EGL_CONTEXT_LOST");
    }

    #[test]
    fn deferred_errors_keep_each_error_and_its_code() {
        let vk_code = vk::Result::ERROR_DEVICE_LOST;
        let deferred = Error::Deferred(vec![
            DeferredError::new("leaking GL buffer 3", Error::vk("vkWaitSemaphores", vk_code, "waiting")),
            Error::Api {
                api: "OpenCL",
                action: "releasing an imported buffer".into(),
                call: "clReleaseMemObject",
                code: DriverCode::OpenCl(ClCode::INVALID_MEM_OBJECT),
                advice: "x".into(),
            }
            .into(),
        ]);
        let text = deferred.to_string();
        assert!(
            text.starts_with("errors while releasing earlier objects: leaking GL buffer 3: vkWaitSemaphores returned"),
            "{text}"
        );
        assert!(
            text.contains("; OpenCL clReleaseMemObject failed with CL_INVALID_MEM_OBJECT while releasing"),
            "{text}"
        );
        let Error::Deferred(errors) = &deferred else { unreachable!() };
        assert_eq!(errors[0].driver_code(), Some(DriverCode::Vulkan(vk_code)));
        assert_eq!(errors[0].context.as_deref(), Some("leaking GL buffer 3"));
        assert_eq!(errors[1].driver_code(), Some(DriverCode::OpenCl(ClCode(-38))));
        assert_eq!(errors[1].context, None);
        assert_eq!(deferred.driver_code(), None, "each entry has its own");
    }
}
