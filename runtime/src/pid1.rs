//! The node's PID 1 from its clone to exec: it takes over the mount table its builder made,
//! sets hostname and loopback, confines itself and execs the init.
//!
//! It is cloned by the builder (see `child.rs`) into the inner user namespace and the node's
//! pid, net, uts and ipc namespaces, as a sibling of the builder (CLONE_PARENT): the runtime
//! is its parent and reaps it. It waits on a pipe until the builder has finished the mounts.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags, CpuSet};
use nix::sys::signal::SigSet;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, sethostname};
use seccompiler::BpfProgram;

use crate::child::{at, StepResult, STEP_AGENT, STEP_CONFINE, STEP_EXEC, STEP_HANDOVER, STEP_NETWORK};
use crate::sync::{self, ToParent, STAMPS};
use crate::timings::now_ns;

/// What PID 1 does once the mounts are made, prepared by the runtime before any clone.
pub(crate) struct Pid1Plan {
    pub hostname: String,
    pub seccomp: BpfProgram,
    /// Candidates for the program to exec, first existing one wins (resolved in the node).
    pub program: Vec<CString>,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// Open /dev/console as stdin/stdout/stderr and make it the controlling terminal.
    pub console_stdio: bool,
    /// Make a pty of this size (rows, columns) in the node's devpts the standard streams and
    /// controlling terminal, and send its master to the runtime.
    pub terminal: Option<(u16, u16)>,
}

/// PID 1's two pipes to its builder.
pub(crate) struct Pipes {
    /// Delivers the builder's two timestamps (start and end of the mounts) once the mount
    /// table is complete; end-of-file if the builder failed.
    pub ready: OwnedFd,
    /// PID 1 writes a byte here once its network namespace exists.
    pub net: OwnedFd,
    /// PID 1 writes a byte here once its mount namespace exists: the agent joins it then.
    pub agent_ready: Option<OwnedFd>,
    /// A node without an init: end-of-file here once the agent has ended (the agent holds
    /// the only write end), which ends the node.
    pub agent_alive: Option<OwnedFd>,
}

/// Runs PID 1's steps and execs; never returns. `sock` reaches the runtime; `affinity` is
/// the CPU mask PID 1 was cloned with, which the builder narrows for the start (see
/// `child::move_off_this_cpu`).
pub(crate) fn run(plan: &Pid1Plan, mut pipes: Pipes, affinity: Option<CpuSet>, sock: BorrowedFd) -> ! {
    let agent_alive = pipes.agent_alive.take();
    let (step, errno) = match setup(plan, pipes, affinity, sock) {
        Ok(()) if plan.program.is_empty() => minimal_init(agent_alive),
        Ok(()) => exec(plan),
        Err(failed) => failed,
    };
    let _ = sync::send_parent(sock, &ToParent::Failed { step, errno });
    // SAFETY: _exit ends this process without running the runtime's atexit handlers.
    unsafe { libc::_exit(125) }
}

fn setup(plan: &Pid1Plan, pipes: Pipes, affinity: Option<CpuSet>, sock: BorrowedFd) -> StepResult {
    let mut stamps = [0u64; STAMPS];
    // Die with the runtime (our parent: we were cloned with CLONE_PARENT).
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) }).map_err(at(STEP_NETWORK))?;
    // Our own network, uts and ipc namespaces, owned by our user namespace (node root
    // administers them), made while the builder makes the mounts.
    stamps[2] = now_ns();
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC).map_err(at(STEP_NETWORK))?;
    nix::unistd::write(&pipes.net, &[1]).map_err(at(STEP_NETWORK))?;
    drop(pipes.net);
    sync::send_parent(sock, &ToParent::NetReady).map_err(at(STEP_NETWORK))?;
    sethostname(&plan.hostname).map_err(at(STEP_NETWORK))?;
    loopback_up().map_err(at(STEP_NETWORK))?;
    stamps[3] = now_ns();
    let mut built = [0u8; 16];
    match nix::unistd::read(pipes.ready.as_fd(), &mut built) {
        Ok(16) => {}
        // The builder failed (and said why) or died: nothing to add.
        // SAFETY: _exit ends this process without running the runtime's atexit handlers.
        _ => unsafe { libc::_exit(125) },
    }
    drop(pipes.ready);
    // The builder narrowed our CPUs right after our clone, long before it finished the mounts:
    // the node gets every CPU it was started with back.
    if let Some(all) = &affinity {
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), all).map_err(at(STEP_HANDOVER))?;
    }
    stamps[0] = u64::from_le_bytes(built[..8].try_into().unwrap_or_default());
    stamps[1] = u64::from_le_bytes(built[8..].try_into().unwrap_or_default());
    // A mount namespace of our own, owned by the inner user namespace: the kernel copies the
    // builder's table into it with every mount locked (flags, and covering what is beneath).
    unshare(CloneFlags::CLONE_NEWNS).map_err(at(STEP_HANDOVER))?;
    chdir("/").map_err(at(STEP_HANDOVER))?;
    if let Some(w) = pipes.agent_ready {
        crate::agent::tell_ready(w).map_err(at(STEP_AGENT))?;
    }
    stamps[4] = now_ns();
    crate::confine::drop_bounding().map_err(at(STEP_CONFINE))?;
    crate::confine::install_seccomp(&plan.seccomp).map_err(at(STEP_CONFINE))?;
    stamps[5] = now_ns();
    // The runtime wires our network meanwhile; the init must find it in place.
    sync::recv_child(sock).map_err(at(STEP_EXEC))?;
    if plan.console_stdio {
        console_stdio().map_err(at(STEP_EXEC))?;
    }
    if let Some(size) = plan.terminal {
        let master = own_terminal(size).map_err(at(STEP_EXEC))?;
        sync::send_parent(sock, &ToParent::Terminal(master)).map_err(at(STEP_EXEC))?;
    }
    SigSet::empty().thread_set_mask().map_err(at(STEP_EXEC))?;
    // Nothing of the runtime's survives the exec (other nodes' descriptors included).
    crate::fds::cloexec_from_3();
    stamps[6] = now_ns();
    sync::send_parent(sock, &ToParent::Stamps(stamps)).map_err(at(STEP_EXEC))
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

