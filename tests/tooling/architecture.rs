//! The layering `docs/ARCHITECTURE.md` draws, checked against the code: every `crate::` and
//! `super::` path in `src/` is resolved to the file it names, then (1) no import runs from a
//! lower layer to a higher one and (2) no two files import each other through a circle (a
//! module's own `mod.rs` face and its children are one unit, as Rust's privacy makes them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rank of each top-level module: an import must go to a strictly lower rank or stay inside
/// its own module. Sub-ranks order the parts of `trust` and `serve` the same way.
fn rank(module: &[String]) -> (u32, u32) {
    let top = module.first().map(String::as_str).unwrap_or("");
    let sub = module.get(1).map(String::as_str).unwrap_or("");
    let major = match top {
        "main" | "bin" | "cli" => 60,
        "serve" | "train" => 50,
        "repository" => 40,
        "trust" => 30,
        "data" | "runtime" => 20,
        "numeric" | "fsutil" | "logging" => 10,
        "" | "lib" => 100,
        other => panic!("src/{other}: give the new top-level module a rank in this test"),
    };
    let minor = match (top, sub) {
        ("trust", "metrics" | "conformal") => 1,
        ("trust", "calibration") => 2,
        ("trust", "ood") => 3,
        ("trust", "diagram") => 3,
        ("serve", "monitor" | "prometheus") => 1,
        ("serve", "infer") => 2,
        ("serve", "config" | "kserve") => 3,
        ("serve", "http") => 4,
        ("serve", "grpc") => 5,
        _ => 0,
    };
    (major, minor)
}

/// Module path of a source file: `src/trust/calibration/fit.rs` -> [trust, calibration, fit].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] {
        parts.clear();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Expands `use a::{b, c::{d, e}}`-style groups into flat paths.
fn expand(prefix: &str, body: &str, out: &mut Vec<String>) {
    let mut depth = 0;
    let mut start = 0;
    let bytes: Vec<char> = body.chars().collect();
    let mut items = Vec::new();
    for (i, &ch) in bytes.iter().enumerate() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(bytes[start..i].iter().collect::<String>());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(bytes[start..].iter().collect::<String>());
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if let Some(open) = item.find('{') {
            let head = item[..open].trim_end_matches("::");
            let inner = &item[open + 1..item.rfind('}').unwrap()];
            expand(&format!("{prefix}::{head}"), inner, out);
        } else {
            let name = item.split(" as ").next().unwrap().trim();
            out.push(format!("{prefix}::{name}"));
        }
    }
}

/// Every path a file names that starts at `crate::`, `super::` or `self::`, with comments
/// and string contents left out.
fn paths_in(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..chars.len().min(i + 8)].iter().collect();
        let boundary = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if boundary
            && (rest.starts_with("crate::")
                || rest.starts_with("super::")
                || rest.starts_with("self::"))
        {
            let mut j = i;
            while j < chars.len()
                && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == ':')
            {
                j += 1;
            }
            let head: String = chars[i..j].iter().collect::<String>();
            if j < chars.len() && chars[j] == '{' {
                let mut depth = 0;
                let mut k = j;
                while k < chars.len() {
                    match chars[k] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    k += 1;
                }
                let body: String = chars[j + 1..k].iter().collect();
                expand(head.trim_end_matches("::"), &body, &mut out);
                i = k;
            } else {
                out.push(head.trim_end_matches("::").to_string());
                i = j;
            }
        }
        i += 1;
    }
    out
}

/// The longest prefix of `path` (absolute segments) that is a module with a file.
fn resolve(path: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains_key(p))
}

/// Absolute segments of a `crate::`/`super::`/`self::` path written in module `from`.
fn absolute(from: &[String], path: &str) -> Vec<String> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    // `from` is the module itself (a `mod.rs` is its folder's module), so `super` is its parent.
    let mut base: Vec<String> = from.to_vec();
    match segs.first() {
        Some(&"crate") => {
            base.clear();
            segs.remove(0);
        }
        Some(&"self") => {
            segs.remove(0);
        }
        _ => {}
    }
    while segs.first() == Some(&"super") {
        base.pop();
        segs.remove(0);
    }
    base.extend(segs.iter().map(|s| s.to_string()));
    base
}

