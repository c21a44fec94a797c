//! `hutch run`: one node in the foreground, its exit status as hutch's.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hutch_runtime::{Bind, Container, Exit, IdMap, NodeSpec, Phase, Size};

use crate::run_relay::{Keys, Relay, Session};
use crate::spawner::StartRequest;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io::IsTerminal;

/// Options of `hutch run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Root filesystem directory (read-only lower layer of a per-node overlay), or the name of
    /// a built image in the cache, as in test files (`busybox`, `debian`).
    #[arg(long, conflicts_with = "toplevel", required_unless_present = "toplevel")]
    image: Option<PathBuf>,
    /// NixOS mode: a system toplevel store path; the root is an empty tmpfs with the store.
    #[arg(long)]
    toplevel: Option<PathBuf>,
    /// Host directory holding the store paths (NixOS mode; default /nix/store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Mount only the toplevel's closure, not the whole store (NixOS mode).
    #[arg(long)]
    closure_only: bool,
    /// Exec the init (image's /sbin/init or systemd, or $toplevel/init); trailing args go to it.
    /// On a terminal its console is yours, as a login console (Ctrl-] three times within a
    /// second stops the node); otherwise its lines are printed, made safe.
    #[arg(long, short = 'b')]
    boot: bool,
    /// Run the command on a fresh terminal of the node's own (`tty` in it names a /dev/pts of
    /// the node), relayed to yours in raw mode with its window size. Not implied: without -t
    /// the command gets hutch's standard streams, as with docker and podman.
    #[arg(long, short = 't', conflicts_with = "boot")]
    tty: bool,
    /// Node name (logs, cgroup, default hostname).
    #[arg(long, default_value = "node")]
    name: String,
    /// Hostname inside the node (default: the name).
    #[arg(long)]
    hostname: Option<String>,
    /// Memory limit, e.g. 512M.
    #[arg(long, allow_hyphen_values = true)]
    memory: Option<String>,
    /// Maximum number of tasks in the node.
    #[arg(long, allow_hyphen_values = true)]
    pids_max: Option<i64>,
    /// Size of the node's tmpfs writable layer, e.g. 1G (default: --memory, else 25% of RAM).
    #[arg(long, allow_hyphen_values = true)]
    tmpfs_size: Option<String>,
    /// Bind a host path into the node: SRC:DST[:ro] (repeatable).
    #[arg(long = "bind", value_name = "SRC:DST[:ro]")]
    binds: Vec<String>,
    /// Set an environment variable for PID 1: K=V (repeatable).
    #[arg(long = "setenv", value_name = "K=V")]
    env: Vec<String>,
    /// Seconds to wait for a clean stop before SIGKILL.
    #[arg(long, default_value_t = 10.0, allow_hyphen_values = true)]
    stop_timeout: f64,
    /// Also write the console to this file (boot mode).
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Restart the node when it reboots (boot mode).
    #[arg(long)]
    allow_reboot: bool,
    /// Print how long each start phase took.
    #[arg(long)]
    timings: bool,
    /// Put the node on this VLAN (repeatable): eth1, eth2, ... with NixOS test addressing.
    #[arg(long = "vlan", value_name = "N")]
    vlans: Vec<u32>,
    /// The node's number n in the addresses 192.168.<vlan>.<n> (with --vlan).
    #[arg(long, default_value_t = 1, requires = "vlans")]
    node_number: u32,
    /// The command to run as PID 1, or the init's arguments with --boot.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Exit code for hutch's own errors (bad input, host refusal), as container runtimes do.
pub const EXIT_HUTCH: i32 = 125;

/// Runs `hutch run`; returns the process exit code.
pub fn main(args: RunArgs) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hutch: {e:#}");
            EXIT_HUTCH
        }
    }
}

