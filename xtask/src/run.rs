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
    /// Set when the output is watched: the start of the test runner's summary line.
    summary_prefix: Option<&'static str>,
}

impl Step {
    pub fn new(name: &str, cmd: Command) -> Step {
        Step { name: name.into(), cmd, keep_going: false, summary_prefix: None }
    }

    /// A failure is recorded and the task goes on to the next step (it still fails at the end).
    pub fn keep_going(mut self) -> Step {
        self.keep_going = true;
        self
    }

    /// Watch the output for tests that printed `SKIPPED (...)` and for the test runner's own
    /// summary line (starting with `summary_prefix`), to repeat them in the summary.
    pub fn collect_skips(mut self, summary_prefix: &'static str) -> Step {
        self.summary_prefix = Some(summary_prefix);
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
        let (status, notes) = match step.summary_prefix {
            Some(prefix) => run_collecting(&mut step.cmd, prefix),
            None => (step.cmd.status(), Vec::new()),
        };
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
fn run_collecting(
    cmd: &mut Command,
    summary_prefix: &'static str,
) -> (std::io::Result<std::process::ExitStatus>, Vec<String>) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (Err(e), Vec::new()),
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = child.stdout.take().map(|s| pump(s, false, summary_prefix, seen.clone()));
    let err = child.stderr.take().map(|s| pump(s, true, summary_prefix, seen.clone()));
    let status = child.wait();
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    (status, seen.notes())
}

/// What the output said that the summary repeats.
#[derive(Default)]
struct Seen {
    summaries: Vec<String>,
    /// (test, reason) of each `SKIPPED (...)` line.
    skips: Vec<(String, String)>,
}

impl Seen {
    /// The runner's summary, then one line per distinct skip reason with the tests it skipped.
    fn notes(self) -> Vec<String> {
        let mut notes = self.summaries;
        let mut reasons: Vec<(String, Vec<String>)> = Vec::new();
        for (test, reason) in self.skips {
            let short = test.rsplit(' ').next().unwrap_or(&test).to_string();
            match reasons.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, tests)) if tests.contains(&short) => {}
                Some((_, tests)) => tests.push(short),
                None => reasons.push((reason, vec![short])),
            }
        }
        for (reason, tests) in reasons {
            let names =
                if tests.iter().all(|t| t.is_empty()) { String::new() } else { format!(": {}", tests.join(", ")) };
            notes.push(format!("{} test(s) {reason}{names}", tests.len()));
        }
        notes
    }
}

fn pump(
    stream: impl Read + Send + 'static,
    to_stderr: bool,
    summary_prefix: &'static str,
    seen: Arc<Mutex<Seen>>,
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
            if let Some(rest) = output_header(trimmed) {
                current_test = rest.to_string();
            } else if let Some(pos) = trimmed.find("SKIPPED (") {
                let skip = (current_test.clone(), trimmed[pos..].to_string());
                seen.lock().unwrap_or_else(|p| p.into_inner()).skips.push(skip);
            } else if trimmed.starts_with(summary_prefix) {
                seen.lock().unwrap_or_else(|p| p.into_inner()).summaries.push(trimmed.to_string());
            }
        }
    })
}

/// The test whose captured output follows: nextest heads it with the test's status line
/// (`PASS [ 0.1s] (3/9) crate::binary test_name`) or, in older versions, `--- STDOUT: name ---`.
fn output_header(line: &str) -> Option<&str> {
    for status in ["PASS [", "FAIL [", "SLOW [", "LEAK [", "FLAKY "] {
        if line.starts_with(status) {
            let after = &line[line.find(']')? + 1..];
            let after = after.trim_start();
            // Skip the "(3/9)" counter when present.
            let name = if after.starts_with('(') { &after[after.find(')')? + 1..] } else { after };
            return Some(name.trim());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::output_header;

    #[test]
    fn finds_the_test_of_captured_output() {
        assert_eq!(
            output_header("PASS [   0.008s] (1/1) lava-flow-cli::cli info_table"),
            Some("lava-flow-cli::cli info_table")
        );
        assert_eq!(output_header("--- STDOUT: lava-flow::smoke opens ---"), Some("lava-flow::smoke opens"));
        assert_eq!(output_header("SKIPPED (vulkan unavailable): no driver"), None);
    }
}
