//! Copies out of a node (`copy_from_machine`), parsed as hostile input. The tree a node's agent
//! sends is checked whole before a byte is written: every entry path has only normal
//! components and a directory of the same tree as its parent (never a link), sizes and counts
//! are bounded, a symlink is kept only when it stays inside the copied tree. Then it is written
//! through directory descriptors, `O_NOFOLLOW` and `O_EXCL`: whatever an earlier copy left in
//! the place (a link to a host directory included) is replaced, never followed. Modes are
//! masked (no setuid, setgid or sticky bit, no group or other write); the protocol has no way
//! to say "device" or "fifo", so none is ever made.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};

use crate::agent::{EntryKind, TreeEntry, FILE_CAP};

/// The most entries one copy may hold: a node must not make the host create millions of files.
pub const MAX_ENTRIES: usize = 100_000;
/// The longest entry path or link target accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;
/// The longest path component accepted (Linux's NAME_MAX).
const MAX_NAME: usize = 255;
/// The deepest entry accepted, in directories below the copied root.
const MAX_DEPTH: usize = 128;

/// Why a copy out of a node was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The node's reply breaks a rule; nothing of it was written.
    #[error("refused the copy: entry {entry:?} {why}")]
    Refused {
        /// The entry's path as the node sent it ("" is the copied path itself).
        entry: String,
        /// Which rule it breaks.
        why: String,
    },
    /// The script's `target_dir` is not a relative path of plain names.
    #[error("copy_from_machine: target_dir {0:?} must be a relative path of plain names under the output directory")]
    TargetDir(String),
    /// A system call on the host failed.
    #[error("{what} {path}: {source}")]
    Host {
        /// The step, e.g. "creating".
        what: &'static str,
        /// Where, on the host.
        path: String,
        /// The error.
        source: Errno,
    },
}

fn refused(entry: &str, why: impl Into<String>) -> CopyError {
    CopyError::Refused {
        entry: entry.to_string(),
        why: why.into(),
    }
}

/// Checks a tree from a node against every rule; returns each entry's path components.
fn check(entries: &[TreeEntry]) -> Result<Vec<Vec<&str>>, CopyError> {
    if entries.len() > MAX_ENTRIES {
        return Err(refused(
            "",
            format!("has {} entries, more than the {MAX_ENTRIES} a copy may hold", entries.len()),
        ));
    }
    match entries.first() {
        None => return Err(refused("", "is missing: the node sent an empty tree")),
        Some(e) if !e.path.is_empty() => return Err(refused(&e.path, "comes before the copied path itself")),
        Some(TreeEntry {
            kind: EntryKind::Symlink { target },
            ..
        }) => {
            return Err(refused(
                "",
                format!("is a symbolic link (to {target:?}), which would leave the copied tree; copy what it points to instead"),
            ))
        }
        Some(_) => {}
    }
    let mut total = 0u64;
    let mut kinds: HashMap<&str, &EntryKind> = HashMap::new();
    let mut all = Vec::with_capacity(entries.len());
    for e in entries {
        let parts = components(&e.path)?;
        if !parts.is_empty() {
            let parent = &e.path[..e.path.len() - parts[parts.len() - 1].len()].trim_end_matches('/');
            match kinds.get(parent) {
                Some(EntryKind::Dir) => {}
                Some(EntryKind::Symlink { .. }) => return Err(refused(&e.path, format!("goes through the symbolic link {parent:?}"))),
                Some(EntryKind::File { .. }) => return Err(refused(&e.path, format!("goes through the file {parent:?}"))),
                None => return Err(refused(&e.path, format!("comes before its directory {parent:?}"))),
            }
        }
        match &e.kind {
            EntryKind::File { data } => {
                total += data.len() as u64;
                if total > FILE_CAP {
                    return Err(refused(&e.path, format!("takes the copy past {} MiB", FILE_CAP >> 20)));
                }
            }
            EntryKind::Symlink { target } => check_link(&e.path, parts.len() - 1, target)?,
            EntryKind::Dir => {}
        }
        if kinds.insert(e.path.as_str(), &e.kind).is_some() {
            return Err(refused(&e.path, "appears twice"));
        }
        all.push(parts);
    }
    Ok(all)
}

