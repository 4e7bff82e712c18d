//! `cargo xtask demo | test | gpu-test`: what a new machine needs, in two commands.
//!
//! Only `std`: this runs before anything else is built, so it must compile fast and fetch nothing.

mod driver;
mod gpu_test;
mod run;

use std::process::ExitCode;
use std::time::Instant;

use run::{cargo, Step, Summary};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo       set up a Vulkan driver if none is found, then run `lava-flow selftest` and `lava-flow info`
  test       set up drivers, then the whole suite: fmt, clippy, tests (nextest), doc tests, examples
  gpu-test   build the test binaries and the CLI, pack them into .gpu/ for the GPU machine
  help       this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(),
        Some("gpu-test") => gpu_test::gpu_test(),
        Some("help" | "-h" | "--help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the CLI once and runs `selftest`, then `info`.
fn demo() -> Result<(), String> {
    driver::ensure_drivers()?;
    let vk_env = driver::software_vulkan_env();
    let started = Instant::now();
    let mut summary = Summary::default();
    summary.run(Step::new("build lava-flow", cargo(&["build", "--package", "lava-flow-cli", "--bin", "lava-flow"])))?;
    let bin = run::target_dir().join("debug").join("lava-flow");
    let mut selftest = std::process::Command::new(&bin);
    selftest.arg("selftest").envs(vk_env.iter().cloned());
    // A failing selftest still shows `info`: it tells what the machine lacks.
    let selftest_ok = summary.run(Step::new("lava-flow selftest", selftest).keep_going()).is_ok();
    let mut info = std::process::Command::new(&bin);
    info.arg("info").envs(vk_env.iter().cloned());
    summary.run(Step::new("lava-flow info", info).keep_going())?;
    summary.print(started);
    if selftest_ok && summary.all_passed() {
        Ok(())
    } else {
        Err("demo: a step failed (see above)".into())
    }
}

/// The whole suite, in the order that fails fastest, on one (debug) profile so nothing builds twice.
fn test() -> Result<(), String> {
    driver::ensure_drivers()?;
    let vk_env = driver::software_vulkan_env();
    let started = Instant::now();
    let mut summary = Summary::default();
    let with_env = |mut cmd: std::process::Command| {
        cmd.envs(vk_env.iter().cloned());
        cmd
    };
    summary.run(Step::new("cargo fmt --check", cargo(&["fmt", "--all", "--", "--check"])).keep_going())?;
    summary.run(
        Step::new(
            "cargo clippy -D warnings",
            cargo(&["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"]),
        )
        .keep_going(),
    )?;
    if run::has_nextest() {
        // `--success-output final` repeats passing tests' output at the end, so the lines of tests
        // that skipped for a missing API can be counted and listed in the summary.
        let cmd = with_env(cargo(&[
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
            "--success-output",
            "final",
        ]));
        summary.run(Step::new("cargo nextest run", cmd).keep_going().collect_skips("Summary ["))?;
    } else {
        println!("xtask: cargo-nextest is not installed; falling back to `cargo test` (install it: https://nexte.st)");
        let cmd =
            with_env(cargo(&["test", "--workspace", "--all-features", "--no-fail-fast", "--lib", "--bins", "--tests"]));
        summary.run(Step::new("cargo test (nextest absent)", cmd).keep_going().collect_skips("test result:"))?;
    }
    summary.run(
        Step::new("doc tests", with_env(cargo(&["test", "--workspace", "--all-features", "--doc"]))).keep_going(),
    )?;
    summary.run(
        Step::new("build examples", cargo(&["build", "--workspace", "--all-features", "--examples"])).keep_going(),
    )?;
    summary.print(started);
    if summary.all_passed() {
        Ok(())
    } else {
        Err("test: some steps failed (see the summary)".into())
    }
}
