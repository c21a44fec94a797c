//! The node's builder: from the runtime's clone to a finished mount table, in kernel order.
//!
//! The runtime clones this process into the outer user namespace (the node's ids) and a mount
//! namespace. The builder clones the node's PID 1 (see `pid1.rs`) into an inner user namespace,
//! an identity map of the outer one, with the node's pid, net, uts and ipc namespaces; then it
//! builds the node's whole filesystem in the outer mount namespace: procfs of PID 1's pid
//! namespace, sysfs of its network namespace, the root, /dev, binds. PID 1 then copies that
//! table into a mount namespace of its own. Copying mounts into a less privileged user
//! namespace locks them: node root cannot remount them read-write, unmount the /proc masks to
//! see beneath, or mount a fresh procfs beside them. Any failure is reported to the runtime as
//! (step, errno) and the builder exits; PID 1 then sees its pipe close and exits too.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags, CpuSet};
use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, pivot_root, Pid};

use crate::inroot;
use crate::pid1::{self, Pid1Plan};
use crate::plan::{Op, Plan};
use crate::sync::{self, ToChild, ToParent};
use crate::timings::now_ns;

/// Step numbers after the plan's steps, for errors outside it.
pub(crate) const STEP_WAIT: u32 = u32::MAX - 9;
pub(crate) const STEP_PID1: u32 = u32::MAX - 8;
pub(crate) const STEP_HANDOVER: u32 = u32::MAX - 6;
pub(crate) const STEP_AGENT: u32 = u32::MAX - 5;
pub(crate) const STEP_IDS: u32 = u32::MAX - 4;
pub(crate) const STEP_NETWORK: u32 = u32::MAX - 3;
pub(crate) const STEP_CONFINE: u32 = u32::MAX - 2;
pub(crate) const STEP_EXEC: u32 = u32::MAX - 1;

/// Everything the builder and PID 1 need, prepared by the runtime before the first clone.
pub(crate) struct ChildPlan {
    pub plan: Plan,
    /// setgroups(2) is allowed (not a single-id map).
    pub set_groups: bool,
    pub pid1: Pid1Plan,
    /// The agent to start beside PID 1 (see `agent.rs`).
    pub agent: Option<crate::spec::AgentHook>,
    /// The agent's cgroup directory (open in the runtime, inherited), for a systemd node.
    pub agent_cgroup: Option<std::os::fd::RawFd>,
    /// Caps on per-user kernel counters for the node's user namespace (see `ucounts.rs`).
    pub ucount_caps: &'static [crate::ucounts::Cap],
}

/// A step that failed: its number and the kernel's answer.
pub(crate) type StepResult = Result<(), (u32, Errno)>;

/// Tags an errno with the step it failed at.
pub(crate) fn at(step: u32) -> impl Fn(Errno) -> (u32, Errno) {
    move |e| (step, e)
}

/// Runs the builder's steps; never returns.
pub(crate) fn run(plan: &ChildPlan, sock: OwnedFd) -> ! {
    let failed = match build(plan, sock.as_fd()) {
        // SAFETY: _exit ends the builder without the runtime's atexit handlers or stdio flush.
        Ok(()) => unsafe { libc::_exit(0) },
        Err(failed) => failed,
    };
    let (step, errno) = failed;
    let _ = sync::send_parent(sock.as_fd(), &ToParent::Failed { step, errno });
    // SAFETY: as above.
    unsafe { libc::_exit(125) }
}

