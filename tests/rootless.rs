//! Rootless: the same nodes started by an unprivileged user, with and without a subuid range.

mod common;

use common::*;

/// `nobody` has a subordinate range in CI (see .ci/run); uid 4242 has none.
const NOBODY: u32 = 65534;
const NO_RANGE: u32 = 4242;

fn has_range(uid: u32) -> bool {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
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
    let img = busybox_image().display().to_string();
    let r = run_as(
        Some(NOBODY),
        &[
            "run",
            "--image",
            &img,
            "--",
            "/bin/sh",
            "-c",
            "echo pid=$$; cat /proc/self/uid_map; id -u",
        ],
    )
    .ok();
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(words[0], "pid=1");
    assert_eq!(&words[1..4], ["0", "65534", "1"], "{}", r.stdout);
    assert_eq!(words[6], "65535", "{}", r.stdout);
    assert_eq!(words[7], "0");
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
    let img = busybox_image().display().to_string();
    let r = run_as(
        Some(NO_RANGE),
        &["run", "--image", &img, "--", "/bin/sh", "-c", "echo pid=$$; cat /proc/self/uid_map"],
    )
    .ok();
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(words, ["pid=1", "0", "4242", "1"], "{}", r.stdout);
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
    assert!(r.stderr.contains("Delegate=yes"), "{}", r.stderr);
}
