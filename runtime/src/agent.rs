//! The node's agent process, made by the builder: it runs in the node's user, mount, network,
//! uts, ipc and cgroup namespaces, and its commands in the node's pid namespace, but the agent
//! itself stays outside that pid namespace, so nothing in the node can name it: no pid to
//! signal or ptrace, no /proc/<agent> to open, and no kill(-1) or init kill spree reaches it.
//! The kernel refuses new threads to a thread whose children's pid namespace is not its own,
//! so the agent gets the namespace as a descriptor and each thread that starts commands joins
//! it for its children (setns, hence CAP_SYS_ADMIN in the node's user namespace) after
//! making whatever threads it needs.
//! It is also non-dumpable with memory owned by the host's user namespace, so even a pidfd
//! that leaked to the node (SO_PEERPIDFD) allows no ptrace, pidfd_getfd or /proc/<agent>/mem.
//! Its stdio is /dev/null and it keeps only the capabilities its file requests need.
//!
//! Order of a start: the builder clones PID 1, then forks the agent (CLONE_PARENT: the runtime
//! reaps it), which waits until PID 1 has its own mount namespace (a byte on `ready`) and then
//! joins PID 1's namespaces. Nothing of this is on PID 1's path to exec. The agent ends when
//! PID 1 does; a node without an init ends when its agent does (`alive`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use caps::Capability;
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::SigSet;
use nix::unistd::Pid;
use seccompiler::BpfProgram;

use crate::spec::AgentHook;

/// What the agent keeps of node root's capabilities: what reading, writing and copying files
/// for the driver needs, and killing a timed-out command that changed its ids. Commands it
/// starts as root get node root's full (bounded) set back at exec, as root's processes do.
const AGENT_CAPS: &[Capability] = &[
    // setns(2) into the node's pid namespace, per thread that starts commands.
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
];

/// What the builder hands the agent it forks.
pub(crate) struct Fork<'a> {
    pub hook: AgentHook,
    /// PID 1's pidfd: the agent ends when PID 1 does.
    pub pid1: BorrowedFd<'a>,
    /// /proc/<PID 1>/ns, opened by the builder through the host's /proc.
    pub ns_dir: BorrowedFd<'a>,
    /// Readable once PID 1 has unshared its mount namespace (end-of-file: PID 1 failed).
    pub ready: BorrowedFd<'a>,
    /// For a node without an init: the write end PID 1 watches; the agent holds it for life.
    pub alive: Option<BorrowedFd<'a>>,
    pub seccomp: &'a BpfProgram,
    /// The cgroup to start in (`AGENT_CGROUP`), else the builder's: the node's.
    pub cgroup: Option<BorrowedFd<'a>>,
}

/// Forks the agent as the runtime's child (a sibling of the builder); returns its pid and pidfd.
/// Call from the builder, single-threaded, after PID 1's clone.
pub(crate) fn fork(f: Fork) -> Result<(Pid, OwnedFd), Errno> {
    // Blocked across the fork: the agent leaves the runtime's session and sets its handlers
    // before any signal meant for the user's terminal (Ctrl-C) can reach it.
    let old = SigSet::all().thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
    let clone = crate::clone::Clone {
        flags: libc::CLONE_PARENT,
        cgroup: f.cgroup,
    };
    match clone.run() {
        Ok(None) => {
            let errno = match become_agent(&f) {
                Ok((stream, init, pidns)) => (f.hook.main)(stream, init, pidns),
                Err(e) => e,
            };
            // The exit status is the errno that stopped the start (Container::agent_ended
            // reports it).
            // SAFETY: _exit ends the would-be agent without the runtime's atexit handlers.
            unsafe { libc::_exit(errno as i32) }
        }
        other => {
            let _ = old.thread_set_mask();
            Ok(other?.ok_or(Errno::ECHILD)?)
        }
    }
}

