//! The samples of docs/CLI.md are real output: every fenced block that follows a
//! `<!-- sample -->` comment starts with `$ [VAR=value ...] lava-flow ARGS`, and what follows is
//! compared with what that command prints here (stdout; and where it exits non-zero, the last
//! line of stderr, which says why). Both sides are normalised first: numbers become `N`, UUIDs
//! `<uuid>`, driver manifest paths `<manifest>`, runs of spaces one space, table rules `---`; a
//! block whose last line is `...` is compared as a prefix. Also: every key of `info --json`
//! appears in CLI.md's field table.
//!
//! The samples are captured on lavapipe and llvmpipe without CUDA or OpenCL; elsewhere the test
//! prints `SKIPPED (docs machine): ...`. `LAVA_FLOW_BLESS_DOCS=1` rewrites the blocks with this
//! machine's output instead of comparing. The commands run without `LAVA_FLOW_REQUIRE` unless a
//! sample sets it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use lava_flow_diag::testing;
use serde_json::Value;

const BLESS: &str = "LAVA_FLOW_BLESS_DOCS";

fn cli_md() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/CLI.md")
}

fn lava_flow() -> Command {
    let bin = std::env::var_os("LAVA_FLOW_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lava-flow").into());
    Command::new(bin)
}

/// Splits a shell command line: words, with "double" or 'single' quoted parts.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Runs a sample's command line; returns what a sample shows of it.
fn output_of(command_line: &str) -> String {
    let words = shell_words(command_line);
    let mut cmd = lava_flow();
    // The samples show what a user sees, with no test suite's requirements.
    cmd.env_remove("LAVA_FLOW_REQUIRE");
    let mut args = words.iter();
    for word in args.by_ref() {
        if word == "lava-flow" {
            break;
        }
        let (k, v) = word.split_once('=').unwrap_or_else(|| panic!("`{command_line}`: `{word}` is not VAR=value"));
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().expect("start lava-flow");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        if let Some(last) = String::from_utf8_lossy(&out.stderr).lines().last() {
            text.push_str(last);
            text.push('\n');
        }
    }
    text
}

fn is_uuid(s: &[char]) -> bool {
    s.len() == 36
        && s.iter()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == '-' } else { c.is_ascii_hexdigit() })
}

