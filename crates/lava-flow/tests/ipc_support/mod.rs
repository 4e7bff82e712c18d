//! What the cross-process tests share: private temporary directories and re-running this test
//! binary as the child process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The environment variable that tells a re-run test binary which side of a test to play.
pub const ROLE: &str = "LAVA_FLOW_CHILD_ROLE";

/// The role this process plays, if it was started as a child.
pub fn child_role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// A directory removed (with its contents) on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new directory under the system's temporary directory with the given mode.
    pub fn new(tag: &str, mode: u32) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lava-flow-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command that re-runs this test binary for exactly `test`, as `role`.
pub fn child_command(test: &str, role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]).env(ROLE, role);
    cmd
}

/// Runs the command to completion and panics with its output unless it succeeded.
pub fn run_ok(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let text = format!(
        "{what} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    eprintln!("{text}");
    out
}

/// The u32 pattern word at index `i` that the tests write and check.
pub fn pattern_word(seed: u32, i: usize) -> u32 {
    (i as u32).wrapping_mul(0x9E37_79B1) ^ seed
}

/// `len` bytes of the pattern (little-endian words).
pub fn pattern_bytes(seed: u32, len: usize) -> Vec<u8> {
    (0..len.div_ceil(4)).flat_map(|i| pattern_word(seed, i).to_le_bytes()).take(len).collect()
}
