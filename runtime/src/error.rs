//! The runtime's one error type: every failure names what was being done and how to fix it.

use std::path::PathBuf;

/// Why a node could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is wrong in a way the user can fix (a field, its value and the fix).
    #[error("{field}: {problem}; {fix}")]
    Invalid {
        /// The option or field at fault, e.g. `--memory`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
        /// What to do instead.
        fix: String,
    },
    /// The host refuses something hutch needs (user namespaces, cgroups, ...).
    #[error("{problem}; {fix}")]
    Host {
        /// What the host refused.
        problem: String,
        /// How to get it.
        fix: String,
    },
    /// A step of the node's start failed inside the new namespaces.
    #[error("node {node}: {step}: {errno}")]
    Setup {
        /// The node's name.
        node: String,
        /// The step, e.g. `mount proc on /proc`.
        step: String,
        /// The kernel's answer.
        errno: nix::errno::Errno,
    },
    /// A host-side system call failed.
    #[error("{what}")]
    Sys {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: nix::errno::Errno,
    },
    /// A host-side file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A helper program (newuidmap, nix-store) failed.
    #[error("{program} failed: {detail}")]
    Helper {
        /// The program.
        program: String,
        /// Its status and stderr.
        detail: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Sys`].
    pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> Error {
        let what = what.into();
        move |source| Error::Sys { what, source }
    }

    /// Shorthand for [`Error::Io`].
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    /// True when the error is the user's to fix (bad input), not a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Invalid { .. })
    }
}