/// `--image`: a directory, or (like `image` in a test file) the name of a built image in the
/// cache (the user's shifted copy when rootless).
fn image_dir(image: &std::path::Path) -> Result<PathBuf> {
    if image.is_dir() {
        return Ok(image.to_path_buf());
    }
    let name = image.to_str().unwrap_or_default();
    let cache = hutch_driver::plan::PlanContext::from_env().cache_dir;
    if let Some(found) = hutch_driver::plan::image_by_name(&cache, name).map_err(|why| anyhow::anyhow!("--image: {why}"))? {
        return Ok(found);
    }
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        let what = if image.exists() { "is not a directory" } else { "does not exist" };
        anyhow::bail!(
            "--image: {} {what}; give a root filesystem directory or a built image's name",
            image.display()
        );
    }
    anyhow::bail!(
        "--image: {name:?} is neither a directory nor a built image; {}, or give a root filesystem directory",
        hutch_driver::plan::missing_image_fix(&cache, name)
    )
}

fn spec(args: &RunArgs) -> Result<NodeSpec> {
    if args.image.is_some() && (args.store.is_some() || args.closure_only) {
        anyhow::bail!("--store/--closure-only: they only apply to --toplevel (NixOS mode); drop them with --image");
    }
    if args.image.is_none() && args.toplevel.is_none() {
        anyhow::bail!("--image or --toplevel: give one; --image DIR for a root filesystem, --toplevel PATH for NixOS");
    }
    let env = args
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .context(format!("--setenv: {kv:?} is not K=V; write it as NAME=VALUE"))
        })
        .collect::<Result<_>>()?;
    let request = StartRequest {
        name: args.name.clone(),
        hostname: args.hostname.clone().unwrap_or_else(|| args.name.clone()),
        image: args.image.as_deref().map(image_dir).transpose()?,
        toplevel: args.toplevel.clone(),
        store: args.store.clone(),
        closure_only: args.closure_only,
        // A toplevel without a command boots its init, like --boot.
        boot: args.boot || (args.toplevel.is_some() && args.args.is_empty()),
        args: args.args.clone(),
        env,
        files: Vec::new(),
        texts: Vec::new(),
        binds: Vec::new(),
        memory: args.memory.as_deref().map(str::parse::<Size>).transpose()?.map(|s| s.0),
        pids_max: match args.pids_max {
            Some(n) if n <= 0 => anyhow::bail!("--pids-max: {n} is not a positive number of tasks; give e.g. 512"),
            other => other.map(|n| n as u64),
        },
        tmpfs_size: args
            .tmpfs_size
            .as_deref()
            .map(|s| Size::parse(s, "--tmpfs-size"))
            .transpose()?
            .map(|s| s.0),
        disk: None,
    };
    let mut spec = request.node_spec()?;
    if args.tty {
        spec.terminal = Some(hutch_driver::terminal::window_size().unwrap_or((24, 80)));
    }
    spec.binds = args.binds.iter().map(|b| b.parse::<Bind>()).collect::<Result<_, _>>()?;
    if !(args.stop_timeout.is_finite() && args.stop_timeout >= 0.0) {
        anyhow::bail!("--stop-timeout: {} is not a number of seconds; give e.g. 10", args.stop_timeout);
    }
    spec.stop_timeout = Duration::from_secs_f64(args.stop_timeout);
    Ok(spec)
}

