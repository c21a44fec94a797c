//! Shaping in user space, for kernels without `sch_netem` (such as this project's CI kernel).
//!
//! The node's hub-side link leaves its bridge; a second veth pair takes its place on the bridge,
//! and a task on the hub thread carries frames between the two with packet sockets. Frames
//! towards the node are delayed, dropped and paced as the [`Shape`] says; frames from the node
//! pass at once. virtio-net headers ride along with every frame, so checksum offload and
//! segmentation offload survive the trip.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use crate::shape::Shape;

const SOL_PACKET: libc::c_int = 263;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// `struct virtio_net_hdr` precedes every frame on a socket with PACKET_VNET_HDR.
const VNET_HDR_LEN: usize = 10;
/// Frames held at most, as netem's default limit.
const QUEUE_LIMIT: usize = 1000;
/// Room for a GSO frame of 64 KiB plus headers.
const BUF_LEN: usize = 65536 + 256;

/// A packet socket bound to one link, with offload metadata on every frame.
pub(crate) fn packet_socket(ifindex: u32) -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for opt in [PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING] {
        let one: libc::c_int = 1;
        // SAFETY: `one` outlives the call and the length matches its type.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_PACKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends a frame; a full queue or a link that is down (blocked) just loses the frame, as a
/// cable would.
fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: the buffer is valid for reads of its length.
    unsafe {
        libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT);
    }
}

/// A small, fast random source for loss and jitter (xorshift64*): quality is plenty for
/// emulating a bad link, and it needs no dependency.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Rng(t | 1)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Frames waiting for their time, earliest first (a sequence number keeps equal times in order).
type Queue = BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>;

/// Carries frames between `node_side` (the node's hub end) and `bridge_side` (the new bridge
/// port's peer) until the task is aborted. `shape` can change at any time.
pub(crate) async fn run(node_side: OwnedFd, bridge_side: OwnedFd, shape: Arc<Mutex<Shape>>) {
    let register = |fd: OwnedFd| {
        // SAFETY: an OwnedFd's descriptor stays open and the same until the AsyncFd drops it.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
    };
    let (Ok(node), Ok(bridge)) = (register(node_side), register(bridge_side)) else {
        return;
    };
    let mut queue: Queue = BinaryHeap::new();
    let mut seq = 0u64;
    let mut last = Instant::now();
    let mut rng = Rng::seeded();
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        let next = queue.peek().map(|Reverse((t, _, _))| *t);
        tokio::select! {
            ready = node.readable() => {
                let Ok(mut guard) = ready else { return };
                // From the node: straight on to the bridge.
                while let Ok(Ok(n)) = guard.try_io(|fd| recv(fd.get_ref(), &mut buf)) {
                    send(bridge.get_ref(), &buf[..n]);
                }
            }
            ready = bridge.readable() => {
                let Ok(mut guard) = ready else { return };
                while let Ok(Ok(n)) = guard.try_io(|fd| recv(fd.get_ref(), &mut buf)) {
                    let s = *shape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if queue.len() >= QUEUE_LIMIT || rng.next_f64() * 100.0 < s.loss_percent {
                        continue;
                    }
                    let due = schedule(&s, n.saturating_sub(VNET_HDR_LEN), &mut last, &mut rng);
                    seq += 1;
                    queue.push(Reverse((due, seq, buf[..n].to_vec())));
                }
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while queue.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
                    if let Some(Reverse((_, _, frame))) = queue.pop() {
                        send(node.get_ref(), &frame);
                    }
                }
            }
        }
    }
}

/// When a frame of `len` bytes leaves: after the delay (± jitter), and with a rate, not before
/// the link has finished sending the frames ahead of it (which also keeps them in order).
fn schedule(s: &Shape, len: usize, last: &mut Instant, rng: &mut Rng) -> Instant {
    let now = Instant::now();
    let jitter = s.jitter.as_secs_f64() * (rng.next_f64() * 2.0 - 1.0);
    let delay = (s.delay.as_secs_f64() + jitter).max(0.0);
    let mut due = now + Duration::from_secs_f64(delay);
    if let Some(rate) = s.rate_bits_per_sec {
        // The frame's bytes from the Ethernet header on, as netem counts them.
        let tx = Duration::from_secs_f64((len as f64 * 8.0) / rate as f64);
        due = due.max(*last) + tx;
        *last = due;
    }
    due
}
