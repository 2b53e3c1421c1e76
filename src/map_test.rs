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
        .filter_map(|line| line.split_once("mod ").filter(|(before, _)| ["", "pub ", "pub(crate) "].contains(before)).and_then(|(_, rest)| rest.strip_suffix(';')))
        .filter(|name| *name != "map_test")
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
    let text = without_tests(&std::fs::read_to_string(path).unwrap());
    let uncommented = |line: &str| -> String {
        // A comment starts at `//` at the line's start or after a space, not inside "https://".
        let cut = line.match_indices("//").find(|(at, _)| *at == 0 || line[..*at].ends_with(char::is_whitespace)).map_or(line.len(), |(at, _)| at);
        line[..cut].to_string()
    };
    text.lines().map(uncommented).collect::<Vec<_>>().join("\n")
}

/// `text` without the items marked `#[cfg(test)]` (each up to its closing brace at its own
/// indentation, or its `;`), wherever they are in the file.
fn without_tests(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::with_capacity(lines.len());
    let mut at = 0;
    while at < lines.len() {
        if lines[at].trim() != "#[cfg(test)]" {
            kept.push(lines[at]);
            at += 1;
            continue;
        }
        let Some(first) = lines.get(at + 1) else { break };
        let indent = &first[..first.len() - first.trim_start().len()];
        // A one-line item (`mod tests;`, `use ...;`) ends where it starts.
        let one_line = first.trim_end().ends_with(';');
        let end = if one_line { at + 1 } else { (at + 1..lines.len()).find(|&n| lines[n] == format!("{indent}}}")).unwrap_or(lines.len() - 1) };
        at = end + 1;
    }
    kept.join("\n")
}

/// The names a path written after `crate::` (or a top-level file's `super::`) starts with:
/// `index::Hit` gives `index`, `{index, search::Query}` gives both.
fn first_names(after: &str) -> Vec<String> {
    let ident = |text: &str| -> String { text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let Some(group) = after.strip_prefix('{') else { return vec![ident(after)] };
    // The top level of the group: names before a `::`, `,` or `}` at depth 0.
    let (mut names, mut depth, mut expecting) = (Vec::new(), 0, true);
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expecting = true,
            c if expecting && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                names.push(ident(&group[at..]));
                expecting = false;
            }
            _ => {}
        }
    }
    names
}

/// The crate modules and external crates a module's code names.
fn named(files: &[PathBuf], all: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in files {
        let code = code(file);
        // In `src/x.rs` and `src/x/mod.rs`, `super::` is the crate too.
        let top_level = file.parent() == Some(src.as_path()) || (file.ends_with("mod.rs") && file.parent().and_then(Path::parent) == Some(src.as_path()));
        let prefixes: &[&str] = if top_level { &["crate::", "super::"] } else { &["crate::"] };
        for prefix in prefixes {
            for (at, _) in code.match_indices(prefix) {
                let before = code[..at].chars().last().unwrap_or(' ');
                if before.is_alphanumeric() || before == '_' || before == ':' {
                    continue;
                }
                names.extend(first_names(&code[at + prefix.len()..]).into_iter().filter(|name| all.contains(name)));
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
        for name in &names {
            assert!(all.contains(name) || EXTERNAL.contains(&name.as_str()), "the map's row for {module} names `{name}`, which is neither a module nor a crate it checks");
        }
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
    let allowed: [(&str, &[&str]); 4] = [("tch", &["vision", "text", "clip", "models", "bench"]), ("rust_bert", &["text"]), ("serenity", &["discord"]), ("cli", &[])];
    for (name, owners) in allowed {
        let users: Vec<&String> = modules.iter().filter(|(module, files)| *module != name && named(files, &all).contains(name)).map(|(module, _)| module).collect();
        assert!(users.iter().all(|m| owners.contains(&m.as_str())), "{name} is named by {users:?}; the invariants in lib.rs allow only {owners:?}");
    }
}

#[test]
fn no_function_outside_tests_is_longer_than_100_lines() {
    let mut long = Vec::new();
    for file in modules().values().flatten() {
        let text = without_tests(&std::fs::read_to_string(file).unwrap());
        let lines: Vec<&str> = text.lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let signature = ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "unsafe "].iter().fold(trimmed, |rest, word| rest.strip_prefix(word).unwrap_or(rest));
            let is_fn = signature.starts_with("fn ");
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

/// A module that uses `index`, `search`, `plot`, `ops` and `tch`, mentions `discord` in a
/// comment and `vision` in its tests, and has code after its tests.
const PROBE: &str = "use crate::index::Hit;\nuse crate::{plot::{self, Chart}, ops};\n/// See [`crate::discord`].\nfn f() { let _ = crate::search::Query::default(); tch::Tensor::zeros(); } // crate::audit\n#[cfg(test)]\nmod tests {\n    use crate::vision;\n}\nfn g() { let url = \"https://x\"; super::rng::Rng::new(0); }\n";

#[test]
fn the_checker_sees_uses_and_paths_but_not_comments() {
    let file = tempfile::Builder::new().suffix(".rs").tempfile().unwrap();
    std::fs::write(file.path(), PROBE).unwrap();
    let file = file.path().to_path_buf();
    let all: BTreeSet<String> = ["index", "discord", "search", "vision", "plot", "ops", "audit", "rng"].map(String::from).into();
    // Not top-level (a temporary folder), so `super::rng` is not the crate's.
    assert_eq!(named(&[file], &all), ["index", "ops", "plot", "search", "tch"].map(String::from).into());
}
