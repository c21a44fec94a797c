//! Error types: one for validating a topology, one for building and driving the hub.

use std::io;

/// A topology that cannot be built. Reported before anything is created; each message names the
/// node or VLAN at fault and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// A node has an empty name.
    #[error("node #{index} (0-based, in the order given) has an empty name: give every node a host name such as \"server\"")]
    EmptyName {
        /// Position of the node in the list given to [`crate::Topology::new`].
        index: usize,
    },
    /// A node name is not a valid host name.
    #[error("node name {name:?} is not a valid host name: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// What is wrong and what to use instead.
        reason: String,
    },
    /// Two node names become the same host name (host names ignore case).
    #[error("node names {first:?} and {second:?} are the same host name (host names ignore case): rename one of them")]
    NameCollision {
        /// The first name.
        first: String,
        /// The name that collides with it.
        second: String,
    },
    /// A VLAN number outside 1..=255.
    #[error("node {node:?}: VLAN {vlan} is outside 1..=255 (the address scheme puts the VLAN in one byte of 192.168.<vlan>.<node>): use a VLAN number from 1 to 255")]
    VlanOutOfRange {
        /// The node whose VLAN list holds the number.
        node: String,
        /// The number given.
        vlan: u32,
    },
    /// The same VLAN twice in one node's list.
    #[error("node {node:?} lists VLAN {vlan} twice: its two interfaces would get the same addresses; list each VLAN once")]
    DuplicateVlan {
        /// The node.
        node: String,
        /// The repeated VLAN.
        vlan: u8,
    },
    /// A named interface (`NodeSpec::interfaces`) whose name the kernel would refuse or that
    /// repeats another of the node's interface names.
    #[error("node {node:?}: interface name {name:?} {reason}")]
    InvalidInterfaceName {
        /// The node.
        node: String,
        /// The offending name.
        name: String,
        /// What is wrong and what to use instead.
        reason: String,
    },
    /// More nodes on one VLAN than the address plan can number.
    #[error("VLAN {vlan} has {count} nodes, but the address plan numbers at most {max} per VLAN: spread the nodes over more VLANs{hint}")]
    TooManyNodesOnVlan {
        /// The VLAN.
        vlan: u8,
        /// How many nodes were put on it.
        count: usize,
        /// The plan's limit.
        max: u32,
        /// Extra advice (empty when none applies).
        hint: &'static str,
    },
    /// A node whose number (its place in the sorted list of names) is past the plan's limit.
    #[error("node {node:?} is number {number} in the sorted list of node names, but the address plan numbers nodes 1..={max}: use fewer nodes{hint}")]
    NodeNumberTooHigh {
        /// The node.
        node: String,
        /// Its number.
        number: u32,
        /// The plan's limit.
        max: u32,
        /// Extra advice (empty when none applies).
        hint: &'static str,
    },
    /// A node number given directly (a node run on its own) outside the plan's range.
    #[error("node {node:?}: node number {number} is outside 1..={max}: give a number in that range")]
    InvalidNodeNumber {
        /// The node.
        node: String,
        /// The number given.
        number: u32,
        /// The plan's limit.
        max: u32,
    },
}

/// A failure while creating or driving the hub's network.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A system call on namespaces failed.
    #[error("{what} failed{hint}")]
    Namespace {
        /// The step that failed.
        what: &'static str,
        /// Advice, e.g. about privileges (may be empty).
        hint: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: {what}")]
    Netlink {
        /// The request, naming the node and interface.
        what: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The node name is not in the hub's topology.
    #[error("no node named {0:?} in this topology: attach only nodes the topology lists")]
    UnknownNode(String),
    /// The node has no interface on that VLAN.
    #[error("node {node:?} is not on VLAN {vlan}: use one of the VLANs in its list")]
    NotOnVlan {
        /// The node.
        node: String,
        /// The VLAN asked for.
        vlan: u8,
    },
    /// The node is attached already.
    #[error("node {0:?} is attached already: call detach first (e.g. after the node restarted with a new namespace)")]
    AlreadyAttached(String),
    /// The node is not attached.
    #[error("node {0:?} is not attached: call attach first")]
    NotAttached(String),
    /// Shaping parameters out of range.
    #[error("shape for node {node:?}: {reason}")]
    InvalidShape {
        /// The node.
        node: String,
        /// What is wrong and the accepted range.
        reason: String,
    },
    /// Netem was asked for but the kernel has no netem qdisc.
    #[error("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM, module sch_netem): load the module, or use ShapingBackend::Auto or UserSpace")]
    NoNetem,
    /// The hub's netlink thread is gone (it panicked or failed to start).
    #[error("the hub's netlink thread has stopped: create a new Hub")]
    WorkerGone,
}

impl HubError {
    /// Shorthand for a namespace syscall failure from an errno.
    pub(crate) fn ns(what: &'static str, errno: nix::errno::Errno) -> HubError {
        let hint = match errno {
            nix::errno::Errno::EPERM => ": run as root, or inside a user namespace you own (e.g. `unshare --user --map-root-user --net`)",
            nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE => {
                ": too many open files; raise the limit (ulimit -n) for large topologies"
            }
            _ => "",
        };
        HubError::Namespace {
            what,
            hint,
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }
}
