//! The C ABI of lava-flow: `liblava_flow.so` / `liblava_flow.a` with `include/lava_flow.h`
//! (generated from this crate by `cargo xtask c-header`) and the C++17 header
//! `include/lava_flow.hpp`. docs/C.md is the user's guide.
//!
//! The rules every function follows:
//! - It returns a [`LavaFlowStatus`]; on an error, [`lava_flow_last_error`] gives this thread's
//!   message (what was asked, what refused it, what to do).
//! - No Rust panic crosses the boundary: each body runs under `catch_unwind` and a panic becomes
//!   [`LavaFlowStatus::LAVA_FLOW_ERROR_INTERNAL`].
//! - Objects are opaque handles made by a `_create`/`_import`/`_connect` call and released by their
//!   `_destroy` (channel frames by their `_send`, `_discard` or `_release`; see [`channel`]). A handle is a number in a process-wide table, never a pointer lava-flow reads
//!   through: a destroyed, foreign or wrongly typed handle is found in (or missing from) the table
//!   and refused with [`LavaFlowStatus::LAVA_FLOW_ERROR_INVALID_HANDLE`]. Numbers are never reused.
//! - Descriptions and options are plain structs whose first field, `struct_size`, the caller sets
//!   to `sizeof` the struct (see [`structs`]).
//! - An fd passed in is consumed by a successful call and left to the caller by a failed one; an
//!   fd passed out is the caller's to close. Each function's doc says which it does.

#![deny(unsafe_op_in_unsafe_fn)]
// The C names are the API: `LAVA_FLOW_OK`, `LavaFlowBuffer`.
#![allow(non_camel_case_types)]

pub mod channel;
pub mod fds;
pub mod gpu;
pub mod handles;
pub mod ipc;
pub mod memory;
pub mod status;
pub mod structs;
pub mod sync;

pub use channel::*;
pub use fds::*;
pub use gpu::*;
pub use ipc::*;
pub use memory::*;
pub use status::*;
pub use structs::*;
pub use sync::*;

/// The version of the C ABI this library implements: bumped when a function's signature or a
/// struct's version-1 layout changes. The header's `LAVA_FLOW_ABI_VERSION` names the version it
/// was generated for.
pub const LAVA_FLOW_ABI_VERSION: u32 = 1;

/// The ABI version of the library loaded at run time (compare with `LAVA_FLOW_ABI_VERSION` from
/// the header the program was compiled with).
#[no_mangle]
pub extern "C" fn lava_flow_abi_version() -> u32 {
    LAVA_FLOW_ABI_VERSION
}

/// The library's version, a static NUL-terminated string ("0.1.0"); never NULL, never freed.
#[no_mangle]
pub extern "C" fn lava_flow_version() -> *const std::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
