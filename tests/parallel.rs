//! Parallel: four `hutch test` runs of the same test file (tests/scripts/three_nodes.toml with
//! `image = "busybox"`) at once: two as root, one as `nobody`, one as `hutch2` (a second
//! unprivileged user with its own subordinate range and delegated cgroup, made by
//! scripts/setup.sh). Every run has the same node names, addresses and bridges: they must
//! not collide (each run's network lives in its own hub namespace, its cgroups and image
//! views carry its process id). All four pass, their runs overlap in time, and nothing of
//! them remains.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const NOBODY: u32 = 65534;
const SECOND_USER: &str = "hutch2";

#[test]
fn four_runs_at_once_as_root_and_two_users_all_pass() {
    if skip_unless_root("parallel") {
        return;
    }
    let second = uid_of_user(SECOND_USER).unwrap_or_else(|| panic!("user {SECOND_USER} is missing: run scripts/setup.sh (CI does)"));
    let ranges = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    assert!(
        ranges.lines().any(|l| l.starts_with(&format!("{SECOND_USER}:"))),
        "{SECOND_USER} has no range in /etc/subuid: run scripts/setup.sh"
    );
    publish_busybox_image(&[NOBODY, second]);
    let dir = Scratch::new("parallel");
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let toml = std::fs::read_to_string(scripts.join("three_nodes.toml")).unwrap();
    std::fs::write(dir.0.join("three_nodes.toml"), toml.replace("\"IMAGE\"", "\"busybox\"")).unwrap();
    std::fs::copy(scripts.join("three_nodes.py"), dir.0.join("three_nodes.py")).unwrap();
    for f in ["three_nodes.toml", "three_nodes.py"] {
        std::fs::set_permissions(dir.0.join(f), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    let file = dir.0.join("three_nodes.toml").display().to_string();
    let before = Census::settled_after(&Census::take(), Duration::from_secs(5));

    let runs: Vec<(&str, Option<u32>)> = vec![
        ("root-1", None),
        ("root-2", None),
        ("nobody", Some(NOBODY)),
        (SECOND_USER, Some(second)),
    ];
    let t0 = Instant::now();
    let mut children = Vec::new();
    for (tag, user) in &runs {
        let out = dir.0.join(format!("out-{tag}")).display().to_string();
        // gamma's command holds 1 s, so the four runs are surely up at the same time.
        let child = hutch_command(*user, &["test", &file, "--output-dir", &out])
            .env("HUTCH_HOLD", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning hutch");
        children.push((*tag, child.id(), t0.elapsed(), ChildGuard::new(child)));
    }
    // Each run is waited for on its own thread, so its end time is its own.
    let results: Vec<_> = std::thread::scope(|scope| {
        let waits: Vec<_> = children
            .into_iter()
            .map(|(tag, pid, started, guard)| {
                scope.spawn(move || {
                    let o = guard.output();
                    let ended = t0.elapsed();
                    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                    (tag, pid, started, ended, o.status.code(), text)
                })
            })
            .collect();
        waits.into_iter().map(|w| w.join().expect("waiting for a run")).collect()
    });
    for (tag, pid, started, ended, code, text) in &results {
        println!(
            "parallel: {tag:<7} pid {pid:<7} {:.2}s -> {:.2}s exit {code:?}",
            started.as_secs_f64(),
            ended.as_secs_f64()
        );
        assert_eq!(*code, Some(0), "the {tag} run failed:\n{text}");
        assert!(text.contains("test \"three-nodes\" passed"), "{tag}:\n{text}");
        // Each run wrote its own logs, into its own folder.
        let log = std::fs::read_to_string(dir.0.join(format!("out-{tag}/log.txt"))).unwrap_or_default();
        assert!(log.contains("gamma-ok") || log.contains("passed"), "{tag}: its log.txt:\n{log}");
    }
    let last_start = results.iter().map(|r| r.2).max().unwrap();
    let first_end = results.iter().map(|r| r.3).min().unwrap();
    assert!(
        last_start < first_end,
        "the four runs did not overlap: {last_start:?} >= {first_end:?}"
    );
    // What the runs could leave (cgroups, mounts, namespaces, processes): the census.
    let after = Census::settled_after(&before, Duration::from_secs(5));
    println!("parallel: census before -> after\n{}", Census::table(&before, &after));
    assert!(after.growth(&before).is_empty(), "left behind: {:?}", after.growth(&before));
}
