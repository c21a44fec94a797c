//! The typed, validated description of a test's network: which node sits on which VLANs, and
//! the addresses that follow from it.

use std::collections::{BTreeMap, HashMap};

use crate::addressing::{Addressing, Interface, Vlan};
use crate::error::TopologyError;

/// A node as the caller describes it, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's name; it becomes the host name.
    pub name: String,
    /// VLAN numbers in order: the first becomes `eth1`, the second `eth2`, ... (NixOS's default
    /// list is `[1]`).
    pub vlans: Vec<u32>,
    /// Further interfaces with names of their own (NixOS's `virtualisation.interfaces`), each on
    /// a VLAN none of the node's other interfaces is on.
    pub interfaces: Vec<InterfaceSpec>,
}

/// A named interface as the caller describes it: NixOS's `virtualisation.interfaces.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// The interface's name inside the node (at most 15 bytes, as the kernel allows).
    pub name: String,
    /// The VLAN it is plugged into.
    pub vlan: u32,
    /// Whether it gets the address plan's addresses on that VLAN.
    pub assign_ip: bool,
}

impl NodeSpec {
    /// Describes a node with its ordered VLAN list.
    pub fn new(name: impl Into<String>, vlans: impl IntoIterator<Item = u32>) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            vlans: vlans.into_iter().collect(),
            interfaces: Vec::new(),
        }
    }

    /// The same node with named interfaces besides those of its VLAN list.
    pub fn with_interfaces(mut self, interfaces: impl IntoIterator<Item = InterfaceSpec>) -> NodeSpec {
        self.interfaces = interfaces.into_iter().collect();
        self
    }
}

/// A validated node: its number and its interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node's name (and host name).
    pub name: String,
    /// 1-based index of the name in the sorted list of all node names.
    pub number: u32,
    /// One interface per VLAN, in the node's list order, then the named ones in the order given.
    pub interfaces: Vec<Interface>,
}

impl Node {
    /// A node outside any topology, for a single node run on its own (`hutch run --vlan N
    /// --node-number N`): validates the name, the VLANs and the number the same way
    /// [`Topology::new`] does.
    pub fn standalone(name: &str, number: u32, vlans: &[u32], addressing: Addressing) -> Result<Node, TopologyError> {
        let spec = NodeSpec::new(name, vlans.iter().copied());
        check_name(0, &spec.name)?;
        let vlans = check_vlans(&spec)?;
        let max = addressing.max_node_number();
        if number == 0 || (number > max && !vlans.is_empty()) {
            return Err(TopologyError::InvalidNodeNumber {
                node: spec.name,
                number,
                max,
            });
        }
        Ok(build_node(spec.name, number, &vlans, &[], addressing))
    }

    /// The interface on `vlan`, if the node is on it.
    pub fn interface(&self, vlan: Vlan) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.vlan == vlan)
    }
}

/// The whole network of a test run. Exists so that every check happens before the hub creates
/// anything, and so the driver and the hub agree on every address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<Node>,
    addressing: Addressing,
}

impl Topology {
    /// Validates nodes with the NixOS address plan.
    pub fn new(nodes: impl IntoIterator<Item = NodeSpec>) -> Result<Topology, TopologyError> {
        Topology::with_addressing(nodes, Addressing::NixOs)
    }

    /// Validates nodes with the given address plan.
    pub fn with_addressing(nodes: impl IntoIterator<Item = NodeSpec>, addressing: Addressing) -> Result<Topology, TopologyError> {
        let mut specs: Vec<NodeSpec> = nodes.into_iter().collect();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (index, spec) in specs.iter().enumerate() {
            check_name(index, &spec.name)?;
            if let Some(first) = seen.insert(spec.name.to_ascii_lowercase(), spec.name.clone()) {
                return Err(TopologyError::NameCollision {
                    first,
                    second: spec.name.clone(),
                });
            }
        }
        // Node numbers follow the byte order of names, as Nix's attrNames sorts them.
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut checked = Vec::with_capacity(specs.len());
        let mut per_vlan: BTreeMap<u8, usize> = BTreeMap::new();
        for spec in &specs {
            let vlans = check_vlans(spec)?;
            let named = check_named(spec, &vlans)?;
            for v in vlans.iter().chain(named.iter().map(|(_, v, _)| v)) {
                *per_vlan.entry(v.get()).or_default() += 1;
            }
            checked.push((vlans, named));
        }
        let max = addressing.max_node_number();
        let hint = match addressing {
            Addressing::NixOs => " or build the topology with Addressing::Large",
            Addressing::Large => "",
        };
        for (&vlan, &count) in &per_vlan {
            if count > max as usize {
                return Err(TopologyError::TooManyNodesOnVlan { vlan, count, max, hint });
            }
        }
        let mut out = Vec::with_capacity(specs.len());
        for (i, (spec, (vlans, named))) in specs.into_iter().zip(checked).enumerate() {
            let number = i as u32 + 1;
            if number > max && !(vlans.is_empty() && named.is_empty()) {
                return Err(TopologyError::NodeNumberTooHigh {
                    node: spec.name,
                    number,
                    max,
                    hint,
                });
            }
            out.push(build_node(spec.name, number, &vlans, &named, addressing));
        }
        Ok(Topology { nodes: out, addressing })
    }

