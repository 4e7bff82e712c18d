//! Prints what each Vulkan device offers for sharing: memory types and heaps, and which handle
//! kinds buffers and images can be exported and imported as.
//!
//! `cargo run --example device_report`

use lava_flow::vulkan::caps::{buffer_capability_table, image_capability_table};
use lava_flow::VulkanContext;

fn main() -> Result<(), lava_flow::Error> {
    lava_flow::testing::prefer_software_vulkan_if_no_gpu();
    for info in VulkanContext::enumerate()? {
        let ctx = VulkanContext::with_index(info.index)?;
        println!(
            "[{}] {} ({}, driver {}, Vulkan {})",
            info.index, info.name, info.device_type, info.driver_name, info.api_version
        );
        println!("    device UUID {}  driver UUID {}", info.identity.device_uuid, info.identity.driver_uuid);
        println!("    extensions {:?}", info.extensions);
        let props = ctx.memory_properties();
        for i in 0..props.memory_heap_count as usize {
            let h = props.memory_heaps[i];
            println!("    heap {i}: {} MiB {:?}", h.size >> 20, h.flags);
        }
        for i in 0..props.memory_type_count as usize {
            let t = props.memory_types[i];
            println!("    type {i}: heap {} {:?}", t.heap_index, t.property_flags);
        }
        for caps in buffer_capability_table(&ctx) {
            println!(
                "    buffer {:<10} export {:<5} import {:<5} dedicated-only {}",
                caps.handle_kind.name(),
                caps.exportable,
                caps.importable,
                caps.dedicated_only
            );
        }
        for (tiling, caps) in image_capability_table(&ctx) {
            println!(
                "    image {:?} {:<10} export {:<5} import {:<5} dedicated-only {}",
                tiling,
                caps.handle_kind.name(),
                caps.exportable,
                caps.importable,
                caps.dedicated_only
            );
        }
    }
    Ok(())
}
