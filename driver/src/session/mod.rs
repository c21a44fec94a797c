//! One test run: machines for the plan's nodes, the script (Python through the bridge, or a
//! Rust closure), the whole-test timeout, teardown of every node at the end, the summary, the
//! output directory and the JUnit report.

mod junit;
mod report;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::bridge::{self, BridgeOptions, ScriptNode, ScriptReport};
use crate::log::Log;
use crate::machine::{Machine, MachineContext, MachineError, NodeControl};
use crate::plan::TestPlan;

pub use junit::render as junit_xml;
pub use report::{Failure, NodeSummary, Outcome, Report, EXIT_BAD_TEST, EXIT_FAILED, EXIT_PASSED, SESSION_ENDED};

/// How a run is done and where its results go.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Logs and copied files go here (created).
    pub output_dir: PathBuf,
    /// Also write a JUnit XML report here.
    pub junit_xml: Option<PathBuf>,
    /// Open a Python REPL instead of running the script.
    pub interactive: bool,
    /// A failing subtest does not stop the script (the run still fails).
    pub keep_going: bool,
    /// The Python interpreter.
    pub python: PathBuf,
    /// Colour on the terminal: `None` = when stderr is a terminal.
    pub color: Option<bool>,
    /// Print nothing on the terminal (files only).
    pub quiet: bool,
    /// How many bytes of each node's console are logged before the rest is dropped.
    pub console_log_max: u64,
    /// When the script fails, keep the nodes running (for `hutch shell`) until the run is
    /// aborted (Ctrl-C, `hutch stop`).
    pub keep_nodes_on_failure: bool,
}

impl SessionOptions {
    /// Defaults: `$HUTCH_PYTHON` or `python3`, colour when on a terminal, no JUnit, output in `output_dir`.
    pub fn new(output_dir: PathBuf) -> SessionOptions {
        SessionOptions {
            output_dir,
            junit_xml: None,
            interactive: false,
            keep_going: false,
            python: std::env::var_os("HUTCH_PYTHON")
                .filter(|p| !p.is_empty())
                .map_or_else(|| "python3".into(), PathBuf::from),
            color: None,
            quiet: false,
            console_log_max: crate::log::DEFAULT_CONSOLE_CAP,
            keep_nodes_on_failure: false,
        }
    }
}

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The output directory or log could not be created.
    #[error("cannot create the output directory {dir}: {source}")]
    Output {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The node controls do not match the plan's nodes.
    #[error("node controls do not match the plan: {0}")]
    Nodes(String),
}

/// Stops a run from another thread (Ctrl-C): waits end, Python is killed, nodes are stopped.
#[derive(Clone)]
pub struct AbortHandle {
    flag: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<String>>>,
}

impl AbortHandle {
    /// Abort the run; the first reason given is the one reported.
    pub fn abort(&self, reason: &str) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        r.get_or_insert_with(|| reason.to_string());
        self.flag.store(true, Ordering::SeqCst);
    }

    fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A test run, ready to go.
pub struct Session {
    plan: TestPlan,
    machines: Vec<Arc<Machine>>,
    log: Arc<Log>,
    abort: AbortHandle,
    opts: SessionOptions,
}

