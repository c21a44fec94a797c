//! The node's writable layer: the overlay's upper and work directories.
//!
//! The overlay is mounted in the node's user namespace with `userxattr`, so its upper layer
//! must take `user.*` extended attributes (opaque directories, renamed directories). tmpfs has
//! them only from Linux 6.6: there, and by default, the layer is a private tmpfs with a size;
//! on older kernels (a probe says so, once per process) or when the caller keeps the layer
//! (a test's node across its restarts), it is a directory on a disk filesystem.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;

use crate::idmap::{IdMap, IdMapKind};
use crate::spec::NodeSpec;
use crate::Error;

/// Where the node writes.
#[derive(Debug)]
pub(crate) enum Upper {
    /// A private tmpfs of this many bytes, made by the node's builder.
    Tmpfs { size: u64 },
    /// `upper` and `work` below the host directory `path`. As root, `tree` is a detached copy
    /// of its mount (open_tree) that the builder inherits and attaches: node root could not
    /// walk a path through directories such as a 0700 /root. Rootless, the path is walked by
    /// the user's own ids.
    Dir { path: PathBuf, tree: Option<OwnedFd> },
}

/// A layer the runtime made for one node only (no tmpfs user xattrs here): removed with it.
pub(crate) struct Scratch {
    dir: PathBuf,
    idmap: IdMap,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_layer(&self.dir, &self.idmap);
    }
}

/// Chooses and prepares the node's writable layer.
pub(crate) fn prepare(spec: &NodeSpec, idmap: &IdMap) -> Result<(Upper, Option<Scratch>), Error> {
    if let Some(dir) = &spec.disk {
        return Ok((open_dir(dir, idmap)?, None));
    }
    // A Nix root is a tmpfs of its own (plan.rs); an image root on a new enough kernel too.
    if matches!(spec.root, crate::RootFs::Nix { .. }) || tmpfs_has_user_xattrs() {
        return Ok((Upper::Tmpfs { size: spec.upper_size() }, None));
    }
    let uid = nix::unistd::Uid::effective();
    let base = Path::new("/var/tmp").join(format!("hutch-{uid}"));
    let made = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&base);
    match made {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(Error::io("creating", base)(e)),
        _ => {}
    }
    // /var/tmp is everybody's: a directory someone else made (or a link) must not be used.
    let meta = std::fs::symlink_metadata(&base).map_err(Error::io("checking", &base))?;
    if !meta.is_dir()
        || std::os::unix::fs::MetadataExt::uid(&meta) != uid.as_raw()
        || std::os::unix::fs::MetadataExt::mode(&meta) & 0o022 != 0
    {
        return Err(Error::Host {
            problem: format!("{} is not a directory of this user's alone", base.display()),
            fix: "remove it; hutch makes it again, mode 0700".into(),
        });
    }
    let dir = base.join(format!("{}-{}", spec.name, std::process::id()));
    let _ = remove_layer(&dir, idmap);
    let upper = open_dir(&dir, idmap)?;
    Ok((upper, Some(Scratch { dir, idmap: idmap.clone() })))
}

/// True when tmpfs takes `user.*` xattrs (Linux 6.6+), asked of the kernel once per process:
/// an unnamed file on /dev/shm (tmpfs on every Linux host) gets one.
pub(crate) fn tmpfs_has_user_xattrs() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let is_tmpfs = nix::sys::statfs::statfs(shm).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        let flags = nix::fcntl::OFlag::O_TMPFILE | nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC;
        match nix::fcntl::open(shm, flags, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
            Ok(fd) if is_tmpfs => takes_user_xattr(&fd),
            // No writable tmpfs to ask: assume the older kernel (the disk layer works on both).
            _ => false,
        }
    })
}

/// Sets and removes a `user.*` xattr on `fd`.
fn takes_user_xattr(fd: &OwnedFd) -> bool {
    let name = c"user.hutch.probe";
    // SAFETY: fsetxattr with a NUL-terminated name and a one-byte value we own.
    let set = unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), c"1".as_ptr().cast(), 1, 0) };
    // SAFETY: as above, removing the name just set.
    unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) };
    set == 0
}

