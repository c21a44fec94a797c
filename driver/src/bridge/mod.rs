//! The script bridge: the user's Python test script runs in a `python3` child with a small
//! stdlib-only module (embedded here) that defines the NixOS driver's globals; each call comes
//! back as a line of JSON over a socketpair and is served by the Rust Machine API.

mod dispatch;
mod params;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::log::Log;
use crate::machine::Machine;
use crate::plan::Script;
pub use params::CallError;

/// The Python side, run as `python3 -c`: the plumbing, the Machine classes, the driver and globals.
pub const PYTHON_MODULE: &str = concat!(
    include_str!("hutch_support.py"),
    include_str!("hutch_machine.py"),
    include_str!("hutch_driver.py")
);

/// How to run the script.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// The Python interpreter (default `python3` from PATH).
    pub python: PathBuf,
    /// Open a REPL with the globals instead of running the script (`test_script()` runs it).
    pub interactive: bool,
    /// A failing subtest is recorded and the script goes on.
    pub keep_going: bool,
    /// The script's working directory; relative `copy_from_host` sources start here.
    pub base_dir: PathBuf,
    /// Where `copy_from_machine` writes; given to Python as `$out` like the NixOS driver.
    pub output_dir: PathBuf,
    /// The whole-test timeout, shown to the script as `driver.global_timeout`.
    pub global_timeout: Duration,
}

/// A node as the script sees it.
#[derive(Debug, Clone)]
pub struct ScriptNode {
    /// The node's name.
    pub name: String,
    /// Its variable in the script.
    pub python_name: String,
}

/// What happened while the script ran.
#[derive(Debug, Clone, Default)]
pub struct ScriptReport {
    /// Why the script failed, if it did.
    pub failure: Option<ScriptFailure>,
    /// Subtests in the order they ended.
    pub subtests: Vec<SubtestRecord>,
    /// How long the script ran.
    pub duration: Duration,
    /// An `--interactive` session ended without running the script (`test_script()`).
    pub script_not_run: bool,
}

/// A failed script: the Python exception, where, and the driver call behind it.
#[derive(Debug, Clone)]
pub struct ScriptFailure {
    /// Python's exception type, e.g. `RequestedAssertionFailed`.
    pub kind: String,
    /// Its message.
    pub message: String,
    /// The script line it was raised from.
    pub line: Option<u32>,
    /// Python's traceback.
    pub traceback: String,
    /// The Machine call that failed, when the exception came from one.
    pub call: Option<FailedCall>,
}

/// A Machine call that raised.
#[derive(Debug, Clone)]
pub struct FailedCall {
    /// The node (`None` for global functions such as `start_all`).
    pub node: Option<String>,
    /// The method name.
    pub method: String,
    /// The parameters, as JSON.
    pub params: String,
    /// The error's message (command, status and output included).
    pub error: String,
}

/// One `with subtest(name):` block.
#[derive(Debug, Clone)]
pub struct SubtestRecord {
    /// Its name.
    pub name: String,
    /// How long it ran.
    pub duration: Duration,
    /// The exception that ended it, if any.
    pub error: Option<String>,
    /// Python's traceback for that exception.
    pub traceback: Option<String>,
}

/// The bridge could not run the script at all.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Python could not be started.
    #[error("cannot run {python}: {source}; install python3 or pass its path")]
    Spawn {
        /// The interpreter.
        python: String,
        /// Why.
        source: std::io::Error,
    },
    /// The socketpair to Python could not be made.
    #[error("cannot make the bridge socket: {0}")]
    Socket(std::io::Error),
}

/// Shared by the serving threads of one script run.
pub(crate) struct State {
    pub machines: Vec<Arc<Machine>>,
    by_name: HashMap<String, Arc<Machine>>,
    pub log: Arc<Log>,
    pub base_dir: PathBuf,
    writer: Mutex<UnixStream>,
    failed: Mutex<HashMap<u64, FailedCall>>,
    open_subtests: Mutex<HashMap<String, Instant>>,
    report: Mutex<ScriptReport>,
    keep_going: bool,
    /// The calls being served, by request id: set to cancel one (`crate::cancel`).
    in_flight: Mutex<HashMap<u64, Arc<AtomicBool>>>,
}

