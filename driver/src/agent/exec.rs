//! Running one command for the agent: its own process group, bounded capture of stdout and stderr, a timeout that kills the
//! whole group, and no hang when a daemon it started keeps the output pipes open.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStderr, ChildStdout};
use std::time::{Duration, Instant};

use super::command::command;
use super::{Command, ExitStatus, RunRequest, RunResult, Stream, OUTPUT_CAP};

/// After the command exits, stop reading once its pipes were quiet this long...
const IDLE_AFTER_EXIT: Duration = Duration::from_millis(100);
/// ...or at the latest this long after the exit, even if something keeps writing.
const MAX_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Where a streamed command's output goes as it comes (instead of being kept).
pub(crate) type Sink<'a> = &'a mut dyn FnMut(Stream, &[u8]);

/// Run request `id` to its end and describe it; streamed (a `sink`), its output goes there as
/// it comes and the result keeps none. [`cancel`] kills it. Never panics on a bad request: a
/// command that cannot start reports exit code 127 and why, as a shell would.
pub(crate) fn run(id: u64, req: &RunRequest, sink: Option<Sink>) -> RunResult {
    let start = Instant::now();
    // Threads first: once in the node's pid namespace for its children, this thread may not
    // make any (see pidns.rs).
    let feeder = stdin_feeder(req.stdin.clone());
    let mut spawned = super::pidns::enter_for_children().and_then(|()| command(req, true).spawn());
    if matches!(&spawned, Err(e) if e.kind() == ErrorKind::NotFound) && matches!(req.command, Command::Shell(_)) {
        // A word list whose program is not in PATH: let the shell try (a builtin) and report.
        spawned = command(req, false).spawn();
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let what = match &req.command {
                Command::Argv(a) => a.first().cloned().unwrap_or_default(),
                Command::Shell(_) => "the shell".into(),
            };
            let mut stderr = format!("hutch-agent: cannot run {what}: {e}\n").into_bytes();
            if let Some(sink) = sink {
                sink(Stream::Stderr, &stderr);
                stderr.clear();
            }
            return RunResult {
                status: ExitStatus::Code(if e.kind() == ErrorKind::NotFound { 127 } else { 126 }),
                stdout: Vec::new(),
                stderr,
                stdout_dropped: 0,
                stderr_dropped: 0,
                timed_out: false,
                output_left_open: false,
                micros: start.elapsed().as_micros() as u64,
            };
        }
    };
    // Without data, dropping the pipe closes it: the command sees end of file.
    if let (Some(pipe), Some(feeder)) = (child.stdin.take(), feeder) {
        let _ = feeder.send(pipe);
    }
    let timeout = req.timeout_ms.map(Duration::from_millis);
    let pid = child.id() as i32;
    running().insert(pid, id);
    let result = Collector::new(child, start, timeout, sink).collect();
    running().remove(&pid);
    result
}

