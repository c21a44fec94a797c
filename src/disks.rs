//! Each node's disk for the length of a test: its writable layer in a directory under the
//! output directory, so that what a node wrote survives its shutdown()/start(), reboot() and
//! crash()/start(), as a QEMU test's disk image does. Fresh at the start of a run and removed
//! at its end, unless the user keeps them (`--keep-disks`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hutch_runtime::IdMap;

/// The disks of one run.
pub struct Disks {
    dir: PathBuf,
    keep: bool,
    idmap: IdMap,
    made: Vec<PathBuf>,
}

impl Disks {
    /// Disks under `<output_dir>/disks`; with `keep`, the previous run's are reused and left.
    pub fn new(output_dir: &Path, keep: bool) -> Result<Disks> {
        let dir = output_dir.join("disks");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
        Ok(Disks {
            dir,
            keep,
            idmap: IdMap::detect(),
            made: Vec::new(),
        })
    }

    /// The disk directory of node `name`: emptied first unless kept.
    pub fn fresh(&mut self, name: &str) -> Result<PathBuf> {
        let disk = self.dir.join(name);
        if !self.keep {
            hutch_runtime::remove_layer(&disk, &self.idmap).with_context(|| format!("node {name}: clearing its disk"))?;
        }
        self.made.push(disk.clone());
        Ok(disk)
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for disk in &self.made {
            if let Err(e) = hutch_runtime::remove_layer(disk, &self.idmap) {
                eprintln!("hutch: {e}");
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
