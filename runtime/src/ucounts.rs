//! Per-node caps on the kernel's per-user counters (inotify instances and watches, fanotify
//! groups and marks, namespaces). The kernel charges what a node's processes hold to every
//! user namespace level above them, up to the host's: there, to the user who runs hutch
//! (rootless) or to host root (as root, shared with systemd and udev). Unbounded, one node
//! took all 128 inotify instances of its user, and that user's other nodes and own processes
//! (the test script) could make none. Each node's outer user namespace gets half of each host
//! limit, written by its builder (root there); the node's processes live one namespace lower
//! and cannot raise it.

use std::ffi::CString;

/// The counters capped (files in /proc/sys/user).
const CAPPED: &[&str] = &[
    "max_inotify_instances",
    "max_inotify_watches",
    "max_fanotify_groups",
    "max_fanotify_marks",
    "max_user_namespaces",
    "max_mnt_namespaces",
    "max_net_namespaces",
    "max_pid_namespaces",
    "max_ipc_namespaces",
    "max_uts_namespaces",
    "max_cgroup_namespaces",
    "max_time_namespaces",
];

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
