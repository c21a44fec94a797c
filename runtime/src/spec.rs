//! What a node is: the validated description the runtime starts a container from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;

/// Where a node's root filesystem comes from.
#[derive(Debug, Clone)]
pub enum RootFs {
    /// A root filesystem directory, used read-only as the lower layer of an overlay whose upper
    /// layer is private to the node: fifty nodes share one image and write nothing into it.
    Image(PathBuf),
    /// NixOS mode: an empty tmpfs root with the Nix store bind-mounted read-only.
    Nix {
        /// The system closure's toplevel store path (`/nix/store/...-nixos-system-...`).
        toplevel: PathBuf,
        /// The host directory holding the store paths (`/nix/store`, or a chroot store's).
        store: PathBuf,
        /// Mount only the toplevel's closure instead of the whole store.
        closure_only: bool,
    },
}

/// A host path made visible inside the node (`--bind SRC:DST[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the node.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

impl std::str::FromStr for Bind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Bind, Error> {
        let bad = |problem: String| Error::Invalid {
            field: "--bind",
            problem,
            fix: "write it as SRC:DST or SRC:DST:ro with absolute paths".into(),
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            _ => return Err(bad(format!("{s:?} is not SRC:DST[:ro]"))),
        };
        if !source.starts_with('/') || !target.starts_with('/') {
            return Err(bad(format!("{s:?} has a relative path")));
        }
        Ok(Bind {
            source: source.into(),
            target: target.into(),
            read_only,
        })
    }
}

/// A byte size as users write it: `512M`, `2G`, `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = Error;

    fn from_str(s: &str) -> Result<Size, Error> {
        Size::parse(s, "--memory")
    }
}

impl Size {
    /// Parses `s` as a size; an error names `field` (the option or key it came from).
    pub fn parse(s: &str, field: &'static str) -> Result<Size, Error> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let mult: u64 = match unit.trim_end_matches(['B', 'b', 'i']) {
            "" => 1,
            "K" | "k" => 1 << 10,
            "M" | "m" => 1 << 20,
            "G" | "g" => 1 << 30,
            "T" | "t" => 1 << 40,
            _ => 0,
        };
        match digits.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
            Some(n) if n > 0 && mult > 0 => Ok(Size(n)),
            _ => Err(Error::Invalid {
                field,
                problem: format!("{s:?} is not a positive size"),
                fix: "write it like 512M or 2G".into(),
            }),
        }
    }
}

/// The driver's agent in the node: a process the runtime starts beside the init, in every
/// namespace of the node but its pid namespace (see `agent.rs`), that needs nothing from the
/// node's filesystem.
#[derive(Debug, Clone, Copy)]
pub struct AgentHook {
    /// The agent's end of a socket; the runtime hands it over and the init never sees it.
    pub fd: std::os::fd::RawFd,
    /// What the agent runs once it is in the node, with its end of the driver's socket, a
    /// pidfd of the node's PID 1 (the agent ends when PID 1 does, and ends the node by killing
    /// PID 1) and the node's pid namespace (which each thread that starts commands must join
    /// itself: see `agent.rs`); it never returns.
    pub main: fn(std::os::unix::net::UnixStream, std::os::fd::OwnedFd, std::os::fd::OwnedFd) -> !,
}

