//! Virtual LANs for hutch over netlink.
//!
//! A [`Topology`] says which node sits on which VLANs and fixes every address the NixOS test
//! framework would give it. A [`Hub`] builds the network: a private network namespace holding a
//! bridge per VLAN, and per node and VLAN a veth whose far end is created directly inside the
//! node's namespace as `eth1`, `eth2`, ... Links can be cut ([`Hub::block`]) and shaped
//! ([`Hub::shape`]) at run time. Nothing touches the caller's own network namespace, and all of
//! it works inside a user namespace the caller owns.
//!
//! Shaping uses a netem qdisc on the hub end of the node's link. Kernels built without netem
//! (this project's CI kernel is one) get a user-space relay instead: the link leaves its bridge,
//! a spare veth pair takes its place, and the hub thread carries frames between them with packet
//! sockets, delaying, dropping and pacing those bound for the node. See [`ShapingBackend`].
//!
//! This crate knows namespace fds, not containers.

mod addressing;
mod error;
mod ethtool;
mod hub;
mod messages;
mod ns;
mod quiet;
mod relay;
mod shape;
mod shaping;
mod topology;
mod worker;

pub use addressing::{Addressing, Interface, MacAddr, Vlan};
pub use error::{HubError, TopologyError};
pub use hub::{Hub, HubOptions};
pub use ns::{bare_namespaces, netns_id};
pub use shape::{Shape, ShapingBackend};
pub use topology::{InterfaceSpec, Node, NodeSpec, Topology};
