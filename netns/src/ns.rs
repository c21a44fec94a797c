//! Network namespace plumbing: create one on a thread, keep an fd to it, enter one for a moment.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::HubError;

/// Opens the calling thread's network namespace (an fd keeps the namespace alive).
pub(crate) fn current_thread_netns() -> Result<OwnedFd, HubError> {
    File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|e| HubError::Namespace {
            what: "opening /proc/thread-self/ns/net",
            hint: ": is /proc mounted?",
            source: e,
        })
}

/// Moves the calling thread into a new, empty network namespace. Only this thread moves: the
/// rest of the process stays where it was.
pub(crate) fn unshare_thread_netns() -> Result<(), HubError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| HubError::ns("unshare(CLONE_NEWNET)", e))
}

/// Runs `f` with the calling thread inside `target`, then returns it to `home`. A netlink
/// socket opened inside `f` keeps acting in `target` for its whole life.
pub(crate) fn with_netns<T>(target: BorrowedFd<'_>, home: BorrowedFd<'_>, f: impl FnOnce() -> T) -> Result<T, HubError> {
    setns(target, CloneFlags::CLONE_NEWNET).map_err(|e| HubError::ns("setns into the node's network namespace", e))?;
    let out = f();
    if let Err(e) = setns(home, CloneFlags::CLONE_NEWNET) {
        // The thread would keep acting in the node's namespace: nothing may continue on it.
        panic_on_lost_home(e);
    }
    Ok(out)
}

fn panic_on_lost_home(e: Errno) -> ! {
    // Returning to a namespace we were in a moment ago cannot fail short of a kernel bug; going
    // on would create bridges inside a node, so stop this thread loudly.
    panic!("hutch-netns: cannot return the netlink thread to the hub namespace: {e}")
}

/// Creates `count` empty network namespaces and returns an fd to each. Exists for nodes that are
/// bare namespaces (tests, benchmarks); containers bring their own.
///
/// Runs on a throwaway thread so the calling thread never changes namespace.
pub fn bare_namespaces(count: usize) -> Result<Vec<OwnedFd>, HubError> {
    std::thread::Builder::new()
        .name("hutch-netns-mk".into())
        .spawn(move || {
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                unshare_thread_netns()?;
                out.push(current_thread_netns()?);
            }
            Ok(out)
        })
        .map_err(|e| HubError::Namespace {
            what: "spawning a thread",
            hint: "",
            source: e,
        })?
        .join()
        .unwrap_or(Err(HubError::WorkerGone))
}

/// The (device, inode) pair that identifies a namespace, for checks that it is gone.
pub fn netns_id(fd: BorrowedFd<'_>) -> Result<(u64, u64), HubError> {
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| HubError::ns("fstat", e))?;
    Ok((st.st_dev, st.st_ino))
}
