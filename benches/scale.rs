//! Many nodes at once, hutch side by side with systemd-nspawn (`--register=no --keep-unit`)
//! where a peer can do the same job, in paired rounds (each round runs every contender once,
//! in turn), with medians and ratios:
//!
//!   a. 24 nodes that each run one command (the NixOS nspawn backend's benchmark shape),
//!      busybox image: `hutch bench`, a real `hutch test` (Python script, `succeed` on every
//!      node), and 24 systemd-nspawn runs started together.
//!   b. the same with 24 Debian systemd nodes: boot to multi-user, one command, power off.
//!   c. 100 Debian systemd nodes booted together to READY=1 / multi-user, then powered off:
//!      time and MiB per node.
//!   d. 1000 busybox nodes on one LAN, every node pinging node 1 (real ICMP over the bridge;
//!      `hutch bench` raises the ARP table limit this needs, as root). No peer: nspawn cannot
//!      put containers on one LAN without a bridge in the host's own network namespace.
//!
//! Every contender runs inside a fresh memory cgroup of the harness: "run MiB/N" is its peak over
//! the node count. For systemd-nspawn that covers the containers too; hutch puts every node in
//! a memory cgroup of its own (outside the harness's), so for hutch "run MiB/N" is hutch's own
//! share per node and "node MiB" the median of the nodes' own peaks (`hutch bench` reports
//! them; a `hutch test` run does not).
//!
//! `cargo bench --bench scale` as root. `HUTCH_SCALE_ONLY=a,c` picks sections,
//! `HUTCH_SCALE_ROUNDS` (default 3) sets the rounds of a and b, `HUTCH_SCALE_BIG_ROUNDS`
//! (default 1) those of c and d.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const WANTS: &str = "systemd.wants=hutch-poweroff.service";

struct Contender {
    name: String,
    cmds: Vec<Vec<String>>,
    /// Its first command is `hutch bench --json`: read the report it prints.
    json: bool,
    nodes: usize,
    samples: Vec<GroupSample>,
    reports: Vec<Value>,
}

impl Contender {
    fn new(name: &str, cmds: Vec<Vec<String>>, nodes: usize) -> Contender {
        let json = cmds.len() == 1 && cmds[0].iter().any(|a| a == "--json");
        Contender {
            name: name.into(),
            cmds,
            json,
            nodes,
            samples: Vec::new(),
            reports: Vec::new(),
        }
    }
}

fn hutch() -> &'static str {
    env!("CARGO_BIN_EXE_hutch")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| percentile(&v, 0.5))
}

/// Runs `rounds` paired rounds of `contenders` and prints the section's table; returns the
/// median wall time of each contender.
fn section(title: &str, rounds: usize, limit: Duration, contenders: &mut [Contender]) -> Vec<Option<f64>> {
    println!("\n== {title}");
    println!("load average before: {}", loadavg());
    for round in 0..rounds {
        for c in contenders.iter_mut() {
            let s = measure_group(&c.cmds, limit);
            if c.json {
                match serde_json::from_str::<Value>(&s.stdout[0]) {
                    Ok(v) => c.reports.push(v),
                    Err(e) => eprintln!("{}: round {}: no JSON report ({e})", c.name, round + 1),
                }
            }
            eprintln!(
                "{}: round {}: {:.3} s, {} failed{}",
                c.name,
                round + 1,
                s.wall.as_secs_f64(),
                s.failed,
                if s.timed_out { ", timed out" } else { "" }
            );
            c.samples.push(s);
        }
    }
    let base = contenders
        .iter()
        .find(|c| c.name.starts_with("systemd-nspawn"))
        .and_then(|c| median(c.samples.iter().map(|s| s.wall.as_secs_f64()).collect()));
    let mut medians = Vec::new();
    let mut rows = Vec::new();
    for c in contenders.iter() {
        let walls: Vec<f64> = c.samples.iter().map(|s| s.wall.as_secs_f64()).collect();
        let med = median(walls.clone());
        medians.push(med);
        let Some(m) = med else { continue };
        let min = walls.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = walls.iter().cloned().fold(0.0, f64::max);
        let ratio = base.map(|b| format!("{:.2}x", m / b)).unwrap_or_else(|| "-".into());
        let per_node = median(
            c.samples
                .iter()
                .filter_map(|s| s.peak)
                .map(|p| p as f64 / (1 << 20) as f64 / c.nodes as f64)
                .collect(),
        );
        let node_mib = median(c.reports.iter().filter_map(|r| r["memory_per_node_mib"]["p50"].as_f64()).collect());
        let nps = median(c.reports.iter().filter_map(|r| r["nodes_per_second"]["p50"].as_f64()).collect());
        let failed: usize = c.samples.iter().map(|s| s.failed).sum::<usize>()
            + c.reports
                .iter()
                .filter_map(|r| r["failures"].as_array().map(Vec::len))
                .sum::<usize>();
        let f = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
        rows.push(vec![
            c.name.clone(),
            format!("{m:.3}"),
            format!("{min:.3}"),
            format!("{max:.3}"),
            ratio,
            f(per_node, 1),
            f(node_mib, 1),
            failed.to_string(),
            f(nps, 1),
        ]);
    }
    print_table(
        &[
            "contender",
            "median s",
            "min s",
            "max s",
            "vs nspawn",
            "run MiB/N",
            "node MiB",
            "failed",
            "nodes/s",
        ],
        &rows,
    );
    for c in contenders.iter().filter(|c| !c.reports.is_empty()) {
        print_phases(c);
    }
    medians
}

