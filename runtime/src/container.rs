//! A running node: spawn it from a [`NodeSpec`], watch it, stop it, and leave nothing behind.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::builder::{Builder, Failure};
use crate::cgroup::{NodeCgroup, Request};
use crate::child::{self, ChildPlan};
use crate::clone::Clone;
use crate::console::Console;
use crate::idmap::{IdMap, IdMapKind};
use crate::init::InitKind;
use crate::pid1::Pid1Plan;
use crate::plan::{self, ConsolePath, Context};
use crate::spec::{NodeSpec, RootFs};
use crate::sync::{self, ToChild, ToParent};
use crate::timings::{now_ns, Phase, Timings};
use crate::Error;

/// How a node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// PID 1 exited with this status (also `systemctl exit N`).
    Exited(i32),
    /// PID 1 was killed by this signal.
    Signaled(i32),
    /// A booted init powered off or halted (reboot(2) in the pid namespace: SIGINT).
    PowerOff,
    /// A booted init asked for a reboot (reboot(2) in the pid namespace: SIGHUP).
    Reboot,
}

impl Exit {
    /// The exit code hutch reports for it, like a shell does for a command.
    pub fn code(self) -> i32 {
        match self {
            Exit::Exited(n) => n,
            Exit::Signaled(s) => 128 + s,
            Exit::PowerOff | Exit::Reboot => 0,
        }
    }
}

/// Why the runtime stopped a node, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The node exited on its own.
    Exited,
    /// It stopped cleanly after the stop signal.
    Clean,
    /// It ignored the stop signal past the timeout and was killed.
    Killed,
}

/// One running node. Dropping it kills the node and removes its cgroups; its mounts and
/// namespaces go with its last process.
pub struct Container {
    name: String,
    pid: Pid,
    pidfd: OwnedFd,
    /// The builder process, until it has handed the mounts over and been reaped.
    builder: Option<Builder>,
    /// The node's agent: our child, outside the node's pid namespace (see agent.rs).
    agent: Option<Agent>,
    /// PID 1's mount namespace, held so its teardown can be left to a janitor (see janitor.rs).
    mount_ns: Option<OwnedFd>,
    boot: bool,
    init: InitKind,
    console: Option<Console>,
    /// The master of PID 1's own pty (`NodeSpec::terminal`).
    terminal: Option<OwnedFd>,
    notify: Option<OwnedFd>,
    cgroup: Option<NodeCgroup>,
    /// A writable layer made for this node alone on disk (kernels before 6.6): removed last.
    scratch: Option<crate::upper::Scratch>,
    timings: Timings,
    started: Instant,
    stop_timeout: Duration,
    exit: Option<Exit>,
    warnings: Vec<String>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const IMAGE_INITS: &[&str] = &["/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd"];

impl Container {
    /// Starts a node and returns once its PID 1 has exec'd (or the start failed, leaving
    /// nothing behind). Call from a single-threaded process: the child of the clone runs Rust
    /// code until its exec, which is only safe when no other thread can hold a lock.
    pub fn spawn(spec: &NodeSpec, idmap: &IdMap) -> Result<Container, Error> {
        Container::prepare(spec, idmap)?.start()
    }

