//! Helpers for tests that need a real driver: skip with a printed reason where an API is absent,
//! fail instead when `LAVA_FLOW_REQUIRE` names it, and count open fds.
//!
//! `LAVA_FLOW_REQUIRE` is a comma-separated list of `vulkan`, `cuda`, `opencl`, `gl`,
//! `semaphores` (or `all`). The GPU machine sets all of them so nothing skips silently there.

use std::fmt::Display;

/// The API names `LAVA_FLOW_REQUIRE` understands.
pub const APIS: [&str; 5] = ["vulkan", "cuda", "opencl", "gl", "semaphores"];

/// Whether `LAVA_FLOW_REQUIRE` names `api` (or `all`).
pub fn is_required(api: &str) -> bool {
    std::env::var("LAVA_FLOW_REQUIRE")
        .map(|v| v.split(',').map(str::trim).any(|a| a.eq_ignore_ascii_case(api) || a.eq_ignore_ascii_case("all")))
        .unwrap_or(false)
}

/// Reports that a test cannot run because `api` is unavailable. Prints `SKIPPED: ...` and returns
/// when the API is optional; panics when `LAVA_FLOW_REQUIRE` names it. Call it and then `return`.
#[track_caller]
pub fn skip(api: &str, reason: impl Display) {
    if is_required(api) {
        panic!("{api} is required (LAVA_FLOW_REQUIRE) but unavailable: {reason}");
    }
    eprintln!("SKIPPED ({api} unavailable): {reason}");
    println!("SKIPPED ({api} unavailable): {reason}");
}

/// Unwraps `result`, or skips (see [`skip`]) when the error means the machine cannot do it
/// ([`Error::is_unavailable`](crate::Error::is_unavailable)). Other errors panic.
#[track_caller]
pub fn or_skip<T>(api: &str, result: crate::Result<T>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if e.is_unavailable() => {
            skip(api, &e);
            None
        }
        Err(e) => panic!("{api}: {e}"),
    }
}

/// Number of open fds of this process (entries of /proc/self/fd, less the one used to read it).
/// Compare before and after an operation in a test that runs alone in its process (nextest runs
/// each test in its own process; with `cargo test` use `--test-threads=1`).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count().saturating_sub(1)).unwrap_or(0)
}
