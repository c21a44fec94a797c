//! What a LAN must do: nodes on one VLAN reach each other over IPv4 and IPv6, VLANs stay apart,
//! a router joins them, and nothing survives the hub.

mod common;

use common::*;
use hutch_netns::{bare_namespaces, Hub, InterfaceSpec, NodeSpec, Topology};
use std::os::fd::AsFd;

#[test]
fn ping_both_ways_ipv4_and_ipv6() {
    if !can_run("ping_both_ways_ipv4_and_ipv6") {
        return;
    }
    let topo = Topology::new([NodeSpec::new("client", [1]), NodeSpec::new("server", [1])]).unwrap();
    let ns = bare_namespaces(2).unwrap();
    let hub = Hub::new(&topo).unwrap();
    hub.attach("client", ns[0].as_fd()).unwrap();
    hub.attach("server", ns[1].as_fd()).unwrap();
    // client = node 1, server = node 2 (sorted names).
    assert_ping(&ns[0], "192.168.1.2");
    assert_ping(&ns[1], "192.168.1.1");
    assert_ping(&ns[0], "2001:db8:1::2");
    assert_ping(&ns[1], "2001:db8:1::1");
    // The node sees eth1 with the NixOS MAC and no default route.
    let link = String::from_utf8_lossy(&run_in(&ns[1], &["ip", "-o", "link", "show", "eth1"]).stdout).to_string();
    assert!(link.contains("52:54:00:12:01:02"), "{link}");
    let routes = String::from_utf8_lossy(&run_in(&ns[1], &["ip", "route"]).stdout).to_string();
    assert!(!routes.contains("default"), "{routes}");
    let lo = String::from_utf8_lossy(&run_in(&ns[1], &["ip", "-o", "link", "show", "lo"]).stdout).to_string();
    assert!(lo.contains("UP"), "{lo}");
    // GRO on the node end (its own NAPI ring: floods on big LANs do not overflow the backlog).
    if std::path::Path::new("/usr/sbin/ethtool").exists() {
        let k = run_in(&ns[1], &["/usr/sbin/ethtool", "-k", "eth1"]);
        let k = String::from_utf8_lossy(&k.stdout).to_string();
        assert!(k.contains("generic-receive-offload: on"), "{k}");
    }
}

/// Named interfaces (NixOS's `virtualisation.interfaces`): the name and the plan's MAC inside the
/// node, the plan's addresses only when asked for, and traffic on their VLAN either way.
#[test]
fn named_interfaces_carry_their_vlan_with_or_without_addresses() {
    if !can_run("named_interfaces_carry_their_vlan_with_or_without_addresses") {
        return;
    }
    let named = |name: &str, assign_ip: bool| InterfaceSpec {
        name: name.into(),
        vlan: 5,
        assign_ip,
    };
    let topo = Topology::new([
        NodeSpec::new("a", [1]).with_interfaces([named("enp1s0", true)]),
        NodeSpec::new("b", []).with_interfaces([named("uplink", false)]),
    ])
    .unwrap();
    let ns = bare_namespaces(2).unwrap();
    let hub = Hub::new(&topo).unwrap();
    hub.attach("a", ns[0].as_fd()).unwrap();
    hub.attach("b", ns[1].as_fd()).unwrap();
    let text = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    let a = text(run_in(&ns[0], &["ip", "-o", "addr", "show", "enp1s0"]));
    assert!(a.contains("192.168.5.1/24"), "{a}");
    let b_link = text(run_in(&ns[1], &["ip", "-o", "link", "show", "uplink"]));
    assert!(b_link.contains("52:54:00:12:05:02") && b_link.contains("UP"), "{b_link}");
    let b_addr = text(run_in(&ns[1], &["ip", "-o", "-4", "addr", "show", "uplink"]));
    assert!(b_addr.trim().is_empty(), "uplink has no address of the plan's: {b_addr}");
    // b sets an address of its own choosing; the VLAN carries it to a's named interface.
    let own = run_in(&ns[1], &["ip", "addr", "add", "192.168.5.99/24", "dev", "uplink"]);
    assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
    assert_ping(&ns[1], "192.168.5.1");
    drop(hub);
}

/// A node's link is cheap to create and quiet when it comes up, and IPv6 still works at once:
/// one queue pair per veth end, no DAD for the link-local address (usable without the DAD
/// second), no kernel router solicitations.
#[test]
fn links_are_single_queue_and_quiet() {
    if !can_run("links_are_single_queue_and_quiet") {
        return;
    }
    let (hub, ns) = attached_lan(&[("a", &[1]), ("b", &[1])]);
    let text = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    let node = text(run_in(&ns[1], &["ip", "-d", "link", "show", "eth1"]));
    assert!(node.contains("numtxqueues 1 numrxqueues 1"), "node end:\n{node}");
    let hub_ns = hub.netns().try_clone_to_owned().unwrap();
    let hub_end = text(run_in(&hub_ns, &["ip", "-d", "link", "show", "n2v1"]));
    assert!(hub_end.contains("numtxqueues 1 numrxqueues 1"), "hub end:\n{hub_end}");
    for (key, want) in [("accept_dad", "0"), ("router_solicitations", "0")] {
        let got = text(run_in(&ns[1], &["cat", &format!("/proc/sys/net/ipv6/conf/eth1/{key}")]));
        assert_eq!(got.trim(), want, "{key} on the node's eth1");
    }
    // The link-local address is there and not tentative, so it works right away.
    let addrs = text(run_in(&ns[0], &["ip", "-6", "-o", "addr", "show", "dev", "eth1", "scope", "link"]));
    assert!(addrs.contains("fe80::") && !addrs.contains("tentative"), "{addrs}");
    let peer_ll = text(run_in(&ns[1], &["ip", "-6", "-o", "addr", "show", "dev", "eth1", "scope", "link"]));
    let ll = peer_ll
        .split_whitespace()
        .find(|w| w.starts_with("fe80::"))
        .and_then(|w| w.split('/').next())
        .unwrap_or_else(|| panic!("no link-local address on b: {peer_ll}"))
        .to_string();
    assert_ping(&ns[0], &format!("{ll}%eth1"));
    assert_ping(&ns[0], "2001:db8:1::2");
}

