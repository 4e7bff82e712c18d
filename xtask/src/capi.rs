//! The C API: `cargo xtask c-header` (regenerate crates/lava-flow-c/include/lava_flow.h),
//! `cargo xtask install-c PREFIX` (library, headers, pkg-config file), and the suite's `C API`
//! step (`cargo xtask c-check`): the header is current, the install works with pkg-config, only
//! `lava_flow_*` symbols are exported, and the C test suite and the C and C++ examples (the C++
//! channel producer and consumer as two processes), compiled with the system compiler against the
//! installed library, pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::run::{cargo, root, target_dir};

/// The C crate's directory.
fn crate_dir() -> PathBuf {
    root().join("crates").join("lava-flow-c")
}

/// The committed header.
pub fn header_path() -> PathBuf {
    crate_dir().join("include").join("lava_flow.h")
}

/// The header cbindgen makes from the crate now.
pub fn generate_header() -> Result<String, String> {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))
        .map_err(|e| format!("reading crates/lava-flow-c/cbindgen.toml: {e}"))?;
    let bindings = cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .map_err(|e| format!("cbindgen could not generate the header: {e}"))?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).map_err(|e| format!("cbindgen wrote a header that is not UTF-8: {e}"))
}

/// `cargo xtask c-header`.
pub fn c_header() -> Result<(), String> {
    let header = generate_header()?;
    std::fs::write(header_path(), header).map_err(|e| format!("writing {}: {e}", header_path().display()))?;
    println!("wrote {}", header_path().display());
    Ok(())
}

/// Fails when the committed header is not what cbindgen makes now.
pub fn check_header() -> Result<(), String> {
    let fresh = generate_header()?;
    let committed = std::fs::read_to_string(header_path()).unwrap_or_default();
    if fresh == committed {
        println!("lava_flow.h is current");
        return Ok(());
    }
    let first = fresh
        .lines()
        .zip(committed.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| fresh.lines().count().min(committed.lines().count()));
    Err(format!(
        "crates/lava-flow-c/include/lava_flow.h differs from what cbindgen generates from crates/lava-flow-c \
         (first at line {}: committed {:?}, generated {:?}): run `cargo xtask c-header` and commit the header",
        first + 1,
        committed.lines().nth(first).unwrap_or("<end>"),
        fresh.lines().nth(first).unwrap_or("<end>")
    ))
}

/// The libraries a program linking `liblava_flow.a` needs besides it (what
/// `rustc --print native-static-libs` prints for a std staticlib on Linux with glibc).
const STATIC_LIBS: &str = "-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc";

fn version() -> &'static str {
    // The C crate's version is the workspace's.
    env!("CARGO_PKG_VERSION")
}

fn run_ok(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} exited with {status}"))
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to).map(drop).map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

/// `cargo xtask install-c PREFIX`: builds the C library (debug profile, as the suite does; add
/// `--release` for an optimized one) and installs it under PREFIX.
pub fn install_c(args: &[String]) -> Result<(), String> {
    let mut release = false;
    let mut prefix = None;
    for a in args {
        match a.as_str() {
            "--release" => release = true,
            other if prefix.is_none() => prefix = Some(PathBuf::from(other)),
            other => {
                return Err(format!(
                    "install-c: unexpected argument `{other}`; usage: cargo xtask install-c [--release] PREFIX"
                ))
            }
        }
    }
    let prefix = prefix.ok_or("usage: cargo xtask install-c [--release] PREFIX")?;
    let prefix =
        if prefix.is_absolute() { prefix } else { std::env::current_dir().map_err(|e| e.to_string())?.join(prefix) };
    let mut build = cargo(&["build", "--package", "lava-flow-c", "--lib"]);
    if release {
        build.arg("--release");
    }
    run_ok(&mut build)?;
    install_into(&prefix, &target_dir().join(if release { "release" } else { "debug" }))?;
    println!("installed lava-flow's C library into {}", prefix.display());
    println!("  PKG_CONFIG_PATH={}/lib/pkgconfig pkg-config --cflags --libs lava-flow", prefix.display());
    Ok(())
}