/// Everything the runtime needs to start one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The node's name: logs, cgroup and default hostname.
    pub name: String,
    /// The node's hostname (UTS namespace).
    pub hostname: String,
    /// Its root filesystem.
    pub root: RootFs,
    /// Boot the init (`/sbin/init`, `/lib/systemd/systemd` or `$toplevel/init`) with `args` as
    /// its arguments, instead of running `args` as PID 1.
    pub boot: bool,
    /// The command to run as PID 1, or the init's arguments in boot mode.
    pub args: Vec<String>,
    /// `hutch run -t`: PID 1 gets a fresh pty of the node's own devpts (the node's /dev/ptmx)
    /// as its standard streams and controlling terminal, with this window size (rows,
    /// columns); the runtime gets the master ([`crate::Container::terminal`]). Without it the
    /// command inherits the runtime's standard streams.
    pub terminal: Option<(u16, u16)>,
    /// Extra environment for PID 1 (`--setenv K=V`).
    pub env: Vec<(String, String)>,
    /// Host paths made visible in the node.
    pub binds: Vec<Bind>,
    /// Extra files written into the node's root before it starts (path inside, contents).
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// Memory limit in bytes (cgroup).
    pub memory: Option<u64>,
    /// Limit on the number of tasks (cgroup).
    pub pids_max: Option<u64>,
    /// Size of the node's tmpfs writable layer and of its /tmp (`--tmpfs-size`, test-file key
    /// `tmpfs_size`); `None`: the layer gets the memory limit when there is one, else a quarter
    /// of the host's RAM, and /tmp a quarter of that.
    pub tmpfs_size: Option<u64>,
    /// Keep the node's writable layer in this host directory (its `upper` and `work`), so
    /// that what the node wrote is there at its next start; `None`: a private layer that goes
    /// with the node. The caller removes it (see [`crate::remove_layer`]).
    pub disk: Option<PathBuf>,
    /// How long a stop waits for a clean exit before SIGKILL.
    pub stop_timeout: Duration,
    /// An agent to start in the node beside its init.
    pub agent: Option<AgentHook>,
}

impl NodeSpec {
    /// A spec with the defaults `hutch run` uses: no limits, no binds, a 10 s stop timeout.
    pub fn new(name: &str, root: RootFs) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            hostname: name.into(),
            root,
            boot: false,
            args: Vec::new(),
            terminal: None,
            env: Vec::new(),
            binds: Vec::new(),
            files: Vec::new(),
            memory: None,
            pids_max: None,
            tmpfs_size: None,
            disk: None,
            stop_timeout: Duration::from_secs(10),
            agent: None,
        }
    }

    /// The size of a tmpfs writable layer: `tmpfs_size`, else the memory limit, else a quarter
    /// of the host's RAM (a node without limits cannot fill the host's memory with files).
    pub fn upper_size(&self) -> u64 {
        let quarter = || nix::sys::sysinfo::sysinfo().map(|i| i.ram_total() / 4).unwrap_or(1 << 30);
        self.tmpfs_size.or(self.memory).unwrap_or_else(quarter)
    }

    /// True when the node runs only its agent: no init and no command. Its first process then
    /// stays as a minimal PID 1 that reaps orphans until it is stopped or the agent ends it.
    pub fn runs_no_init(&self) -> bool {
        !self.boot && self.args.is_empty() && self.agent.is_some()
    }

    /// Checks what can be checked before anything is created, so that bad input leaves nothing
    /// half-made on the host.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty() || self.name.len() > 64 || !self.name.chars().all(is_name_char) {
            return Err(Error::Invalid {
                field: "--name",
                problem: format!("{:?} is not a node name", self.name),
                fix: "use 1-64 letters, digits, '-' or '_'".into(),
            });
        }
        if self.hostname.is_empty() || self.hostname.len() > 64 || !self.hostname.chars().all(is_host_char) {
            return Err(Error::Invalid {
                field: "--hostname",
                problem: format!("{:?} is not a host name", self.hostname),
                fix: "use 1-64 letters, digits, '-', '_' or '.'".into(),
            });
        }
        match &self.root {
            RootFs::Image(dir) => check_dir("--image", dir, "give a root filesystem directory")?,
            RootFs::Nix { toplevel, store, .. } => {
                check_dir("--store", store, "give the directory holding the store paths, e.g. /nix/store")?;
                let host = host_store_path(toplevel, store);
                check_dir("--toplevel", &host, "give a store path of a built system")?;
                if self.boot || (self.args.is_empty() && self.agent.is_none()) {
                    let init = host.join("init");
                    if !is_executable(&init) {
                        return Err(Error::Invalid {
                            field: "--toplevel",
                            problem: format!("{} has no executable init", toplevel.display()),
                            fix: "give the toplevel of a NixOS system (it has an `init`), or a command after --".into(),
                        });
                    }
                }
            }
        }
        if !self.boot && self.args.is_empty() && self.agent.is_none() && matches!(self.root, RootFs::Image(_)) {
            return Err(Error::Invalid {
                field: "CMD",
                problem: "no command given".into(),
                fix: "add `-- CMD [ARGS...]`, or --boot to run the image's init".into(),
            });
        }
        if self.terminal.is_some() && self.boot {
            return Err(Error::Invalid {
                field: "--tty",
                problem: "a booted node's terminal is its console".into(),
                fix: "drop -t: with --boot the console is relayed to your terminal".into(),
            });
        }
        for bind in &self.binds {
            if !bind.source.exists() {
                return Err(Error::Invalid {
                    field: "--bind",
                    problem: format!("{} does not exist", bind.source.display()),
                    fix: "bind an existing host path".into(),
                });
            }
        }
        for (k, _) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(Error::Invalid {
                    field: "--setenv",
                    problem: format!("{k:?} is not a variable name"),
                    fix: "write it as NAME=VALUE".into(),
                });
            }
        }
        Ok(())
    }
}

