//! Turning runs into numbers: percentiles per phase, wall time, nodes per second and memory
//! per node, printed as a table or as JSON (schema `hutch-bench/1`, described in `--help`).

use serde::Serialize;

use super::limits::Limit;
use super::record::{NodeRecord, RunRecord};

/// Percentiles of a set of numbers.
#[derive(Debug, Serialize, Clone, Copy)]
pub(super) struct Stats {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Option<Stats> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Some(Stats {
            count: v.len(),
            p50: at(0.5),
            p95: at(0.95),
            max: v[v.len() - 1],
        })
    }
}

/// One phase's percentiles over every node of every run, in milliseconds.
#[derive(Debug, Serialize)]
pub(super) struct PhaseStats {
    pub name: &'static str,
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

/// One run: wall time, the moment every node was up, nodes per second.
#[derive(Debug, Serialize)]
pub(super) struct RunStats {
    pub wall_s: f64,
    pub up_s: Option<f64>,
    pub nodes_per_second: Option<f64>,
    pub nodes_up: usize,
    pub failed: usize,
}

/// What was run, for the report's header.
#[derive(Debug, Serialize)]
pub(super) struct Config {
    pub root: &'static str,
    pub path: String,
    pub boot: bool,
    pub command: Vec<String>,
    pub nodes: usize,
    pub parallel: usize,
    pub repeat: usize,
    pub vlan: Option<u32>,
    pub memory_limit_bytes: Option<u64>,
}

/// The host, for the report's header.
#[derive(Debug, Serialize)]
pub(super) struct Host {
    pub cpus: usize,
    pub kernel: String,
    pub rootless: bool,
}

/// Everything `hutch bench` reports.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub schema: &'static str,
    pub config: Config,
    pub host: Host,
    pub limits: Vec<Limit>,
    pub phases: Vec<PhaseStats>,
    pub runs: Vec<RunStats>,
    pub wall_s: Option<Stats>,
    pub up_s: Option<Stats>,
    pub nodes_per_second: Option<Stats>,
    pub memory_per_node_mib: Option<Stats>,
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
}

/// The phase names in report order; which appear depends on the mode (see `--help`).
const PHASES: [&str; 14] = [
    "clone", "idmap", "mounts", "network", "confine", "exec", "start", "agent", "lan", "ready", "command", "stop", "run", "queue",
];

fn ms(from: u64, to: Option<u64>) -> Option<f64> {
    to.filter(|&t| t >= from && from > 0).map(|t| (t - from) as f64 / 1e6)
}

/// The value of `phase` for one node (ms), when it applies.
fn phase(rec: &NodeRecord, t0: u64, k: usize) -> Option<f64> {
    if rec.exec == 0 {
        return None;
    }
    match PHASES[k] {
        _ if k < 6 => rec.phases_ns.get(k).map(|&n| n as f64 / 1e6),
        "start" => ms(rec.called, Some(rec.exec)),
        "agent" => ms(rec.exec, rec.agent),
        "lan" => ms(rec.exec, rec.attached),
        "ready" => ms(rec.exec, rec.ready),
        "command" => rec.cmd_sent.and_then(|s| ms(s, rec.cmd_done)),
        "stop" => rec.stop_sent.and_then(|s| ms(s, rec.exited)),
        "run" => ms(rec.exec, rec.exited),
        _ => ms(t0, Some(rec.called)),
    }
}

/// When a node was up: started, on its LAN, its agent answering (command mode) or its
/// systemd ready (boot mode).
fn up_at(rec: &NodeRecord, command: bool) -> Option<u64> {
    if rec.exec == 0 {
        return None;
    }
    let on_lan = rec.attached.unwrap_or(rec.exec);
    let ready = match (command, rec.systemd) {
        (true, _) => rec.agent?,
        (false, true) => rec.ready?,
        (false, false) => rec.exec,
    };
    Some(on_lan.max(ready))
}

