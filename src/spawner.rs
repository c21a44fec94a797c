//! The spawner: a single-threaded process, forked before the driver starts any thread, that
//! owns every node of a test run. Cloning a node from a multi-threaded process is unsafe (the
//! child runs code that may need a lock another thread held), so the driver asks the spawner.
//!
//! Requests and replies are typed JSON messages, one per SOCK_SEQPACKET packet; a started
//! node's descriptors (agent socket, pidfd, network namespace, console, notify socket) travel
//! with its reply as SCM_RIGHTS. When the driver goes away the spawner drops every node and
//! exits, so nothing outlives the run.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use hutch_runtime::{AgentHook, Bind, Container, IdMap, InitKind, NodeSpec, Pending, RootFs};
use nix::sys::socket::{recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};

/// What a node is made of, as the driver sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRequest {
    pub name: String,
    pub hostname: String,
    pub image: Option<PathBuf>,
    pub toplevel: Option<PathBuf>,
    pub store: Option<PathBuf>,
    pub closure_only: bool,
    pub boot: bool,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// (path inside the node, host file to copy).
    pub files: Vec<(PathBuf, PathBuf)>,
    /// (path inside the node, contents), e.g. /etc/hosts.
    pub texts: Vec<(PathBuf, String)>,
    /// (host directory, path inside the node), bound read-write (the test's shared directory).
    #[serde(default)]
    pub binds: Vec<(PathBuf, PathBuf)>,
    pub memory: Option<u64>,
    pub pids_max: Option<u64>,
    /// Size of the node's tmpfs writable layer (`--tmpfs-size`, test-file `tmpfs_size`).
    #[serde(default)]
    pub tmpfs_size: Option<u64>,
    /// A host directory that keeps the node's writable layer across its starts.
    #[serde(default)]
    pub disk: Option<PathBuf>,
}

