//! The crate's layers, kept: every `crate::` path in `src/**/*.rs` may name only a
//! module of its own layer or one below (`../shared/design/architecture.md`), and the
//! modules import one another without a cycle. A new top-level module must be placed
//! in `LAYERS` before this test passes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Bottom to top. `telemetry::labels` is a leaf below `upstream`; the rest of
/// `telemetry` (metrics, logs, traces) sits above it.
const LAYERS: &[&[&str]] = &[
    &["error", "addr_text", "hex", "http_parts", "echo", "config"],
    &["tls", "telemetry::labels"],
    &["upstream"],
    &["route", "security", "ratelimit", "wasm", "telemetry"],
    &["snapshot", "source"],
    &["pipeline", "explain"],
    &["listener", "sidecar"],
    &["supervisor", "admin", "lib", "main"],
];

fn layer(node: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&node))
}

/// The node a module path belongs to: its top-level module, except the labels leaf.
fn node(path: &[String]) -> String {
    match path {
        [top, sub, ..] if top == "telemetry" && sub == "labels" => "telemetry::labels".into(),
        [top, ..] => top.clone(),
        [] => "lib".into(),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("src is readable").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without `//` comments (doc comments name modules freely).
fn strip_comments(src: &str) -> String {
    src.lines().map(|l| l.split_once("//").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n")
}

/// Every path written after `crate::`, expanding `{a::b, c}` groups.
fn crate_paths(src: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `some_crate::`
        }
        tree(&mut rest, Vec::new(), &mut out);
    }
    out
}

/// Parses one use-tree at the start of `s` under `prefix`, advancing `s`.
fn tree(s: &mut &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        *s = s.trim_start();
        if let Some(group) = s.strip_prefix('{') {
            *s = group;
            loop {
                *s = s.trim_start();
                if let Some(end) = s.strip_prefix('}') {
                    *s = end;
                    return;
                }
                tree(s, path.clone(), out);
                *s = s.trim_start();
                if let Some(next) = s.strip_prefix(',') {
                    *s = next;
                }
            }
        }
        let len = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
        if len == 0 {
            break;
        }
        path.push(s[..len].to_string());
        *s = &s[len..];
        match s.strip_prefix("::") {
            Some(next) => *s = next,
            None => break,
        }
    }
    // `path as name`: the name is local.
    if let Some(alias) = s.trim_start().strip_prefix("as ") {
        let alias = alias.trim_start();
        *s = &alias[alias.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(alias.len())..];
    }
    // `self` in a group names the prefix itself.
    if path.last().is_some_and(|p| p == "self") {
        path.pop();
    }
    if !path.is_empty() {
        out.push(path);
    }
}

#[test]
fn modules_import_only_their_own_layer_or_below_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let module: Vec<String> =
            rel.with_extension("").iter().map(|c| c.to_string_lossy().into_owned()).filter(|c| c != "mod").collect();
        let from = node(&module);
        let Some(from_layer) = layer(&from) else {
            problems.push(format!("{}: module {from} is not in LAYERS", rel.display()));
            continue;
        };
        for path in crate_paths(&strip_comments(&fs::read_to_string(file).unwrap())) {
            let to = node(&path);
            if to == from || !path[0].chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue; // own module, or an item of the crate root (a macro, a re-export)
            }
            match layer(&to) {
                None if to == "self" || to == "super" => {}
                None => problems.push(format!("{}: crate::{} is not in LAYERS", rel.display(), path.join("::"))),
                Some(to_layer) if to_layer > from_layer => problems.push(format!(
                    "{}: {from} (layer {from_layer}) imports crate::{} (layer {to_layer})",
                    rel.display(),
                    path.join("::")
                )),
                Some(_) => {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    // Within a layer, imports must still not go round.
    let mut done = BTreeSet::new();
    for start in edges.keys() {
        if let Some(cycle) = find_cycle(&edges, &mut vec![start.clone()], &mut done) {
            problems.push(format!("import cycle: {}", cycle.join(" -> ")));
            break;
        }
    }
    assert!(problems.is_empty(), "the layers of architecture.md are broken:\n{}", problems.join("\n"));
}

/// Depth first from the last node of `chain`: a chain that comes back to one of its
/// own nodes is a cycle. `done` holds nodes already known to lead to none.
fn find_cycle(
    edges: &BTreeMap<String, BTreeSet<String>>,
    chain: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let last = chain.last().expect("chains start with a node").clone();
    for next in edges.get(&last).into_iter().flatten() {
        if let Some(i) = chain.iter().position(|n| n == next) {
            let mut cycle = chain[i..].to_vec();
            cycle.push(next.clone());
            return Some(cycle);
        }
        if !done.contains(next) {
            chain.push(next.clone());
            if let Some(cycle) = find_cycle(edges, chain, done) {
                return Some(cycle);
            }
            chain.pop();
        }
    }
    done.insert(last);
    None
}

#[test]
fn use_trees_are_read_as_rust_reads_them() {
    let paths =
        crate_paths("use crate::{a::{self, B}, c::d::{e as x, f::G}, h};\nlet x = crate::i::j(1); my_crate::k::l();");
    let paths: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(paths, ["a", "a::B", "c::d::e", "c::d::f::G", "h", "i::j"]);
    assert_eq!(node(&["telemetry".into(), "labels".into(), "X".into()]), "telemetry::labels");
    assert_eq!(node(&["telemetry".into(), "Metrics".into()]), "telemetry");
}
