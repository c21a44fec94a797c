//! The small errors of daily use (issue 16, points 4 and 5), each as a user meets it: a
//! `[defaults]` problem said once, every type error of a file at once, a node name that cannot
//! be a host name, image names for `hutch run`, HUTCH_CACHE in the missing-image message, "did
//! you mean" for a misspelt command, an image built for root never used silently by a user, two
//! runs of one test in their own output directories, and Ctrl-C ending a test with 130.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// `hutch ARGS` in `dir` as root: exit code and stderr.
fn hutch_in(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = hutch_command(None, args).current_dir(dir).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const HEAD: &str = "[test]\nname = \"small\"\ntestScript = \"start_all()\"\n";

#[test]
fn a_defaults_image_problem_is_said_once_and_names_hutch_cache() {
    let dir = Scratch::new("small-image");
    let f = write(
        &dir.0,
        "t.toml",
        &format!("{HEAD}[defaults]\nimage = \"no-such-image\"\n[nodes.a]\n[nodes.b]\n[nodes.c]\n"),
    );
    let (code, err) = hutch_in(&dir.0, &["test", &f]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.matches("defaults.image").count(), 1, "{err}");
    assert!(err.contains("HUTCH_CACHE") && err.contains("images/no-such-image"), "{err}");
    assert!(!dir.0.join("hutch-out").exists());
}

#[test]
fn every_type_error_of_a_file_is_reported() {
    let dir = Scratch::new("small-types");
    let img = busybox_image().display().to_string();
    let text = format!(
        "[test]\nname = \"small\"\ntestScript = \"start_all()\"\ntimeout = \"soon\"\n[defaults]\nimage = {img:?}\nmemory = true\n[nodes.a]\nvlans = \"1\"\nboot = 3\n"
    );
    let f = write(&dir.0, "t.toml", &text);
    let (code, err) = hutch_in(&dir.0, &["test", &f]);
    assert_eq!(code, 2, "{err}");
    for (key, line) in [
        ("test.timeout", 4),
        ("defaults.memory", 7),
        ("nodes.a.vlans", 9),
        ("nodes.a.boot", 10),
    ] {
        let l = err
            .lines()
            .find(|l| l.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("{key} not reported:\n{err}"));
        assert!(l.contains(&format!("(line {line})")), "{key} without its line:\n{err}");
    }
}

#[test]
fn a_node_name_with_an_underscore_is_its_host_name() {
    // NixOS allows `_` in host names and nixpkgs tests name nodes so (`machine_default`): the
    // node starts, with that name as its hostname, and no flag the author never used is named.
    if skip_unless_root("a_node_name_with_an_underscore_is_its_host_name") {
        return;
    }
    let dir = Scratch::new("small-name");
    let img = busybox_image().display().to_string();
    let f = write(
        &dir.0,
        "t.toml",
        &format!("[test]\nname = \"small\"\nscript = \"t.py\"\n[defaults]\nimage = {img:?}\nboot = false\n[nodes.web_1]\n"),
    );
    write(&dir.0, "t.py", "start_all()\nassert web_1.succeed(\"hostname\") == \"web_1\\n\"\n");
    let (code, err) = hutch_in(&dir.0, &["test", &f]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("--hostname"), "{err}");
}

#[test]
fn hutch_run_takes_image_names_like_test_files() {
    if skip_unless_root("run_image_name") {
        return;
    }
    let _ = busybox_image();
    for user in [None, Some(65534)] {
        let _ = busybox_image_for(user);
        let r = run_as(user, &["run", "--image", "busybox", "--", "/bin/sh", "-c", "echo in-node"]);
        assert_eq!((r.code, r.stdout.as_str()), (0, "in-node\n"), "{user:?}: {}", r.stderr);
    }
    let r = hutch_run(&["run", "--image", "no-such-image", "--", "true"]);
    assert_eq!(r.code, 125);
    assert!(
        r.stderr.contains("HUTCH_CACHE") && r.stderr.contains("no-such-image"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_user_without_a_copy_of_an_image_is_told_how_to_make_one() {
    if skip_unless_root("image_no_copy") {
        return;
    }
    // uid 4242 has no account and no copy of its own: the root-owned image is not used behind
    // its back, by a test file (exit 2, before anything starts) or by `hutch run` (125).
    publish_busybox_image(&[]);
    let dir = Scratch::new("small-no-copy");
    let file = write(&dir.0, "t.toml", &format!("{HEAD}[nodes.machine]\nimage = \"busybox\"\n"));
    let out = hutch_command(Some(4242), &["test", &file]).current_dir(&dir.0).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let fix = "bash fixtures/busybox-image.sh --shift-for $(id -un)";
    assert!(
        err.contains("nodes.machine.image") && err.contains("uid 4242") && err.contains(fix),
        "{err}"
    );
    let r = run_as(Some(4242), &["run", "--image", "busybox", "--", "true"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains(fix), "{}", r.stderr);
}

#[test]
fn a_misspelt_command_gets_a_did_you_mean() {
    let dir = Scratch::new("small-tset");
    let (code, err) = hutch_in(&dir.0, &["tset", "t.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean 'test'"), "{err}");
}

/// A test whose script waits until `go` exists in `dir` (on the host).
fn waiting_test(dir: &Path) -> String {
    let img = busybox_image().display().to_string();
    let go = dir.join("go").display().to_string();
    write(
        dir,
        "w.toml",
        &format!(
            "[test]\nname = \"waits\"\ntimeout = 120\ntestScript = '''\nimport os, time\nstart_all()\nwhile not os.path.exists({go:?}):\n    time.sleep(0.05)\n'''\n\
             [defaults]\nimage = {img:?}\nboot = false\n[nodes.a]\n"
        ),
    )
}

fn wait_for_file(p: &Path, text: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(p).unwrap_or_default().contains(text) {
        assert!(Instant::now() < end, "{} never held {text:?}", p.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_runs_of_one_test_write_to_their_own_output_directories() {
    if skip_unless_root("two_outputs") {
        return;
    }
    let dir = Scratch::new("small-two");
    let f = waiting_test(&dir.0);
    let start = || {
        ChildGuard::new(
            hutch_command(None, &["test", &f])
                .current_dir(&dir.0)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    let first = start();
    wait_for_file(&dir.0.join("hutch-out/waits/log.txt"), "a: up");
    let second = start();
    wait_for_file(&dir.0.join("hutch-out/waits-2/log.txt"), "a: up");
    std::fs::write(dir.0.join("go"), "").unwrap();
    let (a, b) = (first.output(), second.output());
    assert_eq!((a.status.code(), b.status.code()), (Some(0), Some(0)));
    assert!(String::from_utf8_lossy(&b.stderr).contains("this run writes to hutch-out/waits-2"));
    for d in ["waits", "waits-2"] {
        let log = std::fs::read_to_string(dir.0.join("hutch-out").join(d).join("log.txt")).unwrap();
        assert_eq!(log.matches("test \"waits\":").count(), 1, "{d}/log.txt mixes runs:\n{log}");
    }
}

#[test]
fn ctrl_c_ends_a_test_with_130() {
    if skip_unless_root("ctrl_c_130") {
        return;
    }
    let dir = Scratch::new("small-int");
    let f = waiting_test(&dir.0);
    let mut run = ChildGuard::new(
        hutch_command(None, &["test", &f])
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_file(&dir.0.join("hutch-out/waits/log.txt"), "a: up");
    let pid = run.id();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    assert_eq!(run.child().wait().unwrap().code(), Some(130));
    assert_nothing_left(pid);
}
