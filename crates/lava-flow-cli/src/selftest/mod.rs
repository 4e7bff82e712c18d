//! `lava-flow selftest`: every sharing path this machine supports, end to end with a data check.
//!
//! Each path moves a known pattern one way and a different pattern back, and compares every byte.
//! A path that needs something the machine lacks is listed as skipped with the reason; one that
//! runs and fails makes the exit code 1. `LAVA_FLOW_REQUIRE` (as on the GPU machine) turns the
//! skips of the APIs it names into failures.

pub mod cuda;
pub mod gl;
pub mod ipc;
pub mod opencl;
mod peer;
pub mod pool;
pub mod semaphores;
pub mod soak;
pub mod vulkan;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::table::{self, Table};
use crate::CmdResult;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Repeat every runnable path N times after a warm-up round and check that the process's
    /// open fds and lava-flow's objects come back to where they were and that its memory does not
    /// grow over the second half of the rounds.
    #[arg(long, value_name = "N")]
    soak: Option<u32>,
    /// Run only the paths whose name contains this text (repeat to name several).
    #[arg(long, value_name = "TEXT")]
    only: Vec<String>,
    /// Make the peer of the paths whose name contains TEXT write one wrong byte, to see the data
    /// check catch it.
    #[arg(long, value_name = "TEXT", hide = true)]
    corrupt: Option<String>,
}

