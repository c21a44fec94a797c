//! The login environment, sourced once and cached: the NixOS driver's backdoor shell sources
//! /etc/profile once at boot and runs every command in that environment; the agent does the
//! same, and sources again whenever the files /etc/profile reads change (a NixOS node creates
//! them during activation, after the agent started). Saves a bash start and the profile's own
//! forks (`$(id -u)`) on every command.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// The environment every command starts from before the profile: what the backdoor sets.
pub(crate) const BASE_ENV: &[(&str, &str)] = &[
    ("PATH", super::command::DEFAULT_PATH),
    ("HOME", "/root"),
    ("USER", "root"),
    ("LOGNAME", "root"),
];

/// Variables that describe the capturing shell itself, not the login environment.
const SHELL_OWN: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_"];

/// Files whose change means the profile must be sourced again.
const WATCHED: &[&str] = &[
    "/etc/profile",
    "/etc/profile.d",
    "/etc/environment",
    "/etc/set-environment",
    "/etc/static",
    "/etc/bash.bashrc",
    "/run/current-system",
];

type Stamp = Vec<Option<(u64, u64, i64, i64, u64)>>;
/// A captured environment: name/value pairs.
pub(crate) type Env = Arc<Vec<(String, String)>>;

static CACHE: Mutex<Option<(String, Stamp, Option<Env>)>> = Mutex::new(None);

fn stamp_of(p: &Path) -> Option<(u64, u64, i64, i64, u64)> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// A cheap fingerprint of everything the profile is likely to read.
fn stamp() -> Stamp {
    let mut s: Stamp = WATCHED.iter().map(|p| stamp_of(Path::new(p))).collect();
    if let Ok(dir) = std::fs::read_dir("/etc/profile.d") {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        s.extend(files.iter().map(|p| stamp_of(p)));
    }
    s
}

/// Source /etc/profile in `shell` and return the exported environment, or `None` when that
/// cannot be done (no `env` in the node, the shell failed).
fn capture(shell: &str, is_bash: bool) -> Option<Env> {
    let mut cmd = Command::new(shell);
    if is_bash {
        cmd.args(["--noprofile", "--norc"]);
    }
    cmd.arg("-c")
        .arg("if [ -r /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi; exec env -0")
        .env_clear()
        .envs(BASE_ENV.iter().copied())
        .env("SHELL", shell)
        .current_dir("/")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    let out = cmd.output().ok()?;
    if !out.status.success() || out.stdout.is_empty() {
        return None;
    }
    let vars = out
        .stdout
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            (!k.is_empty() && !SHELL_OWN.contains(&k)).then(|| (k.to_string(), v.to_string()))
        })
        .collect();
    Some(Arc::new(vars))
}

/// The login environment for `shell`, from the cache while the watched files are unchanged.
pub(crate) fn environment(shell: &str, is_bash: bool) -> Option<Env> {
    let now = stamp();
    let mut g = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((sh, s, env)) = g.as_ref() {
        if sh == shell && *s == now {
            return env.clone();
        }
    }
    let env = capture(shell, is_bash);
    *g = Some((shell.to_string(), now, env.clone()));
    env
}
