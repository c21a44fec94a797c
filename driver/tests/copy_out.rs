//! `copy_from_machine` against a node whose agent is hostile: a "node" whose agent socket is
//! served by this test, answering `read_tree` with forged trees (what node root could send once
//! it holds the agent's socket). The real client and the real Machine parse them. Every forged
//! reply is refused with a message naming the node and the entry, and nothing lands outside
//! the output directory; honest trees (links inside the tree, setuid bits) are copied safely.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::forging::{dir, file, forging_machine, link};
use hutch_driver::agent::{EntryKind, TreeEntry};
use hutch_driver::machine::Machine;

struct Setup {
    machine: Machine,
    tree: Arc<Mutex<Vec<TreeEntry>>>,
    out: std::path::PathBuf,
    outside: std::path::PathBuf,
    _dir: common::Scratch,
}

/// A started machine `evil`, an output directory, and a host directory outside it.
fn setup(tag: &str) -> Setup {
    let dir = common::Scratch::new(&format!("copy-out-{tag}"));
    let out = dir.0.join("out");
    let outside = dir.0.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (machine, tree) = forging_machine(&out);
    Setup {
        machine,
        tree,
        out,
        outside,
        _dir: dir,
    }
}

impl Setup {
    /// Copies `/x` with the node answering `tree`; the error text on refusal.
    fn copy(&self, tree: Vec<TreeEntry>) -> Result<std::path::PathBuf, String> {
        *self.tree.lock().unwrap() = tree;
        self.machine.copy_from_machine("/x", "").map_err(|e| e.to_string())
    }

    /// What the outside directory holds, and its mode.
    fn outside_state(&self) -> (Vec<String>, u32) {
        let mut names: Vec<String> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        (names, std::fs::metadata(&self.outside).unwrap().mode() & 0o7777)
    }
}

fn refused(s: &Setup, tree: Vec<TreeEntry>, entry: &str) -> String {
    let err = s.copy(tree).expect_err("the forged tree was accepted");
    assert!(err.starts_with("evil: "), "the message does not name the node: {err}");
    assert!(
        err.contains(&format!("{entry:?}")),
        "the message does not name the entry {entry:?}: {err}"
    );
    err
}

#[test]
fn an_absolute_entry_path_is_refused_and_writes_nothing_outside() {
    let s = setup("abs");
    let target = s.outside.join("planted");
    let err = refused(
        &s,
        vec![dir(""), file(target.to_str().unwrap(), 0o4755, "pwned\n")],
        target.to_str().unwrap(),
    );
    assert!(err.contains("absolute"), "{err}");
    assert_eq!(s.outside_state(), (vec![], 0o755));
    assert!(!s.out.join("x").exists(), "a refused tree was partly written");
}

#[test]
fn dot_dot_entries_are_refused() {
    let s = setup("dotdot");
    refused(
        &s,
        vec![dir(""), file("../../outside/planted", 0o644, "x")],
        "../../outside/planted",
    );
    refused(&s, vec![dir(""), dir("a"), file("a/./b", 0o644, "x")], "a/./b");
    refused(&s, vec![file("a", 0o644, "x")], "a");
    assert_eq!(s.outside_state(), (vec![], 0o755));
}

#[test]
fn an_entry_through_a_symlink_of_the_same_reply_is_refused() {
    let s = setup("through");
    let outside = s.outside.display().to_string();
    // An honest-looking link first, then entries under it: on the old code they were written
    // through the link into the host directory it names (and that directory chmod-ed).
    let err = refused(&s, vec![dir(""), link("l", "sub"), dir("l"), file("l/planted", 0o644, "x")], "l");
    assert!(err.contains("twice"), "{err}");
    refused(
        &s,
        vec![dir(""), dir("sub"), link("sub/l", ".."), file("sub/l/planted", 0o644, "x")],
        "sub/l/planted",
    );
    let err = refused(&s, vec![dir(""), link("l", &outside), file("l/planted", 0o644, "x")], "l");
    assert!(err.contains("absolute path that would leave the copied tree"), "{err}");
    assert_eq!(s.outside_state(), (vec![], 0o755));
}