fn build(plan: &ChildPlan, sock: BorrowedFd) -> StepResult {
    // The runtime writes our id maps and places us in our cgroups meanwhile (end-of-file if
    // it dies).
    let ToChild::Go(view) = sync::recv_child(sock).map_err(at(STEP_WAIT))?;
    become_root(plan.set_groups).map_err(at(STEP_IDS))?;
    // Die with the runtime. After become_root: changing ids clears the parent-death signal.
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) }).map_err(at(STEP_IDS))?;
    // Changing ids made us non-dumpable, which makes /proc/<PID 1>/ root's: we could not
    // write PID 1's id maps.
    // SAFETY: prctl with PR_SET_DUMPABLE and a flag has no memory effects.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) }).map_err(at(STEP_IDS))?;
    crate::ucounts::apply(plan.ucount_caps).map_err(at(STEP_IDS))?;
    crate::ucounts::halve_rlimits().map_err(at(STEP_IDS))?;
    // After the v1 cgroups are joined: the namespace's roots are the node's cgroups. It is
    // owned by the outer user namespace, so the node cannot mount cgroup hierarchies itself.
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(at(STEP_IDS))?;
    // Nothing we mount may propagate anywhere, nor anything into us.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(at(STEP_IDS))?;
    // PID 1 says "mounts done" on one pipe, hears "network namespace made" on the other.
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (ready_r, ready_w) = nix::unistd::pipe2(cloexec).map_err(at(STEP_PID1))?;
    let (net_r, net_w) = nix::unistd::pipe2(cloexec).map_err(at(STEP_PID1))?;
    let (agent_r, agent_w) = match plan.agent {
        Some(_) => crate::agent::pipe().map(|(r, w)| (Some(r), Some(w))).map_err(at(STEP_AGENT))?,
        None => (None, None),
    };
    // A node without an init lives as long as its agent.
    let (alive_r, alive_w) = match plan.agent {
        Some(_) if plan.pid1.program.is_empty() => crate::agent::pipe().map(|(r, w)| (Some(r), Some(w))).map_err(at(STEP_AGENT))?,
        _ => (None, None),
    };
    // PID 1 makes its network, uts and ipc namespaces itself, while we build the mounts.
    let clone = crate::clone::Clone {
        flags: libc::CLONE_PARENT | libc::CLONE_NEWUSER | libc::CLONE_NEWPID,
        cgroup: None,
    };
    let affinity = nix::sched::sched_getaffinity(Pid::from_raw(0)).ok();
    let Some((pid, pidfd)) = clone.run().map_err(at(STEP_PID1))? else {
        drop((ready_w, net_r, agent_r, alive_w));
        pid1::run(
            &plan.pid1,
            pid1::Pipes {
                ready: ready_r,
                net: net_w,
                agent_ready: agent_w,
                agent_alive: alive_r,
            },
            affinity,
            sock,
        );
    };
    drop((ready_r, net_w, agent_w, alive_r));
    if let Some(all) = &affinity {
        move_off_this_cpu(pid, all);
    }
    let pidfd_kept = pidfd.try_clone().map_err(|_| (STEP_PID1, Errno::EMFILE))?;
    sync::send_parent(sock, &ToParent::Pid1(pidfd, pid.as_raw())).map_err(at(STEP_PID1))?;
    map_inner(pid).map_err(at(STEP_PID1))?;
    let ns_dir = nix::fcntl::open(
        format!("/proc/{pid}/ns").as_str(),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | cloexec,
        Mode::empty(),
    )
    .map_err(at(STEP_PID1))?;
    if let (Some(hook), Some(ready)) = (plan.agent, &agent_r) {
        let (agent, agent_fd) = crate::agent::fork(crate::agent::Fork {
            hook,
            pid1: pidfd_kept.as_fd(),
            ns_dir: ns_dir.as_fd(),
            ready: ready.as_fd(),
            alive: alive_w.as_ref().map(|w| w.as_fd()),
            seccomp: &plan.pid1.seccomp,
            // SAFETY: opened by the runtime before it cloned us: our copy of its descriptor table
            // holds it for as long as we run.
            cgroup: plan.agent_cgroup.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) }),
        })
        .map_err(at(STEP_AGENT))?;
        sync::send_parent(sock, &ToParent::Agent(agent_fd, agent.as_raw())).map_err(at(STEP_AGENT))?;
    }
    drop((agent_r, alive_w));
    let link = Pid1Link {
        pidns: open_ns(&ns_dir, "pid").map_err(at(STEP_PID1))?,
        ns_dir,
        net_ready: net_r,
    };
    let start = now_ns();
    for (i, step) in plan.plan.steps.iter().enumerate() {
        match run_op(&step.op, sock, &link, view.as_ref()) {
            Err(Errno::ENOENT) if step.optional => {}
            other => other.map_err(at(i as u32))?,
        }
    }
    let mut stamps = start.to_le_bytes().to_vec();
    stamps.extend_from_slice(&now_ns().to_le_bytes());
    nix::unistd::write(&ready_w, &stamps).map(drop).map_err(at(STEP_HANDOVER))
}

