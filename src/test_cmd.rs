//! `hutch test`: a test file's nodes on their virtual LANs, and its Python test script.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use hutch_driver::machine::NodeControl;
use hutch_driver::plan::{NodePlan, NodeRoot, TestPlan};
use hutch_driver::session::{Session, SessionOptions, EXIT_BAD_TEST};
use hutch_netns::{Hub, Topology};

use crate::node::RuntimeNode;
use crate::spawner::{Spawner, StartRequest};

/// Options of `hutch test`.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// The test file (TOML, or JSON as flake.nix writes it).
    file: PathBuf,
    /// Also write a JUnit XML report here.
    #[arg(long)]
    junit_xml: Option<PathBuf>,
    /// Logs and copied files go here (default: ./hutch-out/<test name>).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Open a Python REPL with the test's globals instead of running the script.
    #[arg(long)]
    interactive: bool,
    /// A failing subtest does not stop the script (the run still fails).
    #[arg(long)]
    keep_going: bool,
    /// Start from the nodes' disks (writable layers) the previous run left in the output
    /// directory, and keep them afterwards (default: fresh disks, removed at the end).
    #[arg(long)]
    keep_disks: bool,
    /// When the test fails, keep its nodes running (get in with `hutch shell NODE`) until
    /// Ctrl-C or `hutch stop TEST`. Not with --interactive, whose nodes run until the REPL
    /// ends (and Ctrl-C belongs to the REPL).
    #[arg(long, conflicts_with = "interactive")]
    keep_nodes_on_failure: bool,
    /// Publish a node's TCP port on the host's 127.0.0.1 for the length of the test
    /// (NODE:HOST_PORT:PORT, e.g. server:8080:80; repeatable).
    #[arg(long, value_name = "NODE:HOST_PORT:PORT")]
    publish: Vec<crate::publish::Publish>,
    /// Print each node's start phase timings.
    #[arg(long)]
    timings: bool,
    /// Log at most this much of each node's console (e.g. 64M, 1G); the rest is dropped, with
    /// a note saying so.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    console_log_max: u64,
}

/// A size flag's value, e.g. `256M`.
fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<hutch_runtime::Size>()
        .map(|s| s.0)
        .map_err(|_| format!("{s:?} is not a positive size; write it like 64M or 1G"))
}

/// Runs `hutch test`; returns the exit code (0 pass, 1 fail, 2 bad test file).
pub fn main(args: TestArgs) -> i32 {
    let plan = match TestPlan::load(&args.file) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_BAD_TEST;
        }
    };
    let names: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
    if let Err(message) = crate::publish::check(&args.publish, &names) {
        eprintln!("hutch: {message}");
        return EXIT_BAD_TEST;
    }
    // A script that does not compile is a bad test file: say so before anything starts.
    if let Err(message) = check_script(&plan) {
        eprintln!("{message}");
        return EXIT_BAD_TEST;
    }
    // Before any thread, child or user namespace: hutch may move itself into a delegated
    // systemd scope and a `supervisor` cgroup (runtime/src/placement.rs).
    if let Some(note) = hutch_runtime::settle() {
        eprintln!("hutch: {note}");
    }
    if let Err(message) = check_nodes(&plan) {
        eprintln!("hutch: {message}");
        return EXIT_BAD_TEST;
    }
    // Where `hutch list/exec` find this run: found as the user, before a rootless run's
    // user namespace (where the uid reads 0).
    let runtime = crate::registry::runtime_dir()
        .map_err(|e| eprintln!("hutch: note: {e:#}; `hutch list`, `exec` and `shell` will not see this run"))
        .ok();
    // Rootless: become root of a user namespace of our own first (see userns.rs).
    if let Err(e) = crate::userns::enter() {
        eprintln!("hutch: {e:#}");
        return crate::run::EXIT_HUTCH;
    }
    // Who gets Ctrl-C: the terminal sends SIGINT to its foreground process group, which holds
    // hutch, the spawner and the Python child (nodes lead sessions of their own). So SIGINT
    // and SIGTERM are blocked here, before any thread or child exists: every thread and the
    // spawner inherit the mask and only the watcher (`watch_signals`) takes them, while
    // Python gets a clean mask at exec.
    // - A test run: the first Ctrl-C or SIGTERM is an orderly abort, the second ends hutch.
    // - `--interactive`: Ctrl-C belongs to the REPL (Python's KeyboardInterrupt interrupts the
    //   running call, whose driver side is then cancelled), so the watcher drops SIGINT;
    //   SIGTERM (or `hutch stop TEST`) still aborts, which ends Python. Python never outlives
    //   hutch: it gets SIGTERM as its parent-death signal and when the bridge socket closes
    //   (bridge::run_script), and hutch restores the terminal's settings after it.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    let _ = signals.thread_block();
    // The spawner must exist before any thread (the network hub and the driver start some).
    let spawner = match Spawner::fork() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("hutch: {e:#}");
            return crate::run::EXIT_HUTCH;
        }
    };
    match run(&args, &plan, spawner, runtime.as_deref()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hutch: {e:#}");
            crate::run::EXIT_HUTCH
        }
    }
}

