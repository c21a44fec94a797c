//! The node's cgroups: a cgroup2 subtree delegated to its init (systemd manages it through its
//! own cgroup namespace), and memory/pids limits through cgroups-rs: on the cgroup2 subtree
//! where the host is pure cgroup2, through the v1 controllers on hybrid hosts.
//!
//! Every directory is announced to the reaper (reaper.rs) before it is made, so none outlives a
//! hutch that dies without removing it (SIGKILL).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::hierarchies::{V1, V2};
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{Cgroup, CgroupPid, MaxValue};
use nix::unistd::Pid;

use crate::Error;

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMode {
    /// Pure cgroup2 at /sys/fs/cgroup.
    Unified,
    /// cgroup v1 controllers plus a cgroup2 tree at /sys/fs/cgroup/unified.
    Hybrid,
    /// cgroup v1 only: no subtree can be delegated to systemd.
    Legacy,
}

impl CgroupMode {
    /// Reads the host's layout from the filesystem types under /sys/fs/cgroup.
    pub fn detect() -> CgroupMode {
        if is_cgroup2("/sys/fs/cgroup") {
            CgroupMode::Unified
        } else if is_cgroup2("/sys/fs/cgroup/unified") {
            CgroupMode::Hybrid
        } else {
            CgroupMode::Legacy
        }
    }

    /// Where the cgroup2 tree is mounted, if any.
    pub fn unified_mount(&self) -> Option<&'static Path> {
        match self {
            CgroupMode::Unified => Some(Path::new("/sys/fs/cgroup")),
            CgroupMode::Hybrid => Some(Path::new("/sys/fs/cgroup/unified")),
            CgroupMode::Legacy => None,
        }
    }
}

fn is_cgroup2(path: &str) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// The cgroups one node lives in, removed when the node is gone.
pub(crate) struct NodeCgroup {
    /// The delegated cgroup2 directory (the node's cgroup namespace root).
    pub unified: Option<PathBuf>,
    /// Limits on v1 controllers (hybrid hosts).
    v1: Option<Cgroup>,
    /// Where the node's processes live under `v1` (its cgroup namespace root there).
    v1_node: Option<Cgroup>,
    /// The unified directory is shared by every command node and outlives them.
    shared: bool,
    /// The agent's cgroup below `unified` ([`AGENT_CGROUP`]), when the request asked for one.
    pub agent: Option<PathBuf>,
}

/// What a node asks of its cgroups.
pub(crate) struct Request<'a> {
    pub leaf: &'a str,
    pub memory: Option<u64>,
    pub pids_max: Option<u64>,
    pub root: bool,
    /// The node boots an init that manages cgroups (worth a note when none can be had).
    pub boot: bool,
    /// The node's agent gets a cgroup of its own below the node's ([`AGENT_CGROUP`]).
    pub agent: bool,
}

/// The node's agent and its commands live in this child of the node's cgroup, not in its root:
/// systemd reads its root cgroup's `cgroup.procs` at start and takes the `0` a process outside
/// its pid namespace shows as an I/O error ("Couldn't move remaining userspace processes"),
/// and on cgroup2 a root cgroup with processes cannot enable controllers for its children.
pub(crate) const AGENT_CGROUP: &str = "hutch-agent";

/// Warnings the caller should print (limits skipped and why).
pub(crate) type Warnings = Vec<String>;

