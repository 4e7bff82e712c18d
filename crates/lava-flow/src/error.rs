//! The one error type of lava-flow.
//!
//! Every message says three things: what was asked, what refused it (the spec rule, the
//! `VkResult`, the CUDA or OpenCL code) and what to do about it.

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

    /// A call into CUDA, OpenCL, OpenGL or EGL failed.
    #[error("{api} {call} failed with {code} while {action}; {advice}")]
    Api {
        /// "CUDA", "OpenCL", "OpenGL", "EGL".
        api: &'static str,
        /// What lava-flow was doing.
        action: String,
        /// The entry point.
        call: &'static str,
        /// The error code, by name where known.
        code: String,
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

    /// Errors that happened while dropping objects earlier, reported by the next call.
    #[error("errors while releasing earlier objects: {}", .0.join("; "))]
    Deferred(Vec<String>),
}

impl Error {
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
