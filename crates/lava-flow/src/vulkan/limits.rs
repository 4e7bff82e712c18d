//! What one Vulkan allocation may be, checked before `vkCreateBuffer`/`vkAllocateMemory`: the
//! heap sizes, `maxMemoryAllocationSize` (Vulkan 1.1), `maxBufferSize` (Vulkan 1.3), the heap
//! budget (VK_EXT_memory_budget) where the driver reports one, and host memory
//! ([`crate::limits`]) where the device's memory is the machine's RAM.

use ash::vk;

use super::VulkanContext;
use crate::limits::{check_host_memory, human_bytes};
use crate::{Error, Result};

/// The device's `maxMemoryAllocationSize` and, where it reports one (Vulkan 1.3), `maxBufferSize`.
fn allocation_limits(ctx: &VulkanContext) -> (u64, Option<u64>) {
    let inner = &ctx.inner;
    // SAFETY: `inner.physical` was enumerated from `inner.instance`, which the context keeps alive;
    // the query writes only the returned struct.
    let api_version = unsafe { inner.instance.get_physical_device_properties(inner.physical) }.api_version;
    let mut maintenance3 = vk::PhysicalDeviceMaintenance3Properties::default();
    let mut maintenance4 = vk::PhysicalDeviceMaintenance4Properties::default();
    let has_maintenance4 = api_version >= vk::API_VERSION_1_3;
    {
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut maintenance3);
        if has_maintenance4 {
            props2 = props2.push_next(&mut maintenance4);
        }
        // SAFETY: the physical device belongs to this instance (created for Vulkan 1.1 or later,
        // where both structs are core: 1.1 for maintenance3, 1.3 for maintenance4, chained only
        // then); the chained structs live across the call.
        unsafe { inner.instance.get_physical_device_properties2(inner.physical, &mut props2) };
    }
    let max_allocation =
        if maintenance3.max_memory_allocation_size == 0 { u64::MAX } else { maintenance3.max_memory_allocation_size };
    let max_buffer = (has_maintenance4 && maintenance4.max_buffer_size > 0).then_some(maintenance4.max_buffer_size);
    (max_allocation, max_buffer)
}

/// `heapBudget` less `heapUsage` of each heap (VK_EXT_memory_budget), where the device has it.
fn heap_room(ctx: &VulkanContext) -> Option<Vec<u64>> {
    if !ctx.inner.info.extensions.memory_budget {
        return None;
    }
    let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
    let count = {
        let mut props2 = vk::PhysicalDeviceMemoryProperties2::default().push_next(&mut budget);
        // SAFETY: the physical device belongs to this instance, which has VK_EXT_memory_budget's
        // device extension available (checked above); the chained struct lives across the call.
        unsafe { ctx.inner.instance.get_physical_device_memory_properties2(ctx.inner.physical, &mut props2) };
        (props2.memory_properties.memory_heap_count as usize).min(vk::MAX_MEMORY_HEAPS)
    };
    // A driver that leaves the budget at zero reports nothing usable.
    Some(
        (0..count)
            .map(|i| {
                if budget.heap_budget[i] == 0 {
                    u64::MAX
                } else {
                    budget.heap_budget[i].saturating_sub(budget.heap_usage[i])
                }
            })
            .collect(),
    )
}

/// Checks that one allocation of `size` bytes with memory properties `required` for `what`
/// ("a buffer", "an image") can be made on `ctx`'s device; `is_buffer` adds `maxBufferSize`.
pub(crate) fn check_allocation(
    ctx: &VulkanContext,
    size: u64,
    required: vk::MemoryPropertyFlags,
    what: &str,
    is_buffer: bool,
) -> Result<()> {
    let device = &ctx.info().name;
    let props = ctx.memory_properties();
    let mut heaps: Vec<usize> = (0..props.memory_type_count as usize)
        .filter(|i| props.memory_types[*i].property_flags.contains(required))
        .map(|i| props.memory_types[i].heap_index as usize)
        .collect();
    heaps.sort_unstable();
    heaps.dedup();
    let largest = heaps.iter().map(|h| props.memory_heaps[*h].size).max().unwrap_or(0);
    if size > largest {
        return Err(Error::OutOfMemory {
            code: None,
            what: format!("{what} of {size} bytes ({})", human_bytes(size)),
            advice: format!(
                "the largest suitable memory heap of {device} holds {largest} bytes ({}; \
                 VkPhysicalDeviceMemoryProperties): ask for less",
                human_bytes(largest)
            ),
        });
    }
    let (max_allocation, max_buffer) = allocation_limits(ctx);
    if size > max_allocation {
        return Err(Error::OutOfMemory {
            code: None,
            what: format!("{what} of {size} bytes ({})", human_bytes(size)),
            advice: format!(
                "{device} allocates at most {max_allocation} bytes ({}) at once \
                 (VkPhysicalDeviceMaintenance3Properties::maxMemoryAllocationSize): ask for less, or split the data \
                 over several allocations",
                human_bytes(max_allocation)
            ),
        });
    }
    if let Some(max_buffer) = max_buffer.filter(|m| is_buffer && size > *m) {
        return Err(Error::OutOfMemory {
            code: None,
            what: format!("{what} of {size} bytes ({})", human_bytes(size)),
            advice: format!(
                "{device} creates buffers of at most {max_buffer} bytes ({}) \
                 (VkPhysicalDeviceMaintenance4Properties::maxBufferSize): ask for less, or split the data over \
                 several buffers",
                human_bytes(max_buffer)
            ),
        });
    }
    if let Some(room) = heap_room(ctx) {
        let best = heaps.iter().map(|h| room.get(*h).copied().unwrap_or(u64::MAX)).max().unwrap_or(0);
        if size > best {
            return Err(Error::OutOfMemory {
                code: None,
                what: format!("{what} of {size} bytes ({})", human_bytes(size)),
                advice: format!(
                    "the memory budget of {device} leaves this process {best} bytes ({}) in the largest suitable \
                     heap (VK_EXT_memory_budget heapBudget - heapUsage): free device memory or ask for less",
                    human_bytes(best)
                ),
            });
        }
    }
    // A CPU device's or an integrated GPU's memory is the machine's RAM, and so is a heap that
    // is not device-local: check what the host can give as well.
    let host_backed = matches!(ctx.info().device_type.as_str(), "CPU" | "integrated GPU")
        || heaps.iter().all(|h| !props.memory_heaps[*h].flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL));
    if host_backed {
        check_host_memory(
            &format!("{what} of {size} bytes on {device}, whose memory is this machine's RAM"),
            size,
            "ask for less, or free memory first",
        )?;
    }
    Ok(())
}
