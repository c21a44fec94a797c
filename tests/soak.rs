//! Soak: 500 sequential `hutch run` starts and stops and 50 `hutch test` runs of the 3-node
//! test (tests/scripts/three_nodes.toml), as root and as `nobody`, then one `hutch test` whose
//! script restarts a node 100 times while it counts the driver's descriptors and threads.
//! A census of the host (mounts, network namespaces, cgroups, processes, links, disk in the
//! cache) before and after must show zero growth.
//!
//! Run it: `cargo test --test soak -- --nocapture` (prints the figures the README quotes).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const NOBODY: u32 = 65534;
const RUNS: usize = 500;
const TESTS: usize = 50;
const RESTARTS: usize = 100;

/// Restarts alpha RESTARTS times (clean shutdown and crash alternating), a command each time,
/// and prints the driver's open descriptors and threads after the first and the last cycle.
/// The script is a child of the driver, so the driver is its parent process.
const RESTART_SCRIPT: &str = r#"
import os
driver = os.getppid()
def census():
    return len(os.listdir(f"/proc/{driver}/fd")), len(os.listdir(f"/proc/{driver}/task"))
start_all()
beta.succeed("true")
gamma.succeed("true")
first = None
for i in range(RESTARTS):
    if i % 2:
        alpha.crash()
    else:
        alpha.shutdown()
    alpha.start()
    alpha.succeed("ping -c 1 -W 5 192.168.1.2")
    if i == 0:
        first = census()
last = census()
print(f"DRIVER fds {first[0]} -> {last[0]} threads {first[1]} -> {last[1]}", flush=True)
"#;

/// Runs `hutch ARGS` as `user`; panics with its output unless it exits 0.
fn must_pass(user: Option<u32>, args: &[&str]) -> String {
    let child = hutch_command(user, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning hutch");
    let out = ChildGuard::new(child).output();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "hutch {args:?} as {user:?} failed:\n{text}");
    text
}

#[test]
fn soak_leaves_nothing_behind() {
    if skip_unless_root("soak") {
        return;
    }
    let dir = Scratch::new("soak");
    let root_file = three_nodes_test(&dir.0.join("root").tap_mkdir(), None, None).display().to_string();
    let nobody_file = three_nodes_test(&dir.0.join("nobody").tap_mkdir(), Some(NOBODY), None)
        .display()
        .to_string();
    let restart_file = three_nodes_test(
        &dir.0.join("restart").tap_mkdir(),
        None,
        Some(&RESTART_SCRIPT.replace("RESTARTS", &RESTARTS.to_string())),
    )
    .display()
    .to_string();
    let out = |who: &str| dir.0.join(format!("out-{who}")).display().to_string();
    let image = busybox_image().display().to_string();
    let image_nobody = busybox_image_for(Some(NOBODY)).display().to_string();
    let run_args = |img: &str| -> Vec<String> {
        ["run", "--name", "soak", "--image", img, "--", "/bin/true"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let user_of = |i: usize| if i % 5 == 4 { Some(NOBODY) } else { None };

    // Warm up: first runs make hutch's cgroup parents and fill caches; they are not leaks.
    let run_root = run_args(&image);
    let run_nobody = run_args(&image_nobody);
    let run_root: Vec<&str> = run_root.iter().map(String::as_str).collect();
    let run_nobody: Vec<&str> = run_nobody.iter().map(String::as_str).collect();
    must_pass(None, &run_root);
    must_pass(Some(NOBODY), &run_nobody);
    must_pass(None, &["test", &root_file, "--output-dir", &out("root")]);
    must_pass(Some(NOBODY), &["test", &nobody_file, "--output-dir", &out("nobody")]);
    let before = Census::settled_after(&Census::take(), Duration::from_secs(5));

    let t = Instant::now();
    for i in 0..RUNS {
        let user = user_of(i);
        must_pass(user, if user.is_some() { &run_nobody } else { &run_root });
    }
    let runs_took = t.elapsed();

    let t = Instant::now();
    for i in 0..TESTS {
        let user = user_of(i);
        let (file, o) = if user.is_some() {
            (&nobody_file, out("nobody"))
        } else {
            (&root_file, out("root"))
        };
        let text = must_pass(user, &["test", file, "--output-dir", &o]);
        assert!(text.contains("test \"three-nodes\" passed"), "{text}");
    }
    let tests_took = t.elapsed();

    let t = Instant::now();
    let text = must_pass(None, &["test", &restart_file, "--output-dir", &out("restart")]);
    let restarts_took = t.elapsed();
    let line = text
        .lines()
        .find(|l| l.starts_with("DRIVER "))
        .unwrap_or_else(|| panic!("no DRIVER line:\n{text}"))
        .to_string();
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();

    let after = Census::settled_after(&before, Duration::from_secs(10));
    println!(
        "soak: {RUNS} `hutch run` in {:.1}s ({:.1} ms each), {TESTS} `hutch test` of 3 nodes in {:.1}s ({:.0} ms each), \
         {RESTARTS} node restarts in one `hutch test` in {:.1}s",
        runs_took.as_secs_f64(),
        runs_took.as_secs_f64() * 1e3 / RUNS as f64,
        tests_took.as_secs_f64(),
        tests_took.as_secs_f64() * 1e3 / TESTS as f64,
        restarts_took.as_secs_f64()
    );
    println!("soak: census before -> after\n{}", Census::table(&before, &after));
    println!("soak: {line} (after restart 1 -> after restart {RESTARTS})");
    assert_eq!(nums.len(), 4, "{line}");
    assert!(nums[1] <= nums[0], "the driver's descriptors grew over {RESTARTS} restarts: {line}");
    assert!(nums[3] <= nums[2], "the driver's threads grew over {RESTARTS} restarts: {line}");
    let grew = after.growth(&before);
    assert!(
        grew.is_empty(),
        "grew over the soak: {grew:?}\nhutch processes: {:?}",
        hutch_processes()
    );
}

/// `path.tap_mkdir()`: makes the directory (readable by every user) and returns it.
trait TapMkdir {
    fn tap_mkdir(self) -> std::path::PathBuf;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> std::path::PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        std::fs::set_permissions(&self, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        self
    }
}
