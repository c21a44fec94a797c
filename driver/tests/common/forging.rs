//! A node whose agent is hostile: its socket is served by the test, answering `read_tree` with
//! whatever tree the test sets (what node root could send once it holds the agent's socket).
//! Shared by driver/tests/copy_out.rs and the host-side escape table (tests/escape_host.rs).

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hutch_driver::agent::{read_frame, write_frame, AgentReply, AgentRequest, EntryKind, Envelope, TreeEntry};
use hutch_driver::log::Log;
use hutch_driver::machine::{ConsoleLog, Machine, MachineContext, NodeControl, NodeError};

/// A node whose agent answers every `read_tree` with the tree the test set.
struct ForgingNode {
    tree: Arc<Mutex<Vec<TreeEntry>>>,
    console: Arc<ConsoleLog>,
}

fn serve(mut sock: UnixStream, tree: Arc<Mutex<Vec<TreeEntry>>>) {
    while let Ok(Some(frame)) = read_frame(&mut sock) {
        let Ok(req) = serde_json::from_slice::<Envelope<AgentRequest>>(&frame) else {
            return;
        };
        let body = match req.body {
            AgentRequest::Ping => AgentReply::Pong {
                pid: 1,
                version: env!("CARGO_PKG_VERSION").into(),
            },
            AgentRequest::ReadTree { .. } => AgentReply::Tree {
                entries: tree.lock().unwrap().clone(),
            },
            _ => AgentReply::Error {
                message: "not served".into(),
            },
        };
        if write_frame(&mut sock, &Envelope { id: req.id, body }).is_err() {
            return;
        }
    }
}

impl NodeControl for ForgingNode {
    fn start(&self) -> Result<UnixStream, NodeError> {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let tree = Arc::clone(&self.tree);
        std::thread::spawn(move || serve(theirs, tree));
        Ok(ours)
    }
    fn shutdown(&self, _: Duration) -> Result<(), NodeError> {
        Ok(())
    }
    fn crash(&self) -> Result<(), NodeError> {
        Ok(())
    }
    fn wait_for_shutdown(&self, _: Duration) -> Result<(), NodeError> {
        Ok(())
    }
    fn is_up(&self) -> bool {
        true
    }
    fn block(&self) -> Result<(), NodeError> {
        Ok(())
    }
    fn unblock(&self) -> Result<(), NodeError> {
        Ok(())
    }
    fn console(&self) -> Arc<ConsoleLog> {
        Arc::clone(&self.console)
    }
}

/// A started machine `evil` served by a forging agent, copying into `out`; set the tree it
/// answers through the returned handle.
pub fn forging_machine(out: &Path) -> (Machine, Arc<Mutex<Vec<TreeEntry>>>) {
    let tree = Arc::new(Mutex::new(Vec::new()));
    let node = ForgingNode {
        tree: Arc::clone(&tree),
        console: Arc::new(ConsoleLog::new()),
    };
    let ctx = MachineContext {
        log: Arc::new(Log::quiet(None).unwrap()),
        output_dir: out.to_path_buf(),
        abort: Arc::new(Default::default()),
    };
    let machine = Machine::new("evil", Box::new(node), ctx);
    machine.start().unwrap();
    (machine, tree)
}

pub fn dir(path: &str) -> TreeEntry {
    TreeEntry {
        path: path.into(),
        mode: 0o755,
        kind: EntryKind::Dir,
    }
}

pub fn file(path: &str, mode: u32, data: &str) -> TreeEntry {
    TreeEntry {
        path: path.into(),
        mode,
        kind: EntryKind::File { data: data.into() },
    }
}

pub fn link(path: &str, target: &str) -> TreeEntry {
    TreeEntry {
        path: path.into(),
        mode: 0o777,
        kind: EntryKind::Symlink { target: target.into() },
    }
}