fn run(args: &TestArgs, plan: &TestPlan, spawner: Arc<Spawner>, runtime: Option<&std::path::Path>) -> Result<i32> {
    let topology = Topology::new(plan.nodes.iter().map(|n| {
        hutch_netns::NodeSpec::new(n.name.clone(), n.vlans.iter().map(|v| *v as u32)).with_interfaces(n.interfaces.iter().map(|i| {
            hutch_netns::InterfaceSpec {
                name: i.name.clone(),
                vlan: u32::from(i.vlan),
                assign_ip: i.assign_ip,
            }
        }))
    }))
    .context("the test's network")?;
    let hub = if plan.vlans.is_empty() {
        None
    } else {
        Some(Arc::new(Hub::new(&topology).context("creating the test network")?))
    };
    let hosts = topology.hosts_file();
    // Claimed before anything is written there: two runs of one test never share it.
    let (output_dir, _output_lock) = claim_output_dir(args.output_dir.as_deref(), &plan.name)?;
    // Every node sees the run's shared directory at /tmp/shared, as upstream's VMs do.
    let shared = hutch_driver::machine::shared_dir(&output_dir);
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    let shared = shared.canonicalize().with_context(|| format!("resolving {}", shared.display()))?;
    // Root's nodes run on shifted ids: their root must own the directory to write there.
    let idmap = hutch_runtime::IdMap::detect();
    if let Some(root) = idmap.host_uid(0).filter(|_| idmap.is_shifted()) {
        nix::unistd::chown(
            &shared,
            Some(nix::unistd::Uid::from_raw(root)),
            Some(nix::unistd::Gid::from_raw(root)),
        )
        .with_context(|| format!("giving {} to the nodes' root (uid {root})", shared.display()))?;
    }
    let mut disks = crate::disks::Disks::new(&output_dir, args.keep_disks)?;
    let mut nodes: Vec<(String, Arc<RuntimeNode>)> = Vec::new();
    for n in &plan.nodes {
        let request = StartRequest {
            texts: vec![("/etc/hosts".into(), hosts.clone())],
            binds: vec![(shared.clone(), hutch_driver::machine::SHARED_DIR_IN_NODE.into())],
            disk: Some(disks.fresh(&n.name)?),
            ..request_of(n)
        };
        let on_lan = if n.vlans.is_empty() && n.interfaces.is_empty() {
            None
        } else {
            hub.clone()
        };
        nodes.push((n.name.clone(), Arc::new(RuntimeNode::new(request, Arc::clone(&spawner), on_lan))));
    }
    crate::publish::start(&crate::publish::all(&args.publish, plan), &nodes)?;
    let mut opts = SessionOptions::new(output_dir.clone());
    opts.junit_xml = args.junit_xml.clone();
    opts.interactive = args.interactive;
    opts.keep_going = args.keep_going;
    opts.keep_nodes_on_failure = args.keep_nodes_on_failure;
    opts.console_log_max = args.console_log_max;
    let controls: Vec<(String, Box<dyn NodeControl>)> = nodes
        .iter()
        .map(|(name, node)| (name.clone(), Box::new(Shared(Arc::clone(node))) as Box<dyn NodeControl>))
        .collect();
    let session = Session::new(plan, controls, opts)?;
    watch_signals(session.abort_handle(), args.interactive);
    let registration = runtime.and_then(|dir| register(dir, plan, &output_dir, &nodes, &topology, &session));
    let report = session.run();
    drop(registration);
    if args.timings {
        for (name, node) in &nodes {
            let phases = node.last_start.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let text: Vec<String> = phases.iter().map(|(p, ms)| format!("{p} {ms:.2}")).collect();
            eprintln!("hutch: {name}: start phases (ms): {}", text.join(", "));
        }
    }
    Ok(interrupted_code(&report).unwrap_or_else(|| report.exit_code()))
}

