//! `hutch doctor` as different users: what each has and lacks, with the fix for each, and an
//! exit status that says whether something needed is missing.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// `hutch doctor` as `uid` through setpriv, outside any delegated cgroup; code and stdout.
fn doctor_as(uid: u32) -> (i32, String) {
    let out = Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            hutch().into(),
            "doctor".into(),
        ])
        .env("HUTCH_CACHE", cache())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn line<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(&format!(" {what}:")))
        .unwrap_or_else(|| panic!("no {what} line:\n{out}"))
}

/// The `what` line with the fix line under it.
fn with_fix(out: &str, what: &str) -> String {
    let at = format!(" {what}:");
    out.lines().skip_while(|l| !l.contains(&at)).take(2).collect::<Vec<_>>().join("\n")
}

#[test]
fn root_has_what_hutch_needs() {
    if skip_unless_root("doctor_root") {
        return;
    }
    let r = hutch_run(&["doctor"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(line(&r.stdout, "user namespaces").contains("ok"), "{}", r.stdout);
    assert!(line(&r.stdout, "cgroup").contains("writable"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("subordinate ids"),
        "root needs no subordinate ids:\n{}",
        r.stdout
    );
}

#[test]
fn a_user_without_a_cgroup_is_told_how_to_get_one() {
    if skip_unless_root("doctor_cgroup") {
        return;
    }
    let (code, out) = doctor_as(65534);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "subordinate ids").contains("ok"), "{out}");
    assert!(line(&out, "newuidmap/newgidmap").contains("ok"), "{out}");
    let cg = with_fix(&out, "cgroup");
    assert!(
        cg.contains("MISSING") && cg.contains("chown nobody") && cg.contains("exec su nobody"),
        "{out}"
    );
    // The same user inside a cgroup delegated to it has everything needed.
    if delegated_cgroup(65534).is_some() {
        let r = run_as(Some(65534), &["doctor"]);
        assert_eq!(r.code, 0, "{}", r.stdout);
        assert!(line(&r.stdout, "cgroup").contains("hutch-user-65534 writable"), "{}", r.stdout);
        // On a hybrid host (this machine) memory and pids are v1's: no echo into
        // cgroup.subtree_control gives them, only the kernel command line.
        let offered = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
        if std::path::Path::new("/sys/fs/cgroup/memory").is_dir() && !offered.contains("memory") {
            let cg = with_fix(&r.stdout, "cgroup");
            assert!(
                cg.contains("cgroup_no_v1=memory,pids") && !cg.contains("subtree_control"),
                "{}",
                r.stdout
            );
        }
    }
}

#[test]
fn a_user_without_subordinate_ids_gets_the_usermod_line() {
    if skip_unless_root("doctor_subuid") {
        return;
    }
    // No account, no /etc/subuid line, no shifted image.
    let (code, out) = doctor_as(4242);
    assert_eq!(code, 1, "{out}");
    let sub = with_fix(&out, "subordinate ids");
    assert!(
        sub.contains("MISSING") && sub.contains("usermod --add-subuids") && sub.contains("4242"),
        "{out}"
    );
    if cache().join("images/busybox").exists() {
        assert!(out.contains("busybox-image.sh --shift-for 4242"), "{out}");
    }
}
