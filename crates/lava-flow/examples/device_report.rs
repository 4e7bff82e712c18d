//! Prints what each Vulkan device offers for sharing: memory types and heaps, and which handle
//! kinds buffers and images can be exported and imported as.
//!
//! `cargo run --example device_report`

use lava_flow::vulkan::caps::{buffer_capability_table, image_capability_table};
use lava_flow::VulkanContext;

fn main() -> Result<(), lava_flow::Error> {
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
        describe_exported_fds(&ctx);
    }
    Ok(())
}

/// What the fds of this driver's exports are (file type, device and inode): importers can only
/// tell a memory fd from a semaphore or fence fd where the driver makes them differ.
fn describe_exported_fds(ctx: &VulkanContext) {
    use lava_flow::vulkan::sync::{Fence, FenceHandleKind, Semaphore, SemaphoreHandleKind, SemaphoreKind};
    use std::os::fd::AsFd;
    let show = |what: &str, fd: std::os::fd::BorrowedFd<'_>| {
        let kind = lava_flow::fd::inspect(fd);
        let stat = rustix::fs::fstat(fd).ok();
        let ids = stat.map(|s| format!("dev {} ino {} rdev {}", s.st_dev, s.st_ino, s.st_rdev)).unwrap_or_default();
        println!("    export fd of {what:<20} {} ({ids})", kind.describe());
    };
    if let Ok(buffer) = lava_flow::Buffer::new(ctx, &lava_flow::BufferOptions::new(65536)) {
        if let Ok(e) = buffer.export_fd() {
            show("a buffer", e.memory.handle.as_fd());
        }
    }
    for kind in [SemaphoreKind::Timeline, SemaphoreKind::Binary] {
        if let Ok(e) = Semaphore::exportable(ctx, kind, SemaphoreHandleKind::OpaqueFd).and_then(|s| s.export()) {
            show(&format!("a {kind:?} semaphore"), e.handle.as_fd());
        }
    }
    if let Ok(e) = Fence::exportable(ctx, FenceHandleKind::OpaqueFd).and_then(|f| f.export()) {
        show("a fence", e.handle.as_fd());
    }
}
