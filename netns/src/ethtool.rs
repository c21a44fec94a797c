//! Two ethtool settings on veths, through the classic ioctl, so that big LANs lose no frames.
//!
//! Why: a veth normally hands every frame it receives to the CPU's shared backlog queue
//! (`netdev_max_backlog`, 1000 frames). A broadcast on a bridge with more ports than that (an
//! ARP request on a 1000-node LAN) overflows it and frames are lost at random ports. A veth with
//! GRO requested has its own NAPI ring instead, but the kernel uses it only for frames whose
//! sending veth has no TSO (or that come straight from a local socket). So: GRO on the node ends,
//! TSO off on the hub ends (big TCP frames towards a node are then cut in software, once).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// GRO on for each named node end, in the calling thread's network namespace.
pub(crate) fn tune_node_ends<'a>(links: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
    set(links, &[(ETHTOOL_SGRO, 1)])
}

/// TSO off for each named hub end, in the calling thread's network namespace. (GRO on a hub
/// end would not help: frames from a node come from a sender with TSO.)
pub(crate) fn tune_hub_ends<'a>(links: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
    set(links, &[(ETHTOOL_STSO, 0)])
}

fn set<'a>(links: impl IntoIterator<Item = &'a str>, settings: &[(u32, u32)]) -> io::Result<()> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    for (link, &(cmd, data)) in links.into_iter().flat_map(|l| settings.iter().map(move |s| (l, s))) {
        let mut value = EthtoolValue { cmd, data };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: &mut value,
            _pad: [0; 16],
        };
        for (dst, src) in req.name.iter_mut().zip(link.bytes().take(libc::IFNAMSIZ - 1)) {
            *dst = src as libc::c_char;
        }
        // SAFETY: `req` is a valid ifreq whose data pointer refers to `value`, both alive for
        // the call; SIOCETHTOOL reads and writes only those.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