    /// The first half of [`Container::spawn`]: the node exists in its namespaces with its ids
    /// mapped and waits before building its filesystem. What must be in place before its
    /// init runs (its network) is added now; [`Pending::start`] lets it go on. Threads may be
    /// started meanwhile: the clone is done.
    pub fn prepare(spec: &NodeSpec, idmap: &IdMap) -> Result<Pending, Error> {
        let t0 = now_ns();
        let started = Instant::now();
        spec.validate()?;
        let closure = match &spec.root {
            RootFs::Nix {
                toplevel,
                store,
                closure_only: true,
            } => Some(crate::closure::closure(toplevel, store)?),
            _ => None,
        };
        // Shifted ids see a root-owned image through an idmapped view, made after the clone.
        let image_view = match (&spec.root, idmap.is_shifted()) {
            (RootFs::Image(dir), true) => Some(dir.canonicalize().map_err(Error::io("resolving image", dir))?),
            _ => None,
        };
        let console = if spec.boot { Some(Console::open(idmap)?) } else { None };
        let leaf = format!("{}-{}", spec.name, std::process::id());
        let init = InitKind::of(spec);
        let req = Request {
            leaf: &leaf,
            memory: spec.memory,
            pids_max: spec.pids_max,
            root: matches!(idmap.kind, IdMapKind::Shifted { .. } | IdMapKind::Identity),
            boot: spec.boot,
            agent: spec.agent.is_some() && init == InitKind::Systemd,
        };
        crate::placement::check_init(&spec.name, init)?;
        let (upper, scratch) = crate::upper::prepare(spec, idmap)?;
        let (cgroup, warnings) = NodeCgroup::create(&req, idmap)?;
        let cx = Context {
            spec,
            image_view: image_view.is_some(),
            closure,
            console: console.as_ref().map(|c| ConsolePath(c.slave.clone())),
            cgroup2: cgroup.as_ref().is_some_and(|c| c.unified.is_some()),
            tty_gid: idmap.count() > 5,
            host_os_release: host_os_release(),
            upper: &upper,
            systemd: init == InitKind::Systemd,
        };
        let mut cplan = ChildPlan {
            plan: plan::compile(&cx)?,
            set_groups: idmap.kind != IdMapKind::Single,
            pid1: Pid1Plan {
                hostname: spec.hostname.clone(),
                seccomp: crate::confine::seccomp_program()?,
                program: program_candidates(spec),
                argv: argv(spec),
                env: environment(spec),
                console_stdio: spec.boot,
                terminal: spec.terminal,
            },
            agent: spec.agent,
            agent_cgroup: None,
            ucount_caps: crate::ucounts::node_caps(),
        };
        let (parent_sock, child_sock) = sync::pair().map_err(Error::sys("creating the node's socketpair"))?;
        let cgroup_dir = match cgroup.as_ref().and_then(|c| c.unified.as_ref()) {
            Some(dir) => Some(File::open(dir).map_err(Error::io("opening cgroup", dir))?),
            None => None,
        };
        let agent_cgroup = match cgroup.as_ref().and_then(|c| c.agent.as_ref()) {
            Some(dir) => Some(File::open(dir).map_err(Error::io("opening cgroup", dir))?),
            None => None,
        };
        cplan.agent_cgroup = agent_cgroup.as_ref().map(|f| f.as_raw_fd());
        let builder = Clone {
            flags: libc::CLONE_NEWUSER | libc::CLONE_NEWNS,
            cgroup: cgroup_dir.as_ref().map(|f| f.as_fd()),
        };
        let Some((builder_pid, builder_fd)) = builder.run().map_err(clone_error)? else {
            drop(parent_sock);
            child::run(&cplan, child_sock);
        };
        drop(child_sock);
        let mut builder = Builder::new(builder_pid, builder_fd);
        let t1 = now_ns();
        let handed = match builder.hand_over(&parent_sock, idmap, image_view.as_deref(), cgroup.as_ref(), spec.agent.is_some()) {
            Ok(handed) => handed,
            Err(e) => {
                builder.reap();
                return Err(e.into_error(&spec.name, spec.boot, &cplan));
            }
        };
        let mut node = Container {
            name: spec.name.clone(),
            pid: handed.pid,
            pidfd: handed.pidfd,
            builder: Some(builder),
            agent: handed.agent.map(|(pid, pidfd)| Agent { pid, pidfd }),
            mount_ns: None,
            boot: spec.boot,
            init,
            console,
            terminal: None,
            notify: handed.notify,
            cgroup,
            scratch,
            timings: Timings::default(),
            started,
            stop_timeout: spec.stop_timeout,
            exit: None,
            warnings,
        };
        node.timings.phases[Phase::Clone as usize] = Duration::from_nanos(t1.saturating_sub(t0));
        node.timings.phases[Phase::IdMap as usize] = Duration::from_nanos(handed.released.saturating_sub(t1));
        Ok(Pending {
            node,
            sock: parent_sock,
            cplan,
            t0,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// PID 1 of the node, as the host sees it.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// A pidfd for PID 1: readable once it exits, for event loops.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The console's pty master (boot mode): what the node prints on /dev/console.
    pub fn console(&self) -> Option<BorrowedFd<'_>> {
        self.console.as_ref().map(Console::fd)
    }

    /// The master of the pty PID 1 runs on (`NodeSpec::terminal`): what the command prints,
    /// where its keystrokes go, and its window size.
    pub fn terminal(&self) -> Option<BorrowedFd<'_>> {
        self.terminal.as_ref().map(|f| f.as_fd())
    }

    /// The bound /run/host/notify socket (boot mode): systemd sends READY=1 there.
    pub fn notify_socket(&self) -> Option<BorrowedFd<'_>> {
        self.notify.as_ref().map(|f| f.as_fd())
    }

