//! `hutch run --toplevel`: NixOS mode on an offline-built, NixOS-shaped toplevel.

mod common;

use common::*;

fn toplevel() -> String {
    nix_toplevel().display().to_string()
}

fn closure_len(top: &str) -> usize {
    let out = std::process::Command::new("nix-store")
        .args(["-qR", top])
        .env("NIX_CONFIG", "build-users-group =")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn the_toplevels_init_boots_as_pid_1_and_powers_off() {
    if skip_unless_root("nix_boot") {
        return;
    }
    let top = toplevel();
    let r = hutch_run(&["run", "--toplevel", &top, "--boot", "--", "quiet=1"]).ok();
    assert!(r.stdout.contains("hutch-nix: booted"), "{}", r.stdout);
    assert!(r.stdout.contains("init-args: quiet=1"), "{}", r.stdout);
    assert!(r.stderr.contains("powered off"), "{}", r.stderr);
}

#[test]
fn closure_only_shows_exactly_the_closure() {
    if skip_unless_root("closure_only") {
        return;
    }
    let top = toplevel();
    let want = closure_len(&top);
    assert!(want >= 3, "the fixture's closure has several paths");
    let r = hutch_run(&[
        "run",
        "--toplevel",
        &top,
        "--closure-only",
        "--",
        "sh",
        "-c",
        "ls /nix/store | wc -l; touch /nix/store/x || echo RO",
    ])
    .ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0].trim().parse::<usize>().unwrap(), want, "{}", r.stdout);
    assert_eq!(lines[1], "RO");
    let all = hutch_run(&["run", "--toplevel", &top, "--", "sh", "-c", "ls /nix/store | wc -l"]).ok();
    assert!(all.stdout.trim().parse::<usize>().unwrap() >= want);
}

#[test]
fn the_root_starts_empty_but_for_the_store_and_etc() {
    if skip_unless_root("nix_root") {
        return;
    }
    let top = toplevel();
    let r = hutch_run(&[
        "run",
        "--toplevel",
        &top,
        "--",
        "sh",
        "-c",
        "ls /; wc -c < /etc/machine-id; cat /run/host/container-manager",
    ])
    .ok();
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(
        words,
        ["dev", "etc", "nix", "proc", "run", "sys", "tmp", "0", "hutch"],
        "{}",
        r.stdout
    );
}
