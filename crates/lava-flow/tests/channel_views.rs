//! Channel frames viewed in another API by a consumer in another process: GL here (llvmpipe),
//! CUDA and OpenCL on a GPU machine. Every frame's bytes are read back through that API (never
//! through Vulkan or the host mapping) and checked; each slot is imported into the API once, at
//! connect, and never again; a viewing consumer that is killed has its frames reclaimed.

#![cfg(all(feature = "gl", feature = "cuda", feature = "opencl"))]

mod ipc_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use ipc_support::{child_command, child_role, TempDir};
use lava_flow::channel::run::{check_pattern, fill_pattern, run_consumer, run_producer, RunConfig, RunReport};
use lava_flow::channel::{Channel, ChannelOptions, FrameMemory, Metadata, ViewApi, Views};
use lava_flow::vulkan::MemoryKind;
use lava_flow::{Error, VulkanContext};
use lava_flow_diag::testing::{open_fd_count, or_skip};

const SOCKET: &str = "LAVA_FLOW_TEST_SOCKET";
const SLOTS: u32 = 4;

fn options(frame_size: u64) -> ChannelOptions {
    ChannelOptions {
        slots: SLOTS,
        frame_size,
        memory: FrameMemory::Vulkan(MemoryKind::HostVisible),
        timeout: Duration::from_secs(20),
        ..ChannelOptions::default()
    }
}

/// Whether `api` opens here on the device the producer allocates on (else the test skips,
/// with the reason, through the one skip helper).
fn view_available(api: ViewApi) -> bool {
    let Some(vk) = or_skip("vulkan", VulkanContext::new()) else { return false };
    let identity = vk.identity();
    match api {
        ViewApi::Gl => or_skip("gl", lava_flow::gl::GlContext::for_identity(&identity)).is_some(),
        ViewApi::Cuda => or_skip("cuda", lava_flow::cuda::CudaDevice::for_identity(&identity)).is_some(),
        ViewApi::OpenCl => or_skip("opencl", lava_flow::opencl::ClContext::for_identity(&identity)).is_some(),
    }
}

fn api_of(name: &str) -> ViewApi {
    match name {
        "gl" => ViewApi::Gl,
        "cuda" => ViewApi::Cuda,
        "opencl" => ViewApi::OpenCl,
        other => panic!("no view API {other}"),
    }
}

/// The child side: a role name (`consume-API`, `names-gl`, `hold-gl`) and the socket from the
/// environment.
fn child(role: &str) {
    let socket: std::path::PathBuf = std::env::var_os(SOCKET).unwrap().into();
    let (what, api) = role.split_once('-').expect("role-api");
    let views = Views::matching(api_of(api)).unwrap();
    let options = ChannelOptions { views, timeout: Duration::from_secs(20), ..ChannelOptions::default() };
    match what {
        "consume" => {
            let config = RunConfig { socket, options, frames: None, ..RunConfig::default() };
            report(run_consumer(&config));
        }
        "names" => {
            // Every frame read back through GL and checked; each slot's GL buffer name noted:
            // one name per slot over the whole run (imported once), fds flat after the first frame.
            let consumer = Channel::consumer(&socket, options).unwrap();
            let imports = consumer.stats().imports;
            let mut names = BTreeMap::new();
            let mut fds_after_first = None;
            loop {
                let frame = match consumer.recv() {
                    Ok(f) => f,
                    Err(Error::Closed { clean: true, .. }) => break,
                    Err(e) => panic!("{e}"),
                };
                let gl = frame.gl_buffer().expect("a GL view of every frame");
                let bytes = gl.read(0, frame.len() as usize).unwrap();
                check_pattern(&bytes, frame.sequence()).unwrap();
                let name = *names.entry(frame.slot()).or_insert(gl.name());
                assert_eq!(name, gl.name(), "slot {}: the same GL buffer for every frame", frame.slot());
                assert!(frame.buffer().is_some(), "the Vulkan view stays");
                drop(frame);
                let fds = open_fd_count();
                assert_eq!(*fds_after_first.get_or_insert(fds), fds, "no fd opened per frame");
            }
            assert_eq!(consumer.stats().imports, imports, "receiving imports nothing");
            println!(
                "NAMES {}",
                serde_json::json!({
                    "frames": consumer.stats().frames,
                    "slots_seen": names.len(),
                    "distinct_names": names.values().collect::<std::collections::BTreeSet<_>>().len(),
                    "imports": imports,
                })
            );
        }
        "hold" => {
            // Takes every frame it can, each viewed in GL, and never releases one: the test kills it.
            let consumer = Channel::consumer(&socket, options).unwrap();
            let mut held = Vec::new();
            while held.len() < consumer.slots() as usize {
                let frame = consumer.recv().unwrap();
                assert!(frame.gl_buffer().is_some());
                held.push(frame);
            }
            println!("HOLDING {}", held.len());
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown child role {other}"),
    }
}

fn report(result: lava_flow::Result<RunReport>) {
    let report = result.expect("the consumer checks every frame through its view");
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
    println!("{report}");
}

fn spawn(test: &str, role: &str, socket: &std::path::Path) -> Child {
    let mut cmd = child_command(test, role);
    cmd.env(SOCKET, socket).stdout(Stdio::piped()).stderr(Stdio::inherit());
    cmd.spawn().expect("starting the child process")
}

/// Waits for the child to exit successfully and returns the JSON after `tag` in its output.
fn output_of(child: Child, tag: &str) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the consumer exited with {}:\n{stdout}", out.status);
    let line = stdout.lines().find_map(|l| l.split_once(tag).map(|(_, r)| r)).unwrap_or_else(|| panic!("{stdout}"));
    serde_json::from_str(line).unwrap()
}

