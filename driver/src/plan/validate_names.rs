//! Checks on names and the NixOS init: node names (variables, hostnames), hostnames, and
//! whether a toplevel really has an `init` to run.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Python keywords: a node cannot be a variable with one of these names.
const PY_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del", "elif", "else", "except",
    "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try",
    "while", "with", "yield",
];

/// Test-script globals a node variable would hide.
const GLOBALS: &[&str] = &[
    "start_all",
    "machines",
    "subtest",
    "retry",
    "polling_condition",
    "join_all",
    "log",
    "serial_stdout_on",
    "serial_stdout_off",
    "vlans",
    "driver",
    "t",
    "os",
    "create_machine",
    "run_tests",
];

/// Check every node name; returns (key, message) for each problem.
pub(crate) fn check_node_names(names: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut python: BTreeMap<String, &str> = BTreeMap::new();
    let mut host: BTreeMap<String, &str> = BTreeMap::new();
    for name in names {
        let key = format!("nodes.{name}");
        let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let starts = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
        if !ok_chars || !starts || name.len() > 63 || name.ends_with('-') {
            out.push((
                key,
                "is not a valid node name: start with a letter, then letters, digits or `-`, at most 63 characters (it is the hostname and a script variable)".to_string(),
            ));
            continue;
        }
        let py = name.replace('-', "_");
        if PY_KEYWORDS.contains(&py.as_str()) {
            out.push((
                key,
                format!("`{py}` is a Python keyword and cannot be the node's variable; rename the node"),
            ));
            continue;
        }
        if GLOBALS.contains(&py.as_str()) {
            out.push((
                key,
                format!("the node's variable `{py}` would hide the test-script global of that name; rename the node"),
            ));
            continue;
        }
        if let Some(other) = python.insert(py.clone(), name) {
            out.push((
                key,
                format!("becomes the script variable `{py}`, like node `{other}` (dashes become underscores); rename one of them"),
            ));
            continue;
        }
        if let Some(other) = host.insert(name.to_ascii_lowercase(), name) {
            out.push((
                key,
                format!("is the same hostname as node `{other}` (hostnames ignore case); rename one of them"),
            ));
        }
    }
    out
}

/// A hostname: dot-separated labels of letters, digits and `-`, each 1 to 63 long.
pub(crate) fn check_hostname(h: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if h.is_empty() || h.len() > 253 || !h.split('.').all(label_ok) {
        return Err(format!(
            "{h:?} is not a valid hostname; use letters, digits and `-`, e.g. \"web-1\""
        ));
    }
    Ok(())
}

/// Map a `/nix/store/...` path into a chroot store on the host when one is given.
fn physical(p: &Path, store: Option<&Path>) -> PathBuf {
    match (store, p.strip_prefix("/nix/store")) {
        (Some(s), Ok(rest)) => s.join(rest),
        _ => p.to_path_buf(),
    }
}

/// Follow symlinks like the node will see them: targets under /nix/store resolve in `store`.
fn follow(mut p: PathBuf, store: Option<&Path>) -> Option<PathBuf> {
    for _ in 0..40 {
        let phys = physical(&p, store);
        let meta = std::fs::symlink_metadata(&phys).ok()?;
        if !meta.file_type().is_symlink() {
            return Some(phys);
        }
        let target = std::fs::read_link(&phys).ok()?;
        p = if target.is_absolute() {
            target
        } else {
            p.parent().unwrap_or(Path::new("/")).join(target)
        };
    }
    None
}

/// `toplevel/init` must exist (through the store's symlinks) and be executable.
pub(crate) fn check_init(toplevel: &Path, store: Option<&Path>) -> Result<(), String> {
    let Some(top) = follow(toplevel.to_path_buf(), store) else {
        return Err(format!(
            "{} does not exist{}; point `toplevel` at a built NixOS system (config.system.build.toplevel)",
            physical(toplevel, store).display(),
            if store.is_some() { " in the store" } else { "" }
        ));
    };
    if !top.is_dir() {
        return Err(format!(
            "{} is not a directory; point `toplevel` at a built NixOS system",
            top.display()
        ));
    }
    let init = follow(toplevel.join("init"), store).and_then(|p| std::fs::metadata(&p).ok().map(|m| (p, m)));
    match init {
        Some((_, m)) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        _ => Err(format!(
            "{} has no executable `init`; point `toplevel` at a NixOS system's toplevel, not a package",
            toplevel.display()
        )),
    }
}
