//! The house rule that SQL lives in herald-storage (and `migrations/`): every
//! `.rs` file under `crates/` outside herald-storage is read, and a line that
//! writes SQL (`SELECT ... FROM`, `INSERT INTO`, `UPDATE ... SET`, `DELETE
//! FROM`) or reaches for sea-orm's raw statements (`Statement::from_sql`,
//! `ConnectionTrait`) fails the test, named by file and line. The CLI, the
//! server and the benches call named functions of herald-storage instead.
//!
//! Tests are the exception: files under a `tests/` directory may state the
//! rows they start from and read back in SQL, through
//! `herald_storage::test_support` (feature `test-support`), which only a
//! `[dev-dependencies]` entry may enable; the second test checks that.

use std::path::{Path, PathBuf};

/// Files allowed to hold SQL for now, each with why.
const EXEMPT: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        if path.is_dir() {
            // Build output and the tests' own directories are not product code.
            if name != "target" && name != "tests" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The upper-case words of `line` (SQL keywords as herald writes them).
fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .collect()
}

/// Why `line` (with `next`, the few lines after it, for a statement split
/// over lines) is SQL text, if it is.
fn sql_in(line: &str, next: &[&str]) -> Option<&'static str> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return None; // prose about SQL is fine
    }
    if line.contains("Statement::from_sql") || line.contains("Statement::from_string") {
        return Some("a raw sea-orm Statement");
    }
    if line.contains("ConnectionTrait") {
        return Some("sea-orm's ConnectionTrait (raw statements)");
    }
    let w = words(line);
    let after = |i: usize, n: usize| w.get(i + n).copied().unwrap_or("");
    for (i, word) in w.iter().enumerate() {
        match *word {
            "INSERT" if after(i, 1) == "INTO" => return Some("INSERT INTO"),
            "DELETE" if after(i, 1) == "FROM" => return Some("DELETE FROM"),
            "UPDATE" if after(i, 2) == "SET" => return Some("UPDATE ... SET"),
            "SELECT" => {
                let rest = w[i + 1..].iter().copied();
                let later = next.iter().flat_map(|l| words(l));
                if rest.chain(later).any(|x| x == "FROM") {
                    return Some("SELECT ... FROM");
                }
            }
            _ => {}
        }
    }
    None
}

#[test]
fn no_sql_text_outside_herald_storage() {
    let root = root();
    let mut files = Vec::new();
    for e in std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .flatten()
    {
        if e.file_name() != "herald-storage" {
            rust_files(&e.path(), &mut files);
        }
    }
    assert!(
        files.len() > 50,
        "found only {} files under crates/",
        files.len()
    );
    let mut found = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        if EXEMPT.iter().any(|(f, _)| *f == rel) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let next = &lines[i + 1..(i + 4).min(lines.len())];
            if let Some(what) = sql_in(line, next) {
                found.push(format!("{rel}:{}: {what}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside herald-storage (move it into a named function of herald-storage):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_sql_door_for_tests_opens_only_to_dev_dependencies() {
    let root = root();
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .flatten()
        .filter(|e| e.file_name() != "herald-storage")
        .map(|e| e.path().join("Cargo.toml"))
        .collect();
    manifests.push(root.join("Cargo.toml"));
    let mut found = Vec::new();
    for m in manifests {
        let Ok(text) = std::fs::read_to_string(&m) else {
            continue;
        };
        let mut section = "";
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.starts_with('[') {
                section = t;
            } else if t.contains("test-support") && section != "[dev-dependencies]" {
                found.push(format!("{}:{} ({section})", m.display(), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "herald-storage's test-support feature enabled outside [dev-dependencies]:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_rule_sees_sql_and_lets_prose_be() {
    assert_eq!(
        sql_in("    q.push(\"SELECT id FROM contacts\")", &[]),
        Some("SELECT ... FROM")
    );
    assert_eq!(
        sql_in(
            "  \"SELECT m.id, c.external_id,",
            &["   m.arm FROM messages m"]
        ),
        Some("SELECT ... FROM")
    );
    assert_eq!(
        sql_in("\"UPDATE runs SET state = 'paused'\"", &[]),
        Some("UPDATE ... SET")
    );
    assert!(sql_in("use sea_orm::ConnectionTrait;", &[]).is_some());
    assert_eq!(sql_in("// one INSERT INTO a page", &[]), None);
    assert_eq!(sql_in("/// group commit: one INSERT a batch", &[]), None);
    assert_eq!(sql_in("let selected = from;", &[]), None);
}
