//! `serve_pattern` and `attach` in two real processes: host memory, and Vulkan buffers and
//! images imported by the other process on the same device.

mod ipc_support;

use std::time::Duration;

use ipc_support::{child_command, child_role, run_ok, TempDir};
use lava_flow::ipc::{ObjectDescription, ServerConfig};
use lava_flow::raw_gpu_handle::{SemaphoreHandleKind, SemaphoreKind};
use lava_flow::vulkan::sync::semaphore_capabilities;
use lava_flow::vulkan::MemoryLocation;
use lava_flow::VulkanContext;
use lava_flow_diag::pattern::{
    attach, serve_pattern, AttachApi, AttachOptions, ServeMemory, ServeOptions, IMAGE_NAME, PATTERN_NAME, READY_NAME,
    READY_VALUE,
};
use lava_flow_diag::testing;
use serde_json::Value;

fn attach_child() {
    let api = match child_role().unwrap().as_str() {
        "attach-host" => AttachApi::Host,
        "attach-vulkan" => AttachApi::Vulkan,
        "attach-cuda" => AttachApi::Cuda,
        "attach-gl" => AttachApi::Gl,
        "attach-opencl" => AttachApi::OpenCl,
        other => panic!("unknown role {other}"),
    };
    let socket = std::env::var_os("LAVA_FLOW_TEST_SOCKET").unwrap();
    let Some(report) = testing::or_skip(api.name(), attach(&AttachOptions::new(socket, api))) else {
        println!("CHILD-SKIPPED");
        return;
    };
    println!("REPORT {}", serde_json::to_string(&report).unwrap());
}

/// Runs `attach` as `role` in a child process against `socket` and returns its report, or None
/// where the child found its API unavailable (it printed why).
fn try_attach_in_child(test: &str, role: &str, socket: &std::path::Path) -> Option<Value> {
    let mut cmd = child_command(test, role);
    cmd.env("LAVA_FLOW_TEST_SOCKET", socket);
    let out = run_ok(cmd, role);
    let stdout = String::from_utf8(out.stdout).unwrap();
    if stdout.contains("CHILD-SKIPPED") {
        // The child skipped through the helper (it fails instead when LAVA_FLOW_REQUIRE names its
        // API): repeat its marker, so that this test counts as skipped with the child's reason.
        // libtest prints it after the child's `test name ... `.
        let marker = stdout.lines().find_map(|l| l.find("SKIPPED (").map(|at| &l[at..]));
        println!("{}", marker.expect("the child's SKIPPED line"));
        return None;
    }
    let line = stdout.lines().find_map(|l| l.split_once("REPORT ").map(|(_, r)| r)).expect("the child's report");
    Some(serde_json::from_str(line).unwrap())
}

fn attach_in_child(test: &str, role: &str, socket: &std::path::Path) -> Value {
    try_attach_in_child(test, role, socket).expect("host and Vulkan attach where the parent served")
}

/// The objects of an attach report other than semaphores (a server on a driver that exports
/// timeline semaphores shares one too).
fn memory_objects(report: &Value) -> Vec<Value> {
    report["objects"].as_array().unwrap().iter().filter(|o| o["kind"] != "semaphore").cloned().collect()
}

fn options(socket: &std::path::Path, size: u64, memory: ServeMemory, image: Option<(u32, u32)>) -> ServeOptions {
    ServeOptions { socket: socket.into(), size, memory, image, config: ServerConfig::default() }
}

#[test]
fn serve_and_attach_host_memory_in_two_processes() {
    if child_role().is_some() {
        return attach_child();
    }
    let dir = TempDir::new("serve-host", 0o700);
    let socket = dir.path().join("serve.sock");
    let served = serve_pattern(&options(&socket, 3 << 20, ServeMemory::Host, None)).unwrap();
    assert_eq!(served.report().objects.len(), 1);
    let report = attach_in_child("serve_and_attach_host_memory_in_two_processes", "attach-host", &socket);
    assert_eq!(report["api"], "host");
    assert_eq!(report["objects"][0]["name"], PATTERN_NAME);
    assert_eq!(report["objects"][0]["bytes_checked"], 3 << 20);
    let steps: Vec<&str> = report["steps"].as_array().unwrap().iter().map(|s| s["what"].as_str().unwrap()).collect();
    assert_eq!(steps, ["connect", "receive the objects", "map pattern", "verify pattern"]);
    assert!(served.server().wait_idle(Duration::from_secs(10)));
    assert_eq!(served.server().stats().objects_sent, 1);
    assert!(serve_pattern(&options(&socket, 0, ServeMemory::Host, None)).is_err(), "an empty pattern is refused");
}

