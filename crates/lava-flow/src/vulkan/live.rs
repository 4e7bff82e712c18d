//! Counters of live Vulkan contexts and memory allocations, for leak hunting: `selftest --soak`
//! checks that they come back to their level after every round. Not a stable API.

use std::sync::atomic::{AtomicUsize, Ordering};

static CONTEXTS: AtomicUsize = AtomicUsize::new(0);
static MEMORIES: AtomicUsize = AtomicUsize::new(0);

/// How many lava-flow Vulkan objects are alive in this process right now.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LiveObjects {
    /// Open devices: each `VulkanContext` (with all its clones) holds one `VkInstance` and one
    /// `VkDevice`, destroyed when the last clone and the last object made from it are gone (an
    /// adopted one, from `VulkanContext::from_raw`, is counted too and hands them back instead).
    pub vulkan_contexts: usize,
    /// `DeviceMemory` objects (each one `VkDeviceMemory`, allocated, imported or adopted).
    pub device_memories: usize,
}

/// The live objects now. Cheap (two atomic loads); counts every thread's objects.
#[doc(hidden)]
pub fn live_objects() -> LiveObjects {
    LiveObjects { vulkan_contexts: CONTEXTS.load(Ordering::Relaxed), device_memories: MEMORIES.load(Ordering::Relaxed) }
}

/// Counts one object of a kind for as long as it lives: a field of the counted object.
pub(crate) struct Live(&'static AtomicUsize);

impl Live {
    pub(crate) fn context() -> Live {
        CONTEXTS.fetch_add(1, Ordering::Relaxed);
        Live(&CONTEXTS)
    }

    pub(crate) fn memory() -> Live {
        MEMORIES.fetch_add(1, Ordering::Relaxed);
        Live(&MEMORIES)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
