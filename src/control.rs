//! The control socket of a running test: `hutch list`, `exec` and `stop` in another terminal
//! ask the test's process, which answers through the machines it already drives (their
//! agents), so nothing ever enters a node from outside (no nsenter; the agent stays the only
//! way in).
//!
//! One request and one reply per connection, each one frame (the agent's framing). Only the
//! user who runs the test gets here: the socket lives in a 0700 directory of theirs
//! (`registry`), and the server checks the peer's uid (SO_PEERCRED) against its own.

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hutch_driver::agent::{read_frame, write_frame, ExitStatus, Stream};
use hutch_driver::machine::Machine;
use hutch_driver::session::AbortHandle;
use serde::{Deserialize, Serialize};

use crate::node::RuntimeNode;

/// What another hutch asks of a running test.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// The test's nodes; answered with `Nodes`.
    List,
    /// Run a program in a node; answered with `Output` replies as it prints, then `Ran`.
    Exec {
        /// The node's name.
        node: String,
        /// The program and its arguments.
        argv: Vec<String>,
        /// Fed to its standard input, which is then closed.
        stdin: Vec<u8>,
    },
    /// A program (a login shell when `command` is empty) on a fresh pty in a node; answered
    /// with `Done`, then the connection carries `ShellInput` up and `ShellEvent` down.
    Shell {
        /// The node's name.
        node: String,
        /// The program and its arguments; empty: root's login shell.
        command: Vec<String>,
        /// The user's `TERM`.
        term: String,
        /// Window rows.
        rows: u16,
        /// Window columns.
        cols: u16,
    },
    /// Stop one node (`Some`) or the whole test (`None`); answered with `Done`.
    Stop {
        /// The node's name.
        node: Option<String>,
    },
}

/// One node of a running test, as `hutch list` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeRow {
    /// The node's name.
    pub name: String,
    /// `up` (its agent answers), `starting` or `down`.
    pub state: String,
    /// Host pid of the node's PID 1 while it runs.
    pub pid: Option<u32>,
    /// Seconds since the node last came up.
    pub uptime_secs: Option<u64>,
    /// Its IPv4 addresses with prefix lengths.
    pub addresses: Vec<String>,
}

/// The running test's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlReply {
    /// Answer to `List`.
    Nodes {
        /// In the test's (alphabetical) order.
        nodes: Vec<NodeRow>,
    },
    /// What a running `Exec` just printed; more replies follow.
    Output {
        /// Which of its streams.
        stream: Stream,
        /// The bytes.
        #[serde(with = "hutch_driver::agent::blob")]
        data: Vec<u8>,
    },
    /// A finished `Exec` (its output came in `Output` replies).
    Ran {
        /// How the program ended.
        status: ExitStatus,
    },
    /// Done.
    Done,
    /// The request failed; says why.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// What `hutch shell` sends once its session runs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ShellInput {
    /// Keystrokes.
    Data {
        /// The bytes.
        data: Vec<u8>,
    },
    /// The user's window changed size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// What a running shell session sends to `hutch shell`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ShellEvent {
    /// What the terminal printed.
    Output {
        /// The bytes.
        data: Vec<u8>,
    },
    /// The program ended; the connection closes after this.
    Exited {
        /// How.
        status: ExitStatus,
    },
}

/// A node the control socket can reach: the test's machine and the runtime's node under it.
pub struct Reachable {
    /// The machine (its agent connection).
    pub machine: Arc<Machine>,
    /// The runtime's node (its pid).
    pub node: Arc<RuntimeNode>,
    /// Its addresses.
    pub addresses: Vec<String>,
}

/// Serves the control socket at `path` on a thread of its own, until the process ends.
pub fn serve(path: &Path, nodes: Vec<Reachable>, abort: AbortHandle) -> Result<()> {
    let listener = UnixListener::bind(path).with_context(|| format!("binding the control socket {}", path.display()))?;
    let nodes = Arc::new(nodes);
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let nodes = Arc::clone(&nodes);
                let abort = abort.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || answer(stream, &nodes, &abort));
            }
        })
        .context("starting the control thread")?;
    Ok(())
}

/// Reads one request, checks who sent it, and writes the reply.
fn answer(mut stream: UnixStream, nodes: &[Reachable], abort: &AbortHandle) {
    let me = nix::unistd::geteuid().as_raw();
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
    if !matches!(peer, Ok(c) if c.uid() == me) {
        return;
    }
    let Ok(Some(frame)) = read_frame(&mut stream) else {
        return;
    };
    let reply = match serde_json::from_slice::<ControlRequest>(&frame) {
        Ok(ControlRequest::Shell {
            node,
            command,
            term,
            rows,
            cols,
        }) => {
            let Some(agent) = nodes
                .iter()
                .find(|n| n.machine.name() == node)
                .and_then(|n| n.machine.attached_agent())
            else {
                let message = format!("node `{node}` is not in this test or not running");
                let _ = write_frame(&mut stream, &ControlReply::Error { message });
                return;
            };
            return crate::shell_cmd::serve_session(stream, &agent, command, term, rows, cols);
        }
        Ok(ControlRequest::Exec { node, argv, stdin }) => exec(&mut stream, nodes, &node, argv, stdin),
        Ok(req) => handle(req, nodes, abort),
        Err(e) => ControlReply::Error {
            message: format!("bad request: {e}"),
        },
    };
    let _ = write_frame(&mut stream, &reply);
}

