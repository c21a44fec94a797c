//! The Machine API: the NixOS test driver's Machine methods in Rust, over a node's agent and a
//! `NodeControl` seam that the runtime implements for the node's lifecycle.

mod commands;
mod console;
mod copy_out;
mod error;
mod host;
mod progress;
mod shell;
mod systemd;
mod waits;

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::AgentClient;
use crate::log::Log;

pub use commands::{Output, DEFAULT_TIMEOUT};
pub use console::{ConsoleLog, LineSplitter, CONSOLE_KEEP, CUT_MARK, LINE_CAP};
pub use copy_out::{CopyError, MAX_ENTRIES};
pub use error::{MachineError, NodeError};
pub use host::{shared_dir, state_dir, SHARED_DIR_IN_NODE};

/// A node's lifecycle, implemented by the runtime. Calls for one node come from one thread at
/// a time (the Machine serializes them); calls for different nodes come concurrently.
pub trait NodeControl: Send + Sync {
    /// Boot the node; return once it is up (READY=1 for systemd nodes, at once otherwise)
    /// with a connected stream to the node's agent. Called again after a shutdown or crash.
    fn start(&self) -> Result<UnixStream, NodeError>;
    /// Clean poweroff; returns once the node is down, or `Timeout` (the node still running).
    fn shutdown(&self, timeout: Duration) -> Result<(), NodeError>;
    /// SIGKILL the node; returns once it is down and its resources are gone. May be called
    /// from another thread while `start` is in progress (the run is being aborted): `start`
    /// must then return promptly with an error. On a node that is not running: `Ok`, nothing.
    fn crash(&self) -> Result<(), NodeError>;
    /// Wait for the node to stop by itself (e.g. `poweroff` inside it).
    fn wait_for_shutdown(&self, timeout: Duration) -> Result<(), NodeError>;
    /// Whether the node is running.
    fn is_up(&self) -> bool;
    /// Cut the node's network links (all its VLANs).
    fn block(&self) -> Result<(), NodeError>;
    /// Restore what `block` cut.
    fn unblock(&self) -> Result<(), NodeError>;
    /// The node's console: the runtime pushes everything the node prints there.
    fn console(&self) -> Arc<ConsoleLog>;
    /// Why the node died by itself while it was meant to run (e.g. the OOM killer hit it),
    /// once it has; the runtime has stopped what was left of it. Asked after each command,
    /// so a test sees such a node as crashed, like a VM that died.
    fn died(&self) -> Option<String> {
        None
    }
    /// How the node's agent ended, if it has: asked when the connection to it breaks, so the
    /// error says why (its exit status or the signal that killed it), not only "Broken pipe".
    fn agent_ended(&self) -> Option<String> {
        None
    }
    /// Write to the node's console input (its /dev/console), for `send_console`.
    fn send_console(&self, _data: &[u8]) -> Result<(), NodeError> {
        Err(NodeError::Failed("this node has no console to type on".into()))
    }
    /// The node's init as the host sees it, while it runs.
    fn pid(&self) -> Option<u32> {
        None
    }
    /// Relay the host's 127.0.0.1:`host_port` to the node's `guest_port` until the test
    /// ends (`forward_port`, QEMU's hostfwd).
    fn forward_port(&self, _host_port: u16, _guest_port: u16) -> Result<(), NodeError> {
        Err(NodeError::Failed("this node's ports cannot be reached from the host".into()))
    }
}

/// What machines share with the run: its log, its output directory, its abort flag.
#[derive(Clone)]
pub struct MachineContext {
    /// Where messages go.
    pub log: Arc<Log>,
    /// Where `copy_from_machine` puts files.
    pub output_dir: PathBuf,
    /// Set when the run is being aborted (whole-test timeout, interrupt): waits stop at once.
    pub abort: Arc<AtomicBool>,
}

/// How long `shutdown()` waits for a clean poweroff before killing the node.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// One node of the test, as the test script sees it.
pub struct Machine {
    name: String,
    control: Box<dyn NodeControl>,
    agent: Mutex<Option<Arc<AgentClient>>>,
    lifecycle: Mutex<()>,
    console_cursor: Mutex<usize>,
    boots: Mutex<Vec<Duration>>,
    ctx: MachineContext,
}

