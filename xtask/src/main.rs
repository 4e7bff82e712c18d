//! `cargo xtask demo | test | gpu-test`: what a new machine needs, in two commands.
//!
//! `std` and cbindgen only (for the C header, see Cargo.toml): this runs before anything else is
//! built, so it must compile fast.

mod bench_doc;
mod capi;
mod disk;
mod docs_check;
mod driver;
mod fuzz;
mod gpu_test;
#[cfg(test)]
mod layers;
mod msrv;
mod python;
mod report;
mod require;
mod run;

use std::process::ExitCode;
use std::time::Instant;

use run::{cargo, Step, Summary};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo       set up a Vulkan driver if none is found, then run `lava-flow selftest` and `lava-flow info`
  test       set up drivers, then the whole suite (README.md lists its steps). Runs with
             LAVA_FLOW_REQUIRE=vulkan,gl,mpi unless LAVA_FLOW_REQUIRE is set; prints one line per step (each
             step's output is in target/xtask-logs/, and printed when the step fails), then the summary;
             the last line is `N passed, M failed, K skipped`
  bench-doc CPU.json [GPU.json]
             regenerate docs/BENCHMARKS.md's tables and plots from `lava-flow bench --json` files
  python     only the suite's python step: the lava_flow package's venv, wheel and pytest suite
             (docs/PYTHON.md); builds the CLI its tests serve from first
  gpu-test   build the test binaries and the CLI, pack them into .gpu/ for the GPU machine
  c-header   regenerate crates/lava-flow-c/include/lava_flow.h with cbindgen (commit it: `test` checks it)
  install-c [--release] PREFIX
             build the C library and install PREFIX/lib/liblava_flow.{so,a}, PREFIX/include/lava_flow.h{,pp}
             and PREFIX/lib/pkgconfig/lava-flow.pc (docs/C.md)
  c-check    the C API step of `test` alone: header current, install, symbols, C tests and C/C++ examples
  help       this text
";

/// The steps of `cargo xtask test`, in order: the start of each step's name in the summary, and
/// what it checks. README.md lists them (a test compares), and `test` fails when it runs a step
/// this list does not name.
pub const STEPS: [(&str, &str); 12] = [
    ("cargo fmt --check", "formatting"),
    ("cargo clippy -D warnings", "clippy on the workspace, all features, all targets"),
    (
        "clippy per feature set",
        "clippy on the CLI with each feature set users can pick, and raw-gpu-handle alone, with and without std",
    ),
    ("cargo doc -D warnings", "rustdoc: broken intra-doc links and missing docs of the public API fail"),
    ("msrv", "`cargo check` with the toolchain `rust-version` names, where it is installed"),
    ("tests", "every test, through cargo-nextest (`cargo test` where it is absent)"),
    ("doc tests", "the examples in the API docs"),
    ("build examples", "the programs in crates/lava-flow/examples"),
    (
        "C API",
        "lava_flow.h matches cbindgen's output; install-c into target/c-api; only lava_flow_* exported; the C tests and the C and C++ examples built with cc/c++ and run",
    ),
    (
        "python",
        "the `lava_flow` Python package: a venv under target/python (maturin, numpy, pytest from PyPI), the wheel \
         built with maturin, its pytest suite against the real drivers",
    ),
    ("soak", "`lava-flow selftest --soak 50`: every path again and again, fds and memory checked"),
    ("fuzz", "the fuzz targets: libFuzzer on nightly, else a replay of the corpus"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(),
        Some("gpu-test") => gpu_test::gpu_test(),
        Some("c-header") => capi::c_header(),
        Some("install-c") => capi::install_c(&args[1..]),
        Some("c-check") => capi::c_check(),
        Some("python") => python_only(),
        Some("bench-doc") => bench_doc::bench_doc(&args[1..]),
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
    require::check_env()?;
    driver::ensure_drivers()?;
    let vk_env = driver::software_vulkan_env();
    let started = Instant::now();
    let mut summary = Summary::default();
    summary.run(Step::new("build lava-flow", cargo(&["build", "--package", "lava-flow-cli", "--bin", "lava-flow"])))?;
    let bin = run::target_dir().join("debug").join("lava-flow");
    let mut selftest = std::process::Command::new(&bin);
    selftest.arg("selftest").envs(vk_env.iter().cloned());
    // A failing selftest still shows `info`: it tells what the machine lacks.
    let selftest_ok = summary.run(Step::new("lava-flow selftest", selftest).shown().keep_going()).is_ok();
    let mut info = std::process::Command::new(&bin);
    info.arg("info").envs(vk_env.iter().cloned());
    summary.run(Step::new("lava-flow info", info).shown().keep_going())?;
    summary.print(started);
    if selftest_ok && summary.all_passed() {
        Ok(())
    } else {
        Err("demo: a step failed (see above)".into())
    }
}

/// The python step alone, with what it needs: the drivers and the `lava-flow` binary.
fn python_only() -> Result<(), String> {
    let require = require::for_suite()?;
    driver::ensure_drivers()?;
    let vk_env = driver::software_vulkan_env();
    let started = Instant::now();
    let mut summary = Summary::default();
    summary.run(Step::new(
        "build lava-flow",
        cargo(&["build", "--package", "lava-flow-cli", "--all-features", "--bin", "lava-flow"]),
    ))?;
    python::steps(&mut summary, &require, &vk_env)?;
    summary.print(started);
    if summary.all_passed() {
        Ok(())
    } else {
        Err("python: a step failed (see the summary)".into())
    }
}

/// Soak rounds in `cargo xtask test`: about 40 s of a 2-core machine in the debug build
/// (`docs/RELIABILITY.md`).
const SOAK_ROUNDS: u32 = 50;

/// The feature sets users can pick, each checked by clippy on its own (the workspace's clippy
/// step checks all features, all targets): the CLI with a feature set checks lava-flow's library
/// and lava-flow-diag (whose features forward to lava-flow's) with the same one.
const FEATURE_SETS: [&[&str]; 5] = [&[], &["cuda"], &["gl"], &["opencl"], &["mpi"]];

/// The whole suite, in the order that fails fastest, on one (debug) profile so nothing builds twice.
fn test() -> Result<(), String> {
    let require = require::for_suite()?;
    disk::check(&run::target_dir())?;
    driver::ensure_drivers()?;
    let vk_env = driver::software_vulkan_env();
    let started = Instant::now();
    let mut summary = Summary::default();
    let with_env = |mut cmd: std::process::Command| {
        cmd.envs(vk_env.iter().cloned()).env("LAVA_FLOW_REQUIRE", &require);
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
    let mut per_feature_set: Vec<std::process::Command> = FEATURE_SETS
        .iter()
        .map(|features| {
            let mut args = vec!["clippy", "--package", "lava-flow-cli", "--no-default-features"];
            let list = features.join(",");
            if !features.is_empty() {
                args.extend(["--features", &list]);
            }
            args.extend(["--", "-D", "warnings"]);
            cargo(&args)
        })
        .collect();
    // raw-gpu-handle without its `serde` feature (lava-flow always turns it on), and `no_std`:
    // without `std`, alone and with `serde` (the crate is `#![no_std]`, so any use of `std` there
    // fails to build).
    per_feature_set.push(cargo(&["clippy", "--package", "raw-gpu-handle", "--", "-D", "warnings"]));
    per_feature_set.push(cargo(&[
        "clippy",
        "--package",
        "raw-gpu-handle",
        "--no-default-features",
        "--",
        "-D",
        "warnings",
    ]));
    per_feature_set.push(cargo(&[
        "clippy",
        "--package",
        "raw-gpu-handle",
        "--no-default-features",
        "--features",
        "serde",
        "--",
        "-D",
        "warnings",
    ]));
    summary.run(Step::all("clippy per feature set", per_feature_set).keep_going())?;
    let mut doc = cargo(&["doc", "--workspace", "--no-deps", "--all-features"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    summary.run(Step::new("cargo doc -D warnings", doc).keep_going())?;
    msrv::step(&mut summary)?;
    if run::has_nextest() {
        // The `suite` profile (.config/nextest.toml) writes a JUnit report with every test's
        // output, where the skip markers are read from: the run itself stays one line per test.
        let cmd = with_env(cargo(&["nextest", "run", "--workspace", "--all-features", "--profile", "suite"]));
        let reports = [run::target_dir(), run::root().join("target")]
            .map(|dir| dir.join("nextest").join("suite").join("junit.xml"))
            .to_vec();
        summary.run(Step::new("tests: cargo nextest run", cmd).junit(reports).keep_going())?;
    } else {
        println!("xtask: cargo-nextest is not installed; falling back to `cargo test` (install it: https://nexte.st)");
        // One test at a time (the fd counts are per process), with its output, where the skip
        // markers are read from.
        let cmd = with_env(cargo(&[
            "test",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
            "--lib",
            "--bins",
            "--tests",
            "--",
            "--test-threads=1",
            "--nocapture",
        ]));
        summary.run(Step::new("tests: cargo test (nextest absent)", cmd).libtest().keep_going())?;
    }
    summary.run(
        Step::new("doc tests", with_env(cargo(&["test", "--workspace", "--all-features", "--doc"])))
            .libtest()
            .keep_going(),
    )?;
    summary.run(
        Step::new("build examples", cargo(&["build", "--workspace", "--all-features", "--examples"])).keep_going(),
    )?;
    // The C API step runs this xtask again (`c-check`), its output going to the step's log.
    let c_check = std::env::current_exe()
        .map(|exe| {
            let mut cmd = std::process::Command::new(exe);
            cmd.arg("c-check");
            cmd
        })
        .map_err(|e| format!("test: cannot find the running xtask to start `c-check`: {e}"))?;
    summary.run(Step::new("C API", with_env(c_check)).keep_going())?;
    // After the tests: pytest runs `lava-flow serve` from the test build.
    python::steps(&mut summary, &require, &vk_env)?;
    // The soak runs the binary the test build made (the same features: nothing is rebuilt).
    let mut soak = std::process::Command::new(run::target_dir().join("debug").join("lava-flow"));
    soak.args(["selftest", "--soak", &SOAK_ROUNDS.to_string()]);
    summary.run(Step::new(&format!("soak: lava-flow selftest --soak {SOAK_ROUNDS}"), with_env(soak)).keep_going())?;
    let replay = if run::has_nextest() {
        with_env(cargo(&[
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--success-output",
            "final",
            "-E",
            "binary(reliability_fuzz)",
        ]))
    } else {
        with_env(cargo(&["test", "--workspace", "--all-features", "--test", "reliability_fuzz", "--", "--nocapture"]))
    };
    fuzz::steps(&mut summary, replay)?;
    summary.print(started);
    if let Some(name) = summary.names().find(|n| !STEPS.iter().any(|(start, _)| n.starts_with(start))) {
        return Err(format!("test: the step `{name}` is missing from xtask's STEPS (and README.md's list)"));
    }
    if summary.all_passed() {
        Ok(())
    } else {
        Err("test: some steps failed (see the summary)".into())
    }
}
