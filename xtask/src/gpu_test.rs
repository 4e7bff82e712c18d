//! `cargo xtask gpu-test`: build everything the GPU machine runs, here, and pack it into `.gpu/`.
//!
//! The GPU machine has no cargo and no network (../shared/gpu/README.md): it gets the test
//! executables, a release `lava-flow`, the loaders' packages and `.gpu/run-all.sh`, which runs it
//! all and prints one summary line per binary, the skips grouped by reason, an overall PASS or
//! FAIL, and last `N passed, M failed, K skipped`.

use std::process::Stdio;

use crate::run::{cargo, describe, root, target_dir};

const RUN_ALL: &str = r#"#!/bin/bash
# Written by `cargo xtask gpu-test`. On the GPU machine, from the project's root:
#   bash .gpu/on-device.sh bash .gpu/run-all.sh
# Runs every packed test binary one test at a time (fd counts are per process), the C API's
# programs, the Python package's pytest suite (its wheel installed into a venv that sees the
# machine's torch and CuPy), then `lava-flow selftest`, a 20-round soak (fds, RSS, Vulkan and CUDA
# device memory back to their levels), `lava-flow info`, `channel bench` with Vulkan frames and
# CUDA views, and `lava-flow bench`. Prints one line per binary and command, the
# skips grouped by reason (a test that could not run prints `SKIPPED (<tag>): <reason>`, one case
# of several `SKIPPED CASE [<case>] (<tag>): <reason>`), `gpu-test: overall PASS` or `FAIL`, and
# last `N passed, M failed, K skipped` over the test binaries (a skipped test counts as skipped,
# not passed; each command counts as one).
# Logs (as logs.tar.gz), bench.json, info.json and selftest.json go to $OUT when it is set
# (`cargo xtask bench-doc` draws bench.json's plots here).
set -u
here=$(cd "$(dirname "$0")" && pwd)
# Binaries too large to carry as they are travel as bin.tar.xz (xz, or Python's lzma where the
# machine has no xz).
if [ -f "$here/bin.tar.xz" ] && [ ! -d "$here/bin" ]; then
  tar xJf "$here/bin.tar.xz" -C "$here" 2>/dev/null \
    || python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$here/bin.tar.xz" "$here" \
    || exit 1
fi
cli="$here/bin/lava-flow"
# The CLI's own tests run this binary instead of the path they were built with.
export LAVA_FLOW_BIN="$cli"
logs=$(mktemp -d)
status=0
summary=()
passed=0; failed=0; skipped=0
# The tests of a libtest log (run with --nocapture) that printed a whole-test SKIPPED line.
skipped_tests() {
  awk '/^test .* \.\.\. / { t = $0; sub(/^test /, "", t); sub(/ \.\.\. .*/, "", t) }
       /(^|\.\.\. )SKIPPED \(/ { if (!(t in seen)) { seen[t] = 1; n++ } }
       END { print n + 0 }' "$1"
}
for t in "$here"/bin/*; do
  [ -x "$t" ] || continue
  name=${t##*/}
  [ "$name" = lava-flow ] && continue
  # The C API's programs (c_*) run below: they are no libtest binaries.
  case "$name" in c_*) continue ;; esac
  echo "=== $name"
  # --nocapture: the skip lines reach the log (the console gets the result line only).
  "$t" --test-threads=1 --nocapture > "$logs/$name.log" 2>&1
  rc=$?
  result=$(grep -E '^test result:' "$logs/$name.log" | tail -n 1)
  echo "${result:-no test result line (exit $rc)}"
  p=$(sed -nE 's/.* ([0-9]+) passed;.*/\1/p' <<< "$result"); f=$(sed -nE 's/.* ([0-9]+) failed;.*/\1/p' <<< "$result")
  i=$(sed -nE 's/.* ([0-9]+) ignored;.*/\1/p' <<< "$result"); s=$(skipped_tests "$logs/$name.log")
  p=${p:-0}; f=${f:-0}; i=${i:-0}
  if [ "$rc" = 0 ]; then verdict=PASS; else verdict=FAIL; status=1; [ "$f" = 0 ] && f=1; fi
  passed=$((passed + p - s)); failed=$((failed + f)); skipped=$((skipped + s + i))
  summary+=("$verdict $name: $((p - s)) passed, $f failed, $((s + i)) skipped (exit $rc)")
