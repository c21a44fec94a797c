//! A host directory every user may write, bound into a node at /mnt/ids: the files a node
//! creates there show, on the host, which host ids the node's ids really are.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// The directory; removed on drop.
pub struct SharedDir(PathBuf);

impl SharedDir {
    /// A fresh directory, mode 0777, named after the test.
    pub fn new(name: &str) -> SharedDir {
        let dir = std::env::temp_dir().join(format!("hutch-ids-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        SharedDir(dir)
    }

    /// The `--bind` argument that puts it at /mnt/ids.
    pub fn bind(&self) -> String {
        format!("{}:/mnt/ids", self.0.display())
    }

    /// The host uid and gid of a file the node made there.
    pub fn owner(&self, file: &str) -> (u32, u32) {
        let m = std::fs::metadata(self.0.join(file)).unwrap();
        (m.uid(), m.gid())
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
