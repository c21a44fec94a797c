//! Worker processes: single-threaded, forked before `hutch bench` starts any thread, each
//! starting its share of the nodes. `Container::spawn` clones a child that runs Rust code until
//! its exec, which is only safe in a process without other threads; K workers also give
//! `--parallel K` starts without threads.
//!
//! A worker owns its nodes (they are its children: it reaps them, reads their cgroup's memory
//! peak, removes their cgroups) and hands each node's descriptors to the main process, which
//! wires, drives and watches them. Messages are JSON, one per SOCK_SEQPACKET packet, with the
//! descriptors as SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use anyhow::{Context, Result};
use hutch_runtime::{AgentHook, Container, Exit, IdMap, InitKind, Phase};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::events::now_ns;
use super::Nodes;

/// What the main process asks of a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ToWorker {
    /// Start my share of the nodes for run `run`, report them, reap them.
    Go { run: usize },
    /// Kill every node still running (the run's timeout passed).
    KillAll,
}

/// A started node, as the main process learns of it; its descriptors travel alongside in this
/// order: pidfd, network namespace, then agent socket, console and notify socket when present.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Spawned {
    pub node: usize,
    /// CLOCK_MONOTONIC when the worker called `Container::spawn`, and when it returned.
    pub called_ns: u64,
    pub exec_ns: u64,
    /// The runtime's phases, in `Phase::ALL` order.
    pub phases_ns: Vec<u64>,
    pub init: String,
    pub stop_signal: i32,
    pub has_agent: bool,
    pub has_console: bool,
    pub has_notify: bool,
    pub warnings: Vec<String>,
}

/// What a worker tells the main process.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum FromWorker {
    Spawned(Spawned),
    /// The start failed; nothing of the node is left.
    Failed {
        node: usize,
        message: String,
    },
    /// The node's PID 1 was reaped; `peak` is its cgroup's memory peak in bytes.
    Exited {
        node: usize,
        how: String,
        clean: bool,
        peak: Option<u64>,
    },
    /// Every node of this worker's share is gone and cleaned up.
    RunDone,
}

/// A started node's descriptors, as the main process receives them.
pub(super) struct NodeFds {
    pub pidfd: OwnedFd,
    pub netns: OwnedFd,
    pub agent: Option<UnixStream>,
    pub console: Option<OwnedFd>,
    pub notify: Option<OwnedFd>,
}

impl NodeFds {
    /// Splits the descriptors that came with `s` (see [`Spawned`] for the order).
    pub fn take(s: &Spawned, fds: Vec<OwnedFd>) -> Result<NodeFds> {
        let mut it = fds.into_iter();
        let mut next = || it.next().context("a worker sent fewer descriptors than its message says");
        let pidfd = next()?;
        let netns = next()?;
        let agent = if s.has_agent { Some(UnixStream::from(next()?)) } else { None };
        let console = if s.has_console { Some(next()?) } else { None };
        let notify = if s.has_notify { Some(next()?) } else { None };
        Ok(NodeFds {
            pidfd,
            netns,
            agent,
            console,
            notify,
        })
    }
}

/// The main process's handle on one worker.
pub(super) struct Worker {
    pub sock: OwnedFd,
    pid: nix::unistd::Pid,
}

