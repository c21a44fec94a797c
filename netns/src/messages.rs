//! The netlink messages the hub sends, built by hand so each carries exactly what the kernel
//! needs in one request (a veth with its far end already inside the node, for one).

use std::net::IpAddr;
use std::os::fd::RawFd;

use futures::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_utils::nla::DefaultNla;
use rtnetlink::Handle;

use crate::addressing::Interface;

/// Sends one request and waits for its answer. Returns the kernel's replies (for GET requests)
/// or the kernel's error as an `io::Error`.
pub(crate) async fn request(handle: &Handle, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, std::io::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | flags;
    let mut handle = handle.clone();
    let mut replies = handle
        .request(req)
        .map_err(|_| std::io::Error::other("the netlink connection is closed"))?;
    let mut out = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
            NetlinkPayload::InnerMessage(m) => out.push(m),
            _ => {}
        }
    }
    Ok(out)
}

/// Flags for creating something that must not exist yet.
pub(crate) const CREATE: u16 = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
/// Flags for creating or replacing (qdiscs).
pub(crate) const REPLACE: u16 = NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
/// Flags for changing or deleting.
pub(crate) const ACK: u16 = NLM_F_ACK;

/// A bridge for one VLAN: no STP (ports forward at once), no multicast snooping (IPv6 neighbour
/// discovery works without an MLD querier), a fixed MAC so adding ports never re-elects one.
pub(crate) fn new_bridge(name: &str, mac: [u8; 6]) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::Address(mac.to_vec()),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::StpState(0),
                InfoBridge::ForwardDelay(0),
                InfoBridge::MulticastSnooping(0),
            ])),
        ]),
    ];
    RouteNetlinkMessage::NewLink(m)
}

/// One transmit and one receive queue for a veth end. Without them the kernel gives each end
/// a queue pair per possible CPU, and registers every queue (sysfs objects, qdiscs) while the
/// node waits; a node's link never needs more than one.
fn single_queue() -> [LinkAttribute; 2] {
    [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)]
}

/// A veth pair in one request: `hub_name` here, up, enslaved to `bridge`, with `peer` as its
/// other end (see [`peer_in_node`] and [`peer_here`]). Both ends get a single queue pair.
pub(crate) fn new_veth(hub_name: &str, bridge: u32, mut peer: LinkMessage) -> RouteNetlinkMessage {
    peer.attributes.extend(single_queue());
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes = vec![LinkAttribute::IfName(hub_name.to_string()), LinkAttribute::Controller(bridge)];
    m.attributes.extend(single_queue());
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    RouteNetlinkMessage::NewLink(m)
}

/// A veth peer created directly in the node's namespace (`node_netns`) as `iface.name` with the
/// interface's MAC. It starts down: the kernel opens a peer before the pair is joined, and an
/// unjoined veth refuses to open (ENOTCONN), so the node side sets it up afterwards.
pub(crate) fn peer_in_node(iface: &Interface, node_netns: RawFd) -> LinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(iface.name.clone()),
        LinkAttribute::Address(iface.mac.0.to_vec()),
        LinkAttribute::NetNsFd(node_netns),
    ];
    peer
}

/// A veth peer in the hub namespace itself (down, see [`peer_in_node`]).
pub(crate) fn peer_here(name: &str) -> LinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes = vec![LinkAttribute::IfName(name.to_string())];
    peer
}

/// Enslaves link `index` to `bridge`, or frees it with 0.
pub(crate) fn set_controller(index: u32, bridge: u32) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes = vec![LinkAttribute::Controller(bridge)];
    RouteNetlinkMessage::SetLink(m)
}

/// Looks a link up by name.
pub(crate) fn get_link(name: &str) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.attributes = vec![LinkAttribute::IfName(name.to_string())];
    RouteNetlinkMessage::GetLink(m)
}

/// The index of the link in a GET reply.
pub(crate) fn link_index(replies: &[RouteNetlinkMessage]) -> Option<u32> {
    replies.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
        _ => None,
    })
}

/// Sets a link up or down, by index, or by name when `index` is 0.
pub(crate) fn set_link_up(index: u32, name: Option<&str>, up: bool) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if up {
        m.header.flags = LinkFlags::Up;
    }
    m.header.change_mask = LinkFlags::Up;
    if let Some(name) = name {
        m.attributes = vec![LinkAttribute::IfName(name.to_string())];
    }
    RouteNetlinkMessage::SetLink(m)
}

/// Deletes a link by name (deleting one end of a veth removes both).
pub(crate) fn del_link(name: &str) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.attributes = vec![LinkAttribute::IfName(name.to_string())];
    RouteNetlinkMessage::DelLink(m)
}

/// A permanent address; IPv6 without duplicate address detection, so it works at once.
pub(crate) fn new_address(index: u32, addr: IpAddr, prefix: u8) -> RouteNetlinkMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = prefix;
    match addr {
        IpAddr::V4(_) => {
            m.header.family = AddressFamily::Inet;
        }
        IpAddr::V6(_) => {
            m.header.family = AddressFamily::Inet6;
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    m.attributes.push(AddressAttribute::Local(addr));
    m.attributes.push(AddressAttribute::Address(addr));
    RouteNetlinkMessage::NewAddress(m)
}

/// A root netem qdisc on link `index` with the given TCA_OPTIONS payload.
pub(crate) fn netem_qdisc(index: u32, options: Vec<u8>) -> RouteNetlinkMessage {
    let mut m = TcMessage::default();
    m.header.family = AddressFamily::Unspec;
    m.header.index = index as i32;
    m.header.parent = TcHandle::ROOT;
    m.header.handle = TcHandle { major: 1, minor: 0 };
    m.attributes = vec![
        TcAttribute::Kind("netem".to_string()),
        // TCA_OPTIONS = 2, given raw: netem's options are a struct plus nested attributes.
        TcAttribute::Other(DefaultNla::new(2, options)),
    ];
    RouteNetlinkMessage::NewQueueDiscipline(m)
}

/// Removes the root qdisc of link `index` (the link falls back to its default).
pub(crate) fn del_root_qdisc(index: u32) -> RouteNetlinkMessage {
    let mut m = TcMessage::default();
    m.header.index = index as i32;
    m.header.parent = TcHandle::ROOT;
    RouteNetlinkMessage::DelQueueDiscipline(m)
}