/// The node named `name`, or the error reply that lists the test's nodes.
fn find<'a>(nodes: &'a [Reachable], name: &str) -> Result<&'a Reachable, ControlReply> {
    nodes.iter().find(|n| n.machine.name() == name).ok_or_else(|| ControlReply::Error {
        message: format!(
            "no node `{name}` in this test (its nodes: {})",
            nodes.iter().map(|n| n.machine.name()).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Runs `argv` in `node`, its output sent as `Output` replies as it comes; returns the last
/// reply. When `hutch exec` goes away (Ctrl-C), the command is killed.
fn exec(stream: &mut UnixStream, nodes: &[Reachable], node: &str, argv: Vec<String>, stdin: Vec<u8>) -> ControlReply {
    let n = match find(nodes, node) {
        Ok(n) => n,
        Err(e) => return e,
    };
    if !n.machine.is_ready() {
        let what = if n.machine.is_up() { "still starting" } else { "not running" };
        return ControlReply::Error {
            message: format!("node `{node}` is {what}"),
        };
    }
    let gone = Arc::new(AtomicBool::new(false));
    let watcher = hang_up_watch(stream, &gone);
    let mut output = |s: Stream, data: &[u8]| {
        let _ = write_frame(
            &mut *stream,
            &ControlReply::Output {
                stream: s,
                data: data.to_vec(),
            },
        );
    };
    // The user going away (Ctrl-C on `hutch exec`) cancels the call: the agent kills it.
    let ran = hutch_driver::cancel::scope(Arc::clone(&gone), || n.machine.exec_argv(argv, stdin, &mut output));
    // The watcher reads end-of-file now and ends.
    let _ = stream.shutdown(std::net::Shutdown::Read);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    match ran {
        Ok(r) => ControlReply::Ran { status: r.status },
        Err(e) => ControlReply::Error { message: e.to_string() },
    }
}

/// Sets `gone` once the other end of `stream` hangs up (it sends nothing after its request).
fn hang_up_watch(stream: &UnixStream, gone: &Arc<AtomicBool>) -> Option<std::thread::JoinHandle<()>> {
    let mut reader = stream.try_clone().ok()?;
    let gone = Arc::clone(gone);
    std::thread::Builder::new()
        .name("control-hangup".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            while matches!(reader.read(&mut byte), Ok(1..)) {}
            gone.store(true, Ordering::Relaxed);
        })
        .ok()
}

fn handle(req: ControlRequest, nodes: &[Reachable], abort: &AbortHandle) -> ControlReply {
    let find = |name: &str| find(nodes, name);
    match req {
        ControlRequest::List => ControlReply::Nodes {
            nodes: nodes.iter().map(row).collect(),
        },
        ControlRequest::Stop { node: Some(node) } => match find(&node) {
            Ok(n) => match n.machine.terminate() {
                Ok(()) => ControlReply::Done,
                Err(e) => ControlReply::Error { message: e.to_string() },
            },
            Err(e) => e,
        },
        ControlRequest::Shell { .. } | ControlRequest::Exec { .. } => ControlReply::Error {
            message: "a shell or exec request is answered as it runs".into(),
        },
        ControlRequest::Stop { node: None } => {
            abort.abort("stopped by `hutch stop`");
            ControlReply::Done
        }
    }
}

fn row(n: &Reachable) -> NodeRow {
    let up = n.machine.is_up();
    let state = match (up, n.machine.is_ready()) {
        (true, true) => "up",
        (true, false) => "starting",
        _ => "down",
    };
    NodeRow {
        name: n.machine.name().to_string(),
        state: state.into(),
        pid: if up { n.node.pid() } else { None },
        uptime_secs: if up {
            n.node.up_since().map(|t| Instant::now().duration_since(t).as_secs())
        } else {
            None
        },
        addresses: n.addresses.clone(),
    }
}

/// Sends `req` to the test whose control socket is `socket` and returns its reply.
pub fn ask(socket: &Path, req: &ControlRequest) -> Result<ControlReply> {
    let (reply, mut stream) = open(socket, req)?;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(reply)
}

/// Sends `req` and returns the reply with the connection (a shell session goes on over it).
pub fn open(socket: &Path, req: &ControlRequest) -> Result<(ControlReply, UnixStream)> {
    let mut stream = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    write_frame(&mut stream, req).context("sending the request")?;
    let Some(frame) = read_frame(&mut stream).context("reading the reply")? else {
        bail!("the test closed the connection without answering");
    };
    let reply = serde_json::from_slice(&frame).context("the test's reply")?;
    Ok((reply, stream))
}
