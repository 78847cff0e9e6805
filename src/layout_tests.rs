//! The shape of `src/` itself, checked (STYLE.md, "A layout that shows the architecture"):
//! no files that import each other in a circle, directly or through others, and no file over 600
//! lines unless its header says why (says "600 lines"). Test-only files (`tests.rs`,
//! `*_tests.rs`, `stand_in.rs`, anything under a `tests/` directory) are exempt from both, the
//! way a table of tests is; a module declared under `#[cfg(test)]` (`golden`) from circles only.
//!
//! Imports are read from the text, not from the compiler: a path that starts with `crate::`,
//! `super::` or `self::` (a `{…}` group counts each member), and a bare path through a child
//! module this file declares (`writer::run(..)` after `mod writer;`). That is how this tree
//! writes its imports; a path the reader misses could hide a circle, never invent one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MOST_LINES: usize = 600;

/// One `.rs` file of `src/`: its path from `src/` (`sink/writer.rs`) and its text.
struct SourceFile {
    path: String,
    text: String,
}

fn source_files() -> Vec<SourceFile> {
    fn walk(dir: &Path, root: &Path, into: &mut Vec<SourceFile>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("src/ is readable")
            .map(|entry| entry.expect("a directory entry of src/").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, root, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).expect("under src/");
                into.push(SourceFile {
                    path: relative.to_string_lossy().replace('\\', "/"),
                    text: std::fs::read_to_string(&path).expect("a source file is UTF-8"),
                });
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files
}

fn is_test_only(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "tests.rs"
        || name.ends_with("_tests.rs")
        || name == "stand_in.rs"
        || path.split('/').any(|part| part == "tests")
}

/// The module path a file defines: `sink/writer.rs` and `sink/writer/mod.rs` → `[sink, writer]`.
fn module_of(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = path
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The text the compiler builds outside tests: line comments dropped (doc links are not
/// imports) and every item under `#[cfg(test)]` cut out (an inline `mod tests { … }` by its
/// braces, a `mod golden;` by its line: the file it names is test-only, see `test_children`).
fn code_of(text: &str) -> String {
    let mut kept = Vec::new();
    let mut lines = text.lines().map(|line| match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    });
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            kept.push(line);
            continue;
        }
        // Skip the item the attribute is on: up to its `;`, or to the brace closing its `{`.
        let mut depth = 0usize;
        for line in lines.by_ref() {
            depth += line.matches('{').count();
            depth = depth.saturating_sub(line.matches('}').count());
            let trimmed = line.trim_end();
            if depth == 0 && (trimmed.ends_with(';') || trimmed.ends_with('}')) {
                break;
            }
        }
    }
    kept.join("\n")
}

/// The modules a file declares under `#[cfg(test)]` (`mod golden;`): test-only files.
fn test_children(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|pair| pair[0] == "#[cfg(test)]")
        .filter_map(|pair| module_declared(pair[1]))
        .collect()
}

/// `name` of a `mod name;` line, with any visibility.
fn module_declared(line: &str) -> Option<String> {
    let line = line.trim();
    let line = match line.strip_prefix("pub") {
        Some(rest) if rest.starts_with('(') => rest.split_once(") ")?.1,
        Some(rest) => rest.trim_start(),
        None => line,
    };
    let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
    name.chars().all(is_ident).then(|| name.to_owned())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path the code names that starts at `crate`, `super` or `self`, or at one of
/// `children`, as segments; `a::{b, c::d}` gives `a::b` and `a::c::d`.
fn paths_in(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut paths = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let starts_word = at == 0 || !(is_ident(chars[at - 1]) || chars[at - 1] == ':');
        if !starts_word || !is_ident(chars[at]) {
            at += 1;
            continue;
        }
        let end = (at..chars.len())
            .find(|&i| !is_ident(chars[i]))
            .unwrap_or(chars.len());
        let word: String = chars[at..end].iter().collect();
        let is_root =
            matches!(word.as_str(), "crate" | "super" | "self") || children.contains(&word);
        if is_root && chars.get(end..end + 2) == Some(&[':', ':']) {
            let (found, next) = path_from(&chars, at, Vec::new());
            paths.extend(found);
            at = next;
        } else {
            at = end;
        }
    }
    paths
}

/// The path (or group of paths) that begins at `at`, after `prefix`; and where it ends.
fn path_from(chars: &[char], mut at: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut segments = prefix;
    loop {
        while chars.get(at).is_some_and(|c| c.is_whitespace()) {
            at += 1;
        }
        if chars.get(at) == Some(&'{') {
            return group_from(chars, at + 1, segments);
        }
        let end = (at..chars.len())
            .find(|&i| !is_ident(chars[i]))
            .unwrap_or(chars.len());
        if end == at {
            return (vec![segments], at);
        }
        segments.push(chars[at..end].iter().collect());
        if chars.get(end..end + 2) == Some(&[':', ':']) {
            at = end + 2;
        } else {
            return (vec![segments], end);
        }
    }
}

/// The members of a `{a, b::c, d as e}` group after `prefix`, up to its closing brace.
fn group_from(chars: &[char], mut at: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut paths = Vec::new();
    loop {
        while chars
            .get(at)
            .is_some_and(|c| c.is_whitespace() || *c == ',')
        {
            at += 1;
        }
        match chars.get(at) {
            None => return (paths, at),
            Some('}') => return (paths, at + 1),
            Some(c) if is_ident(*c) || *c == '{' => {
                let (found, next) = path_from(chars, at, prefix.clone());
                paths.extend(found);
                at = next;
                // Skip an `as name` rename, up to the member's end.
                while chars.get(at).is_some_and(|c| *c != ',' && *c != '}') {
                    at += 1;
                }
            }
            Some(_) => at += 1,
        }
    }
}

