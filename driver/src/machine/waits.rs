//! Waiting for files, ports, sockets and console text, and copying between host and node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{shell_quote, Machine, MachineError};
use crate::agent::{files, AgentReply, TreeEntry};

impl Machine {
    /// Wait until a path exists in the node.
    pub fn wait_for_file(&self, path: &str, timeout: Duration) -> Result<(), MachineError> {
        self.log(&format!("waiting for file {path}"));
        let cmd = format!("test -e {}", shell_quote(path));
        self.retry(&format!("waiting for file {path}"), timeout, |_| {
            let out = self.execute(&cmd, Some(Duration::from_secs(30)))?;
            Ok(if out.status == 0 { Ok(()) } else { Err(None) })
        })
    }

    /// Whether `addr:port` accepts TCP connections from inside the node. The agent probes
    /// directly when it can resolve `addr`; otherwise `nc -z`, or bash's /dev/tcp.
    fn port_open(&self, port: u16, addr: &str) -> Result<bool, MachineError> {
        let agent = self.agent()?;
        if let Some(open) = agent.probe_tcp(addr, port).map_err(|e| self.agent_err(e))? {
            return Ok(open);
        }
        let a = shell_quote(addr);
        let cmd = format!(
            "if command -v nc >/dev/null 2>&1; then nc -z {a} {port}; \
             else timeout 2 bash -c \"exec 3<>/dev/tcp/\"{a}\"/{port}\"; fi"
        );
        Ok(self.execute(&cmd, Some(Duration::from_secs(30)))?.status == 0)
    }

    /// Wait until a TCP port accepts connections (from inside the node).
    pub fn wait_for_open_port(&self, port: u16, addr: &str, timeout: Duration) -> Result<(), MachineError> {
        self.log(&format!("waiting for TCP port {port} on {addr}"));
        self.retry(&format!("waiting for TCP port {port} on {addr}"), timeout, |_| {
            Ok(if self.port_open(port, addr)? { Ok(()) } else { Err(None) })
        })
    }

    /// Wait until nothing listens on a TCP port any more.
    pub fn wait_for_closed_port(&self, port: u16, addr: &str, timeout: Duration) -> Result<(), MachineError> {
        self.log(&format!("waiting for TCP port {port} on {addr} to be closed"));
        self.retry(&format!("waiting for TCP port {port} on {addr} to close"), timeout, |_| {
            Ok(if self.port_open(port, addr)? { Err(None) } else { Ok(()) })
        })
    }

    /// Wait until a Unix socket accepts connections.
    pub fn wait_for_open_unix_socket(&self, path: &str, datagram: bool, timeout: Duration) -> Result<(), MachineError> {
        self.log(&format!("waiting for Unix socket {path}"));
        self.retry(&format!("waiting for Unix socket {path}"), timeout, |_| {
            let agent = self.agent()?;
            let open = agent.probe_unix(path, datagram).map_err(|e| self.agent_err(e))?;
            Ok(if open { Ok(()) } else { Err(None) })
        })
    }

    /// Wait until the console shows text matching `regex` (Rust regex syntax, which covers the
    /// common Python patterns) printed after the previous successful wait.
    pub fn wait_for_console_text(&self, regex: &str, timeout: Option<Duration>) -> Result<(), MachineError> {
        self.log(&format!("waiting for {regex:?} on the console"));
        let re = regex::bytes::Regex::new(regex).map_err(|e| MachineError::Invalid {
            node: self.name.clone(),
            message: format!("wait_for_console_text: {regex:?} is not a supported regex: {e}"),
        })?;
        let timeout = timeout.unwrap_or(super::DEFAULT_TIMEOUT);
        let console = self.control.console();
        let from = *super::lock(&self.console_cursor);
        let end = Instant::now() + timeout;
        let mut progress = super::progress::Progress::new();
        loop {
            // In slices of a second at most: a cancelled call (crate::cancel) ends it too.
            let slice = end.min(progress.due()).min(Instant::now() + Duration::from_secs(1));
            if let Some(at) = console.wait_for(&re, from, slice, &self.ctx.abort) {
                *super::lock(&self.console_cursor) = at;
                return Ok(());
            }
            self.aborted()?;
            if Instant::now() >= end {
                return Err(MachineError::TimedOut {
                    node: self.name.clone(),
                    what: format!("waiting for {regex:?} on the console"),
                    after: timeout,
                    last: console.last_line(),
                });
            }
            if let Some(elapsed) = progress.tick() {
                let what = format!("waiting for {regex:?} on the console");
                self.still(&what, elapsed, Some(timeout), console.last_line().as_deref());
            }
        }
    }

    /// Copy a host file or directory into the node at `target` (an absolute path).
    pub fn copy_from_host(&self, source: &Path, target: &str) -> Result<(), MachineError> {
        self.log(&format!("copying {} to {target}", source.display()));
        if !target.starts_with('/') {
            return Err(MachineError::Invalid {
                node: self.name.clone(),
                message: format!("copy_from_host: the target {target:?} must be an absolute path in the node"),
            });
        }
        let entries = match files::read_tree(&source.to_string_lossy()) {
            AgentReply::Tree { entries } => entries,
            AgentReply::Error { message } => {
                return Err(MachineError::Copy {
                    node: self.name.clone(),
                    message,
                })
            }
            _ => Vec::new(),
        };
        self.agent()?.write_tree(target, entries).map_err(|e| self.agent_err(e))
    }

    /// Copy a file or directory out of the node into `<output dir>/<target_dir>/`; returns the
    /// host path of the copy. What the node sends is hostile input (see `copy_out`).
    pub fn copy_from_machine(&self, source: &str, target_dir: &str) -> Result<PathBuf, MachineError> {
        let name = Path::new(source).file_name().and_then(|n| n.to_str()).unwrap_or("root");
        self.log(&format!(
            "copying {source} to {}",
            self.ctx.output_dir.join(target_dir).join(name).display()
        ));
        let entries: Vec<TreeEntry> = self.agent()?.read_tree(source).map_err(|e| self.agent_err(e))?;
        super::copy_out::write_tree(&self.ctx.output_dir, target_dir, name, &entries).map_err(|e| MachineError::Copy {
            node: self.name.clone(),
            message: format!("copy_from_machine({source:?}): {e}"),
        })
    }
}