    /// All nodes, sorted by name (so `nodes()[n - 1]` is node number n).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// The address plan in use.
    pub fn addressing(&self) -> Addressing {
        self.addressing
    }

    /// Every VLAN some node is on, ascending.
    pub fn vlans(&self) -> Vec<Vlan> {
        let mut v: Vec<Vlan> = self.nodes.iter().flat_map(|n| n.interfaces.iter().map(|i| i.vlan)).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The `/etc/hosts` text for every node: localhost lines, then each node's first IPv4 and
    /// IPv6 address with its name, as NixOS's `networking.extraHosts` for tests writes them.
    pub fn hosts_file(&self) -> String {
        let mut s = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for node in &self.nodes {
            if let Some(first) = node.interfaces.iter().find(|i| i.assign_ip) {
                s.push_str(&format!("{} {}\n", first.ipv4, node.name));
                s.push_str(&format!("{} {}\n", first.ipv6, node.name));
            }
        }
        s
    }
}

fn build_node(name: String, number: u32, vlans: &[Vlan], named: &[(String, Vlan, bool)], addressing: Addressing) -> Node {
    let listed = vlans.iter().enumerate().map(|(k, &v)| addressing.interface(v, number, k + 1));
    let named = named.iter().map(|(name, vlan, assign_ip)| Interface {
        name: name.clone(),
        assign_ip: *assign_ip,
        ..addressing.interface(*vlan, number, 0)
    });
    Node {
        name,
        number,
        interfaces: listed.chain(named).collect(),
    }
}

/// The named interfaces of a node: names the kernel takes, unlike each other and the VLAN list's
/// `ethN`, each on a VLAN of its own (the hub has one link per node and VLAN).
fn check_named(spec: &NodeSpec, vlans: &[Vlan]) -> Result<Vec<(String, Vlan, bool)>, TopologyError> {
    let mut names: Vec<String> = (1..=vlans.len()).map(|k| format!("eth{k}")).collect();
    let mut used: Vec<Vlan> = vlans.to_vec();
    let mut out = Vec::with_capacity(spec.interfaces.len());
    for i in &spec.interfaces {
        let bad = |reason: &str| TopologyError::InvalidInterfaceName {
            node: spec.name.clone(),
            name: i.name.clone(),
            reason: reason.to_string(),
        };
        if i.name.is_empty() || i.name.len() > 15 {
            return Err(bad("must have 1 to 15 bytes (the kernel's limit); use a shorter name"));
        }
        if i.name == "." || i.name == ".." || i.name == "lo" || i.name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
            return Err(bad(
                "is not one the kernel allows (no '/', ':' or spaces; not \"lo\"); use letters and digits",
            ));
        }
        if names.contains(&i.name) {
            return Err(bad(
                "is taken by another interface of the node (`vlans` become eth1, eth2, ...); rename it",
            ));
        }
        let vlan = Vlan::new(i.vlan).ok_or_else(|| TopologyError::VlanOutOfRange {
            node: spec.name.clone(),
            vlan: i.vlan,
        })?;
        if used.contains(&vlan) {
            return Err(TopologyError::DuplicateVlan {
                node: spec.name.clone(),
                vlan: vlan.get(),
            });
        }
        names.push(i.name.clone());
        used.push(vlan);
        out.push((i.name.clone(), vlan, i.assign_ip));
    }
    Ok(out)
}

/// Host name rules as NixOS's `networking.hostName` states them: 1..=63 characters, letters,
/// digits, `-` and `_`, starting and ending with a letter or digit.
fn check_name(index: usize, name: &str) -> Result<(), TopologyError> {
    let bad = |reason: &str| TopologyError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(TopologyError::EmptyName { index });
    }
    if name.len() > 63 {
        return Err(bad("longer than 63 characters; use a shorter name"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(bad(&format!(
            "character {c:?} is not allowed; use only ASCII letters, digits, '-' and '_'"
        )));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        return Err(bad("it must start and end with a letter or digit"));
    }
    Ok(())
}

fn check_vlans(spec: &NodeSpec) -> Result<Vec<Vlan>, TopologyError> {
    let mut out: Vec<Vlan> = Vec::with_capacity(spec.vlans.len());
    for &v in &spec.vlans {
        let vlan = Vlan::new(v).ok_or_else(|| TopologyError::VlanOutOfRange {
            node: spec.name.clone(),
            vlan: v,
        })?;
        if out.contains(&vlan) {
            return Err(TopologyError::DuplicateVlan {
                node: spec.name.clone(),
                vlan: vlan.get(),
            });
        }
        out.push(vlan);
    }
    Ok(out)
}
