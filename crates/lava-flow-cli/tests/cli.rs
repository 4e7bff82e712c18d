//! The `lava-flow` binary, run as a user runs it, on the machine's real driver.
//!
//! `LAVA_FLOW_BIN` overrides the binary (the GPU machine runs the packed release build; the path
//! cargo compiled in does not exist there).

use std::process::{Command, Output};

use lava_flow::raw_gpu_handle::{FenceHandleKind, SemaphoreHandleKind, SemaphoreKind};
use lava_flow::vulkan::sync::SyncCapabilities;
use lava_flow::VulkanContext;
use lava_flow_diag::testing;
use serde_json::Value;

fn lava_flow() -> Command {
    let bin = std::env::var_os("LAVA_FLOW_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lava-flow").into());
    Command::new(bin)
}

fn run(args: &[&str]) -> Output {
    report(args, lava_flow().args(args).output().expect("start lava-flow"))
}

/// Prints what a run of `lava-flow ARGS` gave (shown when its test fails), and returns it.
fn report(args: &[&str], out: Output) -> Output {
    eprintln!(
        "lava-flow {} -> {:?}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

/// Opens Vulkan in the test process the way the CLI will, or skips with the reason.
fn vulkan_or_skip() -> Option<VulkanContext> {
    testing::or_skip("vulkan", VulkanContext::new())
}

fn on_lavapipe() -> bool {
    std::env::var("VK_DRIVER_FILES").is_ok_and(|v| v.contains("lvp_icd"))
}

#[test]
fn info_json_lists_the_vulkan_devices_with_uuids_and_sharing() {
    let out = run(&["info", "--json"]);
    assert!(out.status.success());
    let report = json(&out);
    let vulkan = &report["vulkan"];
    if vulkan["available"] != Value::Bool(true) {
        return testing::skip("vulkan", vulkan["reason"].as_str().unwrap_or("no reason given"));
    }
    let devices = vulkan["devices"].as_array().expect("a device list");
    assert!(!devices.is_empty());
    let ctx = vulkan_or_skip().expect("info found Vulkan, so the test process does too");
    let uuid = ctx.identity().device_uuid.to_string();
    assert!(
        devices.iter().any(|d| d["identity"]["device_uuid"] == Value::String(uuid.clone())),
        "the default device {uuid} is listed"
    );
    if on_lavapipe() {
        assert!(devices.iter().any(|d| d["name"].as_str().unwrap_or("").contains("llvmpipe")), "lavapipe is listed");
    }
    for d in devices {
        assert_ne!(d["identity"]["device_uuid"], "00000000-0000-0000-0000-000000000000", "{d}");
        let sharing = d["sharing"].as_array().expect("sharing rows");
        let opaque_buffer = sharing
            .iter()
            .find(|r| r["object"] == "buffer" && r["handle_kind"] == "opaque-fd")
            .expect("a row for opaque-fd buffers");
        if d["extensions"]["external_memory_fd"] == Value::Bool(true) {
            assert_eq!(opaque_buffer["export"], true, "{opaque_buffer}");
            assert_eq!(opaque_buffer["import"], true, "{opaque_buffer}");
        }
    }
    let apis: Vec<&str> = report["apis"].as_array().unwrap().iter().map(|a| a["api"].as_str().unwrap()).collect();
    assert_eq!(apis, ["CUDA", "OpenCL", "OpenGL"]);
    for api in report["apis"].as_array().unwrap() {
        if api["available"] == Value::Bool(false) {
            assert!(!api["reason"].as_str().unwrap_or("").is_empty(), "an unavailable API says why: {api}");
        } else {
            assert!(!api["devices"].as_array().unwrap().is_empty(), "{api}");
        }
    }
    let gl = &report["apis"][2];
    if on_lavapipe() && gl["available"] == Value::Bool(true) {
        // llvmpipe's GL reports lavapipe's device and driver UUIDs: the pairing must find it.
        assert!(
            gl["devices"].as_array().unwrap().iter().any(|d| d["vulkan_device"].is_u64()),
            "llvmpipe pairs with lavapipe: {gl}"
        );
    }
}

#[test]
fn info_table_shows_devices_and_sharing() {
    let out = run(&["info"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for heading in ["Vulkan devices", "CUDA devices", "OpenCL devices", "OpenGL devices", "Sharing"] {
        assert!(text.contains(heading), "missing {heading}");
    }
    if let Some(ctx) = vulkan_or_skip() {
        assert!(text.contains(&ctx.identity().device_uuid.to_string()), "the device UUID is shown");
    }
}

/// The paths every machine with opaque-fd export and shareable host memory must pass.
const CORE_PATHS: [&str; 10] = [
    "vulkan: buffer device-local, device A <-> device B",
    "vulkan: buffer in shared host memory, device A <-> device B",
    "vulkan: image 2D rgba8unorm 256x256 optimal, device A <-> device B",
    "ipc: buffer device-local -> other process, fd over SCM_RIGHTS",
    "ipc: buffer device-local -> other process, inherited fd",
    "ipc: image 2D rgba8unorm 256x256 optimal -> other process, fd over SCM_RIGHTS",
    "ipc: shared host memory, GPU copy <-> other process's mmap, fd over SCM_RIGHTS",
    "ipc: shared host memory, GPU copy <-> other process's mmap, inherited fd",
    "pool: 4 pooled 64 KiB buffers of one block, device A <-> device B, cached imports",
    "pool: 4 pooled 64 KiB buffers of one block -> other process, fds over SCM_RIGHTS",
];

/// Paths a driver may decline through its capability queries (lavapipe runs them all; NVIDIA
/// does not export every host-visible memory type): they pass, or skip saying it is not supported.
const DRIVER_DEPENDENT_PATHS: [&str; 5] = [
    "vulkan: buffer host-visible, device A <-> device B",
    "vulkan: image 2D rgba8unorm 256x256 linear, device A <-> device B",
    "vulkan: image 2D array r32float 128x128x4 optimal, device A <-> device B",
    "vulkan: image 3D rgba16float 64x64x8 optimal, device A <-> device B",
    "ipc: image 2D rgba8unorm 256x256 linear -> other process, inherited fd",
];

fn result_of<'a>(report: &'a Value, path: &str) -> &'a Value {
    report["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.starts_with(path)))
        .unwrap_or_else(|| panic!("no row for {path}"))
}

#[test]
fn selftest_passes_buffer_image_and_host_memory_paths() {
    let Some(ctx) = vulkan_or_skip() else { return };
    // Only Vulkan's own paths: on the GPU machine LAVA_FLOW_REQUIRE makes other APIs' skips fail.
    let out = run(&["selftest", "--json", "--only", "vulkan: ", "--only", "ipc: ", "--only", "pool: "]);
    let report = json(&out);
    let ext = ctx.extensions();
    if !(ext.external_memory_fd && ext.external_memory_host) {
        return testing::skip_capability(
            "vulkan",
            format!("{} lacks VK_KHR_external_memory_fd or VK_EXT_external_memory_host", ctx.info().name),
        );
    }
    for path in CORE_PATHS {
        let row = result_of(&report, path);
        assert_eq!(row["result"], "pass", "{path}: {row}");
        assert!(row["size"].as_u64().unwrap() > 0, "{row}");
    }
    let mut cases = testing::Cases::new("driver-dependent selftest paths", DRIVER_DEPENDENT_PATHS.len());
    for path in DRIVER_DEPENDENT_PATHS {
        let row = result_of(&report, path);
        if row["result"] == "pass" {
            cases.ran();
            continue;
        }
        let reason = row["reason"].as_str().unwrap_or("");
        let declined = row["result"] == "skipped" && reason.contains("not supported");
        assert!(declined && !on_lavapipe(), "{path}: {row}");
        cases.skip_capability("vulkan", path, reason);
    }
    cases.finish();
    assert_eq!(report["failed"], 0, "no path fails");
    assert!(out.status.success(), "exit code 0 when every runnable path passes");
    for row in report["results"].as_array().unwrap() {
        if row["result"] == "skipped" {
            assert!(!row["reason"].as_str().unwrap_or("").is_empty(), "a skip says why: {row}");
        }
    }
}

#[test]
fn selftest_gl_paths_pass_where_egl_offers_the_device() {
    let Some(_ctx) = vulkan_or_skip() else { return };
    let out = run(&["selftest", "--json", "--only", "gl: "]);
    let report = json(&out);
    let rows = report["results"].as_array().unwrap();
    assert!(!rows.is_empty(), "GL rows are listed");
    if rows[0]["result"] == "skipped" {
        return testing::skip("gl", rows[0]["reason"].as_str().unwrap_or("no reason given"));
    }
    assert!(rows.len() >= 4, "buffer and texture, each way: {rows:?}");
    for row in rows {
        assert_eq!(row["result"], "pass", "{row}");
        assert!(!row["detail"].as_str().unwrap_or("").is_empty(), "a GL path says what it proved: {row}");
    }
    assert!(out.status.success());
}

#[test]
fn selftest_table_lists_results_and_reasons() {
    let Some(_ctx) = vulkan_or_skip() else { return };
    let out = run(&["selftest", "--only", "image 2D rgba8unorm 256x256 optimal"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap_or("");
    for column in ["path", "size", "time", "result"] {
        assert!(header.contains(column), "header {header:?} lacks {column}");
    }
    let rows: Vec<&str> = text.lines().filter(|l| l.contains("256x256 optimal")).collect();
    assert_eq!(rows.len(), 2, "the two-device and the two-process image path ran");
    assert!(rows.iter().all(|r| r.contains("256 KiB") && r.ends_with("PASS")), "{rows:?}");
    assert!(text.contains("2 passed, 0 failed, 0 skipped"));
}

#[test]
fn selftest_catches_a_wrong_byte_and_exits_non_zero() {
    let Some(_ctx) = vulkan_or_skip() else { return };
    for path in [
        "vulkan: buffer device-local, device A <-> device B",
        "ipc: buffer device-local -> other process, inherited fd",
        "ipc: shared host memory, GPU copy <-> other process's mmap, fd over SCM_RIGHTS",
        "pool: 4 pooled 64 KiB buffers of one block -> other process, fds over SCM_RIGHTS",
    ] {
        let out = run(&["selftest", "--json", "--only", path, "--corrupt", path]);
        let report = json(&out);
        let row = result_of(&report, path);
        assert_eq!(row["result"], "fail", "{row}");
        assert!(row["reason"].as_str().unwrap().contains("1 of"), "the reason names the wrong byte: {row}");
        assert_eq!(out.status.code(), Some(1), "a failed path makes the exit code 1");
    }
}

#[test]
fn selftest_soak_keeps_fds_and_memory_level() {
    let Some(_ctx) = vulkan_or_skip() else { return };
    // Thirty rounds: lavapipe's resident set still grows for several rounds after the first one
    // (by up to 400 KiB a round when other tests load the machine), and a ten-round soak's second
    // half (rounds 5 to 10) could still hold some of that growth: measured 16-19 KiB a round idle,
    // over the 64 KiB floor under load. Over rounds 15 to 30 it reads 0.
    let out = run(&["selftest", "--json", "--soak", "30", "--only", "buffer device-local"]);
    let report = json(&out);
    let soak = &report["soak"];
    assert!(out.status.success(), "{soak}");
    assert_eq!(soak["rounds"], 30);
    assert_eq!(soak["open_fds_before"], soak["open_fds_after"], "{soak}");
    let row = result_of(&report, "vulkan: buffer device-local");
    assert_eq!(row["runs"], 31, "the first round and thirty soak rounds: {row}");
    assert_eq!(row["result"], "pass");
    // A sample after the warm-up round and after each soak round; memory judged by its slope
    // over the second half (rounds 15 to 30).
    let samples = soak["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 31, "{soak}");
    assert_eq!(soak["rss"]["from_round"], 15, "{soak}");
    assert!(soak["rss"]["slope_per_round"].is_f64(), "{soak}");
    assert_eq!(soak["rss"]["pass"], true, "{soak}");
    // Nothing lava-flow made outlives its round.
    for s in samples {
        assert_eq!(s["live"], samples[0]["live"], "live objects after every round: {soak}");
    }
    for level in ["soak: open fds", "soak: live lava-flow Vulkan contexts", "soak: live lava-flow device memories"] {
        assert_eq!(result_of(&report, level)["result"], "pass", "{level}");
    }
    let rss = result_of(&report, "soak: host memory (RSS)");
    assert!(rss["path"].as_str().unwrap().contains("/round"), "the row shows the slope: {rss}");
}

#[test]
fn required_api_that_is_missing_fails_selftest() {
    // Vulkan made missing on any machine: a loader given a driver manifest that does not exist.
    // Its path skips; naming Vulkan as required turns that into a failure.
    let no_driver = |require: Option<&str>| {
        let mut cmd = lava_flow();
        cmd.args(["selftest", "--json", "--only", "vulkan: "])
            .env("VK_DRIVER_FILES", "/nonexistent/lava-flow-test.json");
        match require {
            Some(r) => cmd.env("LAVA_FLOW_REQUIRE", r),
            None => cmd.env_remove("LAVA_FLOW_REQUIRE"),
        };
        cmd.output().unwrap()
    };
    let optional = no_driver(None);
    assert_eq!(result_of(&json(&optional), "vulkan: ")["result"], "skipped");
    let required = no_driver(Some("vulkan"));
    assert_eq!(result_of(&json(&required), "vulkan: ")["result"], "fail");
    assert_eq!(required.status.code(), Some(1));
    // The same for CUDA where it is missing (on a machine with CUDA its path passes instead).
    let out =
        lava_flow().args(["selftest", "--json", "--only", "cuda"]).env_remove("LAVA_FLOW_REQUIRE").output().unwrap();
    if result_of(&json(&out), "cuda")["result"] != "pass" {
        let required = lava_flow()
            .args(["selftest", "--json", "--only", "cuda"])
            .env("LAVA_FLOW_REQUIRE", "cuda")
            .output()
            .unwrap();
        assert_eq!(result_of(&json(&required), "cuda")["result"], "fail");
        assert_eq!(required.status.code(), Some(1));
    }
}

#[test]
fn an_unknown_required_name_is_a_command_line_error() {
    let out = lava_flow()
        .args(["selftest", "--json", "--only", "cuda"])
        .env("LAVA_FLOW_REQUIRE", "vulkan,cudaa")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad LAVA_FLOW_REQUIRE is a bad command line");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`cudaa` is not a name") && err.contains("did you mean `cuda`?"), "{err}");
    for name in lava_flow_diag::testing::NAMES {
        assert!(err.contains(name), "the error lists {name}: {err}");
    }
}

#[test]
fn bench_quick_writes_json_with_raw_baselines() {
    let Some(_ctx) = vulkan_or_skip() else { return };
    let path = std::env::temp_dir().join(format!("lava-flow-bench-{}.json", std::process::id()));
    let out = run(&["bench", "--quick", "--json", path.to_str().unwrap()]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&path).expect("bench wrote its JSON");
    let _ = std::fs::remove_file(&path);
    let report: Value = serde_json::from_str(&text).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let vulkan: Vec<&Value> = rows.iter().filter(|r| r["group"] == "vulkan").collect();
    assert!(vulkan.len() >= 4, "export and import rows for two sizes: {rows:?}");
    let pool: Vec<&Value> = rows.iter().filter(|r| r["group"] == "pool").collect();
    assert!(pool.len() >= 2, "pooled allocation and cached import rows: {rows:?}");
    for r in vulkan.into_iter().chain(pool) {
        let (lf, raw, ratio) =
            (r["lava_flow"].as_f64().unwrap(), r["raw"].as_f64().unwrap(), r["ratio"].as_f64().unwrap());
        assert!(lf > 0.0 && raw > 0.0, "{r}");
        assert!((ratio - lf / raw).abs() < 1e-9, "{r}");
        let bandwidth = r["case"].as_str().unwrap().contains("bandwidth");
        assert_eq!(r["unit"], if bandwidth { "GB/s" } else { "us" }, "{r}");
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().contains("ratio"));
}

#[test]
fn bad_command_lines_exit_with_2_and_say_why() {
    let out = run(&["attach", "--socket", "/nonexistent", "--api", "metal"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"), "clap lists the APIs");
    let out = run(&["serve", "--socket", "/nonexistent", "--size", "12Q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown size unit"));
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A unique socket path in the temporary directory.
fn socket_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("lava-flow-cli-test-{tag}-{}.sock", std::process::id()))
}

/// Waits for `serve` to create its socket, failing with its output if it exits first.
fn wait_for_server(server: &mut std::process::Child, socket: &std::path::Path) {
    let started = std::time::Instant::now();
    while !socket.exists() {
        if let Some(status) = server.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("serve exited with {status} before listening: {err}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "serve did not create {socket:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts `lava-flow serve ARGS --socket <a fresh socket named by tag>` with stderr piped and
/// waits until it listens.
fn start_serve(tag: &str, args: &[&str], stdout: std::process::Stdio) -> (std::path::PathBuf, std::process::Child) {
    let socket = socket_path(tag);
    let _ = std::fs::remove_file(&socket);
    let mut server = lava_flow()
        .arg("serve")
        .args(args)
        .arg("--socket")
        .arg(&socket)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_server(&mut server, &socket);
    (socket, server)
}

/// Waits (bounded) for `serve --clients N` to end by itself.
fn wait_for_exit(server: &mut std::process::Child) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = server.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = server.kill();
            panic!("serve did not exit after its clients");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn serve_and_attach_share_the_pattern_between_processes() {
    let Some(_ctx) = vulkan_or_skip() else { return };
    let (socket, mut server) =
        start_serve("serve", &["--size", "256K", "--image", "32x16", "--clients", "1"], std::process::Stdio::piped());
    let out = run(&["attach", "--api", "vulkan", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(out.status.success());
    let report = json(&out);
    assert_eq!(report["api"], "vulkan");
    let objects = report["objects"].as_array().unwrap();
    let checked = |name: &str| objects.iter().find(|o| o["name"] == name).map(|o| o["bytes_checked"].as_u64().unwrap());
    assert_eq!(checked("pattern"), Some(256 << 10), "{report}");
    assert_eq!(checked("pattern.image"), Some(32 * 16 * 4), "{report}");
    assert!(report["steps"].as_array().unwrap().iter().any(|s| s["what"].as_str().unwrap().starts_with("import")));
    assert!(wait_for_exit(&mut server).success(), "serve exits 0 after its one client");
    let mut text = String::new();
    std::io::Read::read_to_string(server.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert!(text.contains("client done (1 served)"), "{text}");
    assert!(!socket.exists(), "serve removes its socket when it ends");
}

/// `serve --allocator cuda`: where CUDA cannot be loaded, or the device cannot export its
/// allocations, serve exits 1 naming why and leaves no socket; where it can, another process
/// attaches with Vulkan and checks every byte of the CUDA-allocated pattern.
#[cfg(feature = "cuda")]
#[test]
fn serve_allocator_cuda_shares_a_cuda_allocation_or_says_why_not() {
    let refused = |expect: &str| {
        let socket = socket_path("cuda-refused");
        let out = run(&["serve", "--allocator", "cuda", "--clients", "1", "--socket", socket.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.to_lowercase().contains(&expect.to_lowercase()), "{err}");
        assert!(!socket.exists(), "nothing is served");
    };
    let cuda = match lava_flow::cuda::CudaDevice::open(0) {
        Ok(cuda) => cuda,
        Err(e) if e.is_unavailable() => {
            refused("CUDA");
            return testing::skip("cuda", e);
        }
        Err(e) => panic!("opening CUDA device 0: {e}"),
    };
    let support = cuda.export_support().unwrap();
    drop(cuda);
    if !support.can_export() {
        refused("CU_DEVICE_ATTRIBUTE_");
        return testing::skip_capability("cuda", format!("device 0 cannot export allocations: {support:?}"));
    }
    let Some(_ctx) = vulkan_or_skip() else { return };
    let (socket, mut server) =
        start_serve("cuda", &["--allocator", "cuda", "--size", "3M", "--clients", "1"], std::process::Stdio::piped());
    let out = run(&["attach", "--api", "vulkan", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(out.status.success());
    let report = json(&out);
    let pattern = report["objects"].as_array().unwrap().iter().find(|o| o["name"] == "pattern").cloned();
    assert_eq!(pattern.map(|o| o["bytes_checked"].clone()), Some((3u64 << 20).into()), "{report}");
    assert!(wait_for_exit(&mut server).success(), "serve exits 0 after its one client");
    let mut text = String::new();
    std::io::Read::read_to_string(server.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert!(text.contains("device: CUDA 0"), "{text}");
}

#[test]
fn serve_host_memory_and_attach_without_a_gpu_api() {
    let (socket, mut server) =
        start_serve("host", &["--location", "host", "--size", "96K", "--clients", "1"], std::process::Stdio::null());
    let out = run(&["attach", "--api", "host", "--socket", socket.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pattern verified in every object"), "{text}");
    assert!(text.contains("host-memfd"), "{text}");
    assert!(wait_for_exit(&mut server).success());
}

#[test]
fn attach_to_nothing_fails_with_a_reason() {
    let socket = socket_path("nobody");
    let out = run(&["attach", "--api", "vulkan", "--timeout", "1", "--socket", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(socket.to_str().unwrap()), "the error names the socket");
}

#[test]
fn ring_passes_every_frame_between_two_processes() {
    // More frames than the default, so both processes must have been told the count.
    let out = run(&["ring", "--frames", "12000", "--slots", "4", "--size", "8K", "--json"]);
    assert!(out.status.success());
    let reports = json(&out);
    let reports = reports.as_array().expect("a producer and a consumer report");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["role"], "producer");
    assert_eq!(reports[1]["role"], "consumer");
    for r in reports {
        assert_eq!(r["frames"], 12000, "{r}");
        assert!(r["frames_per_second"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(reports[0]["ended_by"], "count", "the producer made every frame: {}", reports[0]);
    assert_eq!(reports[1]["latency"]["samples"], 12000, "every frame's hand-off was measured");
}

/// The (object, handle kind) rows `info` shows for semaphores and fences, in its order.
const SYNC_ROWS: [(&str, &str); 6] = [
    ("timeline semaphore", "opaque-fd"),
    ("timeline semaphore", "sync-fd"),
    ("binary semaphore", "opaque-fd"),
    ("binary semaphore", "sync-fd"),
    ("fence", "opaque-fd"),
    ("fence", "sync-fd"),
];

#[test]
fn info_reports_semaphores_and_fences_as_the_capability_queries_answer() {
    let Some(ctx) = vulkan_or_skip() else { return };
    let out = run(&["info", "--json"]);
    assert!(out.status.success());
    let report = json(&out);
    let device = report["vulkan"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["index"] == ctx.info().index)
        .expect("the default device is listed")
        .clone();
    // The answer this process gets from the same driver.
    let caps = SyncCapabilities::query(&ctx);
    let sharing = device["sharing"].as_array().unwrap();
    for (object, handle_kind) in SYNC_ROWS {
        let row = sharing
            .iter()
            .find(|r| r["object"] == object && r["handle_kind"] == handle_kind)
            .unwrap_or_else(|| panic!("no {object} {handle_kind} row: {sharing:?}"));
        let hk = |h: &str| if h == "opaque-fd" { SemaphoreHandleKind::OpaqueFd } else { SemaphoreHandleKind::SyncFd };
        let (export, import, limitation) = match object {
            "fence" => {
                let kind = if handle_kind == "opaque-fd" { FenceHandleKind::OpaqueFd } else { FenceHandleKind::SyncFd };
                let c = caps.fence(kind).unwrap();
                (c.exportable, c.importable, c.limitation.clone())
            }
            _ => {
                let kind = if object.starts_with("timeline") { SemaphoreKind::Timeline } else { SemaphoreKind::Binary };
                let c = caps.semaphore(kind, hk(handle_kind)).unwrap();
                (c.exportable, c.importable, c.limitation.clone())
            }
        };
        assert_eq!((row["export"].as_bool(), row["import"].as_bool()), (Some(export), Some(import)), "{row}");
        if let Some(why) = limitation {
            assert_eq!(row["note"], why.as_str(), "a row that says no carries the query's answer: {row}");
        }
        if on_lavapipe() {
            assert_eq!((export, import), (false, false), "lavapipe shares no {object}: {row}");
        }
    }
    let timeline_sync_fd =
        sharing.iter().find(|r| r["object"] == "timeline semaphore" && r["handle_kind"] == "sync-fd");
    assert_eq!(timeline_sync_fd.unwrap()["export"], false, "sync fds never carry timeline semaphores");
    // The full answer is in the JSON too.
    assert_eq!(device["sync"]["semaphores"].as_array().unwrap().len(), 4, "{device}");
    assert_eq!(device["sync"]["fences"].as_array().unwrap().len(), 2, "{device}");
    assert_eq!(device["sync"]["timeline_semaphores"], ctx.extensions().timeline_semaphore);
    // And the table says it per device.
    let text = run(&["info"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Semaphores and fences"), "{text}");
    assert!(text.contains("timeline semaphores: export"), "{text}");
    assert!(text.contains("fences: export"), "{text}");
}

/// The semaphore and fence paths of `selftest`, required (`LAVA_FLOW_REQUIRE=semaphores`) or not.
const SEMAPHORE_PATHS: [&str; 5] = [
    "semaphores: timeline opaque-fd, device A <-> device B",
    "semaphores: timeline opaque-fd <-> other process, fds over SCM_RIGHTS",
    "semaphores: timeline ping-pong, device A <-> device B",
    "semaphores: binary opaque-fd, device A <-> device B",
    "semaphores: fence opaque-fd, exported by device A, waited on device B",
];

/// Paths of handle kinds Vulkan leaves optional (sync fds): they pass, or skip with the query's answer.
const OPTIONAL_SEMAPHORE_PATHS: [&str; 2] =
    ["semaphores: binary sync-fd, device A -> device B", "semaphores: fence sync-fd, exported by device A"];

#[test]
fn selftest_semaphore_paths_pass_or_skip_with_the_capability_answer() {
    let Some(ctx) = vulkan_or_skip() else { return };
    let out = run(&["selftest", "--json", "--only", "semaphores: "]);
    let report = json(&out);
    let rows = report["results"].as_array().unwrap();
    assert_eq!(rows.len(), SEMAPHORE_PATHS.len() + OPTIONAL_SEMAPHORE_PATHS.len(), "{rows:?}");
    let caps = SyncCapabilities::query(&ctx);
    let timeline = caps.semaphore(SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).unwrap();
    let shares = timeline.exportable && timeline.importable;
    let mut cases = testing::Cases::new("semaphore paths", rows.len());
    for path in SEMAPHORE_PATHS.into_iter().chain(OPTIONAL_SEMAPHORE_PATHS) {
        let row = result_of(&report, path);
        match row["result"].as_str().unwrap() {
            "pass" => {
                assert!(
                    !row["detail"].as_str().unwrap_or("").is_empty(),
                    "a semaphore path says what it checked: {row}"
                );
                cases.ran();
            }
            "skipped" => {
                let reason = row["reason"].as_str().unwrap_or("");
                assert!(reason.contains("is not supported"), "{row}");
                assert!(reason.contains("vkGetPhysicalDeviceExternal"), "the skip names the capability query: {row}");
                assert!(
                    !shares || OPTIONAL_SEMAPHORE_PATHS.contains(&path) || !path.contains("timeline"),
                    "the device shares timeline semaphores, so this path runs: {row}"
                );
                // Sync fds are optional in Vulkan; the other paths need what `semaphores` requires.
                if OPTIONAL_SEMAPHORE_PATHS.contains(&path) {
                    cases.skip_capability("vulkan", path, reason);
                } else {
                    cases.skip("semaphores", path, reason);
                }
            }
            _ => panic!("{path} failed: {row}"),
        }
    }
    for path in SEMAPHORE_PATHS.into_iter().filter(|p| p.contains("timeline")) {
        let row = result_of(&report, path);
        if shares {
            assert_eq!(row["result"], "pass", "{row}");
        } else {
            let why = timeline.limitation.as_deref().unwrap();
            assert!(row["reason"].as_str().unwrap().contains(why), "{row}");
        }
    }
    assert_eq!(report["failed"], 0, "no semaphore path fails");
    // A run in which nothing passed fails (lavapipe shares no semaphores: every path skips).
    let passed = report["passed"].as_u64().unwrap();
    assert_eq!(out.status.success(), passed > 0, "exit code 0 when a path passed, 1 when none did");
    cases.finish();
}

#[test]
fn required_semaphores_that_the_driver_cannot_share_fail_selftest() {
    let Some(ctx) = vulkan_or_skip() else { return };
    let caps = SyncCapabilities::query(&ctx);
    let timeline = caps.semaphore(SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).unwrap();
    if timeline.exportable && timeline.importable {
        // A device that shares them runs the paths (the test above): no skip to turn into a failure.
        return testing::skip_capability(
            "semaphores",
            format!("{} shares timeline semaphores, so selftest has no skip to turn into a failure", ctx.info().name),
        );
    }
    let out = lava_flow()
        .args(["selftest", "--json", "--only", "semaphores: "])
        .env("LAVA_FLOW_REQUIRE", "semaphores")
        .output()
        .unwrap();
    let report = json(&out);
    for path in SEMAPHORE_PATHS {
        let row = result_of(&report, path);
        assert_eq!(row["result"], "fail", "{row}");
        assert!(row["reason"].as_str().unwrap().contains("required (LAVA_FLOW_REQUIRE)"), "{row}");
    }
    for path in OPTIONAL_SEMAPHORE_PATHS {
        assert_eq!(result_of(&report, path)["result"], "skipped", "sync fds stay optional");
    }
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn serve_shares_a_timeline_semaphore_or_says_why_not() {
    let Some(ctx) = vulkan_or_skip() else { return };
    let caps = SyncCapabilities::query(&ctx);
    let timeline = caps.semaphore(SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).unwrap().clone();
    let device = ctx.info().index.to_string();
    let (socket, mut server) = start_serve(
        "serve-semaphore",
        &["--size", "64K", "--clients", "1", "--device", &device],
        std::process::Stdio::piped(),
    );
    let out = run(&["attach", "--api", "vulkan", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(out.status.success());
    let report = json(&out);
    assert!(wait_for_exit(&mut server).success());
    let mut text = String::new();
    std::io::Read::read_to_string(server.stdout.as_mut().unwrap(), &mut text).unwrap();
    let objects = report["objects"].as_array().unwrap();
    if timeline.exportable && timeline.importable {
        assert!(text.contains("pattern.ready") && text.contains("Timeline semaphore, opaque-fd"), "{text}");
        let ready = objects.iter().find(|o| o["name"] == "pattern.ready").expect("attach reports the semaphore");
        assert!(ready["value"].as_u64().unwrap() >= 1, "{ready}");
    } else {
        let why = timeline.limitation.unwrap();
        assert!(text.contains(&format!("no timeline semaphore shared: {why}")), "serve says why: {text}");
        assert!(objects.iter().all(|o| o["kind"] != "semaphore"), "{report}");
        testing::skip("semaphores", why);
    }
}

#[test]
fn ring_with_timeline_semaphores_runs_or_is_refused_with_the_reason() {
    let Some(ctx) = vulkan_or_skip() else { return };
    let caps = SyncCapabilities::query(&ctx);
    let timeline = caps.semaphore(SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).unwrap().clone();
    let out = run(&["ring", "--sync", "timeline-semaphore", "--frames", "3000", "--size", "64K", "--json"]);
    if timeline.exportable && timeline.importable {
        assert!(out.status.success());
        let reports = json(&out);
        let reports = reports.as_array().expect("a producer and a consumer report");
        assert_eq!(reports.len(), 2);
        for r in reports {
            assert_eq!(r["frames"], 3000, "{r}");
            assert!(r["sync"].as_str().unwrap().contains("timeline semaphores"), "{r}");
        }
        assert_eq!(reports[1]["latency"]["samples"], 3000, "every frame's hand-off was measured");
    } else {
        assert_eq!(out.status.code(), Some(1), "refused where the driver cannot share them");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(timeline.limitation.as_deref().unwrap()), "the error gives the query's answer: {err}");
        testing::skip("semaphores", timeline.limitation.unwrap());
    }
}

/// Runs `lava-flow args` under an address-space limit (`ulimit -v`, 16 GiB), so that a command
/// which tried to map what it was asked for would fail there instead of filling the machine's
/// memory.
fn run_limited(args: &[&str]) -> Output {
    let bin = std::env::var_os("LAVA_FLOW_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lava-flow").into());
    let out = Command::new("sh")
        .args(["-c", "ulimit -v 16777216 && exec \"$0\" \"$@\""])
        .arg(bin)
        .args(args)
        .output()
        .expect("start lava-flow under sh");
    report(args, out)
}

#[test]
fn sizes_the_machine_cannot_hold_are_refused_before_allocating() {
    let available = lava_flow::limits::host_memory_available().expect("Linux reports its available memory");
    let twice = (available.bytes * 2 / (1 << 20) + 1).to_string() + "M";
    let ring_socket = socket_path("ring-huge");
    let serve_socket = socket_path("serve-huge");
    for args in [
        vec!["ring", "--size", "100G", "--frames", "10", "--timeout", "2"],
        vec!["ring", "--size", &twice, "--frames", "10", "--timeout", "2"],
        vec![
            "ring",
            "--role",
            "producer",
            "--size",
            &twice,
            "--timeout",
            "2",
            "--socket",
            ring_socket.to_str().unwrap(),
        ],
        vec![
            "serve",
            "--location",
            "host",
            "--size",
            &twice,
            "--clients",
            "1",
            "--socket",
            serve_socket.to_str().unwrap(),
        ],
    ] {
        let started = std::time::Instant::now();
        let out = run_limited(&args);
        assert_eq!(out.status.code(), Some(1), "a clean error, not a crash: {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("out of memory"), "{err}");
        assert!(err.contains("MemAvailable") || err.contains("cgroup"), "the error names the limit: {err}");
        assert!(err.contains("bytes") && err.contains("GiB"), "the error gives the sizes: {err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "refused up front: {args:?}");
        assert!(!ring_socket.exists() && !serve_socket.exists(), "nothing was served");
    }
}

#[test]
fn a_refused_second_serve_leaves_the_live_one_its_client() {
    let (socket, mut server) =
        start_serve("probe", &["--location", "host", "--size", "64K", "--clients", "1"], std::process::Stdio::piped());
    let out = run(&["serve", "--location", "host", "--size", "64K", "--socket", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another server is listening there"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(server.try_wait().unwrap().is_none(), "the live server counted the refused one as its client and left");
    assert!(socket.exists(), "the live server's socket is still there");
    let out = run(&["attach", "--api", "host", "--socket", socket.to_str().unwrap()]);
    assert!(out.status.success(), "the real client is served");
    assert!(wait_for_exit(&mut server).success());
    let mut text = String::new();
    std::io::Read::read_to_string(server.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert!(text.contains("client done (1 served)"), "{text}");
    assert!(!text.contains("(2 so far)"), "one client only: {text}");
}

#[test]
fn selftest_that_passes_nothing_fails_and_names_the_driver_files() {
    let missing = "/nonexistent/lava-flow-no-driver.json";
    let out = lava_flow()
        .args(["selftest", "--json"])
        .env("VK_DRIVER_FILES", missing)
        .env_remove("VK_ICD_FILENAMES")
        .env_remove("LAVA_FLOW_REQUIRE")
        .output()
        .unwrap();
    let report = json(&out);
    assert_eq!(report["passed"], 0, "{report}");
    assert_eq!(out.status.code(), Some(1), "a run in which nothing passed fails");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing passed"), "{err}");
    assert!(
        err.contains(&format!("VK_DRIVER_FILES is set, so the loader used only what it names: {missing}")),
        "{err}"
    );
    // The table says the same.
    let out =
        lava_flow().arg("selftest").env("VK_DRIVER_FILES", missing).env_remove("LAVA_FLOW_REQUIRE").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 passed, 0 failed"));
    // An --only that names no path is a bad command line.
    let out = run(&["selftest", "--only", "no path is called this"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no path is called this"));
}

#[test]
fn every_path_of_a_required_api_that_cannot_run_fails() {
    // Vulkan missing: every Vulkan, ipc and pool path fails, not one row per group.
    let out = lava_flow()
        .args(["selftest", "--json", "--only", "vulkan: ", "--only", "ipc: ", "--only", "pool: "])
        .env("VK_DRIVER_FILES", "/nonexistent/lava-flow-no-driver.json")
        .env("LAVA_FLOW_REQUIRE", "vulkan")
        .output()
        .unwrap();
    let report = json(&out);
    let rows = report["results"].as_array().unwrap();
    for path in CORE_PATHS.iter().chain(DRIVER_DEPENDENT_PATHS.iter()) {
        let row = result_of(&report, path);
        assert_eq!(row["result"], "fail", "{row}");
        assert!(row["reason"].as_str().unwrap().contains("required (LAVA_FLOW_REQUIRE)"), "{row}");
    }
    assert!(rows.len() >= CORE_PATHS.len() + DRIVER_DEPENDENT_PATHS.len(), "{rows:?}");
    assert_eq!(out.status.code(), Some(1));
    // The importers: where an API cannot run here, requiring it fails each of its paths.
    #[cfg_attr(not(any(feature = "opencl", feature = "gl", feature = "cuda")), allow(unused_mut))]
    let mut apis: Vec<(&str, Vec<&str>)> = Vec::new();
    #[cfg(feature = "opencl")]
    apis.push(("opencl", lava_flow_diag::selftest::opencl::PATHS.to_vec()));
    #[cfg(feature = "gl")]
    apis.push(("gl", lava_flow_diag::selftest::gl::PATHS.to_vec()));
    #[cfg(feature = "cuda")]
    apis.push(("cuda", lava_flow_diag::selftest::cuda::PATHS.to_vec()));
    for (api, paths) in apis {
        let only = format!("{api}: ");
        let out =
            lava_flow().args(["selftest", "--json", "--only", &only]).env_remove("LAVA_FLOW_REQUIRE").output().unwrap();
        let report = json(&out);
        if report["passed"].as_u64().unwrap() > 0 {
            println!("{api} runs here: nothing to require");
            continue;
        }
        let out =
            lava_flow().args(["selftest", "--json", "--only", &only]).env("LAVA_FLOW_REQUIRE", api).output().unwrap();
        let report = json(&out);
        let rows = report["results"].as_array().unwrap();
        for path in &paths {
            let row = result_of(&report, &format!("{api}: {path}"));
            assert_eq!(row["result"], "fail", "{api}: every path fails when required: {row}");
        }
        assert_eq!(report["failed"].as_u64().unwrap() as usize, rows.len(), "{rows:?}");
        assert_eq!(out.status.code(), Some(1));
    }
}

/// Sends `signal` ("INT", "TERM") to a child process.
fn send_signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal}");
}

#[test]
fn sigint_and_sigterm_stop_ring_and_serve_cleanly() {
    for signal in ["INT", "TERM"] {
        // `--frames 0` with a standard input that is not a terminal runs until signalled.
        let socket = socket_path(&format!("ring-{signal}"));
        let _ = std::fs::remove_file(&socket);
        let mut ring = lava_flow()
            .args(["ring", "--frames", "0", "--size", "8K", "--sync", "host-counters", "--socket"])
            .arg(&socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The producer removes its socket once the consumer attached: wait for that (bounded).
        let started = std::time::Instant::now();
        let mut seen = false;
        while started.elapsed() < std::time::Duration::from_secs(10) {
            match socket.exists() {
                true => seen = true,
                false if seen => break,
                false => {}
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        println!("SIG{signal}: the ring's socket came and went: {seen}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(ring.try_wait().unwrap().is_none(), "ring --frames 0 ended by itself");
        send_signal(&ring, signal);
        let status = wait_for_exit(&mut ring);
        let mut out = String::new();
        std::io::Read::read_to_string(ring.stdout.as_mut().unwrap(), &mut out).unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(ring.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "SIG{signal}: {status}; {err}");
        assert!(out.contains("producer: ") && out.contains("ended by stopped"), "the producer's report: {out}");
        assert!(!seen || out.contains("consumer: "), "the consumer's report: {out}");
        assert!(err.contains(&format!("ring: stopped by SIG{signal}")), "{err}");
        assert!(!socket.exists(), "the ring's socket is removed");

        let (socket, mut server) = start_serve(
            &format!("serve-{signal}"),
            &["--location", "host", "--size", "64K"],
            std::process::Stdio::piped(),
        );
        assert!(run(&["attach", "--api", "host", "--socket", socket.to_str().unwrap()]).status.success());
        send_signal(&server, signal);
        let status = wait_for_exit(&mut server);
        let mut out = String::new();
        std::io::Read::read_to_string(server.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(status.success(), "SIG{signal}: {status}");
        assert!(out.contains(&format!("stopped by SIG{signal}: 1 client(s) served")), "{out}");
        assert!(!socket.exists(), "serve removes its socket");
    }
}

#[test]
fn smaller_command_line_mistakes_get_clear_answers() {
    // A decimal size is a size.
    let out = run(&["ring", "--size", "1.5M", "--frames", "20", "--json"]);
    assert!(out.status.success());
    assert_eq!(json(&out)[0]["slot_size"], 3 << 19);
    let out = run(&["ring", "--size", "0.1K", "--frames", "20"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("whole number of bytes"));
    // attach on a regular file says it is not a socket.
    let file = std::env::temp_dir().join(format!("lava-flow-cli-test-file-{}", std::process::id()));
    std::fs::write(&file, b"not a socket").unwrap();
    let out = run(&["attach", "--api", "host", "--socket", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a socket but a regular file") && !err.contains("Connection refused\n"), "{err}");
    // serve in a missing directory names it.
    let dir = std::env::temp_dir().join(format!("lava-flow-cli-test-missing-{}", std::process::id()));
    let out = run(&["serve", "--location", "host", "--socket", dir.join("x.sock").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("in {}: the directory does not exist", dir.display())), "{err}");
    assert!(!err.contains(".lava-flow-bind"), "{err}");
    // Bad command lines exit with 2, as CLI.md promises.
    for args in [
        vec!["ring", "--role", "consumer"],
        vec!["ring", "--role", "producer"],
        vec!["ring", "--slots", "0"],
        vec!["ring", "--size", "12"],
        vec!["bench", "--only", "nosuch"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn channel_bench_starts_consumer_processes_and_checks_every_frame() {
    // Host frames run everywhere; Vulkan frames where a Vulkan device opens.
    let mut apis = vec!["host"];
    if vulkan_or_skip().is_some() {
        apis.push("vulkan");
    }
    for api in apis {
        let out =
            run(&["channel", "bench", "--size", "8K", "--consumers", "1,2", "--frames", "600", "--api", api, "--json"]);
        assert!(out.status.success(), "{api}");
        let rows = json(&out);
        let rows = rows.as_array().expect("one row per consumer count");
        assert_eq!(rows.len(), 2);
        for (row, consumers) in rows.iter().zip([1, 2]) {
            assert_eq!(row["consumers"], consumers);
            assert_eq!(row["producer"]["frames"], 600);
            assert_eq!(row["producer"]["memory"], api);
            let reports = row["consumer_reports"].as_array().unwrap();
            assert_eq!(reports.len(), consumers, "one report per consumer process");
            for r in reports {
                assert_eq!(r["frames"], 600, "every frame checked: {r}");
                assert_eq!(r["dropped"], 0);
                assert_eq!(r["ended_by"], "peer-finished");
                assert_eq!(r["latency"]["samples"], 600, "every hand-off measured: {r}");
            }
        }
    }
    let out = run(&["channel", "--role", "producer"]);
    assert_eq!(out.status.code(), Some(2), "--socket is needed");
}

/// `channel bench --api gl|cuda|opencl`: consumer processes view every frame in that API (one
/// import per slot, at connect) and check its bytes through it. GL runs on llvmpipe; CUDA and
/// OpenCL on a GPU machine, and elsewhere fail before any consumer starts, naming what is missing.
#[test]
#[cfg(all(feature = "gl", feature = "cuda", feature = "opencl"))]
fn channel_bench_checks_every_frame_through_each_view_api() {
    let Some(vk) = vulkan_or_skip() else { return };
    let identity = vk.identity();
    let apis: [(&str, lava_flow::Result<()>); 3] = [
        ("gl", lava_flow::gl::GlContext::for_identity(&identity).map(drop)),
        ("cuda", lava_flow::cuda::CudaDevice::for_identity(&identity).map(drop)),
        ("opencl", lava_flow::opencl::ClContext::for_identity(&identity).map(drop)),
    ];
    for (api, opened) in apis {
        if let Err(e) = opened {
            // The API is missing here: the bench says so at once (no 30 s wait for consumers
            // that failed), with the importer's error, and is not a usage error.
            let started = std::time::Instant::now();
            let out = run(&["channel", "bench", "--api", api, "--size", "4K", "--consumers", "1", "--frames", "10"]);
            assert_eq!(out.status.code(), Some(1), "{api}");
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "{api}: refused before consumers start");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("not implemented"), "{api}: {stderr}");
            testing::skip(api, e);
            continue;
        }
        let out =
            run(&["channel", "bench", "--api", api, "--size", "8K", "--consumers", "1,2", "--frames", "300", "--json"]);
        assert!(out.status.success(), "{api}: {}", String::from_utf8_lossy(&out.stderr));
        let rows = json(&out);
        for row in rows.as_array().unwrap() {
            assert_eq!(row["producer"]["memory"], "vulkan", "{api}: frames are Vulkan buffers");
            for r in row["consumer_reports"].as_array().unwrap() {
                assert_eq!(r["view"], api, "checked through {api}: {r}");
                assert_eq!(r["frames"], 300, "{r}");
                assert_eq!(r["imports"], 8, "4 slots, each imported into Vulkan and {api} once: {r}");
                assert_eq!(r["resources"]["fds_first"], r["resources"]["fds_last"], "{r}");
            }
        }
    }
}

#[test]
fn channel_producer_and_consumer_run_as_separate_commands() {
    let dir = std::env::temp_dir().join(format!("lava-flow-cli-channel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("c.sock");
    let socket = socket.to_str().unwrap();
    let consumer = lava_flow()
        .args(["channel", "--role", "consumer", "--socket", socket, "--api", "host", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let args =
        ["channel", "--role", "producer", "--socket", socket, "--api", "host", "--size", "4K", "--frames", "300"];
    let producer = run(&[&args[..], &["--json"]].concat());
    let consumer = report(&["channel", "--role", "consumer"], consumer.wait_with_output().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(producer.status.success() && consumer.status.success());
    assert_eq!(json(&producer)["frames"], 300);
    let consumer = json(&consumer);
    assert_eq!(consumer["frames"], 300, "{consumer}");
    assert_eq!(consumer["ended_by"], "peer-finished");
}

/// `lava-flow ARGS` as two MPI ranks (`mpirun -n 2`, shared-memory transport), limited to two
/// minutes; `None` (skipped) without `mpirun`.
#[cfg(feature = "mpi")]
fn mpirun(args: &[&str]) -> Option<Output> {
    if Command::new("mpirun").arg("--version").output().is_err() {
        testing::skip("mpi", "no `mpirun` on PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    }
    let bin = std::env::var_os("LAVA_FLOW_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lava-flow").into());
    let mut child = Command::new("timeout")
        .args(["120", "mpirun", "-n", "2", "--oversubscribe", "--mca", "btl", "self,vader"])
        .arg(bin)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mpirun");
    let _ = &mut child;
    Some(report(args, child.wait_with_output().expect("mpirun")))
}

#[cfg(feature = "mpi")]
#[test]
fn channel_over_mpi_checks_every_frame_and_its_bench_measures_raw_mpi_beside_it() {
    let Some(out) =
        mpirun(&["channel", "--transport", "mpi", "--size", "64K", "--frames", "500", "--api", "host", "--json"])
    else {
        return;
    };
    assert!(out.status.success());
    let r = json(&out);
    assert_eq!(
        (r["transport"].as_str(), r["memory"].as_str(), r["frames"].as_u64()),
        (Some("mpi"), Some("host"), Some(500))
    );
    assert_eq!(r["latency"]["samples"], 500, "every hand-off measured: {r}");
    if vulkan_or_skip().is_some() {
        let out =
            mpirun(&["channel", "--transport", "mpi", "--size", "256K", "--frames", "50", "--api", "vulkan"]).unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("50 frames of 256 KiB checked"));
    }
    let out =
        mpirun(&["channel", "bench", "--transport", "mpi", "--size", "4K,1M", "--api", "host", "--json"]).unwrap();
    assert!(out.status.success());
    let b = json(&out);
    let rows = b["raw_against_lava_flow"].as_array().expect("one row per size");
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert!(row["raw_gbps"].as_f64().unwrap() > 0.0 && row["lava_flow_gbps"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert_eq!(b["channel"].as_array().map(Vec::len), Some(2), "a checked channel run per size");
    // Outside mpirun: one rank, refused with the way to run it.
    let out = run(&["channel", "--transport", "mpi", "--frames", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mpirun -n 2"));
}
