//! The layering of `src/`, checked: every module belongs to a layer, imports only from its
//! own layer or those below, and no modules import each other in a circle. The pure core
//! also names no I/O, lock or configuration type. (docs/architecture.md draws the layers.)
//!
//! Imports are read from the source text: `crate::` paths, grouped or not, outside comments.
//! `super::` paths are left out: they reach the parent module, which is the same layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module belongs to the layer of the longest prefix that names it.
const LAYERS: &[(&str, &[&str])] = &[
    ("pure core", &["pure"]),
    ("configuration", &["config"]),
    ("state", &["state"]),
    ("runtime", &["runtime"]),
    ("Kafka source", &["source"]),
    ("alerts", &["alert"]),
    ("read side", &["read"]),
    ("HTTP server", &["server"]),
    ("service", &["service"]),
    ("tools", &["tools"]),
];

/// What the pure core must not name: it does no I/O, takes no lock and reads no configuration
/// (time and settings are passed in).
const NOT_IN_CORE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::env",
    "std::io",
    "SystemTime",
    "Instant::now",
    "tokio",
    "rdkafka",
    "Mutex",
    "RwLock",
    "parking_lot",
    "crate::config",
    "crate::now_ms",
    "crate::coarse_now_ms",
];

struct Module {
    file: PathBuf,
    text: String,
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; `src/lib.rs` and `src/main.rs` → ``.
fn module_path(file: &Path) -> String {
    let rel = file.strip_prefix("src").unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

fn modules() -> BTreeMap<String, Module> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new("src"), &mut files);
    files
        .into_iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            (module_path(&file), Module { file, text })
        })
        .collect()
}

/// The text without `//` comments (doc comments included), so prose naming a module is not
/// an import. String literals holding `//` are rare enough here not to matter.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The items of a `{a::b, c::{d, e}}` group's body, nested groups expanded: `a::b`, `c::d`,
/// `c::e`.
fn expand(prefix: &str, body: &str, out: &mut Vec<String>) {
    let (mut item, mut depth) = (String::new(), 0);
    for c in body.chars().chain([',']) {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                let item = std::mem::take(&mut item);
                let item = item.trim();
                match item.split_once('{') {
                    Some((head, inner)) => {
                        expand(&format!("{prefix}{head}"), inner.trim_end_matches('}'), out)
                    }
                    None if !item.is_empty() => out.push(format!("{prefix}{item}")),
                    None => {}
                }
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
}

/// Every `crate::` path in `code`; a group `crate::{a::b, c}` gives `a::b` and `c`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| is_ident(c) || c == ':' || c == '$') {
            continue; // `$crate::`, `other_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            expand("", &group[..end], &mut out);
        } else {
            let end = rest
                .find(|c: char| !(is_ident(c) || c == ':'))
                .unwrap_or(rest.len());
            out.push(rest[..end].to_string());
        }
    }
    out.into_iter()
        .map(|p| {
            p.split(" as ")
                .next()
                .unwrap()
                .trim_end_matches(':')
                .to_string()
        })
        .filter(|p| !p.is_empty())
        .collect()
}

/// The module a path names or reaches into: its longest prefix that is a module.
fn target<'a>(path: &str, modules: &'a BTreeMap<String, Module>) -> Option<&'a str> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len()).rev().find_map(|n| {
        modules
            .get_key_value(&segments[..n].join("::"))
            .map(|(k, _)| k.as_str())
    })
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, prefixes))| prefixes.iter().map(move |p| (i, *p)))
        .filter(|(_, p)| module == *p || module.starts_with(&format!("{p}::")))
        .max_by_key(|(_, p)| p.len())
        .map(|(i, _)| i)
}

fn imports(modules: &BTreeMap<String, Module>) -> BTreeMap<&str, BTreeSet<&str>> {
    modules
        .iter()
        .map(|(name, m)| {
            let deps = crate_paths(&code(&m.text))
                .iter()
                .filter_map(|p| target(p, modules))
                .filter(|t| *t != name && !t.is_empty())
                .collect();
            (name.as_str(), deps)
        })
        .collect()
}

#[test]
fn every_module_has_a_layer_and_imports_only_downwards() {
    let modules = modules();
    let mut wrong = Vec::new();
    for (module, deps) in imports(&modules) {
        if module.is_empty() {
            continue; // lib.rs declares the layers
        }
        let Some(layer) = layer_of(module) else {
            wrong.push(format!(
                "{} is in no layer: add it to LAYERS in tests/layers.rs",
                modules[module].file.display()
            ));
            continue;
        };
        for dep in deps {
            let Some(dep_layer) = layer_of(dep) else {
                continue; // reported as its own module
            };
            if dep_layer > layer {
                wrong.push(format!(
                    "{} ({}) imports {dep} ({}), a layer above it",
                    modules[module].file.display(),
                    LAYERS[layer].0,
                    LAYERS[dep_layer].0
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let modules = modules();
    let graph = imports(&modules);
    // Depth-first search; a module met again while on the path closes a circle.
    fn visit<'a>(
        m: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m);
            circles.push(circle.join(" -> "));
            return;
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for dep in graph.get(m).into_iter().flatten() {
            visit(dep, graph, path, done, circles);
        }
        path.pop();
    }
    let (mut done, mut circles) = (BTreeSet::new(), Vec::new());
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_pure_core_does_no_io_takes_no_lock_and_reads_no_configuration() {
    let modules = modules();
    let mut found = Vec::new();
    for (name, m) in &modules {
        if layer_of(name) != Some(0) {
            continue;
        }
        let code = code(&m.text);
        for word in NOT_IN_CORE {
            if code.contains(word) {
                found.push(format!("{} names {word}", m.file.display()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The checks themselves: a grouped import is read whole, and an upward import is caught.
#[test]
fn the_import_reader_sees_grouped_and_plain_paths() {
    let text = "use crate::read::metrics::Render;\nuse crate::{pure::{window::Windows, kpi}, state::aggregate::Store};\n// crate::service in a comment\nlet x = crate::now_ms();";
    assert_eq!(
        crate_paths(&code(text)),
        [
            "read::metrics::Render",
            "pure::window::Windows",
            "pure::kpi",
            "state::aggregate::Store",
            "now_ms"
        ]
    );
    assert_eq!(layer_of("pure::window"), Some(0));
    assert!(layer_of("read::metrics") > layer_of("state::aggregate"));
    assert_eq!(layer_of("nowhere"), None);
}
