//! A census of what hutch runs could leave on the host: mounts, network namespaces, cgroups,
//! processes, disk. The reliability tests take one before and one after many runs and assert
//! that nothing grew.
//!
//! Other people's processes come and go on a shared machine, so the host-wide figures are
//! taken again until they settle (`settled_after`); the figures that only hutch can move
//! (processes running this build's binary, cgroups under hutch's directories) are exact.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the host holds at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Census {
    /// Lines of the host's /proc/self/mountinfo.
    pub mounts: usize,
    /// Distinct network namespaces: inodes of /proc/*/ns/net plus nsfs mounts of net namespaces.
    pub netns: usize,
    /// Network namespaces a run could still hold: those of processes running this build's
    /// hutch binary or orphaned with a node's uid (>= 100000), and nsfs mounts on the host.
    /// Judged instead of `netns`, which other work on a shared machine moves.
    pub run_netns: usize,
    /// Directories under hutch's cgroup parents (cgroup2 hutch*, v1 memory and pids hutch);
    /// reported, not judged: other people's runs on a shared machine make theirs there.
    pub cgroups: usize,
    /// Those of them that belong to a node these tests start (named `<node>-<pid>`, node one
    /// of `TEST_NODES`, and everything below them).
    pub test_cgroups: usize,
    /// Every process on the host but kernel threads (reported, not judged: other work on the
    /// machine moves it).
    pub processes: usize,
    /// Processes whose parent is PID 1: anything of a run that outlived hutch ends up here.
    pub orphans: usize,
    /// Orphans (parent PID 1) whose uid lies in a node's range (>= 100000): what is left of a
    /// node whose runtime is gone. Live nodes of other runs have a live parent.
    pub node_uid_processes: usize,
    /// Processes running this build's hutch binary (spawners, reapers, node PID 1s, agents).
    pub hutch_processes: usize,
    /// Host network interfaces (veths or bridges leaked into the host would show here).
    pub host_links: usize,
    /// Bytes and entries under $HUTCH_CACHE.
    pub cache: (u64, u64),
}

impl Census {
    /// Counts everything now.
    pub fn take() -> Census {
        Census {
            cache: disk(&super::cache()),
            ..Census::live()
        }
    }

    /// Counts everything a run holds while it lives (processes, mounts, namespaces, links,
    /// cgroups), not the disk: walking the fixture cache takes longer than a teardown.
    fn live() -> Census {
        Census {
            mounts: mounts().len(),
            netns: netns_count(),
            run_netns: run_netns_count(),
            cgroups: hutch_cgroups().len(),
            test_cgroups: test_cgroups().len(),
            processes: pids().into_iter().filter(|p| ppid_of(*p).is_some_and(|pp| pp != 2)).count(),
            orphans: pids().into_iter().filter(|p| live_orphan(*p)).count(),
            node_uid_processes: pids()
                .into_iter()
                .filter(|p| live_orphan(*p) && uid_of(*p).is_some_and(|u| u >= 100_000))
                .count(),
            hutch_processes: hutch_processes().len(),
            host_links: std::fs::read_dir("/sys/class/net").map(|d| d.count()).unwrap_or(0),
            cache: (0, 0),
        }
    }

    /// One line per figure, `name before -> after`, for the test output and the README.
    pub fn table(before: &Census, after: &Census) -> String {
        let rows = [
            ("host mounts", before.mounts as u64, after.mounts as u64),
            ("network namespaces (all, not judged)", before.netns as u64, after.netns as u64),
            ("network namespaces (of runs)", before.run_netns as u64, after.run_netns as u64),
            ("hutch cgroups (all, not judged)", before.cgroups as u64, after.cgroups as u64),
            (
                "hutch cgroups (of these tests' nodes)",
                before.test_cgroups as u64,
                after.test_cgroups as u64,
            ),
            ("processes (all, not judged)", before.processes as u64, after.processes as u64),
            ("processes (parent PID 1)", before.orphans as u64, after.orphans as u64),
            (
                "orphans with a node uid (>= 100000)",
                before.node_uid_processes as u64,
                after.node_uid_processes as u64,
            ),
            (
                "processes (hutch binary)",
                before.hutch_processes as u64,
                after.hutch_processes as u64,
            ),
            ("host network links", before.host_links as u64, after.host_links as u64),
            ("cache bytes", before.cache.0, after.cache.0),
            ("cache entries", before.cache.1, after.cache.1),
        ];
        rows.iter()
            .map(|(name, b, a)| format!("  {name:<38} {b:>12} -> {a:<12}\n"))
            .collect()
    }

    /// Figures that grew from `before` to `self`, by name.
    pub fn growth(&self, before: &Census) -> Vec<String> {
        let mut grew = Vec::new();
        let mut check = |name: &str, b: u64, a: u64| {
            if a > b {
                grew.push(format!("{name}: {b} -> {a}"));
            }
        };
        check("host mounts", before.mounts as u64, self.mounts as u64);
        check("network namespaces (of runs)", before.run_netns as u64, self.run_netns as u64);
        check(
            "hutch cgroups (of these tests' nodes)",
            before.test_cgroups as u64,
            self.test_cgroups as u64,
        );
        check("processes (parent PID 1)", before.orphans as u64, self.orphans as u64);
        check(
            "orphans with a node uid (>= 100000)",
            before.node_uid_processes as u64,
            self.node_uid_processes as u64,
        );
        check(
            "processes (hutch binary)",
            before.hutch_processes as u64,
            self.hutch_processes as u64,
        );
        check("host network links", before.host_links as u64, self.host_links as u64);
        check("cache bytes", before.cache.0, self.cache.0);
        check("cache entries", before.cache.1, self.cache.1);
        grew
    }