impl NodeCgroup {
    /// Creates the node's cgroups; `None` when the host offers none (rootless, nothing
    /// delegated), with warnings saying what is missing.
    pub(crate) fn create(req: &Request, idmap: &crate::IdMap) -> Result<(Option<NodeCgroup>, Warnings), Error> {
        let mode = CgroupMode::detect();
        let mut warnings = Warnings::new();
        let wants_limits = req.memory.is_some() || req.pids_max.is_some();
        // A command without limits still needs a cgroup namespace rooted away from the host's
        // tree, but not a cgroup of its own: one shared directory, made once, costs no mkdir,
        // rmdir or reaper per node.
        // A rootless command without limits needs no cgroup: do not ask systemd for a scope.
        if !wants_limits && !req.boot && !req.root && !crate::placement::decided() {
            return Ok((None, warnings));
        }
        let placement = crate::placement::get();
        warnings.extend(crate::placement::take_note());
        if !wants_limits && !req.boot && placement.host_parent {
            if let Some(parent) = &placement.parent {
                let dir = parent.join("shared");
                match std::fs::create_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(Error::io("creating cgroup", dir)(e)),
                    _ => {
                        return Ok((
                            Some(NodeCgroup {
                                unified: Some(dir),
                                v1: None,
                                v1_node: None,
                                shared: true,
                                agent: None,
                            }),
                            warnings,
                        ))
                    }
                }
            }
        }
        let unified = delegated_dir(req, &mut warnings)?;
        let mut cg = NodeCgroup {
            unified,
            v1: None,
            v1_node: None,
            shared: false,
            agent: None,
        };
        if wants_limits {
            match (&mode, &cg.unified, req.root) {
                (CgroupMode::Unified, Some(dir), _) if placement.limits => {
                    let rel = dir.strip_prefix("/sys/fs/cgroup").unwrap_or(dir).to_string_lossy().to_string();
                    let v2 = Cgroup::load(Box::new(V2::new()), rel);
                    set_limits(&v2, req)?;
                    // An OOM kills the whole node, as it would a VM, not one process in it.
                    if req.memory.is_some() {
                        let _ = std::fs::write(dir.join("memory.oom.group"), "1");
                    }
                }
                (CgroupMode::Hybrid | CgroupMode::Legacy, _, true)
                    if nix::unistd::access("/sys/fs/cgroup/memory", nix::unistd::AccessFlags::W_OK).is_ok() =>
                {
                    let controllers = Some(vec!["memory".to_string(), "pids".to_string()]);
                    let path = format!("hutch/{}", req.leaf);
                    for controller in ["memory", "pids"] {
                        crate::reaper::watch(&Path::new("/sys/fs/cgroup").join(controller).join(&path))?;
                    }
                    let v1 = Cgroup::new_with_specified_controllers(Box::new(V1::new()), path, controllers).map_err(|e| Error::Host {
                        problem: format!("creating cgroup: {e}"),
                        fix: "check /sys/fs/cgroup/memory and /sys/fs/cgroup/pids are mounted".into(),
                    })?;
                    cg.v1 = Some(v1);
                    if let Some(v1) = &cg.v1 {
                        set_limits(v1, req)?;
                    }
                    // The node lives one level below its limits: the limits sit outside its
                    // cgroup namespace, where its root cannot raise them.
                    let inner = Some(vec!["memory".to_string(), "pids".to_string()]);
                    let node = Cgroup::new_with_specified_controllers(Box::new(V1::new()), format!("hutch/{}/node", req.leaf), inner)
                        .map_err(|e| Error::Host {
                            problem: format!("creating cgroup: {e}"),
                            fix: "check the v1 memory and pids hierarchies".into(),
                        })?;
                    cg.v1_node = Some(node);
                }
                _ => warnings.push(
                    "warning: no cgroup is delegated to this user: --memory and --pids-max are not enforced \
                     (run as root, or see the README's rootless set-up)"
                        .into(),
                ),
            }
        }
        // A default pids limit wherever the node has a cgroup2 directory of its own with the
        // pids controller (a pure cgroup2 host, or a delegated subtree): one write, no cgroup
        // made for it. A fork bomb then stops at the node's limit, not at the host's.
        if let (None, Some(dir), false) = (req.pids_max, &cg.unified, cg.shared) {
            let max = dir.join("pids.max");
            if max.exists() {
                std::fs::write(&max, DEFAULT_PIDS_MAX.to_string()).map_err(Error::io("setting the default pids limit", &max))?;
            }
        }
        if let (Some(dir), true) = (&cg.unified, req.agent) {
            let agent = dir.join(AGENT_CGROUP);
            std::fs::create_dir(&agent).map_err(Error::io("creating the agent's cgroup", &agent))?;
            cg.agent = Some(agent);
        }
        // The node's root owns its delegated subtree (systemd makes its own cgroups there).
        if let Some(uid) = idmap.host_uid(0).filter(|u| *u != nix::unistd::Uid::effective().as_raw()) {
            cg.unified.iter().chain(&cg.agent).for_each(|dir| chown_tree(dir, uid));
        }
        if cg.unified.is_none() && cg.v1.is_none() {
            return Ok((None, warnings));
        }
        Ok((Some(cg), warnings))
    }

    /// Every directory the node owns, deepest first.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.unified.iter().filter(|_| !self.shared).cloned().collect();
        if let Some(v1) = &self.v1 {
            for sub in v1.subsystems() {
                dirs.push(sub.to_controller().path().to_path_buf());
            }
        }
        dirs
    }

    /// Moves `pid` into the node's v1 cgroups (its cgroup2 directory it was cloned into).
    pub(crate) fn add_v1(&self, pid: Pid) -> Result<(), Error> {
        if let Some(v1) = &self.v1_node {
            v1.add_task_by_tgid(CgroupPid::from(pid.as_raw() as u64)).map_err(|e| Error::Host {
                problem: format!("moving the node into its cgroup: {e}"),
                fix: "check the v1 memory and pids hierarchies".into(),
            })?;
        }
        Ok(())
    }

    /// The most memory the node's processes used (bytes), when the host reports it.
    pub(crate) fn memory_peak(&self) -> Option<u64> {
        if let Some(v1) = &self.v1 {
            let mem: &MemController = v1.controller_of()?;
            return Some(mem.memory_stat().max_usage_in_bytes);
        }
        let dir = self.unified.as_ref()?;
        std::fs::read_to_string(dir.join("memory.peak")).ok()?.trim().parse().ok()
    }

    /// Removes the cgroups: kills what is left in them, waits until empty, removes the dirs.
    pub(crate) fn remove(&mut self) {
        let dirs = self.dirs();
        clean(&dirs, Duration::from_secs(2));
        for dir in dirs.iter().filter(|d| !d.exists()) {
            crate::reaper::forget(dir);
        }
    }
}

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The files whose `oom_kill` counters tell that the kernel's OOM killer hit node `name`
/// (those that exist): v1 `memory.oom_control` of the limits cgroup and of the node's own
/// cgroup below it (v1 counts a kill only where the victim lived), cgroup2 `memory.events`
/// (hierarchical). Call it from the process that created the node: its pid is in the names.
///
/// Where the kernel kills only one process of a node (v1 always; v2 without
/// `memory.oom.group`), the node lives on without it; the driver reads these counters to
/// treat the node as crashed instead, like a VM whose kernel ran out of memory.
pub fn oom_counters(name: &str) -> Vec<PathBuf> {
    let leaf = format!("{name}-{}", std::process::id());
    let v1 = Path::new("/sys/fs/cgroup/memory/hutch").join(&leaf);
    let mut files = vec![v1.join("memory.oom_control"), v1.join("node/memory.oom_control")];
    if let Some(parent) = &crate::placement::get().parent {
        files.push(parent.join(&leaf).join("memory.events"));
    }
    files.retain(|f| f.exists());
    files
}

