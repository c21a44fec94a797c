//! Which init a booting node runs: it decides the clean-stop signal and what the init needs.

use std::path::{Path, PathBuf};

use crate::spec::{host_store_path, NodeSpec, RootFs};

/// The family of init a node boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    /// systemd: stops on SIGRTMIN+3, needs a cgroup subtree it can write.
    Systemd,
    /// busybox init: ignores SIGRTMIN+3, powers off on SIGUSR2.
    Busybox,
    /// Anything else (a script, a command): stopped with SIGTERM.
    Other,
}

impl InitKind {
    /// Looks at the node's root (on the host, before start) to tell which init it will exec.
    pub fn of(spec: &NodeSpec) -> InitKind {
        if !spec.boot {
            return InitKind::Other;
        }
        match &spec.root {
            RootFs::Image(dir) => {
                for init in ["sbin/init", "lib/systemd/systemd", "usr/lib/systemd/systemd"] {
                    if let Some(target) = resolve_in(dir, Path::new(init)) {
                        return classify(&target);
                    }
                }
                InitKind::Other
            }
            RootFs::Nix { toplevel, store, .. } => {
                // NixOS's init is a stage-2 script that ends in `exec .../lib/systemd/systemd`.
                let init = host_store_path(&toplevel.join("init"), store);
                match std::fs::read(&init) {
                    Ok(text) if contains(&text, b"/lib/systemd/systemd") => InitKind::Systemd,
                    Ok(text) if contains(&text, b"busybox") => InitKind::Busybox,
                    _ => InitKind::Other,
                }
            }
        }
    }

    /// The signal that asks this init to power off cleanly.
    pub fn stop_signal(self) -> i32 {
        match self {
            InitKind::Systemd => libc::SIGRTMIN() + 3,
            InitKind::Busybox => libc::SIGUSR2,
            InitKind::Other => libc::SIGTERM,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn classify(target: &Path) -> InitKind {
    let name = target.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if name == "systemd" {
        InitKind::Systemd
    } else if name.contains("busybox") {
        InitKind::Busybox
    } else {
        InitKind::Other
    }
}

/// Follows symlinks of `path` inside `root` (absolute targets are relative to `root`), up to
/// a few hops; the final path (inside the root) if it exists.
fn resolve_in(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut cur = path.to_path_buf();
    for _ in 0..8 {
        let host = root.join(&cur);
        match std::fs::read_link(&host) {
            Ok(target) if target.is_absolute() => cur = target.strip_prefix("/").ok()?.to_path_buf(),
            Ok(target) => cur = cur.parent().unwrap_or(Path::new("")).join(target),
            Err(_) => return host.exists().then_some(cur),
        }
    }
    None
}