/// A fresh pty from the node's own /dev/ptmx (its devpts instance, so `tty` names one of the
/// node's /dev/pts) becomes stdin, stdout, stderr and the controlling terminal of a new
/// session; returns the master, for the runtime to relay.
fn own_terminal((rows, cols): (u16, u16)) -> Result<OwnedFd, Errno> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let master = OwnedFd::from(master);
    crate::set_window_size(master.as_fd(), rows, cols)?;
    // SAFETY: TIOCGPTPEER opens the slave of a master we own and returns a new fd or -1; it
    // needs no path, so the node's mount table cannot redirect it.
    let slave = Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY) })?;
    nix::unistd::setsid()?;
    // SAFETY: TIOCSCTTY on the slave just opened; the argument 0 means "do not steal".
    Errno::result(unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) })?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        Errno::result(unsafe { libc::dup2(slave, target) })?;
    }
    if slave > 2 {
        // SAFETY: closes the slave's own descriptor, now duplicated onto 0, 1 and 2.
        unsafe { libc::close(slave) };
    }
    Ok(master)
}

/// PID 1 of a node without an init: reap every child (orphans of the agent's commands) until
/// the agent has ended (end-of-file on `agent_alive`) or a stop signal comes; then exit, which
/// ends the node and every process left in it. PID 1 ignores signals it has no handler for.
fn minimal_init(agent_alive: Option<OwnedFd>) -> ! {
    extern "C" fn stop(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    extern "C" fn child(_: libc::c_int) {}
    // Nothing of the runtime stays open here (other nodes' reaper pipes, hutch's stdout):
    // an init would have dropped them at exec, and holders keep other nodes' cleanup waiting.
    let alive = agent_alive.as_ref().map_or(-1, |fd| fd.as_raw_fd());
    crate::fds::close_all_but(&[alive]);
    crate::fds::stdio_to_null();
    // Out of the user's terminal session: the Ctrl-C of `hutch test --interactive` (sent to
    // the terminal's foreground process group, where hutch started us) is not a stop signal.
    let _ = nix::unistd::setsid();
    // It only reaps and exits: no capability is needed for either.
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted, caps::CapSet::Inheritable] {
        let _ = caps::clear(None, set);
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGRTMIN() + 3] {
        // SAFETY: installs a handler that only calls _exit.
        unsafe { libc::signal(sig, stop as *const () as libc::sighandler_t) };
    }
    // SAFETY: installs a handler that does nothing: SIGCHLD only has to end the wait.
    unsafe { libc::signal(libc::SIGCHLD, child as *const () as libc::sighandler_t) };
    // SIGCHLD is blocked but while waiting, so a child that ends between the reaping and the
    // wait still wakes us.
    let mut chld = SigSet::empty();
    chld.add(nix::sys::signal::Signal::SIGCHLD);
    let _ = chld.thread_block();
    loop {
        while let Ok(status) = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        let mut fds = [libc::pollfd {
            fd: alive,
            events: libc::POLLIN,
            revents: 0,
        }];
        let open = SigSet::empty();
        // SAFETY: ppoll on one pollfd (a negative fd is ignored) that outlives the call, no
        // timeout, the empty mask while waiting.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 1, std::ptr::null(), open.as_ref()) };
        if n > 0 && fds[0].revents != 0 {
            // SAFETY: ends this process without running the runtime's atexit handlers.
            unsafe { libc::_exit(0) }
        }
    }
}

/// Execs the first candidate program that exists; returns only on failure.
fn exec(plan: &Pid1Plan) -> (u32, Errno) {
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