/// How a path ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "reason", rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Fail(String),
    Skipped(String),
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct PathResult {
    /// What the path needs ("vulkan", "cuda", "opencl", "gl", "semaphores", or several joined by
    /// `+`): the names `LAVA_FLOW_REQUIRE` matches.
    pub api: &'static str,
    pub path: String,
    /// Bytes moved each way.
    pub size: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Wall time of the whole path, set-up and checks included.
    #[serde(serialize_with = "as_millis")]
    pub time_ms: Duration,
    /// How many times it ran (more than one under `--soak`).
    pub runs: u32,
    /// What a passing path checked, where it says (for example "4 MiB checked").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    // Microsecond resolution: the digits beyond are noise.
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// Why a path stopped.
#[derive(Debug)]
pub enum PathError {
    /// The API is missing here: no library, no device. A skip, or a failure where
    /// `LAVA_FLOW_REQUIRE` names the API.
    Unavailable(String),
    /// The API is here but its driver's capability query says no (a format, tiling or memory
    /// kind it cannot share). Always a skip: the driver, not the machine's set-up, decides it.
    Unsupported(String),
    /// It ran and went wrong: a wrong byte, an error from a call that should have worked.
    Failed(String),
}

impl From<lava_flow::Error> for PathError {
    fn from(e: lava_flow::Error) -> Self {
        match e {
            lava_flow::Error::Unsupported { .. } => PathError::Unsupported(e.to_string()),
            e if e.is_unavailable() => PathError::Unavailable(e.to_string()),
            e => PathError::Failed(e.to_string()),
        }
    }
}

impl From<std::io::Error> for PathError {
    fn from(e: std::io::Error) -> Self {
        PathError::Failed(e.to_string())
    }
}

/// What a path body returns.
pub type Step<T = ()> = Result<T, PathError>;

/// Shorthand for a failure with a message.
pub fn fail<T>(msg: impl Into<String>) -> Step<T> {
    Err(PathError::Failed(msg.into()))
}

/// Runs the paths, prints progress, collects the rows.
pub struct Runner {
    results: Vec<PathResult>,
    only: Vec<String>,
    corrupt: Option<String>,
    progress: Progress,
    /// Set for the soak rounds: paths that skipped or failed in the first round are not repeated.
    repeat_of: Option<Vec<PathResult>>,
}

enum Progress {
    /// A status line rewritten in place (stderr is a terminal).
    Line,
    /// One line per finished path (long runs into a log).
    Lines,
    Quiet,
}

impl Runner {
    fn new(only: Vec<String>, corrupt: Option<String>, progress: Progress) -> Runner {
        Runner { results: Vec::new(), only, corrupt, progress, repeat_of: None }
    }

    /// Whether the peer of `path` should spoil one byte (the hidden `--corrupt` option).
    pub fn corrupt(&self, path: &str) -> bool {
        self.corrupt.as_deref().is_some_and(|c| path.contains(c))
    }

    fn wanted(&self, path: &str) -> bool {
        if !self.only.is_empty() && !self.only.iter().any(|o| path.contains(o.as_str())) {
            return false;
        }
        match &self.repeat_of {
            Some(first) => first.iter().any(|r| r.path == path && r.outcome == Outcome::Pass),
            None => true,
        }
    }

    /// Whether any of `paths` is to run (see `--only`; in soak rounds, only paths that passed the
    /// first round run). Each group asks before it opens a device, so that a soak narrowed with
    /// `--only` opens no device for the groups it leaves out and can be bisected by path.
    pub fn wants_any<S: AsRef<str>>(&self, paths: impl IntoIterator<Item = S>) -> bool {
        paths.into_iter().any(|p| self.wanted(p.as_ref()))
    }

    /// Lists a path that cannot run here.
    pub fn skip(&mut self, api: &'static str, path: &str, size: u64, reason: impl Into<String>) {
        if !self.wanted(path) || self.repeat_of.is_some() {
            return;
        }
        let outcome = required_or(api, Outcome::Skipped(reason.into()));
        self.record(PathResult {
            api,
            path: path.into(),
            size,
            outcome,
            time_ms: Duration::ZERO,
            runs: 1,
            detail: None,
        });
    }

    /// Lists paths that cannot run here because something they all need is missing (a library,
    /// the Vulkan device): one row `summary` (api, path) saying why, or, where `LAVA_FLOW_REQUIRE`
    /// names the API of any of `paths`, one row per path, so that every path of a required API
    /// fails, not only the first. The summary row stands for the paths under `--only` too.
    pub fn skip_all(
        &mut self,
        summary: (&'static str, &str),
        paths: &[(&'static str, String)],
        reason: impl Into<String>,
    ) {
        let reason = reason.into();
        let required = |api: &str| api.split('+').any(lava_flow_diag::testing::is_required);
        if paths.iter().any(|(api, _)| required(api)) {
            for (api, path) in paths {
                self.skip(api, path, 0, reason.clone());
            }
            return;
        }
        let (api, path) = summary;
        if self.repeat_of.is_some() || !(self.wanted(path) || paths.iter().any(|(_, p)| self.wanted(p))) {
            return;
        }
        let outcome = required_or(api, Outcome::Skipped(reason));
        self.record(PathResult {
            api,
            path: path.into(),
            size: 0,
            outcome,
            time_ms: Duration::ZERO,
            runs: 1,
            detail: None,
        });
    }

    /// Runs one path; a panic inside it is caught and reported as that path's failure.
    pub fn run(&mut self, api: &'static str, path: &str, size: u64, body: impl FnOnce(&Runner) -> Step) {
        self.run_detailed(api, path, size, |r| body(r).map(|()| None));
    }

    /// Runs one path whose body says what it checked.
    ///
    /// `api` names what the path needs, joined by `+` where it needs several ("cuda+semaphores"):
    /// a skip is a failure when `LAVA_FLOW_REQUIRE` names any of them. A driver's capability
    /// refusal stays a skip, except for paths that need `semaphores`: there the capability is the
    /// very thing required.
    pub fn run_detailed(
        &mut self,
        api: &'static str,
        path: &str,
        size: u64,
        body: impl FnOnce(&Runner) -> Step<Option<String>>,
    ) {
        if !self.wanted(path) {
            return;
        }
        if let Progress::Line = self.progress {
            eprint!("\r\x1b[Kselftest: {path} ...");
            let _ = std::io::stderr().flush();
        }
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(self)));
        let time_ms = started.elapsed();
        let (outcome, detail) = match result {
            Ok(r) => outcome_of(api, r),
            Err(panic) => (Outcome::Fail(format!("panicked: {}", panic_text(&panic))), None),
        };
        self.record(PathResult { api, path: path.into(), size, outcome, time_ms, runs: 1, detail });
    }

    /// Records a path that an importer's own self-test already ran (`result`: what it proved, or
    /// the error that stopped it), with the same rules as [`Runner::run_detailed`].
    /// Its time is the importer's, not known here: the table shows none.
    #[cfg_attr(not(any(feature = "gl", feature = "opencl")), allow(dead_code))]
    pub fn record_result(&mut self, api: &'static str, path: &str, size: u64, result: lava_flow::Result<String>) {
        if !self.wanted(path) {
            return;
        }
        let (outcome, detail) = outcome_of(api, result.map(Some).map_err(PathError::from));
        self.record(PathResult { api, path: path.into(), size, outcome, time_ms: Duration::ZERO, runs: 1, detail });
    }

    fn record(&mut self, r: PathResult) {
        if let Progress::Lines = self.progress {
            eprintln!("selftest: {}: {} ({})", r.path, outcome_text(&r.outcome), table::duration(r.time_ms));
        }
        self.results.push(r);
    }
}

/// How a path's body ended, as a row: see [`Runner::run_detailed`] for the rules.
fn outcome_of(api: &str, result: Step<Option<String>>) -> (Outcome, Option<String>) {
    match result {
        Ok(detail) => (Outcome::Pass, detail),
        Err(PathError::Failed(m)) => (Outcome::Fail(m), None),
        Err(PathError::Unavailable(m)) => (required_or(api, Outcome::Skipped(m)), None),
        Err(PathError::Unsupported(m)) if api.split('+').any(|a| a == "semaphores") => {
            (required_or(api, Outcome::Skipped(m)), None)
        }
        Err(PathError::Unsupported(m)) => (Outcome::Skipped(m), None),
    }
}

/// A skip of an API that `LAVA_FLOW_REQUIRE` names is a failure (`api` may join several with `+`).
fn required_or(api: &str, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Skipped(reason) if api.split('+').any(lava_flow_diag::testing::is_required) => {
            Outcome::Fail(format!("{api} is required (LAVA_FLOW_REQUIRE) but the path was skipped: {reason}"))
        }
        other => other,
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Pass => "PASS".into(),
        Outcome::Fail(m) => format!("FAIL: {m}"),
        Outcome::Skipped(m) => format!("skipped: {m}"),
    }
}

/// Every path of every API, in table order.
fn run_all(runner: &mut Runner) {
    vulkan::run(runner);
    ipc::run(runner);
    pool::run(runner);
    semaphores::run(runner);
    cuda::run(runner);
    opencl::run(runner);
    gl::run(runner);
}

pub fn run(args: &Args) -> CmdResult {
    let progress = if std::io::stderr().is_terminal() {
        Progress::Line
    } else if args.soak.is_some() {
        Progress::Lines
    } else {
        Progress::Quiet
    };
    if args.soak.is_some() {
        soak::steady_allocator();
    }
    let mut runner = Runner::new(args.only.clone(), args.corrupt.clone(), progress);
    run_all(&mut runner);
    let mut results = std::mem::take(&mut runner.results);

    let soak = args.soak.map(|rounds| soak::run(&mut runner, &mut results, rounds, run_all));
    if let Progress::Line = runner.progress {
        eprint!("\r\x1b[K");
    }

    if results.is_empty() && !args.only.is_empty() {
        let only = args.only.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ");
        return Err(crate::UsageError(format!(
            "no selftest path's name contains {only}: `lava-flow selftest` lists every path's name"
        ))
        .into());
    }
    let passed = results.iter().filter(|r| r.outcome == Outcome::Pass).count();
    let failed = results.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).count();
    let skipped = results.len() - passed - failed;
    if args.json {
        #[derive(Serialize)]
        struct Json<'a> {
            results: &'a [PathResult],
            passed: usize,
            failed: usize,
            skipped: usize,
            soak: Option<soak::SoakReport>,
        }
        let json = Json { results: &results, passed, failed, skipped, soak };
        crate::emit(&(serde_json::to_string_pretty(&json)? + "\n"))?;
    } else {
        let mut t = Table::new(&["path", ">size", ">time", "result"]);
        for r in &results {
            let time = if r.runs > 1 && !r.time_ms.is_zero() {
                format!("{} x{}", table::duration(r.time_ms / r.runs), r.runs)
            } else if r.time_ms.is_zero() || matches!(r.outcome, Outcome::Skipped(_)) {
                "-".into()
            } else {
                table::duration(r.time_ms)
            };
            let size = if r.size == 0 { "-".into() } else { table::bytes(r.size) };
            let result = match (&r.outcome, &r.detail) {
                (Outcome::Pass, Some(d)) => format!("PASS ({d})"),
                (o, _) => outcome_text(o),
            };
            t.row([r.path.clone(), size, time, result]);
        }
        crate::emit(&format!("{}\n{passed} passed, {failed} failed, {skipped} skipped\n", t.render(0)))?;
    }
    // A run in which nothing passed proved nothing: it fails, saying why.
    if passed == 0 {
        eprintln!("selftest: {}", nothing_passed(failed, skipped));
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Why a run passed nothing: the counts, and where Vulkan cannot be used, what the loader was
/// given (`VK_DRIVER_FILES`, `VK_ICD_FILENAMES`) and which driver manifests the machine has.
fn nothing_passed(failed: usize, skipped: usize) -> String {
    let mut out = format!(
        "nothing passed ({failed} failed, {skipped} skipped), so this run proves nothing about sharing on this machine"
    );
    match lava_flow::VulkanContext::enumerate() {
        Ok(devices) if !devices.is_empty() => {
            out.push_str(": the skips above say what each path lacks");
            return out;
        }
        Ok(_) => out.push_str(". Vulkan is not usable: the loader lists no devices"),
        Err(e) => out.push_str(&format!(". Vulkan is not usable: {e}")),
    }
    let mut named = false;
    for var in ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"] {
        let Some(value) = std::env::var_os(var) else { continue };
        named = true;
        let files: Vec<String> = std::env::split_paths(&value)
            .map(|p| match std::fs::metadata(&p) {
                Ok(_) => format!("{} (exists, but the loader could not use it)", p.display()),
                Err(e) => format!("{} ({e})", p.display()),
            })
            .collect();
        out.push_str(&format!(
            ". {var} is set, so the loader used only what it names: {}",
            if files.is_empty() { "nothing".to_string() } else { files.join(", ") }
        ));
    }
    let manifests: Vec<String> = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| p.display().to_string())
        .collect();
    let fix = if named { "unset it, or point it at a driver manifest" } else { "install a Vulkan driver" };
    if manifests.is_empty() {
        out.push_str(&format!(
            "; this machine has no Vulkan driver manifest in /usr/share/vulkan/icd.d or /etc/vulkan/icd.d: {fix} \
             (`apt-get install mesa-vulkan-drivers` for the software one, or your GPU vendor's)"
        ));
    } else {
        out.push_str(&format!("; driver manifests on this machine: {}: {fix}", manifests.join(", ")));
    }
    out
}