    /// Takes the live census again until nothing of it has grown since `before` (other
    /// people's processes and the last run's reapers settle), at most `limit`; returns when
    /// that happened.
    pub fn settle(before: &Census, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if Census::live().growth(before).is_empty() || Instant::now() > deadline {
                return Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Census::settle`], then the whole census (disk included).
    pub fn settled_after(before: &Census, limit: Duration) -> Census {
        Census::settle(before, limit);
        Census::take()
    }
}

/// The host's mount table.
pub fn mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every live process id. Zombies are left out: they hold nothing but their pid, and reaping
/// an orphan is PID 1's job (this machine's PID 1 is no init and reaps about once a second).
pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect::<Vec<i32>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|p| state_of(*p).is_some_and(|s| s != 'Z' && s != 'X'))
        .collect()
}

fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// A process whose parent is the host's init and that still runs. Zombies handed to init are
/// not counted: they hold nothing but a pid, and when init reaps them is the host's business
/// (this machine's init reaps about every 1.5 s, so a killed run's zombies outlive any limit
/// that measures hutch).
fn live_orphan(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let mut rest = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace()).into_iter().flatten();
    let (state, ppid) = (rest.next(), rest.next());
    ppid == Some("1") && state != Some("Z")
}

fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces, so split after its closing paren.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn uid_of(pid: i32) -> Option<u32> {
    std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// Processes running this build's hutch binary, as `pid cmdline`.
pub fn hutch_processes() -> Vec<String> {
    let exe = std::fs::canonicalize(super::hutch()).unwrap_or_else(|_| PathBuf::from(super::hutch()));
    let me = std::process::id() as i32;
    pids()
        .into_iter()
        .filter(|p| *p != me)
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .map(|l| l.to_string_lossy().trim_end_matches(" (deleted)") == exe.to_string_lossy())
                .unwrap_or(false)
        })
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p} {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

/// Distinct network namespaces held by a process or an nsfs mount.
pub fn netns_count() -> usize {
    let mut inodes: BTreeSet<u64> = pids()
        .into_iter()
        .filter_map(|p| std::fs::metadata(format!("/proc/{p}/ns/net")).ok().map(|m| m.ino()))
        .collect();
    inodes.extend(nsfs_net_mounts());
    inodes.len()
}

/// Network namespaces held by what a run could leave: this build's hutch processes, orphans
/// with a node's uid, and nsfs bind mounts in the host's table.
pub fn run_netns_count() -> usize {
    let exe = std::fs::canonicalize(super::hutch()).unwrap_or_else(|_| PathBuf::from(super::hutch()));
    let ours = |p: i32| {
        let hutch = std::fs::read_link(format!("/proc/{p}/exe"))
            .map(|l| l.to_string_lossy().trim_end_matches(" (deleted)") == exe.to_string_lossy())
            .unwrap_or(false);
        hutch || (ppid_of(p) == Some(1) && uid_of(p).is_some_and(|u| u >= 100_000))
    };
    let me = std::process::id() as i32;
    let mut inodes: BTreeSet<u64> = pids()
        .into_iter()
        .filter(|p| *p != me && ours(*p))
        .filter_map(|p| std::fs::metadata(format!("/proc/{p}/ns/net")).ok().map(|m| m.ino()))
        .collect();
    inodes.extend(nsfs_net_mounts());
    inodes.len()
}

fn nsfs_net_mounts() -> Vec<u64> {
    mounts()
        .iter()
        .filter_map(|line| {
            // mountinfo field 4 is the root inside the filesystem: `net:[4026532000]` for nsfs.
            let root = line.split_whitespace().nth(3)?;
            root.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Every cgroup directory below hutch's parents (the parents themselves and the delegated
/// per-user stand-ins made by scripts/setup.sh are not counted).
pub fn hutch_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut parents = vec![
        PathBuf::from("/sys/fs/cgroup/memory/hutch"),
        PathBuf::from("/sys/fs/cgroup/pids/hutch"),
    ];
    for mount in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if let Ok(entries) = std::fs::read_dir(mount) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("hutch") && e.path().is_dir() {
                    parents.push(e.path());
                }
            }
        }
    }
    for p in parents {
        walk(&p, &mut found);
    }
    // The shared directory command nodes without limits use lives as long as hutch's parent.
    found.retain(|d| !d.ends_with("shared"));
    found
}

/// The node names the reliability tests use (`hutch run --name soak`, the three-node test,
/// the OOM test): their cgroups are `<name>-<pid>`.
pub const TEST_NODES: &[&str] = &["soak", "alpha", "beta", "gamma", "big", "small"];

/// hutch cgroups that belong to a node of these tests (and everything below them).
pub fn test_cgroups() -> Vec<PathBuf> {
    let is_leaf = |c: &std::path::Component| {
        let c = c.as_os_str().to_string_lossy();
        c.rsplit_once('-')
            .is_some_and(|(name, pid)| TEST_NODES.contains(&name) && pid.parse::<u32>().is_ok())
    };
    hutch_cgroups()
        .into_iter()
        .filter(|d| d.components().any(|c| is_leaf(&c)))
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(e.path());
                walk(&e.path(), out);
            }
        }
    }
}

/// Bytes and entries under `dir` (0, 0 when it does not exist); symlinks are not followed.
pub fn disk(dir: &Path) -> (u64, u64) {
    let mut total = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if let Ok(m) = e.path().symlink_metadata() {
                    total.0 += m.blocks() * 512;
                    total.1 += 1;
                    if m.is_dir() {
                        stack.push(e.path());
                    }
                }
            }
        }
    }
    total
}

/// The number of open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}