/// How many processes the OOM killer killed, summed over `files` (see [`oom_counters`]);
/// files that are gone count 0.
pub fn oom_kills(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The tasks a node may have when its test file or command line names no `pids_max`.
pub const DEFAULT_PIDS_MAX: u64 = 4096;

fn set_limits(cg: &Cgroup, req: &Request) -> Result<(), Error> {
    let fail = |e: String| Error::Host {
        problem: format!("setting cgroup limits: {e}"),
        fix: "check the memory and pids controllers are available".into(),
    };
    let missing = |c: &str| fail(format!("no {c} controller"));
    if let Some(bytes) = req.memory {
        let mem: &MemController = cg.controller_of().ok_or_else(|| missing("memory"))?;
        mem.set_limit(bytes as i64).map_err(|e| fail(e.to_string()))?;
        // No swap escape hatch: the limit is the limit.
        let _ = mem.set_memswap_limit(bytes as i64);
    }
    if let Some(n) = req.pids_max {
        let pids: &PidController = cg.controller_of().ok_or_else(|| missing("pids"))?;
        pids.set_pid_max(MaxValue::Value(n as i64)).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// Makes the node's cgroup2 directory where this process puts them (placement.rs), or none
/// when this user may make none.
fn delegated_dir(req: &Request, warnings: &mut Warnings) -> Result<Option<PathBuf>, Error> {
    let placement = crate::placement::get();
    let Some(parent) = &placement.parent else {
        if req.boot {
            warnings.push(
                "note: this user has no writable cgroup: the node gets no cgroup of its own \
                 (systemd inside will run without cgroup delegation)"
                    .into(),
            );
        }
        return Ok(None);
    };
    let dir = parent.join(req.leaf);
    crate::reaper::watch(&dir)?;
    std::fs::create_dir(&dir).map_err(Error::io("creating cgroup", &dir))?;
    Ok(Some(dir))
}

/// Hands a cgroup directory and its files to `uid` (and the same gid).
fn chown_tree(dir: &Path, uid: u32) {
    let owner = (Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(uid)));
    let _ = nix::unistd::chown(dir, owner.0, owner.1);
    for file in ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
        let _ = nix::unistd::chown(&dir.join(file), owner.0, owner.1);
    }
}

/// The caller's cgroup2 path, from /proc/self/cgroup's `0::` line.
pub(crate) fn own_cgroup2() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Kills every process left in `dirs` (and below), waits for them to go (at most `patience`),
/// removes the dirs.
pub(crate) fn clean(dirs: &[PathBuf], patience: Duration) {
    let deadline = Instant::now() + patience;
    for dir in dirs {
        if !dir.exists() {
            continue;
        }
        let kill = dir.join("cgroup.kill");
        loop {
            let mut subdirs = Vec::new();
            collect_subdirs(dir, &mut subdirs);
            // Deepest first: a cgroup with children cannot be removed.
            subdirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            if kill.exists() {
                let _ = std::fs::write(&kill, "1");
            } else {
                for d in &subdirs {
                    for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
                        if let Ok(pid) = pid.trim().parse::<i32>() {
                            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                        }
                    }
                }
            }
            let removed = subdirs.iter().all(|d| std::fs::remove_dir(d).is_ok() || !d.exists());
            if removed || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn collect_subdirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_subdirs(&e.path(), out);
            }
        }
    }
}
