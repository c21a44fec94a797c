//! Addresses a node gets on each VLAN: the NixOS test framework's scheme, and a wider one for
//! LANs larger than that scheme allows.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A VLAN number, 1..=255. Exists so that a validated number cannot be confused with an index or
/// a node number anywhere in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vlan(u8);

impl Vlan {
    /// Checks a VLAN number: the address scheme puts it in one byte of the IPv4 address, so it
    /// must be 1..=255. Returns `None` outside that range.
    pub fn new(number: u32) -> Option<Vlan> {
        match u8::try_from(number) {
            Ok(n) if n >= 1 => Some(Vlan(n)),
            _ => None,
        }
    }

    /// The VLAN number as a byte, the way it appears in addresses.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Vlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An Ethernet address. Exists to print and compare MACs as the NixOS driver writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

/// Which address plan a topology uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Addressing {
    /// The NixOS test framework's plan, which every existing test script assumes:
    /// `192.168.v.n/24`, `2001:db8:v::n/64` (decimal digits written into the hex groups, exactly
    /// as NixOS does), MAC `52:54:00:12:vv:nn`. Node numbers 1..=254.
    #[default]
    NixOs,
    /// For LANs beyond 254 nodes (scale tests): `10.v.hi.lo/16` with `n = hi * 256 + lo`,
    /// `2001:db8:v::n/64` (n in hex), MAC `52:54:01:vv:hi:lo`. Node numbers 1..=65534.
    Large,
}

impl Addressing {
    /// The highest node number this plan can address.
    pub fn max_node_number(self) -> u32 {
        match self {
            Addressing::NixOs => 254,
            Addressing::Large => 65534,
        }
    }

    /// The interface of node `number` on `vlan`, named `eth{position}`. Callers keep `number`
    /// within [`Addressing::max_node_number`] (a [`crate::Topology`] checks it).
    pub fn interface(self, vlan: Vlan, number: u32, position: usize) -> Interface {
        let v = vlan.get();
        let name = format!("eth{position}");
        match self {
            Addressing::NixOs => {
                let n = number as u8;
                // NixOS builds the text "2001:db8:${vlan}::${n}" from decimal numbers, so
                // VLAN 12 becomes the hex group 0x12: parse the same text to match it exactly.
                let ipv6 = format!("2001:db8:{v}::{n}").parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
                Interface {
                    name,
                    vlan,
                    mac: MacAddr([0x52, 0x54, 0x00, 0x12, v, n]),
                    ipv4: Ipv4Addr::new(192, 168, v, n),
                    ipv4_prefix: 24,
                    ipv6,
                    ipv6_prefix: 64,
                    assign_ip: true,
                }
            }
            Addressing::Large => {
                let hi = (number >> 8) as u8;
                let lo = number as u8;
                Interface {
                    name,
                    vlan,
                    mac: MacAddr([0x52, 0x54, 0x01, v, hi, lo]),
                    ipv4: Ipv4Addr::new(10, v, hi, lo),
                    ipv4_prefix: 16,
                    ipv6: Ipv6Addr::new(0x2001, 0xdb8, u16::from(v), 0, 0, 0, 0, number as u16),
                    ipv6_prefix: 64,
                    assign_ip: true,
                }
            }
        }
    }
}

/// One network interface of a node, as the hub creates it and as the driver describes it to a
/// test (`vlans`, addresses, `/etc/hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name inside the node: `eth1`, `eth2`, ... in the order of the node's VLAN list, or the
    /// name a [`crate::InterfaceSpec`] gives.
    pub name: String,
    /// The VLAN (bridge in the hub) this interface is plugged into.
    pub vlan: Vlan,
    /// The interface's Ethernet address.
    pub mac: MacAddr,
    /// IPv4 address.
    pub ipv4: Ipv4Addr,
    /// IPv4 prefix length.
    pub ipv4_prefix: u8,
    /// IPv6 address (added without duplicate address detection, so it is usable at once).
    pub ipv6: Ipv6Addr,
    /// IPv6 prefix length.
    pub ipv6_prefix: u8,
    /// Whether the hub puts the addresses above on the interface (always for VLAN-list
    /// interfaces; NixOS's `virtualisation.interfaces.<name>.assignIP` for named ones). Without,
    /// the interface is up with no address, for the node's own configuration to set.
    pub assign_ip: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nixos_scheme_matches_the_nixos_driver() {
        let i = Addressing::NixOs.interface(Vlan::new(12).unwrap(), 3, 2);
        assert_eq!(i.name, "eth2");
        assert_eq!(i.ipv4, Ipv4Addr::new(192, 168, 12, 3));
        assert_eq!(i.ipv6.to_string(), "2001:db8:12::3");
        assert_eq!(i.mac.to_string(), "52:54:00:12:0c:03");
        let j = Addressing::NixOs.interface(Vlan::new(255).unwrap(), 254, 1);
        assert_eq!(j.mac.to_string(), "52:54:00:12:ff:fe");
        assert_eq!(j.ipv6.to_string(), "2001:db8:255::254");
    }

    #[test]
    fn large_scheme_spans_a_slash_16() {
        let i = Addressing::Large.interface(Vlan::new(1).unwrap(), 1000, 1);
        assert_eq!(i.ipv4, Ipv4Addr::new(10, 1, 3, 232));
        assert_eq!(i.ipv6.to_string(), "2001:db8:1::3e8");
        assert_eq!(i.mac.to_string(), "52:54:01:01:03:e8");
    }

    #[test]
    fn vlan_range() {
        assert!(Vlan::new(0).is_none());
        assert!(Vlan::new(256).is_none());
        assert_eq!(Vlan::new(255).map(Vlan::get), Some(255));
    }
}
