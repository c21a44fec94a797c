//! What can go wrong on a machine, worded for the person reading a failed test: the node, the
//! call, the status and the output.

use std::time::Duration;

use crate::agent::AgentError;

/// Why a lifecycle operation of the runtime failed (`NodeControl` returns these).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node is not running and the operation needs it to.
    #[error("the node is not running")]
    NotRunning,
    /// The node did not reach the wanted state in time.
    #[error("{what} did not happen within {}s", .after.as_secs_f64())]
    Timeout {
        /// E.g. "the shutdown".
        what: String,
        /// The limit.
        after: Duration,
    },
    /// Anything else, in the runtime's words.
    #[error("{0}")]
    Failed(String),
    /// A runtime error kept as the source.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// A failed Machine call.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// `succeed` (or a check) saw a non-zero status.
    #[error("{node}: command `{command}` failed ({}){}", status_text(*.status, *.timed_out), output(.stdout, .stderr))]
    CommandFailed {
        /// The node.
        node: String,
        /// The command line.
        command: String,
        /// Exit status (124 after a timeout, like coreutils' `timeout`).
        status: i32,
        /// The command was killed at its timeout.
        timed_out: bool,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
    /// `fail` saw status 0.
    #[error("{node}: command `{command}` unexpectedly succeeded{}", output(.stdout, ""))]
    UnexpectedSuccess {
        /// The node.
        node: String,
        /// The command line.
        command: String,
        /// Its standard output.
        stdout: String,
    },
    /// A wait ran out of time.
    #[error("{node}: {what}: timed out after {}s{}", .after.as_secs_f64(), .last.as_deref().map(|l| format!("\n  last output: {}", tail(l))).unwrap_or_default())]
    TimedOut {
        /// The node.
        node: String,
        /// What was waited for.
        what: String,
        /// The limit.
        after: Duration,
        /// The last attempt's output, when there was one.
        last: Option<String>,
    },
    /// A unit failed while waited for.
    #[error("{node}: unit \"{unit}\" reached state \"failed\"{}", .user.as_deref().map(|u| format!(" (user {u})")).unwrap_or_default())]
    UnitFailed {
        /// The node.
        node: String,
        /// The unit.
        unit: String,
        /// The systemd user, for user units.
        user: Option<String>,
    },
    /// A unit is inactive with no job that would start it.
    #[error("{node}: unit \"{unit}\" is inactive and there are no pending jobs")]
    UnitInactive {
        /// The node.
        node: String,
        /// The unit.
        unit: String,
    },
    /// `require_unit_state` found another state.
    #[error("{node}: expected unit \"{unit}\" to be in state \"{expected}\" but it is in state \"{actual}\"")]
    UnitState {
        /// The node.
        node: String,
        /// The unit.
        unit: String,
        /// The wanted state.
        expected: String,
        /// The state found.
        actual: String,
    },
    /// `systemctl show` failed or printed something unexpected.
    #[error("{node}: {message}")]
    Systemctl {
        /// The node.
        node: String,
        /// What went wrong.
        message: String,
    },
    /// The node died by itself (the OOM killer hit it) and was stopped.
    #[error("{node}: the node crashed: {reason}")]
    Crashed {
        /// The node.
        node: String,
        /// Why, in the runtime's words.
        reason: String,
    },
    /// The runtime could not carry out a lifecycle operation.
    #[error("{node}: {action} failed: {source}")]
    Node {
        /// The node.
        node: String,
        /// E.g. "start".
        action: &'static str,
        /// The runtime's error.
        source: NodeError,
    },
    /// The agent could not carry out a request.
    #[error("{node}: {source}")]
    Agent {
        /// The node.
        node: String,
        /// The agent's error.
        source: AgentError,
    },
    /// A copy between host and node failed.
    #[error("{node}: {message}")]
    Copy {
        /// The node.
        node: String,
        /// What went wrong.
        message: String,
    },
    /// The argument makes no sense (a bad regex, a bad path).
    #[error("{node}: {message}")]
    Invalid {
        /// The node.
        node: String,
        /// What is wrong and the fix.
        message: String,
    },
    /// The whole-test timeout (or an interrupt) stopped the call.
    #[error("{node}: stopped: the test is being aborted")]
    Aborted {
        /// The node.
        node: String,
    },
}

impl MachineError {
    /// Failures the test asked to be checked (the NixOS driver's `RequestedAssertionFailed`),
    /// as opposed to errors of the machinery.
    pub fn is_assertion(&self) -> bool {
        matches!(
            self,
            MachineError::CommandFailed { .. }
                | MachineError::UnexpectedSuccess { .. }
                | MachineError::UnitState { .. }
                | MachineError::TimedOut { .. }
                | MachineError::UnitFailed { .. }
                | MachineError::UnitInactive { .. }
                | MachineError::Systemctl { .. }
        )
    }

    /// The node the error is about.
    pub fn node(&self) -> &str {
        match self {
            MachineError::CommandFailed { node, .. }
            | MachineError::UnexpectedSuccess { node, .. }
            | MachineError::TimedOut { node, .. }
            | MachineError::UnitFailed { node, .. }
            | MachineError::UnitInactive { node, .. }
            | MachineError::UnitState { node, .. }
            | MachineError::Systemctl { node, .. }
            | MachineError::Node { node, .. }
            | MachineError::Crashed { node, .. }
            | MachineError::Agent { node, .. }
            | MachineError::Copy { node, .. }
            | MachineError::Invalid { node, .. }
            | MachineError::Aborted { node } => node,
        }
    }
}

fn status_text(status: i32, timed_out: bool) -> String {
    if timed_out {
        format!("timed out, exit code {status}")
    } else {
        format!("exit code {status}")
    }
}

/// The last part of a long output (the end usually says what went wrong).
fn tail(s: &str) -> String {
    const KEEP: usize = 4000;
    let s = s.trim_end();
    if s.len() <= KEEP {
        return s.to_string();
    }
    let mut cut = s.len() - KEEP;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[... {cut} bytes before]{}", &s[cut..])
}

fn output(stdout: &str, stderr: &str) -> String {
    let mut s = String::new();
    if !stdout.trim().is_empty() {
        s.push_str(&format!("\n  stdout: {}", tail(stdout)));
    }
    if !stderr.trim().is_empty() {
        s.push_str(&format!("\n  stderr: {}", tail(stderr)));
    }
    s
}
