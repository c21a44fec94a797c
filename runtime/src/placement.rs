//! Where this process puts its nodes' cgroup2 directories, decided once per process.
//!
//! cgroup2's rules shape it: a cgroup that holds processes cannot enable controllers for its
//! children (EBUSY), and a fresh cgroup has no `memory.max` until its parent's
//! `cgroup.subtree_control` lists `memory`. So hutch never puts nodes below the cgroup it runs
//! in: in a cgroup delegated to it, it moves itself into a `supervisor` child, enables the
//! controllers, and makes each node a sibling of `supervisor` (what systemd-nspawn does).
//!
//! | host | hutch's cgroup | nodes |
//! |---|---|---|
//! | pure cgroup2 with systemd, root | `hutch-<pid>.scope` from PID 1 (D-Bus, Delegate=yes) | siblings of its `supervisor` |
//! | pure cgroup2 with systemd, a user | `hutch-<pid>.scope` from the user's manager, unless already in a cgroup systemd marked delegated | siblings of its `supervisor` |
//! | no systemd (or hybrid), root | unchanged | `<cgroup2 mount>/hutch/<node>` |
//! | no systemd, a user in a cgroup it owns | its `supervisor` child | siblings of `supervisor` |
//! | a user without a writable cgroup | unchanged | none (limits not enforced, warned) |

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::cgroup::{own_cgroup2, CgroupMode};
use crate::scope::{self, Manager};

/// Controllers a node's limits and its systemd use, enabled where hutch makes cgroups.
const CONTROLLERS: &[&str] = &["memory", "pids", "cpu"];

/// The decision: where nodes' cgroups go, and what to tell a user whose limits cannot hold.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// The directory node cgroups are made in; `None` when this user may make none.
    pub parent: Option<PathBuf>,
    /// hutch is root of the host with the `<mount>/hutch` parent (no systemd).
    pub host_parent: bool,
    /// The memory and pids controllers are enabled in `parent` (cgroup2 limits can be set).
    pub limits: bool,
    /// Why limits will not hold (printed with a node's warnings when it asks for limits or
    /// boots systemd).
    pub note: Option<String>,
}

static PLACEMENT: OnceLock<Placement> = OnceLock::new();

/// Decides where this process's nodes' cgroups go, moving the process into a delegated scope
/// and a `supervisor` cgroup when that is the host's way (see the module's table). Call
/// before the process has other threads or children and before it enters a user namespace
/// (the D-Bus peer check needs its real uid), or leave it to the first node that needs a
/// cgroup. Returns a warning to print when limits will not be enforced, once per process.
pub fn settle() -> Option<String> {
    get();
    take_note()
}

/// The decision (made on first use).
pub(crate) fn get() -> &'static Placement {
    PLACEMENT.get_or_init(decide)
}

/// Whether the decision is made (a node that needs no cgroup does not force it: asking
/// systemd for a scope costs a D-Bus round trip).
pub(crate) fn decided() -> bool {
    PLACEMENT.get().is_some()
}

/// The placement's warning, the first time it is asked for.
pub(crate) fn take_note() -> Option<String> {
    static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let note = get().note.clone()?;
    (!TOLD.swap(true, std::sync::atomic::Ordering::SeqCst)).then_some(note)
}

fn decide() -> Placement {
    let mode = CgroupMode::detect();
    let Some(mount) = mode.unified_mount() else {
        return Placement::default();
    };
    let root = is_host_root();
    let own = mount.join(own_cgroup2().unwrap_or_default().trim_start_matches('/'));
    let systemd = mode == CgroupMode::Unified && Path::new("/run/systemd/system").is_dir();
    if !systemd {
        if root {
            if let Some(parent) = host_parent(mount) {
                return Placement {
                    parent: Some(parent),
                    host_parent: true,
                    limits: true,
                    note: None,
                };
            }
        }
        return match writable(&own) {
            true if has_limits(&own) => supervise(&own),
            // Nothing to enable (a v1/v2 hybrid binds the controllers to v1): nodes below
            // hutch's own cgroup, sparing every start a migration (~0.9 ms measured here).
            true => Placement {
                parent: Some(own),
                host_parent: false,
                limits: false,
                note: None,
            },
            false => Placement::default(),
        };
    }
    if delegated(&own, root) {
        return supervise(&own);
    }
    let manager = if root { Manager::System } else { Manager::User };
    match scope::enter(manager) {
        Ok(path) => supervise(&mount.join(path.trim_start_matches('/'))),
        Err(why) if root => {
            // PID 1 did not answer (no D-Bus in a container, say): the old layout still works.
            let mut placement = match host_parent(mount) {
                Some(parent) => Placement {
                    parent: Some(parent),
                    host_parent: true,
                    limits: true,
                    note: None,
                },
                None => Placement::default(),
            };
            placement.note = Some(format!(
                "note: no delegated scope from systemd ({why}); node cgroups go under {}/hutch",
                mount.display()
            ));
            placement
        }
        Err(why) => {
            let user = crate::Passwd::by_uid(nix::unistd::Uid::effective().as_raw())
                .map(|p| p.name)
                .unwrap_or_else(|| "$USER".into());
            Placement {
                parent: None,
                host_parent: false,
                limits: false,
                note: Some(format!(
                    "warning: no cgroup of its own for hutch ({why}): --memory, --pids-max and the \
                     test file's limits are not enforced and systemd nodes cannot start; start a user \
                     manager with `loginctl enable-linger {user}` (or log in), or run hutch inside \
                     `systemd-run --user --scope -p Delegate=yes`"
                )),
            }
        }
    }
}

