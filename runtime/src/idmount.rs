//! Root-owned images for shifted nodes: an idmapped mount makes an image's files, owned by
//! host ids 0..65535, appear owned by the node's shifted ids, so node root owns its root
//! filesystem without a chown of the image (the overlay's upper layer gets the node's ids).
//!
//! The runtime makes a detached copy of the image's mount (open_tree), idmaps it with the user
//! namespace of the node's builder and passes it to the builder, which attaches it inside its
//! own mount namespace as the overlay's lower layer (see `child.rs`). The view is never
//! attached where the host or the runtime could see it, needs no mount namespace of the
//! runtime's own and no state directory, and goes with the node's mount namespaces; the image's
//! own path need not be traversable by the node's ids (e.g. under root's 0700 home).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;

use crate::Error;

/// A detached tree of `image` whose ids are mapped through the user namespace of the (cloned,
/// id-mapped, waiting) builder `pid`.
pub(crate) fn idmapped_tree(image: &Path, pid: nix::unistd::Pid) -> Result<OwnedFd, Error> {
    let path = format!("/proc/{pid}/ns/user");
    let userns = std::fs::File::open(&path).map(OwnedFd::from).map_err(Error::io("opening", path))?;
    let tree = open_tree(image)?;
    set_idmap(&tree, &userns).map_err(|e| Error::Host {
        problem: format!("idmapping {}: {e}", image.display()),
        fix:
            "use a filesystem that supports idmapped mounts (ext4, xfs, btrfs, tmpfs), or run rootless with an image shifted for your user"
                .into(),
    })?;
    Ok(tree)
}

pub(crate) fn open_tree(path: &Path) -> Result<OwnedFd, Error> {
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
