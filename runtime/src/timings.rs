//! Monotonic timestamps of each step of a node's start, carried back to the caller.

use std::time::Duration;

/// The steps of a node's start, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// From the spawn call to the clone returning in the parent.
    Clone,
    /// Writing the uid/gid maps and placing the node in its cgroup.
    IdMap,
    /// Building the root filesystem and the Container Interface mounts, up to pivot_root.
    Mounts,
    /// Loopback up, hostname.
    Network,
    /// Capability bounding set and seccomp filter.
    Confine,
    /// From the last setup step to the parent seeing the exec succeed.
    Exec,
}

impl Phase {
    /// All phases, in order.
    pub const ALL: [Phase; 6] = [
        Phase::Clone,
        Phase::IdMap,
        Phase::Mounts,
        Phase::Network,
        Phase::Confine,
        Phase::Exec,
    ];

    /// The phase's name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Clone => "clone",
            Phase::IdMap => "idmap",
            Phase::Mounts => "mounts",
            Phase::Network => "network",
            Phase::Confine => "confine",
            Phase::Exec => "exec",
        }
    }
}

/// How long each phase of one node's start took.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Durations indexed like [`Phase::ALL`].
    pub phases: [Duration; 6],
}

impl Timings {
    /// The duration of one phase.
    pub fn get(&self, phase: Phase) -> Duration {
        self.phases[phase as usize]
    }

    /// The sum of all phases: spawn call to exec.
    pub fn total(&self) -> Duration {
        self.phases.iter().sum()
    }
}

/// Nanoseconds on CLOCK_MONOTONIC, comparable across the processes of one host.
pub(crate) fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}
