//! Test files: the TOML (or JSON, for generated files) a user writes, validated into a `TestPlan`
//! whose paths are absolute and whose values are checked, so nothing later fails on a typo.

mod interfaces;
mod raw;
mod roots;
pub use roots::{image_by_name, missing_image_fix, shift_fix};
mod validate;
mod validate_names;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated test: what the driver needs to build the network, start nodes and run the script.
#[derive(Debug, Clone)]
pub struct TestPlan {
    /// The test file, as given by the user (used in messages).
    pub file: PathBuf,
    /// `test.name`.
    pub name: String,
    /// The Python test script.
    pub script: Script,
    /// The whole-test limit (`test.timeout`, default one hour like the NixOS driver).
    pub timeout: Duration,
    /// The nodes, sorted by name; `number` is the position in that order, from 1.
    pub nodes: Vec<NodePlan>,
    /// Every VLAN some node is on, sorted, without repeats.
    pub vlans: Vec<u8>,
}

/// The test script's text and where it came from, for tracebacks.
#[derive(Debug, Clone)]
pub struct Script {
    /// The script's source.
    pub source: String,
    /// What Python calls the file in tracebacks: the script's absolute path, or
    /// `<test file>:testScript` for an inline script.
    pub filename: String,
    /// The script file, when it is one (absent for an inline `testScript`).
    pub path: Option<PathBuf>,
}

/// One node, with its root resolved and its values checked.
#[derive(Debug, Clone)]
pub struct NodePlan {
    /// The name in the test file (`nodes.<name>`); also the default hostname.
    pub name: String,
    /// The name of the test-script variable: dashes become underscores.
    pub python_name: String,
    /// The node's number n (1-based, alphabetical), as in `192.168.<vlan>.<n>`.
    pub number: u32,
    /// What the node boots.
    pub root: NodeRoot,
    /// VLANs in order: the node gets `eth1` on the first, `eth2` on the second, ...
    pub vlans: Vec<u8>,
    /// Interfaces with names of their own (`interfaces`: NixOS's `virtualisation.interfaces`),
    /// each on a VLAN the node is not otherwise on.
    pub interfaces: Vec<NamedInterface>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Limit on the number of processes.
    pub pids_max: Option<u64>,
    /// Size of the node's tmpfs writable layer (`tmpfs_size`; default: its memory limit, else
    /// a quarter of the host's RAM).
    pub tmpfs_size: Option<u64>,
    /// Host files copied into the node before boot.
    pub files: Vec<FileCopy>,
    /// Extra environment for the node's init.
    pub env: BTreeMap<String, String>,
    /// Whether the init runs (false: only the agent, for quick tool tests).
    pub boot: bool,
    /// The node's hostname (default: its name).
    pub hostname: String,
    /// TCP ports published on the host's 127.0.0.1 for the test: (host port, node port).
    pub publish: Vec<(u16, u16)>,
}

/// A named interface of a node, as the test file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedInterface {
    /// The name inside the node.
    pub name: String,
    /// The VLAN it is on.
    pub vlan: u8,
    /// Whether it gets the test network's addresses on that VLAN (default false, as NixOS's
    /// `assignIP`).
    pub assign_ip: bool,
}

/// What a node boots: a root filesystem directory, or a NixOS system out of a Nix store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRoot {
    /// An image directory used as the read-only lower layer of the node's overlay.
    Image {
        /// Absolute path of the root filesystem.
        dir: PathBuf,
    },
    /// A NixOS system: `$toplevel/init` runs on an empty root with the store bind-mounted.
    Toplevel {
        /// The toplevel as the node sees it (`/nix/store/...-nixos-system-...`).
        path: PathBuf,
        /// Where the store lives on the host, when not at `/nix/store` (a chroot store).
        store: Option<PathBuf>,
        /// Mount only the toplevel's closure instead of the whole store.
        closure_only: bool,
    },
}

/// One entry of `files`: a host file copied to a path inside the node before boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopy {
    /// Absolute path inside the node.
    pub guest: PathBuf,
    /// Absolute path on the host.
    pub host: PathBuf,
}

/// One thing wrong with a test file: the key it is about and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path such as `nodes.server.memory`; absent for file-level problems.
    pub key: Option<String>,
    /// What is wrong and the fix.
    pub message: String,
}

/// Why a test file was refused: every problem found, each naming the file and key.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PlanError {
    /// The test file as given by the user.
    pub file: String,
    /// At least one problem.
    pub problems: Vec<Problem>,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match &p.key {
                Some(k) => write!(f, "{}: {}: {}", self.file, k, p.message)?,
                None => write!(f, "{}: {}", self.file, p.message)?,
            }
        }
        Ok(())
    }
}

/// Where images built by name live, and anything else validation reads from the environment.
#[derive(Debug, Clone)]
pub struct PlanContext {
    /// `$HUTCH_CACHE`, default `${XDG_CACHE_HOME:-$HOME/.cache}/hutch`; images are `<cache>/images/<name>`.
    pub cache_dir: PathBuf,
}

impl PlanContext {
    /// The context from the process environment.
    pub fn from_env() -> Self {
        PlanContext {
            cache_dir: cache_dir_from(|k| std::env::var_os(k)),
        }
    }
}

/// Compute hutch's cache directory from an environment lookup (separate for tests).
pub fn cache_dir_from(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    if let Some(c) = get("HUTCH_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(c);
    }
    if let Some(x) = get("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("hutch");
    }
    let home = get("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(".cache").join("hutch")
}

/// The format of a test file, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.toml` (and anything not `.json`).
    Toml,
    /// `.json`, as generated by the flake's `runTest`.
    Json,
}

impl Format {
    /// `.json` files are JSON, everything else TOML.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Toml,
        }
    }
}

impl TestPlan {
    /// Read and validate a test file, resolving images from the environment's cache directory.
    pub fn load(path: &Path) -> Result<TestPlan, PlanError> {
        Self::load_with(path, &PlanContext::from_env())
    }

    /// Read and validate a test file with an explicit context.
    pub fn load_with(path: &Path, ctx: &PlanContext) -> Result<TestPlan, PlanError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PlanError {
            file: shown.clone(),
            problems: vec![Problem {
                key: None,
                message: format!("cannot read the test file: {e}"),
            }],
        })?;
        Self::parse(&text, path, Format::of(path), ctx)
    }

    /// Validate a test file's text; `path` locates relative paths and names the file in messages.
    pub fn parse(text: &str, path: &Path, format: Format, ctx: &PlanContext) -> Result<TestPlan, PlanError> {
        validate::parse(text, path, format, ctx)
    }

    /// The node with this name in the test file.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