done
# A program of the C API (crates/lava-flow-c): its last line is `RESULT: passed=N skipped=M failed=F`;
# it passes when it exits 0 having run at least one check.
run_c() { # name, command...
  local name=$1; shift
  echo "=== $name"
  "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  local result; result=$(grep -E '^RESULT:' "$logs/$name.log" | tail -n 1)
  echo "${result:-no RESULT line (exit $rc)}"
  local p f s
  p=$(sed -nE 's/.*passed=([0-9]+).*/\1/p' <<< "$result"); f=$(sed -nE 's/.*failed=([0-9]+).*/\1/p' <<< "$result")
  s=$(sed -nE 's/.*skipped=([0-9]+).*/\1/p' <<< "$result")
  p=${p:-0}; f=${f:-0}; s=${s:-0}
  if [ "$rc" = 0 ] && [ "$p" -gt 0 ]; then verdict=PASS; else verdict=FAIL; status=1; [ "$f" = 0 ] && f=1; fi
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  summary+=("$verdict $name: $p passed, $f failed, $s skipped (exit $rc)")
}
if [ -x "$here/bin/c_api_test" ]; then run_c c_api_test "$here/bin/c_api_test"; fi
if [ -x "$here/bin/c_share_gl" ]; then
  sock=$(mktemp -u /tmp/lava-flow-c-XXXXXX.sock)
  "$here/bin/c_share_gl" serve "$sock" > "$logs/c_share_gl_serve.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 400); do [ -S "$sock" ] && break; sleep 0.05; done
  run_c c_share_gl "$here/bin/c_share_gl" consume "$sock"
  if ! wait "$serve_pid"; then
    summary+=("FAIL c_share_gl serve (see c_share_gl_serve.log)"); failed=$((failed + 1)); status=1
  fi
fi
# The Python package: its wheel into a venv that also sees the machine's torch and CuPy, then its
# pytest suite (crates/lava-flow-py/tests, from the checkout) against the packed CLI.
if [ -d "$here/python/wheels" ] && command -v python3 > /dev/null; then
  echo "=== python: pytest"
  venv=$(mktemp -d)/venv
  if python3 -m venv --system-site-packages "$venv" > "$logs/python-venv.log" 2>&1 \
     && "$venv/bin/python" -m pip install --disable-pip-version-check --quiet --no-index \
          --find-links "$here/python/wheels" lava_flow pytest numpy >> "$logs/python-venv.log" 2>&1; then
    "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider crates/lava-flow-py/tests > "$logs/python-pytest.log" 2>&1
    rc=$?
    result=$(grep -E '(passed|failed)' "$logs/python-pytest.log" | tail -n 1)
    echo "${result:-no pytest summary (exit $rc)}"
    p=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p; s/^([0-9]+) passed.*/\1/p' <<< "$result" | head -n 1)
    f=$(sed -nE 's/.*[ ,]([0-9]+) failed.*/\1/p; s/^([0-9]+) failed.*/\1/p' <<< "$result" | head -n 1)
    s=$(sed -nE 's/.*[ ,]([0-9]+) skipped.*/\1/p' <<< "$result" | head -n 1)
    p=${p:-0}; f=${f:-0}; s=${s:-0}
    if [ "$rc" = 0 ] && [ "$p" -gt 0 ]; then verdict=PASS; else verdict=FAIL; status=1; [ "$f" = 0 ] && f=1; fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    summary+=("$verdict python pytest: $p passed, $f failed, $s skipped (exit $rc)")
  else
    summary+=("FAIL python: the venv or the wheels did not install (see python-venv.log)"); failed=$((failed + 1)); status=1
  fi
fi
run_cli() { # label, arguments...
  local label=$1; shift
  echo "=== lava-flow $label"
  "$cli" "$@" 2>&1 | tee "$logs/lava-flow-$label.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then summary+=("PASS lava-flow $label"); passed=$((passed + 1))
  else summary+=("FAIL lava-flow $label (exit $rc)"); failed=$((failed + 1)); status=1; fi
}
if [ -x "$cli" ]; then
  run_cli selftest selftest
  run_cli soak selftest --soak 20
  run_cli info info
  # Channels: Vulkan frames (timeline sync where the device exports it) and CUDA views.
  run_cli channel-vulkan channel bench --size 64K,16M --consumers 1,2 --frames 2000 --api vulkan
  run_cli channel-cuda channel bench --size 64K,16M --consumers 1 --frames 2000 --api cuda
  if [ -n "${OUT:-}" ]; then
    "$cli" info --json > "$OUT/info.json" 2>/dev/null
    "$cli" selftest --json > "$OUT/selftest.json" 2>/dev/null
    run_cli bench bench --json "$OUT/bench.json"
  else
    run_cli bench bench
  fi