impl Worker {
    /// Forks a worker that will start the nodes `mine` (indexes into `nodes`), giving each the
    /// driver's agent when `agent`. Call before the process starts any thread.
    pub fn fork(nodes: &Nodes, mine: Vec<usize>, agent: bool) -> Result<Worker> {
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).context("creating a worker's socketpair")?;
        // SAFETY: the caller guarantees no other thread exists; the child serves and exits
        // without returning into the caller.
        match unsafe { nix::unistd::fork() }.context("forking a worker")? {
            nix::unistd::ForkResult::Child => {
                drop(ours);
                hutch_runtime::close_all_but(&[0, 1, 2, theirs.as_raw_fd()]);
                // A worker (and with it every node) dies with hutch.
                // SAFETY: prctl with a signal number has no memory effects.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                let code = match serve(theirs.as_fd(), nodes, &mine, agent) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("hutch bench worker: {e:#}");
                        1
                    }
                };
                std::process::exit(code)
            }
            nix::unistd::ForkResult::Parent { child } => Ok(Worker { sock: ours, pid: child }),
        }
    }

    /// Asks the worker to do something.
    pub fn send(&self, msg: &ToWorker) -> Result<()> {
        send(self.sock.as_fd(), msg, &[])
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Hanging up ends the worker's loop; it drops (kills) whatever nodes it still has.
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// The worker's life: one share of nodes per `Go`, until the main process hangs up.
fn serve(sock: BorrowedFd, nodes: &Nodes, mine: &[usize], agent: bool) -> Result<()> {
    let idmap = IdMap::detect();
    while let Received::Message(msg, _) = recv::<ToWorker>(sock, false)? {
        if let ToWorker::Go { .. } = msg {
            let mut live = Live(Vec::with_capacity(mine.len()));
            for &i in mine {
                match start(nodes, i, agent, &idmap) {
                    Ok((node, spawned, fds)) => {
                        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                        live.0.push((i, node));
                        send(sock, &FromWorker::Spawned(Spawned { node: i, ..spawned }), &raw)?;
                    }
                    Err(e) => {
                        let message = format!("{e:#}");
                        send(sock, &FromWorker::Failed { node: i, message }, &[])?;
                    }
                }
            }
            // A node without a memory limit may share its cgroup with others: no peak of its own.
            let own_memory = nodes.template.memory.is_some();
            if !reap_all(sock, &mut live, own_memory)? {
                return Ok(());
            }
            send(sock, &FromWorker::RunDone, &[])?;
        }
    }
    Ok(())
}

/// A worker's running nodes. Dropping it kills them all, then drops them newest first. The
/// order matters: a node without an init of its own keeps copies of the descriptors its worker
/// held when it was cloned, among them the cgroup-reaper pipes of older nodes, and dropping a
/// node waits for its reaper.
struct Live(Vec<(usize, Container)>);

impl Drop for Live {
    fn drop(&mut self) {
        for (_, c) in &self.0 {
            let _ = c.signal(libc::SIGKILL);
        }
        while let Some((_, c)) = self.0.pop() {
            drop(c);
        }
    }
}

/// Starts one node; returns it, its report, and the descriptors to hand over.
fn start(nodes: &Nodes, i: usize, agent: bool, idmap: &IdMap) -> Result<(Container, Spawned, Vec<OwnedFd>)> {
    let mut spec = nodes.spec(i);
    let pair = agent.then(UnixStream::pair).transpose().context("the agent's socketpair")?;
    spec.agent = pair.as_ref().map(|(_, node_end)| AgentHook {
        fd: node_end.as_raw_fd(),
        main: hutch_driver::agent::agent_main,
    });
    let called_ns = now_ns();
    let node = Container::spawn(&spec, idmap)?;
    let exec_ns = now_ns();
    drop(spec);
    let netns = std::fs::File::open(node.netns_path()).context("opening the node's network namespace")?;
    let mut fds: Vec<OwnedFd> = vec![node.pidfd().try_clone_to_owned()?, netns.into()];
    if let Some((driver_end, _node_end)) = pair {
        fds.push(driver_end.into());
    }
    if let Some(c) = node.console() {
        fds.push(c.try_clone_to_owned()?);
    }
    if let Some(n) = node.notify_socket() {
        fds.push(n.try_clone_to_owned()?);
    }
    let spawned = Spawned {
        node: 0,
        called_ns,
        exec_ns,
        phases_ns: Phase::ALL.iter().map(|p| node.timings().get(*p).as_nanos() as u64).collect(),
        init: match node.init() {
            InitKind::Systemd => "systemd",
            InitKind::Busybox => "busybox",
            InitKind::Other => "other",
        }
        .into(),
        stop_signal: node.stop_signal(),
        has_agent: agent,
        has_console: node.console().is_some(),
        has_notify: node.notify_socket().is_some(),
        warnings: node.warnings().to_vec(),
    };
    Ok((node, spawned, fds))
}

/// Reaps every node as it exits, reporting each; false when the main process hung up (the
/// nodes are then dropped, which kills them).
fn reap_all(sock: BorrowedFd, live: &mut Live, own_memory: bool) -> Result<bool> {
    let live = &mut live.0;
    while !live.is_empty() {
        let ready: Vec<usize> = {
            let mut fds: Vec<PollFd> = live.iter().map(|(_, c)| PollFd::new(c.pidfd(), PollFlags::POLLIN)).collect();
            fds.push(PollFd::new(sock, PollFlags::POLLIN));
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("waiting for nodes"),
            }
            fds.iter()
                .enumerate()
                .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(i, _)| i)
                .collect()
        };
        for &k in ready.iter().rev() {
            if k == live.len() {
                match recv::<ToWorker>(sock, true)? {
                    Received::Closed => return Ok(false),
                    Received::Message(ToWorker::KillAll, _) => {
                        for (_, c) in live.iter() {
                            let _ = c.signal(libc::SIGKILL);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let (node, mut c) = live.swap_remove(k);
            match c.try_wait()? {
                Some(exit) => {
                    let peak = c.memory_peak().filter(|_| own_memory);
                    let clean = matches!(exit, Exit::Exited(0) | Exit::PowerOff);
                    drop(c);
                    let msg = FromWorker::Exited {
                        node,
                        how: format!("{exit:?}"),
                        clean,
                        peak,
                    };
                    send(sock, &msg, &[])?;
                }
                None => live.push((node, c)),
            }
        }
    }
    Ok(true)
}

/// Sends one message with descriptors.
pub(super) fn send<T: Serialize>(fd: BorrowedFd, msg: &T, fds: &[RawFd]) -> Result<()> {
    let bytes = serde_json::to_vec(msg)?;
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    loop {
        match sendmsg::<()>(fd.as_raw_fd(), &[IoSlice::new(&bytes)], &cmsgs, MsgFlags::empty(), None) {
            Err(Errno::EINTR) => continue,
            other => return other.map(drop).context("sending to a worker"),
        }
    }
}

/// What a receive found.
pub(super) enum Received<T> {
    /// A message and the descriptors that came with it.
    Message(T, Vec<OwnedFd>),
    /// Nothing waiting (non-blocking receives only).
    Nothing,
    /// The peer hung up.
    Closed,
}

/// Receives one message.
pub(super) fn recv<T: DeserializeOwned>(fd: BorrowedFd, nonblocking: bool) -> Result<Received<T>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | if nonblocking { MsgFlags::MSG_DONTWAIT } else { MsgFlags::empty() };
    let msg = loop {
        match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) if nonblocking => return Ok(Received::Nothing),
            other => break other.context("reading from a worker")?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().context("reading descriptors")? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return Ok(Received::Closed);
    }
    Ok(Received::Message(serde_json::from_slice(&buf[..n])?, fds))
}