/// A producer here, a consumer viewing in `api` in a child process: every frame checked
/// through the view, imports only at connect, fds flat; for host-visible frames (the default)
/// and device-local ones (written through a staging copy).
fn view_every_frame(test: &str, api: &str) {
    if !view_available(api_of(api)) {
        return;
    }
    for kind in [MemoryKind::HostVisible, MemoryKind::DeviceLocal] {
        let dir = TempDir::new("channel-views", 0o700);
        let socket = dir.path().join("c.sock");
        let consumer = spawn(test, &format!("consume-{api}"), &socket);
        let frames = 500;
        let producer = run_producer(&RunConfig {
            socket: socket.clone(),
            options: ChannelOptions { memory: FrameMemory::Vulkan(kind), ..options(64 * 1024 + 24) },
            frames: Some(frames),
            consumers: 1,
            ..RunConfig::default()
        })
        .unwrap();
        println!("{api} {kind:?}: {producer}");
        let consumer = output_of(consumer, "REPORT ");
        println!("{api} {kind:?}: {consumer}");
        assert_eq!(consumer["view"], api, "checked through {api}, not Vulkan: {consumer}");
        assert_eq!(consumer["memory"], "vulkan");
        assert_eq!(consumer["frames"], frames);
        assert_eq!(consumer["dropped"], 0);
        assert_eq!(consumer["ended_by"], "peer-finished");
        // One Vulkan import and one view import per slot, all at connect.
        assert_eq!(consumer["imports"], 2 * SLOTS, "{consumer}");
        let r = &consumer["resources"];
        assert_eq!(r["fds_first"], r["fds_last"], "fds flat: {consumer}");
    }
}

#[test]
fn a_consumer_views_every_frame_in_gl_in_another_process() {
    const TEST: &str = "a_consumer_views_every_frame_in_gl_in_another_process";
    if let Some(role) = child_role() {
        return child(&role);
    }
    view_every_frame(TEST, "gl");
}

/// GPU machine only: CUDA is absent on CPU machines (the test skips there with the reason).
#[test]
fn a_consumer_views_every_frame_in_cuda_in_another_process() {
    const TEST: &str = "a_consumer_views_every_frame_in_cuda_in_another_process";
    if let Some(role) = child_role() {
        return child(&role);
    }
    view_every_frame(TEST, "cuda");
}