/// Moves the just-cloned PID 1 to another CPU of `all` (the mask it inherited). The kernel
/// queues a new child on its parent's CPU, where PID 1 would wait for the builder's mounts
/// (about 1 ms, in half of the starts measured) while another CPU idles, and PID 1's network
/// namespace is the longest step of a start. PID 1 restores `all` before anything of the node
/// runs (see `pid1::setup`). Nothing is moved when this CPU is the only one allowed.
fn move_off_this_cpu(pid: Pid, all: &CpuSet) {
    let Ok(here) = nix::sched::sched_getcpu() else { return };
    let mut others = *all;
    if others.unset(here).is_err() || (0..CpuSet::count()).all(|cpu| !others.is_set(cpu).unwrap_or(false)) {
        return;
    }
    let _ = nix::sched::sched_setaffinity(pid, &others);
}

/// What the builder's mount steps need of PID 1.
struct Pid1Link {
    /// /proc/<PID 1>/ns, opened before the builder pivots away from the host's /proc.
    ns_dir: OwnedFd,
    /// PID 1's pid namespace, for procfs.
    pidns: OwnedFd,
    /// Readable once PID 1 has its network namespace (end-of-file if it died).
    net_ready: OwnedFd,
}

/// Opens one of PID 1's namespaces.
fn open_ns(ns_dir: &OwnedFd, kind: &str) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        ns_dir,
        kind,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Waits for PID 1's network namespace and joins it: sysfs shows the network namespace of
/// whoever mounts it.
fn join_net(link: &Pid1Link) -> Result<(), Errno> {
    let mut byte = [0u8; 1];
    if nix::unistd::read(link.net_ready.as_fd(), &mut byte)? != 1 {
        return Err(Errno::ESRCH);
    }
    setns(open_ns(&link.ns_dir, "net")?, CloneFlags::CLONE_NEWNET)
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

/// PID 1's user namespace maps the node's ids onto themselves, one level down: line for line
/// like ours (a child's map line must fall within one line of its parent's).
fn map_inner(pid: Pid) -> Result<(), Errno> {
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        let fd = nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        nix::unistd::write(&fd, crate::idmap::identity_map(file).as_bytes())?;
    }
    Ok(())
}

/// Mounts procfs for PID 1's pid namespace (procfs shows the mounter's by default): with the
/// pidns option where the kernel has it (6.15+), else from a child forked into that namespace.
/// The option is asked through the new mount API: an older kernel's "Unknown parameter"
/// goes to the fs context's log, not to the kernel log at every start.
fn mount_proc(dst: &CStr, flags: MsFlags, pidns: BorrowedFd) -> Result<(), Errno> {
    match proc_with_pidns(pidns) {
        Ok(tree) => return attach(&tree, dst),
        Err(Errno::EINVAL) => {}
        Err(e) => return Err(e),
    }
    setns(pidns, CloneFlags::CLONE_NEWPID)?;
    // SAFETY: the builder is single-threaded; the child only mounts and exits.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            let rc = match mount(Some("proc"), dst, Some("proc"), flags, None::<&str>) {
                Ok(()) => 0,
                Err(e) => e as i32,
            };
            // SAFETY: ends the helper child without the runtime's atexit handlers.
            unsafe { libc::_exit(rc) }
        }
        nix::unistd::ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None)? {
            nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
            nix::sys::wait::WaitStatus::Exited(_, e) => Err(Errno::from_raw(e)),
            _ => Err(Errno::ECHILD),
        },
    }
}