impl Session {
    /// Set up a run of `plan` with one control per node, by node name (any order).
    pub fn new(plan: &TestPlan, mut controls: Vec<(String, Box<dyn NodeControl>)>, opts: SessionOptions) -> Result<Session, SessionError> {
        let out = |source| SessionError::Output {
            dir: opts.output_dir.clone(),
            source,
        };
        let log = if opts.quiet {
            Log::quiet(Some(&opts.output_dir))
        } else {
            Log::new(Some(&opts.output_dir), opts.color)
        }
        .map_err(out)?
        .with_console_cap(opts.console_log_max);
        let log = Arc::new(log);
        // The host directories upstream's driver gives a test: one shared with every node,
        // one of state per node (fresh for each run).
        std::fs::create_dir_all(crate::machine::shared_dir(&opts.output_dir)).map_err(out)?;
        for node in &plan.nodes {
            let dir = crate::machine::state_dir(&opts.output_dir, &node.name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(out)?;
            }
            std::fs::create_dir_all(&dir).map_err(out)?;
        }
        let abort = AbortHandle {
            flag: Arc::new(AtomicBool::new(false)),
            reason: Arc::new(Mutex::new(None)),
        };
        let ctx = MachineContext {
            log: Arc::clone(&log),
            output_dir: opts.output_dir.clone(),
            abort: Arc::clone(&abort.flag),
        };
        let mut machines = Vec::new();
        for node in &plan.nodes {
            let i = controls
                .iter()
                .position(|(n, _)| *n == node.name)
                .ok_or_else(|| SessionError::Nodes(format!("no control for node `{}`", node.name)))?;
            let (_, control) = controls.swap_remove(i);
            machines.push(Arc::new(Machine::new(&node.name, control, ctx.clone())));
        }
        if let Some((extra, _)) = controls.first() {
            return Err(SessionError::Nodes(format!("`{extra}` is not a node of the plan")));
        }
        Ok(Session {
            plan: plan.clone(),
            machines,
            log,
            abort,
            opts,
        })
    }

    /// The machines, in the plan's (alphabetical) order.
    pub fn machines(&self) -> &[Arc<Machine>] {
        &self.machines
    }

    /// The machine for a node name.
    pub fn machine(&self, name: &str) -> Option<&Arc<Machine>> {
        self.machines.iter().find(|m| m.name() == name)
    }

