//! Reading what the tests ran: nextest's JUnit report and libtest's output, with the skip markers
//! `lava_flow_diag::testing` prints, into counts and skips grouped by reason.
//!
//! The markers (crates/lava-flow-diag/src/testing.rs, `skip_line` and `case_skip_line`):
//! - `SKIPPED (<tag>): <reason>`: the whole test skipped (it passes, and counts as skipped);
//! - `SKIPPED CASE [<case>] (<tag>): <reason>`: one case of a test that ran others.
//!
//! `<tag>` is `<name> unavailable` (an API or other requirement missing here) or
//! `<api> capability` (the driver's capability query said no).

use std::collections::BTreeMap;

/// Tests (or steps) that passed, failed and were skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed, {} skipped", self.passed, self.failed, self.skipped)
    }
}

/// One skip a test reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    /// The test: `binary::test` (see [`from_junit`]), or libtest's name.
    pub test: String,
    /// The case, for a case of a test that ran others; `None` when the whole test skipped.
    pub case: Option<String>,
    /// `cuda unavailable`, `vulkan capability`, ...
    pub tag: String,
    pub reason: String,
}

/// What a test step ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestRun {
    pub tally: Tally,
    pub skips: Vec<Skip>,
}

/// A marker line's parts: (case, tag, reason). libtest's `--nocapture` form puts the test's own
/// output after `test name ... ` on the same line, which is allowed for.
pub fn parse_marker(line: &str) -> Option<(Option<String>, String, String)> {
    let line = line.trim_end();
    let line = match line.strip_prefix("test ") {
        Some(rest) => &rest[rest.find(" ... ")? + 5..],
        None => line,
    };
    let (case, rest) = if let Some(rest) = line.strip_prefix("SKIPPED CASE [") {
        let end = rest.find("] (")?;
        (Some(rest[..end].to_string()), &rest[end + 3..])
    } else {
        (None, line.strip_prefix("SKIPPED (")?)
    };
    let end = rest.find("): ")?;
    Some((case, rest[..end].to_string(), rest[end + 3..].to_string()))
}

/// The skips in one test's output.
fn skips_of(test: &str, output: &str) -> Vec<Skip> {
    output
        .lines()
        .filter_map(parse_marker)
        .map(|(case, tag, reason)| Skip { test: test.to_string(), case, tag, reason })
        .collect()
}

/// Counts nextest's JUnit report (with `store-success-output`): a test that failed is failed;
/// one that passed is skipped when its stdout has a whole-test marker, passed otherwise. Tests
/// nextest itself skipped (`#[ignore]`) count as skipped, under the reason "ignored".
pub fn from_junit(xml: &str) -> TestRun {
    let mut run = TestRun::default();
    let mut rest = xml;
    while let Some(start) = rest.find("<testcase") {
        rest = &rest[start..];
        let Some(tag_end) = rest.find('>') else { break };
        let open = &rest[..tag_end + 1];
        let (body, next) = if open.ends_with("/>") {
            ("", &rest[tag_end + 1..])
        } else {
            match rest.find("</testcase>") {
                Some(end) => (&rest[tag_end + 1..end], &rest[end + "</testcase>".len()..]),
                None => (&rest[tag_end + 1..], ""),
            }
        };
        rest = next;
        let name = attribute(open, "name").unwrap_or_default();
        let class = attribute(open, "classname").unwrap_or_default();
        // `binary::test`: nextest's binary id without its crate (`lava-flow::gl_share` is
        // `gl_share`); a library's unit tests keep the crate's name.
        let binary = class.rsplit("::").next().unwrap_or_default();
        let test = if binary.is_empty() { name } else { format!("{binary}::{name}") };
        if body.contains("<failure") || body.contains("<error") {
            run.tally.failed += 1;
            continue;
        }
        // pytest's report (the Python step) marks a skipped test with `<skipped message=...>`,
        // whose message is the marker line the suite's conftest.py writes.
        if let Some(at) = body.find("<skipped") {
            let tag = &body[at..at + body[at..].find('>').map_or(0, |e| e + 1)];
            let message = attribute(tag, "message").unwrap_or_default();
            let (tag, reason) = match parse_marker(&message) {
                Some((_, tag, reason)) => (tag, reason),
                None => ("skipped".to_string(), message),
            };
            run.tally.skipped += 1;
            run.skips.push(Skip { test, case: None, tag, reason });
            continue;
        }
        let skips = skips_of(&test, &element_text(body, "system-out"));
        if skips.iter().any(|s| s.case.is_none()) {
            run.tally.skipped += 1;
        } else {
            run.tally.passed += 1;
        }
        run.skips.extend(skips);
    }
    let ignored = xml
        .find("<testsuites")
        .and_then(|at| attribute(&xml[at..at + xml[at..].find('>').unwrap_or(0) + 1], "skipped"))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if ignored > 0 {
        run.tally.skipped += ignored;
        run.skips.push(Skip {
            test: format!("{ignored} test(s)"),
            case: None,
            tag: "ignored".into(),
            reason: "#[ignore] (nextest did not run them)".into(),
        });
    }
    run
}

