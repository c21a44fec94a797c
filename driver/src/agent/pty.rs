//! Interactive sessions for `hutch shell`: a login shell (or a command) on a fresh pty in the
//! node, driven by small requests (input, output, resize, close) so the agent's one
//! request-reply protocol carries them like any other request.
//!
//! The pty is opened from the node's /dev/ptmx (the agent is in the node's mount namespace),
//! so `tty` in the node names one of its own /dev/pts; the shell is in the node's pid
//! namespace, leads a session of its own and has the pty as its controlling terminal.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{unexpected, AgentClient, AgentError};
use super::{AgentReply, AgentRequest, ExitStatus};

/// How long one `PtyOutput` request waits for output before answering empty.
const OUTPUT_WAIT: Duration = Duration::from_secs(5);
/// The most bytes one `PtyOutput` reply carries.
const OUTPUT_CHUNK: usize = 64 << 10;

struct Session {
    master: OwnedFd,
    child: Mutex<Child>,
}

static SESSIONS: Mutex<Option<HashMap<u64, Arc<Session>>>> = Mutex::new(None);
static NEXT: AtomicU64 = AtomicU64::new(1);

fn sessions() -> std::sync::MutexGuard<'static, Option<HashMap<u64, Arc<Session>>>> {
    SESSIONS.lock().unwrap_or_else(|p| p.into_inner())
}

fn find(id: u64) -> Result<Arc<Session>, AgentReply> {
    sessions()
        .as_ref()
        .and_then(|m| m.get(&id).cloned())
        .ok_or_else(|| AgentReply::Error {
            message: format!("no terminal session {id} (it has ended)"),
        })
}

fn error(what: &str, e: impl std::fmt::Display) -> AgentReply {
    AgentReply::Error {
        message: format!("{what}: {e}"),
    }
}

fn set_size(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize that outlives the call, on a pty master we own.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// root's login shell from the node's /etc/passwd, else bash or sh.
fn login_shell() -> String {
    let from_passwd = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines()
            .find_map(|l| l.strip_prefix("root:"))
            .and_then(|l| l.split(':').nth(5).map(str::to_string))
    });
    from_passwd
        .into_iter()
        .chain(["/bin/bash", "/run/current-system/sw/bin/bash", "/bin/sh"].map(String::from))
        .find(|s| std::path::Path::new(s).is_file())
        .unwrap_or_else(|| "/bin/sh".into())
}

/// Opens a pty and starts `command` (a login shell when empty) on it; answers `PtyOpened`.
pub(crate) fn open(command: &[String], term: &str, rows: u16, cols: u16) -> AgentReply {
    let master = match nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(m) => m,
        Err(e) => return error("opening the node's /dev/ptmx", e),
    };
    if let Err(e) = nix::pty::grantpt(&master).and_then(|()| nix::pty::unlockpt(&master)) {
        return error("unlocking the pty", e);
    }
    let slave_name = match nix::pty::ptsname_r(&master) {
        Ok(n) => n,
        Err(e) => return error("naming the pty", e),
    };
    let slave = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&slave_name)
    {
        Ok(f) => OwnedFd::from(f),
        Err(e) => return error(&format!("opening {slave_name}"), e),
    };
    let master: OwnedFd = master.into();
    set_size(&master, rows, cols);
    let (program, arg0, args): (String, String, Vec<String>) = match command.split_first() {
        Some((p, rest)) => (p.clone(), p.clone(), rest.to_vec()),
        None => {
            let sh = login_shell();
            let base = sh.rsplit('/').next().unwrap_or("sh").to_string();
            (sh, format!("-{base}"), Vec::new())
        }
    };
    let mut cmd = std::process::Command::new(&program);
    cmd.arg0(&arg0).args(&args).env_clear();
    cmd.envs(super::login::BASE_ENV.iter().copied())
        .env("TERM", term)
        .env("SHELL", &program);
    cmd.current_dir("/root");
    if !std::path::Path::new("/root").is_dir() {
        cmd.current_dir("/");
    }
    let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
    let (Ok(i), Ok(o), Ok(e)) = (stdio(&slave), stdio(&slave), stdio(&slave)) else {
        return error("duplicating the pty", std::io::Error::last_os_error());
    };
    cmd.stdin(i).stdout(o).stderr(e);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid and the ioctl that
    // makes fd 0 (the pty) the controlling terminal of the new session.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = super::pidns::enter_for_children().and_then(|()| cmd.spawn());
    drop(slave);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => return error(&format!("starting {program}"), e),
    };
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let session = Arc::new(Session {
        master,
        child: Mutex::new(child),
    });
    sessions().get_or_insert_with(HashMap::new).insert(id, session);
    AgentReply::PtyOpened { session: id }
}