#[derive(Deserialize)]
struct Request {
    id: u64,
    node: Option<String>,
    method: String,
    #[serde(default)]
    params: Map<String, Value>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run the script to its end (or until `abort` is set, which kills Python) and report.
pub fn run_script(
    script: &Script,
    nodes: &[ScriptNode],
    machines: &[Arc<Machine>],
    vlans: &[u8],
    log: &Arc<Log>,
    abort: &Arc<AtomicBool>,
    opts: &BridgeOptions,
) -> Result<ScriptReport, BridgeError> {
    let start = Instant::now();
    let (ours, theirs) = UnixStream::pair().map_err(BridgeError::Socket)?;
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(&opts.python);
    cmd.args(["-u", "-c", PYTHON_MODULE])
        .env("HUTCH_BRIDGE_FD", fd.to_string())
        .env("out", &opts.output_dir)
        .current_dir(&opts.base_dir);
    let parent = std::process::id() as libc::pid_t;
    let interactive = opts.interactive;
    // SAFETY: between fork and exec the closure only calls fcntl(2), prctl(2), getppid(2),
    // sigemptyset(3), sigaddset(3) and pthread_sigmask(3), which are async-signal-safe: Python
    // inherits its end of the socketpair, and gets SIGTERM when the thread that started it
    // (the one that waits for it below) ends, i.e. when hutch dies; if hutch already died
    // before the prctl, Python does not start. hutch blocks SIGINT and SIGTERM for its watcher
    // thread (and exec keeps a blocked mask): Python gets SIGTERM unblocked, and SIGINT too
    // in a REPL (Ctrl-C is its KeyboardInterrupt); a script's Ctrl-C is hutch's (an abort).
    unsafe {
        cmd.pre_exec(move || {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut mask);
            if !interactive {
                libc::sigaddset(&mut mask, libc::SIGINT);
            }
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0
                || libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("hutch ended before the script started"));
            }
            Ok(())
        });
    }
    // The REPL's line editor changes the terminal's settings; Python killed at the prompt
    // (an abort) cannot give them back, so hutch does.
    let terminal = if opts.interactive { crate::terminal::Saved::stdin() } else { None };
    let mut child = cmd.spawn().map_err(|source| BridgeError::Spawn {
        python: opts.python.display().to_string(),
        source,
    })?;
    drop(theirs);
    let writer = ours.try_clone().map_err(BridgeError::Socket)?;
    let by_name = machines.iter().map(|m| (m.name().to_string(), Arc::clone(m))).collect();
    let state = Arc::new(State {
        machines: machines.to_vec(),
        by_name,
        log: Arc::clone(log),
        base_dir: opts.base_dir.clone(),
        writer: Mutex::new(writer),
        failed: Mutex::new(HashMap::new()),
        open_subtests: Mutex::new(HashMap::new()),
        report: Mutex::new(ScriptReport::default()),
        keep_going: opts.keep_going,
        in_flight: Mutex::new(HashMap::new()),
    });
    let hello = json!({
        "nodes": nodes.iter().map(|n| json!({
            "name": n.name,
            "python_name": n.python_name,
            "state_dir": crate::machine::state_dir(&opts.output_dir, &n.name),
        })).collect::<Vec<_>>(),
        "vlans": vlans,
        "out_dir": opts.output_dir,
        "shared_dir": crate::machine::shared_dir(&opts.output_dir),
        "global_timeout": opts.global_timeout.as_secs_f64(),
        "script": {"source": script.source, "filename": script.filename},
        "interactive": opts.interactive,
    });
    let pid = child.id() as libc::pid_t;
    // Kills Python when the run is aborted; dropping `stop` ends it at once.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let watcher = {
        let abort = Arc::clone(abort);
        std::thread::spawn(move || loop {
            if abort.load(Ordering::Relaxed) {
                // SAFETY: kill the Python child we spawned (not yet reaped: we wait below).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return;
            }
            match stopped.recv_timeout(Duration::from_millis(50)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        })
    };
    let mut done = false;
    for line in BufReader::new(ours).lines() {
        let Ok(line) = line else { break };
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                log.info(&format!("bridge: unreadable request from Python: {e}"));
                continue;
            }
        };
        match (req.node.as_deref(), req.method.as_str()) {
            (None, "hello") => answer(&state, req.id, Ok(hello.clone())),
            (None, "script_done") => {
                done = true;
                answer(&state, req.id, Ok(Value::Null));
            }
            (None, "session_ended") => {
                lock(&state.report).script_not_run = true;
                done = true;
                answer(&state, req.id, Ok(Value::Null));
            }
            (None, "script_failed") => {
                record_failure(&state, &req.params);
                done = true;
                answer(&state, req.id, Ok(Value::Null));
            }
            (None, "subtest_start") => subtest_start(&state, &req),
            (None, "subtest_end") => subtest_end(&state, &req),
            // Python stopped waiting for a call (Ctrl-C): answered once the call has ended.
            (None, "cancel") => {
                let s = Arc::clone(&state);
                std::thread::spawn(move || cancel(&s, &req));
            }
            _ => {
                let token = Arc::new(AtomicBool::new(false));
                lock(&state.in_flight).insert(req.id, Arc::clone(&token));
                let s = Arc::clone(&state);
                std::thread::spawn(move || {
                    let id = req.id;
                    crate::cancel::scope(token, || serve(&s, req));
                    lock(&s.in_flight).remove(&id);
                });
            }
        }
    }
    let status = child.wait();
    drop(terminal);
    drop(stop);
    let _ = watcher.join();
    let mut report = lock(&state.report).clone();
    report.duration = start.elapsed();
    if !done && report.failure.is_none() {
        let how = match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        report.failure = Some(ScriptFailure {
            kind: "Exited".into(),
            message: format!("python3 ended ({how}) before the script finished"),
            line: None,
            traceback: String::new(),
            call: None,
        });
    }
    Ok(report)
}

