//! The Python step: the `lava_flow` package (crates/lava-flow-py) built into a wheel with maturin,
//! installed into a virtual environment under `target/python/`, and its pytest suite run against
//! the real drivers (docs/PYTHON.md).
//!
//! The environment is made once per list of requirements ([`REQUIREMENTS`]; its directory is
//! named by their hash) and kept: a warm run only rebuilds the wheel (cargo's cache makes that a
//! relink at most) and runs pytest. Where Python 3.9+ with `venv` cannot be had, the step says
//! why and does not run, unless `LAVA_FLOW_REQUIRE` names `python`: then it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::run::{self, Step, Summary};

/// What the environment holds, from PyPI: the build tool, and what the tests use.
pub const REQUIREMENTS: [&str; 3] = ["maturin>=1.7,<2", "numpy>=1.22", "pytest>=7"];

/// The crate maturin builds.
const CRATE: &str = "crates/lava-flow-py";

/// FNV-1a: a hash that stays the same across Rust versions (std's `DefaultHasher` may not).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `target/python/venv-<hash of the requirements>`.
pub fn venv_dir(target: &Path) -> PathBuf {
    target.join("python").join(format!("venv-{:016x}", fnv1a(&REQUIREMENTS.join("\n"))))
}

/// Whether `LAVA_FLOW_REQUIRE`'s value names `python` (or `all`).
pub fn python_required(require: &str) -> bool {
    require.split(',').map(str::trim).any(|n| n.eq_ignore_ascii_case("python") || n.eq_ignore_ascii_case("all"))
}

