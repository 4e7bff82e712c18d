//! Synchronization that every Vulkan 1.2 driver (lavapipe included) can do: timeline and binary
//! semaphores that stay on one device, host signal / wait / timeout, queue submissions ordered
//! by them, fences, ownership transfers of buffers and images, the capability queries, and the
//! import refusals that happen before a driver sees the fd.

mod sync_common;

use std::os::fd::OwnedFd;
use std::time::Duration;

use ash::vk;
use lava_flow::raw_gpu_handle::TextureFormat;
use lava_flow::raw_gpu_handle::{
    ExportedFence, ExportedSemaphore, FenceDescription, FenceHandleKind, SemaphoreDescription, SemaphoreHandleKind,
    SemaphoreKind, Uuid,
};
use lava_flow::vulkan::sync::{
    fence_capabilities, ping_pong, semaphore_capabilities, sync_capabilities_all, Fence, FenceOptions,
    OwnershipTransfer, RecordedCommands, Semaphore, SemaphoreOptions, StageAccess, Submission, SyncCapabilities, Turn,
};
use lava_flow::vulkan::{Buffer, Image, ImageOptions};
use lava_flow::{Error, VulkanContext};
use lava_flow_diag::{testing, turns};
use sync_common::{assert_all, readback, set_words, shared_buffer, words, WAIT};

fn context() -> Option<VulkanContext> {
    let ctx = testing::or_skip("vulkan", VulkanContext::new())?;
    if !ctx.extensions().timeline_semaphore {
        testing::skip("vulkan", format!("{} lacks timeline semaphores", ctx.info().name));
        return None;
    }
    Some(ctx)
}

fn fill(ctx: &VulkanContext, buffer: &Buffer, value: u32) -> RecordedCommands {
    let (buf, size) = (buffer.handle(), buffer.size());
    RecordedCommands::record(ctx, |dev, cmd| {
        let host = vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ | vk::AccessFlags::TRANSFER_READ);
        // SAFETY: cmd is recording on ctx's family; `buf` is a live buffer of ctx's device with
        // TRANSFER_DST and a size that is a multiple of 4, kept alive until the commands' submissions
        // completed; the barrier array is a local.
        unsafe {
            dev.cmd_fill_buffer(cmd, buf, 0, size, value);
            dev.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::HOST | vk::PipelineStageFlags::TRANSFER,
                vk::DependencyFlags::empty(),
                &[host],
                &[],
                &[],
            );
        }
    })
    .expect("recording a fill")
}

