//! The driver's side of an agent connection: any number of threads send requests at once over
//! one socket; a reader thread hands each reply to the thread waiting for its id.

use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::frame::{decode, read_frame, write_frame};
use super::{AgentReply, AgentRequest, Envelope, RunRequest, RunResult, Stream, TreeEntry};

/// Why a request to the agent got no answer, or an error answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The connection is closed: the node stopped, crashed or was never started.
    #[error("the node's agent is gone ({reason}); the node has stopped or crashed")]
    Gone {
        /// What ended the connection.
        reason: String,
    },
    /// No reply within the client-side limit (the agent or the node is stuck).
    #[error("the node's agent did not answer within {}s", .after.as_secs_f64())]
    NoReply {
        /// The limit that passed.
        after: Duration,
    },
    /// The agent carried out the request and reports that it failed.
    #[error("{0}")]
    Remote(String),
    /// The script call this request served was cancelled (Ctrl-C in `--interactive`, see
    /// `crate::cancel`); a command it started was killed.
    #[error("cancelled (interrupted from the script)")]
    Cancelled,
    /// The agent answered with a reply of the wrong kind.
    #[error("the agent answered {got} to a {asked} request; driver and agent disagree on the protocol")]
    Protocol {
        /// The request's kind.
        asked: &'static str,
        /// The reply received.
        got: String,
    },
}

type Waiters = HashMap<u64, mpsc::Sender<AgentReply>>;

/// How often a waiting request looks whether its script call was cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

struct Shared {
    writer: Mutex<UnixStream>,
    /// Waiting requests, or why the connection is gone.
    pending: Mutex<Result<Waiters, String>>,
    next_id: AtomicU64,
}

/// A connection to one node's agent; share it between threads by reference or `Arc`.
pub struct AgentClient {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
}

