//! One run of `hutch bench`: the workers start the nodes; the main process wires each to the
//! LAN, talks to its agent or waits for its READY=1, drains its console, stops it, and notes
//! the time of every step, until every node is gone.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hutch_driver::agent::{read_frame, write_frame, AgentReply, AgentRequest, Command, Envelope, RunRequest};
use hutch_netns::Hub;

use super::events::{now_ns, Epoll};
use super::record::{signal, tail, NodeRecord, RunRecord};
use super::worker::{FromWorker, NodeFds, Received, Spawned, ToWorker, Worker};

/// Command mode: what every node's agent runs, and each node's environment for it.
pub(super) type CommandPlan<'a> = (&'a [String], Vec<BTreeMap<String, String>>);

/// What a run needs besides its workers.
pub(super) struct Setup<'a> {
    /// Node names, by index.
    pub names: &'a [String],
    /// The LAN every node joins, if any.
    pub hub: Option<&'a Hub>,
    /// Command mode: what each node's agent runs, with per-node environment.
    pub command: Option<CommandPlan<'a>>,
    /// How long a booted node stays up once ready before hutch stops it.
    pub hold: Option<Duration>,
    /// The run's limit; nodes still up then are killed and count as failed.
    pub timeout: Duration,
}

/// A running node's descriptors and pending work, held by the main process.
#[derive(Default)]
struct Live {
    pidfd: Option<OwnedFd>,
    netns: Option<OwnedFd>,
    agent: Option<UnixStream>,
    console: Option<OwnedFd>,
    notify: Option<OwnedFd>,
    stop_signal: i32,
    stop_at: Option<u64>,
    console_tail: Vec<u8>,
    accounted: bool,
}

const WORKER: u64 = 0;
const PIDFD: u64 = 1;
const CONSOLE: u64 = 2;
const NOTIFY: u64 = 3;
const AGENT: u64 = 4;
const PING_ID: u64 = 1;
const RUN_ID: u64 = 2;

fn token(kind: u64, index: usize) -> u64 {
    kind << 32 | index as u64
}

struct Run<'a> {
    setup: &'a Setup<'a>,
    epoll: Epoll,
    nodes: Vec<NodeRecord>,
    live: Vec<Live>,
    to_attach: Vec<usize>,
    accounted: usize,
    stopping_all: bool,
    warnings: Vec<String>,
}

/// Runs every node once; returns when all workers report their share gone.
pub(super) fn run(setup: &Setup, workers: &[Worker], run_index: usize) -> Result<RunRecord> {
    let n = setup.names.len();
    let mut run = Run {
        setup,
        epoll: Epoll::new().context("creating an epoll set")?,
        nodes: vec![NodeRecord::default(); n],
        live: (0..n).map(|_| Live::default()).collect(),
        to_attach: Vec::new(),
        accounted: 0,
        stopping_all: false,
        warnings: Vec::new(),
    };
    for (i, w) in workers.iter().enumerate() {
        run.epoll.add(w.sock.as_fd(), token(WORKER, i))?;
    }
    let t0 = now_ns();
    for w in workers {
        w.send(&ToWorker::Go { run: run_index })?;
    }
    let deadline = t0 + setup.timeout.as_nanos() as u64;
    let mut killed = false;
    let mut workers_done = 0;
    while workers_done < workers.len() {
        let now = now_ns();
        let next = run
            .live
            .iter()
            .filter_map(|l| l.stop_at)
            .chain([deadline])
            .filter(|&t| !killed || t != deadline)
            .min();
        let wait_ms = next.map_or(-1, |t| (t.saturating_sub(now) / 1_000_000 + 1).min(60_000) as i32);
        for tok in run.epoll.wait(wait_ms)? {
            let i = (tok & 0xffff_ffff) as usize;
            match tok >> 32 {
                WORKER => workers_done += run.worker_said(&workers[i])?,
                PIDFD => run.pid_exited(i),
                CONSOLE => drop(run.read_console(i)),
                NOTIFY => run.read_notify(i),
                _ => run.read_agent(i),
            }
        }
        run.attach_pending()?;
        run.timers();
        if !killed && now_ns() >= deadline {
            killed = true;
            run.kill_all(workers);
        }
    }
    Ok(RunRecord {
        t0,
        done: now_ns(),
        nodes: run.nodes,
        warnings: run.warnings,
    })
}

