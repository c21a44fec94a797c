//! What a run of `hutch bench` leaves behind for the report: the time of every step of every
//! node, and small helpers the run uses to end nodes and describe failures.

use std::os::fd::OwnedFd;

/// What one node did in a run. Times are CLOCK_MONOTONIC nanoseconds.
#[derive(Debug, Default, Clone)]
pub(super) struct NodeRecord {
    pub called: u64,
    pub exec: u64,
    pub phases_ns: Vec<u64>,
    pub systemd: bool,
    pub attached: Option<u64>,
    pub agent: Option<u64>,
    pub ready: Option<u64>,
    pub cmd_sent: Option<u64>,
    pub cmd_done: Option<u64>,
    pub stop_sent: Option<u64>,
    pub exited: Option<u64>,
    pub peak: Option<u64>,
    pub failure: Option<String>,
}

/// A whole run: when it began, when every node was gone and cleaned up, and each node.
pub(super) struct RunRecord {
    pub t0: u64,
    pub done: u64,
    pub nodes: Vec<NodeRecord>,
    pub warnings: Vec<String>,
}

/// The end of a node's console, for failure messages (made safe for the terminal: no raw
/// escape sequences from the node).
pub(super) fn tail(console: &[u8]) -> String {
    let text = hutch_driver::safe_text::text(&String::from_utf8_lossy(console), false);
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    format!("; console ends: {}", lines[lines.len().saturating_sub(3)..].join(" | "))
}

/// pidfd_send_signal: no pid reuse race, and works from a process that is not the parent.
pub(super) fn signal(pidfd: &OwnedFd, sig: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with a pidfd we own, a null siginfo and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            std::os::fd::AsRawFd::as_raw_fd(pidfd),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