impl AgentClient {
    /// Take over a connected socket and start the reader thread.
    pub fn new(stream: UnixStream) -> io::Result<AgentClient> {
        let read_half = stream.try_clone()?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream),
            pending: Mutex::new(Ok(HashMap::new())),
            next_id: AtomicU64::new(1),
        });
        let s = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("agent-client".into())
            .spawn(move || read_replies(read_half, &s))?;
        Ok(AgentClient {
            shared,
            reader: Some(reader),
        })
    }

    /// Whether the connection is still open.
    pub fn is_alive(&self) -> bool {
        lock(&self.shared.pending).is_ok()
    }

    /// Why the connection ended, once it has.
    pub fn gone(&self) -> Option<String> {
        lock(&self.shared.pending).as_ref().err().cloned()
    }

    /// Send a request and wait for its reply (at most `limit`, when given).
    pub fn call(&self, body: AgentRequest, limit: Option<Duration>) -> Result<AgentReply, AgentError> {
        self.call_with(body, limit, &mut |_| {})
    }

    /// Send a request, hand each partial reply (`AgentReply::is_partial`) to `partial` as it
    /// comes, and return the last one (all within `limit`, when given).
    fn call_with(
        &self,
        body: AgentRequest,
        limit: Option<Duration>,
        partial: &mut dyn FnMut(AgentReply),
    ) -> Result<AgentReply, AgentError> {
        if crate::cancel::requested() {
            return Err(AgentError::Cancelled);
        }
        self.exchange(body, limit, partial)
    }

    /// `call_with` without the cancellation check at the start (the cancel itself uses it).
    fn exchange(&self, body: AgentRequest, limit: Option<Duration>, partial: &mut dyn FnMut(AgentReply)) -> Result<AgentReply, AgentError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        match &mut *lock(&self.shared.pending) {
            Ok(w) => {
                w.insert(id, tx);
            }
            Err(reason) => return Err(AgentError::Gone { reason: reason.clone() }),
        }
        let sent = write_frame(&mut *lock(&self.shared.writer), &Envelope { id, body });
        if let Err(e) = sent {
            let reason = format!("sending failed: {e}");
            mark_gone(&self.shared, reason.clone());
            return Err(AgentError::Gone { reason });
        }
        let got = self.wait_reply(id, &rx, limit, partial);
        match got {
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => {
                self.forget(id);
                Err(AgentError::NoReply {
                    after: limit.unwrap_or_default(),
                })
            }
            Err(RecvTimeoutError::Disconnected) if crate::cancel::requested() => Err(AgentError::Cancelled),
            Err(RecvTimeoutError::Disconnected) => Err(AgentError::Gone {
                reason: lock(&self.shared.pending)
                    .as_ref()
                    .err()
                    .cloned()
                    .unwrap_or_else(|| "connection closed".into()),
            }),
        }
    }

    /// Waits for request `id`'s reply (at most `limit`). Once this thread's script call is
    /// cancelled, it asks the agent to kill the request's command (and waits until it is
    /// gone), stops waiting, and reports the wait as disconnected.
    fn wait_reply(
        &self,
        id: u64,
        rx: &mpsc::Receiver<AgentReply>,
        limit: Option<Duration>,
        partial: &mut dyn FnMut(AgentReply),
    ) -> Result<AgentReply, RecvTimeoutError> {
        let end = limit.map(|l| Instant::now() + l);
        loop {
            let step = match end {
                Some(end) => end.saturating_duration_since(Instant::now()).min(CANCEL_CHECK),
                None => CANCEL_CHECK,
            };
            match rx.recv_timeout(step) {
                Ok(reply) if reply.is_partial() => partial(reply),
                Err(RecvTimeoutError::Timeout) if end.is_none_or(|e| Instant::now() < e) => {}
                other => return other,
            }
            if crate::cancel::requested() {
                self.forget(id);
                let _ = self.exchange(AgentRequest::Cancel { request: id }, Some(Duration::from_secs(10)), &mut |_| {});
                return Err(RecvTimeoutError::Disconnected);
            }
        }
    }

    /// Stops waiting for request `id`: a late reply is dropped.
    fn forget(&self, id: u64) {
        if let Ok(w) = &mut *lock(&self.shared.pending) {
            w.remove(&id);
        }
    }

    /// Round trip to the agent; returns how long it took.
    pub fn ping(&self, limit: Duration) -> Result<Duration, AgentError> {
        let t = Instant::now();
        match self.call(AgentRequest::Ping, Some(limit))? {
            AgentReply::Pong { .. } => Ok(t.elapsed()),
            other => Err(unexpected("ping", other)),
        }
    }

    /// Run a command. The agent enforces `req.timeout_ms`; the client waits that long plus a
    /// margin before giving up on a stuck node.
    pub fn run(&self, req: RunRequest) -> Result<RunResult, AgentError> {
        let limit = req.timeout_ms.map(|ms| Duration::from_millis(ms) + Duration::from_secs(30));
        match self.call(AgentRequest::Run(req), limit)? {
            AgentReply::Ran(r) => Ok(r),
            other => Err(unexpected("run", other)),
        }
    }

    /// Run a command as [`AgentClient::run`] does, handing its output to `output` as it
    /// comes (the result keeps none of it); a cancelled call (`crate::cancel`) kills it.
    pub fn run_streamed(&self, req: RunRequest, output: &mut dyn FnMut(Stream, &[u8])) -> Result<RunResult, AgentError> {
        let limit = req.timeout_ms.map(|ms| Duration::from_millis(ms) + Duration::from_secs(30));
        let mut partial = |reply: AgentReply| {
            if let AgentReply::Output { stream, data } = reply {
                output(stream, &data);
            }
        };
        match self.call_with(AgentRequest::RunStreamed(req), limit, &mut partial)? {
            AgentReply::Ran(r) => Ok(r),
            other => Err(unexpected("run_streamed", other)),
        }
    }

    /// Read a whole file from the node.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        let path = path.to_string();
        match self.call(AgentRequest::ReadFile { path }, None)? {
            AgentReply::File { data } => Ok(data),
            other => Err(unexpected("read_file", other)),
        }
    }

    /// Write a whole file in the node (parents created), with `mode` (default 0644).
    pub fn write_file(&self, path: &str, data: Vec<u8>, mode: Option<u32>) -> Result<(), AgentError> {
        let req = AgentRequest::WriteFile {
            path: path.into(),
            data,
            mode,
            make_parents: true,
        };
        match self.call(req, None)? {
            AgentReply::Done => Ok(()),
            other => Err(unexpected("write_file", other)),
        }
    }

    /// Read a file or directory tree from the node.
    pub fn read_tree(&self, path: &str) -> Result<Vec<TreeEntry>, AgentError> {
        match self.call(AgentRequest::ReadTree { path: path.into() }, None)? {
            AgentReply::Tree { entries } => Ok(entries),
            other => Err(unexpected("read_tree", other)),
        }
    }

    /// Create a file or directory tree in the node at `path`.
    pub fn write_tree(&self, path: &str, entries: Vec<TreeEntry>) -> Result<(), AgentError> {
        match self.call(
            AgentRequest::WriteTree {
                path: path.into(),
                entries,
            },
            None,
        )? {
            AgentReply::Done => Ok(()),
            other => Err(unexpected("write_tree", other)),
        }
    }

    /// Probe a TCP port from inside the node: `Some(open)`, or `None` when the agent cannot
    /// resolve `host` by itself (no /etc/hosts entry).
    pub fn probe_tcp(&self, host: &str, port: u16) -> Result<Option<bool>, AgentError> {
        let req = AgentRequest::ProbeTcp { host: host.into(), port };
        match self.call(req, Some(Duration::from_secs(60)))? {
            AgentReply::Probe { unresolved: true, .. } => Ok(None),
            AgentReply::Probe { open, .. } => Ok(Some(open)),
            other => Err(unexpected("probe_tcp", other)),
        }
    }

    /// Whether a Unix socket in the node accepts connections.
    pub fn probe_unix(&self, path: &str, datagram: bool) -> Result<bool, AgentError> {
        let req = AgentRequest::ProbeUnix {
            path: path.into(),
            datagram,
        };
        match self.call(req, Some(Duration::from_secs(60)))? {
            AgentReply::Probe { open, .. } => Ok(open),
            other => Err(unexpected("probe_unix", other)),
        }
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        let _ = lock(&self.shared.writer).shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn unexpected(asked: &'static str, got: AgentReply) -> AgentError {
    match got {
        AgentReply::Error { message } => AgentError::Remote(message),
        other => AgentError::Protocol {
            asked,
            got: format!("{other:?}").chars().take(120).collect(),
        },
    }
}

/// Fail every waiting request: dropping the senders wakes their receivers.
fn mark_gone(shared: &Shared, reason: String) {
    let mut p = lock(&shared.pending);
    if p.is_ok() {
        *p = Err(reason);
    }
}

fn read_replies(stream: UnixStream, shared: &Shared) {
    let mut r = BufReader::with_capacity(64 << 10, stream);
    let reason = loop {
        match read_frame(&mut r) {
            Ok(None) => break "the connection was closed".to_string(),
            Err(e) => break format!("reading failed: {e}"),
            Ok(Some(frame)) => match decode::<Envelope<AgentReply>>(&frame) {
                Ok(env) => {
                    let tx = match &mut *lock(&shared.pending) {
                        // More replies to its request follow.
                        Ok(w) if env.body.is_partial() => w.get(&env.id).cloned(),
                        Ok(w) => w.remove(&env.id),
                        Err(_) => None,
                    };
                    if let Some(tx) = tx {
                        let _ = tx.send(env.body);
                    }
                }
                Err(e) => break format!("unreadable reply: {e}"),
            },
        }
    };
    mark_gone(shared, reason);
}
