//! User and group id maps: which host ids a node's ids stand for.
//!
//! systemd needs 65536 ids (nobody = 65534). As root hutch shifts a node's 65536 ids to a range
//! of unprivileged host ids (root's /etc/subuid range, else 524288..), so node root is never host
//! root; images owned by host root are seen through an idmapped mount (see idmount.rs).
//! Unprivileged, node root is the user's own uid and ids 1..65535 come from the user's
//! /etc/subuid and /etc/subgid ranges through the setuid helpers newuidmap/newgidmap. Without a
//! range only one id exists in the node. Inside a user namespace that already maps 65536 ids (a
//! rootless driver's own), nodes get the identity map of it.

use std::io::Write;
use std::process::Command;

use nix::unistd::{Gid, Pid, Uid};

use crate::Error;

/// How many ids a full map covers (0..=65535).
const FULL: u32 = 65536;

/// Where node ids start on the host when root has no /etc/subuid range (systemd-nspawn picks
/// its ranges from here up too).
const SHIFT_DEFAULT: u32 = 0x80000;

/// How the node's ids map to the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMapKind {
    /// Host root: node id n is host id `start + n`, for 65536 ids.
    Shifted {
        /// Host uid (and gid) of node root.
        start: u32,
    },
    /// Root of a user namespace of 65536 ids (a rootless driver's): node id n is id n there.
    Identity,
    /// Unprivileged with subordinate ranges: node 0 = the user, 1.. = the ranges.
    Subordinate {
        /// First host uid of the user's range.
        uid_start: u32,
        /// First host gid of the user's range.
        gid_start: u32,
    },
    /// Unprivileged without ranges: only node root (= the user) exists.
    Single,
}

/// The id map a node is started with.
#[derive(Debug, Clone)]
pub struct IdMap {
    /// Which kind of map.
    pub kind: IdMapKind,
    /// The host uid that node root stands for.
    pub uid: u32,
    /// The host gid that node root's group stands for.
    pub gid: u32,
}

impl IdMap {
    /// Chooses the map for the calling user: identity as root, subordinate ranges when
    /// /etc/subuid and /etc/subgid give the user 65535 ids, a single id otherwise.
    pub fn detect() -> IdMap {
        let uid = Uid::effective().as_raw();
        let gid = Gid::effective().as_raw();
        let kind = if uid == 0 && in_initial_user_ns() {
            let name = Some("root");
            let uid_start = subordinate_start("/etc/subuid", 0, name).unwrap_or(SHIFT_DEFAULT);
            IdMapKind::Shifted { start: uid_start }
        } else if uid == 0 {
            // Root of a user namespace (a rootless `hutch test`): 65536 ids, or fewer.
            if mapped_ids() >= FULL as u64 {
                IdMapKind::Identity
            } else {
                IdMapKind::Single
            }
        } else {
            let name = crate::Passwd::by_uid(uid).map(|p| p.name);
            let sub_u = subordinate_start("/etc/subuid", uid, name.as_deref());
            let sub_g = subordinate_start("/etc/subgid", uid, name.as_deref());
            match (sub_u, sub_g, helper_exists("newuidmap") && helper_exists("newgidmap")) {
                (Some(uid_start), Some(gid_start), true) => IdMapKind::Subordinate { uid_start, gid_start },
                _ => IdMapKind::Single,
            }
        };
        IdMap { kind, uid, gid }
    }

    /// A one-line warning when the map limits what the node can do, for the CLI to print.
    pub fn warning(&self) -> Option<String> {
        (self.kind == IdMapKind::Single).then(|| {
            format!(
                "warning: no /etc/subuid and /etc/subgid range of 65536 ids for uid {} (or no newuidmap): \
                 the node has only root; services that switch users (systemd, nginx) will fail",
                self.uid
            )
        })
    }

    /// True when the node's ids are shifted host ids and root-owned images need an idmapped
    /// mount to look root-owned inside.
    pub fn is_shifted(&self) -> bool {
        matches!(self.kind, IdMapKind::Shifted { .. })
    }

    /// How many ids exist in the node.
    pub fn count(&self) -> u32 {
        if self.kind == IdMapKind::Single {
            1
        } else {
            FULL
        }
    }

    /// The host uid that a node uid stands for, if mapped.
    pub fn host_uid(&self, node_uid: u32) -> Option<u32> {
        match self.kind {
            IdMapKind::Shifted { start } => (node_uid < FULL).then_some(start + node_uid),
            IdMapKind::Identity => (node_uid < FULL).then_some(node_uid),
            IdMapKind::Subordinate { uid_start, .. } => match node_uid {
                0 => Some(self.uid),
                n if n < FULL => Some(uid_start + n - 1),
                _ => None,
            },
            IdMapKind::Single => (node_uid == 0).then_some(self.uid),
        }
    }

