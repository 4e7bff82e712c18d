//! `LAVA_FLOW_REQUIRE` for the suite: what must not skip.
//!
//! `cargo xtask test` sets up (or finds) a Vulkan driver and Mesa's EGL before anything runs, so
//! Vulkan and GL tests that skip would be tests that silently did not run: the suite requires
//! `vulkan,gl,mpi` (Open MPI is installed with them) unless `LAVA_FLOW_REQUIRE` is already set, the same on a laptop and in CI.

/// The names lava-flow understands (`lava_flow_diag::testing::NAMES`; a test below keeps the two the
/// same), besides `all`.
pub const NAMES: [&str; 8] = ["vulkan", "cuda", "opencl", "gl", "semaphores", "python", "mpi", "root"];

/// What the suite requires when `LAVA_FLOW_REQUIRE` is not set: the drivers the set-up checked.
pub const SUITE_DEFAULT: &str = "vulkan,gl,mpi";

/// Checks a `LAVA_FLOW_REQUIRE` value: names separated by commas, in any case, `all` allowed.
pub fn check(value: &str) -> Result<(), String> {
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if !entry.eq_ignore_ascii_case("all") && !NAMES.iter().any(|n| n.eq_ignore_ascii_case(entry)) {
            return Err(format!(
                "LAVA_FLOW_REQUIRE={value}: `{entry}` is not a name lava-flow knows; name any of {}, separated by \
                 commas, or `all`",
                NAMES.join(", ")
            ));
        }
    }
    Ok(())
}

/// The value the suite runs with: `LAVA_FLOW_REQUIRE` when set (checked first, so a misspelt name
/// stops the run before anything builds), else [`SUITE_DEFAULT`]. Says which on stdout.
pub fn for_suite() -> Result<String, String> {
    match std::env::var("LAVA_FLOW_REQUIRE") {
        Ok(value) => {
            check(&value)?;
            println!("xtask: LAVA_FLOW_REQUIRE={value} (from the environment)");
            Ok(value)
        }
        Err(std::env::VarError::NotUnicode(_)) => Err("LAVA_FLOW_REQUIRE is not UTF-8".into()),
        Err(std::env::VarError::NotPresent) => {
            println!(
                "xtask: LAVA_FLOW_REQUIRE={SUITE_DEFAULT}: the drivers the set-up checked, so their tests may not skip \
                 (set LAVA_FLOW_REQUIRE to choose)"
            );
            Ok(SUITE_DEFAULT.into())
        }
    }
}

/// Checks `LAVA_FLOW_REQUIRE` where it is set (for `demo`, which passes it on to `selftest`).
pub fn check_env() -> Result<(), String> {
    match std::env::var("LAVA_FLOW_REQUIRE") {
        Ok(value) => check(&value),
        Err(std::env::VarError::NotUnicode(_)) => Err("LAVA_FLOW_REQUIRE is not UTF-8".into()),
        Err(std::env::VarError::NotPresent) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_known_names_and_refuses_others_listing_them() {
        for ok in ["", "vulkan,gl", " Vulkan , GL ,", "all", "cuda,ALL", "semaphores,python,root"] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        let e = check("vulkan,cudaa").unwrap_err();
        assert!(e.contains("`cudaa` is not a name"), "{e}");
        for n in NAMES {
            assert!(e.contains(n), "{e}");
        }
        assert!(check(SUITE_DEFAULT).is_ok());
    }

    /// The list here and lava-flow's are one list.
    #[test]
    fn names_are_lava_flows() {
        let source = std::fs::read_to_string(crate::run::root().join("crates/lava-flow-diag/src/testing.rs")).unwrap();
        let line = source.lines().find(|l| l.starts_with("pub const NAMES:")).expect("testing::NAMES");
        let list = &line[line.find("= [").expect("an array") + 3..line.rfind(']').unwrap()];
        let theirs: Vec<&str> = list.split(',').map(|n| n.trim().trim_matches('"')).filter(|n| !n.is_empty()).collect();
        assert_eq!(theirs, NAMES);
    }
}