fn run_op(op: &Op, sock: BorrowedFd, link: &Pid1Link, view: Option<&OwnedFd>) -> Result<(), Errno> {
    match op {
        Op::AttachView { dst } => attach(view.ok_or(Errno::EBADF)?, dst),
        // SAFETY: the runtime keeps the descriptor open until the builder has exited; the
        // builder's copy of its descriptor table holds it meanwhile.
        Op::AttachInherited { fd, dst } => attach_raw(unsafe { BorrowedFd::borrow_raw(*fd) }, dst),
        Op::Proc { dst, flags } => in_root_target(dst, |dst| mount_proc(dst, *flags, link.pidns.as_fd())),
        Op::JoinNet => join_net(link),
        Op::Mount {
            src,
            dst,
            fstype,
            flags,
            data,
        } => in_root_target(dst, |dst| mount(src.as_deref(), dst, fstype.as_deref(), *flags, data.as_deref())),
        Op::Remount { dst, flags } => in_root_target(dst, |dst| {
            // Flags the mount already has may be locked (inherited from the host): keep them.
            let current = nix::sys::statvfs::statvfs(dst)?.flags();
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
            mount(None::<&str>, dst, None::<&str>, all, None::<&str>)
        }),
        Op::Mkdir { path, mode } => {
            let made = match inroot::relative(path) {
                Some(rel) => {
                    let (dir, name) = inroot::parent_and_name(rel)?;
                    nix::sys::stat::mkdirat(&dir, name.as_c_str(), Mode::from_bits_truncate(*mode))
                }
                None => nix::unistd::mkdir(path.as_c_str(), Mode::from_bits_truncate(*mode)),
            };
            match made {
                Err(Errno::EEXIST) => Ok(()),
                other => other,
            }
        }
        Op::Touch { path, mode } => create(path, libc::O_WRONLY, *mode).map(drop),
        Op::Symlink { target, link } => {
            let made = match inroot::relative(link) {
                Some(rel) => {
                    let (dir, name) = inroot::parent_and_name(rel)?;
                    nix::unistd::symlinkat(target.as_c_str(), &dir, name.as_c_str())
                }
                None => nix::unistd::symlinkat(target.as_c_str(), nix::fcntl::AT_FDCWD, link.as_c_str()),
            };
            match made {
                Err(Errno::EEXIST) => Ok(()),
                other => other,
            }
        }
        Op::Write { path, contents, mode } => write_file(path, contents, *mode),
        Op::Stage => stage(),
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
            // pivot_root(".", ".") stacks the old root (with the staging tmpfs on it) on top
            // of the new one: two detaches drop the staging tmpfs, then the host's whole tree.
            chdir("newroot")?;
            pivot_root(".", ".")?;
            umount2(".", MntFlags::MNT_DETACH)?;
            umount2(".", MntFlags::MNT_DETACH)?;
            chdir("/")
        }
    }
}

/// move_mount(2) of the detached tree `tree` onto `dst`.
fn attach(tree: &OwnedFd, dst: &CStr) -> Result<(), Errno> {
    attach_raw(tree.as_fd(), dst)
}

/// [`attach`] of a borrowed descriptor.
fn attach_raw(tree: BorrowedFd, dst: &CStr) -> Result<(), Errno> {
    // SAFETY: move_mount of a detached tree we own onto a NUL-terminated path.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            // Targets in the node's root come as /proc/self/fd/N (see in_root_target): follow.
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_SYMLINKS,
        )
    })
    .map(drop)
}