    /// The node's network namespace, for wiring it to a LAN.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// How long each start phase took.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// When the spawn call began.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// How long a stop waits for a clean exit before SIGKILL.
    pub fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }

    /// Warnings about limits that could not be applied.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The node's peak memory use in bytes (cgroup), when the host reports it.
    pub fn memory_peak(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(NodeCgroup::memory_peak)
    }

    /// The signal that asks this node to stop cleanly: SIGRTMIN+3 for systemd, SIGUSR2 for
    /// busybox init, SIGTERM for anything else.
    pub fn stop_signal(&self) -> i32 {
        self.init.stop_signal()
    }

    /// Which init the node booted.
    pub fn init(&self) -> InitKind {
        self.init
    }

    /// Sends a signal to PID 1 through its pidfd (no pid reuse race).
    pub fn signal(&self, sig: i32) -> Result<(), Error> {
        match crate::clone::pidfd_signal(self.pidfd.as_raw_fd(), sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::Sys {
                what: format!("signalling node {}", self.name),
                source: e,
            }),
        }
    }

    /// Takes the held mount namespace of PID 1 (for [`crate::defer_teardown`]).
    pub(crate) fn take_mount_ns(&mut self) -> Option<OwnedFd> {
        self.mount_ns.take()
    }

    /// Reaps the builder once it has exited (it is killed and reaped on drop otherwise).
    fn reap_builder(&mut self) {
        if self.builder.as_mut().is_some_and(Builder::try_reap) {
            self.builder = None;
        }
    }

    /// Why the node's agent ended, if it has within `wait`: for a driver that lost its
    /// connection (the socket closes a moment before the exit status exists).
    pub fn agent_ended(&self, wait: Duration) -> Option<String> {
        self.agent.as_ref().and_then(|a| a.ended(wait))
    }

    /// Reaps PID 1 if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<Exit>, Error> {
        self.reap_builder();
        if self.exit.is_some() {
            return Ok(self.exit);
        }
        let status = waitpid(self.pid, Some(WaitPidFlag::WNOHANG)).map_err(Error::sys(format!("waiting for node {}", self.name)))?;
        self.exit = self.decode(status);
        Ok(self.exit)
    }

    /// Waits for PID 1 to exit.
    pub fn wait(&mut self) -> Result<Exit, Error> {
        loop {
            if let Some(exit) = self.exit {
                return Ok(exit);
            }
            match waitpid(self.pid, None) {
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => self.exit = Some(Exit::Signaled(libc::SIGKILL)),
                other => self.exit = self.decode(other.map_err(Error::sys(format!("waiting for node {}", self.name)))?),
            }
        }
    }

    /// Waits up to `timeout` for PID 1 to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Exit>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(Some(exit));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    return Err(Error::Sys {
                        what: "polling the node".into(),
                        source: e,
                    })
                }
            }
        }
    }

    /// Stops the node: the stop signal, then SIGKILL after the stop timeout. Returns how it
    /// ended and whether it had to be killed.
    pub fn stop(&mut self) -> Result<(Exit, StopReason), Error> {
        if let Some(exit) = self.try_wait()? {
            return Ok((exit, StopReason::Exited));
        }
        self.signal(self.stop_signal())?;
        if let Some(exit) = self.wait_timeout(self.stop_timeout)? {
            return Ok((exit, StopReason::Clean));
        }
        self.signal(libc::SIGKILL)?;
        Ok((self.wait()?, StopReason::Killed))
    }

    fn decode(&self, status: WaitStatus) -> Option<Exit> {
        match status {
            WaitStatus::Exited(_, code) => Some(Exit::Exited(code)),
            WaitStatus::Signaled(_, Signal::SIGINT, _) if self.boot => Some(Exit::PowerOff),
            WaitStatus::Signaled(_, Signal::SIGHUP, _) if self.boot => Some(Exit::Reboot),
            WaitStatus::Signaled(_, sig, _) => Some(Exit::Signaled(sig as i32)),
            _ => None,
        }
    }
}

/// A node's agent process as its parent, the runtime, sees it.
struct Agent {
    pid: Pid,
    pidfd: OwnedFd,
}

