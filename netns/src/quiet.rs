//! What a node's link says on its own when it comes up, cut to what a test LAN needs.
//!
//! Why: every frame a node multicasts at link up is flooded to every port of its bridge. With
//! the kernel's defaults a node sends, per link, a duplicate address detection probe for its
//! link-local address (which stays unusable until DAD ends) and router solicitations
//! (repeated with backoff, for ever on recent kernels), besides its MLD reports: on a LAN of
//! 1000 nodes that is millions of frame copies in softirq time while the nodes start. Nobody
//! can answer a router solicitation sent at attach time (no node has booted yet), and the MACs
//! on a hutch LAN are unique by construction, so neither is worth a frame. A node's own network
//! manager (networkd, dhcpcd) sends its own solicitations from user space when it wants a
//! router, and radvd announces itself when it starts, so SLAAC tests keep working; a node may
//! also set these back (they are its own sysctls). The addresses hutch assigns are already
//! added without DAD (see `messages::new_address`); the link-local address, the node's MLD
//! (MLDv2, which a test of multicast may need) and ARP stay as the kernel does them.

use std::io;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

/// Per-link IPv6 settings, relative to /proc/sys/net/ipv6/conf/<link>/.
const SETTINGS: [(&str, &str); 2] = [
    // No DAD for the link-local address the kernel makes at link up (MACs are unique here):
    // no probe, and the address is usable at once instead of after a random wait of up to 1 s
    // (`dad_transmits` 0 alone would keep that wait).
    ("accept_dad", "0"),
    // No kernel router solicitations at link up: nothing can answer them then.
    ("router_solicitations", "0"),
];

/// Applies [`SETTINGS`] to each named link of the calling thread's network namespace
/// (/proc/sys/net shows the namespace of the thread that opens it). Call it before the links
/// go up. Stops at the first error: the node then only chatters more, it works all the same.
///
/// One path walk from /proc per call, the rest relative to it: every network namespace adds a
/// `net` entry that a walk through /proc/sys compares against, so a full walk per setting
/// would cost each node more the more nodes there are.
pub(crate) fn quiet_links<'a>(links: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
    let conf = std::fs::File::open("/proc/sys/net/ipv6/conf")?;
    for link in links {
        for (key, value) in SETTINGS {
            let fd = openat(
                &conf,
                format!("{link}/{key}").as_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            nix::unistd::write(&fd, value.as_bytes())?;
        }
    }
    Ok(())
}
