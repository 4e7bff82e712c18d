//! The MSRV step: the workspace checked with the toolchain its `rust-version` names.
//!
//! It runs `rustup run <rust-version> cargo check --workspace --all-features` (library, binaries
//! and xtask; the tests' dev-dependencies may need a newer compiler) into `target/msrv`, where
//! that toolchain is installed. Where it is not, the step is not run and a line says so: clippy's
//! `incompatible_msrv` lint (in the clippy step, which reads `rust-version`) still flags standard
//! library APIs newer than it, but not language features or dependencies.

use std::process::{Command, Stdio};

use crate::run::{self, Step, Summary};

/// `rust-version` of the workspace's Cargo.toml.
pub fn rust_version() -> Result<String, String> {
    let path = run::root().join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse_rust_version(&text).ok_or_else(|| format!("{} has no `rust-version = \"...\"` line", path.display()))
}

fn parse_rust_version(manifest: &str) -> Option<String> {
    manifest.lines().find_map(|line| {
        let value = line.trim().strip_prefix("rust-version")?.trim_start().strip_prefix('=')?.trim();
        Some(value.trim_matches('"').to_string())
    })
}

fn rustup_run(version: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", version]).args(args).current_dir(run::root());
    // The outer cargo's choices must not leak into the older toolchain's build.
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER"] {
        cmd.env_remove(var);
    }
    cmd
}

fn installed(version: &str) -> bool {
    rustup_run(version, &["rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Adds the MSRV step to the summary, or says why it does not run.
pub fn step(summary: &mut Summary) -> Result<(), String> {
    let version = rust_version()?;
    if !installed(&version) {
        println!(
            "xtask: msrv: toolchain {version} (rust-version) is not installed, so `cargo check` on it does not run; \
             clippy's incompatible_msrv lint checked std APIs against it. Install it: \
             rustup toolchain install {version} --profile minimal"
        );
        return Ok(());
    }
    let target = run::target_dir().join("msrv");
    let target = target.to_string_lossy();
    let cmd = rustup_run(&version, &["cargo", "check", "--workspace", "--all-features", "--target-dir", &target]);
    summary.run(Step::new(&format!("msrv: cargo +{version} check"), cmd).keep_going())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_rust_version_is_read() {
        assert_eq!(parse_rust_version("[workspace.package]\nrust-version = \"1.88\"\n").as_deref(), Some("1.88"));
        assert_eq!(parse_rust_version("[package]\nname = \"x\"\n"), None);
        assert!(rust_version().is_ok());
    }
}
