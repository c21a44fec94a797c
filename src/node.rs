//! A test node for the driver: the runtime's container (through the spawner), its console,
//! its readiness and its place on the test network, behind the driver's `NodeControl`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hutch_driver::machine::{ConsoleLog, NodeControl, NodeError};
use hutch_netns::Hub;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::spawner::{Spawner, StartRequest};

/// `send_console` writes at most this much at a time, each once the pty has room.
const CONSOLE_CHUNK: usize = 256;
/// How long `send_console` waits for room in the console's input.
const CONSOLE_INPUT_WAIT: Duration = Duration::from_secs(10);

/// How long a start waits for systemd's READY=1 before it calls the boot failed.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// One node of a test run.
pub struct RuntimeNode {
    request: StartRequest,
    spawner: Arc<Spawner>,
    hub: Option<Arc<Hub>>,
    console: Arc<ConsoleLog>,
    state: Mutex<Option<Running>>,
    /// The OOM watch of the current start (nodes with a memory limit).
    oom: Mutex<Option<Arc<OomWatch>>>,
    /// Start phase timings of the last start, for `--timings`.
    pub last_start: Mutex<Vec<(String, f64)>>,
    /// The network namespace of the current start, for connections made in it (`--publish`).
    netns: Mutex<Option<OwnedFd>>,
}

struct Running {
    pidfd: OwnedFd,
    /// The console's pty master again, for typing on it (`send_console`).
    console: Option<OwnedFd>,
    since: Instant,
}

fn failed(e: impl std::fmt::Display) -> NodeError {
    NodeError::Failed(e.to_string())
}

impl RuntimeNode {
    /// A node that starts from `request` through `spawner`, wired to `hub` when it has VLANs.
    pub fn new(request: StartRequest, spawner: Arc<Spawner>, hub: Option<Arc<Hub>>) -> RuntimeNode {
        RuntimeNode {
            request,
            spawner,
            hub,
            console: Arc::new(ConsoleLog::new()),
            state: Mutex::new(None),
            oom: Mutex::new(None),
            last_start: Mutex::new(Vec::new()),
            netns: Mutex::new(None),
        }
    }

    /// The node's name, as the test file gives it.
    pub fn name(&self) -> &str {
        &self.request.name
    }

    /// The host pid of the node's PID 1 while it runs (read from its pidfd's fdinfo), for
    /// `hutch list`.
    pub fn pid(&self) -> Option<u32> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fd = state.as_ref()?.pidfd.as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        let pid = info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse::<i64>().ok()?;
        u32::try_from(pid).ok().filter(|p| *p > 0)
    }

    /// A TCP connection to `port` on the node's loopback, made from a socket created in the
    /// node's network namespace (by a short-lived thread that joins it: nothing is added to
    /// the host's namespace, and the node needs no route to the host).
    pub fn connect_tcp(&self, port: u16, timeout: Duration) -> std::io::Result<std::net::TcpStream> {
        if !self.is_up() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "the node is not running"));
        }
        let netns = self
            .netns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|f| f.try_clone())
            .transpose()?
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotConnected, "the node has no network namespace"))?;
        std::thread::Builder::new()
            .name(format!("connect-{}", self.name()))
            .spawn(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                std::net::TcpStream::connect_timeout(&(std::net::Ipv4Addr::LOCALHOST, port).into(), timeout)
            })?
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
    }

    /// When the node last came up, while it runs.
    pub fn up_since(&self) -> Option<Instant> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|r| r.since)
    }

    /// Copies the console into the log until the node's console goes away.
    fn relay_console(&self, fd: OwnedFd) {
        let console = Arc::clone(&self.console);
        std::thread::Builder::new()
            .name(format!("console-{}", self.name()))
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match nix::unistd::read(&fd, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => console.push(&buf[..n]),
                        Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
                        Err(_) => break,
                    }
                }
            })
            .map(drop)
            .unwrap_or_default();
    }

    /// Waits for READY=1 on the notify socket, failing early if the node dies.
    fn wait_ready(&self, notify: &OwnedFd, pidfd: &OwnedFd) -> Result<(), NodeError> {
        let deadline = Instant::now() + BOOT_LIMIT;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NodeError::Timeout {
                    what: "READY=1 from systemd".into(),
                    after: BOOT_LIMIT,
                });
            }
            let mut fds = [
                PollFd::new(notify.as_fd(), PollFlags::POLLIN),
                PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            ];
            let ms = PollTimeout::try_from(left.as_millis().min(1000) as i32).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(failed(e)),
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                let how = self.spawner.reap(self.name()).ok().flatten().unwrap_or_default();
                return Err(failed(format!("the node stopped while booting ({how})")));
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                if let Ok(n) = nix::sys::socket::recv(
                    std::os::fd::AsRawFd::as_raw_fd(notify),
                    &mut buf,
                    nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                ) {
                    if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn pidfd_ready(&self, timeout: Duration) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(running) = state.as_ref() else { return true };
        let mut fds = [PollFd::new(running.pidfd.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
        matches!(poll(&mut fds, ms), Ok(n) if n > 0)
    }

    fn wait_down(&self, timeout: Duration, what: &str) -> Result<(), NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.pidfd_ready(left.min(Duration::from_millis(500))) {
                self.spawner.reap(self.name()).map_err(failed)?;
                *self.state.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return Ok(());
            }
            if left.is_zero() {
                return Err(NodeError::Timeout {
                    what: what.into(),
                    after: timeout,
                });
            }
        }
    }
}

