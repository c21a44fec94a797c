//! hutch-runtime: one node = one container.
//!
//! A node is started by [`Container::spawn`] from a validated [`NodeSpec`]. The start reads top to
//! bottom in the order the kernel sees it (see `child.rs`): clone into new namespaces, map ids,
//! build the root filesystem and systemd's Container Interface, confine, exec the node's init.
//! The runtime knows nothing of tests or networks: the driver and netns crates build on it.

mod cgroup;
mod child;
mod closure;
mod confine;
mod console;
mod container;
mod error;
mod idmap;
mod idmount;
mod init;
mod plan;
mod spec;
mod sync;
mod timings;

pub use cgroup::{oom_counters, oom_kills, CgroupMode};
pub use container::{Container, Exit, Pending, StopReason};
pub use error::Error;
pub use idmap::{IdMap, IdMapKind};
pub use init::InitKind;
pub use spec::{AgentHook, Bind, NodeSpec, RootFs, Size};
pub use timings::{Phase, Timings};
