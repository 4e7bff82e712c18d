//! Running the steps of a task, timing them, and the summary printed last: one line per step,
//! the skips grouped by reason, the verdict, and last, alone on its line,
//! `N passed, M failed, K skipped`: every test of the steps that run tests (self-reported skips
//! counted as skipped), and every other step as one.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{self, Tally, TestRun};

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

/// How a step's result is counted in the last line.
enum Count {
    /// One step: passed or failed.
    Step,
    /// nextest with a JUnit report (the `suite` profile of .config/nextest.toml), written to one
    /// of these paths: every test case.
    Junit(Vec<PathBuf>),
    /// libtest's output (doc tests, `cargo test`): its `test result:` lines and the skip markers.
    Libtest,
}

/// One step of a task: a command, or several run one after another (all must pass).
pub struct Step {
    name: String,
    cmds: Vec<Command>,
    keep_going: bool,
    count: Count,
    /// Output goes to the terminal as it comes (`demo`, whose output is what the user asked for).
    shown: bool,
}

impl Step {
    pub fn new(name: &str, cmd: Command) -> Step {
        Step { name: name.into(), cmds: vec![cmd], keep_going: false, count: Count::Step, shown: false }
    }

    /// Several commands as one step; each runs even when one before it failed.
    pub fn all(name: &str, cmds: Vec<Command>) -> Step {
        Step { name: name.into(), cmds, keep_going: false, count: Count::Step, shown: false }
    }

    /// A failure is recorded and the task goes on to the next step (it still fails at the end).
    pub fn keep_going(mut self) -> Step {
        self.keep_going = true;
        self
    }

    /// The commands' output goes to the terminal, not to a log.
    pub fn shown(mut self) -> Step {
        self.shown = true;
        self
    }

    /// The command is `cargo nextest run --profile suite`: count its tests from the JUnit report
    /// it writes (stale reports are removed first).
    pub fn junit(mut self, paths: Vec<PathBuf>) -> Step {
        self.count = Count::Junit(paths);
        self
    }

    /// The command runs libtest binaries: count its tests from their output.
    pub fn libtest(mut self) -> Step {
        self.count = Count::Libtest;
        self
    }
}

struct Record {
    name: String,
    passed: bool,
    elapsed: Duration,
    /// The tests it ran, for steps that run tests and could be read.
    tests: Option<TestRun>,
}

impl Record {
    /// What the step adds to the last line: its tests, or itself as one.
    fn tally(&self) -> Tally {
        match &self.tests {
            Some(run) => {
                let mut t = run.tally;
                // A step that failed with no failed test (a build error, a crash of the runner)
                // is itself a failure.
                if !self.passed && t.failed == 0 {
                    t.failed += 1;
                }
                t
            }
            None if self.passed => Tally { passed: 1, ..Tally::default() },
            None => Tally { failed: 1, ..Tally::default() },
        }
    }
}

/// What ran, how long it took, and what the tests reported.
#[derive(Default)]
pub struct Summary {
    records: Vec<Record>,
}

impl Summary {
    /// Runs `step`, returning whether it passed; `Err` when it failed and may not be passed over.
    ///
    /// The step's output (stdout and stderr of every command) goes to a log file under
    /// `target/xtask-logs/`, not to the terminal: a step prints one line, and a failed step then
    /// prints its log (the last [`LOG_LINES_ON_FAILURE`] lines of it, with the file's path).
    pub fn run(&mut self, mut step: Step) -> Result<bool, String> {
        let started = Instant::now();
        let mut passed = true;
        if let Count::Junit(paths) = &step.count {
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
        }
        let log_path = log_dir().join(format!("{}.log", slug(&step.name)));
        if step.shown {
            println!("==> {}", step.name);
        } else {
            print!("{:<52} ", step.name);
        }
        let _ = std::io::stdout().flush();
        let mut log = String::new();
        for cmd in &mut step.cmds {
            log.push_str(&format!("$ {}\n", describe(cmd)));
            let status = if step.shown { cmd.status() } else { run_capturing(cmd, &mut log) };
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    log.push_str(&format!("xtask: `{}` exited with {s}\n", describe(cmd)));
                    passed = false;
                }
                Err(e) => {
                    log.push_str(&format!("xtask: could not start `{}`: {e}\n", describe(cmd)));
                    passed = false;
                }
            }
        }
        let elapsed = started.elapsed();
        let _ = std::fs::create_dir_all(log_dir());
        let saved = std::fs::write(&log_path, &log).is_ok();
        let tests = match &step.count {
            Count::Step => None,
            Count::Libtest => Some(report::from_libtest(&log)),
            Count::Junit(paths) => {
                paths.iter().find_map(|p| std::fs::read_to_string(p).ok()).map(|xml| report::from_junit(&xml))
            }
        };
        let record = Record { name: step.name.clone(), passed, elapsed, tests };
        let counted = record.tests.as_ref().map(|_| format!("  {}", record.tally())).unwrap_or_default();
        if step.shown {
            print!("<== {} ", step.name);
        }
        println!("{:<6} {:>8}{counted}", if passed { "ok" } else { "FAILED" }, fmt_duration(elapsed));
        if !passed {
            print_failure_log(&step.name, &log, saved.then_some(&log_path));
        }
        self.records.push(record);
        if !passed && !step.keep_going {
            return Err(format!("{} failed", step.name));
        }
        Ok(passed)
    }

    /// Records a step that could not be run and must not be passed over (a requirement
    /// `LAVA_FLOW_REQUIRE` names is missing): it prints as failed, with `why`.
    pub fn failed(&mut self, name: &str, why: &str) -> Result<bool, String> {
        println!("{name:<52} FAILED {:>8}\n  {why}", fmt_duration(Duration::ZERO));
        self.records.push(Record { name: name.into(), passed: false, elapsed: Duration::ZERO, tests: None });
        Ok(false)
    }

    /// The names of the steps run so far.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.records.iter().map(|r| r.name.as_str())
    }

    pub fn all_passed(&self) -> bool {
        self.records.iter().all(|r| r.passed)
    }

    /// Every test and step, counted as the last line says.
    pub fn tally(&self) -> Tally {
        let mut total = Tally::default();
        for r in &self.records {
            total.add(r.tally());
        }
        total
    }

    /// Prints one line per step, the skips grouped by reason, the verdict, and last, alone on
    /// its line, `N passed, M failed, K skipped`.
    pub fn print(&self, started: Instant) {
        let width = self.records.iter().map(|r| r.name.len()).max().unwrap_or(0);
        println!("\n== summary");
        for r in &self.records {
            let tests = r.tests.as_ref().map(|_| format!("  {}", r.tally())).unwrap_or_default();
            println!(
                "  {:<width$}  {:<6}  {:>8}{tests}",
                r.name,
                if r.passed { "ok" } else { "FAILED" },
                fmt_duration(r.elapsed)
            );
        }
        let skips: Vec<report::Skip> =
            self.records.iter().filter_map(|r| r.tests.as_ref()).flat_map(|t| t.skips.iter().cloned()).collect();
        if !skips.is_empty() {
            println!("== skipped, by reason");
            for line in report::grouped(&skips) {
                println!("  {line}");
            }
        }
        println!("== {} in {}", if self.all_passed() { "PASS" } else { "FAIL" }, fmt_duration(started.elapsed()));
        println!("{}", self.tally());
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

/// How much of a failed step's log is printed (the end of it, where the failure is).
pub const LOG_LINES_ON_FAILURE: usize = 400;

/// Where each step's output is kept: `target/xtask-logs/<step>.log`, rewritten by every run.
pub fn log_dir() -> PathBuf {
    target_dir().join("xtask-logs")
}

/// A file name for a step: its name's letters and digits, the rest as `-`.
fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_matches('-').to_string()
}

