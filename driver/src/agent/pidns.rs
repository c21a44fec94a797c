//! The node's pid namespace, for the agent's commands. The agent lives outside it (nothing in
//! the node can name the agent), so each thread that starts commands joins it for its children
//! with setns(2), once. The kernel refuses new threads to a thread whose children's pid
//! namespace is not its own: such a thread makes the threads it needs first.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;

/// Set once by `agent_main`; absent when the agent serves in-process (tests).
static NODE: OnceLock<OwnedFd> = OnceLock::new();

thread_local! {
    static JOINED: Cell<bool> = const { Cell::new(false) };
}

/// Remembers the node's pid namespace for [`enter_for_children`].
pub(crate) fn set(ns: OwnedFd) {
    let _ = NODE.set(ns);
}

/// Makes the children this thread starts from now on members of the node's pid namespace.
pub(crate) fn enter_for_children() -> io::Result<()> {
    let Some(ns) = NODE.get() else { return Ok(()) };
    if JOINED.get() {
        return Ok(());
    }
    // SAFETY: setns with a namespace descriptor we own; it changes only this thread's
    // namespace for children.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("joining the node's pid namespace: {e}")));
    }
    JOINED.set(true);
    Ok(())
}
