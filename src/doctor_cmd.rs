//! `hutch doctor`: what this user has and lacks for hutch (user namespaces, subordinate ids,
//! newuidmap, a writable cgroup and its controllers, shifted images, sysctls), each with the
//! exact fix. Exit 1 when something needed is missing, 0 otherwise (warnings included).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Args;
use hutch_runtime::CgroupMode;

/// Options of `hutch doctor` (none yet).
#[derive(Args, Debug)]
pub struct DoctorArgs {}

#[derive(PartialEq)]
enum State {
    Ok,
    Warn,
    Missing,
}

struct Check {
    state: State,
    what: &'static str,
    detail: String,
    fix: Option<String>,
}

fn check(state: State, what: &'static str, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check {
        state,
        what,
        detail: detail.into(),
        fix,
    }
}

fn sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/")))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Who is asking: uid and login name (the uid when /etc/passwd has none).
struct Who {
    uid: u32,
    name: String,
    root: bool,
}

/// Runs `hutch doctor`.
pub fn main(_args: DoctorArgs) -> i32 {
    let uid = nix::unistd::geteuid().as_raw();
    let who = Who {
        uid,
        name: hutch_runtime::Passwd::by_uid(uid).map_or_else(|| uid.to_string(), |p| p.name),
        root: uid == 0,
    };
    let cache = hutch_driver::plan::PlanContext::from_env().cache_dir;
    let mut checks = vec![user_namespaces(&who)];
    if !who.root {
        checks.push(subordinate_ids(&who));
        checks.push(id_helpers());
    }
    checks.push(cgroup(&who));
    checks.extend(images(&who, &cache));
    checks.extend(sysctls());
    let mode = if who.root { "root" } else { "rootless" };
    println!(
        "hutch doctor: {} (uid {}), {mode}; image cache {}",
        who.name,
        who.uid,
        cache.display()
    );
    for c in &checks {
        let tag = match c.state {
            State::Ok => "ok     ",
            State::Warn => "warn   ",
            State::Missing => "MISSING",
        };
        println!("  {tag} {}: {}", c.what, c.detail);
        if let Some(fix) = &c.fix {
            println!("          fix: {fix}");
        }
    }
    let missing = checks.iter().filter(|c| c.state == State::Missing).count();
    if missing > 0 {
        println!("{missing} needed thing(s) missing: see the fixes above");
        1
    } else {
        println!("everything hutch needs is here");
        0
    }
}

/// Can this user make a user namespace? Tried for real, in a child.
fn user_namespaces(who: &Who) -> Check {
    let max = sysctl("user.max_user_namespaces").unwrap_or_else(|| "?".into());
    // SAFETY: `hutch doctor` has no other thread; the child only unshares and _exits.
    let ok = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let r = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER);
            // SAFETY: leave the child without running the parent's atexit handlers.
            unsafe { libc::_exit(i32::from(r.is_err())) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            matches!(nix::sys::wait::waitpid(child, None), Ok(nix::sys::wait::WaitStatus::Exited(_, 0)))
        }
        Err(_) => false,
    };
    if ok {
        return check(
            State::Ok,
            "user namespaces",
            format!("this user can create one (user.max_user_namespaces = {max})"),
            None,
        );
    }
    let mut fixes = Vec::new();
    if max == "0" {
        fixes.push("sudo sysctl -w user.max_user_namespaces=63000".to_string());
    }
    if sysctl("kernel.unprivileged_userns_clone").as_deref() == Some("0") && !who.root {
        fixes.push("sudo sysctl -w kernel.unprivileged_userns_clone=1".into());
    }
    if sysctl("kernel.apparmor_restrict_unprivileged_userns").as_deref() == Some("1") && !who.root {
        fixes.push(
            "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile allowing userns for hutch)".into(),
        );
    }
    if fixes.is_empty() {
        fixes.push("enable user namespaces in the kernel (CONFIG_USER_NS) or the container hutch runs in".into());
    }
    check(
        State::Missing,
        "user namespaces",
        "this user cannot create one",
        Some(fixes.join("; ")),
    )
}

/// A range of at least 65535 ids for `who` in `file` (by name or uid): its first id.
fn range_in(file: &str, who: &Who) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (owner, start, count) = (f.next()?, f.next()?.parse::<u64>().ok()?, f.next()?.parse::<u64>().ok()?);
        (count >= 65535 && (owner == who.name || owner == who.uid.to_string())).then_some((start, count))
    })
}

