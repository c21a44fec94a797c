//! Descriptor hygiene for the processes hutch forks (builder helpers, PID 1, agents, reapers,
//! janitors, bench workers): none of them may keep descriptors of the runtime or of other nodes.

use std::os::fd::RawFd;

/// Closes every descriptor of this process but those in `keep` (stdio included unless kept).
/// For a freshly forked child that never returns to the code owning the closed descriptors.
pub fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().filter(|&&fd| fd >= 0).map(|&fd| fd as u32).collect();
    keep.sort_unstable();
    let mut from = 0u32;
    for fd in keep {
        if fd > from {
            close_range(from, fd - 1, 0);
        }
        from = fd + 1;
    }
    close_range(from, u32::MAX, 0);
}

/// Points stdin, stdout and stderr at /dev/null (after [`close_all_but`] closed them).
pub fn stdio_to_null() {
    // SAFETY: open and dup2 on /dev/null onto the standard descriptors this process owns.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                if fd != null {
                    libc::dup2(null, fd);
                }
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

/// Marks every descriptor from 3 up close-on-exec: they go with the exec that follows.
pub(crate) fn cloexec_from_3() {
    close_range(3, u32::MAX, CLOSE_RANGE_CLOEXEC);
}

/// close_range(2)'s flag: mark close-on-exec instead of closing.
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

fn close_range(first: u32, last: u32, flags: u32) {
    // SAFETY: close_range only closes (or flags) descriptors of this process; callers own them.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
}