/// The file a path leads into: the longest prefix of it that names a module of `src/`.
fn resolve(
    from: &[String],
    path: &[String],
    children: &BTreeSet<String>,
    modules: &BTreeMap<Vec<String>, String>,
) -> Option<String> {
    let mut base: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("super" | "self") => {
            base = from.to_vec();
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        // A child of `sink/writer.rs` lives in `sink/writer/`, as one of `sink/mod.rs` in `sink/`.
        Some(child) if children.contains(child) => base = from.to_vec(),
        _ => return None,
    }
    let full: Vec<String> = base.into_iter().chain(rest.iter().cloned()).collect();
    (0..=full.len())
        .rev()
        .find_map(|len| modules.get(&full[..len]).cloned())
}

/// Which files each non-test file of `src/` imports from.
fn imports(files: &[SourceFile]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|file| (module_of(&file.path), file.path.clone()))
        .collect();
    let test_only: BTreeSet<String> = files
        .iter()
        .flat_map(|file| {
            let parent = module_of(&file.path);
            test_children(&file.text).into_iter().map(move |child| {
                let mut path = parent.clone();
                path.push(child);
                path
            })
        })
        .filter_map(|path| modules.get(&path).cloned())
        .chain(
            files
                .iter()
                .filter(|file| is_test_only(&file.path))
                .map(|file| file.path.clone()),
        )
        .collect();
    let mut edges = BTreeMap::new();
    for file in files.iter().filter(|file| !test_only.contains(&file.path)) {
        let code = code_of(&file.text);
        let children: BTreeSet<String> = code.lines().filter_map(module_declared).collect();
        let from = module_of(&file.path);
        let targets: BTreeSet<String> = paths_in(&code, &children)
            .iter()
            .filter_map(|path| resolve(&from, path, &children, &modules))
            .filter(|target| *target != file.path && !test_only.contains(target))
            .collect();
        edges.insert(file.path.clone(), targets);
    }
    edges
}

/// Every group of files that reach each other through imports (each a circle), smallest first.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |start: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = edges.get(start).into_iter().flatten().collect();
        while let Some(next) = stack.pop() {
            if seen.insert(next.clone()) {
                stack.extend(edges.get(next).into_iter().flatten());
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|file| (file, reach(file))).collect();
    let mut groups: BTreeSet<Vec<String>> = BTreeSet::new();
    for (file, reached) in &reachable {
        if !reached.contains(*file) {
            continue;
        }
        let group: Vec<String> = reached
            .iter()
            .filter(|other| {
                reachable
                    .get(other)
                    .is_some_and(|back| back.contains(*file))
            })
            .cloned()
            .collect();
        groups.insert(group);
    }
    let mut groups: Vec<Vec<String>> = groups.into_iter().collect();
    groups.sort_by_key(Vec::len);
    groups
}

#[test]
fn no_files_of_src_import_each_other_in_a_circle() {
    let found = circles(&imports(&source_files()));
    assert!(
        found.is_empty(),
        "files that import each other in a circle (move what they share into a file of its own): {found:#?}"
    );
}

#[test]
fn no_file_of_src_is_over_600_lines_unless_its_header_says_why() {
    let too_long: Vec<String> = source_files()
        .into_iter()
        .filter(|file| !is_test_only(&file.path))
        .filter(|file| file.text.lines().count() > MOST_LINES)
        .filter(|file| {
            let header: String = file
                .text
                .lines()
                .take_while(|line| line.starts_with("//!"))
                .collect();
            !header.contains("600 lines")
        })
        .map(|file| format!("{} ({} lines)", file.path, file.text.lines().count()))
        .collect();
    assert!(
        too_long.is_empty(),
        "split these by job, or say in the header why one file of over 600 lines is right: {too_long:#?}"
    );
}

#[test]
fn the_import_reader_sees_a_circle_through_a_group_a_child_and_a_super_path() {
    let file = |path: &str, text: &str| SourceFile {
        path: path.to_owned(),
        text: text.to_owned(),
    };
    let files = [
        file("lib.rs", "pub mod a;\npub mod b;\n"),
        file("a/mod.rs", "mod inner;\npub fn f() { inner::g() }\n"),
        file("a/inner.rs", "use crate::{b::{self, X as Y}, c};\n"),
        file(
            "b.rs",
            "use super::a::f; // crate::c in a comment is no import\n",
        ),
        file("c.rs", "/// [`crate::a`]\npub struct C;\n"),
    ];
    let edges = imports(&files);
    assert_eq!(
        edges["a/inner.rs"],
        BTreeSet::from(["b.rs".to_owned(), "c.rs".to_owned()])
    );
    assert_eq!(edges["c.rs"], BTreeSet::new());
    assert_eq!(
        circles(&edges),
        vec![vec![
            "a/inner.rs".to_owned(),
            "a/mod.rs".to_owned(),
            "b.rs".to_owned()
        ]]
    );
}

#[test]
fn items_under_cfg_test_are_not_read_as_imports() {
    let code = code_of(concat!(
        "use crate::a;\n#[cfg(test)]\nmod golden;\nuse crate::c;\n",
        "#[cfg(test)]\npub(crate) mod support {\n    fn f() {\n        crate::b::g();\n    }\n}\n",
        "use crate::d;\n",
    ));
    assert_eq!(code, "use crate::a;\nuse crate::c;\nuse crate::d;");
    assert_eq!(
        test_children("#[cfg(test)]\npub(super) mod golden;\n"),
        vec!["golden".to_owned()]
    );
}