#[test]
fn links_leaving_the_tree_are_refused_and_links_inside_are_kept() {
    let s = setup("links");
    refused(&s, vec![dir(""), link("l", "../outside")], "l");
    refused(&s, vec![dir(""), link("self", "."), link("up", "self/..")], "up");
    refused(&s, vec![link("", "/etc")], "");
    let dest = s
        .copy(vec![
            dir(""),
            dir("d"),
            file("d/f", 0o644, "data\n"),
            link("d/sibling", "../d/f"),
            link("top", "d/f"),
            link("here", "."),
        ])
        .unwrap();
    assert_eq!(std::fs::read_link(dest.join("d/sibling")).unwrap(), Path::new("../d/f"));
    assert_eq!(std::fs::read_to_string(dest.join("top")).unwrap(), "data\n");
}

#[test]
fn a_second_copy_to_the_same_place_replaces_a_planted_link_and_never_follows_it() {
    let s = setup("twice");
    // Two copies to one place, the first planting a link to a host directory: refused whole,
    // so the second finds nothing to follow.
    let outside = s.outside.display().to_string();
    refused(&s, vec![dir(""), link("l", &outside)], "l");
    let dest = s.copy(vec![dir(""), dir("l"), file("l/planted", 0o644, "0\n")]).unwrap();
    assert_eq!(s.outside_state(), (vec![], 0o755), "the copy wrote through a planted link");
    assert!(dest.join("l").symlink_metadata().unwrap().is_dir());
    // The first copy may only plant links inside its tree now; an older copy (or another tool)
    // may have left one to a host directory: the second copy must not follow it.
    let first = s.copy(vec![dir(""), file("keep", 0o644, "1\n")]).unwrap();
    std::os::unix::fs::symlink(&s.outside, first.join("m")).unwrap();
    std::os::unix::fs::symlink(s.outside.join("f"), first.join("f")).unwrap();
    let second = s
        .copy(vec![dir(""), dir("m"), file("m/planted", 0o644, "2\n"), file("f", 0o666, "3\n")])
        .unwrap();
    assert_eq!(s.outside_state(), (vec![], 0o755), "the copy wrote through a planted link");
    assert!(second.join("m").symlink_metadata().unwrap().is_dir());
    assert_eq!(std::fs::read_to_string(second.join("m/planted")).unwrap(), "2\n");
    assert!(!second.join("f").symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(
        std::fs::read_to_string(second.join("keep")).unwrap(),
        "1\n",
        "a copy merges, like the NixOS driver's"
    );
}

#[test]
fn modes_are_masked_and_sizes_bounded() {
    let s = setup("modes");
    let dest = s
        .copy(vec![
            TreeEntry {
                path: "".into(),
                mode: 0o1777,
                kind: EntryKind::Dir,
            },
            file("suid", 0o4755, "x"),
            file("sgid", 0o2775, "x"),
            file("secret", 0o000, "x"),
        ])
        .unwrap();
    let mode = |p: &str| std::fs::metadata(dest.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode(""), 0o755);
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("sgid"), 0o755);
    assert_eq!(mode("secret"), 0o600);
    let many: Vec<TreeEntry> = std::iter::once(dir(""))
        .chain((0..hutch_driver::machine::MAX_ENTRIES).map(|i| file(&format!("f{i}"), 0o644, "")))
        .collect();
    let err = refused(&s, many, "");
    assert!(err.contains("entries"), "{err}");
    let err = refused(&s, vec![dir(""), file(&"a".repeat(300), 0o644, "")], &"a".repeat(300));
    assert!(err.contains("255"), "{err}");
}

#[test]
fn a_wide_tree_copies_with_few_descriptors_and_a_deep_one_is_refused() {
    let s = setup("wide");
    // 3,000 directories (more than the usual 1,024 open files), each with a file, and a parent
    // revisited after its siblings (a forged but legal order).
    let mut tree = vec![dir("")];
    for i in 0..3000 {
        tree.push(dir(&format!("d{i}")));
        tree.push(file(&format!("d{i}/f"), 0o644, "x"));
    }
    tree.push(file("d0/late", 0o644, "late\n"));
    let dest = s.copy(tree).unwrap();
    assert_eq!(std::fs::read_to_string(dest.join("d0/late")).unwrap(), "late\n");
    assert!(dest.join("d2999/f").exists());
    let mut deep = vec![dir("")];
    let mut path = String::new();
    for _ in 0..200 {
        path = if path.is_empty() { "d".into() } else { format!("{path}/d") };
        deep.push(dir(&path));
    }
    let err = refused(&s, deep, &"d/".repeat(129)[..257]);
    assert!(err.contains("deep"), "{err}");
}