impl NodeControl for RuntimeNode {
    fn start(&self) -> Result<UnixStream, NodeError> {
        // The node is plugged into its LANs before its init runs.
        let wire = |netns: std::os::fd::BorrowedFd| -> anyhow::Result<()> {
            *self.netns.lock().unwrap_or_else(|e| e.into_inner()) = netns.try_clone_to_owned().ok();
            if let Some(hub) = &self.hub {
                // A restarted node has a new namespace: unplug what the old one left first.
                let _ = hub.detach(self.name());
                hub.attach(self.name(), netns)?;
            }
            Ok(())
        };
        let (started, fds) = self
            .spawner
            .start(self.request.clone(), wire)
            .map_err(|e| failed(format!("{e:#}")))?;
        *self.last_start.lock().unwrap_or_else(|e| e.into_inner()) = started.phases_ms.clone();
        let console_input = fds.console.as_ref().and_then(|c| c.try_clone().ok());
        if let Some(console) = fds.console {
            self.relay_console(console);
        }
        if let (Some(notify), "systemd") = (&fds.notify, started.init.as_str()) {
            self.wait_ready(notify, &fds.pidfd)?;
        }
        let oom = (!started.oom_counters.is_empty()).then(|| {
            Arc::new(OomWatch {
                spawner: Arc::clone(&self.spawner),
                name: self.name().to_string(),
                console: Arc::clone(&self.console),
                counters: started.oom_counters.clone(),
                died: Mutex::new(None),
            })
        });
        if let (Some(watch), Ok(pidfd)) = (&oom, fds.pidfd.try_clone()) {
            Arc::clone(watch).watch(pidfd);
        }
        *self.oom.lock().unwrap_or_else(|e| e.into_inner()) = oom;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
            pidfd: fds.pidfd,
            console: console_input,
            since: Instant::now(),
        });
        Ok(fds.agent)
    }

    fn shutdown(&self, timeout: Duration) -> Result<(), NodeError> {
        if !self.is_up() {
            return Ok(());
        }
        self.spawner.stop(self.name()).map_err(failed)?;
        self.wait_down(timeout, "the shutdown")
    }

    fn crash(&self) -> Result<(), NodeError> {
        self.spawner.kill(self.name()).map_err(failed)?;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Held, the descriptor would keep the dead node's network namespace alive.
        *self.netns.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    fn wait_for_shutdown(&self, timeout: Duration) -> Result<(), NodeError> {
        self.wait_down(timeout, "the node stopping by itself")
    }

    fn is_up(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).is_some() && !self.pidfd_ready(Duration::ZERO)
    }

    fn block(&self) -> Result<(), NodeError> {
        match &self.hub {
            Some(hub) => hub.block(self.name(), None).map_err(failed),
            None => Err(failed("the node is on no VLAN")),
        }
    }

    fn unblock(&self) -> Result<(), NodeError> {
        match &self.hub {
            Some(hub) => hub.unblock(self.name(), None).map_err(failed),
            None => Err(failed("the node is on no VLAN")),
        }
    }

    fn console(&self) -> Arc<ConsoleLog> {
        Arc::clone(&self.console)
    }

    fn send_console(&self, data: &[u8]) -> Result<(), NodeError> {
        let console = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let running = state.as_ref().ok_or(NodeError::NotRunning)?;
            let fd = running
                .console
                .as_ref()
                .ok_or_else(|| failed("this node has no console (it runs without an init)"))?;
            fd.try_clone().map_err(|e| failed(format!("the console: {e}")))?
        };
        // Small writes once the pty takes input: a console nobody in the node reads fills up,
        // and the caller gets an error instead of hanging.
        for chunk in data.chunks(CONSOLE_CHUNK) {
            let mut left = chunk;
            while !left.is_empty() {
                let mut fds = [PollFd::new(console.as_fd(), PollFlags::POLLOUT)];
                let ms = PollTimeout::try_from(CONSOLE_INPUT_WAIT.as_millis() as i32).unwrap_or(PollTimeout::MAX);
                match poll(&mut fds, ms) {
                    Ok(0) => {
                        return Err(NodeError::Timeout {
                            what: "room in the console's input (nothing in the node reads /dev/console)".into(),
                            after: CONSOLE_INPUT_WAIT,
                        })
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(failed(format!("waiting on the console: {e}"))),
                }
                match nix::unistd::write(&console, left) {
                    Ok(n) => left = &left[n..],
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                    Err(e) => return Err(failed(format!("writing to the console: {e}"))),
                }
            }
        }
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fd = std::os::fd::AsRawFd::as_raw_fd(&state.as_ref()?.pidfd);
        // The kernel names a pidfd's process in its fdinfo ("Pid:\t1234").
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        info.lines().find_map(|l| l.strip_prefix("Pid:")?.trim().parse().ok())
    }

    fn died(&self) -> Option<String> {
        let watch = self.oom.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        watch.check()
    }

    fn agent_ended(&self) -> Option<String> {
        self.spawner.agent_ended(self.name()).ok().flatten()
    }
}