/// An entry path's components: "" is the root; otherwise only plain names.
fn components(path: &str) -> Result<Vec<&str>, CopyError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    if path.len() > MAX_PATH {
        return Err(refused(
            &path.chars().take(64).collect::<String>(),
            format!("is {} bytes long, more than {MAX_PATH}", path.len()),
        ));
    }
    if path.starts_with('/') {
        return Err(refused(path, "is an absolute path; entries must be relative to the copied path"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > MAX_DEPTH {
        return Err(refused(path, format!("is more than {MAX_DEPTH} directories deep")));
    }
    for p in &parts {
        let why = match *p {
            "" => "has an empty component",
            "." | ".." => "has a `.` or `..` component",
            p if p.len() > MAX_NAME => "has a component longer than 255 bytes",
            p if p.contains('\0') => "has a NUL byte",
            _ => continue,
        };
        return Err(refused(path, why));
    }
    Ok(parts)
}

/// A link at depth `depth` (its parent's component count) may point only inside the tree:
/// relative, at most `depth` leading `..`, then plain names. Its parents are real directories
/// (see `check`), so the leading `..` walk stays inside; a `..` after a name could climb out
/// of a linked directory (`l -> .`, `m -> l/..`), so there is none.
fn check_link(entry: &str, depth: usize, target: &str) -> Result<(), CopyError> {
    let why = if target.is_empty() || target.len() > MAX_PATH || target.contains('\0') {
        "is a symbolic link with an empty, overlong or NUL-holding target".to_string()
    } else if target.starts_with('/') {
        format!("is a symbolic link to {target:?}, an absolute path that would leave the copied tree")
    } else {
        let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        let ups = parts.iter().take_while(|p| **p == "..").count();
        if ups > depth {
            format!("is a symbolic link to {target:?}, which leaves the copied tree")
        } else if parts[ups..].contains(&"..") {
            format!("is a symbolic link to {target:?}, with `..` after a name (it could leave the copied tree)")
        } else {
            return Ok(());
        }
    };
    Err(refused(entry, why))
}

/// The host path of `rel` under `base`, for messages.
fn shown(base: &Path, rel: &str) -> String {
    base.join(rel).display().to_string()
}

fn host(what: &'static str, path: String) -> impl FnOnce(Errno) -> CopyError {
    move |source| CopyError::Host { what, path, source }
}

/// A directory's mode: the node's bits without setuid/setgid/sticky or group/other write, and
/// always the owner's rwx so later entries and copies can be written.
fn dir_mode(mode: u32) -> Mode {
    Mode::from_bits_truncate((mode & 0o755) | 0o700)
}

/// A file's mode: the node's bits without setuid/setgid/sticky or group/other write, and
/// always readable and writable by its owner.
fn file_mode(mode: u32) -> Mode {
    Mode::from_bits_truncate((mode & 0o755) | 0o600)
}

/// Removes whatever is at `name` in `dir` (a link is removed, not followed; a directory with
/// everything in it).
fn remove_at<P: ?Sized + nix::NixPath>(dir: BorrowedFd, name: &P, shown: &str) -> Result<(), CopyError> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => return Ok(()),
        r => r.map_err(host("inspecting", shown.to_string()))?,
    };
    if !is_dir(&st) {
        return unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(host("removing", shown.to_string()));
    }
    let mut listing = nix::dir::Dir::from_fd(open_dir(dir, name, shown)?).map_err(host("listing", shown.to_string()))?;
    let names: Vec<std::ffi::CString> = listing
        .iter()
        .flatten()
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    for n in names {
        remove_at(listing.as_fd(), n.as_c_str(), &format!("{shown}/{}", n.to_string_lossy()))?;
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(host("removing", shown.to_string()))
}

fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

/// An `Errno` for an `io::Error` from std, so host errors read alike.
fn errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn open_dir<P: ?Sized + nix::NixPath>(dir: BorrowedFd, name: &P, shown: &str) -> Result<OwnedFd, CopyError> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    openat(dir, name, flags, Mode::empty()).map_err(host("opening", shown.to_string()))
}

