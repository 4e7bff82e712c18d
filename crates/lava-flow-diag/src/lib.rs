//! lava-flow's diagnostics, kept out of the library a user links: what `lava-flow selftest`,
//! `lava-flow bench`, `lava-flow serve` and `lava-flow attach` run, and the helpers lava-flow's
//! tests share.
//!
//! - [`testing`]: skip with a printed reason where an API is missing (a failure when
//!   `LAVA_FLOW_REQUIRE` names it), count the cases of a test, count open fds.
//! - [`selftest`]: end-to-end checks of every Vulkan <-> CUDA, OpenCL and GL path, each moving a
//!   pattern and checking every byte on the other side.
//! - [`bench`](mod@bench): lava-flow measured against the raw API calls doing the same work, in one run
//!   ([`bench::Row`]).
//! - [`raw_vk`]: the plain ash calls the CUDA self-tests and benchmarks submit, kept raw on
//!   purpose (exportable semaphores, queue-family transfers, the bare export the raw figures time).
//! - [`turns`]: the rounds two devices or processes take on one shared buffer, ordered by shared
//!   semaphores (the self-test's semaphore paths and the sync tests).
//! - [`pattern`]: the pattern server and client behind `serve`/`attach`: allocate, fill a known
//!   pattern, share it over a socket; import it in another process, verify it and time each step.
//!
//! Nothing here is needed to use lava-flow; it depends on lava-flow's public API (and a few
//! `#[doc(hidden)]` hooks for the raw-API baselines), never the other way round.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod pattern;
pub mod raw_vk;
pub mod selftest;
pub mod testing;
pub mod turns;
