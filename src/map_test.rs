//! Holds the code map in `lib.rs` to the code: each module's "knows nothing of" column against
//! the `crate::` paths and external crates its code names, the invariants a reader can check
//! by reading the sources, and the length of every function outside tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const EXTERNAL: [&str; 3] = ["tch", "rust_bert", "serenity"];

/// Each module's source files, the top-level modules in `lib.rs` order.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|line| line.strip_prefix("pub mod ").and_then(|rest| rest.strip_suffix(';')))
        .map(|name| {
            let file = src.join(format!("{name}.rs"));
            let files = if file.exists() { vec![file] } else { rust_files(&src.join(name)) };
            assert!(!files.is_empty(), "module {name} has no source");
            (name.to_string(), files)
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A file's code without its tests and comments (doc links name modules a file does not use).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
    before_tests.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The crate modules and external crates a module's code names.
fn named(files: &[PathBuf], all: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in files {
        let code = code(file);
        for (at, _) in code.match_indices("crate::") {
            let before = code[..at].chars().last().unwrap_or(' ');
            let name: String = code[at + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !before.is_alphanumeric() && before != '_' && all.contains(&name) {
                names.insert(name);
            }
        }
        for external in EXTERNAL {
            let pattern = format!("{external}::");
            if code.match_indices(&pattern).any(|(at, _)| !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')) {
                names.insert(external.to_string());
            }
        }
    }
    names
}

/// The map's rows: module -> the names in its "knows nothing of" column, groups expanded.
fn forbidden(all: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let backticked = |text: &str| -> Vec<String> { text.split('`').skip(1).step_by(2).map(str::to_string).collect() };
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lib.lines() {
        for group in ["torch", "Discord"] {
            if let Some(members) = line.strip_prefix(&format!("//! - {group}: ")) {
                groups.insert(group.to_string(), backticked(members));
            }
        }
    }
    assert_eq!(groups.len(), 2, "the map defines the torch and Discord groups");
    let mut rows = BTreeMap::new();
    for line in lib.lines().filter(|l| l.starts_with("//! | [`")) {
        let cells: Vec<&str> = line.trim_end_matches('|').split(" | ").collect();
        let module = backticked(cells[1]).remove(0);
        let last = cells.last().unwrap().trim();
        let mut names: BTreeSet<String> = backticked(last).into_iter().collect();
        for (group, members) in &groups {
            if last.split(',').any(|part| part.trim() == group) {
                names.extend(members.iter().cloned());
            }
        }
        if last.split(',').any(|part| part.trim() == "the rest") {
            names.extend(all.iter().filter(|m| **m != module).cloned());
            names.extend(EXTERNAL.map(String::from));
        }
        rows.insert(module, names);
    }
    rows
}

#[test]
fn every_module_is_in_the_map_and_knows_nothing_of_what_the_map_says() {
    let modules = modules();
    let all: BTreeSet<String> = modules.keys().cloned().collect();
    let rows = forbidden(&all);
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), all, "one row per module of lib.rs");
    let mut broken = Vec::new();
    for (module, files) in &modules {
        for name in named(files, &all).intersection(&rows[module]) {
            broken.push(format!("{module} names {name}, which the map says it knows nothing of"));
        }
    }
    assert!(broken.is_empty(), "the code map in lib.rs is false:\n{}", broken.join("\n"));
}

#[test]
fn the_invariants_about_crates_and_cli_hold() {
    let modules = modules();
    let all: BTreeSet<String> = modules.keys().cloned().collect();
    let allowed: [(&str, &[&str]); 4] = [("tch", &["vision", "text", "models", "bench"]), ("rust_bert", &["text"]), ("serenity", &["discord"]), ("cli", &[])];
    for (name, owners) in allowed {
        let users: Vec<&String> = modules.iter().filter(|(module, files)| *module != "cli" && named(files, &all).contains(name)).map(|(module, _)| module).collect();
        assert!(users.iter().all(|m| owners.contains(&m.as_str())), "{name} is named by {users:?}; the invariants in lib.rs allow only {owners:?}");
    }
}

#[test]
fn no_function_outside_tests_is_longer_than_100_lines() {
    let mut long = Vec::new();
    for file in modules().values().flatten() {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.split("#[cfg(test)]").next().unwrap_or_default().lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let is_fn = ["fn ", "pub fn ", "pub(crate) fn ", "pub(super) fn ", "async fn ", "pub async fn ", "pub(super) async fn ", "pub(crate) async fn "].iter().any(|p| trimmed.starts_with(p));
            if !is_fn || trimmed.ends_with(';') {
                continue;
            }
            let end = (start..lines.len()).find(|&n| lines[n] == format!("{indent}}}")).unwrap_or(start);
            if end - start + 1 > 100 {
                long.push(format!("{}:{} is {} lines", file.display(), start + 1, end - start + 1));
            }
        }
    }
    assert!(long.is_empty(), "cut these into named steps:\n{}", long.join("\n"));
}

/// A module that uses `index`, `search` and `tch`, mentions `discord` in a comment and `vision`
/// in its tests.
const PROBE: &str = "use crate::index::Hit;\n/// See [`crate::discord`].\nfn f() { let _ = crate::search::Query::default(); tch::Tensor::zeros(); }\n#[cfg(test)]\nmod tests { use crate::vision; }\n";

#[test]
fn the_checker_sees_uses_and_paths_but_not_comments() {
    let file = tempfile::Builder::new().suffix(".rs").tempfile().unwrap();
    std::fs::write(file.path(), PROBE).unwrap();
    let file = file.path().to_path_buf();
    let all: BTreeSet<String> = ["index", "discord", "search", "vision"].map(String::from).into();
    assert_eq!(named(&[file], &all), ["index", "search", "tch"].map(String::from).into());
}