#[test]
fn timeline_semaphore_host_signal_wait_and_timeout() {
    let Some(ctx) = context() else { return };
    let sem = Semaphore::new(&ctx).unwrap();
    assert_eq!(sem.kind(), SemaphoreKind::Timeline);
    assert_eq!(sem.value().unwrap(), 0);
    sem.wait(0, Duration::ZERO).expect("value 0 is reached at creation");

    let timeout = Duration::from_millis(50);
    match sem.wait(1, timeout) {
        Err(Error::Timeout { timeout: t, action }) => {
            assert_eq!(t, timeout);
            assert!(action.contains("reach 1") && action.contains("at 0"), "{action}");
        }
        other => panic!("waiting for an unsignalled value must time out, got {other:?}"),
    }
    assert!(matches!(sem.wait(1, Duration::ZERO), Err(Error::Timeout { .. })), "a zero timeout polls");

    sem.signal(3).unwrap();
    assert_eq!(sem.value().unwrap(), 3);
    sem.wait(2, Duration::ZERO).expect("a lower value is reached too");
    sem.wait(3, Duration::ZERO).unwrap();
    for stale in [2, 3] {
        let e = sem.signal(stale).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert!(e.to_string().contains("already at 3"), "{e}");
    }
    assert_eq!(sem.value().unwrap(), 3, "refused signals change nothing");

    let started = Semaphore::with_options(&ctx, &SemaphoreOptions { initial_value: 7, ..Default::default() }).unwrap();
    assert_eq!(started.value().unwrap(), 7);
    let e = Semaphore::with_options(
        &ctx,
        &SemaphoreOptions { kind: SemaphoreKind::Binary, initial_value: 1, export: vec![] },
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    ctx.check_deferred().expect("nothing went wrong in a Drop");
}

#[test]
fn gpu_submission_waits_for_and_signals_a_timeline() {
    let Some(ctx) = context() else { return };
    let sem = Semaphore::new(&ctx).unwrap();
    let mut out = readback(&ctx, 64 * 1024);
    set_words(&mut out, 0);
    let cmds = fill(&ctx, &out, 0xC0FF_EE00);

    // Wait-before-signal: the batch is queued behind value 1, which nobody signalled yet.
    let submitted = Submission::new()
        .wait(&sem, 1, vk::PipelineStageFlags::TRANSFER)
        .commands(&cmds)
        .signal(&sem, 2)
        .submit(&ctx)
        .unwrap();
    assert!(matches!(sem.wait(2, Duration::from_millis(100)), Err(Error::Timeout { .. })));
    assert!(!submitted.is_complete().unwrap());
    assert!(cmds.is_pending().unwrap());
    assert_all(&words(&out), 0, "the fill must not run before value 1");

    let e = Submission::new().commands(&cmds).submit(&ctx).unwrap_err();
    assert!(e.to_string().contains("still pending"), "resubmitting a pending command buffer: {e}");

    sem.signal(1).unwrap();
    sem.wait(2, WAIT).expect("the submission signals 2 once it ran");
    submitted.wait(WAIT).unwrap();
    assert_eq!(sem.value().unwrap(), 2);
    assert_all(&words(&out), 0xC0FF_EE00, "after the signalled fill");

    // Recorded once, submitted again once the first run finished.
    let refill = fill(&ctx, &out, 0x1234_5678);
    Submission::new().commands(&refill).signal(&sem, 3).submit(&ctx).unwrap();
    sem.wait(3, WAIT).unwrap();
    assert_all(&words(&out), 0x1234_5678, "after the second fill");
    Submission::new().commands(&cmds).signal(&sem, 4).submit(&ctx).unwrap().wait(WAIT).unwrap();
    assert_all(&words(&out), 0xC0FF_EE00, "after resubmitting the first fill");

    let e = Submission::new().signal(&sem, 4).submit(&ctx).unwrap_err();
    assert!(e.to_string().contains("already at 4"), "a signal must raise the value: {e}");
    // An empty batch still waits and signals.
    Submission::new().wait(&sem, 4, vk::PipelineStageFlags::ALL_COMMANDS).signal(&sem, 10).submit(&ctx).unwrap();
    sem.wait(10, WAIT).unwrap();
    ctx.check_deferred().unwrap();
}

#[test]
fn binary_semaphore_chains_two_submissions() {
    let Some(ctx) = context() else { return };
    let binary = Semaphore::binary(&ctx).unwrap();
    let done = Semaphore::new(&ctx).unwrap();
    assert_eq!(binary.kind(), SemaphoreKind::Binary);
    for e in [binary.value().unwrap_err(), binary.signal(1).unwrap_err(), binary.wait(1, WAIT).unwrap_err()] {
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("binary"), "{e}");
    }
    let e = Submission::new().wait(&binary, 0, vk::PipelineStageFlags::TRANSFER).submit(&ctx).unwrap_err();
    assert!(e.to_string().contains("no signal of it was submitted"), "wait before signal on binary: {e}");

    let first = readback(&ctx, 16 * 1024);
    let second = readback(&ctx, 16 * 1024);
    let write = fill(&ctx, &first, 0xAB);
    let (src, dst, size) = (first.handle(), second.handle(), first.size());
    let copy = RecordedCommands::record(&ctx, |dev, cmd| {
        // SAFETY: cmd is recording; `first` and `second` are live buffers of ctx's device with the
        // transfer usages and `size` bytes each, kept alive until the submission completed.
        unsafe {
            dev.cmd_copy_buffer(cmd, src, dst, &[vk::BufferCopy::default().size(size)]);
            turns::cmd_transfer_barrier(
                dev,
                cmd,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::AccessFlags::HOST_READ,
                vk::PipelineStageFlags::HOST,
            );
        }
    })
    .unwrap();
    Submission::new().commands(&write).signal(&binary, 0).submit(&ctx).unwrap();
    let e = Submission::new().signal(&binary, 0).submit(&ctx).unwrap_err();
    assert!(e.to_string().contains("pending signal"), "double signal of a binary semaphore: {e}");
    Submission::new()
        .wait(&binary, 0, vk::PipelineStageFlags::TRANSFER)
        .commands(&copy)
        .signal(&done, 1)
        .submit(&ctx)
        .unwrap();
    done.wait(1, WAIT).unwrap();
    assert_all(&words(&second), 0xAB, "copy that waited on the binary semaphore");
    // Its signal was consumed: it can be signalled again.
    Submission::new().signal(&binary, 0).submit(&ctx).unwrap();
    Submission::new().wait(&binary, 0, vk::PipelineStageFlags::ALL_COMMANDS).signal(&done, 2).submit(&ctx).unwrap();
    done.wait(2, WAIT).unwrap();
    ctx.check_deferred().unwrap();
}

