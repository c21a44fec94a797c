//! The node's first process: from clone to exec, one step after another in kernel order.
//!
//! Runs in the child of a clone into new user, mount, pid, uts, ipc, net (and cgroup)
//! namespaces. It only makes system calls on what the parent prepared; any failure is reported
//! to the parent as (step, errno) and the child exits.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::SigSet;
use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, pivot_root, sethostname};
use seccompiler::BpfProgram;

use crate::plan::{Op, Plan};
use crate::sync::{self, ToParent, STAMPS};
use crate::timings::now_ns;

/// Step numbers after the plan's steps, for errors outside it.
pub(crate) const STEP_WAIT: u32 = u32::MAX - 6;
pub(crate) const STEP_IDS: u32 = u32::MAX - 4;
pub(crate) const STEP_NETWORK: u32 = u32::MAX - 3;
pub(crate) const STEP_CONFINE: u32 = u32::MAX - 2;
pub(crate) const STEP_EXEC: u32 = u32::MAX - 1;
pub(crate) const STEP_AGENT: u32 = u32::MAX - 5;

/// Everything the child needs, prepared by the parent before clone.
pub(crate) struct ChildPlan {
    pub plan: Plan,
    pub hostname: String,
    /// setgroups(2) is allowed (not a single-id map).
    pub set_groups: bool,
    pub seccomp: BpfProgram,
    /// Candidates for the program to exec, first existing one wins (resolved in the node).
    pub program: Vec<CString>,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// Open /dev/console as stdin/stdout/stderr and make it the controlling terminal.
    pub console_stdio: bool,
    /// Unshare the cgroup namespace once the parent placed us in our v1 cgroups.
    pub late_cgroup_ns: bool,
    /// Fork this agent just before exec.
    pub agent: Option<crate::spec::AgentHook>,
}

/// Runs the child's steps and execs; never returns.
pub(crate) fn run(plan: &ChildPlan, sock: OwnedFd) -> ! {
    let (step, errno) = match setup(plan, sock.as_fd()) {
        Ok(()) if plan.program.is_empty() => {
            drop(sock);
            minimal_init()
        }
        Ok(()) => exec(plan),
        Err(failed) => failed,
    };
    let _ = sync::send_parent(sock.as_fd(), &ToParent::Failed { step, errno });
    // SAFETY: _exit ends this process without running the parent's atexit handlers or
    // flushing stdio buffers it shares with the parent.
    unsafe { libc::_exit(125) }
}

type StepResult = Result<(), (u32, Errno)>;

fn at(step: u32) -> impl Fn(Errno) -> (u32, Errno) {
    move |e| (step, e)
}

fn setup(plan: &ChildPlan, sock: BorrowedFd) -> StepResult {
    let mut stamps = [0u64; STAMPS];
    // Die with the runtime: the node must not outlive the process that owns it.
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) }).map_err(at(STEP_WAIT))?;
    // The parent writes our id maps (and cgroup) meanwhile; end-of-file means it died.
    sync::recv_child(sock).map_err(at(STEP_WAIT))?;
    stamps[0] = now_ns();
    if plan.late_cgroup_ns {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(at(STEP_IDS))?;
    }
    become_root(plan.set_groups).map_err(at(STEP_IDS))?;
    // Nothing we mount may propagate anywhere, nor anything into us: private, not slave (a
    // slave of the runtime's shared image-view mount makes every pivot_root ~2 ms slower).
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(at(STEP_WAIT))?;
    for (i, step) in plan.plan.steps.iter().enumerate() {
        match run_op(&step.op, sock) {
            Err(Errno::ENOENT) if step.optional => {}
            other => other.map_err(at(i as u32))?,
        }
    }
    stamps[1] = now_ns();
    sethostname(&plan.hostname).map_err(at(STEP_NETWORK))?;
    loopback_up().map_err(at(STEP_NETWORK))?;
    stamps[2] = now_ns();
    crate::confine::drop_bounding().map_err(at(STEP_CONFINE))?;
    crate::confine::install_seccomp(&plan.seccomp).map_err(at(STEP_CONFINE))?;
    stamps[3] = now_ns();
    if plan.console_stdio {
        console_stdio().map_err(at(STEP_EXEC))?;
    }
    SigSet::empty().thread_set_mask().map_err(at(STEP_EXEC))?;
    if let Some(agent) = plan.agent {
        fork_agent(agent).map_err(at(STEP_AGENT))?;
    }
    stamps[4] = now_ns();
    sync::send_parent(sock, &ToParent::Stamps(stamps)).map_err(at(STEP_EXEC))
}

fn become_root(set_groups: bool) -> Result<(), Errno> {
    if set_groups {
        nix::unistd::setgroups(&[])?;
    }
    let root_g = nix::unistd::Gid::from_raw(0);
    let root_u = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g)?;
    nix::unistd::setresuid(root_u, root_u, root_u)
}

