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

/// Several commands started at once in one fresh memory cgroup and waited for.
pub struct GroupSample {
    /// Until the last command ended (or was killed at the limit).
    pub wall: Duration,
    /// The memory peak of the whole group, when known.
    pub peak: Option<u64>,
    /// Commands that exited non-zero or had to be killed.
    pub failed: usize,
    /// The limit passed and the rest was killed.
    pub timed_out: bool,
    /// Each command's standard output.
    pub stdout: Vec<String>,
}

/// Starts every command of `cmds` at once inside one fresh memory cgroup (so the peak covers
/// every process they start), waits up to `limit`, then kills whatever is left in the cgroup.
pub fn measure_group(cmds: &[Vec<String>], limit: Duration) -> GroupSample {
    let cg = MemoryCgroup::new();
    let dir = std::env::temp_dir().join(format!("hutch-bench-out-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let start = Instant::now();
    let mut children = Vec::new();
    let mut failed = 0;
    for (i, cmd) in cmds.iter().enumerate() {
        let out = std::fs::File::create(dir.join(i.to_string())).ok();
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..]).stdin(Stdio::null()).stderr(Stdio::null());
        c.stdout(out.map(Stdio::from).unwrap_or_else(Stdio::null));
        if let Some(cg) = &cg {
            let procs = cg.0.join("cgroup.procs");
            // SAFETY: between fork and exec the closure only writes one small file; the harness
            // is single-threaded, so no lock can be held by another thread.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut c, move || std::fs::write(&procs, "0"));
            }
        }
        match c.spawn() {
            Ok(child) => children.push(Some(child)),
            Err(_) => failed += 1,
        }
    }
    let mut timed_out = false;
    while children.iter().any(Option::is_some) {
        for slot in children.iter_mut() {
            if let Some(child) = slot {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        failed += usize::from(!status.success());
                        *slot = None;
                    }
                    Ok(None) => {}
                    Err(_) => {
                        failed += 1;
                        *slot = None;
                    }
                }
            }
        }
        if start.elapsed() > limit && children.iter().any(Option::is_some) {
            timed_out = true;
            if let Some(cg) = &cg {
                kill_all_in(&cg.0);
            }
            for child in children.iter_mut().flatten() {
                let _ = child.kill();
                let _ = child.wait();
                failed += 1;
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = start.elapsed();
    let peak = cg.as_ref().and_then(MemoryCgroup::peak);
    if let Some(cg) = &cg {
        kill_all_in(&cg.0);
    }
    let stdout = (0..cmds.len())
        .map(|i| std::fs::read_to_string(dir.join(i.to_string())).unwrap_or_default())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    GroupSample {
        wall,
        peak,
        failed,
        timed_out,
        stdout,
    }
}

/// SIGKILLs every process in a cgroup until none is left (or two seconds pass).
fn kill_all_in(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