/// Counts libtest's output (`cargo test`, doc tests): its `test result:` lines, and the markers
/// of tests run with `--nocapture`, which libtest counts as passed.
pub fn from_libtest(output: &str) -> TestRun {
    let mut run = TestRun::default();
    let mut ignored = 0;
    let mut current = String::new();
    let mut skipped_tests: Vec<String> = Vec::new();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("test result: ") {
            let number = |word: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().trim_start_matches(|c: char| !c.is_ascii_digit()).strip_suffix(word))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0)
            };
            run.tally.passed += number(" passed");
            run.tally.failed += number(" failed");
            ignored += number(" ignored");
            continue;
        }
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some(end) = rest.find(" ... ") {
                current = rest[..end].to_string();
            }
        }
        if let Some((case, tag, reason)) = parse_marker(line) {
            if case.is_none() && !skipped_tests.contains(&current) {
                skipped_tests.push(current.clone());
            }
            run.skips.push(Skip { test: current.clone(), case, tag, reason });
        }
    }
    run.tally.passed = run.tally.passed.saturating_sub(skipped_tests.len());
    run.tally.skipped = skipped_tests.len() + ignored;
    if ignored > 0 {
        run.skips.push(Skip {
            test: format!("{ignored} test(s)"),
            case: None,
            tag: "ignored".into(),
            reason: "#[ignore] or an `ignore` code block".into(),
        });
    }
    run
}