/// A detached procfs for `pidns` (nosuid, nodev, noexec); EINVAL before Linux 6.15.
fn proc_with_pidns(pidns: BorrowedFd) -> Result<OwnedFd, Errno> {
    // SAFETY: fsopen with a NUL-terminated name; returns a new fd we own.
    let fs = Errno::result(unsafe { libc::syscall(libc::SYS_fsopen, c"proc".as_ptr(), libc::FSOPEN_CLOEXEC) })?;
    // SAFETY: the kernel returned a new descriptor.
    let fs = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fs as i32) };
    // SAFETY: fsconfig on our fs context with NUL-terminated key and value.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            c"source".as_ptr(),
            c"proc".as_ptr(),
            0,
        )
    })?;
    // SAFETY: fsconfig on our fs context: a NUL-terminated key and a descriptor we borrow.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_FD,
            c"pidns".as_ptr(),
            std::ptr::null::<libc::c_void>(),
            pidns.as_raw_fd(),
        )
    })?;
    create_and_mount(&fs, libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC)
}

/// fsconfig(2) commands (linux/mount.h).
const FSCONFIG_SET_FD: libc::c_uint = 5;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

/// The staging tmpfs: made with the new mount API (a detached mount), stacked on `/` and made
/// the working directory. Absolute paths still resolve from the process root, the host's
/// root beneath it, so nothing of the host is hidden and no pivot_root is needed to build.
fn stage() -> Result<(), Errno> {
    // SAFETY: fsopen with a NUL-terminated name; returns a new fd we own.
    let fs = Errno::result(unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), libc::FSOPEN_CLOEXEC) })?;
    // SAFETY: the kernel returned a new descriptor.
    let fs = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fs as i32) };
    for (key, value) in [(c"mode", c"0755"), (c"size", c"1m")] {
        // SAFETY: fsconfig on our fs context with NUL-terminated key and value.
        Errno::result(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })?;
    }
    let mnt = create_and_mount(&fs, libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV)?;
    attach(&mnt, c"/")?;
    nix::unistd::fchdir(&mnt)
}

/// FSCONFIG_CMD_CREATE and fsmount(2) of a configured fs context, with mount `attrs`.
fn create_and_mount(fs: &OwnedFd, attrs: u64) -> Result<OwnedFd, Errno> {
    // SAFETY: fsconfig's create command on our fs context, no key or value.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: fsmount of our created context; returns a new mount fd we own.
    let mnt = Errno::result(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, attrs) })?;
    // SAFETY: the kernel returned a new descriptor.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(mnt as i32) })
}

/// Calls `f` with `dst`, or, when `dst` lies in the node's root, with a path to the object it
/// names there (resolved inside the root, see inroot.rs): mount targets.
fn in_root_target(dst: &CStr, f: impl FnOnce(&CStr) -> Result<(), Errno>) -> Result<(), Errno> {
    match inroot::relative(dst) {
        Some(rel) => {
            let target = inroot::open(rel, libc::O_PATH, 0)?;
            f(&inroot::fd_path(&target))
        }
        None => f(dst),
    }
}

/// Opens `path` for writing, created with `mode` if missing; inside the node's root when it
/// lies there.
fn create(path: &CStr, extra: libc::c_int, mode: u32) -> Result<OwnedFd, Errno> {
    match inroot::relative(path) {
        Some(rel) => inroot::open(rel, libc::O_CREAT | libc::O_WRONLY | extra, mode),
        None => {
            let flags = nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CLOEXEC
                | nix::fcntl::OFlag::from_bits_truncate(extra);
            nix::fcntl::open(path, flags, Mode::from_bits_truncate(mode))
        }
    }
}

fn write_file(path: &CString, contents: &[u8], mode: u32) -> Result<(), Errno> {
    let fd = create(path, libc::O_TRUNC, mode)?;
    let mut rest = contents;
    while !rest.is_empty() {
        let n = nix::unistd::write(&fd, rest)?;
        rest = &rest[n..];
    }
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
}