/// A deterministic byte pattern that differs with `seed` and position, so a shifted, truncated
/// or stale copy does not pass.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compares what arrived with what was sent; the error names the first wrong byte.
pub fn check_bytes(what: &str, expected: &[u8], got: &[u8]) -> Step {
    if expected.len() != got.len() {
        return fail(format!("{what}: expected {} bytes, got {}", expected.len(), got.len()));
    }
    match expected.iter().zip(got).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => {
            let wrong = expected.iter().zip(got).filter(|(a, b)| a != b).count();
            fail(format!(
                "{what}: byte {i} is {:#04x}, expected {:#04x} ({wrong} of {} bytes differ)",
                got[i],
                expected[i],
                expected.len()
            ))
        }
    }
}

/// Flips one byte in the middle, for `--corrupt`.
pub fn spoil(data: &mut [u8]) {
    if let Some(b) = data.get_mut(data.len() / 2) {
        *b ^= 0x5a;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_seed_and_are_stable() {
        assert_eq!(pattern(1, 100), pattern(1, 100));
        assert_ne!(pattern(1, 100), pattern(2, 100));
        assert_eq!(pattern(1, 13).len(), 13);
        assert_eq!(&pattern(7, 64)[..13], &pattern(7, 13)[..]);
    }

    #[test]
    fn check_names_the_first_wrong_byte() {
        let a = pattern(3, 32);
        let mut b = a.clone();
        assert!(check_bytes("x", &a, &b).is_ok());
        spoil(&mut b);
        match check_bytes("buffer", &a, &b) {
            Err(PathError::Failed(m)) => assert!(m.contains("byte 16") && m.contains("1 of 32"), "{m}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(matches!(check_bytes("x", &a, &a[..3]), Err(PathError::Failed(_))));
    }

    #[test]
    fn required_api_turns_skip_into_failure() {
        // LAVA_FLOW_REQUIRE is read from the environment; "all" covers every API.
        let before = std::env::var_os("LAVA_FLOW_REQUIRE");
        std::env::set_var("LAVA_FLOW_REQUIRE", "cuda");
        let cuda = required_or("cuda", Outcome::Skipped("no libcuda".into()));
        let gl = required_or("gl", Outcome::Skipped("no libEGL".into()));
        match before {
            Some(v) => std::env::set_var("LAVA_FLOW_REQUIRE", v),
            None => std::env::remove_var("LAVA_FLOW_REQUIRE"),
        }
        assert!(matches!(cuda, Outcome::Fail(m) if m.contains("no libcuda")));
        assert_eq!(gl, Outcome::Skipped("no libEGL".into()));
    }
}
