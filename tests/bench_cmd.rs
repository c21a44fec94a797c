//! `hutch bench`: its JSON report has the documented schema, every phase of the mode, and
//! numbers that add up; failures are reported, bad input is refused; nothing is left behind.

mod common;

use common::*;
use serde_json::Value;

/// Runs `hutch bench ARGS --json`; the exit code and the parsed report.
fn bench_json(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let run = hutch_run(&all);
    assert_no_node_cgroups_left();
    let report = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", run.stdout, run.stderr));
    (run.code, report, run.stderr)
}

/// Node cgroups (`node<digits>-<worker pid>`) whose worker is gone are leaks.
fn assert_no_node_cgroups_left() {
    for parent in [
        "/sys/fs/cgroup/unified/hutch",
        "/sys/fs/cgroup/memory/hutch",
        "/sys/fs/cgroup/pids/hutch",
    ] {
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some((node, pid)) = name.rsplit_once('-') else { continue };
            let ours = node
                .strip_prefix("node")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            if ours && pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
                panic!("cgroup left behind by a finished bench: {}", e.path().display());
            }
        }
    }
}

fn phase<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["phases"].as_array().unwrap().iter().find(|p| p["name"] == name)
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "{what} is not positive: {x}");
    x
}

#[test]
fn command_mode_on_a_lan_reports_every_phase() {
    if skip_unless_root("bench command mode") {
        return;
    }
    let image = busybox_image().display().to_string();
    let (code, r, err) = bench_json(&[
        "--image",
        &image,
        "--nodes",
        "3",
        "--parallel",
        "2",
        "--repeat",
        "2",
        "--vlan",
        "1",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "node1",
    ]);
    assert_eq!(code, 0, "{r:#}\n{err}");
    assert_eq!(r["schema"], "hutch-bench/1");
    assert_eq!(r["config"]["nodes"], 3);
    assert_eq!(r["config"]["parallel"], 2);
    assert_eq!(r["config"]["repeat"], 2);
    assert_eq!(r["config"]["vlan"], 1);
    assert_eq!(r["config"]["boot"], false);
    assert_eq!(r["config"]["command"], serde_json::json!(["ping", "-c", "1", "-W", "5", "node1"]));
    for name in [
        "clone", "idmap", "mounts", "network", "confine", "exec", "start", "agent", "lan", "command", "stop", "run", "queue",
    ] {
        let p = phase(&r, name).unwrap_or_else(|| panic!("phase {name} missing: {r:#}"));
        assert_eq!(p["count"], 6, "{name}: one sample per node per run");
        let (p50, p95, max) = (
            positive(&p["p50_ms"], name),
            positive(&p["p95_ms"], name),
            positive(&p["max_ms"], name),
        );
        assert!(p50 <= p95 && p95 <= max, "{name}: {p}");
    }
    assert!(phase(&r, "ready").is_none(), "no systemd here, so no READY=1: {r:#}");
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert_eq!(run["nodes_up"], 3, "{run}");
        assert_eq!(run["failed"], 0, "{run}");
        let (wall, up) = (positive(&run["wall_s"], "wall_s"), positive(&run["up_s"], "up_s"));
        assert!(up <= wall, "{run}");
        positive(&run["nodes_per_second"], "nodes_per_second");
    }
    for key in ["wall_s", "up_s", "nodes_per_second"] {
        assert_eq!(r[key]["count"], 2, "{key}");
        positive(&r[key]["p50"], key);
    }
    assert_eq!(r["memory_per_node_mib"]["count"], 6, "a peak per node per run: {r:#}");
    positive(&r["memory_per_node_mib"]["max"], "memory");
    assert_eq!(r["failures"], serde_json::json!([]));
    let limits = r["limits"].as_array().unwrap();
    assert!(
        limits.iter().any(|l| l["name"] == "net.ipv4.neigh.default.gc_thresh3"),
        "{limits:?}"
    );
    assert!(limits.iter().all(|l| l["allows_nodes"].as_u64().unwrap() >= 3), "{limits:?}");
}

#[test]
fn boot_mode_has_no_agent_and_a_run_phase() {
    if skip_unless_root("bench boot mode") {
        return;
    }
    let image = busybox_image().display().to_string();
    let (code, r, err) = bench_json(&["--image", &image, "--boot", "--nodes", "2"]);
    assert_eq!(code, 0, "{r:#}\n{err}");
    assert_eq!(r["config"]["boot"], true);
    for name in ["clone", "exec", "start", "run"] {
        assert_eq!(phase(&r, name).unwrap_or_else(|| panic!("{name}: {r:#}"))["count"], 2);
    }
    for absent in ["agent", "command", "lan", "ready"] {
        assert!(phase(&r, absent).is_none(), "{absent} does not apply to a busybox boot: {r:#}");
    }
    // busybox init powers off by itself: the run lasts its boot and its shutdown.
    positive(&phase(&r, "run").unwrap()["p50_ms"], "run");
}

#[test]
fn a_failing_command_fails_the_bench_and_names_the_node() {
    if skip_unless_root("bench failure") {
        return;
    }
    let image = busybox_image().display().to_string();
    let (code, r, _) = bench_json(&[
        "--image",
        &image,
        "--nodes",
        "2",
        "--memory",
        "none",
        "--",
        "sh",
        "-c",
        "test $HUTCH_BENCH_NODE = 1 || exit 3",
    ]);
    assert_eq!(code, 1, "{r:#}");
    let failures = r["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let f = failures[0].as_str().unwrap();
    assert!(f.contains("node 2") && f.contains("exit code 3"), "{f}");
    assert_eq!(r["runs"][0]["nodes_up"], 2, "both started; one command failed");
    assert_eq!(r["runs"][0]["failed"], 1);
    assert_eq!(r["memory_per_node_mib"], Value::Null, "--memory none: no node cgroup to read");
    assert_eq!(r["config"]["memory_limit_bytes"], Value::Null);
}

#[test]
fn bad_input_is_refused_before_anything_starts() {
    let image = busybox_image().display().to_string();
    let run = hutch_run(&["bench", "--image", &image, "--nodes", "0", "--", "true"]);
    assert_eq!(run.code, 125, "{}", run.stderr);
    assert!(run.stderr.contains("--nodes"), "{}", run.stderr);
    let run = hutch_run(&["bench", "--image", &image]);
    assert_eq!(run.code, 125);
    assert!(run.stderr.contains("--boot"), "{}", run.stderr);
    let run = hutch_run(&["bench", "--image", "/nonexistent", "--", "true"]);
    assert_eq!(run.code, 125);
    assert!(run.stderr.contains("--image"), "{}", run.stderr);
    let help = hutch_run(&["bench", "--help"]);
    assert_eq!(help.code, 0);
    for documented in ["hutch-bench/1", "nodes_per_second", "memory_per_node_mib", "--parallel", "READY=1"] {
        assert!(help.stdout.contains(documented), "--help does not mention {documented}");
    }
}

#[test]
fn nodes_past_the_timeout_are_killed_and_reported() {
    if skip_unless_root("bench timeout") {
        return;
    }
    let image = busybox_image().display().to_string();
    let started = std::time::Instant::now();
    let (code, r, _) = bench_json(&["--image", &image, "--nodes", "3", "--timeout", "1", "--", "sleep", "600"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 1, "{r:#}");
    let failures = r["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(failures[0].as_str().unwrap().contains("--timeout"), "{failures:?}");
}