    /// Writes the maps for the process `pid`, which must be in a fresh user namespace and
    /// waiting: directly as root, through newuidmap/newgidmap otherwise.
    pub fn apply(&self, pid: Pid) -> Result<(), Error> {
        match self.kind {
            IdMapKind::Shifted { start } => {
                write_proc(pid, "uid_map", &format!("0 {start} {FULL}\n"))?;
                write_proc(pid, "gid_map", &format!("0 {start} {FULL}\n"))
            }
            IdMapKind::Identity => {
                write_proc(pid, "uid_map", &identity_map("uid_map"))?;
                write_proc(pid, "gid_map", &identity_map("gid_map"))
            }
            IdMapKind::Subordinate { uid_start, gid_start } => {
                // Both helpers at once: each is a setuid exec of a few milliseconds.
                let uids = spawn_helper("newuidmap", pid, self.uid, uid_start)?;
                let gids = spawn_helper("newgidmap", pid, self.gid, gid_start)?;
                finish_helper("newuidmap", uids).and(finish_helper("newgidmap", gids))
            }
            IdMapKind::Single => {
                write_proc(pid, "setgroups", "deny")?;
                write_proc(pid, "uid_map", &format!("0 {} 1\n", self.uid))?;
                write_proc(pid, "gid_map", &format!("0 {} 1\n", self.gid))
            }
        }
    }
}

/// True in the host's own user namespace (its map covers every id).
pub(crate) fn in_initial_user_ns() -> bool {
    let text = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    text.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
}

/// Our own map's ranges (first id inside, count), cut to 0..65536.
fn own_ranges(file: &str) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/{file}")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u64>().ok());
            let (inside, count) = (f.next()??, f.nth(1)??);
            let count = count.min((FULL as u64).saturating_sub(inside));
            (count > 0).then_some((inside, count))
        })
        .collect()
}

/// How many ids of 0..65536 our own user namespace maps.
fn mapped_ids() -> u64 {
    own_ranges("uid_map").iter().map(|(_, n)| n).sum()
}

/// The identity map of 0..65536, one line per range of our own map: the kernel wants each
/// line of a child's map inside a single line of its parent's (a rootless driver's own
/// namespace maps root and the subordinate range on two lines).
/// Our own map (`uid_map` or `gid_map`) as identity lines: a child user namespace with the
/// same ids.
pub(crate) fn identity_map(file: &str) -> String {
    own_ranges(file)
        .iter()
        .map(|(first, count)| format!("{first} {first} {count}\n"))
        .collect()
}

fn write_proc(pid: Pid, file: &str, text: &str) -> Result<(), Error> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(Error::io("writing", path))
}

fn spawn_helper(program: &str, pid: Pid, own: u32, start: u32) -> Result<std::process::Child, Error> {
    Command::new(program)
        .args([pid.to_string(), "0".into(), own.to_string(), "1".into()])
        .args(["1".to_string(), start.to_string(), (FULL - 1).to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Helper {
            program: program.into(),
            detail: e.to_string(),
        })
}

fn finish_helper(program: &str, child: std::process::Child) -> Result<(), Error> {
    let out = child.wait_with_output().map_err(|e| Error::Helper {
        program: program.into(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Helper {
        program: program.into(),
        detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
    })
}

fn helper_exists(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// The start of the first range of at least 65535 ids that `file` gives the user.
fn subordinate_start(file: &str, uid: u32, name: Option<&str>) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    parse_subordinate(&text, uid, name)
}

fn parse_subordinate(text: &str, uid: u32, name: Option<&str>) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?.parse::<u32>().ok()?, f.next()?.parse::<u32>().ok()?);
        let mine = who == uid.to_string() || Some(who) == name;
        (mine && count >= FULL - 1).then_some(start)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_match_by_name_or_uid_and_need_65535_ids() {
        let text = "alice:100000:65536\n1001:300000:70000\nbob:200000:1000\n";
        assert_eq!(parse_subordinate(text, 1000, Some("alice")), Some(100000));
        assert_eq!(parse_subordinate(text, 1001, Some("carol")), Some(300000));
        assert_eq!(parse_subordinate(text, 1002, Some("bob")), None);
    }

    #[test]
    fn host_ids_follow_the_map() {
        let sub = IdMap {
            kind: IdMapKind::Subordinate {
                uid_start: 100000,
                gid_start: 100000,
            },
            uid: 1000,
            gid: 1000,
        };
        assert_eq!(sub.host_uid(0), Some(1000));
        assert_eq!(sub.host_uid(1), Some(100000));
        assert_eq!(sub.host_uid(65534), Some(165533));
        let single = IdMap {
            kind: IdMapKind::Single,
            uid: 1000,
            gid: 1000,
        };
        assert_eq!(single.host_uid(1), None);
        assert!(single.warning().is_some());
    }
}