/// The directory `name` in `dir`, made when missing. Something else in its place (a link, a
/// file) is replaced when `replace`, else refused; a link is never followed.
fn ensure_dir(dir: BorrowedFd, name: &str, replace: bool, shown: &str) -> Result<OwnedFd, CopyError> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if is_dir(&st) => return open_dir(dir, name, shown),
        Ok(_) if replace => remove_at(dir, name, shown)?,
        Ok(_) => {
            return Err(host(
                "using as a directory (it is not one; hutch does not write through links)",
                shown.to_string(),
            )(Errno::ENOTDIR))
        }
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(host("inspecting", shown.to_string())(e)),
    }
    mkdirat(dir, name, Mode::from_bits_truncate(0o700)).map_err(host("creating", shown.to_string()))?;
    open_dir(dir, name, shown)
}

/// Writes one file afresh (`O_EXCL`: never into something already there).
fn write_file_at(dir: BorrowedFd, name: &str, data: &[u8], mode: u32, shown: &str) -> Result<(), CopyError> {
    remove_at(dir, name, shown)?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(0o600)).map_err(host("creating", shown.to_string()))?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, data).map_err(|e| host("writing", shown.to_string())(errno(e)))?;
    fchmod(file.as_fd(), file_mode(mode)).map_err(host("setting the mode of", shown.to_string()))
}

/// Writes the tree a node sent for `copy_from_machine` at `<out>/<target_dir>/<name>` and
/// returns that path. `target_dir` comes from the test script; `entries` from the node.
pub fn write_tree(out: &Path, target_dir: &str, name: &str, entries: &[TreeEntry]) -> Result<PathBuf, CopyError> {
    let parts = check(entries)?;
    let target: Vec<&str> = target_dir.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if target_dir.starts_with('/') || target.contains(&"..") {
        return Err(CopyError::TargetDir(target_dir.to_string()));
    }
    std::fs::create_dir_all(out).map_err(|e| host("creating", out.display().to_string())(errno(e)))?;
    let top = nix::fcntl::open(out, OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY, Mode::empty())
        .map_err(host("opening", out.display().to_string()))?;
    let mut base = top;
    let mut base_path = out.to_path_buf();
    for c in target {
        base_path.push(c);
        base = ensure_dir(base.as_fd(), c, false, &base_path.display().to_string())?;
    }
    let dest = base_path.join(name);
    // The open directories from the copied root down to the last parent used (at most
    // `MAX_DEPTH` descriptors, whatever the tree's size); reopened without following links.
    let mut chain: Vec<OwnedFd> = Vec::new();
    let mut chain_names: Vec<&str> = Vec::new();
    for (e, p) in entries.iter().zip(&parts) {
        let at = shown(&dest, &e.path);
        let Some((leaf, parent)) = p.split_last() else {
            match &e.kind {
                EntryKind::Dir => {
                    let fd = ensure_dir(base.as_fd(), name, true, &at)?;
                    fchmod(fd.as_fd(), dir_mode(e.mode)).map_err(host("setting the mode of", at))?;
                    chain = vec![fd];
                }
                EntryKind::File { data } => write_file_at(base.as_fd(), name, data, e.mode, &at)?,
                EntryKind::Symlink { .. } => return Err(refused("", "is a symbolic link")),
            }
            continue;
        };
        let common = chain_names.iter().zip(parent).take_while(|(a, b)| a == b).count();
        chain.truncate(common + 1);
        chain_names.truncate(common);
        for c in &parent[common..] {
            let fd = open_dir(chain[chain.len() - 1].as_fd(), *c, &at)?;
            chain.push(fd);
            chain_names.push(c);
        }
        let dir = chain[chain.len() - 1].as_fd();
        match &e.kind {
            EntryKind::Dir => {
                let fd = ensure_dir(dir, leaf, true, &at)?;
                fchmod(fd.as_fd(), dir_mode(e.mode)).map_err(host("setting the mode of", at))?;
            }
            EntryKind::File { data } => write_file_at(dir, leaf, data, e.mode, &at)?,
            EntryKind::Symlink { target } => {
                remove_at(dir, *leaf, &at)?;
                symlinkat(target.as_str(), dir, *leaf).map_err(host("creating the link", at))?;
            }
        }
    }
    Ok(dest)
}
