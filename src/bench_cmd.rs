//! `hutch bench`: start N nodes, K at a time, R times over, and report where the start-up time
//! goes (per phase p50/p95/max), the total wall time, nodes per second and memory per node.
//!
//! The main process forks K single-threaded workers before it starts any thread (a node is
//! cloned, and cloning is only safe without other threads); each worker starts its share of the
//! nodes and hands their descriptors over. The main process then does what `hutch test` does:
//! plugs the nodes into the LAN, asks each node's agent to run the command (or waits for a
//! booted systemd's READY=1), and stops the nodes, noting the time of every step.

mod events;
mod limits;
mod record;
mod report;
mod session;
mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use hutch_netns::{Addressing, Hub, Topology};
use hutch_runtime::{AgentHook, InitKind, NodeSpec, RootFs, Size};

use limits::NodeKind;
use worker::Worker;

const AFTER_HELP: &str = "\
Modes:
  hutch bench --image DIR -- CMD [ARGS...]    each node runs CMD through its agent, as a test's
                                              machine.succeed(CMD) does; then all nodes stop
  hutch bench --image DIR --boot [-- ARGS]    each node boots its init (ARGS go to it); a systemd
                                              node is stopped once it sends READY=1 (after --hold
                                              seconds, when given), other inits run until they exit
                                              (or for --hold seconds)

Phases (milliseconds; each node of each run is one sample):
  clone, idmap, mounts, network, confine, exec   the runtime's start, in kernel order
                                                 (network = loopback and hostname, not the LAN)
  start      the whole spawn call, until the node's PID 1 exec'd
  agent      exec to the agent's first answer (command mode)
  lan        exec to the node's link on the LAN being up (--vlan)
  ready      exec to systemd's READY=1 (booted systemd nodes)
  command    the command's round trip through the agent (command mode)
  stop       stop signal to the node being gone
  run        exec to the node being gone
  queue      run start to the spawn call (waiting for a worker: --parallel)
A node is up when it has started, is on the LAN (--vlan), and its agent answered (command mode)
or its systemd sent READY=1. Per run: `wall` is from the run's start until every node is gone
and cleaned up, `up` until the last node was up, nodes per second = nodes up / up.
Memory per node is the peak of the node's memory cgroup (--memory gives every node one).

