//! Where a running test says it runs, so `hutch list/exec/logs/stop` in another terminal find
//! it: one directory per test run in the user's runtime directory, with what the run is
//! (`run.json`) and its control socket (`control.sock`, see `control`).
//!
//! The runtime directory is `$XDG_RUNTIME_DIR/hutch`, else `/run/hutch` for root, else
//! `/tmp/hutch-UID`; it is made 0700 and must be owned by the user (a directory someone else
//! made there is refused), so only the user who runs a test can find or reach it. An entry is
//! removed when its test ends; one left by a killed test is swept by the next command that
//! lists the directory (its process is gone, or is another process now).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What a running test writes about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// The test's name (`[test] name`).
    pub test: String,
    /// The hutch process running it.
    pub pid: u32,
    /// That process's start time (clock ticks since boot; /proc/PID/stat field 22): tells a
    /// live run from a reused pid.
    pub started: u64,
    /// Where its logs go (absolute).
    pub output_dir: PathBuf,
}

/// A registered run: its directory and what it wrote.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The run's directory.
    pub dir: PathBuf,
    /// What it wrote.
    pub info: RunInfo,
}

impl Entry {
    /// The run's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
}

/// The user's runtime directory for hutch (created 0700 if missing; checked to be the user's).
pub fn runtime_dir() -> Result<PathBuf> {
    let uid = nix::unistd::geteuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("hutch"),
        None if uid == 0 => PathBuf::from("/run/hutch"),
        None => PathBuf::from(format!("/tmp/hutch-{uid}")),
    };
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating hutch's runtime directory {}", dir.display())),
    }
    let meta = fs::symlink_metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid {
        bail!(
            "{} is not a directory owned by you (uid {uid}); remove it or set XDG_RUNTIME_DIR to a directory of yours",
            dir.display()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).with_context(|| format!("making {} private", dir.display()))?;
    }
    Ok(dir)
}

/// The start time of process `pid`, if it runs.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A running test's entry, removed when dropped (the test ended).
pub struct Registration {
    dir: PathBuf,
}

impl Registration {
    /// Register this process's run of `test` in `runtime` (from [`runtime_dir`], found before
    /// a rootless run enters its user namespace, where the uid reads 0).
    pub fn new(runtime: &Path, test: &str, output_dir: &Path) -> Result<Registration> {
        let pid = std::process::id();
        let dir = runtime.join(pid.to_string());
        // A directory of a dead run with this pid: sweep it first.
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let info = RunInfo {
            test: test.to_string(),
            pid,
            started: start_time(pid).unwrap_or_default(),
            output_dir: std::path::absolute(output_dir).unwrap_or_else(|_| output_dir.to_path_buf()),
        };
        let reg = Registration { dir };
        let json = serde_json::to_vec(&info).context("encoding run.json")?;
        // Written under a temporary name and renamed: a lister never reads half a file.
        let tmp = reg.dir.join("run.json.tmp");
        fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, reg.dir.join("run.json")).context("publishing run.json")?;
        Ok(reg)
    }

    /// Where the control socket goes.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The live runs in `runtime`, oldest first; entries of runs that ended without removing
/// theirs (killed) are removed on the way.
pub fn live(runtime: &Path) -> Vec<Entry> {
    let Ok(read) = fs::read_dir(runtime) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in read.flatten() {
        let dir = e.path();
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let info = fs::read(dir.join("run.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<RunInfo>(&b).ok());
        match info {
            Some(info) if info.pid == pid && start_time(pid) == Some(info.started) => out.push(Entry { dir, info }),
            // Being written (no run.json yet) by a live process: leave it.
            None if start_time(pid).is_some() => {}
            _ => {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    out.sort_by_key(|e| e.info.started);
    out
}
