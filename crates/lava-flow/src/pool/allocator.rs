//! `MemoryAllocator`: the entry point in the shape the project started from
//! (`allocator.allocate(size, MemoryLocation::GpuVulkan { device_id })` then `buffer.export_fd()`),
//! opening each Vulkan device on first use and routing small buffers through a [`BufferPool`].

use std::collections::HashMap;
use std::sync::Mutex;

use super::{BufferPool, PoolConfig};
use crate::vulkan::{Buffer, BufferOptions, Image, ImageOptions, MemoryLocation};
use crate::{Error, Result, VulkanContext};

/// Allocates exportable buffers and images on the machine's Vulkan devices, opening each device
/// on first use. Send + Sync: share it between threads.
pub struct MemoryAllocator {
    device_count: usize,
    contexts: Mutex<HashMap<usize, VulkanContext>>,
    /// Exportable blocks that small buffers are carved from (see [`crate::pool`]).
    pool: BufferPool,
}

impl std::fmt::Debug for MemoryAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryAllocator").field("device_count", &self.device_count).finish()
    }
}

impl MemoryAllocator {
    /// Finds the machine's Vulkan devices. Fails (with advice) when there is no loader or driver.
    pub fn new() -> Result<MemoryAllocator> {
        let devices = VulkanContext::enumerate()?;
        if devices.is_empty() {
            return Err(Error::DeviceNotFound {
                api: "Vulkan",
                wanted: "(any)".into(),
                found: "the Vulkan loader lists no devices".into(),
                advice: "install a Vulkan driver (`apt-get install mesa-vulkan-drivers` for the software one)".into(),
            });
        }
        Ok(MemoryAllocator {
            device_count: devices.len(),
            contexts: Mutex::new(HashMap::new()),
            pool: BufferPool::default(),
        })
    }

    /// An allocator over one already opened context, as device `ctx.info().index`.
    pub fn with_context(ctx: VulkanContext) -> MemoryAllocator {
        let index = ctx.info().index;
        let mut map = HashMap::new();
        map.insert(index, ctx);
        MemoryAllocator { device_count: index + 1, contexts: Mutex::new(map), pool: BufferPool::default() }
    }

    /// The context of device `device_id`, opened on first use.
    pub fn context(&self, device_id: usize) -> Result<VulkanContext> {
        let mut contexts = self.contexts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ctx) = contexts.get(&device_id) {
            return Ok(ctx.clone());
        }
        if device_id >= self.device_count {
            return Err(Error::DeviceNotFound {
                api: "Vulkan",
                wanted: format!("with device_id {device_id}"),
                found: format!("{} device(s), ids 0..{}", self.device_count, self.device_count),
                advice: "run `lava-flow info` to list devices".into(),
            });
        }
        let ctx = VulkanContext::with_index(device_id)?;
        contexts.insert(device_id, ctx.clone());
        Ok(ctx)
    }

    /// Allocates an exportable buffer of `size` bytes at `location` (storage and transfer usage).
    pub fn allocate(&self, size: u64, location: MemoryLocation) -> Result<Buffer> {
        self.allocate_buffer(location.device_id(), &BufferOptions::new(size).memory(location.kind()))
    }

    /// Allocates a buffer with full options on device `device_id`: from a pool block or its own
    /// allocation, as `options.strategy` and the pool's configuration decide.
    pub fn allocate_buffer(&self, device_id: usize, options: &BufferOptions) -> Result<Buffer> {
        self.pool.allocate_buffer(&self.context(device_id)?, options)
    }

    /// The pool small buffers come from: statistics, `trim`.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Replaces the pool's configuration (block size, dedicated threshold); call before allocating.
    pub fn with_pool_config(mut self, config: PoolConfig) -> Self {
        self.pool = BufferPool::new(config);
        self
    }

    /// Allocates an image on device `device_id`.
    pub fn allocate_image(&self, device_id: usize, options: &ImageOptions) -> Result<Image> {
        Image::new(&self.context(device_id)?, options)
    }
}