/// The agent's steps from its fork to serving: leave the runtime's session and descriptors,
/// wait for PID 1's mount namespace, join the node, confine itself.
fn become_agent(f: &Fork) -> Result<(std::os::unix::net::UnixStream, OwnedFd, OwnedFd), Errno> {
    nix::unistd::setsid()?;
    let alive = f.alive.map_or(-1, |fd| fd.as_raw_fd());
    crate::fds::close_all_but(&[f.hook.fd, f.pid1.as_raw_fd(), f.ns_dir.as_raw_fd(), f.ready.as_raw_fd(), alive]);
    // Stdio at once, so that what we open next never lands on 0-2.
    crate::fds::stdio_to_null();
    let mut byte = [0u8; 1];
    if nix::unistd::read(f.ready, &mut byte)? != 1 {
        return Err(Errno::ESRCH);
    }
    let open_ns = |name: &str| {
        nix::fcntl::openat(
            f.ns_dir,
            name,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
    };
    let pidns = open_ns("pid")?;
    // The user namespace first: every other namespace of the node is owned by it, and joining
    // it gives us node root's capabilities there (and none in the namespaces above).
    for (name, kind) in [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("mnt", CloneFlags::CLONE_NEWNS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("ipc", CloneFlags::CLONE_NEWIPC),
    ] {
        setns(open_ns(name)?, kind)?;
    }
    nix::unistd::chdir("/")?;
    // The node's /dev/null, not the host's: stdio is the only thing the agent holds of a file.
    crate::fds::close_all_but(&[f.hook.fd, f.pid1.as_raw_fd(), pidns.as_raw_fd(), alive]);
    crate::fds::stdio_to_null();
    // No parent-death signal: the agent ends when the driver's socket closes or PID 1 ends,
    // both of which follow the runtime's death, and it must outlive neither by much nor die
    // before them: its commands are its children (it lives outside the node's pid
    // namespace), and killed first it would hand them to the host's init, whose reaping the
    // node's teardown would then wait for.
    // Non-dumpable: ptrace, /proc/<agent>/{mem,fd,environ} and pidfd_getfd then need
    // CAP_SYS_PTRACE in the user namespace that owns our memory, the runtime's, which no
    // process of the node has.
    // SAFETY: prctl with PR_SET_DUMPABLE and a flag has no memory effects.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) })?;
    crate::confine::drop_bounding()?;
    crate::confine::install_seccomp(f.seccomp)?;
    keep_only(AGENT_CAPS)?;
    // SAFETY: fcntl on the agent's socket, which this process owns: commands must not inherit it.
    Errno::result(unsafe { libc::fcntl(f.hook.fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    // SAFETY: both descriptors were inherited from the builder and are owned by the agent now.
    let (stream, init) = unsafe {
        (
            std::os::unix::net::UnixStream::from_raw_fd(f.hook.fd),
            OwnedFd::from_raw_fd(f.pid1.as_raw_fd()),
        )
    };
    Ok((stream, init, pidns))
}

/// Lowers the effective and permitted sets to `keep`, and clears the inheritable and ambient
/// sets: the agent holds no more of node root's power than its own requests use.
fn keep_only(keep: &[Capability]) -> Result<(), Errno> {
    let set: caps::CapsHashSet = keep.iter().copied().collect();
    let failed = |_| Errno::EPERM;
    caps::set(None, caps::CapSet::Effective, &set).map_err(failed)?;
    caps::set(None, caps::CapSet::Permitted, &set).map_err(failed)?;
    caps::set(None, caps::CapSet::Inheritable, &caps::CapsHashSet::new()).map_err(failed)?;
    caps::clear(None, caps::CapSet::Ambient).map_err(failed)
}

/// A close-on-exec pipe between PID 1 and the agent: [`Fork::ready`] (PID 1 writes one byte
/// right after its mount namespace exists) and [`Fork::alive`].
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// Tells the agent that PID 1's mount namespace exists (PID 1's side of [`ready_pipe`]).
pub(crate) fn tell_ready(w: OwnedFd) -> Result<(), Errno> {
    nix::unistd::write(w.as_fd(), &[1]).map(drop)
}