/// The skips grouped by tag and reason, as lines for the summary: per group a line with the
/// reason and how many tests (and cases) it skipped, then a line naming them.
pub fn grouped(skips: &[Skip]) -> Vec<String> {
    let mut groups: BTreeMap<(String, String), (Vec<String>, Vec<String>)> = BTreeMap::new();
    for s in skips {
        let (tests, cases) = groups.entry((s.tag.clone(), s.reason.clone())).or_default();
        match &s.case {
            None if !tests.contains(&s.test) => tests.push(s.test.clone()),
            None => {}
            Some(case) => cases.push(format!("{} [{case}]", s.test)),
        }
    }
    let mut lines = Vec::new();
    for ((tag, reason), (tests, cases)) in groups {
        let mut count = Vec::new();
        if !tests.is_empty() {
            count.push(plural(tests.len(), "test"));
        }
        if !cases.is_empty() {
            count.push(plural(cases.len(), "case"));
        }
        lines.push(format!("{tag}: {reason} ({})", count.join(", ")));
        lines.push(format!("    {}", tests.into_iter().chain(cases).collect::<Vec<_>>().join(", ")));
    }
    lines
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// The value of attribute `name` in an element's start tag, unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

/// The text of the first `<element>` in `body` (empty when it is absent or empty), unescaped.
fn element_text(body: &str, element: &str) -> String {
    let open = format!("<{element}>");
    let Some(start) = body.find(&open).map(|s| s + open.len()) else { return String::new() };
    let end = body[start..].find(&format!("</{element}>")).map_or(body.len(), |e| start + e);
    let text = &body[start..end];
    match text.trim().strip_prefix("<![CDATA[").and_then(|t| t.strip_suffix("]]>")) {
        Some(cdata) => cdata.to_string(),
        None => unescape(text),
    }
}

/// Undoes XML's escaping: the five named entities and numeric references.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|s| *s <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(|n| n.ok())
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The literals lava-flow's own test (crates/lava-flow-diag/tests/testing_require.rs) checks
    /// `skip_line` and `case_skip_line` against: the two sides agree on the format.
    #[test]
    fn reads_the_markers_lava_flow_prints() {
        assert_eq!(
            parse_marker("SKIPPED (cuda unavailable): no libcuda"),
            Some((None, "cuda unavailable".into(), "no libcuda".into()))
        );
        assert_eq!(
            parse_marker("SKIPPED CASE [R8 D3 linear] (vulkan capability): refused"),
            Some((Some("R8 D3 linear".into()), "vulkan capability".into(), "refused".into()))
        );
        assert_eq!(
            parse_marker("test gl_share::x ... SKIPPED (gl capability): a (b): c"),
            Some((None, "gl capability".into(), "a (b): c".into())),
            "libtest's --nocapture form; the reason may hold parentheses"
        );
        assert_eq!(parse_marker("SKIPPED: the old form without a tag"), None);
        assert_eq!(parse_marker("test x ... ok"), None);
        assert_eq!(parse_marker("matrix: SKIPPED (x): y"), None, "only at the start of a line");
    }

    const JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="6" skipped="1" failures="1" errors="0">
    <testsuite name="lava-flow::cuda_memory" tests="2" skipped="0" errors="0" failures="0">
        <testcase name="imports" classname="lava-flow::cuda_memory" time="0.1">
            <system-out>
running 1 test
SKIPPED (cuda unavailable): could not load libcuda.so.1 (&lt;none&gt;); install &quot;the driver&quot;
test imports ... ok
</system-out>
            <system-err></system-err>
        </testcase>
        <testcase name="refuses" classname="lava-flow::cuda_memory" time="0.1">
            <system-out>SKIPPED (cuda unavailable): could not load libcuda.so.1 (&lt;none&gt;); install &quot;the driver&quot;
</system-out>
        </testcase>
    </testsuite>
    <testsuite name="lava-flow::gl_share" tests="3" skipped="0" errors="0" failures="1">
        <testcase name="textures" classname="lava-flow::gl_share" time="0.2">
            <system-out>SKIPPED CASE [Rgba8Unorm D2 Linear] (gl capability): GL_TILING_TYPES_EXT says optimal&#10;
</system-out>
        </testcase>
        <testcase name="plain" classname="lava-flow::gl_share" time="0.2"/>
        <testcase name="broken" classname="lava-flow::gl_share" time="0.2">
            <failure type="test failure">thread panicked</failure>
            <system-out>SKIPPED (gl unavailable): printed before it failed</system-out>
        </testcase>
    </testsuite>
</testsuites>
"#;

    #[test]
    fn junit_counts_self_reported_skips_as_skipped() {
        let run = from_junit(JUNIT);
        // imports, refuses: skipped; textures (one case skipped), plain: passed; broken: failed;
        // and the one test nextest itself skipped.
        assert_eq!(run.tally, Tally { passed: 2, failed: 1, skipped: 3 });
        assert_eq!(run.skips.len(), 4, "{:?}", run.skips);
        let cuda = &run.skips[0];
        assert_eq!(cuda.test, "cuda_memory::imports");
        assert_eq!(cuda.reason, r#"could not load libcuda.so.1 (<none>); install "the driver""#, "unescaped");
        assert_eq!(run.skips[2].case.as_deref(), Some("Rgba8Unorm D2 Linear"));
        assert_eq!(run.skips[3].tag, "ignored");
    }

    #[test]
    fn skips_are_grouped_by_reason() {
        let lines = grouped(&from_junit(JUNIT).skips);
        assert_eq!(
            lines,
            [
                r#"cuda unavailable: could not load libcuda.so.1 (<none>); install "the driver" (2 tests)"#,
                "    cuda_memory::imports, cuda_memory::refuses",
                "gl capability: GL_TILING_TYPES_EXT says optimal (1 case)",
                "    gl_share::textures [Rgba8Unorm D2 Linear]",
                "ignored: #[ignore] (nextest did not run them) (1 test)",
                "    1 test(s)",
            ]
        );
    }

    #[test]
    fn libtest_output_counts_doc_tests_and_nocapture_skips() {
        let out = "\
running 3 tests
test a ... SKIPPED (vulkan unavailable): no driver
ok
test b ... ok
test c ... SKIPPED CASE [x] (vulkan capability): no
ok

test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s

   Doc-tests lava_flow

running 2 tests
test src/lib.rs - (line 7) ... ok
test src/testing.rs - testing::Cases (line 190) ... FAILED

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s
";
        let run = from_libtest(out);
        assert_eq!(run.tally, Tally { passed: 3, failed: 1, skipped: 2 });
        assert_eq!(
            run.skips[0],
            Skip { test: "a".into(), case: None, tag: "vulkan unavailable".into(), reason: "no driver".into() }
        );
        assert_eq!(run.skips[1].case.as_deref(), Some("x"));
    }

    #[test]
    fn unescapes_entities() {
        assert_eq!(unescape("a &lt;b&gt; &amp; &#65;&#x42; & c &bogus; d"), "a <b> & AB & c &bogus; d");
    }

    #[test]
    fn pytest_skips_are_counted_with_their_marker() {
        let xml = r#"<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3">
<testcase classname="test_cuda" name="test_torch_reads" time="0.1"><skipped type="pytest.skip" message="SKIPPED (cuda unavailable): no libcuda.so.1">test_cuda.py:9: SKIPPED (cuda unavailable): no libcuda.so.1</skipped></testcase>
<testcase classname="test_host" name="test_pattern" time="0.1" />
<testcase classname="test_host" name="test_bad" time="0.1"><failure message="assert 1 == 2">...</failure></testcase>
</testsuite></testsuites>"#;
        let run = from_junit(xml);
        assert_eq!(run.tally, Tally { passed: 1, failed: 1, skipped: 1 });
        assert_eq!(run.skips[0].tag, "cuda unavailable");
        assert_eq!(run.skips[0].reason, "no libcuda.so.1");
        assert_eq!(run.skips[0].test, "test_cuda::test_torch_reads");
    }
}
