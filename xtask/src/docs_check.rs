//! Checks that keep the documents' lists true to what they list: every document of docs/ is
//! linked from docs/README.md and from README.md, and README.md's list of `cargo xtask test`'s
//! steps is [`crate::STEPS`]. They run as xtask's tests (in the suite's test step).

#[cfg(test)]
mod tests {
    use crate::run::root;

    fn read(path: &str) -> String {
        std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    /// The `*.md` files of docs/ other than its index.
    fn documents() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root().join("docs"))
            .expect("docs/ exists")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".md") && n != "README.md")
            .collect();
        names.sort();
        assert!(!names.is_empty());
        names
    }

    #[test]
    fn every_document_is_linked_from_both_indexes() {
        let index = read("docs/README.md");
        let readme = read("README.md");
        let mut missing = Vec::new();
        for name in documents() {
            if !index.contains(&format!("]({name})")) {
                missing.push(format!("docs/README.md lacks a link `]({name})`"));
            }
            if !readme.contains(&format!("](docs/{name})")) {
                missing.push(format!("README.md lacks a link `](docs/{name})`"));
            }
        }
        assert!(missing.is_empty(), "documents not indexed:\n{}", missing.join("\n"));
    }

    #[test]
    fn the_readme_lists_the_steps_of_xtask_test() {
        let readme = read("README.md");
        let begin = readme.find("<!-- xtask-test-steps begin").expect("README.md has the steps' begin marker");
        let end = readme.find("<!-- xtask-test-steps end -->").expect("README.md has the steps' end marker");
        let listed: Vec<&str> = readme[begin..end].lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
        let expected: Vec<String> = crate::STEPS.iter().map(|(name, what)| format!("- `{name}`: {what}")).collect();
        assert_eq!(
            listed,
            expected.iter().map(String::as_str).collect::<Vec<_>>(),
            "README.md's list of steps differs from xtask's STEPS; write this between its markers:\n{}",
            expected.join("\n")
        );
    }
}
