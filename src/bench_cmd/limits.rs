//! Host limits that many nodes at once run into, checked before a run: raised when hutch runs
//! as root (with a log line: they outlive the run), else turned into the node count they allow.
//!
//! The per-user ones matter most: the kernel charges inotify instances and watches to the user
//! that created the node's user namespace, across every node of that user; systemd-nspawn
//! booting Debian past ~20 nodes fails on fs.inotify.max_user_instances (128) for exactly that
//! reason. The per-node figures are measured on this project's Debian image (systemd 252 at
//! multi-user.target: 7 inotify instances, 23 watches, ~20 tasks) with headroom for bigger systems.

use serde::Serialize;

/// One limit: its value, what the run needs, what it allows.
#[derive(Debug, Serialize)]
pub(super) struct Limit {
    /// The sysctl or rlimit name.
    pub name: &'static str,
    /// "user" (charged per host user, across all of its nodes), "host" or "process".
    pub scope: &'static str,
    /// The value before the run.
    pub was: u64,
    /// The value now in force.
    pub value: u64,
    /// What this run needs.
    pub needed: u64,
    /// What one node needs of it.
    pub per_node: u64,
    /// How many nodes the value in force allows.
    pub allows_nodes: u64,
    /// hutch raised it.
    pub raised: bool,
}

/// What kind of nodes a run starts, for the per-node figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NodeKind {
    /// A booted systemd.
    Systemd,
    /// Another booted init (busybox).
    OtherInit,
    /// The agent and one command.
    Command,
}

impl NodeKind {
    fn label(self) -> &'static str {
        match self {
            NodeKind::Systemd => "systemd",
            NodeKind::OtherInit => "booted",
            NodeKind::Command => "command",
        }
    }
}

struct Want {
    name: &'static str,
    scope: &'static str,
    per_node: u64,
    reserve: u64,
    why: &'static str,
}

fn wants(kind: NodeKind, lan: bool) -> Vec<Want> {
    let mut w = Vec::new();
    if kind == NodeKind::Systemd {
        w.push(Want {
            name: "fs.inotify.max_user_instances",
            scope: "user",
            per_node: 8,
            reserve: 64,
            why: "systemd, journald, udevd, logind and dbus each hold inotify instances, charged to the host user behind every node",
        });
        w.push(Want {
            name: "fs.inotify.max_user_watches",
            scope: "user",
            per_node: 256,
            reserve: 8192,
            why: "inotify watches, charged like the instances",
        });
    }
    w.push(Want {
        name: "kernel.pid_max",
        scope: "host",
        per_node: match kind {
            NodeKind::Systemd => 64,
            NodeKind::OtherInit => 8,
            NodeKind::Command => 6,
        },
        reserve: running_tasks() + 1024,
        why: "every task of every node takes a host pid",
    });
    if kind != NodeKind::Command {
        w.push(Want {
            name: "kernel.pty.max",
            scope: "host",
            per_node: 1,
            reserve: 64,
            why: "each booted node's console is a pty",
        });
    }
    if lan {
        w.push(Want {
            name: "net.ipv4.neigh.default.gc_thresh3",
            scope: "host",
            per_node: 2,
            reserve: 256,
            why: "the ARP table is shared by all namespaces; a node talking to node 1 adds an entry on each side",
        });
    }
    w
}

/// Tasks on the host now (the 4th field of /proc/loadavg is running/total).
fn running_tasks() -> u64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok())
        .unwrap_or(1024)
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

fn read_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(sysctl_path(name)).ok()?.trim().parse().ok()
}