/// What the runtime is asked to start for a plan's node, before the run adds its hosts file,
/// shared directory and disk.
fn request_of(n: &NodePlan) -> StartRequest {
    let (image, toplevel, store, closure_only) = match &n.root {
        NodeRoot::Image { dir } => (Some(dir.clone()), None, None, false),
        NodeRoot::Toplevel { path, store, closure_only } => (None, Some(path.clone()), store.clone(), *closure_only),
    };
    StartRequest {
        name: n.name.clone(),
        hostname: n.hostname.clone(),
        image,
        toplevel,
        store,
        closure_only,
        boot: n.boot,
        args: Vec::new(),
        env: n.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        files: n.files.iter().map(|f| (f.guest.clone(), f.host.clone())).collect(),
        texts: Vec::new(),
        binds: Vec::new(),
        memory: n.memory,
        pids_max: n.pids_max,
        tmpfs_size: n.tmpfs_size,
        disk: None,
    }
}

/// Nodes this host cannot start (a systemd node and no cgroup for it), found before anything
/// starts: the same error the start would give, as a bad-setup exit.
fn check_nodes(plan: &TestPlan) -> Result<(), String> {
    for n in &plan.nodes {
        let spec = StartRequest {
            files: Vec::new(),
            ..request_of(n)
        }
        .node_spec()
        .map_err(|e| format!("{e:#}"))?;
        hutch_runtime::check_node(&spec).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Registers the run where `hutch list/exec/shell/logs/stop` find it and serves its control
/// socket; a failure is a note (the test itself runs the same without).
fn register(
    runtime: &std::path::Path,
    plan: &TestPlan,
    output_dir: &std::path::Path,
    nodes: &[(String, Arc<RuntimeNode>)],
    topology: &Topology,
    session: &Session,
) -> Option<crate::registry::Registration> {
    let reachable = nodes
        .iter()
        .filter_map(|(name, node)| {
            Some(crate::control::Reachable {
                machine: Arc::clone(session.machine(name)?),
                node: Arc::clone(node),
                addresses: topology
                    .node(name)
                    .map(|n| n.interfaces.iter().map(|i| format!("{}/{}", i.ipv4, i.ipv4_prefix)).collect())
                    .unwrap_or_default(),
            })
        })
        .collect();
    let registered = crate::registry::Registration::new(runtime, &plan.name, output_dir).and_then(|reg| {
        crate::control::serve(&reg.socket(), reachable, session.abort_handle())?;
        Ok(reg)
    });
    registered
        .map_err(|e| eprintln!("hutch: note: {e:#}; `hutch list`, `exec` and `shell` will not see this run"))
        .ok()
}

/// The abort reason `watch_signals` gives, followed by the signal's name.
const INTERRUPTED_BY: &str = "interrupted by ";

/// 128 + the signal when Ctrl-C (SIGINT) or SIGTERM ended the script, as a shell reports it.
fn interrupted_code(report: &hutch_driver::session::Report) -> Option<i32> {
    let hutch_driver::session::Outcome::Failed(f) = &report.outcome else {
        return None;
    };
    let name = f.message.strip_prefix("aborted: ")?.strip_prefix(INTERRUPTED_BY)?;
    use nix::sys::signal::Signal;
    [Signal::SIGINT, Signal::SIGTERM]
        .into_iter()
        .find(|s| s.as_str() == name)
        .map(|s| 128 + s as i32)
}

/// The run's output directory, locked (flock on the directory) for as long as the lock lives,
/// so two runs never write their logs into one directory. The default `./hutch-out/<name>`
/// goes on to `<name>-2`, `<name>-3`, ... while another run holds it; a given directory in
/// use is an error.
fn claim_output_dir(given: Option<&std::path::Path>, test: &str) -> Result<(PathBuf, nix::fcntl::Flock<std::fs::File>)> {
    let try_lock = |dir: &std::path::Path| -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the output directory {}", dir.display()))?;
        let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        Ok(nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).ok())
    };
    if let Some(dir) = given {
        return match try_lock(dir)? {
            Some(lock) => Ok((dir.to_path_buf(), lock)),
            None => anyhow::bail!(
                "--output-dir {}: another running test writes there; give each run its own directory",
                dir.display()
            ),
        };
    }
    let base = PathBuf::from("hutch-out");
    for n in 1..1000 {
        let dir = if n == 1 {
            base.join(test)
        } else {
            base.join(format!("{test}-{n}"))
        };
        if let Some(lock) = try_lock(&dir)? {
            if n > 1 {
                eprintln!(
                    "hutch: {} is in use by another run of this test; this run writes to {}",
                    base.join(test).display(),
                    dir.display()
                );
            }
            return Ok((dir, lock));
        }
    }
    anyhow::bail!("every hutch-out/{test}-N is in use; give --output-dir")
}