impl Agent {
    /// How the agent ended, if it has within `wait` (the status stays to be reaped).
    fn ended(&self, wait: Duration) -> Option<String> {
        let ms = PollTimeout::try_from(wait.as_millis().min(10_000) as i32).unwrap_or(PollTimeout::ZERO);
        let _ = poll(&mut [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)], ms);
        // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our child's pidfd, writing into `info`, which outlives the call.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled `info` (a zero si_pid means the agent still runs).
        let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
        if rc != 0 || pid == 0 {
            return None;
        }
        Some(match code {
            libc::CLD_EXITED => format!("the agent exited with status {status}"),
            _ => format!(
                "the agent was killed by {}",
                Signal::try_from(status)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {status}"))
            ),
        })
    }

    /// Kills and reaps the agent (it ends by itself once PID 1 has; this makes sure).
    fn end(self) {
        let _ = crate::clone::pidfd_signal(self.pidfd.as_raw_fd(), libc::SIGKILL);
        while let Err(Errno::EINTR) = waitpid(self.pid, None) {}
    }
}

/// A node cloned into its namespaces, ids mapped, waiting to build its root and exec its init
/// (see [`Container::prepare`]). Dropping it kills the node.
pub struct Pending {
    node: Container,
    sock: OwnedFd,
    cplan: ChildPlan,
    t0: u64,
}

impl Pending {
    /// PID 1 of the waiting node.
    pub fn pid(&self) -> Pid {
        self.node.pid
    }

    /// The node's network namespace, to wire it before its init runs.
    pub fn netns_path(&self) -> PathBuf {
        self.node.netns_path()
    }

    /// Lets the node go on: it builds its filesystem, confines itself and execs its init.
    pub fn start(self) -> Result<Container, Error> {
        let Pending {
            mut node,
            sock: parent_sock,
            cplan,
            t0,
        } = self;
        match sync::send_child(parent_sock.as_fd(), ToChild::Go(None)) {
            // The node's processes are gone (a step failed): why is queued for us, read below.
            Ok(()) | Err(Errno::EPIPE | Errno::ECONNRESET) => {}
            Err(e) => return Err(Error::sys("starting the node")(e)),
        }
        let mut stamps = None;
        let result = loop {
            match sync::recv_parent(parent_sock.as_fd()) {
                Ok(Some(ToParent::Stamps(s))) => {
                    // PID 1 has its own mount namespace now and is about to exec.
                    node.mount_ns = File::open(format!("/proc/{}/ns/mnt", node.pid)).ok().map(OwnedFd::from);
                    stamps = Some(s)
                }
                Ok(Some(ToParent::NotifySocket(fd))) => node.notify = Some(fd),
                Ok(Some(ToParent::Terminal(fd))) => node.terminal = Some(fd),
                Ok(Some(ToParent::Failed { step, errno })) => {
                    let _ = node.wait();
                    break Err(Failure::Step { step, errno }.into_error(&node.name, node.boot, &cplan));
                }
                Ok(Some(ToParent::Pid1(..) | ToParent::Agent(..) | ToParent::NetReady)) => {}
                Ok(None) => break Ok(()),
                Err(e) => {
                    break Err(Error::Sys {
                        what: "reading the node's start".into(),
                        source: e,
                    })
                }
            }
        };
        node.reap_builder();
        result?;
        let Some(s) = stamps else {
            return Err(Error::Setup {
                node: node.name.clone(),
                step: "start (the node died before exec)".into(),
                errno: Errno::ECHILD,
            });
        };
        let t_exec = now_ns();
        let span = |from: u64, to: u64| Duration::from_nanos(to.saturating_sub(from));
        node.timings.phases[Phase::Mounts as usize] = span(s[0], s[1]);
        node.timings.phases[Phase::Network as usize] = span(s[2], s[3]);
        node.timings.phases[Phase::Confine as usize] = span(s[4], s[5]);
        node.timings.phases[Phase::Exec as usize] = span(s[6], t_exec);
        node.timings.wall = span(t0, t_exec);
        Ok(node)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.signal(libc::SIGKILL);
            let _ = self.wait();
        }
        // Before the cgroups go: the agent lives in the node's.
        if let Some(agent) = self.agent.take() {
            agent.end();
        }
        if let Some(mut cg) = self.cgroup.take() {
            cg.remove();
        }
        drop(self.scratch.take());
    }
}

/// The host's os-release (for /run/host/os-release), read once per process.
fn host_os_release() -> &'static [u8] {
    static TEXT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        std::fs::read("/etc/os-release")
            .or_else(|_| std::fs::read("/usr/lib/os-release"))
            .unwrap_or_default()
    })
}

