//! Rootless `hutch test`: the driver moves into a user namespace of its own in which it is
//! root over the user's 65536 ids, before it starts anything.
//!
//! Wiring nodes to a network needs setns(2) into their network namespaces, which takes
//! CAP_SYS_ADMIN in the caller's own user namespace too; and the hub namespace is made with
//! unshare(CLONE_NEWNET). Both are ours once the driver owns a user namespace. Nodes then get
//! an identity map inside it, which is the user's own mapping seen from the host.

use anyhow::{bail, Context, Result};
use hutch_runtime::{IdMap, IdMapKind};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{fork, ForkResult, Pid};

/// Enters a user namespace that maps root to the caller and 1..65535 to its subordinate
/// range (or only root, with the usual warning). Does nothing for root (of the host, or of
/// a user namespace that already has 65536 ids). Call before any
/// thread exists.
pub fn enter() -> Result<()> {
    let idmap = IdMap::detect();
    if matches!(idmap.kind, IdMapKind::Identity | IdMapKind::Shifted { .. }) {
        return Ok(());
    }
    if let Some(w) = idmap.warning() {
        eprintln!("hutch: {w}");
    }
    // Inside, every per-user limit reads INT_MAX: the nodes' caps come from the host's.
    hutch_runtime::read_host_limits();
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let parent = Pid::this();
    // SAFETY: no thread exists yet (the caller's contract); the child only waits on a pipe,
    // runs the id-map helpers and exits.
    match unsafe { fork() }.context("forking the id-map helper")? {
        ForkResult::Child => {
            drop(ready_w);
            let mut buf = [0u8; 1];
            let go = matches!(nix::unistd::read(&ready_r, &mut buf), Ok(1));
            let code = if go && map(&idmap, parent).map_err(|e| eprintln!("hutch: {e:#}")).is_ok() {
                0
            } else {
                1
            };
            // SAFETY: leave without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(ready_r);
            let unshared = unshare(CloneFlags::CLONE_NEWUSER);
            let _ = nix::unistd::write(&ready_w, if unshared.is_ok() { b"1" } else { b"0" });
            drop(ready_w);
            let status = nix::sys::wait::waitpid(child, None).context("waiting for the id-map helper")?;
            unshared.context(
                "cannot create a user namespace: enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)",
            )?;
            if !matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)) {
                bail!("mapping ids into the driver's user namespace failed ({status:?})");
            }
            Ok(())
        }
    }
}

/// Writes the driver's maps (from the helper, which stayed in the host's user namespace).
fn map(idmap: &IdMap, pid: Pid) -> Result<()> {
    idmap.apply(pid).map_err(Into::into)
}
