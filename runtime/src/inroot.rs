//! Paths in the node's root, resolved as a process in the node would resolve them. The
//! builder works with the host's root beneath its staging tmpfs, so an image's symlink
//! (`etc/target -> /tmp/x`, or `../../..`) followed the ordinary way would reach host files:
//! `files` written through it landed on the host. Every step that creates something under
//! `newroot/` goes through openat2(2) with RESOLVE_IN_ROOT instead: absolute links and `..`
//! stay inside the node's root, and a link into the image (sites-enabled -> sites-available)
//! is followed inside it.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::stat::Mode;

/// openat2's `struct open_how` (linux/openat2.h; libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// The prefix of the plan's paths that lie in the node's root.
const ROOT: &[u8] = b"newroot/";

/// `path` without the `newroot/` prefix, when it lies in the node's root.
pub(crate) fn relative(path: &CStr) -> Option<&[u8]> {
    path.to_bytes().strip_prefix(ROOT)
}

/// Opens `rel` (relative to the node's root) with `flags` and `mode`, resolving inside it.
pub(crate) fn open(rel: &[u8], flags: libc::c_int, mode: u32) -> Result<OwnedFd, Errno> {
    let root = root()?;
    let rel = CString::new(if rel.is_empty() { b".".as_slice() } else { rel }).map_err(|_| Errno::EINVAL)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 { mode as u64 } else { 0 },
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a directory fd we own, a NUL-terminated path and an open_how that
    // outlives the call; returns a new descriptor we own.
    let fd = Errno::result(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: the kernel returned a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The node's root, opened once per builder at its first use (after the root's own mount: the
/// builder is a fresh copy of the runtime, whose cell stays empty).
fn root() -> Result<&'static OwnedFd, Errno> {
    static ROOT: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = ROOT.get() {
        return Ok(fd);
    }
    let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(c"newroot", flags, Mode::empty())?;
    Ok(ROOT.get_or_init(|| fd))
}

/// The directory that will hold `rel`'s last component (resolved inside the node's root) and
/// that component's name.
pub(crate) fn parent_and_name(rel: &[u8]) -> Result<(OwnedFd, CString), Errno> {
    let trimmed = rel.strip_suffix(b"/").unwrap_or(rel);
    let (dir, name) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    if name.is_empty() || name == b"." || name == b".." {
        return Err(Errno::EINVAL);
    }
    let parent = open(dir, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    Ok((parent, CString::new(name).map_err(|_| Errno::EINVAL)?))
}

/// A path through which the builder can name an opened object to calls that take paths
/// (mount(2) targets): its /proc/self/fd entry, valid while `fd` stays open.
pub(crate) fn fd_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}