/// The end of a failed step's log, framed by its name and the file that holds all of it.
fn print_failure_log(name: &str, log: &str, path: Option<&PathBuf>) {
    let lines: Vec<&str> = log.lines().collect();
    let shown = &lines[lines.len().saturating_sub(LOG_LINES_ON_FAILURE)..];
    let whole = path.map(|p| format!(" (all of it: {})", p.display())).unwrap_or_default();
    if shown.len() < lines.len() {
        println!("---- {name}: the last {} of {} lines of its output{whole}", shown.len(), lines.len());
    } else {
        println!("---- {name}: its output{whole}");
    }
    for line in shown {
        println!("{line}");
    }
    println!("---- end of {name}");
}

/// Runs `cmd` with stdout and stderr captured, both appended to `output` (stderr's lines after
/// stdout's: libtest's and nextest's counts are read from stdout, which stays in order).
fn run_capturing(cmd: &mut Command, output: &mut String) -> std::io::Result<std::process::ExitStatus> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().map(pump);
    let err = child.stderr.take().map(pump);
    let status = child.wait();
    for t in [out, err].into_iter().flatten() {
        if let Ok(text) = t.join() {
            output.push_str(&text);
        }
    }
    status
}

/// Reads a child's stream to its end on a thread of its own (a full pipe would block the child).
fn pump(mut stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, passed: bool, tests: Option<TestRun>) -> Record {
        Record { name: name.into(), passed, elapsed: Duration::ZERO, tests }
    }

    #[test]
    fn the_last_line_counts_tests_and_every_other_step_once() {
        let junit = r#"<testsuites tests="3" skipped="0">
<testcase name="a" classname="lava-flow::x"><system-out>SKIPPED (cuda unavailable): no libcuda</system-out></testcase>
<testcase name="b" classname="lava-flow::x"/>
<testcase name="c" classname="lava-flow::x"><system-out>ok</system-out></testcase>
</testsuites>"#;
        let summary = Summary {
            records: vec![
                record("cargo fmt --check", true, None),
                record("cargo nextest run", true, Some(report::from_junit(junit))),
                record("doc tests", true, Some(report::from_libtest("test result: ok. 4 passed; 0 failed; 0 ignored"))),
                record("soak", false, None),
            ],
        };
        assert_eq!(summary.tally(), Tally { passed: 1 + 2 + 4, failed: 1, skipped: 1 });
        assert_eq!(summary.tally().to_string(), "7 passed, 1 failed, 1 skipped");
    }

    #[test]
    fn a_test_step_that_failed_without_a_failed_test_counts_as_a_failure() {
        let build_error = record("cargo nextest run", false, Some(TestRun::default()));
        assert_eq!(build_error.tally(), Tally { passed: 0, failed: 1, skipped: 0 });
        let unreadable = record("cargo nextest run", false, None);
        assert_eq!(unreadable.tally(), Tally { passed: 0, failed: 1, skipped: 0 });
    }

    #[test]
    fn a_step_keeps_its_output_in_a_log_and_a_failed_step_is_recorded() {
        let mut summary = Summary::default();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out-line; echo err-line >&2; exit 3"]);
        assert_eq!(summary.run(Step::new("xtask self-check: failing step", cmd).keep_going()), Ok(false));
        let log = std::fs::read_to_string(log_dir().join("xtask-self-check-failing-step.log")).unwrap();
        assert!(log.contains("out-line") && log.contains("err-line") && log.contains("exited with"), "{log}");
        assert!(!summary.all_passed());
        let mut ok = Command::new("true");
        ok.arg("--");
        assert!(Summary::default().run(Step::new("xtask self-check: passing step", ok)).unwrap());
    }
}