impl StartRequest {
    /// The runtime's description of this node. The one place a [`NodeSpec`] is built from
    /// these fields: `hutch run` and the driver's nodes both go through it. Reads the host
    /// files named in `files`.
    pub fn node_spec(&self) -> Result<NodeSpec> {
        let root = match (&self.image, &self.toplevel) {
            (Some(dir), _) => RootFs::Image(dir.clone()),
            (None, Some(top)) => RootFs::Nix {
                toplevel: top.clone(),
                store: self.store.clone().unwrap_or_else(|| "/nix/store".into()),
                closure_only: self.closure_only,
            },
            (None, None) => bail!("node {}: neither image nor toplevel; give one", self.name),
        };
        let mut spec = NodeSpec::new(&self.name, root);
        spec.hostname = self.hostname.clone();
        spec.boot = self.boot;
        spec.args = self.args.clone();
        spec.env = self.env.clone();
        spec.memory = self.memory;
        spec.pids_max = self.pids_max;
        spec.tmpfs_size = self.tmpfs_size;
        spec.disk = self.disk.clone();
        for (guest, host) in &self.files {
            let data = std::fs::read(host).with_context(|| format!("node {}: reading {}", self.name, host.display()))?;
            spec.files.push((guest.clone(), data));
        }
        for (guest, text) in &self.texts {
            spec.files.push((guest.clone(), text.clone().into_bytes()));
        }
        for (source, target) in &self.binds {
            spec.binds.push(Bind {
                source: source.clone(),
                target: target.clone(),
                read_only: false,
            });
        }
        Ok(spec)
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Clone the node and map its ids; it waits (reply: Prepared, with its netns).
    Start(Box<StartRequest>),
    /// Let a prepared node go on to exec its init (reply: Started, with its descriptors).
    Go { name: String },
    /// Drop a prepared node (wiring it failed).
    Abort { name: String },
    /// Ask the node to stop cleanly (its init's stop signal).
    Stop { name: String },
    /// SIGKILL it and reap it.
    Kill { name: String },
    /// Reap it if it has exited.
    Reap { name: String },
    /// How its agent ended (reply: Exited, or Running while it runs).
    AgentEnded { name: String },
}

/// How a start went, with the node's descriptors alongside.
#[derive(Debug, Serialize, Deserialize)]
pub struct Started {
    pub init: String,
    pub has_console: bool,
    pub has_notify: bool,
    pub phases_ms: Vec<(String, f64)>,
    pub warnings: Vec<String>,
    /// Files whose `oom_kill` counters tell that the OOM killer hit the node (see
    /// `hutch_runtime::oom_counters`); empty without a memory limit.
    #[serde(default)]
    pub oom_counters: Vec<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Prepared,
    Started(Started),
    /// The node has exited (or was never there): how it ended.
    Exited {
        how: String,
    },
    Running,
    Done,
    Error {
        message: String,
    },
}

/// The driver's handle on the spawner process.
pub struct Spawner {
    sock: Mutex<OwnedFd>,
    pid: nix::unistd::Pid,
}

/// A started node's descriptors.
pub struct NodeFds {
    pub agent: UnixStream,
    pub pidfd: OwnedFd,
    pub console: Option<OwnedFd>,
    pub notify: Option<OwnedFd>,
}

impl Spawner {
    /// Forks the spawner. Call before the process starts any thread.
    pub fn fork() -> Result<Spawner> {
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).context("spawner socketpair")?;
        // SAFETY: the caller guarantees no other thread exists yet; the child runs `serve` and
        // exits without returning.
        match unsafe { nix::unistd::fork() }.context("forking the spawner")? {
            nix::unistd::ForkResult::Child => {
                drop(ours);
                // The spawner dies with the driver (and takes every node with it).
                // SAFETY: prctl with a signal number.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                let code = match serve(theirs) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("hutch spawner: {e:#}");
                        1
                    }
                };
                std::process::exit(code);
            }
            nix::unistd::ForkResult::Parent { child } => Ok(Spawner {
                sock: Mutex::new(ours),
                pid: child,
            }),
        }
    }

    fn call(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        exchange(sock.as_fd(), req)
    }

    /// Starts a node: once it exists, `wire` gets its network namespace (to plug it into its
    /// LANs before the init runs); returns once its init exec'd, with its descriptors.
    pub fn start(&self, req: StartRequest, wire: impl FnOnce(BorrowedFd) -> Result<()>) -> Result<(Started, NodeFds)> {
        let name = req.name.clone();
        // One node's two steps go together: hold the socket across both.
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let ask = |req: &Request| exchange(sock.as_fd(), req);
        match ask(&Request::Start(Box::new(req)))? {
            (Reply::Prepared, fds) => {
                let netns = fds.into_iter().next().context("missing the node's network namespace")?;
                if let Err(e) = wire(netns.as_fd()) {
                    let _ = ask(&Request::Abort { name });
                    return Err(e);
                }
            }
            (Reply::Error { message }, _) => bail!("{message}"),
            (other, _) => bail!("unexpected spawner reply {other:?}"),
        }
        match ask(&Request::Go { name })? {
            (Reply::Started(s), fds) => {
                let mut it = fds.into_iter();
                let mut next = || it.next().context("missing descriptor from the spawner");
                let agent = UnixStream::from(next()?);
                let pidfd = next()?;
                let console = if s.has_console { Some(next()?) } else { None };
                let notify = if s.has_notify { Some(next()?) } else { None };
                Ok((
                    s,
                    NodeFds {
                        agent,
                        pidfd,
                        console,
                        notify,
                    },
                ))
            }
            (Reply::Error { message }, _) => bail!("{message}"),
            (other, _) => bail!("unexpected spawner reply {other:?}"),
        }
    }

    fn exit_call(&self, req: Request) -> Result<Option<String>> {
        match self.call(&req)? {
            (Reply::Exited { how }, _) => Ok(Some(how)),
            (Reply::Running | Reply::Done, _) => Ok(None),
            (Reply::Error { message }, _) => bail!("{message}"),
            (other, _) => bail!("unexpected spawner reply {other:?}"),
        }
    }

    /// Sends the node's clean-stop signal.
    pub fn stop(&self, name: &str) -> Result<()> {
        self.exit_call(Request::Stop { name: name.into() }).map(drop)
    }

    /// Kills and reaps the node; how it ended.
    pub fn kill(&self, name: &str) -> Result<Option<String>> {
        self.exit_call(Request::Kill { name: name.into() })
    }

    /// Reaps the node if it exited; how it ended.
    pub fn reap(&self, name: &str) -> Result<Option<String>> {
        self.exit_call(Request::Reap { name: name.into() })
    }

    /// How the node's agent ended, if it has: for a driver whose connection broke.
    pub fn agent_ended(&self, name: &str) -> Result<Option<String>> {
        self.exit_call(Request::AgentEnded { name: name.into() })
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Closing our end makes the spawner drop every node and exit.
        let sock = self.sock.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// One request and its reply (with any descriptors), on a socket the caller holds.
fn exchange(sock: BorrowedFd, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
    send(sock, &serde_json::to_vec(req)?, &[])?;
    let (bytes, fds) = recv(sock)?.context("the spawner went away")?;
    Ok((serde_json::from_slice(&bytes)?, fds))
}

fn send(fd: BorrowedFd, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(fd.as_raw_fd(), &[IoSlice::new(bytes)], &cmsgs, MsgFlags::empty(), None).context("sending to the spawner")?;
    Ok(())
}

fn recv(fd: BorrowedFd) -> Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; 1 << 20];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = loop {
        match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.context("reading from the spawner")?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel installed these descriptors for us with this message.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

/// The spawner's loop: one request at a time until the driver hangs up.
fn serve(sock: OwnedFd) -> Result<()> {
    let idmap = IdMap::detect();
    let mut nodes: HashMap<String, Container> = HashMap::new();
    let mut pending: HashMap<String, (Pending, UnixStream, bool)> = HashMap::new();
    // How the agents of removed nodes ended, for a driver that asks after the node is gone.
    let mut agents_ended: HashMap<String, String> = HashMap::new();
    while let Some((bytes, _)) = recv(sock.as_fd())? {
        let req: Request = serde_json::from_slice(&bytes)?;
        let (reply, fds): (Reply, Vec<OwnedFd>) = match req {
            Request::Start(start) => match prepare_node(&start, &idmap) {
                Ok((node, agent)) => match std::fs::File::open(node.netns_path()) {
                    Ok(netns) => {
                        pending.insert(start.name.clone(), (node, agent, start.memory.is_some()));
                        (Reply::Prepared, vec![netns.into()])
                    }
                    // PID 1 is gone already: a step of the build failed, and says which.
                    Err(e) => (
                        Reply::Error {
                            message: match node.start() {
                                Err(failed) => failed.to_string(),
                                Ok(_) => format!("opening the node's network namespace: {e}"),
                            },
                        },
                        vec![],
                    ),
                },
                Err(e) => (Reply::Error { message: format!("{e:#}") }, vec![]),
            },
            Request::Go { name } => match pending.remove(&name).map(|(node, agent, limited)| start_node(node, agent, limited)) {
                Some(Ok((node, started, fds))) => {
                    nodes.insert(name, node);
                    (Reply::Started(started), fds)
                }
                Some(Err(e)) => (Reply::Error { message: format!("{e:#}") }, vec![]),
                None => (
                    Reply::Error {
                        message: format!("no prepared node {name}"),
                    },
                    vec![],
                ),
            },
            Request::Abort { name } => {
                pending.remove(&name);
                (Reply::Done, vec![])
            }
            Request::Stop { name } => match nodes.get(&name) {
                Some(node) => match node.signal(node.stop_signal()) {
                    Ok(()) => (Reply::Done, vec![]),
                    Err(e) => (Reply::Error { message: e.to_string() }, vec![]),
                },
                None => (Reply::Exited { how: "not running".into() }, vec![]),
            },
            Request::AgentEnded { name } => {
                let how = match nodes.get(&name) {
                    Some(node) => node.agent_ended(AGENT_END_WAIT),
                    None => agents_ended.get(&name).cloned(),
                };
                match how {
                    Some(how) => (Reply::Exited { how }, vec![]),
                    None => (Reply::Running, vec![]),
                }
            }
            Request::Kill { name } => match nodes.remove(&name) {
                Some(mut node) => {
                    note_agent(&mut agents_ended, &name, &node);
                    let _ = node.signal(libc::SIGKILL);
                    let how = node.wait().map(|e| format!("{e:?}")).unwrap_or_else(|e| e.to_string());
                    (Reply::Exited { how }, vec![])
                }
                None => (Reply::Exited { how: "not running".into() }, vec![]),
            },
            Request::Reap { name } => match nodes.get_mut(&name).map(|n| n.try_wait()) {
                Some(Ok(Some(exit))) => {
                    if let Some(node) = nodes.remove(&name) {
                        note_agent(&mut agents_ended, &name, &node);
                    }
                    (Reply::Exited { how: format!("{exit:?}") }, vec![])
                }
                Some(Ok(None)) => (Reply::Running, vec![]),
                Some(Err(e)) => (Reply::Error { message: e.to_string() }, vec![]),
                None => (Reply::Exited { how: "not running".into() }, vec![]),
            },
        };
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        send(sock.as_fd(), &serde_json::to_vec(&reply)?, &raw)?;
    }
    Ok(())
}

/// How long the spawner waits for a node's agent to end when asked why it ended: the driver
/// sees the socket close a moment before the exit status exists.
const AGENT_END_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Keeps how a removed node's agent ended (if it ended by itself) for later questions.
fn note_agent(ended: &mut HashMap<String, String>, name: &str, node: &Container) {
    match node.agent_ended(std::time::Duration::ZERO) {
        Some(how) => ended.insert(name.to_string(), how),
        None => ended.remove(name),
    };
}

/// Clones the node (it waits) with the agent's socket handed over; returns our end.
fn prepare_node(req: &StartRequest, idmap: &IdMap) -> Result<(Pending, UnixStream)> {
    let mut spec = req.node_spec()?;
    let (driver_end, node_end) = UnixStream::pair().context("agent socketpair")?;
    spec.agent = Some(AgentHook {
        fd: node_end.as_raw_fd(),
        main: hutch_driver::agent::agent_main,
    });
    let node = Container::prepare(&spec, idmap)?;
    Ok((node, driver_end))
}

/// Lets a prepared node exec its init; returns it with the descriptors for the driver.
fn start_node(node: Pending, driver_end: UnixStream, memory_limited: bool) -> Result<(Container, Started, Vec<OwnedFd>)> {
    let node = node.start()?;
    let mut fds: Vec<OwnedFd> = vec![driver_end.into(), node.pidfd().try_clone_to_owned()?];
    if let Some(c) = node.console() {
        fds.push(c.try_clone_to_owned()?);
    }
    if let Some(n) = node.notify_socket() {
        fds.push(n.try_clone_to_owned()?);
    }
    let init = match node.init() {
        InitKind::Systemd => "systemd",
        InitKind::Busybox => "busybox",
        InitKind::Other => "other",
    };
    let started = Started {
        init: init.into(),
        has_console: node.console().is_some(),
        has_notify: node.notify_socket().is_some(),
        phases_ms: hutch_runtime::Phase::ALL
            .iter()
            .map(|p| (p.name().to_string(), node.timings().get(*p).as_secs_f64() * 1e3))
            .collect(),
        warnings: node.warnings().to_vec(),
        oom_counters: if memory_limited {
            hutch_runtime::oom_counters(node.name())
        } else {
            Vec::new()
        },
    };
    Ok((node, started, fds))
}
