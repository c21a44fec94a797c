//! Root-owned images for shifted nodes: an idmapped mount makes an image's files, owned by
//! host ids 0..65535, appear owned by the node's shifted ids, so node root owns its root
//! filesystem without a chown of the image (the overlay's upper layer gets the node's ids).
//!
//! The idmapped mount is attached in a private mount namespace of the runtime process, under a
//! tmpfs on /run/hutch (a directory whose ancestors every id may traverse: the image's own path
//! may not be, e.g. under root's 0700 home): nodes cloned afterwards see it there, the host
//! only ever sees the empty /run/hutch, and the mounts go away with the process.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::{Error, IdMap};

/// Images already idmapped in this process: image path -> where its idmapped view is.
static DONE: Mutex<Option<HashMap<PathBuf, PathBuf>>> = Mutex::new(None);

/// Where the idmapped views live (a tmpfs there, in the runtime's private mount namespace).
const VIEWS: &str = "/run/hutch";

/// Returns a path where `image` appears owned by the node's ids, made once per process.
/// Call from a single-threaded process (it may unshare the mount namespace).
pub(crate) fn prepare_image(image: &Path, idmap: &IdMap) -> Result<PathBuf, Error> {
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let done = done.get_or_insert_with(HashMap::new);
    if let Some(view) = done.get(image) {
        return Ok(view.clone());
    }
    if done.is_empty() {
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
    }
    let view = Path::new(VIEWS).join(done.len().to_string());
    std::fs::create_dir(&view).map_err(Error::io("creating", &view))?;
    let userns = map_holder(idmap)?;
    let tree = open_tree(image)?;
    set_idmap(&tree, &userns).map_err(|e| Error::Host {
        problem: format!("idmapping {}: {e}", image.display()),
        fix:
            "use a filesystem that supports idmapped mounts (ext4, xfs, btrfs, tmpfs), or run rootless with an image shifted for your user"
                .into(),
    })?;
    move_over(&tree, &view)?;
    done.insert(image.to_path_buf(), view.clone());
    Ok(view)
}

/// A user namespace with the node's map, held by an fd (its one process is gone again).
fn map_holder(idmap: &IdMap) -> Result<OwnedFd, Error> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::sys("pipe"))?;
    // SAFETY: single-threaded caller; the child only unshares, signals and sleeps until killed.
    match unsafe { nix::unistd::fork() }.map_err(Error::sys("forking an id-map holder"))? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = nix::unistd::write(&w, if ok { b"1" } else { b"0" });
            loop {
                nix::unistd::pause();
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut buf = [0u8; 1];
            let ok = matches!(nix::unistd::read(&r, &mut buf), Ok(1)) && buf[0] == b'1';
            let result = if ok {
                idmap.apply(child).and_then(|()| {
                    let path = format!("/proc/{child}/ns/user");
                    std::fs::File::open(&path).map(OwnedFd::from).map_err(Error::io("opening", path))
                })
            } else {
                Err(Error::Host {
                    problem: "cannot create a user namespace for the image's idmap".into(),
                    fix: "check user namespaces are enabled".into(),
                })
            };
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
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
