//! The agent: a small server inside every node (all its namespaces) that runs commands and moves
//! files for the driver, and the driver-side client. Typed messages, one length-prefixed JSON
//! frame each (`frame`), many requests in flight at once, matched by id.

mod client;
mod command;
mod exec;
pub(crate) mod files;
mod frame;
mod login;
mod pidns;
mod probe;
mod pty;
mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use client::{AgentClient, AgentError};
pub use frame::{blob, read_frame, write_frame, MAX_FRAME};
pub use server::{agent_main, serve};

/// How many bytes of each output stream the agent keeps; the rest is counted and dropped.
pub const OUTPUT_CAP: usize = 16 << 20;
/// The largest file (or file tree) moved in one request.
pub const FILE_CAP: u64 = 128 << 20;

/// A request or reply with the id that pairs them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Chosen by the client, echoed in the reply.
    pub id: u64,
    /// The message.
    pub body: T,
}

/// What the driver asks of a node's agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentRequest {
    /// Is the agent there? Answered with `Pong`.
    Ping,
    /// Run a command to completion (or its timeout); answered with `Ran`.
    Run(RunRequest),
    /// Run a command as `Run` does, its output sent as it comes: zero or more `Output`
    /// replies, then `Ran` (whose stdout and stderr are empty: nothing is kept).
    RunStreamed(RunRequest),
    /// Read a whole file; answered with `File`.
    ReadFile {
        /// Absolute path in the node.
        path: String,
    },
    /// Write a whole file (created or truncated); answered with `Done`.
    WriteFile {
        /// Absolute path in the node.
        path: String,
        /// The contents.
        #[serde(with = "frame::blob")]
        data: Vec<u8>,
        /// Permission bits (default 0644).
        mode: Option<u32>,
        /// Create missing parent directories.
        make_parents: bool,
    },
    /// Read a file or a directory tree; answered with `Tree`.
    ReadTree {
        /// Absolute path in the node.
        path: String,
    },
    /// Create a file or directory tree at `path` (parents made as needed); answered with `Done`.
    WriteTree {
        /// Absolute path in the node; entry "" is this path itself.
        path: String,
        /// Parents before children.
        entries: Vec<TreeEntry>,
    },
    /// Can a TCP connection be made from inside the node? Answered with `Probe`.
    ProbeTcp {
        /// An address, `localhost`, or a name listed in the node's /etc/hosts.
        host: String,
        /// The port.
        port: u16,
    },
    /// Does a Unix socket accept connections? Answered with `Probe`.
    ProbeUnix {
        /// Socket path in the node.
        path: String,
        /// A datagram socket rather than a stream socket.
        datagram: bool,
    },
    /// Start a program (a login shell when `command` is empty) on a fresh pty in the node,
    /// for `hutch shell`; answered with `PtyOpened`.
    PtyOpen {
        /// The program and its arguments; empty: root's login shell.
        command: Vec<String>,
        /// `TERM` for it.
        term: String,
        /// Window rows.
        rows: u16,
        /// Window columns.
        cols: u16,
    },
    /// Type into a session's terminal; answered with `Done`.
    PtyInput {
        /// From `PtyOpened`.
        session: u64,
        /// The bytes.
        #[serde(with = "frame::blob")]
        data: Vec<u8>,
    },
    /// What the session's terminal printed (waits a few seconds for it); answered with
    /// `PtyOutput`.
    PtyOutput {
        /// From `PtyOpened`.
        session: u64,
    },
    /// Set a session's window size; answered with `Done`.
    PtyResize {
        /// From `PtyOpened`.
        session: u64,
        /// Window rows.
        rows: u16,
        /// Window columns.
        cols: u16,
    },
    /// Hang up a session (SIGHUP to its process group); answered with `Done`.
    PtyClose {
        /// From `PtyOpened`.
        session: u64,
    },
    /// Kill the command a `Run` or `RunStreamed` request started (its whole process group):
    /// the driver no longer waits for it (Ctrl-C in `--interactive`, a `hutch exec` whose user
    /// went away). Answered with `Done` once the command is gone, and the request with the
    /// command's end as usual.
    Cancel {
        /// The request's id.
        request: u64,
    },
}

