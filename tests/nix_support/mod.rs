//! What the Nix tests (nix_flake.rs, nixpkgs_ref.rs) share: an offline `nix-instantiate`, the
//! repository's path, scratch directories and a toplevel that passes hutch's checks.

#![allow(dead_code)]

pub mod standin;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Nix settings for an offline, daemon-less, single-user Nix (see MACHINE-NOTES).
pub const NIX_CONFIG: &str = "build-users-group =\nsubstituters =\nsandbox = true\nsandbox-fallback = false";

/// The repository (the root package's directory).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `nix-instantiate` with offline settings, or None (and a message) when Nix is not installed.
/// It uses the dummy store: evaluation needs no store, and any user can open it.
pub fn nix_instantiate(test: &str) -> Option<Command> {
    let ok = Command::new("nix-instantiate")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipping {test}: nix-instantiate is not installed (apt-get install --no-install-recommends nix-bin)");
        return None;
    }
    let mut c = Command::new("nix-instantiate");
    c.args(["--store", "dummy://"]).env("NIX_CONFIG", NIX_CONFIG).current_dir(repo());
    Some(c)
}

/// A scratch directory, removed on drop (also when the test fails).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("hutch-nix-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory that passes hutch's toplevel check (an executable `init`), for plans that are
/// validated but never booted.
pub fn fake_toplevel(dir: &Path) -> String {
    let top = dir.join("toplevel");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::write(top.join("init"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(top.join("init"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    top.display().to_string()
}