fn default_device_index() -> Option<usize> {
    testing::or_skip("vulkan", VulkanContext::new()).map(|ctx| ctx.info().index)
}

#[test]
fn serve_and_attach_vulkan_buffer_and_image_in_two_processes() {
    if child_role().is_some() {
        return attach_child();
    }
    let Some(device_id) = default_device_index() else { return };
    let dir = TempDir::new("serve-vulkan", 0o700);
    let socket = dir.path().join("serve.sock");
    let location = MemoryLocation::GpuVulkan { device_id };
    let served = serve_pattern(&options(&socket, 1 << 20, ServeMemory::Vulkan(location), Some((64, 32)))).unwrap();
    let report = attach_in_child("serve_and_attach_vulkan_buffer_and_image_in_two_processes", "attach-vulkan", &socket);
    println!("{report:#}");
    assert_eq!(report["api"], "vulkan");
    let objects = memory_objects(&report);
    assert_eq!(objects.len(), 2);
    assert_eq!((&objects[0]["name"], &objects[0]["kind"]), (&PATTERN_NAME.into(), &"buffer".into()));
    assert_eq!(objects[0]["bytes_checked"], 1 << 20);
    assert_eq!((&objects[1]["name"], &objects[1]["kind"]), (&IMAGE_NAME.into(), &"texture".into()));
    assert_eq!(objects[1]["bytes_checked"], 64 * 32 * 4);
    assert!(served.server().wait_idle(Duration::from_secs(10)));
}

#[test]
fn serve_vulkan_shared_host_memory_and_attach_by_mapping_it() {
    if child_role().is_some() {
        return attach_child();
    }
    let Some(device_id) = default_device_index() else { return };
    let dir = TempDir::new("serve-shared-host", 0o700);
    let socket = dir.path().join("serve.sock");
    let location = MemoryLocation::SharedHost { device_id };
    let served = match serve_pattern(&options(&socket, 1 << 20, ServeMemory::Vulkan(location), None)) {
        Ok(served) => served,
        Err(e) => return testing::skip_refused("vulkan", "vkGetPhysicalDeviceExternalBufferProperties", e),
    };
    let report = attach_in_child("serve_vulkan_shared_host_memory_and_attach_by_mapping_it", "attach-host", &socket);
    assert_eq!(report["objects"][0]["bytes_checked"], 1 << 20);
    assert!(report["objects"][0]["summary"].as_str().unwrap().starts_with("host-memfd buffer"), "{report}");
    drop(served);
}

/// Serves a Vulkan buffer and image, then attaches with `api` in another process. Skips where
/// Vulkan or the API is unavailable (fails instead when LAVA_FLOW_REQUIRE names it).
fn serve_vulkan_and_attach_with(test: &str, role: &str) {
    let Some(device_id) = default_device_index() else { return };
    let dir = TempDir::new(role, 0o700);
    let socket = dir.path().join("serve.sock");
    let location = MemoryLocation::GpuVulkan { device_id };
    let served = serve_pattern(&options(&socket, 1 << 20, ServeMemory::Vulkan(location), Some((64, 32)))).unwrap();
    let Some(report) = try_attach_in_child(test, role, &socket) else { return };
    println!("{report:#}");
    let objects = memory_objects(&report);
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0]["bytes_checked"], 1 << 20);
    assert_eq!(objects[1]["bytes_checked"], 64 * 32 * 4);
    drop(served);
}

#[test]
fn attach_with_cuda_imports_and_checks_the_pattern() {
    if child_role().is_some() {
        return attach_child();
    }
    serve_vulkan_and_attach_with("attach_with_cuda_imports_and_checks_the_pattern", "attach-cuda");
}

#[test]
fn attach_with_gl_imports_and_checks_the_pattern() {
    if child_role().is_some() {
        return attach_child();
    }
    serve_vulkan_and_attach_with("attach_with_gl_imports_and_checks_the_pattern", "attach-gl");
}

#[test]
fn attach_with_opencl_imports_and_checks_the_pattern() {
    if child_role().is_some() {
        return attach_child();
    }
    serve_vulkan_and_attach_with("attach_with_opencl_imports_and_checks_the_pattern", "attach-opencl");
}

