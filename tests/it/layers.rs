//! The layers of DEVELOPERS.md hold: each module of `src/` uses only the layers above it in
//! that table (or its own), and every module has a row.

use std::path::Path;

/// The table's rows, in order: the top-level modules each names (`workload`, `error`, ...).
fn layers(developers: &str) -> Vec<Vec<String>> {
    let start = developers
        .find("| layer | what it is | uses |")
        .expect("DEVELOPERS.md has the layer table");
    developers[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let first = row.split('|').nth(1).unwrap_or_default();
            first
                .split('`')
                .filter(|p| p.starts_with("src/"))
                .map(|p| module_of(p.trim_end_matches('/')))
                .collect()
        })
        .collect()
}

/// `src/workload/dtype.rs` -> `workload`; `src/error.rs` -> `error`.
fn module_of(path: &str) -> String {
    let rest = path.trim_start_matches("src/");
    let top = rest.split('/').next().unwrap_or(rest);
    top.trim_end_matches(".rs").to_string()
}

/// Every `crate::NAME` a source names outside comments.
fn crate_refs(source: &str) -> Vec<String> {
    refs(source, "crate::")
}

/// The first segment of every path after `prefix` (`crate::`, `super::`) outside comments,
/// braces opened: `use crate::{a::X, b}` names a and b.
fn refs(source: &str, prefix: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for line in source.lines() {
        let mut rest = line.split("//").next().unwrap_or_default();
        while let Some(i) = rest.find(prefix) {
            rest = &rest[i + prefix.len()..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    let inner = group.split('}').next().unwrap_or_default();
                    out.extend(inner.split(',').map(ident));
                }
                None => out.push(ident(rest)),
            }
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = layers(&std::fs::read_to_string(root.join("DEVELOPERS.md")).unwrap());
    let layer = |m: &str| table.iter().position(|row| row.iter().any(|x| x == m));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == "src/lib.rs" || rel.starts_with("src/bin/") {
            continue;
        }
        let module = module_of(&rel);
        let Some(own) = layer(&module) else {
            wrong.push(format!(
                "{rel}: module {module} has no row in the layer table"
            ));
            continue;
        };
        let source = std::fs::read_to_string(f).unwrap();
        for used in crate_refs(&source) {
            match layer(&used) {
                Some(l) if l > own => {
                    wrong.push(format!("{rel} ({module}) uses {used}, a layer below it"))
                }
                _ => {}
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_a_use_that_reaches_down() {
    let table = layers(
        "| layer | what it is | uses |\n|---|---|---|\n| `src/registry.rs` | x | nothing |\n\
         | `src/report/` | y | registry |\n\n",
    );
    assert_eq!(
        table,
        vec![vec!["registry".to_string()], vec!["report".into()]]
    );
    assert_eq!(
        crate_refs("use crate::{report::X, registry};\nlet a = crate::backend::f(); // crate::no"),
        ["report", "registry", "backend"]
    );
}

/// The sibling files `source` (a file of a folder, not its mod.rs) names through `super::`.
fn siblings_named(source: &str, stems: &[String]) -> Vec<String> {
    let named = refs(source, "super::");
    stems
        .iter()
        .filter(|s| named.contains(s))
        .cloned()
        .collect()
}

#[test]
fn no_two_files_import_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut by_dir: std::collections::BTreeMap<std::path::PathBuf, Vec<std::path::PathBuf>> =
        Default::default();
    for f in files {
        if f.file_name()
            .is_some_and(|n| n != "mod.rs" && n != "lib.rs" && n != "main.rs")
        {
            by_dir
                .entry(f.parent().unwrap().to_path_buf())
                .or_default()
                .push(f);
        }
    }
    let mut pairs = Vec::new();
    for (dir, files) in &by_dir {
        let stem = |f: &Path| f.file_stem().unwrap().to_string_lossy().into_owned();
        let stems: Vec<String> = files.iter().map(|f| stem(f)).collect();
        let uses: Vec<(String, Vec<String>)> = files
            .iter()
            .map(|f| {
                (
                    stem(f),
                    siblings_named(&std::fs::read_to_string(f).unwrap(), &stems),
                )
            })
            .collect();
        for (a, named) in &uses {
            for b in named.iter().filter(|b| *b > a) {
                if uses.iter().any(|(x, n)| x == b && n.contains(a)) {
                    let d = dir.strip_prefix(root).unwrap().display();
                    pairs.push(format!("{d}/{a}.rs <-> {d}/{b}.rs"));
                }
            }
        }
    }
    assert!(
        pairs.is_empty(),
        "files that import each other:\n{}",
        pairs.join("\n")
    );
    // The check sees a pair.
    let stems = ["a".to_string(), "b".to_string()];
    assert_eq!(siblings_named("use super::b::X;", &stems), ["b"]);
    assert_eq!(siblings_named("use super::{a::Y, c};", &stems), ["a"]);
}
