//! Requests that would break a Vulkan valid-usage rule (undefined behaviour in the driver, not an
//! error it reports) are refused by lava-flow's safe API before the driver sees them, with an
//! error that names the rule. Each case here reached the driver before.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ash::vk;
use common::{two_devices, vulkan};
use lava_flow::vulkan::sync::{RecordedCommands, Semaphore, Submission};
use lava_flow::vulkan::{DedicatedPolicy, MemoryKind};
use lava_flow::{Buffer, BufferOptions, Error, Image, ImageOptions};

fn is_invalid(result: lava_flow::Result<impl Sized>, rule: &str) -> String {
    match result {
        Err(e @ Error::InvalidArgument { .. }) => {
            let text = e.to_string();
            assert!(text.contains(rule), "the error names {rule}: {text}");
            text
        }
        Err(e) => panic!("expected InvalidArgument naming {rule}, got {e}"),
        Ok(_) => panic!("expected InvalidArgument naming {rule}, the request was accepted"),
    }
}

#[test]
fn bind_at_refuses_offsets_sizes_and_memory_vulkan_forbids() {
    let Some(ctx) = vulkan() else { return };
    let pooled = Buffer::new(&ctx, &BufferOptions::new(65536).dedicated(DedicatedPolicy::Never)).unwrap();
    let memory = Arc::clone(pooled.memory());
    let usage = pooled.usage();
    // An offset whose end overflows 64 bits used to wrap past the bounds check.
    let huge: u64 = !0xffff;
    let e = Buffer::bind_at(Arc::clone(&memory), huge, 4096, usage, None).expect_err("overflowing offset");
    assert!(e.to_string().contains("01036"), "{e}");
    is_invalid(Buffer::bind_at(Arc::clone(&memory), 0, 0, usage, None), "VUID-VkBufferCreateInfo-size-00912");
    assert!(Buffer::bind_at(Arc::clone(&memory), 0, 4096, usage, None).is_ok(), "a valid bind still works");

    let dedicated = Buffer::new(&ctx, &BufferOptions::new(65536).dedicated(DedicatedPolicy::Always)).unwrap();
    assert!(dedicated.memory().dedicated());
    is_invalid(
        Buffer::bind_at(Arc::clone(dedicated.memory()), 0, 4096, usage, None),
        "VUID-vkBindBufferMemory-memory-01508",
    );
}

#[test]
fn buffers_without_usage_are_refused() {
    let Some(ctx) = vulkan() else { return };
    let options = BufferOptions::new(4096).usage(vk::BufferUsageFlags::empty()).export(None);
    is_invalid(Buffer::new(&ctx, &options), "VUID-VkBufferCreateInfo-None-09500");
    // The pool creates its own probe buffer to learn the requirements.
    let allocator = lava_flow::MemoryAllocator::with_context(ctx.clone());
    let pooled = BufferOptions::new(4096)
        .usage(vk::BufferUsageFlags::empty())
        .strategy(lava_flow::vulkan::AllocationStrategy::Pooled);
    is_invalid(allocator.allocate_buffer(ctx.info().index, &pooled), "VUID-VkBufferCreateInfo-None-09500");
}

#[test]
fn gpu_copies_check_usage_length_and_overlap() {
    let Some(ctx) = vulkan() else { return };
    let storage_only = BufferOptions::new(4096).usage(vk::BufferUsageFlags::STORAGE_BUFFER).export(None);
    let plain = Buffer::new(&ctx, &storage_only).unwrap();
    let mut other = Buffer::new(&ctx, &BufferOptions::new(4096).export(None)).unwrap();
    is_invalid(plain.fill(7), "TRANSFER_DST");
    is_invalid(plain.copy_to(&other), "TRANSFER_SRC");
    is_invalid(other.copy_to(&plain), "TRANSFER_DST");

    // Overlapping ranges of one buffer: vkCmdCopyBuffer forbids them.
    other.write(0, &common::pattern(4096, 3)).unwrap();
    is_invalid(other.copy_region_to(0, &other, 16, 64), "VUID-vkCmdCopyBuffer-pRegions-00117");
    // Disjoint ranges of one buffer are fine, and so is an empty copy.
    other.copy_region_to(0, &other, 2048, 64).unwrap();
    assert_eq!(other.read(2048, 64).unwrap(), common::pattern(4096, 3)[..64]);
    other.copy_region_to(0, &other, 0, 0).unwrap();

    // A buffer too small for one 32-bit fill value is left as it is (vkCmdFillBuffer needs size > 0).
    let mut tiny = Buffer::new(&ctx, &BufferOptions::new(3).memory(MemoryKind::HostVisible).export(None)).unwrap();
    tiny.write(0, &[1, 2, 3]).unwrap();
    tiny.fill(0xffff_ffff).unwrap();
    assert_eq!(tiny.read(0, 3).unwrap(), [1, 2, 3]);
}

