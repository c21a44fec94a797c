//! Mount namespaces are freed after an RCU grace period, in the exit of whoever drops the last
//! reference: a node's PID 1 as it ends, the runtime as it exits (its private namespace of
//! image views). For a one-shot `hutch run` that is a millisecond or two on the user's clock
//! after the node has already ended. A janitor process takes the last references instead and
//! drops them once the runtime has exited: the kernel does the same work, off the critical path.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::Container;

/// Forks a janitor that holds this process's mount namespace and the mount namespaces of
/// `nodes` (taken from them) until this process exits, then exits itself. Best effort: if the
/// fork fails, the namespaces are freed the usual way. Call when the nodes have ended, just
/// before exiting; the janitor keeps no other descriptor (no pipe a caller waits on).
pub fn defer_teardown(nodes: &mut [Container]) {
    let held: Vec<OwnedFd> = nodes.iter_mut().filter_map(Container::take_mount_ns).collect();
    let Ok((alive_r, alive_w)) = nix::unistd::pipe() else { return };
    // SAFETY: the child only makes async-signal-safe system calls (close_range, open, dup2,
    // read, _exit) before it exits, so forking a process with threads is fine.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let mut keep: Vec<i32> = held.iter().map(|f| f.as_raw_fd()).collect();
            keep.push(alive_r.as_raw_fd());
            crate::fds::close_all_but(&keep);
            crate::fds::stdio_to_null();
            let mut byte = [0u8; 1];
            // End-of-file when the runtime has exited (its write end closes with it).
            while let Err(nix::errno::Errno::EINTR) = nix::unistd::read(&alive_r, &mut byte) {}
            // SAFETY: _exit ends the janitor without the runtime's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(alive_r);
            // Open until this process exits: that is the janitor's signal.
            std::mem::forget(alive_w);
        }
        Err(_) => {}
    }
}
