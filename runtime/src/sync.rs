//! Typed messages between the runtime (parent) and a node's first process (child), over a
//! SOCK_SEQPACKET socketpair: one message a packet, fds passed with SCM_RIGHTS.
//!
//! The child's end is close-on-exec: when the node's init execs, the parent reads end-of-file,
//! which is how it learns the exec succeeded (a failed exec sends [`ToParent::Failed`]).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};

/// How many timestamps PID 1 reports: start and end of the builder's mounts, of PID 1's
/// network and of its confinement, and the moment before exec.
pub(crate) const STAMPS: usize = 7;

/// What the child tells the parent.
#[derive(Debug)]
pub(crate) enum ToParent {
    /// Step number `step` of the plan failed with `errno`; the child exits.
    Failed { step: u32, errno: Errno },
    /// CLOCK_MONOTONIC at the start and end of each phase (see [`STAMPS`]), sent just before exec.
    Stamps([u64; STAMPS]),
    /// PID 1 has its network namespace: the runtime may wire it.
    NetReady,
    /// The bound `/run/host/notify` socket, for the parent to read READY=1 from.
    NotifySocket(OwnedFd),
    /// The builder cloned the node's PID 1: its pidfd and its pid as the runtime sees it.
    Pid1(OwnedFd, i32),
    /// The builder forked the node's agent: its pidfd and pid (the runtime reaps it).
    Agent(OwnedFd, i32),
    /// The master of the pty PID 1 made for itself in the node's devpts (`NodeSpec::terminal`).
    Terminal(OwnedFd),
}

/// What the parent tells the child.
#[derive(Debug)]
pub(crate) enum ToChild {
    /// To the builder: its id maps are written and its cgroups joined; with the detached,
    /// idmapped tree of the image it mounts from, if any. To PID 1: its network is wired,
    /// exec the init.
    Go(Option<OwnedFd>),
}

/// Creates the close-on-exec socketpair (parent end, child end).
pub(crate) fn pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
}

const FAILED: u8 = 1;
const STAMPS_TAG: u8 = 2;
const NOTIFY: u8 = 3;
const GO: u8 = 4;
const PID1: u8 = 5;
const NET_READY: u8 = 6;
const AGENT: u8 = 7;
const TERMINAL: u8 = 8;

/// Sends a message to the parent.
pub(crate) fn send_parent(fd: BorrowedFd, msg: &ToParent) -> Result<(), Errno> {
    let mut buf = Vec::with_capacity(1 + 8 * STAMPS);
    let mut fds: Vec<RawFd> = Vec::new();
    match msg {
        ToParent::Failed { step, errno } => {
            buf.push(FAILED);
            buf.extend_from_slice(&step.to_le_bytes());
            buf.extend_from_slice(&(*errno as i32).to_le_bytes());
        }
        ToParent::Stamps(stamps) => {
            buf.push(STAMPS_TAG);
            stamps.iter().for_each(|s| buf.extend_from_slice(&s.to_le_bytes()));
        }
        ToParent::NotifySocket(fd) => {
            buf.push(NOTIFY);
            fds.push(fd.as_raw_fd());
        }
        ToParent::Terminal(fd) => {
            buf.push(TERMINAL);
            fds.push(fd.as_raw_fd());
        }
        ToParent::NetReady => buf.push(NET_READY),
        ToParent::Pid1(pidfd, pid) | ToParent::Agent(pidfd, pid) => {
            buf.push(if matches!(msg, ToParent::Pid1(..)) { PID1 } else { AGENT });
            buf.extend_from_slice(&pid.to_le_bytes());
            fds.push(pidfd.as_raw_fd());
        }
    }
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(fd.as_raw_fd(), &[IoSlice::new(&buf)], &cmsgs, MsgFlags::empty(), None).map(drop)
}

/// Receives the next message from the child; `None` at end-of-file (the child exec'd or died).
pub(crate) fn recv_parent(fd: BorrowedFd) -> Result<Option<ToParent>, Errno> {
    let mut buf = [0u8; 1 + 8 * STAMPS];
    let (len, passed) = match recv_packet(fd, &mut buf) {
        // The node's processes ended with our go-ahead unread (a step failed before PID 1 read
        // it). The kernel reports that reset before what they sent us, and clears it as it
        // does: what they said (which step failed) is read next.
        Err(Errno::ECONNRESET) => recv_packet(fd, &mut buf)?,
        other => other?,
    };
    if len == 0 {
        return Ok(None);
    }
    let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap_or_default());
    let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().unwrap_or_default());
    Ok(Some(match (buf[0], len) {
        (FAILED, 9) => ToParent::Failed {
            step: u32_at(1),
            errno: Errno::from_raw(u32_at(5) as i32),
        },
        (STAMPS_TAG, n) if n == 1 + 8 * STAMPS => ToParent::Stamps(std::array::from_fn(|i| u64_at(1 + 8 * i))),
        (NOTIFY, 1) => ToParent::NotifySocket(passed.ok_or(Errno::EBADMSG)?),
        (TERMINAL, 1) => ToParent::Terminal(passed.ok_or(Errno::EBADMSG)?),
        (NET_READY, 1) => ToParent::NetReady,
        (PID1, 5) => ToParent::Pid1(passed.ok_or(Errno::EBADMSG)?, u32_at(1) as i32),
        (AGENT, 5) => ToParent::Agent(passed.ok_or(Errno::EBADMSG)?, u32_at(1) as i32),
        _ => return Err(Errno::EBADMSG),
    }))
}

/// Sends a message to the child.
pub(crate) fn send_child(fd: BorrowedFd, msg: ToChild) -> Result<(), Errno> {
    let ToChild::Go(passed) = msg;
    let fds: Vec<RawFd> = passed.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage> = match fds.is_empty() {
        true => vec![],
        false => vec![ControlMessage::ScmRights(&fds)],
    };
    sendmsg::<()>(fd.as_raw_fd(), &[IoSlice::new(&[GO])], &cmsgs, MsgFlags::empty(), None).map(drop)
}

/// Waits for the parent's go-ahead; `Err(EPIPE)` when the parent died first.
pub(crate) fn recv_child(fd: BorrowedFd) -> Result<ToChild, Errno> {
    let mut buf = [0u8; 1];
    match recv_packet(fd, &mut buf)? {
        (1, passed) if buf[0] == GO => Ok(ToChild::Go(passed)),
        _ => Err(Errno::EPIPE),
    }
}

/// Receives one packet into `buf`: its length and the descriptor passed with it, if any
/// (more than one is closed: no message carries two).
fn recv_packet(fd: BorrowedFd, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>), Errno> {
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut passed = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: the kernel just installed `raw` in our table for this message; we own it.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                passed.get_or_insert(owned);
            }
        }
    }
    Ok((msg.bytes, passed))
}
