//! How fast hutch-netns wires a LAN: single-VLAN topologies of 2, 24, 200 and 1000 nodes, each
//! node a bare network namespace. Prints one table: namespace creation, wiring (hub + every
//! veth, address and link state), per-node cost, a reachability check (every node sends an ARP
//! probe for node 1's address from a packet socket inside its namespace and waits for node 1's
//! answer; see `reach` for why not ping) and teardown.
//!
//! Run as root, or inside a user namespace you own:
//!   cargo bench --bench netns
//!   unshare --user --map-root-user --net cargo bench --bench netns
//! `HUTCH_BENCH_SIZES=2,24` picks sizes, `HUTCH_BENCH_RUNS=5` the runs per size (best is shown:
//! the machine is shared, and other work only ever makes a run slower).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use hutch_netns::{bare_namespaces, Addressing, Hub, NodeSpec, Topology};
use nix::sched::{setns, CloneFlags};

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP: needs root, or a user namespace where we are root (unshare --user --map-root-user --net)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("HUTCH_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![2, 24, 200, 1000]);
    let runs: usize = std::env::var("HUTCH_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    println!("load average before: {}", loadavg());
    println!("each row: best of {runs} runs; times in ms unless marked");
    println!("wiring = Hub::new + attach_many; attach/node = attach_many / nodes (median of the runs in brackets);");
    println!("cpu/node = CPU time of this process in attach_many / nodes; all/node = (netns + wiring) / nodes");
    println!(
        "{:>5} | {:>8} | {:>8} | {:>8} | {:>18} | {:>8} | {:>9} | {:>14} | {:>8} | {:>10} | {:>10}",
        "nodes",
        "netns",
        "wiring",
        "total",
        "attach/node (med)",
        "cpu/node",
        "all/node",
        "ARP to n1",
        "hub drop",
        "links gone",
        "netns drop"
    );
    for &n in &sizes {
        let mut rows = Vec::new();
        for _ in 0..runs {
            match run(n) {
                Ok(r) => rows.push(r),
                Err(e) => println!("{n:>5} | failed: {e}"),
            }
        }
        if rows.is_empty() {
            continue;
        }
        let best = |f: &dyn Fn(&Row) -> Duration| rows.iter().map(f).min().unwrap_or_default();
        let mut attach: Vec<Duration> = rows.iter().map(|r| r.attach).collect();
        attach.sort();
        let median = attach[attach.len() / 2];
        let reached = rows.iter().map(|r| r.reached).min().unwrap_or(0);
        println!(
            "{:>5} | {:>8} | {:>8} | {:>8} | {:>18} | {:>8} | {:>9} | {:>14} | {:>8} | {:>10} | {:>10}",
            n,
            ms(best(&|r| r.netns)),
            ms(best(&|r| r.wiring)),
            ms(best(&|r| r.netns + r.wiring)),
            format!("{} ({})", us(best(&|r| r.attach) / n as u32), us(median / n as u32)),
            us(best(&|r| r.attach_cpu) / n as u32),
            us(best(&|r| r.netns + r.wiring) / n as u32),
            format!("{}/{} {}", reached, n - 1, ms(best(&|r| r.reach))),
            ms(best(&|r| r.hub_drop)),
            ms(best(&|r| r.links_gone)),
            ms(best(&|r| r.netns_drop)),
        );
    }
    println!();
    let mut one: Vec<Duration> = (0..runs).filter_map(|_| one_by_one(200).ok()).collect();
    one.sort();
    if let Some(t) = one.first() {
        println!(
            "one-by-one attach of 200 nodes (a driver starting nodes one at a time): best {} per node",
            us(*t / 200)
        );
    }
    println!("load average after: {}", loadavg());
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain data and getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid rusage to write.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Row {
    netns: Duration,
    /// Hub::new (namespace, thread, bridge) plus attach_many.
    wiring: Duration,
    /// attach_many alone: the per-node part.
    attach: Duration,
    /// CPU time (user + system, all threads of this process) spent in attach_many: less
    /// sensitive than wall time to other work on the machine.
    attach_cpu: Duration,
    reached: usize,
    reach: Duration,
    hub_drop: Duration,
    links_gone: Duration,
    netns_drop: Duration,
}

fn topology(n: usize) -> Result<Topology, String> {
    let addressing = if n > 254 { Addressing::Large } else { Addressing::NixOs };
    let nodes = (1..=n).map(|i| NodeSpec::new(format!("node{i:05}"), [1]));
    Topology::with_addressing(nodes, addressing).map_err(|e| e.to_string())
}

fn run(n: usize) -> Result<Row, String> {
    let topo = topology(n)?;
    let t = Instant::now();
    let ns = bare_namespaces(n).map_err(|e| e.to_string())?;
    let netns = t.elapsed();
    if std::env::var_os("HUTCH_BENCH_QUIET_NODES").is_some() {
        quiet_nodes(&ns)?;
    }

    let t = Instant::now();
    let hub = Hub::new(&topo).map_err(|e| e.to_string())?;
    let hub_new = t.elapsed();
    let names: Vec<&str> = topo.nodes().iter().map(|n| n.name.as_str()).collect();
    let batch: Vec<(&str, BorrowedFd<'_>)> = names.iter().zip(&ns).map(|(name, fd)| (*name, fd.as_fd())).collect();
    let cpu0 = cpu_time();
    hub.attach_many(&batch).map_err(|e| e.to_string())?;
    let attach_cpu = cpu_time().saturating_sub(cpu0);
    let wiring = t.elapsed();
    let attach = wiring - hub_new;

    let target = topo.nodes()[0].interfaces[0].ipv4;
    let target_mac = topo.nodes()[0].interfaces[0].mac.0;
    let t = Instant::now();
    let macs = topo.nodes()[1..].iter().map(|n| n.interfaces[0].mac.0).collect();
    let (reached, sockets) = reach(&ns[1..], macs, target, target_mac, Duration::from_secs(15))?;
    let reach = t.elapsed();
    close_all(sockets);

    let t = Instant::now();
    drop(hub);
    let hub_drop = t.elapsed();
    // The kernel dismantles the hub namespace in the background; the node ends vanish with it.
    let t = Instant::now();
    let last = ns.last().ok_or("no nodes")?;
    while has_link(last.as_fd(), "eth1")? {
        if t.elapsed() > Duration::from_secs(60) {
            return Err("node links still there 60 s after the hub was dropped".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let links_gone = hub_drop + t.elapsed();
    let t = Instant::now();
    drop(ns);
    let netns_drop = t.elapsed();
    Ok(Row {
        netns,
        wiring,
        attach,
        attach_cpu,
        reached,
        reach,
        hub_drop,
        links_gone,
        netns_drop,
    })
}

/// Experiment (HUTCH_BENCH_QUIET_NODES=1): nodes that send no IPv6 chatter of their own when
/// their link comes up (no DAD, no router solicitations, MLDv1), to separate
/// the hub's wiring cost from the cost of every node's multicast being flooded to every port.
fn quiet_nodes(ns: &[OwnedFd]) -> Result<(), String> {
    let fds: Vec<OwnedFd> = ns
        .iter()
        .map(|f| f.try_clone())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for fd in &fds {
            setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            for (k, v) in [
                ("ipv6/conf/default/dad_transmits", "0"),
                ("ipv6/conf/default/router_solicitations", "0"),
                ("ipv6/conf/default/force_mld_version", "1"),
            ] {
                std::fs::write(format!("/proc/sys/net/{k}"), v).map_err(|e| format!("{k}: {e}"))?;
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| "quiet thread panicked".to_string())?
}

fn one_by_one(n: usize) -> Result<Duration, String> {
    let topo = topology(n)?;
    let ns = bare_namespaces(n).map_err(|e| e.to_string())?;
    let hub = Hub::new(&topo).map_err(|e| e.to_string())?;
    let t = Instant::now();
    for (node, fd) in topo.nodes().iter().zip(&ns) {
        hub.attach(&node.name, fd.as_fd()).map_err(|e| e.to_string())?;
    }
    Ok(t.elapsed())
}

/// Whether `name` exists in the namespace `ns` (asked from a thread inside it).
fn has_link(ns: BorrowedFd<'_>, name: &'static str) -> Result<bool, String> {
    let fd = ns.try_clone_to_owned().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        Ok(unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
    })
    .join()
    .map_err(|_| "has_link thread panicked".to_string())?
}

/// Sends an ARP probe (sender address 0.0.0.0, as duplicate address detection does) from
/// inside every namespace in `from` to `target` and counts the nodes that got node 1's answer,
/// resending every second to the silent ones until `limit`.
///
/// Why ARP probes and not pings: the kernel's neighbour tables are shared by all namespaces and
/// hold at most `net.ipv4.neigh.default.gc_thresh3` (1024 by default) dynamic entries, and every
/// ping between two new peers adds two. A 1000-node LAN where everybody pings node 1 overflows
/// it (measured: about 600 of 999 get through, the rest see "neighbor table overflow"). A node
/// answers a probe without creating any entry, so the check proves every node's link and node
/// 1's answer without touching that limit or the host's settings.
fn reach(
    from: &[OwnedFd],
    macs: Vec<[u8; 6]>,
    target: Ipv4Addr,
    target_mac: [u8; 6],
    limit: Duration,
) -> Result<(usize, Vec<ArpSocket>), String> {
    let sockets = arp_sockets(from, macs)?;
    let mut answered = vec![false; sockets.len()];
    let start = Instant::now();
    // Probes go out in small bursts: a burst of all 999 at once would overflow node 1's veth
    // ring (256 frames) and lose most of them.
    let mut sent_at: Vec<Option<Instant>> = vec![None; sockets.len()];
    let mut buf = [0u8; 128];
    while answered.iter().any(|a| !a) && start.elapsed() < limit {
        let due = (0..sockets.len())
            .filter(|&i| !answered[i] && sent_at[i].is_none_or(|t| t.elapsed() > Duration::from_millis(200)))
            .take(BURST);
        for i in due.collect::<Vec<_>>() {
            send_probe(&sockets[i], target, target_mac)?;
            sent_at[i] = Some(Instant::now());
        }
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        for (i, p) in fds.iter().enumerate() {
            if p.revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                // SAFETY: `buf` is valid for writes of its length.
                let got = unsafe { libc::recv(p.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
                if got < 0 {
                    break;
                }
                // An ARP reply (op 2) from the target, to us.
                let a = &buf[..got as usize];
                if a.len() >= 28 && a[6..8] == [0, 2] && a[14..18] == target.octets() && a[18..24] == sockets[i].mac {
                    answered[i] = true;
                }
            }
        }
    }
    Ok((answered.iter().filter(|&&a| a).count(), sockets))
}

/// Closes many packet sockets at once. Each close waits for an RCU grace period (the kernel
/// unhooks the socket); closing from many threads lets those waits overlap.
fn close_all(sockets: Vec<ArpSocket>) {
    let mut rest = sockets;
    let mut threads = Vec::new();
    while !rest.is_empty() {
        let chunk: Vec<ArpSocket> = rest.drain(..rest.len().min(16)).collect();
        threads.push(std::thread::spawn(move || drop(chunk)));
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Probes sent before the next look for answers.
const BURST: usize = 64;

/// An ARP socket on a node's `eth1`, with that interface's MAC.
struct ArpSocket {
    fd: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
}

/// One ARP packet socket inside each namespace, opened from a thread that visits them in turn.
fn arp_sockets(from: &[OwnedFd], macs: Vec<[u8; 6]>) -> Result<Vec<ArpSocket>, String> {
    let fds: Vec<OwnedFd> = from
        .iter()
        .map(|f| f.try_clone())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut out = Vec::with_capacity(fds.len());
        let eth1 = std::ffi::CString::new("eth1").map_err(|e| e.to_string())?;
        for (fd, mac) in fds.iter().zip(macs) {
            setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            // SAFETY: `eth1` is a valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(eth1.as_ptr()) };
            // Protocol 0 now, ETH_P_ARP at bind: a socket created with a protocol is hooked in at
            // once, and bind then unhooks it with a full RCU grace period (~20 ms here).
            // SAFETY: plain socket(2); the result is checked.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
            if raw < 0 || ifindex == 0 {
                return Err(format!("ARP socket on eth1: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: `raw` is a fresh descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            only_arp_replies(&fd)?;
            let addr = sockaddr_ll(ifindex, [0; 6]);
            // SAFETY: `addr` is a valid sockaddr_ll and the length is its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(format!("bind ARP socket: {}", std::io::Error::last_os_error()));
            }
            out.push(ArpSocket { fd, ifindex, mac });
        }
        Ok(out)
    })
    .join()
    .map_err(|_| "socket thread panicked".to_string())?
}

/// A socket filter that keeps only ARP replies: other ARP traffic on the LAN (the nodes' own
/// broadcasts) would otherwise fill the receive buffers and push out the replies.
fn only_arp_replies(fd: &OwnedFd) -> Result<(), String> {
    let code = [
        // ldh [6]: the ARP operation (a SOCK_DGRAM packet socket sees the ARP header first)
        libc::sock_filter {
            code: 0x28,
            jt: 0,
            jf: 0,
            k: 6,
        },
        // jeq #2 (reply), else skip one
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: 2,
        },
        // ret #65535: keep
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0xffff,
        },
        // ret #0: drop
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `code`, both alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("socket filter: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn sockaddr_ll(ifindex: u32, dest: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    a.sll_ifindex = ifindex as i32;
    a.sll_halen = 6;
    a.sll_addr[..6].copy_from_slice(&dest);
    a
}

/// An ARP request for `target` with sender address 0.0.0.0, sent straight to `target_mac`:
/// a broadcast would cost a delivery to every one of the LAN's ports (1000 probes on a
/// 1000-port LAN: a million deliveries, seconds of CPU), while the bridge already knows
/// where node 1's MAC lives.
fn send_probe(s: &ArpSocket, target: Ipv4Addr, target_mac: [u8; 6]) -> Result<(), String> {
    let mut pkt = [0u8; 28];
    pkt[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    pkt[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    pkt[4] = 6;
    pkt[5] = 4;
    pkt[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    pkt[8..14].copy_from_slice(&s.mac);
    // sender IP 0.0.0.0 (bytes 14..18), target MAC unknown (18..24)
    pkt[24..28].copy_from_slice(&target.octets());
    let addr = sockaddr_ll(s.ifindex, target_mac);
    // SAFETY: `pkt` and `addr` are valid for the lengths passed.
    let rc = unsafe {
        libc::sendto(
            s.fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            libc::MSG_DONTWAIT,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        // A full queue drops the probe; the next round resends it.
        if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::ENOBUFS) {
            return Err(format!("ARP probe for {target}: {e}"));
        }
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}
