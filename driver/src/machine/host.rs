//! The node as the host sees it, for upstream's `state_dir`, `shared_dir`, `pid`,
//! `send_console` and `log_serial`: its directories under the output directory, its init's
//! pid, and input to its console.

use std::path::{Path, PathBuf};

use super::{Machine, MachineError, NodeError};

/// Where every node of a run meets the host: bound at `/tmp/shared` in each node, as upstream's
/// QEMU VMs have their `shared_dir`.
pub fn shared_dir(output_dir: &Path) -> PathBuf {
    output_dir.join("shared")
}

/// Where a node keeps its state on the host for the length of a run (upstream's
/// `vm-state-<name>`); emptied at the start of each run.
pub fn state_dir(output_dir: &Path, node: &str) -> PathBuf {
    output_dir.join(format!("vm-state-{node}"))
}

/// Where each node sees the shared directory.
pub const SHARED_DIR_IN_NODE: &str = "/tmp/shared";

impl Machine {
    /// This node's state directory on the host.
    pub fn state_dir(&self) -> PathBuf {
        state_dir(&self.ctx.output_dir, &self.name)
    }

    /// The node's init as the host sees it, while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.control.is_up().then(|| self.control.pid()).flatten()
    }

    /// Type `chars` on the node's console, as if on its serial line.
    pub fn send_console(&self, chars: &str) -> Result<(), MachineError> {
        if !self.control.is_up() {
            return Err(self.err_node("send_console", NodeError::NotRunning));
        }
        self.control
            .send_console(chars.as_bytes())
            .map_err(|e| self.err_node("send_console", e))
    }

    /// Log a line as if the node had printed it on its console.
    pub fn log_serial(&self, line: &str) {
        self.ctx.log.console(&self.name, &[line.as_bytes().to_vec()]);
    }

    /// Empty the node's state directory (upstream deletes the VM's disk image with it).
    /// Refused while the node runs: its state is in use.
    pub fn cleanup_statedir(&self) -> Result<(), MachineError> {
        if self.control.is_up() {
            return Err(MachineError::Invalid {
                node: self.name.clone(),
                message: "cleanup_statedir(): the node is running and uses its state; call shutdown() or crash() first".into(),
            });
        }
        let dir = self.state_dir();
        let io_err = |e: std::io::Error| self.err_node("cleanup_statedir", NodeError::Failed(format!("{}: {e}", dir.display())));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err)?;
        }
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        self.log(&format!("deleted the machine state directory {}", dir.display()));
        Ok(())
    }
}
