//! Root-owned images for shifted nodes: an idmapped mount makes an image's files, owned by
//! host ids 0..65535, appear owned by the node's shifted ids, so node root owns its root
//! filesystem without a chown of the image (the overlay's upper layer gets the node's ids).
//!
//! One view per image and id map, made with the user namespace of the first node that needs
//! it (every shifted node of a process has the same map) and kept for the life of the process:
//! unmounting a view waits for an RCU grace period, milliseconds per node. Views live under a
//! tmpfs on /run/hutch in a private mount namespace of the runtime process, shared so that a
//! view attached after a builder's clone still propagates into its copy (/run/hutch: every id
//! may traverse its ancestors, which the image's own path may not allow, e.g. under root's
//! 0700 home). The host never sees them: they go with the runtime's mount namespace.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::Error;

/// Where the idmapped views live: a tmpfs in the runtime's private mount namespace, shared
/// so that a view attached after a node's clone propagates into the node's copy of it.
const VIEWS: &str = "/run/hutch";

/// The views attached so far; `None` until this process has its private mount namespace and
/// the views tmpfs.
static ATTACHED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// The path where the view of `image` for ids starting at `start` appears (before the clone:
/// the builder's mount table is copied then, and a view attached later propagates there).
/// Call from a single-threaded process (the first call unshares the mount namespace).
pub(crate) fn view_path(image: &Path, start: u32) -> Result<PathBuf, Error> {
    let mut attached = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
    if attached.is_none() {
        // A private mount namespace: the idmapped mounts must never show on the host.
        unshare(CloneFlags::CLONE_NEWNS).map_err(Error::sys("unsharing the runtime's mount namespace"))?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
            .map_err(Error::sys("making / a slave mount"))?;
        match std::fs::create_dir(VIEWS) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(Error::io("creating", VIEWS)(e)),
            _ => {}
        }
        mount(
            Some("hutch-views"),
            VIEWS,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755,size=64k"),
        )
        .map_err(Error::sys(format!("mounting a tmpfs on {VIEWS}")))?;
        mount(None::<&str>, VIEWS, None::<&str>, MsFlags::MS_SHARED, None::<&str>).map_err(Error::sys("sharing the views tmpfs"))?;
    }
    let attached = attached.get_or_insert_with(HashSet::new);
    let hash = crate::container::fnv1a(image.as_os_str().as_encoded_bytes(), crate::container::FNV_OFFSET);
    let view = Path::new(VIEWS).join(format!("{hash:016x}-{start}"));
    if attached.contains(&view) {
        return Ok(view);
    }
    match std::fs::create_dir(&view) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::io("creating", &view)(e)),
        _ => Ok(view),
    }
}

/// Attaches `image` at `view` unless it is there already, idmapped with the user namespace of
/// the (cloned, id-mapped, waiting) process `pid`: it propagates into that process's mounts.
pub(crate) fn attach_view(image: &Path, view: &Path, pid: nix::unistd::Pid) -> Result<(), Error> {
    let mut attached = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
    let attached = attached.get_or_insert_with(HashSet::new);
    if attached.contains(view) {
        return Ok(());
    }
    let path = format!("/proc/{pid}/ns/user");
    let userns = std::fs::File::open(&path).map(OwnedFd::from).map_err(Error::io("opening", path))?;
    let tree = open_tree(image)?;
    set_idmap(&tree, &userns).map_err(|e| Error::Host {
        problem: format!("idmapping {}: {e}", image.display()),
        fix:
            "use a filesystem that supports idmapped mounts (ext4, xfs, btrfs, tmpfs), or run rootless with an image shifted for your user"
                .into(),
    })?;
    move_over(&tree, view)?;
    attached.insert(view.to_path_buf());
    Ok(())
}

fn open_tree(path: &Path) -> Result<OwnedFd, Error> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::sys("image path")(Errno::EINVAL))?;
    // SAFETY: open_tree with a NUL-terminated path; returns a new fd we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    let fd = Errno::result(fd).map_err(Error::sys(format!("open_tree {}", path.display())))?;
    // SAFETY: the kernel returned a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn set_idmap(tree: &OwnedFd, userns: &OwnedFd) -> Result<(), Errno> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on a detached tree we own, with a valid mount_attr of the right size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(rc).map(drop)
}

fn move_over(tree: &OwnedFd, image: &Path) -> Result<(), Error> {
    let c = std::ffi::CString::new(image.as_os_str().as_encoded_bytes()).map_err(|_| Error::sys("image path")(Errno::EINVAL))?;
    // SAFETY: move_mount of our detached tree onto a NUL-terminated path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(rc)
        .map(drop)
        .map_err(Error::sys(format!("attaching the idmapped {}", image.display())))
}