/// A command for the agent to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    /// What to run.
    pub command: Command,
    /// Added to (and overriding) the login environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Bytes fed to the command's standard input, which is then closed.
    #[serde(default, with = "frame::blob")]
    pub stdin: Vec<u8>,
    /// Kill the command's process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Working directory (default /tmp, like the NixOS driver's backdoor shell).
    pub cwd: Option<String>,
}

/// A program and its arguments, or a shell command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Exec directly, found through the login PATH.
    Argv(Vec<String>),
    /// Run by bash (`source /etc/profile; set -euo pipefail`) where bash exists, else sh.
    Shell(String),
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentReply {
    /// Answer to `Ping`.
    Pong {
        /// The agent's pid as its runtime sees it (it has none in the node: see runtime/src/agent.rs).
        pid: u32,
        /// The driver crate version that built the agent.
        version: String,
    },
    /// A finished (or timed-out) command.
    Ran(RunResult),
    /// What a `RunStreamed` command just printed; more replies to the same request follow.
    Output {
        /// Which of its streams.
        stream: Stream,
        /// The bytes.
        #[serde(with = "frame::blob")]
        data: Vec<u8>,
    },
    /// A file's contents.
    File {
        /// The contents.
        #[serde(with = "frame::blob")]
        data: Vec<u8>,
    },
    /// A file or directory tree, parents first.
    Tree {
        /// The entries; "" is the requested path itself.
        entries: Vec<TreeEntry>,
    },
    /// The request was carried out.
    Done,
    /// The result of a probe.
    Probe {
        /// The connection was accepted.
        open: bool,
        /// The host name could not be resolved inside the agent (no /etc/hosts entry).
        unresolved: bool,
    },
    /// A terminal session started.
    PtyOpened {
        /// Names it in the other `Pty*` requests.
        session: u64,
    },
    /// What a session's terminal printed; empty data when nothing came in time.
    PtyOutput {
        /// The bytes.
        #[serde(with = "frame::blob")]
        data: Vec<u8>,
        /// The program ended (and nothing is left to read): how. The session is gone.
        ended: Option<ExitStatus>,
    },
    /// The request failed; the message says what and why.
    Error {
        /// E.g. "reading /etc/x: No such file or directory (os error 2)".
        message: String,
    },
}

impl AgentReply {
    /// A reply that is not the last one to its request (see `AgentRequest::RunStreamed`).
    pub fn is_partial(&self) -> bool {
        matches!(self, AgentReply::Output { .. })
    }
}

/// A command's output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a command ended and what it printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Exit code or killing signal.
    pub status: ExitStatus,
    /// Standard output (at most `OUTPUT_CAP` bytes, then a truncation marker).
    #[serde(with = "frame::blob")]
    pub stdout: Vec<u8>,
    /// Standard error (same bound).
    #[serde(with = "frame::blob")]
    pub stderr: Vec<u8>,
    /// Bytes of stdout dropped beyond the cap.
    pub stdout_dropped: u64,
    /// Bytes of stderr dropped beyond the cap.
    pub stderr_dropped: u64,
    /// The timeout expired and the command's process group was killed.
    pub timed_out: bool,
    /// The command exited but something it started kept its output open; reading stopped.
    pub output_left_open: bool,
    /// Wall time from spawn to exit, in microseconds.
    pub micros: u64,
}

/// The end of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// `exit(n)`.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// The shell's `$?` for this status: the code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }

    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// One file, directory or symlink of a tree moved between host and node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Relative to the tree's root; "" is the root.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// What it is.
    pub kind: EntryKind,
}

/// The kind of a tree entry, with its contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// The contents.
        #[serde(with = "frame::blob")]
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: String,
    },
}
