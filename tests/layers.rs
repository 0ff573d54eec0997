//! The crate's floors, checked from its source: which modules may use which
//! (ARCHITECTURE.md, "Floors"), no import cycles outside the SQLite module,
//! and SQLite's client library named only where SQLite lives.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file belongs to, as the floors name them: `core::<file>`
/// for the core's files, the top folder (or file) for the rest.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    match parts.as_slice() {
        [core, file] if core == "core" => format!("core::{file}"),
        // A backend's side of the testing kit belongs to the kit's floor.
        [_, kit, ..] if kit == "testing" => "testing".to_owned(),
        [top, ..] => top.clone(),
        [] => unreachable!("a file has a path"),
    }
}

/// The code of a file without its comments (doc links name modules
/// without depending on them).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `code` refers to through `crate::` paths: `core::<file>`
/// for the core, the top module for the rest, `root` for re-exports of the
/// crate root (`crate::Engine`).
fn references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        // `use crate::{a::b, c}`: each item of the group.
        let path: String = rest
            .chars()
            .take_while(|c| {
                c.is_alphanumeric()
                    || *c == '_'
                    || *c == ':'
                    || *c == '{'
                    || *c == '}'
                    || *c == ','
                    || *c == ' '
                    || *c == '\n'
            })
            .collect();
        let items: Vec<&str> = if path.starts_with('{') {
            path.trim_start_matches('{')
                .split(',')
                .map(str::trim)
                .collect()
        } else {
            vec![path.as_str()]
        };
        for item in items {
            let segments: Vec<&str> = item
                .split("::")
                .map(|s| s.trim_matches(|c: char| !c.is_alphanumeric() && c != '_'))
                .collect();
            let Some(first) = segments.first().filter(|s| !s.is_empty()) else {
                continue;
            };
            if first.chars().next().is_some_and(char::is_uppercase) {
                found.insert("root".to_owned());
            } else if *first == "core" {
                match segments.get(1).filter(|s| !s.is_empty()) {
                    Some(file) => found.insert(format!("core::{file}")),
                    None => found.insert("core".to_owned()),
                };
            } else {
                found.insert((*first).to_owned());
            }
        }
    }
    found
}

/// Module → the modules it refers to, and module → its files' code.
fn graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).expect("read source");
        let code = code(&text);
        let refs = references(&code);
        let entry = edges.entry(module.clone()).or_default();
        entry.extend(refs.into_iter().filter(|r| *r != module));
        texts.entry(module).or_default().push_str(&text);
    }
    (edges, texts)
}

/// The modules `from` may refer to.
fn allowed(from: &str) -> Option<&'static [&'static str]> {
    if from.starts_with("core::") {
        return Some(&["core::"]);
    }
    match from {
        "driver" => Some(&["core::"]),
        "engine" => Some(&["core::", "driver"]),
        "memory" => Some(&["core::", "driver", "engine"]),
        "postgres" => Some(&["core::", "driver", "engine", "root"]),
        "leadership" => Some(&["core::", "engine", "sqlite"]),
        _ => None,
    }
}

#[test]
fn each_floor_uses_only_the_floors_below_it() {
    let (edges, _) = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        let Some(allowed) = allowed(from) else {
            continue;
        };
        for to in tos {
            if !allowed.iter().any(|a| to == a || to.starts_with(a)) {
                wrong.push(format!("{from} → {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "references across floors: {wrong:?}");
}

#[test]
fn the_lease_state_machine_imports_only_keys_errors_and_time() {
    let (edges, _) = graph();
    let lease = &edges["core::lease"];
    for to in lease {
        assert!(
            ["core::key", "core::error", "core::clock"].contains(&to.as_str()),
            "core::lease refers to {to}"
        );
    }
}

#[test]
fn no_import_cycles_outside_the_sqlite_module() {
    let (edges, _) = graph();
    // The one cycle allowed: an error names keys, and keys build errors.
    let skip = |from: &str, to: &str| {
        from == "sqlite"
            || to == "sqlite"
            || to == "root"
            || (from == "core::key" && to == "core::error")
    };
    // Depth-first search for a back edge.
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        skip: &dyn Fn(&str, &str) -> bool,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(node, 1);
        path.push(node);
        for to in edges.get(node).into_iter().flatten() {
            if skip(node, to) || !edges.contains_key(to.as_str()) {
                continue;
            }
            match state.get(to.as_str()) {
                Some(1) => {
                    let at = path.iter().position(|p| p == to).unwrap_or(0);
                    cycles.push(format!("{} → {to}", path[at..].join(" → ")));
                }
                Some(_) => {}
                None => visit(to, edges, skip, state, path, cycles),
            }
        }
        path.pop();
        state.insert(node, 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str()) {
            visit(
                node,
                &edges,
                &skip,
                &mut state,
                &mut Vec::new(),
                &mut cycles,
            );
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
}

#[test]
fn sqlites_client_library_is_named_only_where_sqlite_lives() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut naming: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .expect("read")
                .contains("rusqlite")
        })
        .map(|f| {
            f.strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    naming.sort();
    for file in &naming {
        assert!(
            file.starts_with("sqlite/") || file == "lib.rs" || file.starts_with("cli/"),
            "{file} names SQLite's client library; all of: {naming:?}"
        );
    }
}
