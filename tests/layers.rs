//! The crate's modules form layers: each top-level module may use only the modules of the
//! layers below it, and nothing uses the composition root (`server`) but the CLI. This test
//! reads every `crate::` path in `src/` (comments excluded) and fails on an import that goes
//! up or sideways, naming the file and the line, so a cycle cannot come back unnoticed.
//! docs/ARCHITECTURE.md explains the layers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may use modules of its own layer only where listed in
/// `SIDEWAYS`, and any module of a lower layer.
const LAYERS: &[&[&str]] = &[
    &["domain", "transcript"],
    &["access", "format", "audio", "models"],
    &["inference", "live", "upload"],
    &["protocol", "eval"],
    &["metrics"],
    &["jobs"],
    &["cluster"],
    &["app"],
    &["ws", "http", "client", "realtime", "wyoming"],
    &["server"],
    &["cli"],
];

/// Uses within one layer that are part of the design: (user, used).
const SIDEWAYS: &[(&str, &str)] = &[
    ("format", "domain"),
    ("inference", "audio"),
    ("live", "audio"),
    ("audio", "transcript"),
    // The Realtime session reuses the WebSocket session's outbound queue, writer and closes.
    ("realtime", "ws"),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`src/ws/live.rs` → `ws`).
fn owner(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::NAME` in the code of `text`, with its line number; comments are skipped.
fn crate_uses(text: &str) -> Vec<(usize, String)> {
    let mut uses = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            uses.push((n + 1, name));
            rest = after;
        }
        // `use crate::{a, b}` groups
        if let Some(i) = code.find("crate::{") {
            let group = &code[i + "crate::{".len()..];
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    uses.push((n + 1, name));
                }
            }
        }
    }
    uses
}

#[test]
fn modules_only_use_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let user = owner(&src, file);
        if user == "lib" || user == "bin" {
            continue;
        }
        let user_layer = layer_of(&user)
            .unwrap_or_else(|| panic!("module `{user}` is in no layer: add it to LAYERS"));
        let text = std::fs::read_to_string(file).unwrap();
        for (line, used) in crate_uses(&text) {
            if used == user || used.is_empty() {
                continue;
            }
            let Some(used_layer) = layer_of(&used) else {
                continue; // an item of lib.rs, not a module
            };
            let allowed = used_layer < user_layer
                || (used_layer == user_layer && SIDEWAYS.contains(&(user.as_str(), used.as_str())));
            if !allowed {
                let at = format!("{}:{line}", file.strip_prefix(&src).unwrap().display());
                wrong
                    .entry(format!("{user} -> {used}"))
                    .or_default()
                    .push(at);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers (docs/ARCHITECTURE.md):\n{}",
        wrong
            .iter()
            .map(|(edge, at)| format!("  {edge}: {}", at.join(", ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_checker_sees_plain_grouped_and_inline_paths_but_not_comments() {
    let text = "use crate::app::AppState;\nuse crate::{domain, jobs::Job};\n\
                let x = crate::metrics::chunk(1); // crate::server\n/// [`crate::ws`]\n";
    let names: Vec<String> = crate_uses(text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["app", "", "domain", "jobs", "metrics"]);
}
