//! Test fixtures shared by the agent and bridge tests: a real agent in a forked process, and a
//! `NodeControl` whose "node" is such a process on this host (no namespaces).

#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod forging;

use hutch_driver::agent::agent_main;
use hutch_driver::machine::{ConsoleLog, NodeControl, NodeError};

/// Fork a process that serves the agent protocol on one end of a socketpair; returns the
/// other end and the pid. The child keeps no other descriptor of this process.
pub fn fork_agent() -> (UnixStream, libc::pid_t) {
    fork_agent_in(None)
}

/// `fork_agent`, with the agent chrooted into `root` first (needs root).
pub fn fork_agent_in(root: Option<&std::path::Path>) -> (UnixStream, libc::pid_t) {
    fork_agent_with(root, None)
}

/// Code run in the forked agent process before it serves (e.g. to set up its own mounts).
pub type Setup = Arc<dyn Fn() + Send + Sync>;

/// `fork_agent_in`, running `setup` in the child first.
pub fn fork_agent_with(root: Option<&std::path::Path>, setup: Option<&Setup>) -> (UnixStream, libc::pid_t) {
    let root = root.map(|r| std::ffi::CString::new(r.as_os_str().as_encoded_bytes()).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    // SAFETY: the child only closes fds, serves and _exits; the parent just records the pid.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        drop(ours);
        // The agent ends its "node" when the driver hangs up: here that node is itself, and
        // its commands stay in this pid namespace.
        // SAFETY: pidfd_open of this process and open of a NUL-terminated path; the new
        // descriptors are owned below.
        let (init, pid_ns) = unsafe {
            let init = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) as i32;
            let pid_ns = libc::open(c"/proc/self/ns/pid".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            assert!(init >= 0 && pid_ns >= 0, "pidfd_open or /proc/self/ns/pid failed");
            (std::os::fd::OwnedFd::from_raw_fd(init), std::os::fd::OwnedFd::from_raw_fd(pid_ns))
        };
        if let Some(r) = &root {
            // SAFETY: chroot and chdir with NUL-terminated paths; failure exits the child.
            unsafe {
                if libc::chroot(r.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    libc::_exit(3);
                }
            }
        }
        if let Some(f) = setup {
            f();
        }
        // Another test's socket must not stay open here (the runtime does this for real nodes).
        let mut keep: Vec<u32> = [theirs.as_raw_fd(), init.as_raw_fd(), pid_ns.as_raw_fd()]
            .map(|fd| fd as u32)
            .to_vec();
        keep.sort_unstable();
        let mut from = 3u32;
        for fd in keep {
            // SAFETY: close_range only closes descriptors of this fresh child, which never returns.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd.saturating_sub(1), 0u32) };
            from = fd + 1;
        }
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
        agent_main(theirs, init, pid_ns);
    }
    drop(theirs);
    (ours, pid)
}

/// Wait for a child with a limit; true if it was reaped.
pub fn reap(pid: libc::pid_t, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r != 0 {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A "node" that is an agent process on this host: start forks it, shutdown and crash end it.
pub struct LocalNode {
    pid: AtomicI32,
    console: Arc<ConsoleLog>,
    pub blocked: AtomicBool,
    pub boot_delay: Duration,
    pub setup: Option<Setup>,
    cancel: AtomicBool,
}

impl LocalNode {
    pub fn new() -> LocalNode {
        LocalNode {
            pid: AtomicI32::new(0),
            console: Arc::new(ConsoleLog::new()),
            blocked: AtomicBool::new(false),
            boot_delay: Duration::ZERO,
            setup: None,
            cancel: AtomicBool::new(false),
        }
    }

    fn stop(&self, sig: i32, limit: Duration) -> Result<(), NodeError> {
        let pid = self.pid.swap(0, Ordering::SeqCst);
        if pid == 0 {
            return Ok(());
        }
        // SAFETY: signal our own agent child.
        unsafe { libc::kill(pid, sig) };
        if !reap(pid, limit) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid, Duration::from_secs(5));
        }
        self.console.push(b"local node: stopped\n");
        Ok(())
    }
}

impl NodeControl for LocalNode {
    fn start(&self) -> Result<UnixStream, NodeError> {
        // A slow boot that a crash from another thread cuts short.
        self.cancel.store(false, Ordering::SeqCst);
        let end = Instant::now() + self.boot_delay;
        while Instant::now() < end {
            if self.cancel.load(Ordering::SeqCst) {
                return Err(NodeError::Failed("the boot was cut short by a crash".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (stream, pid) = fork_agent_with(None, self.setup.as_ref());
        self.pid.store(pid, Ordering::SeqCst);
        self.console.push(format!("Welcome to local node {pid}\n").as_bytes());
        Ok(stream)
    }

    fn shutdown(&self, timeout: Duration) -> Result<(), NodeError> {
        // The agent ignores SIGTERM (no guest signal may end it): this "node" has no init to
        // power off, so it ends the way a real node's agent does, with the node.
        self.stop(libc::SIGKILL, timeout)
    }

    fn crash(&self) -> Result<(), NodeError> {
        self.cancel.store(true, Ordering::SeqCst);
        self.stop(libc::SIGKILL, Duration::from_secs(5))
    }

    fn wait_for_shutdown(&self, timeout: Duration) -> Result<(), NodeError> {
        let pid = self.pid.load(Ordering::SeqCst);
        if pid == 0 || reap(pid, timeout) {
            self.pid.store(0, Ordering::SeqCst);
            return Ok(());
        }
        Err(NodeError::Timeout {
            what: "the shutdown".into(),
            after: timeout,
        })
    }

    fn is_up(&self) -> bool {
        self.pid.load(Ordering::SeqCst) != 0
    }

    fn pid(&self) -> Option<u32> {
        u32::try_from(self.pid.load(Ordering::SeqCst)).ok().filter(|&p| p != 0)
    }

    fn block(&self) -> Result<(), NodeError> {
        self.blocked.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn unblock(&self) -> Result<(), NodeError> {
        self.blocked.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn console(&self) -> Arc<ConsoleLog> {
        Arc::clone(&self.console)
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicI32 = AtomicI32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("hutch-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Mount `dir` over `target` in a private mount namespace of the calling process (the forked
/// agent): the host's mounts are untouched and the namespace ends with the process.
pub fn bind_privately(dir: &std::path::Path, target: &str) {
    let src = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let dst = std::ffi::CString::new(target).unwrap();
    // SAFETY: unshare and mount with NUL-terminated paths; any failure exits the child.
    unsafe {
        let ok = libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
            && libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) == 0;
        if !ok {
            libc::_exit(4);
        }
    }
}
