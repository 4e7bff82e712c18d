//! The test machinery itself: `LAVA_FLOW_REQUIRE` parsing, the skip markers `cargo xtask test`
//! counts, and `Cases`, which fails a test whose cases do not add up. No driver needed.

use lava_flow::Error;
use lava_flow_diag::testing::{self, case_skip_line, parse_required, skip_line, Cases, NAMES};

#[test]
fn require_names_parse_in_any_case_with_spaces_and_all() {
    assert_eq!(parse_required("").unwrap(), Vec::<&str>::new());
    assert_eq!(parse_required("vulkan,gl").unwrap(), ["vulkan", "gl"]);
    assert_eq!(parse_required(" Vulkan , GL ,,").unwrap(), ["vulkan", "gl"], "spaces, case, empty entries");
    assert_eq!(parse_required("gl,gl,vulkan").unwrap(), ["gl", "vulkan"], "each name once");
    assert_eq!(parse_required("all").unwrap(), NAMES);
    assert_eq!(parse_required("cuda,ALL").unwrap().len(), NAMES.len());
    for name in NAMES {
        assert_eq!(parse_required(name).unwrap(), [name]);
    }
}

#[test]
fn an_unknown_require_name_is_an_error_listing_the_valid_ones() {
    for (value, bad, hint) in [
        ("cudaa", "cudaa", Some("cuda")),
        ("vulkan,openGL", "openGL", Some("opencl")),
        ("vulkan,semaphore", "semaphore", Some("semaphores")),
        ("nvidia", "nvidia", None),
    ] {
        let e = parse_required(value).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(&format!("LAVA_FLOW_REQUIRE={value}")), "names the variable and value: {text}");
        assert!(text.contains(&format!("`{bad}` is not a name")), "names the bad entry: {text}");
        for name in NAMES {
            assert!(text.contains(name), "lists {name}: {text}");
        }
        match hint {
            Some(h) => assert!(text.contains(&format!("did you mean `{h}`?")), "{text}"),
            None => assert!(!text.contains("did you mean"), "{text}"),
        }
    }
}

/// `cargo xtask test` (xtask/src/run.rs) recognizes exactly these lines: its own tests parse the
/// same literals.
#[test]
fn skip_markers_have_the_format_xtask_counts() {
    assert_eq!(skip_line("cuda unavailable", "no libcuda"), "SKIPPED (cuda unavailable): no libcuda");
    assert_eq!(
        case_skip_line("R8 D3 linear", "vulkan capability", "refused"),
        "SKIPPED CASE [R8 D3 linear] (vulkan capability): refused"
    );
}

#[test]
#[should_panic(expected = "4 cases expected, but 2 ran and 0 were skipped")]
fn a_case_that_went_missing_fails_the_test() {
    let mut cases = Cases::new("formats", 4);
    cases.ran();
    cases.ran();
    cases.finish();
}

#[test]
#[should_panic(expected = "Cases::finish")]
fn cases_never_finished_fail_the_test() {
    let mut cases = Cases::new("cells", 1);
    cases.ran();
    drop(cases);
}

#[test]
#[should_panic(expected = "checks nothing")]
fn a_test_of_no_cases_fails() {
    let _ = Cases::new("nothing", 0);
}

#[test]
#[should_panic(expected = "not by the capability query")]
fn an_unsupported_from_another_rule_is_a_failure() {
    let other = Error::Unsupported {
        what: "a GL texture at offset 4096".into(),
        reason: "llvmpipe ignores the offset".into(),
        rule: "GL_EXT_memory_object".into(),
        advice: "give it its own allocation".into(),
    };
    testing::skip_refused("gl", "GL_TILING_TYPES_EXT", other);
}

#[test]
#[should_panic(expected = "expected the capability query")]
fn an_error_that_is_not_a_refusal_is_a_failure() {
    let mut cases = Cases::new("imports", 1);
    let bug = Error::InvalidArgument { what: "a size".into(), reason: "0".into(), advice: "-".into() };
    cases.skip_refused("gl", "GL_TILING_TYPES_EXT", "rgba8", bug);
}

