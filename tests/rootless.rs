//! Rootless: the same nodes started by an unprivileged user, with and without a subuid range.

mod common;

use common::*;

/// `nobody` has a subordinate range in CI (see .ci/run); uid 4242 has none.
const NOBODY: u32 = 65534;
const NO_RANGE: u32 = 4242;
/// nobody's primary group (nogroup), which hutch maps to node gid 0.
const NOBODY_GID: u32 = 65534;

fn has_range(uid: u32) -> bool {
    let name = hutch_runtime::Passwd::by_uid(uid).map(|p| p.name).unwrap_or_default();
    std::fs::read_to_string("/etc/subuid")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(&format!("{name}:")) || l.starts_with(&format!("{uid}:")))
}

#[test]
fn nobody_with_a_subuid_range_gets_65536_ids() {
    if skip_unless_root("rootless_range") {
        return;
    }
    assert!(has_range(NOBODY), "CI gives nobody a range in /etc/subuid and /etc/subgid");
    let dir = SharedDir::new("range");
    let r = run_with_ids(
        NOBODY,
        &dir,
        "echo pid=$$; id -u; touch /mnt/ids/root /mnt/ids/one && chown 1:1 /mnt/ids/one; touch /mnt/ids/last && chown 65535:65535 /mnt/ids/last",
    );
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(words, ["pid=1", "0"], "{}{}", r.stdout, r.stderr);
    // What the host sees of the node's files: root is nobody, the rest is nobody's range.
    assert_eq!(dir.owner("root"), (NOBODY, NOBODY_GID));
    assert_eq!(dir.owner("one"), (200000, 200000));
    assert_eq!(dir.owner("last"), (200000 + 65534, 200000 + 65534));
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
fn nobody_boots_busybox_and_the_nix_toplevel() {
    if skip_unless_root("rootless_boot") {
        return;
    }
    let img = busybox_image().display().to_string();
    let r = run_as(Some(NOBODY), &["run", "--image", &img, "--boot"]).ok();
    assert!(r.stdout.contains("hutch-busybox: booted"), "{}{}", r.stdout, r.stderr);
    let top = nix_toplevel().display().to_string();
    let r = run_as(Some(NOBODY), &["run", "--toplevel", &top, "--closure-only"]).ok();
    assert!(r.stdout.contains("hutch-nix: booted"), "{}{}", r.stdout, r.stderr);
}

#[test]
fn a_user_without_a_range_gets_one_id_and_a_warning() {
    if skip_unless_root("rootless_single") {
        return;
    }
    assert!(!has_range(NO_RANGE));
    let dir = SharedDir::new("single");
    let r = run_with_ids(
        NO_RANGE,
        &dir,
        "echo pid=$$; touch /mnt/ids/root; chown 1 /mnt/ids/root 2>/dev/null || echo one-id",
    );
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(words, ["pid=1", "one-id"], "{}", r.stdout);
    assert_eq!(dir.owner("root").0, NO_RANGE);
    assert!(r.stderr.contains("warning: no /etc/subuid"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().filter(|l| l.contains("warning")).count(), 1);
    let top = nix_toplevel().display().to_string();
    let r = run_as(Some(NO_RANGE), &["run", "--toplevel", &top, "--", "sh", "-c", "echo nix-ok"]).ok();
    assert!(r.stdout.contains("nix-ok"), "{}", r.stdout);
}

#[test]
fn systemd_without_a_delegated_cgroup_is_refused_with_the_fix() {
    if skip_unless_root("rootless_no_cgroup") {
        return;
    }
    let img = debian_image().display().to_string();
    let r = run_as(Some(NO_RANGE), &["run", "--image", &img, "--boot"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("systemd needs a cgroup2 subtree it can write"), "{}", r.stderr);
    // This host has no systemd: the fix is root's cgroup for the user with the shell moved in.
    assert!(r.stderr.contains("exec su") && r.stderr.contains("hutch doctor"), "{}", r.stderr);
}

#[test]
fn a_systemd_test_without_a_cgroup_is_refused_before_any_node_starts() {
    if skip_unless_root("rootless_test_no_cgroup") {
        return;
    }
    let dir = Scratch::new("no-cgroup-test");
    let toml = format!(
        "[test]\nname = \"no-cgroup\"\nscript = \"t.py\"\n[nodes.server]\nimage = \"{}\"\n",
        debian_image().display()
    );
    std::fs::write(dir.0.join("t.toml"), toml).unwrap();
    std::fs::write(dir.0.join("t.py"), "start_all()\n").unwrap();
    let out = dir.0.join("out");
    let (code, all) = hutch_test_clean(Some(NO_RANGE), &dir.0.join("t.toml"), &out, &[]);
    assert_eq!(code, 2, "a set-up that cannot start the nodes exits 2: {all}");
    assert!(all.contains("node server: systemd needs a cgroup2 subtree it can write"), "{all}");
    assert!(all.contains("exec su"), "{all}");
    // Refused before anything started: no node, so no output directory either.
    assert!(!out.exists(), "{all}");
}

/// Runs `script` in a busybox node as `user`, with `dir` bound at /mnt/ids.
fn run_with_ids(user: u32, dir: &SharedDir, script: &str) -> Run {
    let img = busybox_image().display().to_string();
    run_as(
        Some(user),
        &["run", "--image", &img, "--bind", &dir.bind(), "--", "/bin/sh", "-c", script],
    )
    .ok()
}
