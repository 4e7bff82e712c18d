//! Helpers for tests that need a real driver: skip with a printed reason where an API or a driver
//! capability is missing, fail instead when `LAVA_FLOW_REQUIRE` names it, count the cases of tests
//! that run several, and count open fds.
//!
//! # When a test may skip
//!
//! A test skips only because something the machine lacks, never because an operation it meant to
//! check went wrong, and only through this module, which prints a marker line on stdout that
//! `cargo xtask test` collects and counts:
//!
//! - [`skip`] / [`or_skip`]: an API is missing here (no library, no device, a driver too old to
//!   open), or what [`NAMES`] lists beside the APIs. Prints `SKIPPED (<name> unavailable): <reason>`;
//!   panics instead when `LAVA_FLOW_REQUIRE` names it. [`or_skip`] is for *opening* an API
//!   (`VulkanContext::new`, `GlContext::for_identity`, ...), where every
//!   [`Error::is_unavailable`] error means that API cannot be used.
//! - [`skip_capability`] / [`skip_refused`]: the API is here, but the driver's capability query
//!   says no (a format, tiling, memory kind or extension it cannot share). Prints
//!   `SKIPPED (<api> capability): <reason>`; never a failure under `LAVA_FLOW_REQUIRE`, since the
//!   driver decides it (except for `semaphores`, which is itself a name to require: a test needing
//!   external semaphores calls [`skip`]`("semaphores", ...)`). An operation's
//!   [`Error::Unsupported`] is such an answer only when its `rule` names
//!   the capability query the test expects to decide ([`skip_refused`] checks it); any other
//!   `Unsupported` from an operation the query allowed is a failure.
//! - [`Cases`]: a test that runs several cases (formats, shapes, matrix cells) counts them; a
//!   skipped case prints `SKIPPED CASE [<case>] (<tag>): <reason>`, and [`Cases::finish`] fails the
//!   test unless every case ran or was skipped with its reason. A test whose cases were all skipped
//!   prints the test's own `SKIPPED (...)` line.
//!
//! # `LAVA_FLOW_REQUIRE`
//!
//! A comma-separated list of [`NAMES`] (or `all`): `vulkan`, `cuda`, `opencl`, `gl`, `semaphores`
//! (external semaphores and fences), `python` (a python3 with `socket.recv_fds`, for the
//! protocol's sample client), `mpi` (`mpirun` of Open MPI, for the `remote` transport's tests) and `root` (tests that run a peer as another user). A name lava-flow
//! does not know is an error listing the valid ones ([`required`]). `cargo xtask test` sets
//! `vulkan,gl,mpi` (the drivers and the MPI it installs or found); the GPU machine names every API and
//! `semaphores`, so nothing skips silently there.

use std::fmt::Display;

use lava_flow::Error;

/// The names `LAVA_FLOW_REQUIRE` understands (besides `all`).
pub const NAMES: [&str; 8] = ["vulkan", "cuda", "opencl", "gl", "semaphores", "python", "mpi", "root"];

/// The API names among [`NAMES`] (what `lava-flow selftest` rows need).
pub const APIS: [&str; 5] = ["vulkan", "cuda", "opencl", "gl", "semaphores"];

/// The environment variable naming what must not skip.
pub const REQUIRE_VAR: &str = "LAVA_FLOW_REQUIRE";

/// Parses a `LAVA_FLOW_REQUIRE` value: [`NAMES`] separated by commas, in any case, with spaces
/// and empty entries ignored; `all` stands for every name. An unknown name is
/// [`Error::InvalidArgument`] naming it and listing the valid ones.
pub fn parse_required(value: &str) -> lava_flow::Result<Vec<&'static str>> {
    let mut names: Vec<&'static str> = Vec::new();
    let mut add = |n: &'static str| {
        if !names.contains(&n) {
            names.push(n);
        }
    };
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry.eq_ignore_ascii_case("all") {
            NAMES.iter().for_each(|n| add(n));
            continue;
        }
        match NAMES.iter().find(|n| n.eq_ignore_ascii_case(entry)) {
            Some(n) => add(n),
            None => {
                let hint = closest_name(entry).map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default();
                return Err(Error::invalid(
                    format!("{REQUIRE_VAR}={value}"),
                    format!("`{entry}` is not a name lava-flow knows{hint}"),
                    format!("name any of {}, separated by commas, or `all`", NAMES.join(", ")),
                ));
            }
        }
    }
    Ok(names)
}