#[test]
fn dedicated_imports_are_bound_at_offset_zero() {
    let Some((a, b)) = two_devices() else { return };
    let buffer = Buffer::new(&a, &BufferOptions::new(65536).dedicated(DedicatedPolicy::Always)).unwrap();
    let mut exported = buffer.export_fd().unwrap();
    assert!(exported.memory.description.dedicated);
    exported.buffer.offset = 4096;
    exported.buffer.size = 4096;
    is_invalid(Buffer::import(&b, exported), "VUID-vkBindBufferMemory-memory-01508");
    // The untampered export still imports.
    assert!(Buffer::import(&b, buffer.export_fd().unwrap()).is_ok());
}

#[test]
fn private_images_are_checked_against_the_drivers_limits() {
    let Some(ctx) = vulkan() else { return };
    let limit = ctx.limits().max_image_dimension2_d;
    let mut options = ImageOptions::d2(lava_flow::raw_gpu_handle::TextureFormat::Rgba8Unorm, limit + 1, 1);
    options.export = None;
    let e = Image::new(&ctx, &options).expect_err("an image wider than the driver allows");
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("at most"), "{e}");
    options.extent.width = 64;
    assert!(Image::new(&ctx, &options).is_ok(), "a private image within the limits is still made");
}

#[test]
fn submissions_refuse_invalid_wait_stages_and_repeated_command_buffers() {
    let Some(ctx) = vulkan() else { return };
    if !ctx.extensions().timeline_semaphore {
        lava_flow_diag::testing::skip("vulkan", "the device lacks timeline semaphores");
        return;
    }
    let semaphore = Semaphore::new(&ctx).unwrap();
    semaphore.signal(1).unwrap();
    let empty = Submission::new().wait(&semaphore, 1, vk::PipelineStageFlags::empty()).submit(&ctx);
    is_invalid(empty, "requiredbitmask");
    let host = Submission::new().wait(&semaphore, 1, vk::PipelineStageFlags::HOST).submit(&ctx);
    is_invalid(host, "00078");
    let geometry = Submission::new().wait(&semaphore, 1, vk::PipelineStageFlags::GEOMETRY_SHADER).submit(&ctx);
    is_invalid(geometry, "00076");

    let commands = RecordedCommands::record(&ctx, |_, _| {}).unwrap();
    is_invalid(Submission::new().commands(&commands).commands(&commands).submit(&ctx), "pCommandBuffers-00071");
    let done = Submission::new()
        .wait(&semaphore, 1, vk::PipelineStageFlags::TRANSFER)
        .commands(&commands)
        .signal(&semaphore, 2)
        .submit(&ctx)
        .unwrap();
    done.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(semaphore.value().unwrap(), 2);
}

/// Threads submitting one command buffer and one fence at once: the in-use checks and the
/// submission happen under the queue lock, so every attempt either runs or is refused as still
/// pending, and each success is waited for before the fence is reset.
#[test]
fn concurrent_submissions_of_one_command_buffer_never_overlap() {
    let Some(ctx) = vulkan() else { return };
    if !ctx.extensions().timeline_semaphore {
        lava_flow_diag::testing::skip("vulkan", "the device lacks timeline semaphores");
        return;
    }
    let commands = RecordedCommands::record(&ctx, |_, _| {}).unwrap();
    let ran = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    match Submission::new().commands(&commands).submit(&ctx) {
                        Ok(done) => {
                            done.wait(Duration::from_secs(10)).unwrap();
                            ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => assert!(e.to_string().contains("still pending"), "{e}"),
                    }
                }
            });
        }
    });
    assert!(ran.into_inner() > 0, "at least one submission ran");
}
