//! Shared parts of hutch's benchmark harnesses: fixtures, timing a command inside its own
//! memory cgroup (so the peak covers the runtime and everything it started), statistics.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Builds (or reuses) a fixture with the project's script and returns the path it prints.
pub fn fixture(script: &str, args: &[&str]) -> PathBuf {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("fixtures/{script}: {e}"));
    assert!(out.status.success(), "fixtures/{script} failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// True when `program` is on PATH.
pub fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One measured run: wall time and the memory peak of the whole process tree, when known.
pub struct Sample {
    pub wall: Duration,
    pub peak: Option<u64>,
}

/// A v1 memory cgroup (or cgroup2 directory with memory accounting) to measure a run in.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new() -> Option<MemoryCgroup> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "hutch-bench-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        for base in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
            let dir = Path::new(base).join(&name);
            if std::fs::create_dir(&dir).is_ok() {
                if dir.join("memory.max_usage_in_bytes").exists() || dir.join("memory.peak").exists() {
                    return Some(MemoryCgroup(dir));
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        None
    }

    fn peak(&self) -> Option<u64> {
        ["memory.max_usage_in_bytes", "memory.peak"]
            .iter()
            .find_map(|f| std::fs::read_to_string(self.0.join(f)).ok()?.trim().parse().ok())
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..200 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs `cmd` to completion inside a fresh memory cgroup; `None` when it fails.
pub fn measure(cmd: &[String]) -> Option<Sample> {
    let cg = MemoryCgroup::new();
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(cg) = &cg {
        let procs = cg.0.join("cgroup.procs");
        // SAFETY: between fork and exec the closure only writes one small file; the harness
        // is single-threaded, so no lock can be held by another thread.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, move || std::fs::write(&procs, "0"));
        }
    }
    let start = Instant::now();
    let status = c.status().ok()?;
    let wall = start.elapsed();
    let peak = cg.as_ref().and_then(MemoryCgroup::peak);
    status.success().then_some(Sample { wall, peak })
}

/// The value at fraction `p` of a sorted slice.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Strings from string slices, for command lines.
pub fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}
