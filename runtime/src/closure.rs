//! The store paths a toplevel needs (`--closure-only`): the node then sees its closure only.
//!
//! Read straight from the store's database (read-only, immutable: no lock, so any user who can
//! read the store can ask), which takes about a millisecond where `nix-store -qR` takes 100.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::Error;

/// Lists the closure of `toplevel` (store paths as `/nix/store/...`), against `store` (the
/// directory holding the store paths: `/nix/store`, or `<root>/nix/store` of a chroot store).
pub(crate) fn closure(toplevel: &Path, store: &Path) -> Result<Vec<PathBuf>, Error> {
    let db = database(store)?;
    let fail = |e: rusqlite::Error| Error::Host {
        problem: format!("reading the closure of {} from {}: {e}", toplevel.display(), db.display()),
        fix: "check the store path is valid (nix-store --verify-path), or drop --closure-only".into(),
    };
    let uri = format!("file:{}?immutable=1", db.display());
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    let mut stmt = conn
        .prepare(
            "WITH RECURSIVE closure(id) AS (
                 SELECT id FROM ValidPaths WHERE path = ?1
                 UNION SELECT reference FROM Refs JOIN closure ON referrer = closure.id)
             SELECT path FROM ValidPaths WHERE id IN closure ORDER BY path",
        )
        .map_err(fail)?;
    let paths = stmt
        .query_map([toplevel.to_string_lossy()], |row| row.get::<_, String>(0))
        .map_err(fail)?
        .collect::<Result<Vec<String>, _>>()
        .map_err(fail)?;
    if paths.is_empty() {
        return Err(Error::Invalid {
            field: "--toplevel",
            problem: format!("{} is not a valid path in the store database {}", toplevel.display(), db.display()),
            fix: "build it into that store first (or pass --store for a chroot store)".into(),
        });
    }
    Ok(paths.into_iter().map(PathBuf::from).collect())
}

/// The database beside a store directory: `<root>/nix/store` -> `<root>/nix/var/nix/db/db.sqlite`.
fn database(store: &Path) -> Result<PathBuf, Error> {
    let db = store.parent().map(|nix| nix.join("var/nix/db/db.sqlite"));
    match db {
        Some(db) if db.is_file() => Ok(db),
        _ => Err(Error::Invalid {
            field: "--store",
            problem: format!("no Nix database beside {} (expected ../var/nix/db/db.sqlite)", store.display()),
            fix: "give /nix/store or <root>/nix/store of a chroot store, or drop --closure-only".into(),
        }),
    }
}
