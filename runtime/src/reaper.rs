//! The cgroup reaper: one small process per hutch process that removes the nodes' cgroups if
//! hutch dies without doing it (SIGKILL, OOM, a crash).
//!
//! A cgroup directory is announced to the reaper *before* it is made and withdrawn after it is
//! removed, over a pipe whose only writer is hutch: when hutch is gone the pipe reads EOF and the
//! reaper removes whatever is still announced. Announcing first closes the window a reaper forked
//! after the mkdir had (a kill between the two left an empty cgroup behind), and one reaper per
//! process instead of one per node takes a fork off every node's start.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::unistd::{fork, ForkResult};

use crate::Error;

/// How long the reaper keeps killing and retrying before it leaves a cgroup: it runs after
/// hutch is gone, on nobody's clock, so it may wait for slow teardowns.
const PATIENCE: Duration = Duration::from_secs(30);

/// The reaper of this process: the pid that forked it (a forked child of hutch must not write
/// into its parent's reaper as its own) and the write end of its pipe.
static REAPER: Mutex<Option<(u32, OwnedFd)>> = Mutex::new(None);

/// Tells the reaper to remove `dir` should this process die; call it before making `dir`.
pub(crate) fn watch(dir: &Path) -> Result<(), Error> {
    send('+', dir)
}

/// Tells the reaper `dir` is gone (removed by this process).
pub(crate) fn forget(dir: &Path) {
    let _ = send('-', dir);
}

fn send(op: char, dir: &Path) -> Result<(), Error> {
    let line = format!("{op}{}\n", dir.display());
    let mut reaper = REAPER.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    if reaper.as_ref().is_some_and(|(owner, _)| *owner != me) {
        // Inherited through fork: the descriptor may be closed or reused by now.
        std::mem::forget(reaper.take());
    }
    if let Some((_, fd)) = reaper.as_ref() {
        // One write of less than PIPE_BUF bytes: atomic.
        if nix::unistd::write(fd, line.as_bytes()).is_ok() {
            return Ok(());
        }
        // The reaper is gone (killed by hand): a new one must take over, with this line.
        *reaper = None;
    }
    if op == '-' {
        return Ok(());
    }
    let fd = spawn()?;
    nix::unistd::write(&fd, line.as_bytes()).map_err(Error::sys("announcing a cgroup to the reaper"))?;
    *reaper = Some((me, fd));
    Ok(())
}

/// Forks the reaper and returns the write end of its pipe.
fn spawn() -> Result<OwnedFd, Error> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::sys("creating the reaper's pipe"))?;
    // SAFETY: the runtime is used from a single-threaded process (see Container::spawn); the
    // child only reads a pipe, removes directories and exits.
    match unsafe { fork() }.map_err(Error::sys("forking the cgroup reaper"))? {
        ForkResult::Child => {
            drop(w);
            crate::fds::close_all_but(&[2, r.as_raw_fd()]);
            // Own session, every signal blocked: a Ctrl-C meant for hutch must not stop the cleanup.
            let _ = nix::unistd::setsid();
            let _ = nix::sys::signal::SigSet::all().thread_block();
            let mut dirs = BTreeSet::new();
            for line in std::io::BufReader::new(std::fs::File::from(r)).lines().map_while(Result::ok) {
                match line.split_at_checked(1) {
                    Some(("+", dir)) => dirs.insert(PathBuf::from(dir)),
                    Some(("-", dir)) => dirs.remove(Path::new(dir)),
                    _ => false,
                };
            }
            // Deepest first: a cgroup announced inside another goes before its parent.
            let dirs: Vec<PathBuf> = dirs.into_iter().rev().collect();
            crate::cgroup::clean(&dirs, PATIENCE);
            // SAFETY: exit without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { .. } => {
            drop(r);
            Ok(w)
        }
    }
}
