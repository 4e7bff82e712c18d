//! Shared helpers for lava-flow's integration tests: opening real drivers (or skipping with the
//! reason), data patterns, and running a test's other half in a second process.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Output};

use lava_flow::vulkan::MemoryKind;
use lava_flow::{Buffer, BufferOptions, VulkanContext};
use lava_flow_diag::testing;

/// Opens the default Vulkan device, or prints why not and returns None (panics when
/// LAVA_FLOW_REQUIRE names vulkan).
pub fn vulkan() -> Option<VulkanContext> {
    testing::or_skip("vulkan", VulkanContext::new())
}

/// Two separate VkDevices on the same physical device: the importer is a different device
/// object with its own memory objects, as another API or process would be.
pub fn two_devices() -> Option<(VulkanContext, VulkanContext)> {
    let a = vulkan()?;
    let b = VulkanContext::with_uuid(a.identity().device_uuid).expect("a second device on the same GPU");
    Some((a, b))
}

/// A deterministic byte pattern that differs per seed and per position.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

/// The role this process plays when it was started by [`run_child`], if any.
pub fn child_role() -> Option<String> {
    std::env::var("LAVA_FLOW_TEST_CHILD").ok()
}

/// Runs the test `test_name` of this same binary in a new process with the child role `role`
/// and extra environment. Returns its output; panics with its output if it failed.
pub fn run_child(test_name: &str, role: &str, env: &[(&str, String)]) -> Output {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"]).env("LAVA_FLOW_TEST_CHILD", role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn the child test process");
    let text = format!(
        "child {role} exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "the child ran no test: {text}");
    out
}

/// Makes a copy of `fd` that a child process inherits (no O_CLOEXEC), returning it and its number.
pub fn inheritable(fd: &OwnedFd) -> (OwnedFd, i32) {
    let dup = rustix::io::dup(fd).expect("dup");
    let n = dup.as_raw_fd();
    (dup, n)
}

/// Takes the inherited fd whose number is in environment variable `var`.
pub fn take_inherited(var: &str) -> OwnedFd {
    let n: i32 = std::env::var(var).expect("fd number in the environment").parse().expect("an fd number");
    // Checked without borrowing the number (a BorrowedFd must name an open fd).
    assert!(std::path::Path::new(&format!("/proc/self/fd/{n}")).exists(), "fd {n} was not inherited");
    // SAFETY: the number is open (checked above): the parent made it inheritable for this child
    // and named it in `var`; nothing else in this process owns or closes it.
    unsafe { OwnedFd::from_raw_fd(n) }
}

/// Writes `data` into `buffer` at `offset` with a Vulkan transfer command from a staging buffer
/// (not a host mapping), waiting for it.
pub fn vk_gpu_write(buffer: &Buffer, offset: u64, data: &[u8]) {
    let mut staging = Buffer::new(
        buffer.context(),
        &BufferOptions::new(data.len() as u64).memory(MemoryKind::HostVisible).export(None),
    )
    .unwrap();
    staging.write(0, data).unwrap();
    staging.copy_region_to(0, buffer, offset, data.len() as u64).unwrap();
}

/// Reads `len` bytes of `buffer` at `offset` with a Vulkan transfer command into a staging
/// buffer, waiting for it.
pub fn vk_gpu_read(buffer: &Buffer, offset: u64, len: u64) -> Vec<u8> {
    let staging =
        Buffer::new(buffer.context(), &BufferOptions::new(len).memory(MemoryKind::HostVisible).export(None)).unwrap();
    buffer.copy_region_to(offset, &staging, 0, len).unwrap();
    staging.read(0, len).unwrap()
}
