//! Timeline and binary semaphores.

use std::time::Duration;

use lava_flow::ipc::SharedObject;
use lava_flow::vulkan::sync::SemaphoreOptions;
use lava_flow::vulkan::Semaphore;
use raw_gpu_handle::{SemaphoreHandleKind, SemaphoreKind};

use crate::handles::{get, remove, write_handle, Handle};
use crate::memory::{check_out, clone_export, put, wrong_kind, LavaFlowContext, LavaFlowExport};
use crate::status::{guard, CError, LavaFlowStatus};
use crate::structs::{read_in, Versioned};

/// A Vulkan semaphore (timeline or binary), made here or imported.
pub struct LavaFlowSemaphore {
    _opaque: [u8; 0],
}

impl Handle for LavaFlowSemaphore {
    type Object = Semaphore;
    const NAME: &'static str = "LavaFlowSemaphore";
}

/// `LavaFlowSemaphoreOptions.kind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowSemaphoreKind {
    /// A 64-bit counter that only grows (the default).
    LAVA_FLOW_SEMAPHORE_TIMELINE = 0,
    /// Signalled once, waited once.
    LAVA_FLOW_SEMAPHORE_BINARY = 1,
}

/// `LavaFlowSemaphoreOptions.export_kind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LavaFlowSemaphoreExport {
    /// Stays on this device (works on every Vulkan 1.2 driver).
    LAVA_FLOW_SEMAPHORE_EXPORT_NONE = 0,
    /// Exportable as an opaque fd (same device and driver).
    LAVA_FLOW_SEMAPHORE_EXPORT_OPAQUE_FD = 1,
    /// Exportable as a sync_file (binary semaphores).
    LAVA_FLOW_SEMAPHORE_EXPORT_SYNC_FD = 2,
}

/// How to make a semaphore. Version 1: 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LavaFlowSemaphoreOptions {
    /// `sizeof(LavaFlowSemaphoreOptions)`.
    pub struct_size: u32,
    /// One of `LavaFlowSemaphoreKind`.
    pub kind: u32,
    /// One of `LavaFlowSemaphoreExport`.
    pub export_kind: u32,
    /// Zero.
    pub reserved: u32,
    /// A timeline's starting value (0 for binary semaphores).
    pub initial_value: u64,
}

// SAFETY: #[repr(C)], `struct_size: u32` first, integer fields only.
unsafe impl Versioned for LavaFlowSemaphoreOptions {
    const NAME: &'static str = "LavaFlowSemaphoreOptions";
    fn set_struct_size(&mut self, size: u32) {
        self.struct_size = size;
    }
}

/// Makes a semaphore as `options` say (NULL: a timeline semaphore at 0 that stays on this device).
/// An export kind the driver cannot export fails up front with `LAVA_FLOW_ERROR_UNSUPPORTED`.
///
/// # Safety
/// `options` is NULL or points at `options->struct_size` readable bytes; `out` is NULL (refused)
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_semaphore_create(
    context: *const LavaFlowContext,
    options: *const LavaFlowSemaphoreOptions,
    out: *mut *mut LavaFlowSemaphore,
) -> LavaFlowStatus {
    guard("lava_flow_semaphore_create", || {
        check_out(out, "out")?;
        let ctx = get(context, "context")?;
        let o = if options.is_null() {
            LavaFlowSemaphoreOptions {
                struct_size: std::mem::size_of::<LavaFlowSemaphoreOptions>() as u32,
                ..Default::default()
            }
        } else {
            // SAFETY: the caller's contract on `options`.
            unsafe { read_in(options, "options")? }
        };
        let kind = match o.kind {
            0 => SemaphoreKind::Timeline,
            1 => SemaphoreKind::Binary,
            other => {
                return Err(CError::invalid(format!(
                    "LavaFlowSemaphoreOptions.kind is {other}: use 0 (timeline) or 1 (binary)"
                )))
            }
        };
        let export = match o.export_kind {
            0 => vec![],
            1 => vec![SemaphoreHandleKind::OpaqueFd],
            2 => vec![SemaphoreHandleKind::SyncFd],
            other => {
                return Err(CError::invalid(format!(
                    "LavaFlowSemaphoreOptions.export_kind is {other}: use 0 (none), 1 (opaque fd) or 2 (sync fd)"
                )))
            }
        };
        let semaphore =
            Semaphore::with_options(&ctx, &SemaphoreOptions { kind, initial_value: o.initial_value, export })?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, semaphore) };
        Ok(())
    })
}

/// Imports a semaphore export into `context`. The export stays valid.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_semaphore_import(
    context: *const LavaFlowContext,
    export: *const LavaFlowExport,
    out: *mut *mut LavaFlowSemaphore,
) -> LavaFlowStatus {
    guard("lava_flow_semaphore_import", || {
        check_out(out, "out")?;
        let ctx = get(context, "context")?;
        let semaphore = match clone_export(export)? {
            SharedObject::Semaphore(s) => Semaphore::import(&ctx, s)?,
            other => return Err(wrong_kind("semaphore", &other)),
        };
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, semaphore) };
        Ok(())
    })
}

/// Exports the semaphore as its first export kind: a new export with a fresh fd.
///
/// # Safety
/// `out` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_semaphore_export(
    semaphore: *const LavaFlowSemaphore,
    out: *mut *mut LavaFlowExport,
) -> LavaFlowStatus {
    guard("lava_flow_semaphore_export", || {
        check_out(out, "out")?;
        let exported = get(semaphore, "semaphore")?.export()?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { write_handle(out, SharedObject::Semaphore(exported)) };
        Ok(())
    })
}

/// A timeline semaphore's current value.
///
/// # Safety
/// `value` is NULL (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_semaphore_value(
    semaphore: *const LavaFlowSemaphore,
    value: *mut u64,
) -> LavaFlowStatus {
    guard("lava_flow_semaphore_value", || {
        let v = get(semaphore, "semaphore")?.value()?;
        // SAFETY: the caller's contract on `value`.
        unsafe { put(value, v, "value") }
    })
}

/// Signals a timeline semaphore to `value` from the host (it must be larger than the current one).
///
/// # Safety
/// None beyond passing a handle value.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_semaphore_signal(semaphore: *const LavaFlowSemaphore, value: u64) -> LavaFlowStatus {
    guard("lava_flow_semaphore_signal", || Ok(get(semaphore, "semaphore")?.signal(value)?))
}

/// Waits on the host until a timeline semaphore reaches `value`, at most `timeout_ns`
/// nanoseconds (`LAVA_FLOW_ERROR_TIMEOUT` after that).
///
/// # Safety
/// None beyond passing a handle value.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_semaphore_wait(
    semaphore: *const LavaFlowSemaphore,
    value: u64,
    timeout_ns: u64,
) -> LavaFlowStatus {
    guard(
        "lava_flow_semaphore_wait",
        || Ok(get(semaphore, "semaphore")?.wait(value, Duration::from_nanos(timeout_ns))?),
    )
}

/// Releases a semaphore (NULL: nothing).
///
/// # Safety
/// None beyond passing a handle value: a destroyed or foreign one is refused.
#[no_mangle]
pub unsafe extern "C" fn lava_flow_semaphore_destroy(semaphore: *mut LavaFlowSemaphore) -> LavaFlowStatus {
    guard("lava_flow_semaphore_destroy", || remove(semaphore).map(drop))
}
