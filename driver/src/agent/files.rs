//! Moving files for the agent: whole files, and file trees (for `copy_from_host` and
//! `copy_from_machine` of directories) without needing tar inside the node.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::{AgentReply, EntryKind, TreeEntry, FILE_CAP};

fn error(what: &str, path: &Path, e: io::Error) -> AgentReply {
    AgentReply::Error {
        message: format!("{what} {}: {e}", path.display()),
    }
}

fn too_big(path: &Path, size: u64) -> AgentReply {
    AgentReply::Error {
        message: format!(
            "{} is {size} bytes, more than the {} MiB one request moves; compress or split it",
            path.display(),
            FILE_CAP >> 20
        ),
    }
}

/// Read one whole file.
pub(crate) fn read_file(path: &str) -> AgentReply {
    let p = Path::new(path);
    match fs::metadata(p) {
        Ok(m) if m.len() > FILE_CAP => return too_big(p, m.len()),
        Ok(m) if m.is_dir() => {
            return AgentReply::Error {
                message: format!("{path} is a directory, not a file"),
            }
        }
        Ok(_) => {}
        Err(e) => return error("reading", p, e),
    }
    match fs::read(p) {
        Ok(data) => AgentReply::File { data },
        Err(e) => error("reading", p, e),
    }
}

/// Write one whole file, optionally creating parents, then set its mode.
pub(crate) fn write_file(path: &str, data: &[u8], mode: Option<u32>, parents: bool) -> AgentReply {
    let p = Path::new(path);
    if parents {
        if let Some(dir) = p.parent() {
            if let Err(e) = fs::create_dir_all(dir) {
                return error("creating", dir, e);
            }
        }
    }
    if let Err(e) = fs::write(p, data) {
        return error("writing", p, e);
    }
    if let Err(e) = fs::set_permissions(p, fs::Permissions::from_mode(mode.unwrap_or(0o644))) {
        return error("setting the mode of", p, e);
    }
    AgentReply::Done
}

/// Read a file or a directory tree (symlinks are not followed), parents first.
pub(crate) fn read_tree(path: &str) -> AgentReply {
    let mut entries = Vec::new();
    let mut total = 0u64;
    match walk(Path::new(path), "", &mut entries, &mut total) {
        Ok(()) => AgentReply::Tree { entries },
        Err(reply) => reply,
    }
}

fn walk(root: &Path, rel: &str, out: &mut Vec<TreeEntry>, total: &mut u64) -> Result<(), AgentReply> {
    let p = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
    let meta = fs::symlink_metadata(&p).map_err(|e| error("reading", &p, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(&p).map_err(|e| error("reading the link", &p, e))?;
        out.push(TreeEntry {
            path: rel.into(),
            mode,
            kind: EntryKind::Symlink {
                target: target.to_string_lossy().into_owned(),
            },
        });
    } else if ft.is_dir() {
        out.push(TreeEntry {
            path: rel.into(),
            mode,
            kind: EntryKind::Dir,
        });
        let mut names: Vec<String> = fs::read_dir(&p)
            .map_err(|e| error("listing", &p, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            let child = if rel.is_empty() { n } else { format!("{rel}/{n}") };
            walk(root, &child, out, total)?;
        }
    } else if ft.is_file() {
        *total += meta.len();
        if *total > FILE_CAP {
            return Err(too_big(root, *total));
        }
        let data = fs::read(&p).map_err(|e| error("reading", &p, e))?;
        out.push(TreeEntry {
            path: rel.into(),
            mode,
            kind: EntryKind::File { data },
        });
    }
    // Sockets, fifos and devices are skipped: they cannot be copied as data.
    Ok(())
}

/// Create a tree at `path`: entry "" is `path` itself; parents of `path` are created.
pub(crate) fn write_tree(path: &str, entries: &[TreeEntry]) -> AgentReply {
    let root = Path::new(path);
    if let Some(dir) = root.parent() {
        if let Err(e) = fs::create_dir_all(dir) {
            return error("creating", dir, e);
        }
    }
    for entry in entries {
        if entry.path.split('/').any(|c| c == "..") {
            return AgentReply::Error {
                message: format!("tree entry {:?} leaves the target directory", entry.path),
            };
        }
        if let Err(reply) = write_entry(root, entry) {
            return reply;
        }
    }
    AgentReply::Done
}

/// Write one entry, replacing what is in its place.
pub(crate) fn write_entry(root: &Path, entry: &TreeEntry) -> Result<(), AgentReply> {
    let p = if entry.path.is_empty() {
        root.to_path_buf()
    } else {
        root.join(&entry.path)
    };
    let mode = fs::Permissions::from_mode(entry.mode);
    match &entry.kind {
        EntryKind::Dir => {
            if !p.is_dir() {
                fs::create_dir(&p).map_err(|e| error("creating", &p, e))?;
            }
            fs::set_permissions(&p, mode).map_err(|e| error("setting the mode of", &p, e))
        }
        EntryKind::File { data } => {
            if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                let _ = fs::remove_file(&p);
            }
            fs::write(&p, data).map_err(|e| error("writing", &p, e))?;
            fs::set_permissions(&p, mode).map_err(|e| error("setting the mode of", &p, e))
        }
        EntryKind::Symlink { target } => {
            if fs::symlink_metadata(&p).is_ok() {
                let _ = fs::remove_file(&p);
            }
            symlink(target, &p).map_err(|e| error("creating the link", &p, e))
        }
    }
}