/// Copies the built libraries (from `built`), the headers and a pkg-config file under `prefix`:
/// `lib/liblava_flow.so.VERSION` (soname `liblava_flow.so.0`) with the links `liblava_flow.so.0`
/// and `liblava_flow.so`, `lib/liblava_flow.a`, `include/lava_flow.h`, `include/lava_flow.hpp`,
/// `lib/pkgconfig/lava-flow.pc`.
pub fn install_into(prefix: &Path, built: &Path) -> Result<(), String> {
    let lib = prefix.join("lib");
    let include = prefix.join("include");
    let pc_dir = lib.join("pkgconfig");
    for d in [&lib, &include, &pc_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let real = format!("liblava_flow.so.{}", version());
    for name in [real.as_str(), "liblava_flow.so.0", "liblava_flow.so", "liblava_flow.a"] {
        let _ = std::fs::remove_file(lib.join(name));
    }
    copy(&built.join("liblava_flow_c.so"), &lib.join(&real))?;
    for link in ["liblava_flow.so.0", "liblava_flow.so"] {
        std::os::unix::fs::symlink(&real, lib.join(link)).map_err(|e| format!("linking {link}: {e}"))?;
    }
    copy(&built.join("liblava_flow_c.a"), &lib.join("liblava_flow.a"))?;
    for h in ["lava_flow.h", "lava_flow.hpp"] {
        copy(&crate_dir().join("include").join(h), &include.join(h))?;
    }
    let template =
        std::fs::read_to_string(crate_dir().join("lava-flow.pc.in")).map_err(|e| format!("lava-flow.pc.in: {e}"))?;
    let pc = template
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@VERSION@", version())
        .replace("@LIBS_PRIVATE@", STATIC_LIBS);
    std::fs::write(pc_dir.join("lava-flow.pc"), pc).map_err(|e| format!("writing lava-flow.pc: {e}"))?;
    Ok(())
}

/// Output of a command that must succeed.
fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} exited with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Only `lava_flow_*` functions are exported by the shared library.
fn check_symbols(so: &Path) -> Result<(), String> {
    let listing = output(Command::new("nm").args(["-D", "--defined-only"]).arg(so))?;
    let names: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    let foreign: Vec<&&str> = names.iter().filter(|n| !n.starts_with("lava_flow_")).collect();
    if !foreign.is_empty() {
        return Err(format!("liblava_flow.so exports symbols outside lava_flow_*: {foreign:?}"));
    }
    if names.len() < 50 {
        return Err(format!("liblava_flow.so exports only {} lava_flow_* symbols: {names:?}", names.len()));
    }
    println!("liblava_flow.so exports {} symbols, all lava_flow_*", names.len());
    Ok(())
}

/// One compiled program's result line: `RESULT: passed=N skipped=M`.
fn result_of(name: &str, out: &str) -> Result<(u32, u32), String> {
    let line = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT: "))
        .ok_or_else(|| format!("{name} printed no `RESULT:` line"))?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| format!("{name}: malformed result line {line:?}"))
    };
    Ok((field("passed=")?, field("skipped=")?))
}