/// The commands that run now (each its own process group): pid, and the request that
/// started it.
fn running() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<i32, u64>> {
    static RUNNING: std::sync::Mutex<std::collections::BTreeMap<i32, u64>> = std::sync::Mutex::new(std::collections::BTreeMap::new());
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills the process group of the command request `id` runs, if it still runs, and waits
/// (a few seconds at most) until its collector has reaped it, so a request sent after the
/// answer finds it gone. A cancel that comes before the command started (a few microseconds
/// after the request) finds nothing: that command runs to its end or timeout.
pub(crate) fn cancel(id: u64) {
    for (&pid, _) in running().iter().filter(|(_, &r)| r == id) {
        // SAFETY: kill(2) on a process group this agent created for a command. It is listed
        // until just after its collector reaps it, so in that instant the group may be gone
        // (ESRCH); a new process of the node taking its pid there and then is not a case.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let end = Instant::now() + Duration::from_secs(3);
    while running().values().any(|&r| r == id) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills every running command's process group and reaps the commands, before the agent
/// exits. The agent lives outside the node's pid namespace: its commands' parent is the agent,
/// and an agent that left them would hand them to the host's init, whose reaping the node's
/// teardown would wait for (the kernel ends a pid namespace once all its processes are reaped).
pub(crate) fn end_all() {
    let pids: Vec<i32> = running().keys().copied().collect();
    for &pid in &pids {
        // SAFETY: kill(2) on a process group this agent created for a command.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    for pid in pids {
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing into `status`; ECHILD once its collector
        // thread reaped it first.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {}
    }
}

/// A thread that writes `data` to the command's stdin once it gets the pipe, then closes it
/// (a command may not read its input before writing output); none without data.
fn stdin_feeder(data: Vec<u8>) -> Option<std::sync::mpsc::Sender<std::process::ChildStdin>> {
    if data.is_empty() {
        return None;
    }
    let (tx, rx) = std::sync::mpsc::channel::<std::process::ChildStdin>();
    let spawned = std::thread::Builder::new().name("agent-stdin".into()).spawn(move || {
        if let Ok(mut pipe) = rx.recv() {
            let _ = pipe.write_all(&data);
        }
    });
    spawned.ok().map(|_| tx)
}

/// Up to `OUTPUT_CAP` bytes of one stream, and a count of what was dropped.
#[derive(Default)]
struct Capture {
    kept: Vec<u8>,
    dropped: u64,
}

impl Capture {
    fn push(&mut self, bytes: &[u8]) {
        let room = OUTPUT_CAP.saturating_sub(self.kept.len());
        let take = room.min(bytes.len());
        self.kept.extend_from_slice(&bytes[..take]);
        self.dropped += (bytes.len() - take) as u64;
    }

    fn finish(mut self, name: &str) -> (Vec<u8>, u64) {
        if self.dropped > 0 {
            let marker = format!(
                "\n[hutch: {} more bytes of {name} dropped; the agent keeps the first {} MiB]\n",
                self.dropped,
                OUTPUT_CAP >> 20
            );
            self.kept.extend_from_slice(marker.as_bytes());
        }
        (self.kept, self.dropped)
    }
}

/// Waits for the command with poll(2) on its two pipes and a pidfd.
struct Collector<'a> {
    child: Child,
    pid: i32,
    pidfd: Option<OwnedFd>,
    out: Option<ChildStdout>,
    err: Option<ChildStderr>,
    stdout: Capture,
    stderr: Capture,
    /// Streamed: the output goes here, not into the captures.
    sink: Option<Sink<'a>>,
    start: Instant,
    deadline: Option<Instant>,
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a pipe fd we own; F_GETFL/F_SETFL do not touch memory.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// A pidfd becomes readable when the process exits (Linux 5.3+).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall just returned this fd to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reads what is there without blocking, one buffer at most (a command that writes faster
/// than we read then cannot grow anything but its captures, which are capped); how many
/// bytes (0: nothing now), or `None` once the stream reached end of file.
fn read_some<R: Read>(pipe: &mut R, buf: &mut [u8]) -> Option<usize> {
    loop {
        match pipe.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(0),
            Err(_) => return None,
        }
    }
}

impl<'a> Collector<'a> {
    fn new(mut child: Child, start: Instant, timeout: Option<Duration>, sink: Option<Sink<'a>>) -> Self {
        let pid = child.id() as i32;
        let out = child.stdout.take();
        let err = child.stderr.take();
        for fd in [out.as_ref().map(|o| o.as_raw_fd()), err.as_ref().map(|e| e.as_raw_fd())]
            .into_iter()
            .flatten()
        {
            set_nonblocking(fd);
        }
        Collector {
            // The child is a zombie until we wait for it, so the pid cannot be reused meanwhile.
            pidfd: pidfd_open(pid),
            child,
            pid,
            out,
            err,
            stdout: Capture::default(),
            stderr: Capture::default(),
            sink,
            start,
            deadline: timeout.map(|t| start + t),
        }
    }

    fn collect(mut self) -> RunResult {
        let mut buf = vec![0u8; 64 << 10];
        let mut status = None;
        let mut timed_out = false;
        let mut exited_at: Option<Instant> = None;
        let mut last_data = Instant::now();
        let mut left_open = false;
        loop {
            let now = Instant::now();
            if status.is_none() {
                if let Some(s) = self.child.try_wait().ok().flatten() {
                    status = Some(s);
                    exited_at = Some(now);
                    last_data = now;
                }
            }
            if status.is_some() && self.out.is_none() && self.err.is_none() {
                break;
            }
            if let Some(t) = exited_at {
                if now >= t + MAX_AFTER_EXIT || now >= last_data + IDLE_AFTER_EXIT {
                    left_open = true;
                    break;
                }
            }
            if status.is_none() && !timed_out && self.deadline.is_some_and(|d| now >= d) {
                // SAFETY: kill(2) on the process group we created for this command.
                unsafe { libc::kill(-self.pid, libc::SIGKILL) };
                timed_out = true;
            }
            let wake = match exited_at {
                Some(t) => (t + MAX_AFTER_EXIT).min(last_data + IDLE_AFTER_EXIT),
                None if timed_out => now + Duration::from_millis(10),
                None => self.deadline.unwrap_or(now + Duration::from_secs(3600)),
            };
            // Without a pidfd, look at the child at least every 10 ms.
            let wake = if self.pidfd.is_none() && status.is_none() {
                wake.min(now + Duration::from_millis(10))
            } else {
                wake
            };
            let ready = self.poll(wake.saturating_duration_since(now), status.is_none());
            if ready.0 {
                last_data = Instant::now();
                match self.out.as_mut().and_then(|o| read_some(o, &mut buf)) {
                    Some(n) => self.take(Stream::Stdout, &buf[..n]),
                    None => self.out = None,
                }
            }
            if ready.1 {
                last_data = Instant::now();
                match self.err.as_mut().and_then(|e| read_some(e, &mut buf)) {
                    Some(n) => self.take(Stream::Stderr, &buf[..n]),
                    None => self.err = None,
                }
            }
        }
        let status = status.or_else(|| self.child.wait().ok());
        let micros = self.start.elapsed().as_micros() as u64;
        let status = match status.map(|s| (s.code(), s.signal())) {
            Some((Some(c), _)) => ExitStatus::Code(c),
            Some((None, Some(s))) => ExitStatus::Signal(s),
            _ => ExitStatus::Code(-1),
        };
        let (stdout, stdout_dropped) = self.stdout.finish("stdout");
        let (stderr, stderr_dropped) = self.stderr.finish("stderr");
        RunResult {
            status,
            stdout,
            stderr,
            stdout_dropped,
            stderr_dropped,
            timed_out,
            output_left_open: left_open,
            micros,
        }
    }

    /// Keeps (or streams) what was read from `stream`.
    fn take(&mut self, stream: Stream, got: &[u8]) {
        if got.is_empty() {
            return;
        }
        match (&mut self.sink, stream) {
            (Some(sink), _) => sink(stream, got),
            (None, Stream::Stdout) => self.stdout.push(got),
            (None, Stream::Stderr) => self.stderr.push(got),
        }
    }

    /// poll(2) the open pipes (and the pidfd while the command runs); (stdout, stderr) readable.
    fn poll(&self, wait: Duration, watch_exit: bool) -> (bool, bool) {
        let mut fds = Vec::with_capacity(3);
        let mut which = Vec::with_capacity(3);
        let ev = libc::POLLIN;
        if let Some(o) = &self.out {
            fds.push(libc::pollfd {
                fd: o.as_raw_fd(),
                events: ev,
                revents: 0,
            });
            which.push(0);
        }
        if let Some(e) = &self.err {
            fds.push(libc::pollfd {
                fd: e.as_raw_fd(),
                events: ev,
                revents: 0,
            });
            which.push(1);
        }
        if let (true, Some(p)) = (watch_exit, &self.pidfd) {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: ev,
                revents: 0,
            });
            which.push(2);
        }
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // Round up so a wait of 0.4 ms does not spin.
        let ms = if ms == 0 && !wait.is_zero() { 1 } else { ms };
        if fds.is_empty() {
            std::thread::sleep(wait);
            return (false, false);
        }
        // SAFETY: fds is a live, correctly sized array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            return (false, false);
        }
        let mut r = (false, false);
        for (p, w) in fds.iter().zip(which) {
            if p.revents != 0 {
                match w {
                    0 => r.0 = true,
                    1 => r.1 = true,
                    _ => {}
                }
            }
        }
        r
    }
}