/// The clone of the builder failed: most often user namespaces are off.
fn clone_error(e: Errno) -> Error {
    match e {
        Errno::EPERM | Errno::ENOSPC | Errno::EACCES | Errno::EINVAL => Error::Host {
            problem: format!("cannot create user namespaces ({e})"),
            fix: "enable them: sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000 \
                  (and on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0)"
                .into(),
        },
        e => Error::Sys {
            what: "cloning the node".into(),
            source: e,
        },
    }
}

fn cstr(s: impl AsRef<str>) -> CString {
    CString::new(s.as_ref().replace('\0', "")).unwrap_or_default()
}

fn search_path(spec: &NodeSpec) -> String {
    match &spec.root {
        RootFs::Nix { toplevel, .. } => format!("{}/sw/bin:/run/current-system/sw/bin:{DEFAULT_PATH}", toplevel.display()),
        RootFs::Image(_) => DEFAULT_PATH.into(),
    }
}

/// The paths to try to exec, in order: the init in boot mode, else the command looked up on PATH.
fn program_candidates(spec: &NodeSpec) -> Vec<CString> {
    if spec.runs_no_init() {
        return Vec::new();
    }
    match (&spec.root, spec.boot || spec.args.is_empty()) {
        (RootFs::Nix { toplevel, .. }, true) => vec![cstr(toplevel.join("init").to_string_lossy())],
        (RootFs::Image(_), true) => IMAGE_INITS.iter().map(cstr).collect(),
        (_, false) => {
            let cmd = &spec.args[0];
            if cmd.contains('/') {
                vec![cstr(cmd)]
            } else {
                search_path(spec)
                    .split(':')
                    .map(|dir| cstr(Path::new(dir).join(cmd).to_string_lossy()))
                    .collect()
            }
        }
    }
}

fn argv(spec: &NodeSpec) -> Vec<CString> {
    if spec.boot || spec.args.is_empty() {
        let init = match &spec.root {
            RootFs::Nix { toplevel, .. } => toplevel.join("init").to_string_lossy().to_string(),
            RootFs::Image(_) => IMAGE_INITS[0].to_string(),
        };
        std::iter::once(init).chain(spec.args.iter().cloned()).map(cstr).collect()
    } else {
        spec.args.iter().map(cstr).collect()
    }
}

/// PID 1's environment, as systemd's Container Interface asks.
fn environment(spec: &NodeSpec) -> Vec<CString> {
    let mut env = vec![
        format!("PATH={}", search_path(spec)),
        "container=hutch".to_string(),
        format!("container_uuid={}", uuid_for(&spec.name)),
        "HOME=/root".into(),
        format!(
            "TERM={}",
            if spec.boot {
                "vt220".to_string()
            } else {
                std::env::var("TERM").unwrap_or_else(|_| "dumb".into())
            }
        ),
    ];
    if spec.boot {
        env.push("NOTIFY_SOCKET=/run/host/notify".into());
    }
    for (k, v) in &spec.env {
        env.retain(|e| !e.starts_with(&format!("{k}=")));
        env.push(format!("{k}={v}"));
    }
    env.into_iter().map(cstr).collect()
}

/// FNV-1a's offset basis: the usual seed of [`fnv1a`].
pub(crate) const FNV_OFFSET: u64 = 0xcbf29ce484222325;

/// FNV-1a of `bytes` from `seed`: a stable, dependency-free name hash.
pub(crate) fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

/// A UUID that stays the same for a node name across runs (systemd derives machine-id from it).
pub(crate) fn uuid_for(name: &str) -> String {
    let (a, b) = (fnv1a(name.as_bytes(), FNV_OFFSET), fnv1a(name.as_bytes(), 0x84222325cbf29ce4));
    let bytes: Vec<u8> = a.to_be_bytes().into_iter().chain(b.to_be_bytes()).collect();
    let hex: String = bytes
        .iter()
        .enumerate()
        .map(|(i, x)| match i {
            6 => format!("{:02x}", (x & 0x0f) | 0x40),
            8 => format!("{:02x}", (x & 0x3f) | 0x80),
            _ => format!("{x:02x}"),
        })
        .collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_stable_and_well_formed() {
        let u = uuid_for("server");
        assert_eq!(u, uuid_for("server"));
        assert_ne!(u, uuid_for("client"));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