/// Makes `dir/upper` and `dir/work` (kept when they exist), owned by node root, checks the
/// filesystem takes user xattrs, and opens both for the builder.
fn open_dir(dir: &Path, idmap: &IdMap) -> Result<Upper, Error> {
    let mut fds = Vec::new();
    for sub in ["upper", "work"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(Error::io("creating the node's writable layer", &path))?;
        let flags = nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
        let fd =
            nix::fcntl::open(&path, flags, nix::sys::stat::Mode::empty()).map_err(Error::sys(format!("opening {}", path.display())))?;
        fds.push(fd);
    }
    let path = dir.canonicalize().map_err(Error::io("resolving", dir))?;
    let work = fds.pop().ok_or(Error::sys("opening the writable layer")(Errno::EBADF))?;
    let upper = fds.pop().ok_or(Error::sys("opening the writable layer")(Errno::EBADF))?;
    let owner = idmap.host_uid(0).unwrap_or(nix::unistd::Uid::effective().as_raw());
    if !takes_user_xattr(&upper) {
        return Err(Error::Host {
            problem: format!(
                "{} is on a filesystem without user.* extended attributes (tmpfs before Linux 6.6?): \
                 a node's writable layer needs them",
                dir.display()
            ),
            fix: "put it on ext4, xfs or btrfs (e.g. --output-dir under /var/tmp), or use Linux 6.6 or later".into(),
        });
    }
    if owner != nix::unistd::Uid::effective().as_raw() {
        for fd in [&upper, &work] {
            let (u, g) = (Some(nix::unistd::Uid::from_raw(owner)), Some(nix::unistd::Gid::from_raw(owner)));
            nix::unistd::fchown(fd, u, g).map_err(Error::sys(format!("handing {} to the node's root", dir.display())))?;
        }
    }
    // Only root of the host's mount namespace may clone a mount; others walk the path.
    let tree = match idmap.is_shifted() {
        true => Some(crate::idmount::open_tree(&path)?),
        false => None,
    };
    Ok(Upper::Dir { path, tree })
}

/// Removes a node's writable layer `dir` (made for a node started with `idmap`). Files the
/// node made belong to its ids: a rootless user removes them from a user namespace with the
/// node's map, where it owns them all.
pub fn remove_layer(dir: &Path, idmap: &IdMap) -> Result<(), Error> {
    if !dir.exists() {
        return Ok(());
    }
    if !matches!(idmap.kind, IdMapKind::Subordinate { .. }) {
        make_writable(dir);
        return std::fs::remove_dir_all(dir).map_err(Error::io("removing the node's writable layer", dir));
    }
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::sys("pipe"))?;
    let clone = crate::clone::Clone {
        flags: libc::CLONE_NEWUSER,
        cgroup: None,
    };
    let Some((pid, _pidfd)) = clone.run().map_err(Error::sys("cloning the layer remover"))? else {
        drop(go_w);
        let mut byte = [0u8; 1];
        let code = match nix::unistd::read(&go_r, &mut byte) {
            Ok(1) if become_root().is_ok() => {
                make_writable(dir);
                i32::from(std::fs::remove_dir_all(dir).is_err())
            }
            _ => 1,
        };
        // SAFETY: ends the helper without the runtime's atexit handlers.
        unsafe { libc::_exit(code) }
    };
    drop(go_r);
    let mapped = idmap.apply(pid);
    let _ = nix::unistd::write(&go_w, if mapped.is_ok() { b"1" } else { b"" });
    drop(go_w);
    let status = loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    mapped?;
    match status {
        Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
        _ => Err(Error::Host {
            problem: format!("could not remove the node's writable layer {}", dir.display()),
            fix: "remove it by hand (`podman unshare rm -rf` style: inside your id map)".into(),
        }),
    }
}

/// Overlay's work directory leaves a mode-000 `work`: give owners back write and search.
fn make_writable(dir: &Path) {
    let path = CString::new(dir.join("work/work").as_os_str().as_bytes()).unwrap_or_default();
    let _ = nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path.as_c_str(),
        nix::sys::stat::Mode::from_bits_truncate(0o700),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    );
}

/// Root of the remover's user namespace, where the node's ids are mapped.
fn become_root() -> Result<(), Errno> {
    let (u, g) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
    nix::unistd::setresgid(g, g, g)?;
    nix::unistd::setresuid(u, u, u)
}