else
  summary+=("FAIL lava-flow: not in $here/bin"); failed=$((failed + 1)); status=1
fi
# The device tool brings back at most 8 files: the logs travel as one archive.
[ -n "${OUT:-}" ] && tar czf "$OUT/logs.tar.gz" -C "$logs" . 2>/dev/null
echo "=== summary"
printf '%s\n' "${summary[@]}"
reasons=$(cat "$logs"/*.log | grep -oE '(^|\.\.\. )SKIPPED (CASE \[[^]]*\] )?\(.*' \
  | sed -E 's/^\.\.\. //; s/^SKIPPED CASE \[[^]]*\] /SKIPPED /' | sort | uniq -c | sort -rn)
if [ -n "$reasons" ]; then echo "=== skipped, by reason (count of tests and cases)"; echo "$reasons"; fi
echo "gpu-test: overall $([ $status = 0 ] && echo PASS || echo FAIL)"
echo "$passed passed, $failed failed, $skipped skipped"
exit $status
"#;

pub fn gpu_test() -> Result<(), String> {
    let pack = root().join("../shared/gpu/pack.sh");
    if !pack.exists() {
        return Err(format!(
            "{} not found: the GPU harness lives in shared/ beside the project's root",
            pack.display()
        ));
    }

    println!("==> building test binaries (debug, all features)");
    let mut build_tests =
        cargo(&["test", "--workspace", "--exclude", "xtask", "--all-features", "--no-run", "--message-format=json"]);
    build_tests.stderr(Stdio::inherit());
    let out = build_tests.output().map_err(|e| format!("could not run {}: {e}", describe(&build_tests)))?;
    if !out.status.success() {
        return Err("building the test binaries failed (see above)".into());
    }
    let mut paths = test_executables(&String::from_utf8_lossy(&out.stdout));
    if paths.is_empty() {
        return Err("cargo reported no test executables".into());
    }
    paths.sort();
    paths.dedup();
    // The MPI tests link Open MPI's libmpi, which the GPU machine does not have; they run on the
    // CPU machine (docs/REMOTE.md). Every other binary links MPI only where it calls it (the
    // linker's --as-needed), so none of them needs libmpi there.
    paths.retain(|p| {
        !std::path::Path::new(p).file_name().is_some_and(|n| n.to_string_lossy().starts_with("remote_mpi-"))
    });
    for p in &paths {
        println!("    {p}");
    }

    println!("==> building lava-flow (release)");
    let mut build_cli = cargo(&["build", "--release", "--package", "lava-flow-cli", "--bin", "lava-flow"]);
    let status = build_cli.status().map_err(|e| format!("could not run {}: {e}", describe(&build_cli)))?;
    if !status.success() {
        return Err("building lava-flow failed".into());
    }
    paths.push(target_dir().join("release/lava-flow").display().to_string());

    println!("==> building the C API's test and example (static, debug)");
    paths.extend(crate::capi::build_for_gpu()?);

    println!("==> packing into .gpu/");
    let mut pack_cmd = std::process::Command::new("bash");
    pack_cmd.arg(&pack).args(&paths).current_dir(root());
    let status = pack_cmd.status().map_err(|e| format!("could not run pack.sh: {e}"))?;
    if !status.success() {
        return Err("pack.sh failed".into());
    }
    let gpu_dir = root().join(".gpu");
    let mut total = strip_and_measure(&gpu_dir)?;
    println!("xtask: .gpu/ holds {} MiB", total >> 20);
    if total > CARRY_LIMIT {
        // Binaries compress about eight to one with xz (three to one with gzip, which no longer
        // fits); run-all.sh unpacks them on the GPU machine.
        let mut tar = std::process::Command::new("tar");
        tar.args(["cJf", "bin.tar.xz", "bin"]).current_dir(&gpu_dir);
        if !tar.status().is_ok_and(|s| s.success()) {
            return Err("packing .gpu/bin into bin.tar.xz failed (is xz-utils installed?)".into());
        }
        std::fs::remove_dir_all(gpu_dir.join("bin")).map_err(|e| format!("removing .gpu/bin: {e}"))?;
        total = size_of(&gpu_dir);
        println!("xtask: packed the binaries into .gpu/bin.tar.xz: .gpu/ now holds {} MiB", total >> 20);
    }
    if total > CARRY_LIMIT {
        return Err(format!(
            ".gpu/ is {} MiB, more than the {} MiB the device tool carries",
            total >> 20,
            CARRY_LIMIT >> 20
        ));
    }
    println!("==> the Python package's wheel (release) and pytest's wheels into .gpu/python/");
    crate::python::pack_for_gpu(&gpu_dir.join("python"))?;
    total = size_of(&gpu_dir);
    println!("xtask: .gpu/ holds {} MiB with the Python wheels", total >> 20);
    if total > CARRY_LIMIT {
        return Err(format!(
            ".gpu/ is {} MiB with the Python wheels, more than the {} MiB the device tool carries",
            total >> 20,
            CARRY_LIMIT >> 20
        ));
    }
    let run_all = root().join(".gpu/run-all.sh");
    std::fs::write(&run_all, RUN_ALL).map_err(|e| format!("writing {}: {e}", run_all.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&run_all, std::fs::Permissions::from_mode(0o755));
    }
    println!(
        "\nPacked {} test binaries and lava-flow into .gpu/. Run them on the GPU machine with the device tool:\n  \
         carry:   [\".gpu\"]\n  command: bash .gpu/on-device.sh bash .gpu/run-all.sh\n\
         It ends with `gpu-test: overall PASS` or `FAIL` and the counts; logs, info.json and bench.json land in \
         $OUT.",
        paths.len() - 1
    );
    Ok(())
}

/// The `"executable"` of each test artifact in cargo's JSON messages: those whose `profile` (not
/// `target`, where `"test":true` only means "testable") says `"test":true`.
fn test_executables(json_lines: &str) -> Vec<String> {
    json_lines
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#))
        .filter(|l| {
            l.find(r#""profile":{"#).is_some_and(|start| {
                let profile = &l[start..];
                profile[..profile.find('}').unwrap_or(profile.len())].contains(r#""test":true"#)
            })
        })
        .filter_map(|l| json_string_field(l, "executable"))
        .collect()
}

/// The device tool carries at most this much.
const CARRY_LIMIT: u64 = 64 << 20;

/// Strips debug info from the packed binaries (the test build carries full DWARF, several times
/// the code): panics still name file and line, backtraces name functions. Returns the size of
/// `.gpu/` afterwards.
fn strip_and_measure(dir: &std::path::Path) -> Result<u64, String> {
    let bin = dir.join("bin");
    let entries: Vec<_> = std::fs::read_dir(&bin)
        .map_err(|e| format!("reading {}: {e}", bin.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    let stripped = std::process::Command::new("strip").arg("--strip-debug").args(&entries).status();
    if !stripped.is_ok_and(|s| s.success()) {
        println!("xtask: could not strip debug info (is binutils' `strip` installed?); packing as built");
    }
    Ok(size_of(dir))
}

/// Bytes in the files below `path`.
fn size_of(path: &std::path::Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::read_dir(path).map(|d| d.flatten().map(|e| size_of(&e.path())).sum()).unwrap_or(0)
        }
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// The value of a string field in one line of JSON (`"name":"value"`), unescaped; `None` for null.
fn json_string_field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key)? + key.len();
    let mut value = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_test_executables_only() {
        let lines = concat!(
            r#"{"reason":"compiler-artifact","profile":{"test":true},"executable":"/t/debug/deps/smoke-1"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"test":true},"profile":{"test":false},"executable":"/t/debug/lava-flow"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","profile":{"test":true},"executable":null}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(test_executables(lines), vec!["/t/debug/deps/smoke-1".to_string()]);
    }

    #[test]
    fn unescapes_strings() {
        assert_eq!(json_string_field(r#"{"executable":"/a\"b\\c"}"#, "executable").as_deref(), Some("/a\"b\\c"));
    }
}
