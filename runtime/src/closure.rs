//! The store paths a toplevel needs (`--closure-only`): the node then sees its closure only.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Lists the closure of `toplevel` (store paths as `/nix/store/...`) with `nix-store -qR`,
/// against `store` (the directory holding the store paths: `/nix/store` or a chroot store's).
pub(crate) fn closure(toplevel: &Path, store: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut cmd = Command::new("nix-store");
    if store != Path::new("/nix/store") {
        // A chroot store keeps `/nix/store/x` at `<root>/nix/store/x`.
        let root = store.parent().and_then(Path::parent).ok_or_else(|| Error::Invalid {
            field: "--store",
            problem: format!("{} is not a store directory", store.display()),
            fix: "give /nix/store or <root>/nix/store of a chroot store".into(),
        })?;
        cmd.arg("--store").arg(format!("local?root={}", root.display()));
    }
    let out = cmd.arg("-qR").arg(toplevel).output().map_err(|e| Error::Helper {
        program: "nix-store".into(),
        detail: format!("{e} (install Nix, or drop --closure-only)"),
    })?;
    if !out.status.success() {
        return Err(Error::Helper {
            program: "nix-store -qR".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect())
}
