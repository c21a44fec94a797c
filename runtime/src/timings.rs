//! Monotonic timestamps of each step of a node's start, carried back to the caller.

use std::time::Duration;

/// The steps of a node's start, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// From the spawn call to the builder's clone returning in the runtime.
    Clone,
    /// Writing the builder's uid/gid maps, attaching the image view, joining v1 cgroups.
    IdMap,
    /// The builder making the root filesystem and the Container Interface mounts.
    Mounts,
    /// PID 1 creating its network, uts and ipc namespaces, loopback up, hostname.
    Network,
    /// Capability bounding set and seccomp filter.
    Confine,
    /// From PID 1's last step to the runtime seeing the exec succeed.
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

/// How long each phase of one node's start took. The builder makes the mounts while PID 1
/// makes its network and confines itself, so phases overlap: their sum exceeds the wall time.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Durations indexed like [`Phase::ALL`].
    pub phases: [Duration; 6],
    /// From the spawn call to the exec seen by the runtime (with the caller's wiring between
    /// [`crate::Container::prepare`] and [`crate::Pending::start`]).
    pub wall: Duration,
}

impl Timings {
    /// The duration of one phase.
    pub fn get(&self, phase: Phase) -> Duration {
        self.phases[phase as usize]
    }

    /// Spawn call to exec.
    pub fn total(&self) -> Duration {
        self.wall
    }
}

/// Nanoseconds on CLOCK_MONOTONIC, comparable across the processes of one host.
pub(crate) fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}