/// Vulkan memory is served with a timeline semaphore at value 1 where the driver exports one;
/// `attach` imports it, waits for the value, then reads the pattern. Elsewhere the server says
/// why it shares none, and attach checks the memory alone.
#[test]
fn serve_shares_a_ready_timeline_semaphore_where_the_driver_exports_one() {
    if child_role().is_some() {
        return attach_child();
    }
    let Some(device_id) = default_device_index() else { return };
    let ctx = VulkanContext::with_index(device_id).unwrap();
    let caps = semaphore_capabilities(&ctx, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd);
    drop(ctx);
    let dir = TempDir::new("serve-semaphore", 0o700);
    let socket = dir.path().join("serve.sock");
    let location = MemoryLocation::GpuVulkan { device_id };
    let served = serve_pattern(&options(&socket, 1 << 20, ServeMemory::Vulkan(location), None)).unwrap();
    let shared = &served.report().objects;
    let test = "serve_shares_a_ready_timeline_semaphore_where_the_driver_exports_one";
    let report = attach_in_child(test, "attach-vulkan", &socket);
    println!("{report:#}");
    let objects = report["objects"].as_array().unwrap();
    assert_eq!(memory_objects(&report)[0]["bytes_checked"], 1 << 20, "the pattern is checked either way");
    if caps.exportable && caps.importable {
        assert_eq!(shared.len(), 2, "{shared:?}");
        assert_eq!(shared[1].name, READY_NAME);
        match &shared[1].description {
            ObjectDescription::Semaphore(d) => {
                assert_eq!((d.kind, d.handle_kind), (SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd));
            }
            other => panic!("{READY_NAME} is a {other:?}"),
        }
        assert!(served.report().semaphore_note.is_none());
        let ready = objects.iter().find(|o| o["name"] == READY_NAME).expect("attach lists the semaphore");
        assert_eq!(ready["kind"], "semaphore");
        assert!(ready["value"].as_u64().unwrap() >= READY_VALUE, "{ready}");
        let steps: Vec<&str> =
            report["steps"].as_array().unwrap().iter().map(|s| s["what"].as_str().unwrap()).collect();
        let wait = steps.iter().position(|s| s.starts_with("wait for pattern.ready")).expect("a wait step");
        let read = steps.iter().position(|s| s.starts_with("read pattern")).expect("a read step");
        assert!(wait < read, "the semaphore is waited for before the pattern is read: {steps:?}");
    } else {
        let why = caps.limitation.unwrap();
        assert_eq!(shared.len(), 1, "no semaphore where the driver exports none: {shared:?}");
        assert_eq!(served.report().semaphore_note.as_deref(), Some(why.as_str()));
        assert_eq!(objects.len(), 1);
        testing::skip("semaphores", why);
    }
    drop(served);
}

/// A second server refused on a live socket checks it without connecting: the live server
/// counts no connection, so a `max_clients`-style count (`lava-flow serve --clients 1`) is not
/// spent on the probe, and its clients still find it.
#[test]
fn a_refused_second_server_is_not_a_client_of_the_live_one() {
    if child_role().is_some() {
        return attach_child();
    }
    let dir = TempDir::new("serve-probe", 0o700);
    let socket = dir.path().join("serve.sock");
    let served = serve_pattern(&options(&socket, 4096, ServeMemory::Host, None)).unwrap();
    let e = serve_pattern(&options(&socket, 4096, ServeMemory::Host, None)).unwrap_err();
    assert!(e.to_string().contains("another server is listening there"), "{e}");
    std::thread::sleep(Duration::from_millis(200));
    let stats = served.server().stats();
    assert_eq!(stats, Default::default(), "the probe reached the live server: {stats:?}");
    assert!(socket.exists());
    let report = attach_in_child("a_refused_second_server_is_not_a_client_of_the_live_one", "attach-host", &socket);
    assert_eq!(report["objects"][0]["name"], PATTERN_NAME);
    assert!(served.server().wait_idle(Duration::from_secs(10)));
    assert_eq!(served.server().stats().connections_closed, 1, "{:?}", served.server().stats());
    // A stale socket file (its server gone) is still replaced.
    drop(served);
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    assert!(socket.exists());
    let again = serve_pattern(&options(&socket, 4096, ServeMemory::Host, None)).unwrap();
    assert_eq!(again.server().stats(), Default::default());
}

/// A server in a directory that does not exist names that directory (not the private
/// directory it binds in first).
#[test]
fn serving_in_a_missing_directory_names_it() {
    let dir = TempDir::new("serve-missing", 0o700);
    let missing = dir.path().join("no-such-dir");
    let e = serve_pattern(&options(&missing.join("serve.sock"), 4096, ServeMemory::Host, None)).unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&format!("in {}", missing.display())), "{text}");
    assert!(text.contains("does not exist"), "{text}");
    assert!(!text.contains(".lava-flow-bind"), "an internal path leaked into the error: {text}");
}

/// Attaching to a regular file says it is not a socket (not "Connection refused").
#[test]
fn attaching_to_a_regular_file_says_it_is_not_a_socket() {
    let dir = TempDir::new("attach-file", 0o700);
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"x").unwrap();
    let e = attach(&AttachOptions::new(&file, AttachApi::Host)).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("not a socket") && text.contains("regular file"), "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
}