struct Graph {
    modules: BTreeMap<Vec<String>, PathBuf>,
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules = BTreeMap::new();
    for f in &files {
        modules.insert(module_of(&src, f), f.clone());
    }
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (m, f) in &modules {
        // Binaries reach the library as `caliper::`; they sit above everything anyway.
        if m.first().is_some_and(|t| t == "main" || t == "bin") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests may reach anywhere in their own module tree; only the module's own code
        // counts.
        let text = text.split("#[cfg(test)]").next().unwrap();
        for p in paths_in(text) {
            let abs = absolute(m, &p);
            if let Some(target) = resolve(&abs, &modules)
                && &target != m
            {
                edges.entry(m.clone()).or_default().insert(target);
            }
        }
    }
    Graph { modules, edges }
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn imports_point_down_the_layers() {
    let g = graph();
    let mut bad = Vec::new();
    for (from, targets) in &g.edges {
        for to in targets {
            let same_top = from.first() == to.first();
            let (rf, rt) = (rank(from), rank(to));
            // Inside one top-level module only the ranked parts of `trust` and `serve` are
            // ordered; a part may use its own children and parent freely.
            let ok = if !same_top {
                rt.0 < rf.0
            } else if from.get(1) == to.get(1) || rf.1 == 0 || rt.1 == 0 {
                true
            } else {
                rt.1 < rf.1
            };
            if !ok && !to.is_empty() {
                bad.push(format!("{} -> {}", show(from), show(to)));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports that run back up the layers:\n{}",
        bad.join("\n")
    );
    // The graph is not empty by accident (a parser that finds nothing passes everything).
    assert!(
        g.modules.len() > 50,
        "found only {} modules",
        g.modules.len()
    );
    let n: usize = g.edges.values().map(BTreeSet::len).sum();
    assert!(n > 100, "found only {n} imports");
}

#[test]
fn no_import_circles_between_files() {
    let g = graph();
    // A module's face (`mod.rs`) and its descendants are one unit: the parent declares its
    // children and the children use the parent's items, which Rust requires, so edges between a
    // file and its ancestors are not circles.
    let is_ancestor = |a: &[String], b: &[String]| a.len() < b.len() && b.starts_with(a);
    let adj = |m: &Vec<String>| -> Vec<Vec<String>> {
        g.edges
            .get(m)
            .map(|t| {
                t.iter()
                    .filter(|t| !is_ancestor(t, m) && !is_ancestor(m, t))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    // Tarjan's strongly connected components (the module tree is shallow enough to recurse).
    struct State {
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on: BTreeSet<Vec<String>>,
        next: usize,
        circles: Vec<Vec<Vec<String>>>,
    }
    fn visit(v: &Vec<String>, s: &mut State, adj: &dyn Fn(&Vec<String>) -> Vec<Vec<String>>) {
        s.index.insert(v.clone(), s.next);
        s.low.insert(v.clone(), s.next);
        s.next += 1;
        s.stack.push(v.clone());
        s.on.insert(v.clone());
        for w in adj(v) {
            if !s.index.contains_key(&w) {
                visit(&w, s, adj);
                let lw = s.low[&w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(&w) {
                let iw = s.index[&w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                s.circles.push(comp);
            }
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        circles: Vec::new(),
    };
    for m in g.modules.keys() {
        if !s.index.contains_key(m) {
            visit(m, &mut s, &adj);
        }
    }
    let shown: Vec<String> = s
        .circles
        .iter()
        .map(|c| c.iter().map(|m| show(m)).collect::<Vec<_>>().join(" <-> "))
        .collect();
    assert!(shown.is_empty(), "import circles:\n{}", shown.join("\n"));
}

#[test]
fn the_parser_sees_groups_and_nested_paths() {
    let p = paths_in(
        "use super::{Calibrator, fit::{FitOptions, Method as M}};\nlet x = crate::trust::metrics::ece(); // crate::serve\n",
    );
    assert_eq!(
        p,
        [
            "super::Calibrator",
            "super::fit::FitOptions",
            "super::fit::Method",
            "crate::trust::metrics::ece"
        ]
    );
}
