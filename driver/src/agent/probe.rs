//! Port and socket probes from inside the node, so `wait_for_open_port` needs no `nc` in the
//! image. Names resolve as an IP literal, `localhost`, or through the node's /etc/hosts; the
//! agent never loads the node's NSS libraries (a host binary cannot, on a NixOS node).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
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

/// Try to connect to a Unix socket. The connection is made by a forked child that exits at
/// once: a server in the node learns its peer's pid (SO_PEERCRED) or a pidfd (SO_PEERPIDFD),
/// which must never be the agent's.
pub(crate) fn unix(path: &str, datagram: bool) -> AgentReply {
    let open = connect_from_child(path, datagram).unwrap_or(false);
    AgentReply::Probe { open, unresolved: false }
}

fn connect_from_child(path: &str, datagram: bool) -> Option<bool> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return None;
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let kind = if datagram { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
    // SAFETY: fork has no memory effects on this process.
    match unsafe { libc::fork() } {
        -1 => None,
        // SAFETY: the child of this multi-threaded process calls only async-signal-safe
        // functions (socket, connect, _exit) on memory prepared before the fork.
        0 => unsafe {
            let s = libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            let rc = libc::connect(s, &addr as *const libc::sockaddr_un as *const libc::sockaddr, len);
            libc::_exit(if s >= 0 && rc == 0 { 0 } else { 1 })
        },
        child => {
            let mut status = 0;
            // SAFETY: waitpid on the child just forked, writing into `status`.
            while unsafe { libc::waitpid(child, &mut status, 0) } < 0 {
                if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    return None;
                }
            }
            Some(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
        }
    }
}