#[test]
fn fence_wait_times_out_then_signals() {
    let Some(ctx) = context() else { return };
    let fence = Fence::new(&ctx).unwrap();
    assert!(!fence.is_signaled().unwrap());
    let timeout = Duration::from_millis(30);
    match fence.wait(timeout) {
        Err(Error::Timeout { timeout: t, .. }) => assert_eq!(t, timeout),
        other => panic!("an unsubmitted fence must time out, got {other:?}"),
    }
    let out = readback(&ctx, 4096);
    let cmds = fill(&ctx, &out, 0x5151_5151);
    let submitted = Submission::new().commands(&cmds).fence(&fence).submit(&ctx).unwrap();
    fence.wait(WAIT).unwrap();
    submitted.wait(WAIT).unwrap();
    assert!(fence.is_signaled().unwrap());
    assert_all(&words(&out), 0x5151_5151, "after the fenced fill");

    let e = Submission::new().fence(&fence).submit(&ctx).unwrap_err();
    assert!(e.to_string().contains("signalled"), "a signalled fence cannot be submitted: {e}");
    fence.reset().unwrap();
    assert!(!fence.is_signaled().unwrap());
    Submission::new().fence(&fence).submit(&ctx).unwrap();
    fence.wait(WAIT).unwrap();

    let signalled = Fence::with_options(&ctx, &FenceOptions { signaled: true, export: vec![] }).unwrap();
    assert!(signalled.is_signaled().unwrap());
    signalled.wait(Duration::ZERO).unwrap();
    let e = fence.export().unwrap_err();
    assert!(e.to_string().contains("not created exportable"), "{e}");
    ctx.check_deferred().unwrap();
}

#[test]
fn submission_refuses_objects_of_another_context() {
    let Some(ctx) = context() else { return };
    let Some(other) = testing::or_skip("vulkan", VulkanContext::new()) else { return };
    let theirs = Semaphore::new(&other).unwrap();
    let e = Submission::new().signal(&theirs, 1).submit(&ctx).unwrap_err();
    assert!(e.to_string().contains("another VulkanContext"), "{e}");
    let their_fence = Fence::new(&other).unwrap();
    let e = Submission::new().fence(&their_fence).submit(&ctx).unwrap_err();
    assert!(e.to_string().contains("another VulkanContext"), "{e}");
    assert_eq!(theirs.value().unwrap(), 0, "nothing was submitted");
}