/// Checks (and, when `raise`, raises) every limit `nodes` nodes of `kind` need; logs through
/// `log` what it changed and what stays too low.
pub(super) fn prepare(nodes: usize, kind: NodeKind, lan: bool, raise: bool, log: &mut dyn FnMut(String)) -> Vec<Limit> {
    let n = nodes as u64;
    let mut out = Vec::new();
    for w in wants(kind, lan) {
        let Some(was) = read_sysctl(w.name) else { continue };
        let needed = w.per_node * n + w.reserve;
        let mut value = was;
        if was < needed && raise && std::fs::write(sysctl_path(w.name), needed.to_string()).is_ok() {
            value = read_sysctl(w.name).unwrap_or(was);
            if value > was {
                log(format!(
                    "raised {} from {was} to {value} for {nodes} {} nodes ({}); it stays raised after the run",
                    w.name,
                    kind.label(),
                    w.why
                ));
            }
        }
        let allows = value.saturating_sub(w.reserve) / w.per_node;
        if value < needed {
            let who = if w.scope == "user" {
                "ask root to raise it"
            } else {
                "raise it as root"
            };
            log(format!(
                "warning: {} is {value}: it allows about {allows} {} nodes ({}); {nodes} asked for; {who}: sysctl -w {}={needed}",
                w.name,
                kind.label(),
                w.why,
                w.name
            ));
        }
        out.push(Limit {
            name: w.name,
            scope: w.scope,
            was,
            value,
            needed,
            per_node: w.per_node,
            allows_nodes: allows,
            raised: value > was,
        });
    }
    out.push(open_files(n, log));
    out
}

/// This process holds about five descriptors per node (pidfd, netns, agent, console, notify):
/// the soft RLIMIT_NOFILE is raised towards the hard one, which needs no privilege.
fn open_files(n: u64, log: &mut dyn FnMut(String)) -> Limit {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let (per_node, reserve) = (6, 64);
    let needed = per_node * n + reserve;
    let mut value = soft;
    if soft < needed {
        // Root may raise the hard limit too; anyone may raise the soft one up to the hard one.
        let target = if hard < needed && setrlimit(Resource::RLIMIT_NOFILE, needed, needed).is_ok() {
            needed
        } else {
            hard.min(needed.max(soft))
        };
        if setrlimit(Resource::RLIMIT_NOFILE, target, hard.max(target)).is_ok() {
            value = target;
        }
        if value < needed {
            log(format!(
                "warning: the open-file limit (ulimit -n) is {value}: it allows about {} nodes; raise the hard limit",
                value.saturating_sub(reserve) / per_node
            ));
        }
    }
    Limit {
        name: "RLIMIT_NOFILE",
        scope: "process",
        was: soft,
        value,
        needed,
        per_node,
        allows_nodes: value.saturating_sub(reserve) / per_node,
        raised: value > soft,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_too_low_are_stated_with_the_node_count_they_allow() {
        let mut lines = Vec::new();
        let limits = prepare(10_000_000, NodeKind::Systemd, true, false, &mut |l| lines.push(l));
        for name in [
            "fs.inotify.max_user_instances",
            "kernel.pid_max",
            "net.ipv4.neigh.default.gc_thresh3",
        ] {
            let l = limits
                .iter()
                .find(|l| l.name == name)
                .unwrap_or_else(|| panic!("{name} not checked: {limits:?}"));
            assert!(!l.raised, "{name} raised without being asked to");
            assert!(l.allows_nodes < 10_000_000 && l.needed > l.value, "{l:?}");
            assert!(
                lines
                    .iter()
                    .any(|s| s.contains(name) && s.contains("allows about") && s.contains("sysctl -w")),
                "{name}: {lines:?}"
            );
        }
    }

    #[test]
    fn command_nodes_need_no_inotify_and_no_ptys() {
        let limits = prepare(10, NodeKind::Command, false, false, &mut |_| {});
        let names: Vec<&str> = limits.iter().map(|l| l.name).collect();
        assert!(
            !names.contains(&"fs.inotify.max_user_instances") && !names.contains(&"kernel.pty.max"),
            "{names:?}"
        );
        assert!(names.contains(&"kernel.pid_max") && names.contains(&"RLIMIT_NOFILE"), "{names:?}");
    }
}