fn subordinate_ids(who: &Who) -> Check {
    match (range_in("/etc/subuid", who), range_in("/etc/subgid", who)) {
        (Some(u), Some(g)) => check(
            State::Ok,
            "subordinate ids",
            format!("/etc/subuid {}+{}, /etc/subgid {}+{}", u.0, u.1, g.0, g.1),
            None,
        ),
        (u, g) => {
            let lacking: Vec<&str> = [("/etc/subuid", u.is_none()), ("/etc/subgid", g.is_none())]
                .into_iter()
                .filter_map(|(f, no)| no.then_some(f))
                .collect();
            check(
                State::Missing,
                "subordinate ids",
                format!(
                    "no range of 65536 ids for {} in {} (nodes would have only root)",
                    who.name,
                    lacking.join(" and ")
                ),
                Some(format!(
                    "sudo usermod --add-subuids 200000-265535 --add-subgids 200000-265535 {} (pick a range no other user has)",
                    who.name
                )),
            )
        }
    }
}

/// newuidmap and newgidmap: present and setuid root (or with file capabilities).
fn id_helpers() -> Check {
    let find = |p: &str| -> Option<PathBuf> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .chain(["/usr/bin".into(), "/bin".into()])
            .map(|d| d.join(p))
            .find(|f| f.is_file())
    };
    let found: Vec<(String, Option<PathBuf>)> = ["newuidmap", "newgidmap"].iter().map(|p| (p.to_string(), find(p))).collect();
    let lacking: Vec<&str> = found.iter().filter(|(_, f)| f.is_none()).map(|(n, _)| n.as_str()).collect();
    if !lacking.is_empty() {
        return check(
            State::Missing,
            "newuidmap/newgidmap",
            format!("{} not found", lacking.join(" and ")),
            Some("sudo apt-get install uidmap (Debian, Ubuntu); sudo dnf install shadow-utils (Fedora)".into()),
        );
    }
    let weak: Vec<String> = found
        .iter()
        .filter_map(|(_, f)| f.as_ref())
        .filter(|f| {
            let setuid = std::fs::metadata(f).is_ok_and(|m| m.permissions().mode() & 0o4000 != 0);
            let caps = has_file_caps(f);
            !setuid && !caps
        })
        .map(|f| f.display().to_string())
        .collect();
    if weak.is_empty() {
        check(State::Ok, "newuidmap/newgidmap", "present, setuid root or with capabilities", None)
    } else {
        check(
            State::Missing,
            "newuidmap/newgidmap",
            format!("{} neither setuid root nor with file capabilities", weak.join(", ")),
            Some(format!("sudo chmod u+s {}", weak.join(" "))),
        )
    }
}

/// Whether `f` carries file capabilities (a `security.capability` attribute).
fn has_file_caps(f: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: getxattr with a NUL-terminated path and name and a null buffer of size 0 only
    // returns the attribute's size (or -1).
    let n = unsafe { libc::getxattr(path.as_ptr(), c"security.capability".as_ptr(), std::ptr::null_mut(), 0) };
    n > 0
}