#[test]
fn capability_queries_decide_what_creation_allows() {
    let Some(ctx) = context() else { return };
    let caps = SyncCapabilities::query(&ctx);
    println!("{}:\n{caps}", ctx.info().name);
    assert_eq!(caps.semaphores.len(), 4);
    assert_eq!(caps.fences.len(), 2);
    for kind in [SemaphoreKind::Timeline, SemaphoreKind::Binary] {
        for hk in [SemaphoreHandleKind::OpaqueFd, SemaphoreHandleKind::SyncFd] {
            let c = semaphore_capabilities(&ctx, kind, hk);
            assert_eq!(caps.semaphore(kind, hk), Some(&c));
            assert_eq!(c.limitation.is_none(), c.exportable && c.importable, "{c:?}");
            match Semaphore::exportable(&ctx, kind, hk) {
                Ok(s) => {
                    assert!(c.exportable, "created although the query said no: {c:?}");
                    assert_eq!(s.export_kinds(), &[hk]);
                }
                Err(e) => {
                    assert!(!c.exportable, "refused although the query said yes: {e}");
                    assert!(matches!(e, Error::Unsupported { .. }) && e.is_unavailable(), "{e}");
                    let text = e.to_string();
                    assert!(text.contains("vkGetPhysicalDeviceExternalSemaphoreProperties"), "{text}");
                    assert!(text.contains(c.limitation.as_deref().unwrap()), "{text}");
                }
            }
        }
    }
    let sync_timeline = semaphore_capabilities(&ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::SyncFd);
    assert!(!sync_timeline.exportable, "sync fds carry binary payloads only: {sync_timeline:?}");
    for hk in [FenceHandleKind::OpaqueFd, FenceHandleKind::SyncFd] {
        let c = fence_capabilities(&ctx, hk);
        assert_eq!(caps.fence(hk), Some(&c));
        match Fence::exportable(&ctx, hk) {
            Ok(_) => assert!(c.exportable, "{c:?}"),
            Err(e) => {
                assert!(!c.exportable, "{e}");
                assert!(e.to_string().contains("vkGetPhysicalDeviceExternalFenceProperties"), "{e}");
            }
        }
    }
    let all = sync_capabilities_all().unwrap();
    let mine = all.iter().find(|c| c.device_index == ctx.info().index).expect("this device is listed");
    assert_eq!(mine.semaphore_exports(SemaphoreKind::Timeline), caps.semaphore_exports(SemaphoreKind::Timeline));
    assert_eq!(mine.fence_imports(), caps.fence_imports());
    let json = serde_json::to_value(&all).unwrap();
    assert!(json[0]["semaphores"][0]["exportable"].is_boolean(), "{json}");
}

fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

fn foreign(ctx: &VulkanContext) -> lava_flow::raw_gpu_handle::DeviceIdentity {
    let mut id = ctx.identity();
    id.device_uuid = Uuid([0x5a; 16]);
    id
}

