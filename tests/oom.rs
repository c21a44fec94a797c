//! OOM: a node with a memory limit whose command allocates past it. On this hybrid host (v1
//! memory controller) the kernel kills only the allocating process; hutch notices the OOM
//! kill (the cgroup's oom_kill counter), kills the node and reports it crashed: the command
//! fails with "the node crashed: out of memory", `is_up()` turns false, the other node and
//! the driver go on, and the node starts again on the next call. Also when the OOM hits a
//! background process while no command runs (the watcher notices it on its own).

mod common;

use std::process::Stdio;

use common::*;

const TEST: &str = r#"
[test]
name = "oom"
script = "t.py"
timeout = 120

[defaults]
image = "IMAGE"
boot = false
vlans = [1]

[nodes.big]
memory = "32M"

[nodes.small]
"#;

/// The caught case: the script checks what it sees and the test passes.
const CAUGHT: &str = r#"
import time
start_all()
small.succeed("true")
try:
    big.succeed("hutch-alloc 64 5")
    print("OOM-NOT-SEEN", flush=True)
except Exception as e:
    print(f"OOM-SEEN {e}", flush=True)
print(f"BIG-UP {big.is_up()}", flush=True)
print("SMALL " + small.succeed("echo small-alive").strip(), flush=True)
# The next call starts big again, as after crash(), back on its LAN.
print("BIG-AGAIN " + big.succeed("echo big-again").strip(), flush=True)
small.succeed("ping -c 1 -W 5 192.168.1.1")
print("PING-OK", flush=True)
# OOM in a background process while no command runs: the watcher alone must notice it.
big.succeed("hutch-alloc 64 30 </dev/null >/dev/null 2>&1 &")
deadline = time.monotonic() + 10
while big.is_up() and time.monotonic() < deadline:
    time.sleep(0.05)
print(f"BIG-UP-AFTER-BACKGROUND {big.is_up()}", flush=True)
small.succeed("true")
print("DRIVER-ALIVE", flush=True)
"#;

/// The uncaught case: the test fails, naming the node and the cause.
const UNCAUGHT: &str = r#"
start_all()
big.succeed("hutch-alloc 64 5")
"#;

fn run(tag: &str, script: &str) -> (i32, String) {
    let dir = Scratch::new(tag);
    let image = busybox_image().display().to_string();
    std::fs::write(dir.0.join("t.toml"), TEST.replace("IMAGE", &image)).unwrap();
    std::fs::write(dir.0.join("t.py"), script).unwrap();
    let file = dir.0.join("t.toml").display().to_string();
    let out = dir.0.join("out").display().to_string();
    let child = hutch_command(None, &["test", &file, "--output-dir", &out])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning hutch");
    let pid = child.id();
    let o = ChildGuard::new(child).output();
    assert_nothing_left(pid);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.code().unwrap_or(-1), text)
}

fn memory_limits_work() -> bool {
    // Root on this host: v1 memory (hybrid) or cgroup2 with the memory controller.
    std::path::Path::new("/sys/fs/cgroup/memory").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").is_ok_and(|c| c.contains("memory"))
}

#[test]
fn an_oom_killed_node_is_reported_crashed_and_the_rest_goes_on() {
    if skip_unless_root("oom") || !memory_limits_work() {
        return;
    }
    let before = Census::settled_after(&Census::take(), std::time::Duration::from_secs(5));
    let (code, out) = run("oom-caught", CAUGHT);
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    let seen = out.lines().find(|l| l.starts_with("OOM-")).unwrap_or_default();
    assert!(seen.starts_with("OOM-SEEN big: the node crashed: out of memory"), "{out}");
    for want in [
        "BIG-UP False",
        "SMALL small-alive",
        "PING-OK",
        "BIG-AGAIN big-again",
        "BIG-UP-AFTER-BACKGROUND False",
        "DRIVER-ALIVE",
        "hutch: node big crashed: out of memory",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let after = Census::settled_after(&before, std::time::Duration::from_secs(5));
    assert!(after.growth(&before).is_empty(), "{}", Census::table(&before, &after));
}

#[test]
fn an_uncaught_oom_fails_the_test_on_that_node() {
    if skip_unless_root("oom") || !memory_limits_work() {
        return;
    }
    let (code, out) = run("oom-uncaught", UNCAUGHT);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("big: the node crashed: out of memory"), "{out}");
    assert!(out.contains("raise `memory` in the test file"), "{out}");
}