/// GPU machine only: no OpenCL platform imports Vulkan memory on CPU machines.
#[test]
fn a_consumer_views_every_frame_in_opencl_in_another_process() {
    const TEST: &str = "a_consumer_views_every_frame_in_opencl_in_another_process";
    if let Some(role) = child_role() {
        return child(&role);
    }
    view_every_frame(TEST, "opencl");
}

#[test]
fn each_slot_is_imported_into_gl_once_across_many_frames() {
    const TEST: &str = "each_slot_is_imported_into_gl_once_across_many_frames";
    if let Some(role) = child_role() {
        return child(&role);
    }
    if !view_available(ViewApi::Gl) {
        return;
    }
    let dir = TempDir::new("channel-views", 0o700);
    let socket = dir.path().join("c.sock");
    let consumer = spawn(TEST, "names-gl", &socket);
    let frames = 2000;
    run_producer(&RunConfig {
        socket: socket.clone(),
        options: options(4096),
        frames: Some(frames),
        consumers: 1,
        ..RunConfig::default()
    })
    .unwrap();
    let names = output_of(consumer, "NAMES ");
    assert_eq!(names["frames"], frames);
    assert_eq!(names["slots_seen"], SLOTS, "{names}");
    assert_eq!(names["distinct_names"], SLOTS, "one GL buffer per slot, reused for every frame: {names}");
    assert_eq!(names["imports"], 2 * SLOTS, "{names}");
}

#[test]
fn a_gl_viewing_consumer_killed_mid_stream_has_its_frames_reclaimed() {
    const TEST: &str = "a_gl_viewing_consumer_killed_mid_stream_has_its_frames_reclaimed";
    if let Some(role) = child_role() {
        return child(&role);
    }
    if !view_available(ViewApi::Gl) {
        return;
    }
    let dir = TempDir::new("channel-views", 0o700);
    let socket = dir.path().join("c.sock");
    let fds_before = open_fd_count();
    let mut producer = Channel::producer(&socket, options(4096)).unwrap();
    let mut holder = spawn(TEST, "hold-gl", &socket);
    producer.wait_for_consumers(1, Duration::from_secs(20)).unwrap();
    let mut pattern = vec![0u8; 4096];
    let mut send = |producer: &mut lava_flow::channel::Producer| {
        let mut frame = producer.acquire().unwrap();
        fill_pattern(&mut pattern, frame.sequence());
        frame.write(0, &pattern).unwrap();
        frame.send(Metadata::bytes(4096)).unwrap();
    };
    for _ in 0..SLOTS {
        send(&mut producer);
    }
    let mut reader = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HOLDING") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the holder ended early");
    }
    // Every slot is held by the GL-viewing consumer: nothing is free.
    assert!(matches!(producer.try_acquire(), Err(Error::Full { .. })));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(holder.id() as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    holder.wait().unwrap();
    drop(reader);
    // The producer notices the hang-up at its next call and goes on with every slot.
    for _ in 0..3 * SLOTS {
        send(&mut producer);
    }
    let stats = producer.stats();
    assert_eq!(stats.consumers_lost, 1, "{stats:?}");
    assert_eq!(producer.in_flight(), 0, "nobody holds a frame: {stats:?}");
    drop(producer);
    assert_eq!(open_fd_count(), fds_before, "the producer's fds are back to where they were");
}

#[test]
fn views_of_host_frames_are_refused_with_the_reason() {
    let dir = TempDir::new("channel-views", 0o700);
    let socket = dir.path().join("c.sock");
    let host = ChannelOptions { memory: FrameMemory::Host, ..options(4096) };
    let mut producer = Channel::producer(&socket, host).unwrap();
    let path = socket.clone();
    let consumer = std::thread::spawn(move || {
        let views = Views::matching(ViewApi::Gl).unwrap();
        Channel::consumer(&path, ChannelOptions { views, ..ChannelOptions::default() }).map(|_| ())
    });
    while !consumer.is_finished() {
        producer.poll_events().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let err = consumer.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("host memory") && text.contains("FrameMemory::Vulkan"), "{text}");
}
