//! End-to-end checks of each importer's paths, for `lava-flow selftest` and the GPU tests: each
//! path allocates on Vulkan, exports, imports into the other API, moves a pattern one way and
//! checks every byte on the other side.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "gl")]
pub mod gl;
#[cfg(feature = "opencl")]
pub mod opencl;

use lava_flow::Error;

/// For the rows after the first of a self-test whose shared set-up failed: the same "this machine
/// lacks it" error again (a missing library or device stays that, so that `LAVA_FLOW_REQUIRE`
/// fails every row of the API, not only the first), or `None` for any other error.
#[cfg_attr(not(any(feature = "gl", feature = "opencl")), allow(dead_code))]
pub(crate) fn same_absence(error: &Error) -> Option<Error> {
    match error {
        Error::LibraryUnavailable { library, reason, advice } => {
            Some(Error::LibraryUnavailable { library, reason: reason.clone(), advice: advice.clone() })
        }
        Error::DeviceNotFound { api, wanted, found, advice } => {
            Some(Error::DeviceNotFound { api, wanted: wanted.clone(), found: found.clone(), advice: advice.clone() })
        }
        _ => None,
    }
}