fn run(args: RunArgs) -> Result<i32> {
    let mut spec = spec(&args)?;
    let lan = match args.vlans.is_empty() {
        true => None,
        false => {
            let node = hutch_netns::Node::standalone(&spec.name, args.node_number, &args.vlans, hutch_netns::Addressing::default())
                .map_err(|e| anyhow::anyhow!("--vlan/--node-number: {e}"))?;
            spec.files.push(("/etc/hosts".into(), hosts_for(&node).into_bytes()));
            // Rootless, building the LAN needs a user namespace of our own (see userns.rs).
            crate::userns::enter()?;
            Some(node)
        }
    };
    let idmap = IdMap::detect();
    if let Some(w) = idmap.warning() {
        eprintln!("hutch: {w}");
    }
    // Signals arrive through a signalfd, so the event loop sees them in order with the rest.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGWINCH] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC).context("creating a signalfd")?;
    // A terminal session: `-t`, or a booted node's console when the user sits at a terminal.
    let interactive = args.tty || (spec.boot && std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    let mut log = match &args.console_log {
        Some(p) => Some(File::create(p).with_context(|| format!("--console-log: cannot create {}", p.display()))?),
        None => None,
    };
    let mut session: Option<Session> = None;
    loop {
        let pending = Container::prepare(&spec, &idmap)?;
        // Plugged in before the init runs. The hub runs a thread: fine now, the clone is done.
        let _hub = match &lan {
            Some(lan_node) => Some(wire(lan_node, &pending.netns_path())?),
            None => None,
        };
        let mut node = pending.start()?;
        for w in node.warnings() {
            eprintln!("hutch: {w}");
        }
        if args.timings {
            print_timings(&node);
        }
        if interactive && spec.boot && session.is_none() {
            eprintln!(
                "hutch: {}: this terminal is its console; {}",
                spec.name,
                hutch_driver::terminal::Escape::HINT
            );
        }
        if interactive && session.is_none() {
            session = Some(Session::start()?);
        }
        let exit = supervise(&mut node, &sigfd, log.as_mut(), session.as_mut())?;
        if let (Exit::Reboot, true, Some(s)) = (exit, args.allow_reboot, &session) {
            s.say(&format!("{}: rebooting", spec.name));
            continue;
        }
        // The user's terminal as it was, before the last words.
        session = None;
        match exit {
            Exit::Reboot if args.allow_reboot => {
                eprintln!("hutch: {}: rebooting", spec.name);
                continue;
            }
            Exit::Reboot => eprintln!(
                "hutch: {}: the node asked for a reboot (pass --allow-reboot to restart it)",
                spec.name
            ),
            Exit::PowerOff => eprintln!("hutch: {}: powered off", spec.name),
            _ => {}
        }
        hutch_runtime::defer_teardown(std::slice::from_mut(&mut node));
        return Ok(exit.code());
    }
}

/// Builds the LAN's hub and plugs the node in; dropping the hub removes it all.
fn wire(lan_node: &hutch_netns::Node, netns_path: &std::path::Path) -> Result<hutch_netns::Hub> {
    let vlans: Vec<u32> = lan_node.interfaces.iter().map(|i| i.vlan.get() as u32).collect();
    let topology = hutch_netns::Topology::new([hutch_netns::NodeSpec::new(lan_node.name.clone(), vlans)])?;
    let hub = hutch_netns::Hub::new(&topology).context("creating the LAN")?;
    let netns = File::open(netns_path).context("opening the node's network namespace")?;
    hub.attach_node(lan_node, netns.as_fd()).context("plugging the node into its LAN")?;
    Ok(hub)
}

/// /etc/hosts for a node alone on its LANs.
fn hosts_for(node: &hutch_netns::Node) -> String {
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    if let Some(first) = node.interfaces.first() {
        text.push_str(&format!("{} {}\n{} {}\n", first.ipv4, node.name, first.ipv6, node.name));
    }
    text
}

fn print_timings(node: &Container) {
    let t = node.timings();
    let parts: Vec<String> = Phase::ALL
        .iter()
        .map(|p| format!("{} {:.2}", p.name(), t.get(*p).as_secs_f64() * 1e3))
        .collect();
    eprintln!(
        "hutch: {}: start {:.2} ms ({})",
        node.name(),
        t.total().as_secs_f64() * 1e3,
        parts.join(", ")
    );
}

/// The event loop: relays the console (or, in a terminal session, the node's terminal both
/// ways), reports READY=1, turns signals and the session's escape into a clean stop.
fn supervise(node: &mut Container, sigfd: &SignalFd, log: Option<&mut File>, mut session: Option<&mut Session>) -> Result<Exit> {
    let mut relay = Relay::new(log, session.is_some());
    let mut kill_at: Option<Instant> = None;
    let mut out_open = out_fd(node).is_some();
    if let (Some(s), Some(fd)) = (session.as_deref(), out_fd(node)) {
        s.attach(fd);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let stop_timeout = node.stop_timeout();
    let say = |session: &Option<&mut Session>, text: &str| match session {
        Some(s) => s.say(text),
        None => eprintln!("hutch: {text}"),
    };
    loop {
        if let Some(exit) = node.try_wait()? {
            if let Some(fd) = out_fd(node).filter(|_| out_open) {
                relay.drain(fd, &mut buf);
            }
            relay.finish();
            return Ok(exit);
        }
        let timeout = match kill_at {
            Some(t) => PollTimeout::try_from(t.saturating_duration_since(Instant::now()).as_millis().min(60_000) as i32)
                .unwrap_or(PollTimeout::ZERO),
            None => PollTimeout::NONE,
        };
        let stdin = std::io::stdin();
        let (ready, out_ready, out_writable, keys_ready, notify_ready) = {
            let out = out_fd(node).filter(|_| out_open);
            let mut fds = vec![
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(node.pidfd(), PollFlags::POLLIN),
            ];
            let pending = session.as_deref().is_some_and(Session::has_pending);
            let out_flags = if pending {
                PollFlags::POLLIN | PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            let out_i = slot(&mut fds, out, out_flags);
            let notify_i = slot(&mut fds, node.notify_socket(), PollFlags::POLLIN);
            let keys = session.as_deref().filter(|s| s.wants_keys()).map(|_| stdin.as_fd());
            let keys_i = slot(&mut fds, keys, PollFlags::POLLIN);
            match poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => r.context("poll")?,
            };
            let has = |i: Option<usize>, f: PollFlags| {
                i.and_then(|i| fds.get(i))
                    .and_then(|p| p.revents())
                    .is_some_and(|r| r.intersects(f))
            };
            let any = PollFlags::all();
            (
                has(Some(0), any),
                has(out_i, any - PollFlags::POLLOUT),
                has(out_i, PollFlags::POLLOUT),
                has(keys_i, any),
                has(notify_i, any),
            )
        };
        if let Some(fd) = out_fd(node).filter(|_| out_ready) {
            out_open = relay.relay(fd, &mut buf);
        }
        if let (Some(s), Some(fd)) = (session.as_deref_mut(), out_fd(node).filter(|_| out_open)) {
            if out_writable {
                s.flush(fd);
            }
            if keys_ready {
                if let Keys::Escape = s.keys(fd) {
                    s.say(&format!("{}: stopping (escape)", node.name()));
                    stop(node, &mut kill_at, stop_timeout)?;
                }
            }
        }
        if notify_ready {
            if let Some(text) = read_notify(node) {
                say(&session, &text);
            }
        }
        if ready {
            match sigfd.read_signal() {
                Ok(Some(info)) if info.ssi_signo == libc::SIGWINCH as u32 => {
                    if let (Some(s), Some(fd)) = (session.as_deref(), out_fd(node)) {
                        s.resized(fd);
                    }
                }
                Ok(Some(info)) if info.ssi_signo == libc::SIGQUIT as u32 => node.signal(libc::SIGKILL)?,
                Ok(Some(_)) => stop(node, &mut kill_at, stop_timeout)?,
                _ => {}
            }
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            say(
                &session,
                &format!("{}: no clean stop within the stop timeout, killing it", node.name()),
            );
            node.signal(libc::SIGKILL)?;
            kill_at = None;
        }
    }
}

/// What the node prints on: its own pty (-t), else its console.
fn out_fd(node: &Container) -> Option<BorrowedFd<'_>> {
    node.terminal().or_else(|| node.console())
}

/// Adds `fd` (if any) to the poll set; its index there.
fn slot<'a>(fds: &mut Vec<PollFd<'a>>, fd: Option<BorrowedFd<'a>>, flags: PollFlags) -> Option<usize> {
    fd.map(|fd| {
        fds.push(PollFd::new(fd, flags));
        fds.len() - 1
    })
}

/// Asks the node to stop with its stop signal, and kills it if it is asked a second time.
fn stop(node: &Container, kill_at: &mut Option<Instant>, stop_timeout: Duration) -> Result<()> {
    if kill_at.is_some() {
        node.signal(libc::SIGKILL)?;
    } else {
        node.signal(node.stop_signal())?;
        *kill_at = Some(Instant::now() + stop_timeout);
    }
    Ok(())
}

/// Reads one sd_notify datagram; READY=1 is the node's "booted" moment, said as returned.
fn read_notify(node: &Container) -> Option<String> {
    let fd = node.notify_socket()?;
    let mut buf = [0u8; 4096];
    if let Ok(n) = nix::sys::socket::recv(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &mut buf,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    ) {
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.lines().any(|l| l == "READY=1") {
            return Some(format!("{}: ready in {} ms", node.name(), node.started().elapsed().as_millis()));
        }
    }
    None
}
