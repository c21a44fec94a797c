//! A topology is checked before anything is created, and its addresses are the NixOS test
//! framework's.

use hutch_netns::{Addressing, Node, NodeSpec, Topology, TopologyError};

#[test]
fn numbers_follow_sorted_names_and_addresses_follow_nixos() {
    let t = Topology::new([
        NodeSpec::new("server", [1, 2]),
        NodeSpec::new("client", [2]),
        NodeSpec::new("router", [1, 2, 3]),
    ])
    .unwrap();
    let names: Vec<_> = t.nodes().iter().map(|n| (n.name.as_str(), n.number)).collect();
    assert_eq!(names, [("client", 1), ("router", 2), ("server", 3)]);
    let server = t.node("server").unwrap();
    assert_eq!(server.interfaces[0].name, "eth1");
    assert_eq!(server.interfaces[0].ipv4.to_string(), "192.168.1.3");
    assert_eq!(server.interfaces[1].name, "eth2");
    assert_eq!(server.interfaces[1].ipv6.to_string(), "2001:db8:2::3");
    assert_eq!(server.interfaces[1].mac.to_string(), "52:54:00:12:02:03");
    assert_eq!(t.vlans().iter().map(|v| v.get()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        t.hosts_file(),
        "127.0.0.1 localhost\n::1 localhost\n\
         192.168.2.1 client\n2001:db8:2::1 client\n\
         192.168.1.2 router\n2001:db8:1::2 router\n\
         192.168.1.3 server\n2001:db8:1::3 server\n"
    );
}

#[test]
fn bad_vlans_are_refused_with_the_node_named() {
    for bad in [0, 256, 4094] {
        let err = Topology::new([NodeSpec::new("web", [1, bad])]).unwrap_err();
        assert_eq!(
            err,
            TopologyError::VlanOutOfRange {
                node: "web".into(),
                vlan: bad
            }
        );
        let text = err.to_string();
        assert!(text.contains("\"web\"") && text.contains("1 to 255"), "{text}");
    }
    let err = Topology::new([NodeSpec::new("web", [3, 3])]).unwrap_err();
    assert!(err.to_string().contains("VLAN 3 twice"), "{err}");
}

#[test]
fn names_that_collide_as_host_names_are_refused() {
    let err = Topology::new([NodeSpec::new("Server", [1]), NodeSpec::new("server", [1])]).unwrap_err();
    assert!(matches!(err, TopologyError::NameCollision { .. }), "{err}");
    assert!(err.to_string().contains("rename one"), "{err}");
    let err = Topology::new([NodeSpec::new("a", [1]), NodeSpec::new("a", [2])]).unwrap_err();
    assert!(matches!(err, TopologyError::NameCollision { .. }), "{err}");
    for bad in ["web server", "web.example", "-web", "web-", "wéb", &"x".repeat(64)] {
        let err = Topology::new([NodeSpec::new(bad, [1])]).unwrap_err();
        assert!(matches!(err, TopologyError::InvalidName { .. }), "{bad}: {err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let err = Topology::new([NodeSpec::new("ok", [1]), NodeSpec::new("", [1])]).unwrap_err();
    assert_eq!(err, TopologyError::EmptyName { index: 1 });
    // Underscores and digits are fine, as NixOS allows them.
    Topology::new([NodeSpec::new("node_1", [1]), NodeSpec::new("2nd-node", [1])]).unwrap();
}

#[test]
fn more_than_254_nodes_on_a_vlan_is_refused_unless_large_addressing() {
    let nodes = |n: usize| (0..n).map(|i| NodeSpec::new(format!("n{i:04}"), [1]));
    assert!(Topology::new(nodes(254)).is_ok());
    let err = Topology::new(nodes(255)).unwrap_err();
    assert!(
        matches!(err, TopologyError::TooManyNodesOnVlan { vlan: 1, count: 255, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Addressing::Large"), "{err}");
    // 300 nodes over two VLANs still run out of NixOS node numbers.
    let split = (0..300).map(|i| NodeSpec::new(format!("n{i:04}"), [1 + (i % 2) as u32]));
    let err = Topology::new(split).unwrap_err();
    assert!(matches!(err, TopologyError::NodeNumberTooHigh { number: 255, .. }), "{err}");
    let big = Topology::with_addressing(nodes(1000), Addressing::Large).unwrap();
    let last = &big.nodes()[999];
    assert_eq!(last.interfaces[0].ipv4.to_string(), "10.1.3.232");
}

#[test]
fn a_standalone_node_gets_the_same_addresses() {
    let n = Node::standalone("solo", 7, &[5, 6], Addressing::NixOs).unwrap();
    assert_eq!(n.interfaces[1].ipv4.to_string(), "192.168.6.7");
    assert_eq!(n.interfaces[1].mac.to_string(), "52:54:00:12:06:07");
    let err = Node::standalone("solo", 0, &[1], Addressing::NixOs).unwrap_err();
    assert!(err.to_string().contains("1..=254"), "{err}");
    assert!(Node::standalone("solo", 255, &[1], Addressing::NixOs).is_err());
    assert!(Node::standalone("solo", 3, &[300], Addressing::NixOs).is_err());
}

#[test]
fn named_interfaces_follow_the_vlan_list_with_their_own_names() {
    use hutch_netns::InterfaceSpec;
    let named = |name: &str, vlan: u32, assign_ip: bool| InterfaceSpec {
        name: name.into(),
        vlan,
        assign_ip,
    };
    // As NixOS's virtualisation.interfaces: enp1s0 on VLAN 2 with the plan's addresses, a bare
    // uplink on VLAN 7; the MAC is the plan's for that VLAN and node, as QEMU's NIC gets it.
    let t = Topology::new([
        NodeSpec::new("a", [1]).with_interfaces([named("enp1s0", 2, true), named("uplink", 7, false)]),
        NodeSpec::new("b", []).with_interfaces([named("wan0", 2, false)]),
    ])
    .unwrap();
    let a = t.node("a").unwrap();
    let got: Vec<_> = a.interfaces.iter().map(|i| (i.name.as_str(), i.vlan.get(), i.assign_ip)).collect();
    assert_eq!(got, [("eth1", 1, true), ("enp1s0", 2, true), ("uplink", 7, false)]);
    assert_eq!(a.interfaces[1].ipv4.to_string(), "192.168.2.1");
    assert_eq!(a.interfaces[2].mac.to_string(), "52:54:00:12:07:01");
    assert_eq!(t.vlans().iter().map(|v| v.get()).collect::<Vec<_>>(), [1, 2, 7]);
    // b has no address anywhere, so no hosts line.
    assert_eq!(
        t.hosts_file(),
        "127.0.0.1 localhost\n::1 localhost\n192.168.1.1 a\n2001:db8:1::1 a\n"
    );

    for (bad, what) in [
        (named("eth1", 3, true), "taken"),
        (named("averyveryverylongname", 3, true), "15 bytes"),
        (named("a/b", 3, true), "allows"),
        (named("lo", 3, true), "allows"),
    ] {
        let err = Topology::new([NodeSpec::new("a", [1]).with_interfaces([bad])]).unwrap_err();
        assert!(matches!(err, TopologyError::InvalidInterfaceName { .. }), "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
    // One link per node and VLAN in the hub: a named interface on a VLAN of the list is refused.
    let err = Topology::new([NodeSpec::new("a", [1]).with_interfaces([named("x", 1, false)])]).unwrap_err();
    assert_eq!(err, TopologyError::DuplicateVlan { node: "a".into(), vlan: 1 });
}