#[test]
#[should_panic(expected = "is not a name LAVA_FLOW_REQUIRE knows")]
fn a_misspelt_name_in_a_test_fails_it() {
    testing::skip("vulkn", "typo");
}

fn image_refusal() -> Error {
    Error::Unsupported {
        what: "a linear 3D image".into(),
        reason: "VK_ERROR_FORMAT_NOT_SUPPORTED".into(),
        rule: "vkGetPhysicalDeviceImageFormatProperties2 (maxExtent, maxArrayLayers)".into(),
        advice: "use optimal tiling".into(),
    }
}

/// What each skip prints, that a required API's skip fails the test, and that a misspelt
/// `LAVA_FLOW_REQUIRE` fails every test that would skip. The skips run in child processes of this
/// binary, each with its own environment (so that this test's own output has no skip marker).
#[test]
fn required_names_turn_skips_into_failures_and_unknown_names_fail_loudly() {
    if let Ok(which) = std::env::var("LAVA_FLOW_TEST_SKIP") {
        match which.as_str() {
            "api" => testing::skip("cuda", "no libcuda here"),
            "capability" => testing::skip_capability("vulkan", "the driver's query says no"),
            "refused" => testing::skip_refused("vulkan", "vkGetPhysicalDeviceImageFormatProperties2", image_refusal()),
            "case" => {
                let mut cases = Cases::new("columns", 3);
                cases.ran();
                cases.skip("opencl", "OpenCL column", "no libOpenCL here");
                cases.skip_refused("vulkan", "vkGetPhysicalDeviceImageFormatProperties2", "linear 3D", image_refusal());
                assert_eq!(cases.finish(), 1);
            }
            "no case ran" => {
                let mut cases = Cases::new("columns", 2);
                cases.skip_capability("gl", "linear", "GL_TILING_TYPES_EXT lists optimal only");
                cases.skip_capability("gl", "3D", "GL_TILING_TYPES_EXT lists none");
                cases.finish();
            }
            other => panic!("unknown {other}"),
        }
        return;
    }
    let run = |which: &str, require: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "required_names_turn_skips_into_failures_and_unknown_names_fail_loudly",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LAVA_FLOW_TEST_SKIP", which)
            .env("LAVA_FLOW_REQUIRE", require)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = run("api", "vulkan,gl");
    assert!(ok && text.contains("SKIPPED (cuda unavailable): no libcuda here"), "{text}");
    let (ok, text) = run("api", "vulkan,cuda");
    assert!(!ok && text.contains("cuda is required (LAVA_FLOW_REQUIRE) but unavailable: no libcuda here"), "{text}");
    let (ok, text) = run("api", "cudaa");
    assert!(!ok && text.contains("`cudaa` is not a name lava-flow knows"), "{text}");
    let (ok, text) = run("capability", "all");
    assert!(ok && text.contains("SKIPPED (vulkan capability): the driver's query says no"), "{text}");
    let (ok, text) = run("refused", "vulkan");
    assert!(ok && text.contains("SKIPPED (vulkan capability): a linear 3D image is not supported"), "{text}");
    let (ok, text) = run("case", "");
    assert!(ok && text.contains("SKIPPED CASE [OpenCL column] (opencl unavailable): no libOpenCL here"), "{text}");
    assert!(text.contains("SKIPPED CASE [linear 3D] (vulkan capability): a linear 3D image"), "{text}");
    assert!(!text.contains("SKIPPED ("), "one case of three ran: the test is not skipped: {text}");
    let (ok, text) = run("no case ran", "gl");
    assert!(ok && text.contains("SKIPPED (gl capability): GL_TILING_TYPES_EXT lists optimal only"), "{text}");
    let (ok, text) = run("case", "opencl");
    assert!(!ok && text.contains("OpenCL column: opencl is required"), "{text}");
}