/// Refuses, before anything is made, a node whose systemd would have no cgroup2 subtree of
/// its own (a user without a writable or delegated cgroup, a cgroup v1 host): systemd exits at
/// once without one. Decides the placement if it is not decided yet.
pub fn check_node(spec: &crate::NodeSpec) -> Result<(), crate::Error> {
    check_init(&spec.name, crate::InitKind::of(spec))
}

/// [`check_node`] for a node whose init is known already (a start works it out once).
pub(crate) fn check_init(node: &str, init: crate::InitKind) -> Result<(), crate::Error> {
    if init != crate::InitKind::Systemd || get().parent.is_some() {
        return Ok(());
    }
    Err(crate::Error::Host {
        problem: format!("node {node}: systemd needs a cgroup2 subtree it can write, and this user has none"),
        fix: format!("{}; `hutch doctor` checks the result", cgroup_fix()),
    })
}

/// How this user gets a cgroup hutch can put nodes in, on this host: from the user's systemd
/// manager, or without systemd from root (who must also move the user's shell into it: only a
/// process already inside a cgroup the user owns may make and fill cgroups there).
pub fn cgroup_fix() -> String {
    let Some(mount) = CgroupMode::detect().unified_mount() else {
        return "this host has no cgroup2 tree: boot it with systemd.unified_cgroup_hierarchy=1, or mount cgroup2 \
                (as root: mkdir /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified)"
            .into();
    };
    let uid = nix::unistd::Uid::effective().as_raw();
    let user = crate::Passwd::by_uid(uid).map(|p| p.name).unwrap_or_else(|| uid.to_string());
    if Path::new("/run/systemd/system").is_dir() {
        return format!(
            "hutch asks your user manager for a delegated scope and none answered: log in (a desktop or ssh session \
             starts it), or `loginctl enable-linger {user}`; or run hutch under `systemd-run --user --scope -p Delegate=yes`"
        );
    }
    let dir = mount.join(format!("hutch-{user}"));
    let d = dir.display();
    format!(
        "this host has no systemd to delegate one; as root, make a cgroup for {user} and start {user}'s shell in it: \
         `mkdir {d} && chown {user} {d} {d}/cgroup.procs {d}/cgroup.subtree_control && \
         echo $$ > {d}/cgroup.procs && exec su {user}` (chowning is not enough: only a process already inside may \
         make and fill cgroups there)"
    )
}

/// Root of the host: uid 0 in the initial user namespace.
fn is_host_root() -> bool {
    nix::unistd::Uid::effective().is_root() && crate::idmap::in_initial_user_ns()
}

/// `dir` offers the memory or pids controller.
fn has_limits(dir: &Path) -> bool {
    let have = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    have.split_whitespace().any(|c| c == "memory" || c == "pids")
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(&dir.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK).is_ok()
        && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// hutch's cgroup is delegated to it: systemd marked it so (`trusted.delegate` for units of
/// PID 1, `user.delegate` for the user manager's, as with `systemd-run --scope -p
/// Delegate=yes`), or it is a `supervisor` hutch made already (a re-executed hutch). Being
/// writable says nothing under a user manager (every cgroup there is the user's, a terminal's
/// scope too): hutch then asks for a scope of its own.
fn delegated(dir: &Path, root: bool) -> bool {
    if dir.file_name().is_some_and(|n| n == "supervisor") {
        return dir.parent().is_some_and(writable);
    }
    let name = if root { c"trusted.delegate" } else { c"user.delegate" };
    let mut value = [0u8; 8];
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: getxattr into a stack buffer of the length given; NUL-terminated path and name.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    n > 0 && value[0] == b'1' && writable(dir)
}

/// Moves this process into `<dir>/supervisor` and enables the controllers in `dir`, so that
/// node cgroups made in `dir` get limits.
fn supervise(dir: &Path) -> Placement {
    let (dir, sup) = match dir.file_name().is_some_and(|n| n == "supervisor") {
        true => (dir.parent().unwrap_or(dir).to_path_buf(), dir.to_path_buf()),
        false => (dir.to_path_buf(), dir.join("supervisor")),
    };
    let moved = match std::fs::create_dir(&sup) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => std::fs::write(sup.join("cgroup.procs"), "0"),
    };
    // The cgroup is delegated to this job: the processes that share it with hutch (the shell
    // `systemd-run --scope` started, say) go along, or no controller could be enabled.
    for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
        let _ = std::fs::write(sup.join("cgroup.procs"), pid);
    }
    let note = match moved.map(|()| enable(&dir)) {
        Ok(Ok(())) => None,
        Ok(Err(e)) | Err(e) => Some(format!(
            "warning: cannot enable the memory and pids controllers in {} ({e}; other processes \
             in that cgroup?): --memory and --pids-max are not enforced",
            dir.display()
        )),
    };
    Placement {
        parent: Some(dir),
        host_parent: false,
        limits: note.is_none(),
        note,
    }
}

/// Enables in `dir`'s `cgroup.subtree_control` those of [`CONTROLLERS`] it has; errors only
/// for memory and pids (the limits hutch sets).
pub(crate) fn enable(dir: &Path) -> std::io::Result<()> {
    let have = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let on = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in CONTROLLERS {
        let listed = |text: &str| text.split_whitespace().any(|x| x == *c);
        if !listed(&have) || listed(&on) {
            continue;
        }
        match std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
            Err(e) if *c != "cpu" => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// `<mount>/hutch` with the controllers enabled from the mount down, made if needed; `None`
/// when it cannot be.
fn host_parent(mount: &Path) -> Option<PathBuf> {
    let parent = mount.join("hutch");
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    if !writable(&parent) {
        return None;
    }
    // The root cgroup may list controllers (no internal-process rule there); then ours.
    let _ = enable(mount);
    let _ = enable(&parent);
    Some(parent)
}