/// The cgroup2 directory hutch would put nodes under, whether it is writable, and its
/// controllers (memory and pids enforce `memory` and `pids_max`; systemd needs the subtree).
fn cgroup(who: &Who) -> Check {
    let mode = CgroupMode::detect();
    let Some(mount) = mode.unified_mount() else {
        return check(
            State::Missing,
            "cgroup",
            "no cgroup2 tree (cgroup v1 only): systemd nodes cannot get a cgroup of their own",
            Some("boot the host with systemd.unified_cgroup_hierarchy=1, or mount cgroup2 at /sys/fs/cgroup/unified".into()),
        );
    };
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)))
        .unwrap_or_default();
    let dir = if who.root {
        mount.join("hutch")
    } else {
        mount.join(own.trim_start_matches('/'))
    };
    let probe = if who.root && !dir.exists() {
        mount.to_path_buf()
    } else {
        dir.clone()
    };
    let writable = nix::unistd::access(&probe, nix::unistd::AccessFlags::W_OK).is_ok()
        && nix::unistd::access(&probe.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK).is_ok();
    let unified = std::fs::read_to_string(probe.join("cgroup.controllers")).unwrap_or_default();
    let mut controllers = unified.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    // On a hybrid host, root sets memory and pids limits through the v1 hierarchies.
    if mode == CgroupMode::Hybrid && who.root {
        for c in ["memory", "pids"] {
            if Path::new("/sys/fs/cgroup").join(c).is_dir() && !controllers.iter().any(|x| x == c) {
                controllers.push(format!("{c} (v1)"));
            }
        }
    }
    let has = |c: &str| controllers.iter().any(|x| x.split(' ').next() == Some(c));
    if !writable {
        return check(
            State::Missing,
            "cgroup",
            format!(
                "{} is not writable by this user: systemd nodes cannot start, memory and pids limits are not enforced",
                dir.display()
            ),
            Some(hutch_runtime::cgroup_fix()),
        );
    }
    let lacking: Vec<&str> = ["memory", "pids"].into_iter().filter(|c| !has(c)).collect();
    let detail = format!(
        "{} writable ({mode:?} layout); controllers: {}",
        dir.display(),
        if controllers.is_empty() {
            "none".to_string()
        } else {
            controllers.join(" ")
        }
    );
    if lacking.is_empty() {
        return check(State::Ok, "cgroup", detail, None);
    }
    // A controller the cgroup2 root does not offer is bound to a v1 hierarchy (a hybrid host):
    // no subtree_control write enables it, only a boot that leaves it to cgroup2.
    let offered = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    let in_v1: Vec<&str> = lacking
        .iter()
        .copied()
        .filter(|c| !offered.split_whitespace().any(|o| o == *c))
        .collect();
    let fix = if in_v1.is_empty() {
        let parent = probe.parent().unwrap_or(mount).display().to_string();
        format!(
            "enable them for the subtree (as its parent's owner): echo '{}' > {parent}/cgroup.subtree_control",
            lacking.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ")
        )
    } else {
        format!(
            "{} {} bound to cgroup v1 on this host, and no user can be given a v1 controller: boot with \
             `cgroup_no_v1={}` (or `systemd.unified_cgroup_hierarchy=1` where systemd runs) on the kernel command line",
            in_v1.join(" and "),
            if in_v1.len() == 1 { "is" } else { "are" },
            in_v1.join(","),
        )
    };
    check(
        State::Warn,
        "cgroup",
        format!(
            "{detail}; without {} the node's `memory`/`pids_max` are not enforced",
            lacking.join(", ")
        ),
        Some(fix),
    )
}

/// The images built by name, and (rootless) whether each has this user's shifted copy.
fn images(who: &Who, cache: &Path) -> Vec<Check> {
    let Ok(entries) = std::fs::read_dir(cache.join("images")) else {
        return vec![check(
            State::Warn,
            "images",
            format!(
                "none built in {} (test files name images such as `debian`)",
                cache.join("images").display()
            ),
            Some(format!(
                "HUTCH_CACHE={} bash fixtures/debian-image.sh (or busybox-image.sh)",
                cache.display()
            )),
        )];
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.contains('@'))
        .collect();
    names.sort();
    if who.root {
        return vec![check(State::Ok, "images", names.join(", "), None)];
    }
    names
        .into_iter()
        .map(|n| {
            if matches!(hutch_driver::plan::image_by_name(cache, &n), Ok(Some(p)) if p.ends_with(format!("{n}@{}", who.uid))) {
                check(
                    State::Ok,
                    "shifted image",
                    format!("{n}@{} (owned for this user's id map)", who.uid),
                    None,
                )
            } else {
                check(
                    State::Warn,
                    "shifted image",
                    format!(
                        "{n} has no copy for uid {}: a test naming it is refused (your nodes would see its files owned by nobody)",
                        who.uid
                    ),
                    Some(hutch_driver::plan::shift_fix(cache, &n, Some(&who.name))),
                )
            }
        })
        .collect()
}

/// Kernel settings that limit how many nodes run well.
fn sysctls() -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(v) = sysctl("fs.inotify.max_user_instances").and_then(|v| v.parse::<u64>().ok()) {
        // About six per systemd node, shared by all nodes of one host user (MACHINE-NOTES).
        if v < 1024 {
            out.push(check(
                State::Warn,
                "sysctl fs.inotify.max_user_instances",
                format!("{v}: about {} systemd nodes at once before they fail to start services", v / 6),
                Some("sudo sysctl -w fs.inotify.max_user_instances=8192".into()),
            ));
        } else {
            out.push(check(State::Ok, "sysctl fs.inotify.max_user_instances", v.to_string(), None));
        }
    }
    if let Some(v) = sysctl("user.max_user_namespaces") {
        let state = if v == "0" { State::Missing } else { State::Ok };
        let fix = (v == "0").then(|| "sudo sysctl -w user.max_user_namespaces=63000".to_string());
        out.push(check(state, "sysctl user.max_user_namespaces", v, fix));
    }
    out
}
