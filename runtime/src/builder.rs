//! The runtime's side of a node's builder process (see `child.rs`): give it its ids, image view
//! and cgroups, learn the PID 1 it clones, reap it once the mount table is handed over.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::cgroup::NodeCgroup;
use crate::child::{self, ChildPlan};
use crate::idmap::IdMap;
use crate::sync::{self, ToChild, ToParent};
use crate::Error;

/// A cloned builder, until it has exited and been reaped. Dropping it kills and reaps it.
pub(crate) struct Builder {
    pub pid: Pid,
    pub pidfd: OwnedFd,
    reaped: bool,
}

/// What the runtime has once the builder is on its way.
pub(crate) struct HandOver {
    /// PID 1 (as the runtime sees it) and its pidfd.
    pub pid: Pid,
    pub pidfd: OwnedFd,
    /// The /run/host/notify socket, if the builder made it already.
    pub notify: Option<OwnedFd>,
    /// The agent the builder forked, if the node has one.
    pub agent: Option<(Pid, OwnedFd)>,
    /// When the builder was let go (the end of the runtime's own id mapping work).
    pub released: u64,
}

/// Why a node did not start: a step inside the node failed, or the runtime's own work did.
pub(crate) enum Failure {
    Step { step: u32, errno: Errno },
    Runtime(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Runtime(e)
    }
}

impl Builder {
    /// Wraps a freshly cloned builder.
    pub fn new(pid: Pid, pidfd: OwnedFd) -> Builder {
        Builder { pid, pidfd, reaped: false }
    }

    /// Maps the builder's ids, joins it to its v1 cgroups and lets it go, with the idmapped
    /// tree of `image` (a root-owned image seen by shifted ids); returns once PID 1 exists
    /// with its network namespace.
    pub fn hand_over(
        &mut self,
        sock: &OwnedFd,
        idmap: &IdMap,
        image: Option<&Path>,
        cgroup: Option<&NodeCgroup>,
        with_agent: bool,
    ) -> Result<HandOver, Failure> {
        idmap.apply(self.pid)?;
        let tree = image.map(|image| crate::idmount::idmapped_tree(image, self.pid)).transpose()?;
        if let Some(cg) = cgroup {
            cg.add_v1(self.pid)?;
        }
        sync::send_child(sock.as_fd(), ToChild::Go(tree)).map_err(Error::sys("starting the node's builder"))?;
        let released = crate::timings::now_ns();
        let (mut pid1, mut net, mut notify, mut agent) = (None, false, None, None);
        while pid1.is_none() || !net || (with_agent && agent.is_none()) {
            match sync::recv_parent(sock.as_fd()) {
                Ok(Some(ToParent::Pid1(pidfd, pid))) => pid1 = Some((Pid::from_raw(pid), pidfd)),
                Ok(Some(ToParent::Agent(pidfd, pid))) => agent = Some((Pid::from_raw(pid), pidfd)),
                Ok(Some(ToParent::NetReady)) => net = true,
                Ok(Some(ToParent::NotifySocket(fd))) => notify = Some(fd),
                Ok(Some(ToParent::Failed { step, errno })) => return Err(Failure::Step { step, errno }),
                Ok(_) => {
                    return Err(Failure::Step {
                        step: child::STEP_PID1,
                        errno: Errno::ECHILD,
                    })
                }
                Err(e) => {
                    return Err(Error::Sys {
                        what: "reading the node builder's reply".into(),
                        source: e,
                    }
                    .into())
                }
            }
        }
        let Some((pid, pidfd)) = pid1 else {
            return Err(Failure::Step {
                step: child::STEP_PID1,
                errno: Errno::ECHILD,
            });
        };
        Ok(HandOver {
            pid,
            pidfd,
            notify,
            agent,
            released,
        })
    }

    /// Reaps the builder if it has exited; true once reaped. Its exit tears down the outer
    /// mount namespace, which waits for an RCU grace period: nobody should wait for that.
    pub fn try_reap(&mut self) -> bool {
        if !self.reaped {
            let status = nix::sys::wait::waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            self.reaped = !matches!(status, Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(Errno::EINTR));
        }
        self.reaped
    }

    /// Waits for the builder to exit: it does right after handing the mounts over, or failing.
    pub fn reap(&mut self) {
        if !self.reaped {
            while let Err(Errno::EINTR) = nix::sys::wait::waitpid(self.pid, None) {}
            self.reaped = true;
        }
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = crate::clone::pidfd_signal(self.pidfd.as_raw_fd(), libc::SIGKILL);
            self.reap();
        }
    }
}

impl Failure {
    /// The error a user sees: the failed step in words, or the runtime's error as it is.
    pub fn into_error(self, node: &str, boot: bool, cplan: &ChildPlan) -> Error {
        let (step, errno) = match self {
            Failure::Runtime(e) => return e,
            Failure::Step { step, errno } => (step, errno),
        };
        let what = match step {
            child::STEP_WAIT => "waiting for the runtime".to_string(),
            child::STEP_IDS => "becoming root in the node".into(),
            child::STEP_PID1 => "cloning the node's PID 1 into its namespaces".into(),
            child::STEP_HANDOVER => "handing the mount table to PID 1".into(),
            child::STEP_NETWORK => "setting hostname and loopback".into(),
            child::STEP_AGENT => "starting the agent".into(),
            child::STEP_CONFINE => "dropping capabilities and installing the seccomp filter".into(),
            child::STEP_EXEC => {
                let cmd = cplan.pid1.argv.first().map(|a| a.to_string_lossy().to_string()).unwrap_or_default();
                if errno == Errno::ENOENT {
                    let fix = if boot {
                        "the image needs /sbin/init or systemd; drop --boot to run a command"
                    } else {
                        "give a command that exists in the node's root (absolute path, or on PATH)"
                    };
                    return Error::Invalid {
                        field: "CMD",
                        problem: format!("{cmd:?} not found in node {node}"),
                        fix: fix.into(),
                    };
                }
                format!("exec {cmd}")
            }
            n => cplan
                .plan
                .steps
                .get(n as usize)
                .map(|s| s.what.clone())
                .unwrap_or_else(|| format!("step {n}")),
        };
        Error::Setup {
            node: node.to_string(),
            step: what,
            errno,
        }
    }
}