/// Writes keystrokes to the session's terminal.
pub(crate) fn input(id: u64, data: &[u8]) -> AgentReply {
    let s = match find(id) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut rest = data;
    while !rest.is_empty() {
        match nix::unistd::write(&s.master, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return error("writing to the terminal", e),
        }
    }
    AgentReply::Done
}

/// Sets the session's window size.
pub(crate) fn resize(id: u64, rows: u16, cols: u16) -> AgentReply {
    match find(id) {
        Ok(s) => {
            set_size(&s.master, rows, cols);
            AgentReply::Done
        }
        Err(e) => e,
    }
}

/// Waits (a few seconds at most) for what the terminal printed; once the program has ended
/// and nothing is left to read, answers with its status and forgets the session.
pub(crate) fn output(id: u64) -> AgentReply {
    let s = match find(id) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut fds = [nix::poll::PollFd::new(s.master.as_fd(), nix::poll::PollFlags::POLLIN)];
    let ms = OUTPUT_WAIT.as_millis() as u16;
    let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).unwrap_or(0);
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    if ready > 0 {
        match nix::unistd::read(&s.master, &mut buf) {
            Ok(n) if n > 0 => {
                buf.truncate(n);
                return AgentReply::PtyOutput { data: buf, ended: None };
            }
            // EIO: every holder of the pty's other side has closed it.
            Ok(_) | Err(_) => {}
        }
    }
    let mut child = s.child.lock().unwrap_or_else(|p| p.into_inner());
    let status = if ready > 0 {
        child.wait().ok()
    } else {
        match child.try_wait() {
            Ok(Some(st)) => Some(st),
            // Still running, just quiet.
            _ => {
                return AgentReply::PtyOutput {
                    data: Vec::new(),
                    ended: None,
                }
            }
        }
    };
    if let Some(m) = sessions().as_mut() {
        m.remove(&id);
    }
    let ended = match status.map(|st| (st.code(), st.signal())) {
        Some((Some(c), _)) => ExitStatus::Code(c),
        Some((None, Some(sig))) => ExitStatus::Signal(sig),
        _ => ExitStatus::Code(-1),
    };
    AgentReply::PtyOutput {
        data: Vec::new(),
        ended: Some(ended),
    }
}

/// Ends a session whose user went away: its process group gets SIGHUP, as on a hang-up.
pub(crate) fn close(id: u64) -> AgentReply {
    let Some(s) = sessions().as_mut().and_then(|m| m.remove(&id)) else {
        return AgentReply::Done;
    };
    let mut child = s.child.lock().unwrap_or_else(|p| p.into_inner());
    let pid = child.id() as i32;
    // SAFETY: kill(2) on the session's process group (the shell leads it, and we have not
    // reaped it yet, so the id is still its own).
    unsafe { libc::kill(-pid, libc::SIGHUP) };
    if child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = child.wait();
    }
    AgentReply::Done
}

impl AgentClient {
    /// Starts `command` (a login shell when empty) on a fresh pty in the node; returns the
    /// session's id.
    pub fn pty_open(&self, command: Vec<String>, term: String, rows: u16, cols: u16) -> Result<u64, AgentError> {
        match self.call(AgentRequest::PtyOpen { command, term, rows, cols }, Some(Duration::from_secs(30)))? {
            AgentReply::PtyOpened { session } => Ok(session),
            other => Err(unexpected("pty_open", other)),
        }
    }

    /// Types `data` into the session.
    pub fn pty_input(&self, session: u64, data: Vec<u8>) -> Result<(), AgentError> {
        match self.call(AgentRequest::PtyInput { session, data }, Some(Duration::from_secs(30)))? {
            AgentReply::Done => Ok(()),
            other => Err(unexpected("pty_input", other)),
        }
    }

    /// The session's next output, or (with no data) its end status.
    pub fn pty_output(&self, session: u64) -> Result<(Vec<u8>, Option<ExitStatus>), AgentError> {
        match self.call(AgentRequest::PtyOutput { session }, Some(OUTPUT_WAIT + Duration::from_secs(30)))? {
            AgentReply::PtyOutput { data, ended } => Ok((data, ended)),
            other => Err(unexpected("pty_output", other)),
        }
    }

    /// Sets the session's window size.
    pub fn pty_resize(&self, session: u64, rows: u16, cols: u16) -> Result<(), AgentError> {
        match self.call(AgentRequest::PtyResize { session, rows, cols }, Some(Duration::from_secs(30)))? {
            AgentReply::Done => Ok(()),
            other => Err(unexpected("pty_resize", other)),
        }
    }

    /// Hangs up the session (its user went away).
    pub fn pty_close(&self, session: u64) -> Result<(), AgentError> {
        match self.call(AgentRequest::PtyClose { session }, Some(Duration::from_secs(30)))? {
            AgentReply::Done => Ok(()),
            other => Err(unexpected("pty_close", other)),
        }
    }
}
