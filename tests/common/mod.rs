//! Shared helpers for hutch's integration tests: fixtures built by the project's own scripts,
//! running `hutch` as root or as another user, and the check that nothing leaked.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The hutch binary under test.
pub fn hutch() -> &'static str {
    env!("CARGO_BIN_EXE_hutch")
}

/// True when the tests run as root (what CI does); root-only tests skip otherwise.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Prints why a test is skipped and returns true when it must be.
pub fn skip_unless_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root (CI runs the suite as root)");
        return true;
    }
    false
}

/// The fixture cache: `$HUTCH_CACHE`, else /var/cache/hutch (world-traversable, so rootless
/// tests as `nobody` can read the images too).
pub fn cache() -> PathBuf {
    std::env::var_os("HUTCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hutch"))
}

fn build_fixture(script: &str, args: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("fixtures").join(script))
        .args(args)
        .env("HUTCH_CACHE", cache())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running fixtures/{script}: {e}"));
    assert!(out.status.success(), "fixtures/{script} failed");
    let path = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(!path.is_empty(), "fixtures/{script} printed no path");
    PathBuf::from(path)
}

/// The busybox root filesystem (fixtures/busybox-image.sh).
pub fn busybox_image() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_fixture("busybox-image.sh", &[]))
}

/// The offline-built NixOS-shaped toplevel (fixtures/nix-toplevel.sh).
pub fn nix_toplevel() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_fixture("nix-toplevel.sh", &[]))
}

/// What a `hutch` run left: its exit code and output.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with the whole output unless the run exited 0.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "hutch failed\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// Runs `hutch ARGS` as the current user, then checks nothing of it remains.
pub fn hutch_run(args: &[&str]) -> Run {
    run_as(None, args)
}

/// Runs `hutch ARGS` as `user` (a uid, via setpriv) when given, then checks nothing remains.
pub fn run_as(user: Option<u32>, args: &[&str]) -> Run {
    let mut cmd = match user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                hutch().into(),
            ]);
            c
        }
        None => Command::new(hutch()),
    };
    let child = cmd
        .args(args)
        .env("HUTCH_CACHE", cache())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning hutch");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for hutch");
    assert_nothing_left(pid);
    Run::from(out)
}

/// The cgroup directories hutch may create for a run whose process id is `pid`.
pub fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for parent in [
        "/sys/fs/cgroup/unified/hutch",
        "/sys/fs/cgroup/hutch",
        "/sys/fs/cgroup/memory/hutch",
        "/sys/fs/cgroup/pids/hutch",
    ] {
        if let Ok(entries) = std::fs::read_dir(parent) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(&format!("-{pid}")) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

/// Asserts a finished hutch run (process `pid`) left no cgroup and no mount on the host.
pub fn assert_nothing_left(pid: u32) {
    // The reaper may still be finishing its cleanup for a killed run: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !cgroup_dirs(pid).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(cgroup_dirs(pid).is_empty(), "cgroups left behind: {:?}", cgroup_dirs(pid));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let ours: Vec<&str> = mounts.lines().filter(|l| l.contains("hutch-") || l.contains("/oldroot")).collect();
    assert!(ours.is_empty(), "mounts left in the host's table: {ours:?}");
}