fn answer(state: &State, id: u64, r: Result<Value, CallError>) {
    let msg = match r {
        Ok(v) => json!({"id": id, "ok": v}),
        Err(e) => json!({"id": id, "error": {"type": e.kind, "message": e.message}}),
    };
    // One write per reply: the bridge's reader wakes up once, not per JSON token.
    let line = format!("{msg}\n");
    let _ = lock(&state.writer).write_all(line.as_bytes());
}

/// Serve one Machine or global call (on its own thread: calls may block for minutes).
fn serve(state: &State, req: Request) {
    let p = params::Params {
        method: &req.method,
        map: &req.params,
    };
    let r = match req.node.as_deref() {
        None => dispatch::global(state, &req.method, &p),
        Some(n) => match state.by_name.get(n) {
            Some(m) => dispatch::machine(state, m, &req.method, &p),
            None => Err(CallError {
                kind: "AttributeError",
                message: format!("there is no node `{n}` in this test"),
            }),
        },
    };
    if let Err(e) = &r {
        lock(&state.failed).insert(
            req.id,
            FailedCall {
                node: req.node.clone(),
                method: req.method.clone(),
                params: Value::Object(req.params.clone()).to_string(),
                error: e.message.clone(),
            },
        );
    }
    answer(state, req.id, r);
}

/// Cancels the call `call` names (`crate::cancel`) and answers once its serving thread has
/// ended (a few seconds at most): the command it ran in a node is gone by then.
fn cancel(state: &State, req: &Request) {
    let call = req.params.get("call").and_then(Value::as_u64).unwrap_or(0);
    if let Some(token) = lock(&state.in_flight).get(&call) {
        token.store(true, Ordering::SeqCst);
    }
    let end = Instant::now() + Duration::from_secs(15);
    while lock(&state.in_flight).contains_key(&call) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    answer(state, req.id, Ok(Value::Null));
}

fn record_failure(state: &State, p: &Map<String, Value>) {
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let call = p
        .get("call")
        .and_then(Value::as_u64)
        .and_then(|id| lock(&state.failed).get(&id).cloned());
    let failure = ScriptFailure {
        kind: s("type"),
        message: s("message"),
        line: p.get("line").and_then(Value::as_u64).map(|l| l as u32),
        traceback: s("traceback"),
        call,
    };
    lock(&state.report).failure = Some(failure);
}

fn subtest_start(state: &State, req: &Request) {
    let name = req.params.get("name").and_then(Value::as_str).unwrap_or("").to_string();
    state.log.info(&format!("subtest: {name}"));
    lock(&state.open_subtests).insert(name, Instant::now());
    answer(state, req.id, Ok(Value::Null));
}

fn subtest_end(state: &State, req: &Request) {
    let get = |k: &str| req.params.get(k).and_then(Value::as_str).map(str::to_string);
    let name = get("name").unwrap_or_default();
    let started = lock(&state.open_subtests).remove(&name);
    let duration = started.map(|t| t.elapsed()).unwrap_or_default();
    let error = get("error");
    match &error {
        Some(e) => state
            .log
            .info(&format!("subtest {name:?} failed after {:.3}s: {e}", duration.as_secs_f64())),
        None => state
            .log
            .info(&format!("subtest {name:?} passed in {:.3}s", duration.as_secs_f64())),
    }
    lock(&state.report).subtests.push(SubtestRecord {
        name,
        duration,
        error,
        traceback: get("traceback"),
    });
    answer(state, req.id, Ok(json!(state.keep_going)));
}