/// Where a store path (`/nix/store/x`) lives on the host given the store directory in use.
pub(crate) fn host_store_path(path: &Path, store: &Path) -> PathBuf {
    match path.strip_prefix("/nix/store") {
        Ok(rest) => store.join(rest),
        Err(_) => path.to_path_buf(),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// What NixOS allows in `networking.hostName` (letters, digits, `-`, `_`; nixpkgs tests name
/// nodes `machine_default`), and `.` for a fully qualified name given with `--hostname`.
fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

fn is_executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok() && path.is_file()
}

fn check_dir(field: &'static str, dir: &Path, fix: &str) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    let problem = if dir.exists() {
        format!("{} is not a directory", dir.display())
    } else {
        format!("{} does not exist", dir.display())
    };
    Err(Error::Invalid {
        field,
        problem,
        fix: fix.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_users_write_them() {
        assert_eq!("512M".parse::<Size>().unwrap(), Size(512 << 20));
        assert_eq!("2G".parse::<Size>().unwrap(), Size(2 << 30));
        assert_eq!("4096".parse::<Size>().unwrap(), Size(4096));
        assert_eq!("1GiB".parse::<Size>().unwrap(), Size(1 << 30));
        for bad in ["", "M", "-5M", "12Q", "0", "99999999999999999999G"] {
            let err = bad.parse::<Size>().unwrap_err().to_string();
            assert!(err.contains("--memory") && err.contains("512M"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_writable_layers_size_is_the_option_else_the_memory_limit_else_a_quarter_of_ram() {
        let mut spec = NodeSpec::new("n", RootFs::Image("/".into()));
        let quarter = spec.upper_size();
        assert!(quarter > 0);
        spec.memory = Some(64 << 20);
        assert_eq!(spec.upper_size(), 64 << 20);
        spec.tmpfs_size = Some(8 << 20);
        assert_eq!(spec.upper_size(), 8 << 20);
        let err = Size::parse("lots", "--tmpfs-size").unwrap_err().to_string();
        assert!(err.contains("--tmpfs-size") && !err.contains("--memory"), "{err}");
    }

    #[test]
    fn binds_parse_and_reject_relative_paths() {
        let b: Bind = "/a:/b:ro".parse().unwrap();
        assert_eq!(
            b,
            Bind {
                source: "/a".into(),
                target: "/b".into(),
                read_only: true
            }
        );
        assert!(!"/a:/b".parse::<Bind>().unwrap().read_only);
        assert!("a:/b".parse::<Bind>().is_err());
        assert!("/a".parse::<Bind>().is_err());
        assert!("/a:/b:xx".parse::<Bind>().is_err());
    }
}
