//! Running the steps of a task, timing them, and the summary printed last.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where cargo puts build outputs.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        }
        None => root().join("target"),
    }
}

/// A `cargo` command (the cargo that runs xtask) in the workspace root.
pub fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args).current_dir(root());
    cmd
}

/// Whether `cargo nextest` is installed.
pub fn has_nextest() -> bool {
    cargo(&["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Renders a command for the log: program and arguments, with the environment it adds.
pub fn describe(cmd: &Command) -> String {
    let mut text = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            text.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    text.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        text.push(' ');
        text.push_str(&a.to_string_lossy());
    }
    text
}

/// One command of a task.
pub struct Step {
    name: String,
    cmd: Command,
    keep_going: bool,
    collect_skips: bool,
}

impl Step {
    pub fn new(name: &str, cmd: Command) -> Step {
        Step { name: name.into(), cmd, keep_going: false, collect_skips: false }
    }

    /// A failure is recorded and the task goes on to the next step (it still fails at the end).
    pub fn keep_going(mut self) -> Step {
        self.keep_going = true;
        self
    }

    /// Watch the output for tests that printed `SKIPPED (...)` and for the test runner's own
    /// summary line, to repeat them in the summary.
    pub fn collect_skips(mut self) -> Step {
        self.collect_skips = true;
        self
    }
}

struct Record {
    name: String,
    passed: bool,
    elapsed: Duration,
    notes: Vec<String>,
}

/// What ran, how long it took, and what it said worth repeating.
#[derive(Default)]
pub struct Summary {
    records: Vec<Record>,
}

impl Summary {
    /// Runs `step`, returning whether it passed; `Err` when it failed and may not be passed over.
    pub fn run(&mut self, mut step: Step) -> Result<bool, String> {
        println!("\n==> {}: {}", step.name, describe(&step.cmd));
        let _ = std::io::stdout().flush();
        let started = Instant::now();
        let (status, notes) =
            if step.collect_skips { run_collecting(&mut step.cmd) } else { (step.cmd.status(), Vec::new()) };
        let elapsed = started.elapsed();
        let passed = match &status {
            Ok(s) => s.success(),
            Err(e) => {
                eprintln!("xtask: could not start `{}`: {e}", describe(&step.cmd));
                false
            }
        };
        println!("<== {}: {} in {}", step.name, if passed { "ok" } else { "FAILED" }, fmt_duration(elapsed));
        self.records.push(Record { name: step.name.clone(), passed, elapsed, notes });
        if !passed && !step.keep_going {
            return Err(format!("{} failed", step.name));
        }
        Ok(passed)
    }

    pub fn all_passed(&self) -> bool {
        self.records.iter().all(|r| r.passed)
    }

    /// Prints one line per step, then the notes (skips, runner summaries), then the verdict.
    pub fn print(&self, started: Instant) {
        let width = self.records.iter().map(|r| r.name.len()).max().unwrap_or(0);
        println!("\n== summary");
        for r in &self.records {
            println!(
                "  {:<width$}  {:<6}  {:>8}",
                r.name,
                if r.passed { "ok" } else { "FAILED" },
                fmt_duration(r.elapsed)
            );
        }
        for r in &self.records {
            for n in &r.notes {
                println!("  {}: {n}", r.name);
            }
        }
        println!("== {} in {}", if self.all_passed() { "PASS" } else { "FAIL" }, fmt_duration(started.elapsed()));
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.1}s")
    }
}

/// Runs `cmd` with its output passed through line by line, and keeps the lines worth repeating:
/// the runner's summary, and each distinct `SKIPPED (...)` line with the test it came from.
fn run_collecting(cmd: &mut Command) -> (std::io::Result<std::process::ExitStatus>, Vec<String>) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (Err(e), Vec::new()),
    };
    let notes = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = child.stdout.take().map(|s| pump(s, false, notes.clone()));
    let err = child.stderr.take().map(|s| pump(s, true, notes.clone()));
    let status = child.wait();
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
    let mut notes = std::mem::take(&mut *notes.lock().unwrap_or_else(|p| p.into_inner()));
    let mut seen = std::collections::HashSet::new();
    notes.retain(|n| seen.insert(n.clone()));
    (status, notes)
}

fn pump(
    stream: impl Read + Send + 'static,
    to_stderr: bool,
    notes: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut current_test = String::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if to_stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            let trimmed = line.trim();
            // nextest heads each test's captured output with a line naming the binary and test.
            if let Some(rest) = output_header(trimmed) {
                current_test = rest.to_string();
            } else if let Some(pos) = trimmed.find("SKIPPED (") {
                let note = if current_test.is_empty() {
                    format!("skip: {}", &trimmed[pos..])
                } else {
                    format!("skip: {current_test}: {}", &trimmed[pos..])
                };
                notes.lock().unwrap_or_else(|p| p.into_inner()).push(note);
            } else if trimmed.starts_with("Summary [") || trimmed.starts_with("test result:") {
                notes.lock().unwrap_or_else(|p| p.into_inner()).push(trimmed.to_string());
            }
        }
    })
}

/// The test named by a nextest output header (`--- STDOUT: bin test ---`, or the box-drawn form).
fn output_header(line: &str) -> Option<&str> {
    for marker in ["STDOUT:", "STDERR:"] {
        if let Some(pos) = line.find(marker) {
            let prefix = &line[..pos];
            if prefix.chars().all(|c| c == '-' || c == '─' || c.is_whitespace()) {
                let rest = line[pos + marker.len()..].trim();
                return Some(rest.trim_end_matches(|c: char| c == '-' || c == '─' || c.is_whitespace()));
            }
        }
    }
    None
}