/// Builds the report from the runs.
pub(super) fn build(config: Config, host: Host, limits: Vec<Limit>, runs: &[RunRecord]) -> Report {
    let command = !config.boot;
    let phases = (0..PHASES.len())
        .filter_map(|k| {
            let v: Vec<f64> = runs
                .iter()
                .flat_map(|r| r.nodes.iter().filter_map(move |n| phase(n, r.t0, k)))
                .collect();
            Stats::of(v).map(|s| PhaseStats {
                name: PHASES[k],
                count: s.count,
                p50_ms: s.p50,
                p95_ms: s.p95,
                max_ms: s.max,
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    let run_stats: Vec<RunStats> = runs
        .iter()
        .enumerate()
        .map(|(r, run)| {
            for (i, n) in run.nodes.iter().enumerate() {
                if let Some(f) = &n.failure {
                    failures.push(format!("run {}, node {}: {f}", r + 1, i + 1));
                }
            }
            for w in &run.warnings {
                if !warnings.contains(w) {
                    warnings.push(w.clone());
                }
            }
            let ups: Vec<u64> = run.nodes.iter().filter_map(|n| up_at(n, command)).collect();
            let up_s = ups.iter().max().map(|&t| t.saturating_sub(run.t0) as f64 / 1e9);
            RunStats {
                wall_s: run.done.saturating_sub(run.t0) as f64 / 1e9,
                up_s,
                nodes_per_second: up_s.filter(|&s| s > 0.0).map(|s| ups.len() as f64 / s),
                nodes_up: ups.len(),
                failed: run.nodes.iter().filter(|n| n.failure.is_some()).count(),
            }
        })
        .collect();
    let peaks: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.nodes.iter().filter_map(|n| n.peak))
        .map(|b| b as f64 / (1u64 << 20) as f64)
        .collect();
    Report {
        schema: "hutch-bench/1",
        config,
        host,
        limits,
        phases,
        wall_s: Stats::of(run_stats.iter().map(|r| r.wall_s).collect()),
        up_s: Stats::of(run_stats.iter().filter_map(|r| r.up_s).collect()),
        nodes_per_second: Stats::of(run_stats.iter().filter_map(|r| r.nodes_per_second).collect()),
        runs: run_stats,
        memory_per_node_mib: Stats::of(peaks),
        failures,
        warnings,
    }
}

/// The report as a table for people.
pub(super) fn table(r: &Report) -> String {
    let c = &r.config;
    let what = if c.boot {
        format!(
            "boot{}",
            if c.command.is_empty() {
                String::new()
            } else {
                format!(" {}", c.command.join(" "))
            }
        )
    } else {
        format!("command `{}`", c.command.join(" "))
    };
    let lan = c.vlan.map(|v| format!(", all on VLAN {v}")).unwrap_or_default();
    let mut s = format!(
        "hutch bench: {} nodes x {} run(s), {} {}, {what}, {} worker(s){lan}\n\n",
        c.nodes, c.repeat, c.root, c.path, c.parallel
    );
    s.push_str(&format!(
        "{:<9} {:>6} {:>10} {:>10} {:>10}\n",
        "phase", "nodes", "p50 ms", "p95 ms", "max ms"
    ));
    for p in &r.phases {
        s.push_str(&format!(
            "{:<9} {:>6} {:>10.2} {:>10.2} {:>10.2}\n",
            p.name, p.count, p.p50_ms, p.p95_ms, p.max_ms
        ));
    }
    s.push_str(&format!(
        "\n{:<5} {:>9} {:>9} {:>9} {:>6} {:>7}\n",
        "run", "wall s", "up s", "nodes/s", "up", "failed"
    ));
    for (i, run) in r.runs.iter().enumerate() {
        let opt = |v: Option<f64>, w: usize, p: usize| v.map(|x| format!("{x:>w$.p$}")).unwrap_or_else(|| format!("{:>w$}", "-"));
        s.push_str(&format!(
            "{:<5} {:>9.3} {} {} {:>6} {:>7}\n",
            i + 1,
            run.wall_s,
            opt(run.up_s, 9, 3),
            opt(run.nodes_per_second, 9, 1),
            run.nodes_up,
            run.failed
        ));
    }
    if let (Some(w), Some(n)) = (&r.wall_s, &r.nodes_per_second) {
        s.push_str(&format!(
            "\ntotal wall p50 {:.3} s (max {:.3}); nodes per second p50 {:.1}\n",
            w.p50, w.max, n.p50
        ));
    }
    match &r.memory_per_node_mib {
        Some(m) => s.push_str(&format!(
            "memory per node (cgroup peak): p50 {:.1} MiB, p95 {:.1} MiB, max {:.1} MiB\n",
            m.p50, m.p95, m.max
        )),
        None if r.config.memory_limit_bytes.is_none() => s.push_str("memory per node: not measured (--memory none)\n"),
        None => s.push_str("memory per node: not measured (no memory cgroup for the nodes: rootless, or none delegated)\n"),
    }
    for f in r.failures.iter().take(10) {
        s.push_str(&format!("failed: {f}\n"));
    }
    if r.failures.len() > 10 {
        s.push_str(&format!(
            "... and {} more failures (--json lists them all)\n",
            r.failures.len() - 10
        ));
    }
    s
}
