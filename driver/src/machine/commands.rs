//! Commands: `execute`, `succeed`, `fail`, `wait_until_succeeds`, `wait_until_fails`, and the
//! retry loop every wait is built on.

use std::time::{Duration, Instant};

use super::{Machine, MachineError};
use crate::agent::{Command, RunRequest, RunResult, Stream};

/// The NixOS driver's default limit for `execute` and the waits: 900 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);
/// First pause between attempts of a wait; it grows to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// A finished command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; 128+n when killed by signal n; 124 when killed at its timeout.
    pub status: i32,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// The command was killed at its timeout.
    pub timed_out: bool,
    /// Wall time in the node.
    pub duration: Duration,
}

impl Output {
    fn from_result(r: RunResult) -> Output {
        Output {
            status: if r.timed_out { 124 } else { r.status.code() },
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            timed_out: r.timed_out,
            duration: Duration::from_micros(r.micros),
        }
    }
}

impl Machine {
    /// Run a shell command (bash with `set -euo pipefail` and /etc/profile, as root) and return
    /// its status and output; the status is not checked. Starts the node when it is down.
    pub fn execute(&self, command: &str, timeout: Option<Duration>) -> Result<Output, MachineError> {
        let req = RunRequest {
            command: Command::Shell(command.to_string()),
            env: Default::default(),
            stdin: Vec::new(),
            timeout_ms: timeout.map(|t| t.as_millis().min(u64::MAX as u128) as u64),
            cwd: None,
        };
        let out = Output::from_result(self.run_request(req)?);
        if out.timed_out {
            self.log(&format!(
                "command `{command}` timed out after {}s and was killed",
                timeout.unwrap_or_default().as_secs_f64()
            ));
        }
        if !out.stderr.is_empty() {
            self.ctx.log.detail(&self.name, out.stderr.trim_end());
        }
        Ok(out)
    }

    /// Run a program (found through the login PATH) with `stdin` fed to it, for `hutch exec`
    /// from another terminal: its raw output goes to `output` as it comes, and its status is
    /// returned (the command line is logged); a cancelled call (`crate::cancel`) kills it.
    pub fn exec_argv(&self, argv: Vec<String>, stdin: Vec<u8>, output: &mut dyn FnMut(Stream, &[u8])) -> Result<RunResult, MachineError> {
        self.log(&format!("hutch exec: {}", argv.join(" ")));
        let req = RunRequest {
            command: Command::Argv(argv),
            env: Default::default(),
            stdin,
            timeout_ms: None,
            cwd: None,
        };
        let agent = self.agent()?;
        self.crash_checked(agent.run_streamed(req, output))
    }

    /// Send one command to the agent (starting the node when it is down); a node that died
    /// under it is reported as crashed.
    fn run_request(&self, req: RunRequest) -> Result<RunResult, MachineError> {
        let agent = self.agent()?;
        self.crash_checked(agent.run(req))
    }

    /// The agent's answer to a command, or the node's crash if it died under the command.
    fn crash_checked(&self, r: Result<RunResult, crate::agent::AgentError>) -> Result<RunResult, MachineError> {
        // A node that died under the command (out of memory) is a crashed node, whatever
        // the command's own status says.
        if let Some(reason) = self.control.died() {
            self.agent.lock().unwrap_or_else(|p| p.into_inner()).take();
            self.log(&format!("crashed: {reason}"));
            return Err(MachineError::Crashed {
                node: self.name.clone(),
                reason,
            });
        }
        r.map_err(|source| self.agent_err(source))
    }

    /// Run a command that must exit 0; returns its stdout, or fails with status and output.
    pub fn succeed(&self, command: &str, timeout: Option<Duration>) -> Result<String, MachineError> {
        self.log(&format!("must succeed: {command}"));
        let out = self.execute(command, timeout)?;
        if out.status != 0 {
            return Err(self.command_failed(command, out));
        }
        Ok(out.stdout)
    }

    /// Run a command that must fail; returns its stdout, or fails if it exited 0.
    pub fn fail(&self, command: &str, timeout: Option<Duration>) -> Result<String, MachineError> {
        self.log(&format!("must fail: {command}"));
        let out = self.execute(command, timeout)?;
        if out.status == 0 {
            return Err(MachineError::UnexpectedSuccess {
                node: self.name.clone(),
                command: command.to_string(),
                stdout: out.stdout,
            });
        }
        Ok(out.stdout)
    }

    /// Repeat a command until it exits 0 (returns its stdout) or `timeout` passes.
    pub fn wait_until_succeeds(&self, command: &str, timeout: Duration) -> Result<String, MachineError> {
        self.log(&format!("waiting for success: {command}"));
        let end = Instant::now() + timeout;
        self.retry(&format!("waiting for success: {command}"), timeout, |_| {
            let left = end.saturating_duration_since(Instant::now());
            let out = self.execute(command, Some(left.max(Duration::from_secs(1))))?;
            Ok(if out.status == 0 {
                Ok(out.stdout)
            } else {
                Err(Some(format!("exit code {}: {}{}", out.status, out.stdout, out.stderr)))
            })
        })
    }

    /// Repeat a command until it fails (returns its stdout) or `timeout` passes.
    pub fn wait_until_fails(&self, command: &str, timeout: Duration) -> Result<String, MachineError> {
        self.log(&format!("waiting for failure: {command}"));
        let end = Instant::now() + timeout;
        self.retry(&format!("waiting for failure: {command}"), timeout, |_| {
            let left = end.saturating_duration_since(Instant::now());
            let out = self.execute(command, Some(left.max(Duration::from_secs(1))))?;
            Ok(if out.status != 0 { Ok(out.stdout) } else { Err(Some(out.stdout)) })
        })
    }

    /// Call `attempt(last_try)` until it returns `Ok(Ok(value))`, pausing 20 ms growing to
    /// 500 ms between tries, for at most `timeout`. `Ok(Err(output))` means "not yet" (the
    /// output is kept for the timeout message); `Err` ends the wait at once.
    pub fn retry<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut attempt: impl FnMut(bool) -> Result<Result<T, Option<String>>, MachineError>,
    ) -> Result<T, MachineError> {
        let end = Instant::now() + timeout;
        let mut pause = FIRST_PAUSE;
        let mut progress = super::progress::Progress::new();
        loop {
            let last_try = Instant::now() >= end;
            let last = match attempt(last_try)? {
                Ok(v) => return Ok(v),
                Err(out) => out,
            };
            if let (Some(elapsed), false) = (progress.tick(), last_try) {
                self.still(what, elapsed, Some(timeout), last.as_deref());
            }
            if last_try {
                return Err(MachineError::TimedOut {
                    node: self.name.clone(),
                    what: what.to_string(),
                    after: timeout,
                    last,
                });
            }
            let now = Instant::now();
            self.sleep(pause.min(end.saturating_duration_since(now)))?;
            pause = (pause * 3 / 2).min(MAX_PAUSE);
        }
    }

    pub(crate) fn command_failed(&self, command: &str, out: Output) -> MachineError {
        MachineError::CommandFailed {
            node: self.name.clone(),
            command: command.to_string(),
            status: out.status,
            timed_out: out.timed_out,
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }
}
