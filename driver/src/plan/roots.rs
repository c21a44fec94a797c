//! Resolving what a node boots: an image directory (next to the test file, or built by name
//! into the cache) or a NixOS toplevel with an executable `init`, optionally in a chroot store.

use std::path::{Path, PathBuf};

use super::raw::RawNode;
use super::validate::{pick, At, Checker};
use super::NodeRoot;

impl Checker<'_> {
    pub(super) fn root(&mut self, name: &str, n: &RawNode, d: &RawNode) -> Option<NodeRoot> {
        let own = n.image.is_some() || n.toplevel.is_some();
        let (src, prefix) = if own {
            (n, format!("nodes.{name}"))
        } else {
            (d, "defaults".to_string())
        };
        let store = pick(&n.store, &d.store, name, "store");
        let closure_only = n.closure_only.or(d.closure_only).unwrap_or(false);
        match (&src.image, &src.toplevel) {
            (Some(_), Some(_)) => {
                self.problem(prefix, "sets both `image` and `toplevel`; a node boots one of them: keep one");
                None
            }
            (None, None) => {
                self.problem(
                    format!("nodes.{name}"),
                    "has neither `image` nor `toplevel`; set one on the node or in [defaults]",
                );
                None
            }
            (Some(image), None) => {
                if n.store.is_some() || n.closure_only.is_some() {
                    self.problem(
                        format!("nodes.{name}"),
                        "`store` and `closure_only` apply to `toplevel` nodes only; remove them or use `toplevel`",
                    );
                }
                self.image(&format!("{prefix}.image"), image).map(|dir| NodeRoot::Image { dir })
            }
            (None, Some(top)) => {
                let store = store.and_then(|At { value, key }| {
                    let p = self.resolve(&value);
                    if p.is_dir() {
                        Some(p)
                    } else {
                        self.problem(
                            key,
                            format!(
                                "{value:?} is not a directory ({}); point it at the directory that holds the store paths",
                                p.display()
                            ),
                        );
                        None
                    }
                });
                let key = format!("{prefix}.toplevel");
                let path = self.resolve(top);
                if let Err(msg) = super::validate_names::check_init(&path, store.as_deref()) {
                    self.problem(key, format!("{top:?}: {msg}"));
                    return None;
                }
                Some(NodeRoot::Toplevel { path, store, closure_only })
            }
        }
    }

    fn image(&mut self, key: &str, image: &str) -> Option<PathBuf> {
        let looks_like_path = image.contains('/') || image.starts_with('.');
        let local = self.resolve(image);
        if local.is_dir() {
            return Some(local.canonicalize().unwrap_or(local));
        }
        if looks_like_path || image.is_empty() {
            self.problem(
                key,
                format!(
                    "{image:?} is not a directory ({}); the path is relative to the test file",
                    local.display()
                ),
            );
            return None;
        }
        match image_by_name(&self.ctx.cache_dir, image) {
            Ok(Some(found)) => return Some(found),
            Ok(None) => {}
            Err(why) => {
                self.problem(key, why);
                return None;
            }
        }
        self.problem(
            key,
            format!(
                "{image:?} is neither a directory next to the test file ({}) nor a built image; {}, or point `image` at a root filesystem directory",
                local.display(),
                missing_image_fix(&self.ctx.cache_dir, image)
            ),
        );
        None
    }
}

/// A built image by name in the cache: the user's own copy (shifted into the user's id map by
/// the image builder) when not root and there is one, else `<cache>/images/<name>`. Shared by
/// test files and `hutch run --image NAME`. A user's nodes never fall back silently to a copy
/// built for root: its files would show as nobody's in the node (`su`, logins and `files`
/// fail), so that is an error naming the command that makes the user's copy.
pub fn image_by_name(cache_dir: &Path, name: &str) -> Result<Option<PathBuf>, String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Ok(None);
    }
    let images = cache_dir.join("images");
    let uid = nix::unistd::Uid::effective();
    let own = images.join(format!("{name}@{uid}"));
    if !uid.is_root() && own.is_dir() {
        return Ok(Some(own));
    }
    let built = images.join(name);
    let Some(meta) = std::fs::metadata(&built).ok().filter(|m| m.is_dir()) else {
        return Ok(None);
    };
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    if !uid.is_root() && owner != uid.as_raw() {
        return Err(format!(
            "image {name:?} is built for uid {owner} ({}) and has no copy for your uid {uid} ({}): your nodes would \
             see its files owned by nobody; make your copy with `{}`, or name the directory itself to boot it as it is",
            built.display(),
            own.display(),
            shift_fix(cache_dir, name, None)
        ));
    }
    Ok(Some(built))
}

/// The command that makes a user's copy of a built image (as root: shifting ids needs it), for
/// the error above and `hutch doctor`; `user` `None` is the caller, as the shell names it.
pub fn shift_fix(cache_dir: &Path, name: &str, user: Option<&str>) -> String {
    format!(
        "sudo HUTCH_CACHE={} bash fixtures/{name}-image.sh --shift-for {}",
        cache_dir.display(),
        user.unwrap_or("$(id -un)")
    )
}

/// What to do about an image name that is not in the cache: where hutch looked, and how the
/// cache is chosen (`HUTCH_CACHE`).
pub fn missing_image_fix(cache_dir: &Path, name: &str) -> String {
    let how = match std::env::var_os("HUTCH_CACHE").filter(|v| !v.is_empty()) {
        Some(_) => "HUTCH_CACHE".to_string(),
        None => "the default cache; HUTCH_CACHE is not set".to_string(),
    };
    format!(
        "looked in {} ({how}): build the image first (`HUTCH_CACHE={} bash fixtures/debian-image.sh` makes `debian`, fixtures/busybox-image.sh `busybox`), or set HUTCH_CACHE to the cache that holds it",
        cache_dir.join("images").join(name).display(),
        cache_dir.display()
    )
}