/// The known name within two edits of `entry`, if one is.
fn closest_name(entry: &str) -> Option<&'static str> {
    let entry = entry.to_ascii_lowercase();
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let next = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
                prev = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    };
    NAMES.iter().map(|n| (distance(&entry, n), *n)).filter(|(d, _)| *d <= 2).min().map(|(_, n)| n)
}

/// What `LAVA_FLOW_REQUIRE` names in this process's environment (nothing when it is unset). A
/// binary that honours it calls this first, to report a misspelt name as an error.
pub fn required() -> lava_flow::Result<Vec<&'static str>> {
    match std::env::var(REQUIRE_VAR) {
        Ok(value) => parse_required(&value),
        Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
        Err(std::env::VarError::NotUnicode(value)) => Err(Error::invalid(
            format!("{REQUIRE_VAR}={}", value.to_string_lossy()),
            "the value is not UTF-8",
            format!("name any of {}, separated by commas, or `all`", NAMES.join(", ")),
        )),
    }
}

/// Whether `LAVA_FLOW_REQUIRE` names `name` (or `all`).
///
/// # Panics
///
/// When `LAVA_FLOW_REQUIRE` holds a name lava-flow does not know (the message lists the valid
/// ones: a misspelt requirement must not pass as no requirement), and when `name` is not one of
/// [`NAMES`].
#[track_caller]
pub fn is_required(name: &str) -> bool {
    let name = known(name);
    match required() {
        Ok(names) => names.contains(&name),
        Err(e) => panic!("{e}"),
    }
}

/// `name` as it appears in [`NAMES`]; panics for a name that is not there.
#[track_caller]
fn known(name: &str) -> &'static str {
    NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or_else(|| panic!("`{name}` is not a name LAVA_FLOW_REQUIRE knows: use one of {}", NAMES.join(", ")))
}

/// The line that marks a whole test as skipped: `SKIPPED (<tag>): <reason>`.
pub fn skip_line(tag: &str, reason: impl Display) -> String {
    format!("SKIPPED ({tag}): {reason}")
}

/// The line that marks one case of a test as skipped: `SKIPPED CASE [<case>] (<tag>): <reason>`.
pub fn case_skip_line(case: &str, tag: &str, reason: impl Display) -> String {
    format!("SKIPPED CASE [{case}] ({tag}): {reason}")
}

/// Reports that a test cannot run because `name` (an API, or another of [`NAMES`]) is missing
/// here: prints `SKIPPED (<name> unavailable): <reason>` and returns; panics instead when
/// `LAVA_FLOW_REQUIRE` names it. Call it and then `return`.
#[track_caller]
pub fn skip(name: &str, reason: impl Display) {
    if is_required(name) {
        panic!("{name} is required (LAVA_FLOW_REQUIRE) but unavailable: {reason}");
    }
    println!("{}", skip_line(&format!("{name} unavailable"), reason));
}

/// Reports that a test cannot run because the driver's capability query for `api` says no
/// (`reason`: its answer): prints `SKIPPED (<api> capability): <reason>` and returns. Not a failure
/// under `LAVA_FLOW_REQUIRE`: the driver, not the machine's set-up, decides it. Call it and then
/// `return`.
#[track_caller]
pub fn skip_capability(api: &str, reason: impl Display) {
    let api = known(api);
    println!("{}", skip_line(&format!("{api} capability"), reason));
}

/// Reports that a test cannot run because an operation was refused by the capability query
/// `query` (see [`skip_capability`]). Panics, failing the test, unless `err` is
/// [`Error::Unsupported`] whose `rule` names `query`: any other error, or a refusal decided by
/// something else, is what the test is there to catch.
#[track_caller]
pub fn skip_refused(api: &str, query: &str, err: Error) {
    check_refusal(query, &err);
    skip_capability(api, err);
}

/// Panics unless `err` is the capability query `query` saying no.
#[track_caller]
fn check_refusal(query: &str, err: &Error) {
    match err {
        Error::Unsupported { rule, .. } if rule.contains(query) => {}
        Error::Unsupported { rule, .. } => {
            panic!("refused by `{rule}`, not by the capability query `{query}` this case depends on: {err}")
        }
        other => panic!("expected the capability query `{query}` to refuse, got: {other}"),
    }
}