/// Watches a memory-limited node for the kernel's OOM killer. Where the kernel kills only
/// the biggest process (cgroup v1; v2 without memory.oom.group) the node would go on without
/// it, half alive; hutch treats it like a VM that ran out of memory: it kills the node and
/// reports it crashed (on its console, and to the Machine API through `died`).
struct OomWatch {
    spawner: Arc<Spawner>,
    name: String,
    console: Arc<ConsoleLog>,
    counters: Vec<std::path::PathBuf>,
    died: Mutex<Option<String>>,
}

/// How often the watcher reads the OOM counters while no command asks.
const OOM_POLL: Duration = Duration::from_millis(200);

impl OomWatch {
    /// Why the node died, once the OOM killer hit it (the node is then killed, once).
    fn check(&self) -> Option<String> {
        let mut died = self.died.lock().unwrap_or_else(|e| e.into_inner());
        if died.is_none() {
            let kills = hutch_runtime::oom_kills(&self.counters);
            if kills == 0 {
                return None;
            }
            let reason = format!(
                "out of memory: the kernel's OOM killer killed {kills} process(es) in the node at its memory limit; \
                 hutch stopped the node (raise `memory` in the test file if the node needs more)"
            );
            let _ = self.spawner.kill(&self.name);
            self.console
                .push(format!("hutch: node {} crashed: {reason}\r\n", self.name).as_bytes());
            *died = Some(reason);
        }
        died.clone()
    }

    /// Checks the counters every OOM_POLL until the node is gone.
    fn watch(self: Arc<Self>, pidfd: OwnedFd) {
        let _ = std::thread::Builder::new().name(format!("oom-{}", self.name)).spawn(move || loop {
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(OOM_POLL.as_millis() as i32).unwrap_or(PollTimeout::MAX);
            if matches!(poll(&mut fds, ms), Ok(n) if n > 0) || self.check().is_some() {
                break;
            }
        });
    }
}