/// Compiles the test script with the Python that will run it (about 20 ms): a syntax error
/// is one line naming the file, the key, the script line and the fix.
fn check_script(plan: &TestPlan) -> Result<(), String> {
    let python = SessionOptions::new(PathBuf::new()).python;
    let key = if plan.script.path.is_some() {
        "test.script"
    } else {
        "test.testScript"
    };
    let child = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys; compile(sys.stdin.read(), sys.argv[1], 'exec')",
            &plan.script.filename,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return Err(format!(
            "{}: {key}: cannot run {} to check the script; install python3 or set HUTCH_PYTHON",
            plan.file.display(),
            python.display()
        ));
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = std::io::Write::write_all(&mut stdin, plan.script.source.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let what = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("it does not compile")
        .trim();
    let line = err
        .lines()
        .filter_map(|l| l.split("line ").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok())
        .next_back();
    let at = line.map(|n| format!(" line {n}")).unwrap_or_default();
    Err(format!(
        "{}: {key}: {}{at}: {what}; fix the script",
        plan.file.display(),
        plan.script.filename
    ))
}

/// Turns the first SIGINT/SIGTERM into an abort of the run (nodes stopped, report written);
/// a second one ends hutch at once (the spawner and every node die with it). `interactive`:
/// SIGINT is the REPL's (Ctrl-C at the prompt or in a call) and is dropped here.
fn watch_signals(abort: hutch_driver::session::AbortHandle, interactive: bool) {
    use nix::sys::signal::Signal;
    let _ = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        let next = || loop {
            match set.wait() {
                Ok(Signal::SIGINT) if interactive => {}
                other => return other,
            }
        };
        if let Ok(sig) = next() {
            eprintln!("hutch: {sig}: stopping the test");
            abort.abort(&format!("{INTERRUPTED_BY}{sig}"));
        }
        if next().is_ok() {
            std::process::exit(130);
        }
    });
}

/// Lets the CLI keep a handle on each node (for timings) while the session owns its control.
struct Shared(Arc<RuntimeNode>);

impl NodeControl for Shared {
    fn start(&self) -> Result<std::os::unix::net::UnixStream, hutch_driver::machine::NodeError> {
        self.0.start()
    }
    fn shutdown(&self, timeout: std::time::Duration) -> Result<(), hutch_driver::machine::NodeError> {
        self.0.shutdown(timeout)
    }
    fn crash(&self) -> Result<(), hutch_driver::machine::NodeError> {
        self.0.crash()
    }
    fn wait_for_shutdown(&self, timeout: std::time::Duration) -> Result<(), hutch_driver::machine::NodeError> {
        self.0.wait_for_shutdown(timeout)
    }
    fn is_up(&self) -> bool {
        self.0.is_up()
    }
    fn block(&self) -> Result<(), hutch_driver::machine::NodeError> {
        self.0.block()
    }
    fn unblock(&self) -> Result<(), hutch_driver::machine::NodeError> {
        self.0.unblock()
    }
    fn console(&self) -> Arc<hutch_driver::machine::ConsoleLog> {
        self.0.console()
    }
    fn died(&self) -> Option<String> {
        self.0.died()
    }
    fn agent_ended(&self) -> Option<String> {
        self.0.agent_ended()
    }
    fn send_console(&self, data: &[u8]) -> Result<(), hutch_driver::machine::NodeError> {
        self.0.send_console(data)
    }
    fn pid(&self) -> Option<u32> {
        self.0.pid()
    }
    fn forward_port(&self, host_port: u16, guest_port: u16) -> Result<(), hutch_driver::machine::NodeError> {
        let p = crate::publish::Publish {
            node: self.0.name().to_string(),
            host_port,
            port: guest_port,
        };
        crate::publish::forward(&p, Arc::clone(&self.0)).map_err(|e| hutch_driver::machine::NodeError::Failed(format!("{e:#}")))
    }
}