Nodes are named node1..nodeN, zero-padded to one width (node001..node100), and numbered in that
order on the LAN: 192.168.V.n (up to 254 nodes) or 10.V.hi.lo with n = hi*256+lo (more nodes);
/etc/hosts lists every node. A command sees HUTCH_BENCH_NODE (its number), HUTCH_BENCH_NODES and,
with --vlan, HUTCH_BENCH_FIRST (node 1's address).

Host limits: many nodes need more inotify instances, pids, ptys, ARP entries and open files than
a default host gives. As root hutch raises them (one log line each; they stay raised); rootless it
states how many nodes each allows.

--json prints one object (schema \"hutch-bench/1\"; fields are only ever added):
  schema               \"hutch-bench/1\"
  config               {root: \"image\"|\"toplevel\", path, boot, command: [..], nodes, parallel,
                        repeat, vlan: n|null, memory_limit_bytes: n|null}
  host                 {cpus, kernel, rootless}
  limits               [{name, scope: \"user\"|\"host\"|\"process\", was, value, needed, per_node,
                         allows_nodes, raised}]
  phases               [{name, count, p50_ms, p95_ms, max_ms}] in the order above; a phase that
                        does not apply to the mode is absent
  runs                 [{wall_s, up_s, nodes_per_second, nodes_up, failed}] one per --repeat
  wall_s, up_s, nodes_per_second, memory_per_node_mib
                       {count, p50, p95, max} over the runs (memory: over every node), or null
  failures             [\"run R, node I: what happened\"]
  warnings             [\"...\"]
Exit status: 0 when every node of every run came up and ended cleanly, 1 when some failed,
125 when hutch could not run the benchmark.";

/// Options of `hutch bench`.
#[derive(Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub struct BenchArgs {
    /// Root filesystem directory every node uses (read-only lower layer of a per-node overlay).
    #[arg(long, conflicts_with = "toplevel", required_unless_present = "toplevel")]
    image: Option<PathBuf>,
    /// NixOS mode: a system toplevel store path; each node's root is an empty tmpfs with the store.
    #[arg(long)]
    toplevel: Option<PathBuf>,
    /// Host directory holding the store paths (NixOS mode).
    #[arg(long, default_value = "/nix/store", requires = "toplevel")]
    store: PathBuf,
    /// Mount only the toplevel's closure, not the whole store (NixOS mode).
    #[arg(long, requires = "toplevel")]
    closure_only: bool,
    /// Boot each node's init (trailing args go to it) instead of running a command.
    #[arg(long, short = 'b')]
    boot: bool,
    /// How many nodes each run starts.
    #[arg(long, short = 'n', default_value_t = 10)]
    nodes: usize,
    /// How many worker processes start nodes at once.
    #[arg(long, short = 'j', default_value_t = 1)]
    parallel: usize,
    /// How many times to run the whole set.
    #[arg(long, short = 'r', default_value_t = 1)]
    repeat: usize,
    /// Put every node on this VLAN (one LAN, NixOS test addressing).
    #[arg(long, value_name = "V")]
    vlan: Option<u32>,
    /// Each node's memory limit; it also gives every node the memory cgroup its peak is read
    /// from. `none`: no limit and no per-node memory cgroup (the cheaper start `hutch test`
    /// gives nodes without limits), memory per node then not measured.
    #[arg(long, default_value = "2G")]
    memory: String,
    /// Seconds a booted node stays up once ready (systemd: READY=1; others: started) before it
    /// is stopped. Default: systemd nodes stop at READY=1, other inits run until they exit.
    #[arg(long, value_name = "SECS")]
    hold: Option<f64>,
    /// Seconds a run may take; nodes still up then are killed and count as failed.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    timeout: f64,
    /// Environment for every node's init and command: K=V (repeatable).
    #[arg(long = "setenv", value_name = "K=V")]
    env: Vec<String>,
    /// Leave the host's limits as they are, even as root (only report what they allow).
    #[arg(long)]
    keep_limits: bool,
    /// Print the report as JSON (schema in --help).
    #[arg(long)]
    json: bool,
    /// The command each node runs, or the init's arguments with --boot.
    #[arg(last = true, value_name = "CMD")]
    args: Vec<String>,
}

/// Runs `hutch bench`; returns the process exit code.
pub fn main(args: BenchArgs) -> i32 {
    match bench(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hutch: {e:#}");
            crate::run::EXIT_HUTCH
        }
    }
}

fn seconds(field: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("{field}: {v} is not a number of seconds; give e.g. 30");
    }
    Ok(Duration::from_secs_f64(v))
}

/// How every node is made: one template, named per node. Workers build each node's spec just
/// before its start, so that they stay small: every node's first process is a copy of its
/// worker, and the kernel copies the worker's page tables for each one.
struct Nodes {
    template: NodeSpec,
    names: Vec<String>,
    hosts: Option<String>,
}

impl Nodes {
    /// Node `i`'s spec.
    fn spec(&self, i: usize) -> NodeSpec {
        let mut spec = self.template.clone();
        spec.name = self.names[i].clone();
        spec.hostname = self.names[i].clone();
        if let Some(h) = &self.hosts {
            spec.files.push(("/etc/hosts".into(), h.clone().into_bytes()));
        }
        spec
    }
}

/// The validated shape of a benchmark.
struct Plan {
    nodes: Nodes,
    topology: Option<Topology>,
    envs: Vec<BTreeMap<String, String>>,
    kind: NodeKind,
    memory: Option<u64>,
}

fn plan(args: &BenchArgs) -> Result<Plan> {
    if args.nodes == 0 || args.parallel == 0 || args.repeat == 0 {
        bail!("--nodes, --parallel and --repeat: each must be at least 1");
    }
    let root = match (&args.image, &args.toplevel) {
        (Some(dir), _) => RootFs::Image(dir.clone()),
        (None, Some(top)) => RootFs::Nix {
            toplevel: top.clone(),
            store: args.store.clone(),
            closure_only: args.closure_only,
        },
        (None, None) => bail!("--image or --toplevel: give one"),
    };
    let boot = args.boot || (args.toplevel.is_some() && args.args.is_empty());
    if !boot && args.args.is_empty() {
        bail!("CMD: no command given; add `-- CMD [ARGS...]` for each node to run, or --boot to boot the image's init");
    }
    let memory = match args.memory.as_str() {
        "none" => None,
        m => Some(m.parse::<Size>()?.0),
    };
    let env: Vec<(String, String)> = args
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--setenv: {kv:?} is not K=V; write it as NAME=VALUE"))
        })
        .collect::<Result<_>>()?;
    let width = args.nodes.to_string().len();
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("node{i:0width$}")).collect();
    let topology = match args.vlan {
        Some(v) => {
            let addressing = if args.nodes > 254 { Addressing::Large } else { Addressing::NixOs };
            let nodes = names.iter().map(|n| hutch_netns::NodeSpec::new(n.clone(), [v]));
            Some(Topology::with_addressing(nodes, addressing).map_err(|e| anyhow::anyhow!("--vlan: {e}"))?)
        }
        None => None,
    };
    let hosts = topology.as_ref().map(Topology::hosts_file);
    let first = topology
        .as_ref()
        .and_then(|t| Some(t.nodes().first()?.interfaces.first()?.ipv4.to_string()));
    let mut template = NodeSpec::new(&names[0], root);
    template.boot = boot;
    template.args = if boot { args.args.clone() } else { Vec::new() };
    template.env = env.clone();
    template.memory = memory;
    let envs = (1..=args.nodes)
        .map(|i| {
            let mut e: BTreeMap<String, String> = env.iter().cloned().collect();
            e.insert("HUTCH_BENCH_NODE".into(), i.to_string());
            e.insert("HUTCH_BENCH_NODES".into(), args.nodes.to_string());
            if let Some(f) = &first {
                e.insert("HUTCH_BENCH_FIRST".into(), f.clone());
            }
            e
        })
        .collect();
    // Bad input fails here, once, rather than once per node in the workers.
    let mut probe = template.clone();
    if !boot {
        probe.agent = Some(AgentHook {
            fd: -1,
            main: hutch_driver::agent::agent_main,
        });
    }
    probe.validate()?;
    let kind = match (boot, InitKind::of(&template)) {
        (false, _) => NodeKind::Command,
        (true, InitKind::Systemd) => NodeKind::Systemd,
        (true, _) => NodeKind::OtherInit,
    };
    Ok(Plan {
        nodes: Nodes { template, names, hosts },
        topology,
        envs,
        kind,
        memory,
    })
}