    /// The run's log.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// A handle to abort the run from elsewhere (a Ctrl-C handler).
    pub fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }

    /// Run the plan's Python script through the bridge.
    pub fn run(self) -> Report {
        let nodes: Vec<ScriptNode> = self
            .plan
            .nodes
            .iter()
            .map(|n| ScriptNode {
                name: n.name.clone(),
                python_name: n.python_name.clone(),
            })
            .collect();
        let base_dir = match &self.plan.script.path {
            Some(p) => p.parent().map(|d| d.to_path_buf()),
            None => self.plan.file.parent().map(|d| d.to_path_buf()),
        }
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| ".".into());
        let base_dir = base_dir.canonicalize().unwrap_or(base_dir);
        let bopts = BridgeOptions {
            python: self.opts.python.clone(),
            interactive: self.opts.interactive,
            keep_going: self.opts.keep_going,
            base_dir,
            // Python runs in the script's directory: it gets the output directory absolute.
            output_dir: std::path::absolute(&self.opts.output_dir).unwrap_or_else(|_| self.opts.output_dir.clone()),
            global_timeout: self.plan.timeout,
        };
        let plan = self.plan.clone();
        self.run_with(|s| {
            bridge::run_script(&plan.script, &nodes, &s.machines, &plan.vlans, &s.log, &s.abort.flag, &bopts).unwrap_or_else(|e| {
                ScriptReport {
                    failure: Some(bridge::ScriptFailure {
                        kind: "BridgeError".into(),
                        message: e.to_string(),
                        line: None,
                        traceback: String::new(),
                        call: None,
                    }),
                    ..ScriptReport::default()
                }
            })
        })
    }

    /// Run a test written in Rust against the machines, with the same timeout, teardown and
    /// reports as a Python script.
    pub fn run_rust(self, f: impl FnOnce(&[Arc<Machine>]) -> Result<(), MachineError>) -> Report {
        self.run_with(|s| {
            let t = Instant::now();
            let failure = f(&s.machines).err().map(|e| bridge::ScriptFailure {
                kind: if e.is_assertion() {
                    "RequestedAssertionFailed"
                } else {
                    "Exception"
                }
                .into(),
                message: e.to_string(),
                line: None,
                traceback: String::new(),
                call: Some(bridge::FailedCall {
                    node: Some(e.node().to_string()),
                    method: String::new(),
                    params: String::new(),
                    error: e.to_string(),
                }),
            });
            ScriptReport {
                failure,
                subtests: Vec::new(),
                duration: t.elapsed(),
                script_not_run: false,
            }
        })
    }

    fn run_with(self, body: impl FnOnce(&Session) -> ScriptReport) -> Report {
        let start = Instant::now();
        self.log.info(&format!("test {:?}: {} nodes", self.plan.name, self.machines.len()));
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let watchdog = self.watchdog(Arc::clone(&done));
        // A panic in a Rust test (or in the driver) still ends with every node stopped.
        let script = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&self))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            ScriptReport {
                failure: Some(bridge::ScriptFailure {
                    kind: "panic".into(),
                    message: what,
                    line: None,
                    traceback: String::new(),
                    call: None,
                }),
                ..ScriptReport::default()
            }
        });
        {
            let (m, c) = &*done;
            *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
            c.notify_all();
        }
        let _ = watchdog.join();
        let failed = script.failure.is_some() || script.subtests.iter().any(|t| t.error.is_some());
        if failed && self.opts.keep_nodes_on_failure {
            self.keep_nodes();
            // The Ctrl-C that ended the wait is not why the test failed: the script's failure
            // is reported, with its exit status.
            *self.abort.reason.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.stop_all();
        if self.opts.interactive && self.abort.reason().is_none() {
            self.log.info("interactive session ended; nodes stopped");
        }
        let report = report::build(&self, script, start.elapsed());
        report::finish(&self, &report);
        report
    }

    /// Abort the run when the whole-test timeout passes.
    fn watchdog(&self, done: Arc<(Mutex<bool>, Condvar)>) -> std::thread::JoinHandle<()> {
        let limit = self.plan.timeout;
        let abort = self.abort.clone();
        let machines = self.machines.clone();
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            let (m, c) = &*done;
            let end = Instant::now() + limit;
            let mut finished = m.lock().unwrap_or_else(|p| p.into_inner());
            while !*finished && !abort.flag.load(Ordering::SeqCst) {
                let now = Instant::now();
                if now >= end {
                    abort.abort(&format!("the whole-test timeout of {}s passed", limit.as_secs()));
                    break;
                }
                let wait = (end - now).min(Duration::from_millis(200));
                finished = c.wait_timeout(finished, wait).unwrap_or_else(|p| p.into_inner()).0;
            }
            if !*finished {
                drop(finished);
                log.info(&format!("aborting: {}", abort.reason().unwrap_or_default()));
                // Killing the nodes ends every call still waiting on them, boots included.
                kill_all(&machines, &log, true);
            }
        })
    }

    /// After a failure: say how to get into the nodes, and wait until the run is aborted.
    fn keep_nodes(&self) {
        let up: Vec<&str> = self.machines.iter().filter(|m| m.is_up()).map(|m| m.name()).collect();
        let Some(first) = up.first() else {
            return;
        };
        self.log.info(&format!(
            "the test failed; its nodes are kept running ({}): get in with `hutch shell {first}` \
             (or `hutch exec NODE -- CMD`, `hutch logs NODE`, `hutch list`); press Ctrl-C or run \
             `hutch stop {}` to end",
            up.join(", "),
            self.plan.name
        ));
        while !self.abort.flag.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop every node that still runs the way the NixOS driver ends a test (QEMU is killed,
    /// not shut down: nothing needs a clean stop). What the nodes print from now on stays in
    /// their logs: a passing run ends without their noise on the terminal.
    fn stop_all(&self) {
        self.log.set_serial_stdout(false);
        if self.machines.iter().any(|m| m.is_up()) {
            self.log.info("stopping all nodes");
        }
        kill_all(&self.machines, &self.log, false);
    }
}

/// Kill the running nodes (`all`: every node, also one whose boot is still in progress).
fn kill_all(machines: &[Arc<Machine>], log: &Log, all: bool) {
    std::thread::scope(|s| {
        for m in machines {
            s.spawn(move || {
                if all || m.is_up() {
                    if let Err(e) = m.terminate() {
                        log.node(m.name(), &format!("could not stop the node: {e}"));
                    }
                }
            });
        }
    });
}
