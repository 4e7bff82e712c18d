//! The module layers of the workspace's crates: which sibling modules a module's code names, read
//! from its `crate::…` and `super::…` paths, and the check that these references form no cycle.
//!
//! The layers read bottom-up (DESIGN.md): in lava-flow `error` and `limits`, then `fd`, the Vulkan
//! core, `pool`, then the importers (`cuda`, `opencl`, `gl`) and `ipc` side by side, and
//! `channel` on top of them all. A module may
//! name a module below it, never one above. The check is textual, like a reviewer reading the
//! `use` lines: a path counts where code names it (doc comments do not), and a name the parent
//! re-exports (`crate::Error`, `super::Row`) counts as the module it comes from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Which sibling modules each child module of a module directory names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// A module directory: `src` (the crate root, parent file `lib.rs` or `main.rs`) or `src/<a>/<b>`
/// (parent file `mod.rs`), with its path from the crate root.
struct ModuleDir {
    dir: PathBuf,
    parent_file: PathBuf,
    path: Vec<String>,
}

/// The child modules of `dir` (files `x.rs` and directories `x/`) with the files each is made of.
fn children(dir: &Path, parent_file: &Path) -> BTreeMap<String, Vec<(PathBuf, usize)>> {
    let mut out = BTreeMap::new();
    for entry in read_dir_sorted(dir) {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if entry.is_dir() {
            let mut files = Vec::new();
            collect_files(&entry, 1, &mut files);
            if !files.is_empty() {
                out.insert(name, files);
            }
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if entry != parent_file && stem != "mod" {
                out.entry(stem.to_string()).or_insert_with(Vec::new).push((entry, 1));
            }
        }
    }
    out
}

/// The `.rs` files under `dir`, each with its depth as a module below the directory's parent
/// (`a/mod.rs` is depth 1, `a/b.rs` depth 2).
fn collect_files(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, usize)>) {
    for entry in read_dir_sorted(dir) {
        if entry.is_dir() {
            collect_files(&entry, depth + 1, out);
        } else if entry.extension().is_some_and(|e| e == "rs") {
            let is_mod = entry.file_name().is_some_and(|n| n == "mod.rs");
            out.push((entry, if is_mod { depth } else { depth + 1 }));
        }
    }
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    entries
}

/// Tokens of Rust source with line comments (doc comments included) removed: identifiers and
/// single punctuation characters, `::` kept as one token. String literals are skipped.
fn tokens(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                let mut escaped = false;
                for d in chars.by_ref() {
                    if d == '"' && !escaped {
                        break;
                    }
                    escaped = d == '\\' && !escaped;
                }
                continue;
            }
            if c.is_alphanumeric() || c == '_' {
                let mut ident = c.to_string();
                while let Some(&d) = chars.peek() {
                    if !(d.is_alphanumeric() || d == '_') {
                        break;
                    }
                    ident.push(d);
                    chars.next();
                }
                out.push(ident);
            } else if c == ':' && chars.peek() == Some(&':') {
                chars.next();
                out.push("::".into());
            } else if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    out
}