fn bench(args: BenchArgs) -> Result<i32> {
    let plan = plan(&args)?;
    let timeout = seconds("--timeout", args.timeout)?;
    let hold = args.hold.map(|h| seconds("--hold", h)).transpose()?;
    let rootless = !nix::unistd::Uid::effective().is_root();
    let limits = limits::prepare(
        args.nodes,
        plan.kind,
        args.vlan.is_some(),
        !rootless && !args.keep_limits,
        &mut |line| eprintln!("hutch: {line}"),
    );
    // Rootless: root of a user namespace of our own, so nodes get a direct id map and the LAN
    // can be built (see userns.rs). Before any thread, like the workers.
    crate::userns::enter()?;
    let k = args.parallel.min(args.nodes);
    let command = !plan.nodes.template.boot;
    let mut workers = Vec::with_capacity(k);
    for w in 0..k {
        let mine: Vec<usize> = (w..args.nodes).step_by(k).collect();
        workers.push(Worker::fork(&plan.nodes, mine, command)?);
    }
    let mut runs = Vec::with_capacity(args.repeat);
    for r in 0..args.repeat {
        // A fresh LAN per run: the hub's thread starts only now, after every fork.
        let hub = plan.topology.as_ref().map(Hub::new).transpose().context("creating the LAN")?;
        let setup = session::Setup {
            names: &plan.nodes.names,
            hub: hub.as_ref(),
            command: command.then(|| (args.args.as_slice(), plan.envs.clone())),
            hold,
            timeout,
        };
        let record = session::run(&setup, &workers, r)?;
        drop(hub);
        let failed = record.nodes.iter().filter(|n| n.failure.is_some()).count();
        eprintln!(
            "hutch: run {}/{}: {} nodes, {} failed, {:.3} s",
            r + 1,
            args.repeat,
            args.nodes,
            failed,
            record.done.saturating_sub(record.t0) as f64 / 1e9
        );
        runs.push(record);
    }
    drop(workers);
    let config = report::Config {
        root: if args.image.is_some() { "image" } else { "toplevel" },
        path: args
            .image
            .as_ref()
            .or(args.toplevel.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        boot: !command,
        command: args.args.clone(),
        nodes: args.nodes,
        parallel: k,
        repeat: args.repeat,
        vlan: args.vlan,
        memory_limit_bytes: plan.memory,
    };
    let host = report::Host {
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        rootless,
    };
    let rep = report::build(config, host, limits, &runs);
    for w in &rep.warnings {
        eprintln!("hutch: {w}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", report::table(&rep));
    }
    Ok(if rep.failures.is_empty() { 0 } else { 1 })
}
