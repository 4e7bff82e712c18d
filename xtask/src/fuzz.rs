//! The fuzz step of `cargo xtask test`: libFuzzer for a short while per target where a nightly
//! toolchain with cargo-fuzz is installed, and otherwise the stable replay test, which runs every
//! corpus file and seeded mutations through the same checks (`fuzz/src/checks.rs`).

use std::process::{Command, Stdio};

use crate::run::{self, Step, Summary};

/// The cargo-fuzz targets (`fuzz/Cargo.toml`); each has its corpus in `fuzz/seeds/<target>/`.
pub const TARGETS: [&str; 4] = ["decode_message", "description_json", "texture_validate", "uuid_parse"];

/// Seconds of libFuzzer per target in `cargo xtask test`.
pub const SECONDS_PER_TARGET: u32 = 20;

/// `cargo fuzz` on the nightly toolchain, through rustup (a plain `cargo +nightly` needs rustup's
/// proxy first on PATH, which `cargo xtask` does not promise).
fn nightly_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"]).args(args).current_dir(run::root());
    // The stable cargo that runs xtask exports its own settings; the nightly cargo picks its own.
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd` through bash with libFuzzer's line per new input (`#123 NEW ...`, `REDUCE`, `pulse`)
/// left out of the log; its exit status is kept (pipefail).
fn quiet(cmd: Command) -> Command {
    let mut line = String::from("set -o pipefail; ");
    for (k, v) in cmd.get_envs() {
        if v.is_none() {
            line.push_str(&format!("unset {}; ", k.to_string_lossy()));
        }
    }
    line.push_str(&shell_quote(&cmd.get_program().to_string_lossy()));
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&shell_quote(&a.to_string_lossy()));
    }
    line.push_str(r#" 2>&1 | { grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' || true; }"#);
    let mut wrapped = Command::new("bash");
    wrapped.args(["-c", &line]).current_dir(run::root());
    wrapped
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether `cargo +nightly fuzz` works here. `XTASK_FUZZ=replay` answers no, to run what a
/// machine without nightly runs.
pub fn has_nightly_fuzz() -> bool {
    if std::env::var("XTASK_FUZZ").as_deref() == Ok("replay") {
        return false;
    }
    nightly_fuzz(&["--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Adds the fuzz steps to the summary. `replay` is the command that runs the stable replay test
/// with the suite's own build (so nothing is rebuilt).
pub fn steps(summary: &mut Summary, replay: Command) -> Result<(), String> {
    if !has_nightly_fuzz() {
        println!(
            "xtask: fuzz mode: stable replay (no nightly toolchain with cargo-fuzz): every file of fuzz/seeds and \
             seeded mutations through fuzz/src/checks.rs"
        );
        summary.run(Step::new("fuzz: stable replay of the corpus", replay).keep_going())?;
        return Ok(());
    }
    println!("xtask: fuzz mode: libFuzzer (cargo +nightly fuzz), {SECONDS_PER_TARGET} s per target");
    if !summary.run(Step::new("fuzz: build the targets (nightly)", nightly_fuzz(&["build"])).keep_going())? {
        return Ok(());
    }
    for target in TARGETS {
        // New inputs libFuzzer finds go to a scratch directory, not into the repository's corpus.
        let scratch = std::env::temp_dir().join(format!("lava-flow-fuzz-{}-{target}", std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))?;
        let seeds = format!("fuzz/seeds/{target}");
        let time = format!("-max_total_time={SECONDS_PER_TARGET}");
        let scratch_arg = scratch.to_string_lossy().into_owned();
        let cmd = quiet(nightly_fuzz(&["run", target, &scratch_arg, &seeds, "--", &time]));
        summary.run(Step::new(&format!("fuzz: {target} for {SECONDS_PER_TARGET} s"), cmd).keep_going())?;
        let _ = std::fs::remove_dir_all(&scratch);
    }
    // The replay costs a fraction of a second; it keeps the checks and the corpus in step.
    summary.run(Step::new("fuzz: stable replay of the corpus", replay).keep_going())?;
    Ok(())
}
