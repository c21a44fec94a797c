//! hutch-runtime: one node = one container.
//!
//! A node is started by [`Container::spawn`] from a validated [`NodeSpec`]. The start reads top to
//! bottom in the order the kernel sees it: the runtime clones a builder into the node's outer
//! user namespace and maps its ids (`container.rs`, `builder.rs`); the builder clones PID 1
//! into an inner user namespace with the node's other namespaces and builds the root
//! filesystem and systemd's Container Interface (`child.rs`); PID 1 takes a locked copy of
//! that mount table, confines itself and execs the node's init (`pid1.rs`). The driver's agent
//! is forked by the builder and joins the node from outside its pid namespace (`agent.rs`).
//! The runtime knows nothing of tests or networks: the driver and netns crates build on it.

mod agent;
mod builder;
mod cgroup;
mod child;
mod clone;
mod closure;
mod confine;
mod console;
mod container;
mod error;
mod fds;
mod idmap;
mod idmount;
mod init;
mod inroot;
mod janitor;
mod passwd;
mod pid1;
mod placement;
mod plan;
mod reaper;
mod scope;
mod spec;
mod sync;
mod timings;
mod ucounts;
mod upper;

pub use cgroup::{oom_counters, oom_kills, CgroupMode, DEFAULT_PIDS_MAX};
pub use console::set_window_size;
pub use container::{Container, Exit, Pending, StopReason};
pub use error::Error;
pub use fds::{close_all_but, stdio_to_null};
pub use idmap::{IdMap, IdMapKind};
pub use init::InitKind;
pub use janitor::defer_teardown;
pub use passwd::Passwd;
pub use placement::{cgroup_fix, check_node, settle};
pub use spec::{AgentHook, Bind, NodeSpec, RootFs, Size};
pub use timings::{Phase, Timings};
pub use ucounts::read_host_limits;
pub use upper::remove_layer;