#[test]
fn imports_refused_before_the_driver_close_the_fd_once() {
    let Some(ctx) = context() else { return };
    let before = testing::open_fd_count();

    // An opaque fd from another device: refused on the identities alone.
    let exported = ExportedSemaphore::new(
        dev_null(),
        SemaphoreDescription {
            kind: SemaphoreKind::Timeline,
            handle_kind: SemaphoreHandleKind::OpaqueFd,
            device: foreign(&ctx),
        },
    );
    let e = Semaphore::import(&ctx, exported).unwrap_err();
    assert!(matches!(e, Error::IncompatibleSyncDevice { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("device UUIDs differ") && text.contains(&Uuid([0x5a; 16]).to_string()), "{text}");
    assert_eq!(testing::open_fd_count(), before, "the refused fd is closed");

    // A binary semaphore's description offered as a timeline one.
    let exported = ExportedSemaphore::new(
        dev_null(),
        SemaphoreDescription {
            kind: SemaphoreKind::Binary,
            handle_kind: SemaphoreHandleKind::OpaqueFd,
            device: ctx.identity(),
        },
    );
    let e = Semaphore::import_as(&ctx, exported, SemaphoreKind::Timeline).unwrap_err();
    assert!(matches!(e, Error::InvalidHandle { .. }), "{e}");
    assert!(e.to_string().contains("says it is a binary semaphore"), "{e}");
    assert_eq!(testing::open_fd_count(), before);

    // A sync fd described as a timeline semaphore.
    let exported = ExportedSemaphore::new(
        dev_null(),
        SemaphoreDescription {
            kind: SemaphoreKind::Timeline,
            handle_kind: SemaphoreHandleKind::SyncFd,
            device: ctx.identity(),
        },
    );
    let e = Semaphore::import(&ctx, exported).unwrap_err();
    assert!(e.to_string().contains("binary signal"), "{e}");
    assert_eq!(testing::open_fd_count(), before);

    // A fence from another device.
    let exported = ExportedFence::new(
        dev_null(),
        FenceDescription { handle_kind: FenceHandleKind::OpaqueFd, device: foreign(&ctx) },
    );
    let e = Fence::import(&ctx, exported).unwrap_err();
    assert!(matches!(e, Error::IncompatibleSyncDevice { .. }), "{e}");
    assert_eq!(testing::open_fd_count(), before);

    // A sync fd that is not a sync_file: refused by the capability query where the driver has
    // no sync fds, by lava-flow's own check where it has (the driver never sees /dev/null).
    let exported = ExportedSemaphore::new(
        dev_null(),
        SemaphoreDescription {
            kind: SemaphoreKind::Binary,
            handle_kind: SemaphoreHandleKind::SyncFd,
            device: ctx.identity(),
        },
    );
    let importable = semaphore_capabilities(&ctx, SemaphoreKind::Binary, SemaphoreHandleKind::SyncFd).importable;
    let e = Semaphore::import(&ctx, exported).unwrap_err();
    if importable {
        assert!(matches!(e, Error::InvalidHandle { .. }) && e.to_string().contains("sync_file"), "{e}");
    } else {
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    }
    assert_eq!(testing::open_fd_count(), before);

    let exported = ExportedFence::new(
        dev_null(),
        FenceDescription { handle_kind: FenceHandleKind::SyncFd, device: ctx.identity() },
    );
    let importable = fence_capabilities(&ctx, FenceHandleKind::SyncFd).importable;
    let e = Fence::import(&ctx, exported).unwrap_err();
    if importable {
        assert!(e.to_string().contains("sync_file"), "{e}");
    } else {
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    }
    assert_eq!(testing::open_fd_count(), before);

    // Where the driver cannot import opaque fds at all, the query refuses before it.
    if !semaphore_capabilities(&ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).importable {
        let exported = ExportedSemaphore::new(
            dev_null(),
            SemaphoreDescription {
                kind: SemaphoreKind::Timeline,
                handle_kind: SemaphoreHandleKind::OpaqueFd,
                device: ctx.identity(),
            },
        );
        let e = Semaphore::import(&ctx, exported).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        assert_eq!(testing::open_fd_count(), before);
    }
    ctx.check_deferred().unwrap();
}

#[test]
fn ownership_transfer_round_trip_keeps_buffer_and_image_contents() {
    let Some(ctx) = context() else { return };
    let family = ctx.queue_family_index();
    let turns = Semaphore::new(&ctx).unwrap();
    let extent = vk::Extent3D { width: 16, height: 8, depth: 1 };
    let texels = (extent.width * extent.height) as u64;
    let shared = shared_buffer(&ctx, 8 * 1024);
    let image = Image::new(&ctx, &ImageOptions::d2(TextureFormat::Rgba8Unorm, extent.width, extent.height)).unwrap();
    let out_buffer = readback(&ctx, shared.size());
    let out_image = readback(&ctx, texels * 4);
    let range = OwnershipTransfer::color_range();

    // Side one: write both, release both to the external queue family. The image leaves in
    // GENERAL, the layout the other side is told.
    let release =
        OwnershipTransfer::new().release_whole_buffer(&shared, StageAccess::TRANSFER_WRITE).release_whole_image(
            &image,
            vk::ImageLayout::TRANSFER_DST_OPTIMAL,
            vk::ImageLayout::GENERAL,
            StageAccess::TRANSFER_WRITE,
        );
    release.validate().unwrap();
    let (buf, img) = (shared.handle(), image.handle());
    let write = RecordedCommands::record(&ctx, |dev, cmd| {
        let to_dst = vk::ImageMemoryBarrier::default()
            .old_layout(vk::ImageLayout::UNDEFINED)
            .new_layout(vk::ImageLayout::TRANSFER_DST_OPTIMAL)
            .dst_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
            .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
            .image(img)
            .subresource_range(range);
        let color = vk::ClearColorValue { float32: [1.0, 0.0, 0.0, 1.0] };
        // SAFETY: cmd is recording on ctx's family; the image and buffer are live objects of ctx's
        // device (image in UNDEFINED before its first use, with TRANSFER_DST); the release transfer passed
        // validate() above; barrier and range arrays are locals.
        unsafe {
            dev.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::TOP_OF_PIPE,
                vk::PipelineStageFlags::TRANSFER,
                vk::DependencyFlags::empty(),
                &[],
                &[],
                &[to_dst],
            );
            dev.cmd_clear_color_image(cmd, img, vk::ImageLayout::TRANSFER_DST_OPTIMAL, &color, &[range]);
            dev.cmd_fill_buffer(cmd, buf, 0, vk::WHOLE_SIZE, 0x0BAD_F00D);
            release.record(dev, cmd);
        }
    })
    .unwrap();

    // Side two (here the same device, as another API would): acquire from external after the
    // wait, the image going GENERAL -> TRANSFER_SRC, then read both back.
    let acquire = OwnershipTransfer::new()
        .acquire_buffer(family, shared.handle(), 0, vk::WHOLE_SIZE, StageAccess::TRANSFER_READ)
        .acquire_image(
            family,
            image.handle(),
            range,
            vk::ImageLayout::GENERAL,
            vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
            StageAccess::TRANSFER_READ,
        );
    acquire.validate().unwrap();
    let (out_b, out_i, size) = (out_buffer.handle(), out_image.handle(), shared.size());
    let read = RecordedCommands::record(&ctx, |dev, cmd| {
        let region = vk::BufferImageCopy::default()
            .image_subresource(vk::ImageSubresourceLayers {
                aspect_mask: vk::ImageAspectFlags::COLOR,
                mip_level: 0,
                base_array_layer: 0,
                layer_count: 1,
            })
            .image_extent(extent);
        // SAFETY: cmd is recording on ctx's family; the objects are live objects of ctx's device with the
        // transfer usages, the output buffers large enough for the copies; the acquire passed validate()
        // above; the region is a local.
        unsafe {
            acquire.record(dev, cmd);
            dev.cmd_copy_buffer(cmd, buf, out_b, &[vk::BufferCopy::default().size(size)]);
            dev.cmd_copy_image_to_buffer(cmd, img, vk::ImageLayout::TRANSFER_SRC_OPTIMAL, out_i, &[region]);
            turns::cmd_transfer_barrier(
                dev,
                cmd,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::AccessFlags::HOST_READ,
                vk::PipelineStageFlags::HOST,
            );
        }
    })
    .unwrap();

    // One queue runs its batches in order, so the writer goes first (a wait for a signal that a
    // later batch of the same queue makes would never finish); the timeline still orders them.
    Submission::new().commands(&write).signal(&turns, 1).submit(&ctx).unwrap();
    Submission::new()
        .wait(&turns, 1, vk::PipelineStageFlags::TRANSFER)
        .commands(&read)
        .signal(&turns, 2)
        .submit(&ctx)
        .unwrap();
    turns.wait(2, WAIT).unwrap();
    assert_all(&words(&out_buffer), 0x0BAD_F00D, "buffer after release and acquire");
    assert_all(&words(&out_image), u32::from_le_bytes([255, 0, 0, 255]), "image texels after release and acquire");
    ctx.check_deferred().unwrap();
}

#[test]
fn ping_pong_takes_turns_with_the_host() {
    let Some(ctx) = context() else { return };
    let sem = Semaphore::with_options(&ctx, &SemaphoreOptions { initial_value: 100, ..Default::default() }).unwrap();
    let rounds = 50;
    let result = std::thread::scope(|s| {
        // The host plays the second side: it signals each even value once the queue signalled
        // the odd one before it.
        let host = s.spawn(|| {
            for round in 0..rounds {
                let value = 100 + 2 * round + 2;
                sem.wait(value - 1, WAIT)?;
                sem.signal(value)?;
            }
            Ok::<(), Error>(())
        });
        let result = ping_pong(&sem, Turn::First, 100, rounds, WAIT);
        host.join().unwrap().unwrap();
        result
    })
    .unwrap();
    assert_eq!(result.rounds, rounds);
    assert_eq!(result.final_value, 200);
    assert_eq!(sem.value().unwrap(), 200);

    // Nobody plays the other side: a timeout, and the queue is released, not left blocked.
    let e = ping_pong(&sem, Turn::First, 200, 3, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(sem.value().unwrap(), 205, "the host played the missing turns, so every queued batch ran");
    Submission::new().signal(&sem, 300).submit(&ctx).unwrap();
    sem.wait(300, WAIT).expect("the queue is not left blocked");
    ctx.check_deferred().unwrap();
}