impl Run<'_> {
    /// Handles every message a worker has waiting; returns 1 once the worker's share is done.
    fn worker_said(&mut self, w: &Worker) -> Result<usize> {
        let mut done = 0;
        loop {
            match super::worker::recv::<FromWorker>(w.sock.as_fd(), true)? {
                Received::Nothing => return Ok(done),
                Received::Closed => bail!("a worker process died (see its message above)"),
                Received::Message(FromWorker::Spawned(s), fds) => self.spawned(s, fds)?,
                Received::Message(FromWorker::Failed { node, message }, _) => {
                    self.nodes[node].failure = Some(format!("start failed: {message}"));
                    self.account(node);
                }
                Received::Message(FromWorker::Exited { node, how, clean, peak }, _) => {
                    if self.live[node].pidfd.is_some() {
                        self.pid_exited(node);
                    }
                    let rec = &mut self.nodes[node];
                    rec.peak = peak;
                    if !clean && rec.failure.is_none() {
                        rec.failure = Some(format!("ended {how}{}", tail(&self.live[node].console_tail)));
                    }
                    self.live[node].console = None;
                }
                Received::Message(FromWorker::RunDone, _) => done += 1,
            }
        }
    }

    fn account(&mut self, node: usize) {
        if !self.live[node].accounted {
            self.live[node].accounted = true;
            self.accounted += 1;
        }
        self.maybe_stop_all();
    }

    fn spawned(&mut self, s: Spawned, fds: Vec<OwnedFd>) -> Result<()> {
        let i = s.node;
        let fds = NodeFds::take(&s, fds)?;
        for w in &s.warnings {
            if !self.warnings.contains(w) {
                self.warnings.push(w.clone());
            }
        }
        let systemd = s.init == "systemd";
        let rec = &mut self.nodes[i];
        rec.called = s.called_ns;
        rec.exec = s.exec_ns;
        rec.phases_ns = s.phases_ns;
        rec.systemd = systemd;
        let live = &mut self.live[i];
        live.stop_signal = s.stop_signal;
        self.epoll.add(fds.pidfd.as_fd(), token(PIDFD, i))?;
        live.pidfd = Some(fds.pidfd);
        if let Some(c) = fds.console {
            // Our duplicate only: a blocking read must never stall the loop.
            let _ = nix::fcntl::fcntl(&c, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
            self.epoll.add(c.as_fd(), token(CONSOLE, i))?;
            live.console = Some(c);
        }
        if let Some(n) = fds.notify.filter(|_| systemd) {
            self.epoll.add(n.as_fd(), token(NOTIFY, i))?;
            live.notify = Some(n);
        }
        if let Some(a) = fds.agent {
            self.epoll.add(a.as_fd(), token(AGENT, i))?;
            // Pipelined: the agent answers as soon as it serves, whatever the LAN is doing.
            if let Err(e) = write_frame(
                &mut &a,
                &Envelope {
                    id: PING_ID,
                    body: AgentRequest::Ping,
                },
            ) {
                rec.failure = Some(format!("the agent did not take a request: {e}"));
            }
            live.agent = Some(a);
        }
        if !systemd && self.setup.command.is_none() {
            if let Some(h) = self.setup.hold {
                live.stop_at = Some(now_ns() + h.as_nanos() as u64);
            }
        }
        match self.setup.hub {
            Some(_) => {
                live.netns = Some(fds.netns);
                self.to_attach.push(i);
            }
            None => self.node_on_lan(i),
        }
        if self.setup.command.is_none() {
            self.account(i);
        }
        Ok(())
    }

    /// Plugs every node started since the last call into the LAN, in one pipelined batch.
    fn attach_pending(&mut self) -> Result<()> {
        let Some(hub) = self.setup.hub else { return Ok(()) };
        if self.to_attach.is_empty() {
            return Ok(());
        }
        let batch: Vec<usize> = std::mem::take(&mut self.to_attach)
            .into_iter()
            .filter(|&i| self.live[i].netns.is_some())
            .collect();
        let pairs: Vec<(&str, std::os::fd::BorrowedFd)> = batch
            .iter()
            .filter_map(|&i| Some((self.setup.names[i].as_str(), self.live[i].netns.as_ref()?.as_fd())))
            .collect();
        hub.attach_many(&pairs).context("plugging nodes into the LAN")?;
        let now = now_ns();
        for i in batch {
            self.nodes[i].attached = Some(now);
            self.live[i].netns = None;
            self.node_on_lan(i);
        }
        Ok(())
    }

    /// The node is wired (or has no LAN): its command can run.
    fn node_on_lan(&mut self, i: usize) {
        let Some((argv, envs)) = &self.setup.command else { return };
        let Some(agent) = &self.live[i].agent else { return };
        let req = RunRequest {
            command: Command::Argv(argv.to_vec()),
            env: envs[i].clone(),
            stdin: Vec::new(),
            timeout_ms: Some(self.setup.timeout.as_millis() as u64),
            cwd: None,
        };
        self.nodes[i].cmd_sent = Some(now_ns());
        if let Err(e) = write_frame(
            &mut &*agent,
            &Envelope {
                id: RUN_ID,
                body: AgentRequest::Run(req),
            },
        ) {
            self.nodes[i].failure = Some(format!("the agent did not take the command: {e}"));
            self.account(i);
        }
    }

    fn pid_exited(&mut self, i: usize) {
        let now = now_ns();
        self.nodes[i].exited.get_or_insert(now);
        if let Some(p) = self.live[i].pidfd.take() {
            self.epoll.remove(p.as_fd());
        }
        // What the console still holds says why a node ended early.
        while self.live[i].console.is_some() && self.read_console(i) {}
        let live = &mut self.live[i];
        live.notify = None;
        live.agent = None;
        live.stop_at = None;
        let rec = &mut self.nodes[i];
        if rec.failure.is_none() {
            if self.setup.command.is_some() && rec.cmd_done.is_none() {
                rec.failure = Some(format!("the node ended before its command did{}", tail(&live.console_tail)));
            } else if rec.systemd && rec.ready.is_none() {
                rec.failure = Some(format!("the node ended before READY=1{}", tail(&live.console_tail)));
            }
        }
        self.account(i);
    }

    /// Reads what the console has; true when it may have more.
    fn read_console(&mut self, i: usize) -> bool {
        let live = &mut self.live[i];
        let Some(c) = &live.console else { return false };
        let mut buf = [0u8; 16 * 1024];
        match nix::unistd::read(c, &mut buf) {
            Ok(n) if n > 0 => {
                live.console_tail.extend_from_slice(&buf[..n]);
                let excess = live.console_tail.len().saturating_sub(2048);
                live.console_tail.drain(..excess);
                true
            }
            Err(nix::errno::Errno::EINTR) => true,
            Err(nix::errno::Errno::EAGAIN) => false,
            _ => {
                if let Some(c) = live.console.take() {
                    self.epoll.remove(c.as_fd());
                }
                false
            }
        }
    }

    fn read_notify(&mut self, i: usize) {
        let Some(fd) = &self.live[i].notify else { return };
        let mut buf = [0u8; 4096];
        let mut ready = false;
        while let Ok(n) = nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            ready |= String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1");
        }
        if ready && self.nodes[i].ready.is_none() {
            let now = now_ns();
            self.nodes[i].ready = Some(now);
            self.live[i].stop_at = Some(now + self.setup.hold.unwrap_or_default().as_nanos() as u64);
        }
    }

    fn read_agent(&mut self, i: usize) {
        let Some(agent) = &self.live[i].agent else { return };
        let frame = read_frame(&mut &*agent);
        let rec = &mut self.nodes[i];
        let reply = match frame {
            Ok(Some(bytes)) => serde_json::from_slice::<Envelope<AgentReply>>(&bytes).map_err(|e| e.to_string()),
            Ok(None) => Err("the agent hung up".into()),
            Err(e) => Err(e.to_string()),
        };
        match reply {
            Ok(Envelope {
                body: AgentReply::Pong { .. },
                ..
            }) => rec.agent = Some(now_ns()),
            Ok(Envelope {
                body: AgentReply::Ran(r), ..
            }) => {
                rec.cmd_done = Some(now_ns());
                if !r.status.success() && rec.failure.is_none() {
                    let err = hutch_driver::safe_text::text(&String::from_utf8_lossy(&r.stderr), false);
                    rec.failure = Some(format!("the command ended with {}: {}", r.status, err.trim()));
                }
                self.account(i);
            }
            Ok(Envelope { body: other, .. }) => {
                rec.failure.get_or_insert(format!("the agent answered {other:?}"));
            }
            Err(e) => {
                if let Some(a) = self.live[i].agent.take() {
                    self.epoll.remove(a.as_fd());
                }
                if rec.cmd_done.is_none() {
                    rec.failure.get_or_insert(format!("lost the agent: {e}"));
                    self.account(i);
                }
            }
        }
    }

    /// Command mode: once every node's command is done (or the node failed), stop them all,
    /// as a test does when its script ends.
    fn maybe_stop_all(&mut self) {
        if self.stopping_all || self.setup.command.is_none() || self.accounted < self.nodes.len() {
            return;
        }
        self.stopping_all = true;
        let now = now_ns();
        for i in 0..self.nodes.len() {
            self.live[i].stop_at = None;
            if self.live[i].pidfd.is_some() {
                self.stop(i, now);
            }
        }
    }

    fn stop(&mut self, i: usize, now: u64) {
        let live = &mut self.live[i];
        live.stop_at = None;
        live.agent = None;
        if let Some(p) = &live.pidfd {
            self.nodes[i].stop_sent.get_or_insert(now);
            let _ = signal(p, live.stop_signal);
        }
    }

    fn timers(&mut self) {
        let now = now_ns();
        for i in 0..self.live.len() {
            if self.live[i].stop_at.is_some_and(|t| t <= now) {
                self.stop(i, now);
            }
        }
    }

    fn kill_all(&mut self, workers: &[Worker]) {
        let limit = self.setup.timeout.as_secs_f64();
        for (rec, live) in self.nodes.iter_mut().zip(&self.live) {
            if rec.exited.is_none() && rec.failure.is_none() {
                rec.failure = Some(format!(
                    "still running after the run's limit of {limit} s (--timeout){}",
                    tail(&live.console_tail)
                ));
            }
            if let Some(p) = &live.pidfd {
                let _ = signal(p, libc::SIGKILL);
            }
        }
        for w in workers {
            let _ = w.send(&ToWorker::KillAll);
        }
    }
}
