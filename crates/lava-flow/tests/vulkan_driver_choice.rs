//! Driver choice is an option of `VulkanContext`, and the library never changes the process
//! environment (changing it while other threads read it is undefined behaviour in C, and
//! `unsafe` in Rust 2024): the Vulkan loader's `VK_DRIVER_FILES` is the business of whoever
//! starts the process.

mod common;

use std::path::Path;

use lava_flow::vulkan::{ContextOptions, DeviceSelector, PhysicalDeviceInfo};
use lava_flow::{Error, VulkanContext};
use lava_flow_diag::testing;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// No source file of the library (or of raw-gpu-handle) calls `std::env::set_var` or
/// `remove_var`, in any form (a `use` of it, a path, a method).
#[test]
fn the_library_source_never_changes_the_environment() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&manifest.join("src"), &mut files);
    let library_files = files.len();
    rust_files(&manifest.join("../raw-gpu-handle/src"), &mut files);
    assert!(library_files > 30 && files.len() > library_files, "the scan found the sources: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if ["set_var", "remove_var"].iter().any(|f| line.contains(f)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "the library changes the process environment:\n{}", found.join("\n"));
}

const CHILD: &str = "LAVA_FLOW_TEST_CHILD";

/// The library's own paths that open Vulkan (the ring's timeline check, contexts by every
/// selector) leave `VK_DRIVER_FILES` as the process started: unset, in a child started without
/// it. (They used to point it at lavapipe on machines without a GPU.)
#[test]
fn opening_vulkan_leaves_the_environment_alone() {
    if std::env::var_os(CHILD).is_some() {
        assert!(std::env::var_os("VK_DRIVER_FILES").is_none(), "the parent started this process without it");
        let _ = lava_flow::ipc::ring::check_sync(lava_flow::ipc::ring::RingSync::TimelineSemaphore);
        let _ = VulkanContext::new();
        let _ = VulkanContext::software();
        let _ = VulkanContext::with_options(&ContextOptions::new().driver("llvmpipe"));
        assert_eq!(std::env::var_os("VK_DRIVER_FILES"), None, "a library call set VK_DRIVER_FILES");
        assert_eq!(std::env::var_os("VK_ICD_FILENAMES"), None, "a library call set VK_ICD_FILENAMES");
        println!("child: the environment is as it started");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "opening_vulkan_leaves_the_environment_alone", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env_remove("VK_DRIVER_FILES")
        .env_remove("VK_ICD_FILENAMES")
        .output()
        .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("the environment is as it started"), "child failed:\n{text}");
}

fn open(options: &ContextOptions) -> lava_flow::Result<PhysicalDeviceInfo> {
    VulkanContext::with_options(options).map(|ctx| ctx.info().clone())
}

/// `ContextOptions` picks the device by driver name (any case) and by type, among the devices
/// the loader lists, and says what it found when nothing matches.
#[test]
fn contexts_are_chosen_by_driver_and_type_through_options() {
    let Some(devices) = testing::or_skip("vulkan", VulkanContext::enumerate()) else { return };
    if devices.is_empty() {
        return testing::skip("vulkan", "the Vulkan loader lists no devices");
    }
    let before = std::env::var_os("VK_DRIVER_FILES");
    let mut by_driver = 0;
    for d in devices.iter().filter(|d| !d.driver_name.is_empty()) {
        let options =
            ContextOptions::new().driver(d.driver_name.to_uppercase()).selector(DeviceSelector::Index(d.index));
        let got = open(&options).unwrap_or_else(|e| panic!("{options:?}: {e}"));
        assert_eq!((got.index, &got.driver_name), (d.index, &d.driver_name));
        let default_of_driver = open(&ContextOptions::new().driver(d.driver_name.clone())).unwrap();
        assert_eq!(default_of_driver.driver_name, d.driver_name, "the default device among that driver's");
        by_driver += 1;
    }
    println!("opened {by_driver} of {} devices by driver name", devices.len());

    let e = open(&ContextOptions::new().driver("no-such-driver")).unwrap_err();
    assert!(matches!(e, Error::DeviceNotFound { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("no-such-driver") && text.contains(&devices[0].name),
        "names what was asked and found: {text}"
    );

    match devices.iter().find(|d| d.device_type == "CPU") {
        Some(cpu) => {
            let ctx = VulkanContext::software().unwrap();
            assert_eq!((ctx.info().index, ctx.info().device_type.as_str()), (cpu.index, "CPU"));
            println!("software device: {} (driver {})", ctx.info().name, ctx.info().driver_name);
            if cpu.driver_name == "llvmpipe" {
                let lavapipe = open(&ContextOptions::new().driver("llvmpipe").selector(DeviceSelector::Software));
                assert_eq!(lavapipe.unwrap().index, cpu.index, "lavapipe by driver name and type");
            }
        }
        None => {
            let e = VulkanContext::software().unwrap_err();
            assert!(matches!(e, Error::DeviceNotFound { .. }) && e.to_string().contains("CPU"), "{e}");
        }
    }
    if let Some(other) = devices.iter().find(|d| d.driver_name != devices[0].driver_name && !d.driver_name.is_empty()) {
        let e = open(&ContextOptions::new().driver(other.driver_name.clone()).selector(DeviceSelector::Index(0)));
        assert!(matches!(e, Err(Error::DeviceNotFound { .. })), "device 0 is not of driver {}", other.driver_name);
    }
    assert_eq!(std::env::var_os("VK_DRIVER_FILES"), before, "opening contexts left VK_DRIVER_FILES alone");
}
