//! A host directory every user may write, bound into a node at /mnt/ids: the files a node
//! creates there show, on the host, which host ids the node's ids really are.

use std::os::unix::fs::MetadataExt;

use super::Scratch;

/// The directory; removed on drop.
pub struct SharedDir(Scratch);

impl SharedDir {
    /// A fresh directory, mode 0777, named after the test.
    pub fn new(name: &str) -> SharedDir {
        SharedDir(Scratch::new(&format!("ids-{name}")))
    }

    /// The `--bind` argument that puts it at /mnt/ids.
    pub fn bind(&self) -> String {
        format!("{}:/mnt/ids", self.0 .0.display())
    }

    /// The host uid and gid of a file the node made there.
    pub fn owner(&self, file: &str) -> (u32, u32) {
        let m = std::fs::metadata(self.0 .0.join(file)).unwrap();
        (m.uid(), m.gid())
    }
}
