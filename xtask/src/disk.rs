//! Free disk space before the suite: a build that runs out of space half way fails every later
//! step with `No space left on device`, which hides the cause. xtask asks `df` (POSIX output)
//! first and refuses at once, saying how much is free, how much the suite needs and what to do.

use std::path::Path;
use std::process::Command;

/// What a clean `cargo xtask test` writes under `target/` (debug test binaries with line tables,
/// clippy's and rustdoc's metadata, the MSRV check's own target directory), with some margin:
/// about 6.5 GiB measured on the CPU machine.
pub const SUITE_NEEDS_BYTES: u64 = 8 << 30;

/// Free bytes on the file system holding `dir` (or its closest existing ancestor), from
/// `df -Pk`; `None` when `df` cannot say.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent()?;
    }
    let out = Command::new("df").arg("-Pk").arg(existing).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_df_available_kib(&String::from_utf8_lossy(&out.stdout)).map(|kib| kib * 1024)
}

/// The "Available" column (KiB) of `df -P`'s one data line.
fn parse_df_available_kib(text: &str) -> Option<u64> {
    let line = text.lines().nth(1)?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Bytes already under `dir` (`du -sk`): a warm target directory needs less new space.
fn used_bytes(dir: &Path) -> u64 {
    if !dir.exists() {
        return 0;
    }
    Command::new("du")
        .arg("-sk")
        .arg(dir)
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Refuses to start when the target directory's file system cannot hold the suite's build.
pub fn check(target: &Path) -> Result<(), String> {
    let Some(free) = free_bytes(target) else {
        println!("xtask: could not read the free space of {} (df); going on", target.display());
        return Ok(());
    };
    let already = used_bytes(target);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if free + already < SUITE_NEEDS_BYTES {
        return Err(format!(
            "only {:.1} GiB free on the file system of {} (and {:.1} GiB already there), but a clean \
             `cargo xtask test` writes about {:.0} GiB: it would fail part way with `No space left on \
             device`. Free space (for example `cargo clean`, or remove other target directories), or \
             point CARGO_TARGET_DIR at a larger file system.",
            gib(free),
            target.display(),
            gib(already),
            gib(SUITE_NEEDS_BYTES),
        ));
    }
    println!(
        "xtask: {:.1} GiB free for {} (the suite writes up to {:.0} GiB)",
        gib(free),
        target.display(),
        gib(SUITE_NEEDS_BYTES)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_available_column() {
        let text = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                    /dev/vda         264091008 95130060    671744     100% /\n";
        assert_eq!(parse_df_available_kib(text), Some(671_744));
        assert_eq!(parse_df_available_kib("Filesystem\n"), None);
        assert_eq!(parse_df_available_kib(""), None);
    }

    #[test]
    fn free_space_of_a_missing_directory_is_its_parents() {
        let dir = std::env::temp_dir().join("lava-flow-xtask-no-such-dir").join("deeper");
        assert!(free_bytes(&dir).is_some());
    }
}
