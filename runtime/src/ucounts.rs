//! Per-node caps on the kernel's per-user counters (inotify instances and watches, fanotify
//! groups and marks, namespaces). The kernel charges what a node's processes hold to every
//! user namespace level above them, up to the host's: there, to the user who runs hutch
//! (rootless) or to host root (as root, shared with systemd and udev). Unbounded, one node
//! took all 128 inotify instances of its user, and that user's other nodes and own processes
//! (the test script) could make none. Each node's outer user namespace gets half of each host
//! limit, written by its builder (root there); the node's processes live one namespace lower
//! and cannot raise it. The per-user resource limits counted the same way (message queues,
//! queued signals) are halved as hard limits.

use std::ffi::CString;

/// The counters capped (files in /proc/sys/user): those a node's services use up (inotify,
/// fanotify) or that a node's own containers and services' sandboxes make (user and mount
/// namespaces). Each write costs about 5 us of the start; the other namespace kinds are
/// left to the host's limits.
const CAPPED: &[&str] = &[
    "max_inotify_instances",
    "max_inotify_watches",
    "max_fanotify_groups",
    "max_fanotify_marks",
    "max_user_namespaces",
    "max_mnt_namespaces",
];

/// Resource limits counted per user across user namespaces (since Linux 5.14) that a node
/// gets half of, as hard limits its root cannot raise: POSIX message queue bytes and queued
/// signals of the user who runs hutch.
const HALVED_RLIMITS: &[libc::__rlimit_resource_t] = &[libc::RLIMIT_MSGQUEUE, libc::RLIMIT_SIGPENDING];

/// One cap: the /proc/sys/user file and the value the builder writes there.
pub(crate) struct Cap {
    pub file: CString,
    pub value: String,
}

/// Reads the host's limits now, for [`node_caps`]: a process about to enter a user namespace
/// of its own (rootless `hutch test`) calls it first, since a new user namespace shows no
/// limits of its own (every counter at INT_MAX), not the host's.
pub fn read_host_limits() {
    node_caps();
}

/// The caps for a node: half of each host limit this kernel has (read once per process).
pub(crate) fn node_caps() -> &'static [Cap] {
    static CAPS: std::sync::OnceLock<Vec<Cap>> = std::sync::OnceLock::new();
    CAPS.get_or_init(|| {
        CAPPED
            .iter()
            .filter_map(|name| {
                let path = format!("/proc/sys/user/{name}");
                let host: u64 = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
                Some(Cap {
                    file: CString::new(path).ok()?,
                    value: (host / 2).max(1).to_string(),
                })
            })
            .collect()
    })
}

/// Writes the caps into the caller's user namespace (the builder's: it is root there).
pub(crate) fn apply(caps: &[Cap]) -> Result<(), nix::errno::Errno> {
    for cap in caps {
        let fd = nix::fcntl::open(
            cap.file.as_c_str(),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        nix::unistd::write(&fd, cap.value.as_bytes())?;
    }
    Ok(())
}

/// Halves the resource limits in [`HALVED_RLIMITS`] for the calling process and what it
/// starts (the builder, before it clones PID 1).
pub(crate) fn halve_rlimits() -> Result<(), nix::errno::Errno> {
    for &resource in HALVED_RLIMITS {
        // SAFETY: rlimit is plain old data; all-zero is a valid value.
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: getrlimit writes into `lim`, which outlives the call.
        nix::errno::Errno::result(unsafe { libc::getrlimit(resource, &mut lim) })?;
        if lim.rlim_max == libc::RLIM_INFINITY {
            continue;
        }
        let half = (lim.rlim_max / 2).max(1);
        let new = libc::rlimit {
            rlim_cur: lim.rlim_cur.min(half),
            rlim_max: half,
        };
        // SAFETY: setrlimit reads `new`, which outlives the call; lowering needs no privilege.
        nix::errno::Errno::result(unsafe { libc::setrlimit(resource, &new) })?;
    }
    Ok(())
}