/// One line with what changes between runs and machines replaced by placeholders.
fn normalise_line(line: &str) -> String {
    let chars: Vec<char> = line.trim().chars().collect();
    if !chars.is_empty() && chars.iter().all(|c| *c == '-' || *c == ' ') {
        return "---".into();
    }
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if i + 36 <= chars.len() && is_uuid(&chars[i..i + 36]) {
            out.push_str("<uuid>");
            i += 36;
        } else if chars[i..].starts_with(&"/usr/share/vulkan/icd.d/".chars().collect::<Vec<_>>()) {
            while i < chars.len() && !matches!(chars[i], ' ' | ',' | ':' | ')') {
                i += 1;
            }
            if !out.ends_with("<manifest>") {
                out.push_str("<manifest>");
            }
            // A list of manifests is one placeholder: its length is the machine's.
            while chars[i..].starts_with(&[',', ' ', '/']) {
                i += 2;
                while i < chars.len() && !matches!(chars[i], ' ' | ',' | ':' | ')') {
                    i += 1;
                }
            }
        } else if matches!(chars[i], '+' | '-')
            && chars.get(i + 1).is_some_and(char::is_ascii_digit)
            && (i == 0 || matches!(chars[i - 1], ' ' | '(' | ','))
        {
            // A signed figure (a soak's "+1.8 KiB/round" or "-0.3 KiB/round") is a number too: its
            // sign changes from run to run.
            i += 1;
        } else if chars[i].is_ascii_digit() {
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            out.push('N');
        } else if chars[i] == ' ' {
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            out.push(' ');
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn normalise(text: &str) -> Vec<String> {
    text.lines().map(normalise_line).collect()
}

/// A marked sample: the command line and the block's lines after it, with their place in the file.
struct Sample {
    command: String,
    /// Lines of CLI.md (0-based) the output occupies: after the `$` line, before the closing fence.
    body: std::ops::Range<usize>,
}

fn samples(lines: &[&str]) -> Vec<Sample> {
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "<!-- sample -->" {
            continue;
        }
        assert!(lines.get(i + 1).is_some_and(|l| l.starts_with("```")), "CLI.md:{}: a code block follows", i + 2);
        let command = lines[i + 2].strip_prefix("$ ").unwrap_or_else(|| panic!("CLI.md:{}: starts with `$ `", i + 3));
        let end = (i + 3..lines.len()).find(|&j| lines[j].starts_with("```")).expect("the block is closed");
        found.push(Sample { command: command.to_string(), body: i + 3..end });
    }
    found
}

/// Whether this machine is the one the samples describe; why not otherwise.
fn docs_machine() -> Result<(), String> {
    if !std::env::var("VK_DRIVER_FILES").is_ok_and(|v| v.contains("lvp_icd")) {
        return Err("the samples are lavapipe's (VK_DRIVER_FILES names another driver or none)".into());
    }
    let info: Value = serde_json::from_str(&output_of("lava-flow info --json")).map_err(|e| e.to_string())?;
    for api in info["apis"].as_array().into_iter().flatten() {
        let expected = api["api"] == "OpenGL";
        if api["available"].as_bool() != Some(expected) {
            return Err(format!("the samples have OpenGL and neither CUDA nor OpenCL; here {} differs", api["api"]));
        }
    }
    Ok(())
}

#[test]
fn cli_md_samples_are_what_the_commands_print() {
    if let Err(why) = docs_machine() {
        println!("{}", testing::skip_line("docs machine", why));
        return;
    }
    let text = std::fs::read_to_string(cli_md()).expect("read docs/CLI.md");
    let lines: Vec<&str> = text.lines().collect();
    let found = samples(&lines);
    assert!(found.len() >= 5, "CLI.md marks its samples (found {})", found.len());
    if std::env::var_os(BLESS).is_some() {
        let mut new_lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        for s in found.iter().rev() {
            let expected: Vec<&str> = lines[s.body.clone()].to_vec();
            let mut actual: Vec<String> = output_of(&s.command).lines().map(str::to_string).collect();
            if expected.last() == Some(&"...") || expected.last() == Some(&"  ...") {
                actual.truncate(expected.len() - 1);
                actual.push(expected.last().unwrap().to_string());
            }
            new_lines.splice(s.body.clone(), actual);
        }
        std::fs::write(cli_md(), new_lines.join("\n") + "\n").expect("write docs/CLI.md");
        return;
    }
    let mut stale = Vec::new();
    for s in &found {
        let mut expected = normalise(&lines[s.body.clone()].join("\n"));
        let mut actual = normalise(&output_of(&s.command));
        if expected.last().is_some_and(|l| l.trim() == "...") {
            expected.pop();
            actual.truncate(expected.len());
        }
        if expected != actual {
            let at = expected.iter().zip(&actual).position(|(a, b)| a != b).unwrap_or(expected.len().min(actual.len()));
            stale.push(format!(
                "CLI.md:{}: `{}`: line {} of the sample\n  doc:  {}\n  real: {}",
                s.body.start + at + 1,
                s.command,
                at + 1,
                expected.get(at).map(String::as_str).unwrap_or("(nothing)"),
                actual.get(at).map(String::as_str).unwrap_or("(nothing)")
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "docs/CLI.md's samples differ from the commands' output (normalised):\n{}\n\nrewrite them with this \
         machine's output: {BLESS}=1 VK_DRIVER_FILES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json cargo nextest run \
         -p lava-flow-cli --all-features --test docs, then review the diff",
        stale.join("\n")
    );
}

/// Every key path of a JSON document, arrays as `[]`: `vulkan.devices[].identity.device_uuid`.
fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(path.clone());
                key_paths(v, &path, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                key_paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_info_json_field_is_in_cli_md() {
    let out = lava_flow().args(["info", "--json"]).output().expect("start lava-flow");
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let mut keys = BTreeSet::new();
    key_paths(&report, "", &mut keys);
    let doc = std::fs::read_to_string(cli_md()).expect("read docs/CLI.md");
    let missing: Vec<&String> = keys.iter().filter(|k| !doc.contains(&format!("| `{k}` |"))).collect();
    assert!(
        missing.is_empty(),
        "docs/CLI.md's table of `info --json` fields lacks a row `| `KEY` | ... |` for: {missing:?}"
    );
}

#[test]
fn the_normaliser_keeps_words_and_drops_what_changes() {
    assert_eq!(normalise_line("(+1.8 KiB/round)"), normalise_line("(-0.3 KiB/round)"));
    assert_eq!(normalise_line("--size 64K"), "--size NK");
    assert_eq!(
        normalise_line("  0  llvmpipe (LLVM 15.0.6, 256 bits)  6d657361-3232-2e33-2e36-000000000000   40.02 ms x21"),
        "N llvmpipe (LLVM N, N bits) <uuid> N ms xN"
    );
    assert_eq!(normalise_line("------  ---"), "---");
    assert_eq!(
        normalise_line(
            "manifests on this machine: /usr/share/vulkan/icd.d/a.json, /usr/share/vulkan/icd.d/b.json: unset"
        ),
        "manifests on this machine: <manifest>: unset"
    );
    assert_eq!(
        shell_words(r#"VK=/x lava-flow selftest --only "vulkan: " --only 'a b'"#),
        ["VK=/x", "lava-flow", "selftest", "--only", "vulkan: ", "--only", "a b"]
    );
}