/// Why Python cannot be used here, or `None` when `python3` is 3.9 or newer with `venv` and
/// `ensurepip` (Debian ships those in python3-venv, which .ci/run installs).
fn unavailable() -> Option<String> {
    let probe = Command::new("python3")
        .args(["-c", "import sys, venv, ensurepip; assert sys.version_info >= (3, 9), sys.version"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Err(e) => Some(format!("python3 cannot be run ({e}); install Python 3.9 or newer")),
        Ok(out) if !out.status.success() => Some(format!(
            "python3 lacks venv/ensurepip or is older than 3.9 ({}); on Debian: apt-get install python3-venv",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").trim()
        )),
        Ok(_) => None,
    }
}

/// Adds the Python steps (environment, wheel, pytest) to the summary, or says why they do not run.
pub fn steps(summary: &mut Summary, require: &str, vk_env: &[(String, String)]) -> Result<(), String> {
    if let Some(why) = unavailable() {
        if python_required(require) {
            summary.failed("python: set-up", &format!("LAVA_FLOW_REQUIRE={require} names python, and {why}"))?;
        } else {
            println!("xtask: python: the lava_flow package's tests do not run: {why}");
        }
        return Ok(());
    }
    let target = run::target_dir();
    let venv = venv_dir(&target);
    let bin = venv.join("bin");
    let ready = venv.join("lava-flow-requirements.txt");
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(&REQUIREMENTS.join("\n")) {
        let _ = std::fs::remove_dir_all(&venv);
        let mut create = Command::new("python3");
        create.arg("-m").arg("venv").arg(&venv);
        let mut install = Command::new(bin.join("python"));
        install.args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet"]).args(REQUIREMENTS);
        // The marker is written last: an interrupted install is redone next time.
        let mut mark = Command::new(bin.join("python"));
        mark.args(["-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"])
            .arg(&ready)
            .arg(REQUIREMENTS.join("\n"));
        if !summary.run(Step::all("python: venv and pip install", vec![create, install, mark]).keep_going())? {
            let _ = std::fs::remove_dir_all(&venv);
            return Ok(());
        }
    }
    let wheels = target.join("python").join("wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    let mut build = Command::new(bin.join("maturin"));
    build
        .args(["build", "--quiet", "--manifest-path"])
        .arg(run::root().join(CRATE).join("Cargo.toml"))
        .arg("--out")
        .arg(&wheels)
        .env("VIRTUAL_ENV", &venv)
        .env("PATH", path_with(&bin));
    // Installs whatever wheel maturin wrote (its platform tag depends on the machine's glibc).
    let mut install = Command::new(bin.join("python"));
    install
        .args([
            "-c",
            "import glob, subprocess, sys; w = glob.glob(sys.argv[1] + '/lava_flow-*.whl'); assert len(w) == 1, w; \
             subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--disable-pip-version-check', \
             '--quiet', '--no-deps', '--no-index', '--force-reinstall', w[0]])",
        ])
        .arg(&wheels);
    if !summary.run(Step::all("python: maturin build and install the wheel", vec![build, install]).keep_going())? {
        return Ok(());
    }
    let junit = target.join("python").join("junit.xml");
    let mut pytest = Command::new(bin.join("python"));
    pytest
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
        .arg(format!("--junitxml={}", junit.display()))
        .arg(run::root().join(CRATE).join("tests"))
        .current_dir(run::root())
        .envs(vk_env.iter().cloned())
        .env("LAVA_FLOW_REQUIRE", require)
        .env("LAVA_FLOW_BIN", target.join("debug").join("lava-flow"));
    summary.run(Step::new("python: pytest", pytest).junit(vec![junit]).keep_going())?;
    Ok(())
}

fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut paths = vec![bin.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// For `cargo xtask gpu-test`: the package's wheel (release, stripped) and pytest's own wheels
/// (pure Python, for the GPU machine's Python, which reaches no package index) into
/// `dir/wheels`. The tests themselves travel with the checkout.
pub fn pack_for_gpu(dir: &Path) -> Result<(), String> {
    if let Some(why) = unavailable() {
        return Err(format!("packing the Python package for the GPU machine: {why}"));
    }
    let target = run::target_dir();
    let venv = venv_dir(&target);
    let bin = venv.join("bin");
    let ready = venv.join("lava-flow-requirements.txt");
    let run_ok = |mut cmd: Command, what: &str| -> Result<(), String> {
        let status = cmd.status().map_err(|e| format!("{what}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed ({status})"))
        }
    };
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(&REQUIREMENTS.join("\n")) {
        let _ = std::fs::remove_dir_all(&venv);
        let mut create = Command::new("python3");
        create.arg("-m").arg("venv").arg(&venv);
        run_ok(create, "python3 -m venv")?;
        let mut install = Command::new(bin.join("python"));
        install.args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet"]).args(REQUIREMENTS);
        run_ok(install, "pip install")?;
        std::fs::write(&ready, REQUIREMENTS.join("\n")).map_err(|e| format!("writing {}: {e}", ready.display()))?;
    }
    let wheels = dir.join("wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    let mut build = Command::new(bin.join("maturin"));
    build
        .args(["build", "--quiet", "--release", "--strip", "--manifest-path"])
        .arg(run::root().join(CRATE).join("Cargo.toml"))
        .arg("--out")
        .arg(&wheels)
        .env("VIRTUAL_ENV", &venv)
        .env("PATH", path_with(&bin));
    run_ok(build, "maturin build --release")?;
    // pytest and NumPy (which the tests import; the GPU machine's own is used where it has one),
    // as wheels for CPython 3.12 on x86-64 Linux, the GPU machine's Python.
    let mut download = Command::new(bin.join("python"));
    download
        .args(["-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--only-binary=:all:"])
        .args(["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64"])
        .args(["--platform", "manylinux2014_x86_64", "--dest"])
        .arg(&wheels)
        .args(["pytest>=7", "numpy>=1.22"]);
    run_ok(download, "pip download pytest numpy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_is_required_by_name_or_all() {
        assert!(python_required("vulkan,python"));
        assert!(python_required(" Python "));
        assert!(python_required("all"));
        assert!(!python_required("vulkan,gl"));
        assert!(!python_required(""));
    }

    #[test]
    fn the_environment_is_keyed_on_the_requirements() {
        let dir = venv_dir(Path::new("/t"));
        assert!(dir.starts_with("/t/python"));
        assert_eq!(dir, venv_dir(Path::new("/t")));
        assert_ne!(fnv1a("numpy"), fnv1a("numpy>=2"));
    }
}
