//! clone3(2) without a new stack: the runtime clones its node builder with it, and the builder
//! clones the node's PID 1, both fork-like (the child gets a copy of the caller).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::Pid;

/// clone3's argument block (linux/sched.h, version 2 with the cgroup field).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// CLONE_INTO_CGROUP (linux/sched.h; not in every libc crate version).
const CLONE_INTO_CGROUP: u64 = 0x200000000;

/// What a clone asks for: namespace flags and where the child goes.
pub(crate) struct Clone<'a> {
    /// CLONE_NEW* and CLONE_PARENT flags (CLONE_PIDFD is always added).
    pub flags: libc::c_int,
    /// Start the child in this cgroup2 directory.
    pub cgroup: Option<BorrowedFd<'a>>,
}

impl Clone<'_> {
    /// Clones the calling process; `Ok(None)` in the child, the child's pid and a pidfd in the
    /// parent. With CLONE_PARENT the child is a sibling and signals the grandparent on exit.
    /// Call only from a single-threaded process: the child runs on a copy of its memory.
    pub(crate) fn run(&self) -> Result<Option<(Pid, OwnedFd)>, Errno> {
        let mut flags = (self.flags | libc::CLONE_PIDFD) as u64;
        if self.cgroup.is_some() {
            flags |= CLONE_INTO_CGROUP;
        }
        let mut pidfd: libc::c_int = -1;
        let args = CloneArgs {
            flags,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            // A CLONE_PARENT child inherits the caller's exit signal; clone3 wants 0 then.
            exit_signal: if self.flags & libc::CLONE_PARENT != 0 {
                0
            } else {
                libc::SIGCHLD as u64
            },
            cgroup: self.cgroup.map(|fd| fd.as_raw_fd() as u64).unwrap_or(0),
            ..Default::default()
        };
        // SAFETY: clone3 without CLONE_VM or a stack behaves like fork: the child gets a copy of
        // this single-threaded process and returns 0 here; `args` and `pidfd` outlive the call.
        let rc = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
        match Errno::result(rc)? {
            0 => Ok(None),
            // SAFETY: the kernel stored a new pidfd we now own.
            pid => Ok(Some((Pid::from_raw(pid as i32), unsafe { OwnedFd::from_raw_fd(pidfd) }))),
        }
    }
}

/// Sends `sig` to the process behind `pidfd` (no pid-reuse race).
pub(crate) fn pidfd_signal(pidfd: std::os::fd::RawFd, sig: i32) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal with a caller-owned pidfd, a null siginfo and no flags.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, sig, std::ptr::null::<libc::siginfo_t>(), 0) };
    Errno::result(rc).map(drop)
}