fn run_op(op: &Op, sock: BorrowedFd) -> Result<(), Errno> {
    match op {
        Op::Mount {
            src,
            dst,
            fstype,
            flags,
            data,
        } => mount(src.as_deref(), dst.as_c_str(), fstype.as_deref(), *flags, data.as_deref()),
        Op::Remount { dst, flags } => {
            // Flags the mount already has may be locked (inherited from the host): keep them.
            let current = nix::sys::statvfs::statvfs(dst.as_c_str())?.flags();
            let mut keep = MsFlags::empty();
            for (st, ms) in [
                (nix::sys::statvfs::FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (nix::sys::statvfs::FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (nix::sys::statvfs::FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (nix::sys::statvfs::FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            ] {
                if current.contains(st) {
                    keep |= ms;
                }
            }
            let all = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | keep | *flags;
            mount(None::<&str>, dst.as_c_str(), None::<&str>, all, None::<&str>)
        }
        Op::Mkdir { path, mode } => match nix::unistd::mkdir(path.as_c_str(), Mode::from_bits_truncate(*mode)) {
            Err(Errno::EEXIST) => Ok(()),
            other => other,
        },
        Op::Touch { path, mode } => {
            let flags = nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC;
            nix::fcntl::open(path.as_c_str(), flags, Mode::from_bits_truncate(*mode)).map(drop)
        }
        Op::Symlink { target, link } => match nix::unistd::symlinkat(target.as_c_str(), nix::fcntl::AT_FDCWD, link.as_c_str()) {
            Err(Errno::EEXIST) => Ok(()),
            other => other,
        },
        Op::Write { path, contents, mode } => write_file(path, contents, *mode),
        Op::PivotRoot { new_root, put_old } => {
            pivot_root(new_root.as_c_str(), put_old.as_c_str())?;
            chdir("/")
        }
        Op::NotifySocket { path } => {
            let fd = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
            bind(fd.as_raw_fd(), &UnixAddr::new(path.as_c_str())?)?;
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                path.as_c_str(),
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
            sync::send_parent(sock, &ToParent::NotifySocket(fd))
        }
        Op::EnterRoot => {
            // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
            // drops the staging tmpfs and the whole host tree in one go.
            chdir("/newroot")?;
            pivot_root(".", ".")?;
            umount2(".", MntFlags::MNT_DETACH)?;
            chdir("/")
        }
    }
}

fn write_file(path: &CString, contents: &[u8], mode: u32) -> Result<(), Errno> {
    let flags = nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_TRUNC | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path.as_c_str(), flags, Mode::from_bits_truncate(mode))?;
    let mut rest = contents;
    while !rest.is_empty() {
        let n = nix::unistd::write(&fd, rest)?;
        rest = &rest[n..];
    }
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
}

/// Brings `lo` up: a fresh network namespace starts with it down.
fn loopback_up() -> Result<(), Errno> {
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags into `req`, a valid ifreq that outlives the call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the union's flags member was just filled by SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, a valid ifreq that outlives the call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// /dev/console becomes stdin, stdout, stderr and the controlling terminal of a new session.
fn console_stdio() -> Result<(), Errno> {
    nix::unistd::setsid()?;
    let fd = nix::fcntl::open("/dev/console", nix::fcntl::OFlag::O_RDWR, Mode::empty())?;
    // SAFETY: TIOCSCTTY on a terminal fd we own; the argument 0 means "do not steal".
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) })?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        Errno::result(unsafe { libc::dup2(fd.as_raw_fd(), target) })?;
    }
    Ok(())
}

/// Forks the agent: it runs in every namespace of the node, confined like the init, and is
/// the init's child (it dies with the node). The init keeps no copy of the agent's socket.
fn fork_agent(agent: crate::spec::AgentHook) -> Result<(), Errno> {
    // SAFETY: this process is single-threaded (a fresh clone of a single-threaded runtime).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            // A session of its own: systemd hangs up the console as it starts, which would
            // SIGHUP everything whose controlling terminal it is.
            let _ = nix::unistd::setsid();
            // SAFETY: the fd was handed to this node by the caller and is owned by the agent now.
            let stream = unsafe { <std::os::unix::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(agent.fd) };
            (agent.main)(stream)
        }
        nix::unistd::ForkResult::Parent { .. } => nix::unistd::close(agent.fd),
    }
}

/// PID 1 of a node without an init: reap every child until none is left, then exit. A stop
/// signal ends it (and with it the node): PID 1 ignores signals it has no handler for.
fn minimal_init() -> ! {
    extern "C" fn stop(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    // Nothing of the runtime stays open here (other nodes' reaper pipes, hutch's stdout):
    // an init would have dropped them at exec, and holders keep other nodes' cleanup waiting.
    // SAFETY: closes descriptors this process never uses again; open/dup2 on /dev/null.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGRTMIN() + 3] {
        // SAFETY: installs a handler that only calls _exit.
        unsafe { libc::signal(sig, stop as *const () as libc::sighandler_t) };
    }
    loop {
        match nix::sys::wait::wait() {
            Err(Errno::ECHILD) => break,
            _ => continue,
        }
    }
    // SAFETY: ends this process without running the runtime's atexit handlers.
    unsafe { libc::_exit(0) }
}

/// Execs the first candidate program that exists; returns only on failure.
fn exec(plan: &ChildPlan) -> (u32, Errno) {
    let mut last = Errno::ENOENT;
    for program in &plan.program {
        match nix::unistd::execve(program, &plan.argv, &plan.env) {
            Err(Errno::ENOENT) => continue,
            Err(e) => last = e,
            Ok(never) => match never {},
        }
        break;
    }
    (STEP_EXEC, last)
}
