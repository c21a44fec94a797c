//! Port and socket probes from inside the node, so `wait_for_open_port` needs no `nc` in the
//! image. Names resolve as an IP literal, `localhost`, or through the node's /etc/hosts; the
//! agent never loads the node's NSS libraries (a host binary cannot, on a NixOS node).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Duration;

use super::AgentReply;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The addresses `host` names inside the node, without DNS.
fn resolve(host: &str) -> Vec<IpAddr> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return vec![ip];
    }
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let Some(ip) = fields.next().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if fields.any(|n| n.eq_ignore_ascii_case(h)) && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    if out.is_empty() && h.eq_ignore_ascii_case("localhost") {
        out = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    }
    out
}

/// Try a TCP connection to every address of `host`; open if one accepts.
pub(crate) fn tcp(host: &str, port: u16) -> AgentReply {
    let addrs = resolve(host);
    if addrs.is_empty() {
        return AgentReply::Probe {
            open: false,
            unresolved: true,
        };
    }
    let open = addrs
        .into_iter()
        .any(|ip| TcpStream::connect_timeout(&SocketAddr::new(ip, port), CONNECT_TIMEOUT).is_ok());
    AgentReply::Probe { open, unresolved: false }
}

/// Try to connect to a Unix socket.
pub(crate) fn unix(path: &str, datagram: bool) -> AgentReply {
    let open = if datagram {
        UnixDatagram::unbound().and_then(|s| s.connect(path)).is_ok()
    } else {
        UnixStream::connect(path).is_ok()
    };
    AgentReply::Probe { open, unresolved: false }
}