/// The first identifier of each item of the brace group opening at `tokens[open]`
/// (`{a::B, c, d as e}` gives a, c, d).
fn group_heads(tokens: &[String], open: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for t in &tokens[open..] {
        match t.as_str() {
            "{" => {
                depth += 1;
                if depth > 1 {
                    expect_head = false;
                }
            }
            "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "," if depth == 1 => expect_head = true,
            _ if expect_head && depth == 1 => {
                heads.push(t.clone());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// Names the parent file re-exports from its children (`pub use vulkan::{Buffer, Image};`,
/// `pub(crate) use memory::next_id;`), each with the child it comes from.
fn reexports(parent_source: &str, children: &BTreeSet<String>) -> BTreeMap<String, String> {
    let toks = tokens(parent_source);
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == "use" && i > 0 && (toks[i - 1] == "pub" || toks[i - 1] == ")") {
            let mut j = i + 1;
            if toks.get(j).is_some_and(|t| t == "self") {
                j += 2;
            }
            let Some(child) = toks.get(j).filter(|t| children.contains(*t)).cloned() else {
                i += 1;
                continue;
            };
            let end = toks[j..].iter().position(|t| t == ";").map_or(toks.len(), |p| j + p);
            for k in j..end {
                let t = &toks[k];
                let is_ident = t.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_');
                let next = toks.get(k + 1).map(String::as_str);
                if is_ident && t != "as" && t != "self" && next != Some("::") && next != Some("as") {
                    out.entry(t.clone()).or_insert_with(|| child.clone());
                }
            }
            i = end;
        }
        i += 1;
    }
    out
}

/// The graph among the child modules of one module directory.
fn graph_of(m: &ModuleDir) -> Graph {
    let kids = children(&m.dir, &m.parent_file);
    let names: BTreeSet<String> = kids.keys().cloned().collect();
    let parent_source = fs::read_to_string(&m.parent_file).unwrap_or_default();
    let reexported = reexports(&parent_source, &names);
    let resolve = |name: &str| -> Option<String> {
        if names.contains(name) {
            Some(name.to_string())
        } else {
            reexported.get(name).cloned()
        }
    };
    let mut graph = Graph::new();
    for (child, files) in &kids {
        let deps = graph.entry(child.clone()).or_default();
        for (file, depth) in files {
            let source = fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            let toks = tokens(&source);
            for i in 0..toks.len() {
                // Where the path after position `i` starts naming this directory's children.
                let start = if toks[i] == "crate" && toks.get(i + 1).is_some_and(|t| t == "::") {
                    let mut j = i + 2;
                    let mut ok = true;
                    for seg in &m.path {
                        if toks.get(j) == Some(seg) && toks.get(j + 1).is_some_and(|t| t == "::") {
                            j += 2;
                        } else {
                            ok = false;
                            break;
                        }
                    }
                    ok.then_some(j)
                } else if toks[i] == "super" && (i == 0 || toks[i - 1] != "::") {
                    let mut j = i;
                    let mut ups = 0;
                    while toks.get(j).is_some_and(|t| t == "super") && toks.get(j + 1).is_some_and(|t| t == "::") {
                        ups += 1;
                        j += 2;
                    }
                    (ups == *depth).then_some(j)
                } else {
                    None
                };
                let Some(j) = start else { continue };
                let heads = match toks.get(j).map(String::as_str) {
                    Some("{") => group_heads(&toks, j),
                    Some(t) => vec![t.to_string()],
                    None => vec![],
                };
                for head in heads {
                    if let Some(dep) = resolve(&head).filter(|d| d != child) {
                        deps.insert(dep);
                    }
                }
            }
        }
    }
    graph
}

/// Every module directory of the crate at `src` (the root first), with its graph.
pub fn crate_graphs(src: &Path) -> Vec<(String, Graph)> {
    let root_file = ["lib.rs", "main.rs"].iter().map(|f| src.join(f)).find(|p| p.exists());
    let root_file = root_file.unwrap_or_else(|| panic!("{} has no lib.rs or main.rs", src.display()));
    let mut pending = vec![ModuleDir { dir: src.to_path_buf(), parent_file: root_file, path: vec![] }];
    let mut out = Vec::new();
    while let Some(m) = pending.pop() {
        for sub in read_dir_sorted(&m.dir).into_iter().rev().filter(|p| p.is_dir()) {
            let name = sub.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let parent_file =
                if sub.join("mod.rs").exists() { sub.join("mod.rs") } else { m.dir.join(format!("{name}.rs")) };
            let mut path = m.path.clone();
            path.push(name);
            pending.push(ModuleDir { dir: sub, parent_file, path });
        }
        let label = if m.path.is_empty() { "crate".to_string() } else { format!("crate::{}", m.path.join("::")) };
        out.push((label, graph_of(&m)));
    }
    out
}

/// A cycle of the graph, as the modules along it (the first repeated at the end), if there is one.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a Graph,
        state: &mut BTreeMap<&'a str, bool>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(true) => {
                let from = stack.iter().position(|n| *n == node).expect("on the stack");
                let mut cycle: Vec<String> = stack[from..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            Some(false) => return None,
            None => {}
        }
        state.insert(node, true);
        stack.push(node);
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(node, false);
        None
    }
    let mut state = BTreeMap::new();
    graph.keys().find_map(|node| visit(node, graph, &mut state, &mut Vec::new()))
}

/// The graph as `module -> deps` lines.
pub fn render(graph: &Graph) -> String {
    graph.iter().map(|(m, deps)| format!("{m} -> {}\n", deps.iter().cloned().collect::<Vec<_>>().join(" "))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
    }

    /// Fails on a cycle between the top-level modules of any of the workspace's crates (and between
    /// the modules of any directory of the diagnostics crate and the CLI), printing the cycle and
    /// that directory's graph.
    #[test]
    fn module_graphs_have_no_cycles() {
        let mut failures = Vec::new();
        for krate in ["raw-gpu-handle", "lava-flow", "lava-flow-diag", "lava-flow-cli"] {
            for (module, graph) in crate_graphs(&workspace().join("crates").join(krate).join("src")) {
                // The library's submodules may lean on each other inside one importer (a CUDA
                // device owns its block cache, which imports through the device); between
                // top-level modules, and anywhere in the diagnostics and the CLI, no cycle.
                if krate == "lava-flow" && module != "crate" {
                    continue;
                }
                println!("{krate} {module}:\n{}", render(&graph));
                if let Some(cycle) = find_cycle(&graph) {
                    failures.push(format!("{krate} {module}: cycle {}\n{}", cycle.join(" -> "), render(&graph)));
                }
            }
        }
        assert!(failures.is_empty(), "module cycles:\n{}", failures.join("\n"));
    }

    /// lava-flow's top-level modules read bottom-up in the documented order: each names only
    /// modules listed before it.
    #[test]
    fn lava_flow_layers_read_bottom_up() {
        let order = ["error", "limits", "fd", "vulkan", "pool", "cuda", "opencl", "gl", "ipc", "remote", "channel"];
        let graphs = crate_graphs(&workspace().join("crates/lava-flow/src"));
        let (_, top) = graphs.iter().find(|(m, _)| m == "crate").expect("the root");
        let known: BTreeSet<&str> = order.iter().copied().collect();
        for module in top.keys() {
            assert!(
                known.contains(module.as_str()),
                "new top-level module {module}: give it a layer here and in DESIGN.md"
            );
        }
        for (i, module) in order.iter().enumerate() {
            for dep in top.get(*module).into_iter().flatten() {
                let at = order.iter().position(|m| m == dep).expect("known");
                assert!(at < i, "{module} names {dep}, a module above it (order: {order:?})\n{}", render(top));
            }
        }
    }

    #[test]
    fn the_check_sees_grouped_reexported_and_super_paths() {
        let dir = std::env::temp_dir().join(format!("layers-check-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("b")).unwrap();
        fs::write(dir.join("lib.rs"), "mod a;\nmod b;\nmod c;\npub use c::{Thing as Alias, inner::Other};\n").unwrap();
        fs::write(dir.join("a.rs"), "use crate::{Alias, b::X};\n// crate::c::Y in a comment does not count\n").unwrap();
        fs::write(dir.join("b/mod.rs"), "mod d;\nfn f() { let s = \"crate::c\"; }\n").unwrap();
        fs::write(dir.join("b/d.rs"), "use super::super::c::Z;\n").unwrap();
        fs::write(dir.join("c.rs"), "pub struct Thing;\nuse super::Other;\n").unwrap();
        let graphs = crate_graphs(&dir);
        let (_, top) = graphs.iter().find(|(m, _)| m == "crate").unwrap();
        assert_eq!(render(top), "a -> b c\nb -> c\nc -> \n");
        assert_eq!(find_cycle(top), None);
        fs::write(dir.join("c.rs"), "use crate::a::Q;\n").unwrap();
        let graphs = crate_graphs(&dir);
        let (_, top) = graphs.iter().find(|(m, _)| m == "crate").unwrap();
        assert_eq!(find_cycle(top), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
        fs::remove_dir_all(&dir).unwrap();
    }
}
