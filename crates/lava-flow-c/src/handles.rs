//! Opaque handles: numbers in one process-wide table, never pointers lava-flow reads through.
//!
//! A handle's value (the `LavaFlowBuffer *` C sees) is a number from a 64-bit counter that never
//! repeats, cast to a pointer type C cannot look into. Every call looks the number up:
//! - a destroyed handle is no longer in the table, a number lava-flow never gave out was never in
//!   it, and a handle of another type is found with another type: each is refused with
//!   `LAVA_FLOW_ERROR_INVALID_HANDLE`, and nothing is read through the pointer;
//! - a call holds its own reference (`Arc`) to the object while it runs, so a `_destroy` on
//!   another thread at the same time only removes the entry: the object is dropped when the
//!   running call ends.
//!
//! What cannot be detected: nothing about a handle value is unsafe to pass, so nothing is left
//! undetected except that a live handle of the right type passed where the caller meant another
//! one is used as given.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::status::{CError, CResult, LavaFlowStatus};

/// A C handle type and the Rust object behind it.
pub trait Handle: 'static {
    /// What the table holds for it.
    type Object: Send + Sync + 'static;
    /// The C type's name, for messages.
    const NAME: &'static str;
}

struct Entry {
    name: &'static str,
    object: Arc<dyn Any + Send + Sync>,
}

struct Table {
    next: u64,
    live: BTreeMap<u64, Entry>,
}

static TABLE: Mutex<Table> = Mutex::new(Table { next: 1, live: BTreeMap::new() });

fn table() -> MutexGuard<'static, Table> {
    // Nothing panics while the lock is held (inserts and removes only); a poisoned lock still
    // holds a consistent table.
    TABLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Enters `object` in the table and returns its handle.
pub fn register<H: Handle>(object: H::Object) -> *mut H {
    let object: Arc<dyn Any + Send + Sync> = Arc::new(object);
    let mut t = table();
    let id = t.next;
    t.next += 1;
    t.live.insert(id, Entry { name: H::NAME, object });
    std::ptr::without_provenance_mut(id as usize)
}

fn invalid<H: Handle>(id: usize, found: Option<&'static str>) -> CError {
    let message = match found {
        Some(other) => format!(
            "the handle {id:#x} is a {other}, not a {}: pass the handle the matching _create call returned",
            H::NAME
        ),
        None => format!(
            "{id:#x} is not a live {}: it was destroyed already, or it was not made by lava-flow \
             (handles are valid from their _create call until their _destroy call)",
            H::NAME
        ),
    };
    CError::new(LavaFlowStatus::LAVA_FLOW_ERROR_INVALID_HANDLE, message)
}

/// The object behind `handle`, or an error naming what is wrong with it (`what` names the
/// argument in the message).
pub fn get<H: Handle>(handle: *const H, what: &str) -> CResult<Arc<H::Object>> {
    if handle.is_null() {
        return Err(CError::null(what));
    }
    let id = handle.addr();
    let t = table();
    let entry = t.live.get(&(id as u64)).ok_or_else(|| invalid::<H>(id, None))?;
    Arc::clone(&entry.object).downcast::<H::Object>().map_err(|_| invalid::<H>(id, Some(entry.name)))
}

/// Removes `handle` from the table and returns its object (dropped by the caller, outside the
/// table's lock). `Ok(None)` for NULL: destroying NULL does nothing, as `free(NULL)`.
pub fn remove<H: Handle>(handle: *mut H) -> CResult<Option<Arc<H::Object>>> {
    if handle.is_null() {
        return Ok(None);
    }
    let id = handle.addr();
    let mut t = table();
    match t.live.get(&(id as u64)) {
        None => return Err(invalid::<H>(id, None)),
        Some(entry) if !entry.object.is::<H::Object>() => return Err(invalid::<H>(id, Some(entry.name))),
        Some(_) => {}
    }
    let entry = t.live.remove(&(id as u64)).expect("checked above");
    drop(t);
    Ok(Some(entry.object.downcast::<H::Object>().map_err(|_| invalid::<H>(id, None))?))
}

/// Writes a new handle to `out`, which the caller checked is not NULL.
///
/// # Safety
/// `out` must be valid for a write of one pointer.
pub unsafe fn write_handle<H: Handle>(out: *mut *mut H, object: H::Object) {
    let handle = register::<H>(object);
    // SAFETY: the caller guarantees `out` is writable; write_unaligned needs no alignment.
    unsafe { out.write_unaligned(handle) };
}

/// How many handles are live (tests).
pub fn live_count() -> usize {
    table().live.len()
}

/// Number of live handles in the process: every `_create`/`_import`/`_connect` adds one, every
/// `_destroy` removes one. For leak checks in tests.
#[no_mangle]
pub extern "C" fn lava_flow_live_handles() -> u64 {
    live_count() as u64
}

#[cfg(test)]
mod tests {
    use crate::memory::{
        lava_flow_host_memory_create, lava_flow_host_memory_destroy, lava_flow_host_memory_write, LavaFlowHostMemory,
    };
    use crate::status::LavaFlowStatus::{self, *};

    /// A handle destroyed on one thread while others use it: every call returns OK or
    /// INVALID_HANDLE (never a crash or a use after free), exactly one destroy succeeds, and the
    /// handle is gone afterwards.
    #[test]
    fn destroy_racing_with_use_is_refused_not_a_crash() {
        for _ in 0..50 {
            let mut m: *mut LavaFlowHostMemory = std::ptr::null_mut();
            // SAFETY: `m` is a valid out-pointer.
            assert_eq!(unsafe { lava_flow_host_memory_create(4096, 0, &mut m) }, LAVA_FLOW_OK);
            let addr = m.addr();
            let results: Vec<Vec<LavaFlowStatus>> = std::thread::scope(|s| {
                let threads: Vec<_> = (0..4)
                    .map(|t| {
                        s.spawn(move || {
                            let m = std::ptr::without_provenance_mut::<LavaFlowHostMemory>(addr);
                            (0..20)
                                .map(|i| {
                                    if t == 0 && i == 10 {
                                        // SAFETY: a handle value; a destroyed one is refused.
                                        unsafe { lava_flow_host_memory_destroy(m) }
                                    } else {
                                        let byte = [i as u8];
                                        // SAFETY: `byte` is 1 readable byte.
                                        unsafe { lava_flow_host_memory_write(m, 0, byte.as_ptr().cast(), 1) }
                                    }
                                })
                                .collect()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            for status in results.iter().flatten() {
                assert!(matches!(status, LAVA_FLOW_OK | LAVA_FLOW_ERROR_INVALID_HANDLE), "{status:?}");
            }
            // SAFETY: a handle value; destroyed already, so refused.
            assert_eq!(unsafe { lava_flow_host_memory_destroy(m) }, LAVA_FLOW_ERROR_INVALID_HANDLE);
        }
    }
}