/// Runs a compiled program; its output is printed; it must exit 0 and report at least one check.
fn run_program(name: &str, cmd: &mut Command) -> Result<(u32, u32), String> {
    let started = Instant::now();
    let out = cmd.output().map_err(|e| format!("could not start {name}: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("--- {name} ({:.1} s)\n{}", started.elapsed().as_secs_f64(), text.trim_end());
    if !out.status.success() {
        return Err(format!("{name} exited with {}", out.status));
    }
    let (passed, skipped) = result_of(name, &text)?;
    if passed == 0 {
        return Err(format!("{name} ran no check ({skipped} skipped): a run in which nothing ran fails"));
    }
    Ok((passed, skipped))
}

/// Kills a child left running (a server whose client failed) and reaps it.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `cargo xtask c-check`: the `C API` step of `cargo xtask test`.
pub fn c_check() -> Result<(), String> {
    let started = Instant::now();
    check_header()?;
    run_ok(&mut cargo(&["build", "--package", "lava-flow-c", "--lib"]))?;
    let work = target_dir().join("c-api");
    let prefix = work.join("prefix");
    let _ = std::fs::remove_dir_all(&work);
    install_into(&prefix, &target_dir().join("debug"))?;
    check_symbols(&prefix.join("lib").join("liblava_flow.so"))?;

    let pkg = |args: &[&str]| {
        output(
            Command::new("pkg-config")
                .args(args)
                .arg("lava-flow")
                .env("PKG_CONFIG_PATH", prefix.join("lib").join("pkgconfig")),
        )
    };
    let cflags = pkg(&["--cflags"])?;
    let libs = pkg(&["--libs"])?;
    let static_libs = pkg(&["--libs", "--static"])?;
    println!("pkg-config --cflags --libs lava-flow: {} {}", cflags.trim(), libs.trim());
    let rpath = format!("-Wl,-rpath,{}", prefix.join("lib").display());
    let dir = crate_dir();
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    let compile = |compiler: &str, std: &str, source: &str, out: &str, link: &str| -> Result<PathBuf, String> {
        let exe = bin.join(out);
        let mut cmd = Command::new(compiler);
        cmd.args([std, "-Wall", "-Wextra", "-Werror", "-O1"])
            .args(cflags.split_whitespace())
            .arg(dir.join(source))
            .arg("-o")
            .arg(&exe);
        if link == "static" {
            // The static library first, then what it needs (pkg-config --static).
            cmd.args(static_libs.split_whitespace().map(|a| if a == "-llava_flow" { "-l:liblava_flow.a" } else { a }));
        } else {
            cmd.args(libs.split_whitespace()).arg(&rpath);
        }
        output(&mut cmd).map_err(|e| format!("compiling {source}: {e}"))?;
        Ok(exe)
    };
    let api_test = compile("cc", "-std=c11", "tests/c/api_test.c", "api_test", "shared")?;
    let api_test_static = compile("cc", "-std=c11", "tests/c/api_test.c", "api_test_static", "static")?;
    let share = compile("cc", "-std=c11", "examples/c/share_gl.c", "share_gl", "shared")?;
    let cpp = compile("c++", "-std=c++17", "examples/cpp/wrapper.cpp", "wrapper", "shared")?;
    let channel_producer =
        compile("c++", "-std=c++17", "examples/cpp/channel_producer.cpp", "channel_producer", "shared")?;
    let channel_consumer =
        compile("c++", "-std=c++17", "examples/cpp/channel_consumer.cpp", "channel_consumer", "shared")?;

    let mut passed = 0;
    let mut skipped = 0;
    let mut add = |r: (u32, u32)| {
        passed += r.0;
        skipped += r.1;
    };
    add(run_program("api_test (shared library)", &mut Command::new(&api_test))?);
    add(run_program("api_test (static library)", &mut Command::new(&api_test_static))?);

    // The C example in two processes: a server made through the C API, a client importing into GL.
    let socket = work.join("share.sock");
    let server = Command::new(&share)
        .arg("serve")
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start share_gl serve: {e}"))?;
    let server = Reap(server);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let consumer = run_program("share_gl consume", Command::new(&share).arg("consume").arg(&socket));
    let mut server = server;
    let served = wait_child(&mut server.0, Duration::from_secs(20));
    let server_out = server.0.wait_with_output_ref();
    println!("--- share_gl serve\n{}", server_out.trim_end());
    add(consumer?);
    served.map_err(|e| format!("share_gl serve: {e}"))?;
    add(result_of("share_gl serve", &server_out)?);

    add(run_program("wrapper (C++)", &mut Command::new(&cpp))?);

    // The C++ channel example in two processes: a producer sends frames, a consumer checks each.
    // The consumer retries its connect until the producer listens.
    let socket = work.join("channel.sock");
    let producer = Command::new(&channel_producer)
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start channel_producer: {e}"))?;
    let mut producer = Reap(producer);
    let consumer = run_program("channel_consumer (C++)", Command::new(&channel_consumer).arg(&socket));
    let produced = wait_child(&mut producer.0, Duration::from_secs(30));
    let producer_out = producer.0.wait_with_output_ref();
    println!("--- channel_producer (C++)\n{}", producer_out.trim_end());
    add(consumer?);
    produced.map_err(|e| format!("channel_producer: {e}"))?;
    add(result_of("channel_producer", &producer_out)?);
    println!("RESULT: passed={passed} skipped={skipped} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `cargo xtask gpu-test`'s C programs: the test suite and the example, linked statically (the
/// GPU machine gets no liblava_flow.so), named `c_api_test` and `c_share_gl` (`run-all.sh` runs
/// them). Returns their paths.
pub fn build_for_gpu() -> Result<Vec<String>, String> {
    run_ok(&mut cargo(&["build", "--package", "lava-flow-c", "--lib"]))?;
    let out = target_dir().join("c-api").join("gpu");
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let lib = target_dir().join("debug").join("liblava_flow_c.a");
    let mut paths = Vec::new();
    for (source, name) in [("tests/c/api_test.c", "c_api_test"), ("examples/c/share_gl.c", "c_share_gl")] {
        let exe = out.join(name);
        output(
            Command::new("cc")
                .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
                .arg(crate_dir().join("include"))
                .arg(crate_dir().join(source))
                .arg("-o")
                .arg(&exe)
                .arg(&lib)
                .args(STATIC_LIBS.split_whitespace()),
        )
        .map_err(|e| format!("compiling {source}: {e}"))?;
        paths.push(exe.display().to_string());
    }
    Ok(paths)
}

fn wait_child(child: &mut Child, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("exited with {status}")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return Err(format!("still running after {} s", timeout.as_secs())),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Reads what a finished child printed (its pipes).
trait ChildOutput {
    fn wait_with_output_ref(&mut self) -> String;
}

impl ChildOutput for Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        if let Some(mut out) = self.stdout.take() {
            let _ = out.read_to_string(&mut text);
        }
        if let Some(mut err) = self.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }
}