#[test]
fn vlans_are_separate() {
    if !can_run("vlans_are_separate") {
        return;
    }
    let (_hub, ns) = attached_lan(&[("a", &[1]), ("b", &[2])]);
    // Make the other VLAN's subnet on-link, so only the bridges could carry the packets.
    sh_in(&ns[0], "ip route add 192.168.2.0/24 dev eth1");
    sh_in(&ns[1], "ip route add 192.168.1.0/24 dev eth1");
    let (ok, text) = ping(&ns[0], "192.168.2.2", &["-c", "2", "-i", "0.2", "-W", "1"]);
    assert!(!ok, "a reached b across VLANs:\n{text}");
    let (ok, text) = ping(&ns[1], "192.168.1.1", &["-c", "2", "-i", "0.2", "-W", "1"]);
    assert!(!ok, "b reached a across VLANs:\n{text}");
}

#[test]
fn router_forwards_between_vlans() {
    if !can_run("router_forwards_between_vlans") {
        return;
    }
    // Sorted: left = 1, right = 2, router = 3.
    let topo = Topology::new([
        NodeSpec::new("left", [1]),
        NodeSpec::new("right", [2]),
        NodeSpec::new("router", [1, 2]),
    ])
    .unwrap();
    let ns = bare_namespaces(3).unwrap();
    let hub = Hub::new(&topo).unwrap();
    hub.attach("left", ns[0].as_fd()).unwrap();
    hub.attach("right", ns[1].as_fd()).unwrap();
    hub.attach("router", ns[2].as_fd()).unwrap();
    let router_links = String::from_utf8_lossy(&run_in(&ns[2], &["ip", "-o", "addr"]).stdout).to_string();
    assert!(router_links.contains("eth1") && router_links.contains("192.168.1.3/24"));
    assert!(router_links.contains("eth2") && router_links.contains("192.168.2.3/24"));
    sh_in(
        &ns[0],
        "ip route add 192.168.2.0/24 via 192.168.1.3; ip -6 route add 2001:db8:2::/64 via 2001:db8:1::3",
    );
    sh_in(
        &ns[1],
        "ip route add 192.168.1.0/24 via 192.168.2.3; ip -6 route add 2001:db8:1::/64 via 2001:db8:2::3",
    );
    // Forwarding off (the default): no way through.
    let (ok, _) = ping(&ns[0], "192.168.2.2", &["-c", "1", "-W", "1"]);
    assert!(!ok, "router forwarded before forwarding was enabled");
    sh_in(
        &ns[2],
        "echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
    );
    assert_ping(&ns[0], "192.168.2.2");
    assert_ping(&ns[1], "192.168.1.1");
    assert_ping(&ns[0], "2001:db8:2::2");
}

#[test]
fn nothing_left_after_drop() {
    if !can_run("nothing_left_after_drop") {
        return;
    }
    assert!(our_links_in_host().is_empty(), "{:?}", our_links_in_host());
    let topo = Topology::new([NodeSpec::new("x", [1, 3]), NodeSpec::new("y", [3])]).unwrap();
    let ns = bare_namespaces(2).unwrap();
    let hub = Hub::new(&topo).unwrap();
    let hub_id = hutch_netns::netns_id(hub.netns()).unwrap();
    hub.attach("x", ns[0].as_fd()).unwrap();
    hub.attach("y", ns[1].as_fd()).unwrap();
    assert_ping(&ns[1], "192.168.3.1");
    // Nothing in the host's own namespace, while running either.
    assert!(our_links_in_host().is_empty(), "{:?}", our_links_in_host());
    drop(hub);
    // The node ends go when the kernel dismantles the hub namespace.
    let gone = wait_for(5.0, || {
        let out = run_in(&ns[0], &["ip", "-o", "link"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        !text.contains("eth1") && !text.contains("eth2")
    });
    assert!(gone, "node links survived the hub");
    // No thread or fd of this process refers to the hub namespace any more.
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let p = entry.unwrap().path().join("ns/net");
        if let Ok(f) = std::fs::File::open(&p) {
            assert_ne!(hutch_netns::netns_id(f.as_fd()).unwrap(), hub_id, "{p:?}");
        }
    }
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let p = entry.unwrap().path();
        if std::fs::read_link(&p).is_ok_and(|t| t.to_string_lossy().starts_with("net:")) {
            if let Ok(f) = std::fs::File::open(&p) {
                assert_ne!(hutch_netns::netns_id(f.as_fd()).unwrap(), hub_id, "{p:?}");
            }
        }
    }
    assert!(our_links_in_host().is_empty(), "{:?}", our_links_in_host());
}