impl Machine {
    /// A machine for node `name`; console lines go to the log from now on.
    pub fn new(name: &str, control: Box<dyn NodeControl>, ctx: MachineContext) -> Machine {
        let log = Arc::clone(&ctx.log);
        let n = name.to_string();
        control.console().subscribe(move |lines| log.console(&n, lines));
        Machine {
            name: name.to_string(),
            control,
            agent: Mutex::new(None),
            lifecycle: Mutex::new(()),
            console_cursor: Mutex::new(0),
            boots: Mutex::new(Vec::new()),
            ctx,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long each boot took, in order.
    pub fn boot_times(&self) -> Vec<Duration> {
        lock(&self.boots).clone()
    }

    /// Log a message under the node's name.
    pub fn log(&self, msg: &str) {
        self.ctx.log.node(&self.name, msg);
    }

    fn err_node(&self, action: &'static str, source: NodeError) -> MachineError {
        MachineError::Node {
            node: self.name.clone(),
            action,
            source,
        }
    }

    fn aborted(&self) -> Result<(), MachineError> {
        // A cancelled script call (crate::cancel) ends its waits and sleeps the same way.
        if self.ctx.abort.load(Ordering::Relaxed) || crate::cancel::requested() {
            return Err(MachineError::Aborted { node: self.name.clone() });
        }
        Ok(())
    }

    /// Boot the node if it is not running (no-op otherwise), and connect to its agent.
    pub fn start(&self) -> Result<(), MachineError> {
        self.aborted()?;
        let _g = lock(&self.lifecycle);
        if self.control.is_up() && lock(&self.agent).as_ref().is_some_and(|a| a.is_alive()) {
            return Ok(());
        }
        self.log("starting");
        let t = Instant::now();
        let stream = self.starting().map_err(|e| self.err_node("start", e))?;
        let client = AgentClient::new(stream).map_err(|e| self.err_node("start", NodeError::Failed(format!("agent socket: {e}"))))?;
        client.ping(Duration::from_secs(30)).map_err(|source| self.agent_err(source))?;
        *lock(&self.agent) = Some(Arc::new(client));
        let took = t.elapsed();
        lock(&self.boots).push(took);
        self.log(&format!("up after {:.3}s", took.as_secs_f64()));
        Ok(())
    }

    /// Starts the node, saying every so often while it is not up yet (a systemd that never
    /// reports ready keeps a start waiting for minutes), with the console's last line.
    fn starting(&self) -> Result<UnixStream, NodeError> {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut progress = progress::Progress::new();
                while let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(progress.due().saturating_duration_since(Instant::now())) {
                    if let Some(elapsed) = progress.tick() {
                        self.still(
                            "starting (not up yet)",
                            elapsed,
                            None,
                            self.control.console().last_line().as_deref(),
                        );
                    }
                }
            });
            let started = self.control.start();
            drop(done);
            started
        })
    }

    /// Power the node off cleanly and wait (killing it if it does not stop in time).
    pub fn shutdown(&self) -> Result<(), MachineError> {
        let _g = lock(&self.lifecycle);
        if !self.control.is_up() {
            return Ok(());
        }
        self.log("shutting down");
        let r = self.control.shutdown(SHUTDOWN_TIMEOUT);
        lock(&self.agent).take();
        if let Err(e) = r {
            self.log(&format!("shutdown failed ({e}); killing the node"));
            let _ = self.control.crash();
            return Err(self.err_node("shutdown", e));
        }
        Ok(())
    }

    /// Kill the node at once, like pulling the plug.
    pub fn crash(&self) -> Result<(), MachineError> {
        let _g = lock(&self.lifecycle);
        self.log("crashing");
        lock(&self.agent).take();
        self.control.crash().map_err(|e| self.err_node("crash", e))
    }

    /// Stop the node at once because the run is over or aborted (a crash, logged as a stop).
    /// Does not wait for a lifecycle call in progress: an abort must end a boot that hangs.
    pub fn terminate(&self) -> Result<(), MachineError> {
        if self.control.is_up() {
            self.log("stopping");
        }
        lock(&self.agent).take();
        self.control.crash().map_err(|e| self.err_node("stop", e))
    }

    /// Shut down and start again.
    pub fn reboot(&self) -> Result<(), MachineError> {
        self.shutdown()?;
        self.start()
    }

    /// Whether the node is running.
    pub fn is_up(&self) -> bool {
        self.control.is_up()
    }

    /// The node's agent connection for a user attached from another terminal (`hutch
    /// shell`): only once the node is ready (it is never started for them).
    pub fn attached_agent(&self) -> Option<Arc<AgentClient>> {
        lock(&self.agent).as_ref().filter(|a| self.control.is_up() && a.is_alive()).cloned()
    }

    /// Whether the node runs and its agent answered (its boot is over): what `hutch list`
    /// calls "up", and when `hutch exec` may use it.
    pub fn is_ready(&self) -> bool {
        self.control.is_up() && lock(&self.agent).as_ref().is_some_and(|a| a.is_alive())
    }

    /// Wait for the node to stop by itself.
    pub fn wait_for_shutdown(&self, timeout: Duration) -> Result<(), MachineError> {
        self.log("waiting for the node to shut down");
        let r = self.control.wait_for_shutdown(timeout);
        lock(&self.agent).take();
        r.map_err(|e| self.err_node("wait_for_shutdown", e))
    }

    /// Cut the node's network links.
    pub fn block(&self) -> Result<(), MachineError> {
        self.log("blocking the network");
        self.control.block().map_err(|e| self.err_node("block", e))
    }

    /// Restore the node's network links.
    pub fn unblock(&self) -> Result<(), MachineError> {
        self.log("unblocking the network");
        self.control.unblock().map_err(|e| self.err_node("unblock", e))
    }

    /// Reach the node's `guest_port` from the host at 127.0.0.1:`host_port` until the test
    /// ends (only there: nothing is added to the host's network).
    pub fn forward_port(&self, host_port: u16, guest_port: u16) -> Result<(), MachineError> {
        self.log(&format!("forwarding 127.0.0.1:{host_port} on the host to port {guest_port}"));
        self.control
            .forward_port(host_port, guest_port)
            .map_err(|e| self.err_node("forward_port", e))
    }

    /// Everything the node printed on its console so far.
    pub fn get_console_log(&self) -> String {
        self.control.console().text()
    }

    /// Sleep, but stop early when the run is aborted.
    pub fn sleep(&self, d: Duration) -> Result<(), MachineError> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.aborted()?;
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
        }
        Ok(())
    }

    /// The agent connection, starting the node first when it is down (as the NixOS driver
    /// does on the first command).
    /// The error for a failed agent request; a lost connection says how the agent ended.
    fn agent_err(&self, source: crate::agent::AgentError) -> MachineError {
        let source = match source {
            crate::agent::AgentError::Gone { reason } => crate::agent::AgentError::Gone {
                reason: match self.control.agent_ended() {
                    Some(how) => format!("{reason}; {how}"),
                    None => reason,
                },
            },
            other => other,
        };
        MachineError::Agent {
            node: self.name.clone(),
            source,
        }
    }

    fn agent(&self) -> Result<Arc<AgentClient>, MachineError> {
        self.aborted()?;
        let live = || lock(&self.agent).as_ref().filter(|a| a.is_alive()).map(Arc::clone);
        if let Some(a) = live() {
            return Ok(a);
        }
        if !self.control.is_up() {
            self.start()?;
            if let Some(a) = lock(&self.agent).as_ref() {
                return Ok(Arc::clone(a));
            }
        } else {
            // Up without an agent yet: another call (a command posted without waiting for it)
            // may be starting the node; its start holds the lifecycle lock until it connects.
            drop(lock(&self.lifecycle));
            if let Some(a) = live() {
                return Ok(a);
            }
        }
        let reason = lock(&self.agent)
            .as_ref()
            .and_then(|a| a.gone())
            .unwrap_or_else(|| "no connection to the node's agent".into());
        Err(self.agent_err(crate::agent::AgentError::Gone { reason }))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Quote a string for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
