//! The main process's event loop plumbing: an epoll set (a thousand nodes mean thousands of
//! descriptors; poll(2) would rescan them all on every event) and a monotonic clock that
//! worker processes share.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Nanoseconds on CLOCK_MONOTONIC: the same clock in every process of the host, so a worker's
/// timestamps and the main process's can be subtracted.
pub(super) fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// An epoll instance; each registered descriptor carries a caller-chosen token.
pub(super) struct Epoll(OwnedFd);

impl Epoll {
    /// A new, empty set.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes only flags; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input (and hang-up) under `token`. Closing the descriptor removes it.
    pub fn add(&self, fd: BorrowedFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open and `ev` is a valid epoll_event for the call.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (before it is closed while a duplicate stays open elsewhere).
    pub fn remove(&self, fd: BorrowedFd) {
        // SAFETY: EPOLL_CTL_DEL ignores the event argument; a null pointer is allowed.
        unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd.as_raw_fd(), std::ptr::null_mut()) };
    }

    /// Waits up to `timeout_ms` (-1: forever) and returns the tokens that are ready.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<Vec<u64>> {
        // SAFETY: epoll_event is plain data; all-zero is a valid value.
        let mut evs = vec![unsafe { std::mem::zeroed::<libc::epoll_event>() }; 256];
        // SAFETY: `evs` is valid for writes of its length.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), evs.len() as i32, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(vec![])
            } else {
                Err(e)
            };
        }
        Ok(evs[..n as usize].iter().map(|e| e.u64).collect())
    }
}