/// Prints a table: the first column left-aligned, the others right-aligned, each as wide as its
/// widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        println!("{}", text.join(" "));
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The phase table of the median round of a `hutch bench` contender.
fn print_phases(c: &Contender) {
    let mut by_wall: Vec<&Value> = c.reports.iter().collect();
    by_wall.sort_by(|a, b| {
        f64::total_cmp(
            &a["wall_s"]["p50"].as_f64().unwrap_or(0.0),
            &b["wall_s"]["p50"].as_f64().unwrap_or(0.0),
        )
    });
    let r = by_wall[by_wall.len() / 2];
    let phases: Vec<String> = r["phases"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{} {:.1}/{:.1}",
                        p["name"].as_str().unwrap_or("?"),
                        p["p50_ms"].as_f64().unwrap_or(0.0),
                        p["max_ms"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!("  {} phases, p50/max ms: {}", c.name, phases.join(", "));
    if let Some(f) = r["failures"].as_array().filter(|f| !f.is_empty()) {
        println!(
            "  {} failures: {}",
            c.name,
            f.iter().take(3).map(|x| x.to_string()).collect::<Vec<_>>().join("; ")
        );
    }
}

fn target(what: &str, got: Option<f64>, limit: f64, unit: &str) {
    match got {
        Some(v) if v < limit => println!("target {what} under {limit} {unit}: met ({v:.2} {unit})"),
        Some(v) => println!("target {what} under {limit} {unit}: MISSED ({v:.2} {unit})"),
        None => println!("target {what} under {limit} {unit}: not measured"),
    }
}

/// `hutch bench --json --image IMAGE --nodes NODES --parallel PARALLEL`, then `rest`.
fn bench(image: &str, nodes: usize, parallel: &str, rest: &[&str]) -> Vec<String> {
    let nodes = nodes.to_string();
    let mut v = argv(&[
        hutch(),
        "bench",
        "--json",
        "--image",
        image,
        "--nodes",
        &nodes,
        "--parallel",
        parallel,
    ]);
    v.extend(argv(rest));
    v
}

/// Sections a (`boot` false: busybox nodes that each run `true`) and b (`boot` true: Debian
/// nodes that boot systemd, then run it): 24 nodes on one LAN, with `hutch bench`, a real
/// `hutch test`, and 24 systemd-nspawn runs when installed. Target: the test under 3 s.
fn lan24(boot: bool, image: &str, nspawn: bool, rounds: usize) {
    let (title, what, names, limit, rest): (_, _, [&str; 3], _, &[&str]) = if boot {
        (
            "b. 24 systemd nodes: boot to multi-user, one command, power off (Debian image)",
            "24-node systemd test (hutch test)",
            [
                "hutch bench --boot (24)",
                "hutch test (24 systemd, succeed)",
                "systemd-nspawn x24 -b (poweroff)",
            ],
            300,
            &["--boot", "--vlan", "1"],
        )
    } else {
        (
            "a. 24 nodes, one command each (busybox image)",
            "24-node test (hutch test)",
            [
                "hutch bench (24, LAN, `true`)",
                "hutch test (24, LAN, succeed)",
                "systemd-nspawn x24 (/bin/true)",
            ],
            120,
            &["--vlan", "1", "--", "true"],
        )
    };
    let dir = test_file(24, image, boot);
    let test = argv(&[
        hutch(),
        "test",
        &dir.join("test.toml").display().to_string(),
        "--output-dir",
        &dir.join("out").display().to_string(),
    ]);
    let mut cs = vec![
        Contender::new(names[0], vec![bench(image, 24, "2", rest)], 24),
        Contender::new(names[1], vec![test], 24),
    ];
    if nspawn {
        cs.insert(0, Contender::new(names[2], nspawn_group(24, image, boot), 24));
    }
    let m = section(title, rounds, Duration::from_secs(limit), &mut cs);
    target(what, m[cs.len() - 1], 3.0, "s");
    let _ = std::fs::remove_dir_all(dir);
}

fn nspawn_group(n: usize, image: &str, boot: bool) -> Vec<Vec<String>> {
    (1..=n)
        .map(|i| {
            let name = format!("scale{i:04}");
            let mut v = argv(&[
                "systemd-nspawn",
                "-q",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--volatile=overlay",
                "-M",
                &name,
                "-D",
                image,
            ]);
            if boot {
                v.extend(argv(&["-b", WANTS]));
            } else {
                v.push("/bin/true".into());
            }
            v
        })
        .collect()
}

/// A `hutch test` file with `n` nodes on one VLAN, each running one command, in a scratch dir.
fn test_file(n: usize, image: &str, boot: bool) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hutch-scale-test-{}-{}", std::process::id(), boot));
    let _ = std::fs::create_dir_all(&dir);
    let mut toml = format!(
        "[test]\nname = \"scale{n}\"\ntestScript = \"\"\"\nstart_all()\nfor m in machines:\n    m.succeed(\"true\")\n\"\"\"\ntimeout = 600\n\n[defaults]\nimage = \"{image}\"\nvlans = [1]\nmemory = \"512M\"\nboot = {boot}\n\n"
    );
    for i in 1..=n {
        toml.push_str(&format!("[nodes.n{i:03}]\n"));
    }
    std::fs::write(dir.join("test.toml"), toml).expect("writing the test file");
    dir
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIP: the scale benchmarks run as root (nspawn needs it; hutch raises host limits)");
        return;
    }
    let only = std::env::var("HUTCH_SCALE_ONLY").unwrap_or_else(|_| "a,b,c,d".into());
    let rounds: usize = std::env::var("HUTCH_SCALE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let big: usize = std::env::var("HUTCH_SCALE_BIG_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let nspawn = installed("systemd-nspawn");
    let busybox = fixture("busybox-image.sh", &[]).display().to_string();
    let debian = fixture("debian-image.sh", &[]).display().to_string();
    println!(
        "machine: {} cpus, kernel {}, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")))
            .map(|m| format!("{m} memory"))
            .unwrap_or_default()
    );
    if nspawn && (only.contains('b') || only.contains('c')) {
        // The peer gets the per-user limits many systemd nodes need, as hutch gives itself.
        for (key, value) in [("fs/inotify/max_user_instances", 8192u64), ("fs/inotify/max_user_watches", 1 << 20)] {
            let path = format!("/proc/sys/{key}");
            let now: u64 = std::fs::read_to_string(&path).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            if now < value && std::fs::write(&path, value.to_string()).is_ok() {
                println!(
                    "raised {} from {now} to {value} for systemd-nspawn (it stays raised)",
                    key.replace('/', ".")
                );
            }
        }
    }
    for (letter, boot, image) in [('a', false, &busybox), ('b', true, &debian)] {
        if only.contains(letter) {
            lan24(boot, image, nspawn, rounds);
        }
    }
    if only.contains('c') {
        let mut cs = vec![Contender::new(
            "hutch bench --boot (100)",
            vec![bench(&debian, 100, "2", &["--boot"])],
            100,
        )];
        if nspawn {
            cs.insert(
                0,
                Contender::new("systemd-nspawn x100 -b (poweroff)", nspawn_group(100, &debian, true), 100),
            );
        }
        let m = section(
            "c. 100 systemd nodes booted together to READY=1, then powered off (Debian image)",
            big,
            Duration::from_secs(400),
            &mut cs,
        );
        target("100 systemd nodes", m[cs.len() - 1], 30.0, "s");
        let mib = median(
            cs[cs.len() - 1]
                .reports
                .iter()
                .filter_map(|r| r["memory_per_node_mib"]["p50"].as_f64())
                .collect(),
        );
        target("100 systemd nodes, memory per node (node cgroup p50)", mib, 30.0, "MiB");
    }
    if only.contains('d') {
        let ping = |k: &str| bench(&busybox, 1000, k, &["--vlan", "1", "--", "ping", "-c", "1", "-W", "10", "node0001"]);
        let mut cs = vec![
            Contender::new("hutch bench (1000, ping, -j2)", vec![ping("2")], 1000),
            Contender::new("hutch bench (1000, ping, -j32)", vec![ping("32")], 1000),
        ];
        let m = section(
            "d. 1000 busybox nodes on one LAN, each pings node 1",
            big,
            Duration::from_secs(600),
            &mut cs,
        );
        target("1000 nodes on one LAN (-j2)", m[0], 20.0, "s");
        target("1000 nodes on one LAN (-j32)", m[1], 20.0, "s");
    }
    println!("\nreproduce: cargo bench --bench scale (as root; HUTCH_SCALE_ONLY=a,b,c,d)");
}