/// Unwraps the result of opening an API (`VulkanContext::new`, `GlContext::for_identity`,
/// `CudaDevice::for_identity`, ...), or skips (see [`skip`]) when the error means the API cannot
/// be used here ([`Error::is_unavailable`]: no library, no device, a
/// driver lacking what lava-flow needs to open it). Other errors panic. Not for operations on an
/// opened API: there an [`Error::Unsupported`] is the driver's capability answer
/// ([`skip_refused`]) or a bug.
#[track_caller]
pub fn or_skip<T>(name: &str, result: lava_flow::Result<T>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if e.is_unavailable() => {
            skip(name, &e);
            None
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

/// The cases of a test that runs several (formats, shapes, cells of a matrix), counted so that
/// none goes missing without a word: each case either [ran](Cases::ran) or was skipped through
/// this, with its reason, and [`Cases::finish`] checks that they add up to the number expected.
///
/// ```
/// use lava_flow_diag::testing::Cases;
///
/// let formats = ["r8", "rgba8", "rgba16f"];
/// let mut cases = Cases::new("formats", formats.len());
/// for f in formats {
///     if f == "rgba16f" {
///         cases.skip_capability("vulkan", f, "the driver's format query says no");
///         continue;
///     }
///     // ... run the case and assert on it ...
///     cases.ran();
/// }
/// assert_eq!(cases.finish(), 2);
/// ```
#[must_use = "call Cases::finish once every case ran or was skipped"]
pub struct Cases {
    what: String,
    expected: usize,
    ran: usize,
    /// (tag, reason) of each skipped case.
    skipped: Vec<(String, String)>,
    finished: bool,
}

impl Cases {
    /// Counts the `expected` cases of `what`.
    ///
    /// # Panics
    ///
    /// When `expected` is 0: a loop over nothing checks nothing.
    #[track_caller]
    pub fn new(what: impl Into<String>, expected: usize) -> Cases {
        let what = what.into();
        assert!(expected > 0, "{what}: a test of no cases checks nothing");
        Cases { what, expected, ran: 0, skipped: Vec::new(), finished: false }
    }

    /// One case ran (its assertions decide whether it passed).
    pub fn ran(&mut self) {
        self.ran += 1;
    }

    /// One case needs `name` (an API, or another of [`NAMES`]), which is missing here: prints
    /// `SKIPPED CASE [<case>] (<name> unavailable): <reason>`; panics instead when
    /// `LAVA_FLOW_REQUIRE` names it.
    #[track_caller]
    pub fn skip(&mut self, name: &str, case: &str, reason: impl Display) {
        if is_required(name) {
            panic!("{}: {case}: {name} is required (LAVA_FLOW_REQUIRE) but unavailable: {reason}", self.what);
        }
        self.skipped_with(format!("{name} unavailable"), case, reason.to_string());
    }

    /// One case the driver's capability query for `api` declines (`reason`: its answer): prints
    /// `SKIPPED CASE [<case>] (<api> capability): <reason>`.
    #[track_caller]
    pub fn skip_capability(&mut self, api: &str, case: &str, reason: impl Display) {
        let api = known(api);
        self.skipped_with(format!("{api} capability"), case, reason.to_string());
    }

    /// One case whose operation the capability query `query` refused; panics, as
    /// [`skip_refused`] does, when `err` is anything else.
    #[track_caller]
    pub fn skip_refused(&mut self, api: &str, query: &str, case: &str, err: Error) {
        check_refusal(query, &err);
        self.skip_capability(api, case, err);
    }

    fn skipped_with(&mut self, tag: String, case: &str, reason: String) {
        println!("{}", case_skip_line(case, &tag, &reason));
        self.skipped.push((tag, reason));
    }

    /// Checks the count and returns how many cases ran. When none did, prints the test's own
    /// `SKIPPED (...)` line (the first case's tag and reason), so that it counts as skipped.
    ///
    /// # Panics
    ///
    /// When the cases that ran and those skipped do not add up to the number expected.
    #[track_caller]
    pub fn finish(mut self) -> usize {
        self.finished = true;
        let skipped = self.skipped.len();
        assert_eq!(
            self.ran + skipped,
            self.expected,
            "{}: {} cases expected, but {} ran and {skipped} were skipped with a reason",
            self.what,
            self.expected,
            self.ran
        );
        if self.ran == 0 {
            let (tag, reason) = &self.skipped[0];
            println!("{}", skip_line(tag, reason));
        }
        self.ran
    }
}

impl Drop for Cases {
    fn drop(&mut self) {
        if !self.finished && !std::thread::panicking() {
            panic!("{}: Cases dropped without Cases::finish, so no one checked the count", self.what);
        }
    }
}

/// Number of open fds of this process (entries of /proc/self/fd, less the one used to read it).
/// Compare before and after an operation in a test that runs alone in its process (nextest runs
/// each test in its own process; with `cargo test` use `--test-threads=1`).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count().saturating_sub(1)).unwrap_or(0)
}
