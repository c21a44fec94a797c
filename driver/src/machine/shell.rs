//! `shell_interact()`: one shell session in the node for the user of `hutch test
//! --interactive`. On a terminal, the terminal itself is handed to root's login shell on a
//! fresh pty in the node (`crate::terminal`, shared with `hutch shell`); from a pipe, one
//! long-lived `sh` takes the script's lines one by one, and a marker line after each says
//! where its output ends and how it ended. Either way `cd` and `export` carry over between
//! lines and stderr is shown.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use super::{Machine, MachineError};
use crate::agent::{AgentClient, ExitStatus};
use crate::terminal::{self, Event, Keys};

/// A line-by-line session's program: a `read` loop takes the pty's lines (echo off) into a
/// non-interactive `sh` (no prompts, no line editor), which writes to the pty. A shell loop,
/// not `cat`: a `cat` may hold lines back until its buffer fills. It says
/// `LINE_SHELL_READY` once the terminal is set: stty flushes what was typed before.
const LINE_SHELL: &str = "stty -echo -onlcr 2>/dev/null; echo __hutch_ready; while IFS= read -r l; do printf '%s\\n' \"$l\"; done | sh";
/// What `LINE_SHELL` prints when it takes input.
const LINE_SHELL_READY: &str = "__hutch_ready";
/// The most output one line may print before it is cut (the rest is still read and dropped).
const LINE_OUTPUT_CAP: usize = 16 << 20;

/// Keystrokes and window sizes for a pty session, straight to the agent.
struct PtyKeys {
    agent: Arc<AgentClient>,
    session: u64,
}

impl Keys for PtyKeys {
    fn input(&self, data: Vec<u8>) -> bool {
        self.agent.pty_input(self.session, data).is_ok()
    }
    fn resize(&self, rows: u16, cols: u16) -> bool {
        self.agent.pty_resize(self.session, rows, cols).is_ok()
    }
}

impl Machine {
    /// Hands the user's terminal to root's login shell on a fresh pty in the node until it
    /// exits (`exit`, Ctrl-D); the terminal's settings come back after. Returns the shell's
    /// exit status.
    pub fn shell_interact(&self) -> Result<i32, MachineError> {
        let agent = self.agent()?;
        let (rows, cols) = terminal::window_size().unwrap_or((24, 80));
        let session = agent
            .pty_open(Vec::new(), terminal::term(), rows, cols)
            .map_err(|e| self.agent_err(e))?;
        self.log("shell_interact: a login shell in the node; `exit` or Ctrl-D returns to the REPL");
        let keys = Arc::new(PtyKeys {
            agent: Arc::clone(&agent),
            session,
        });
        let ended = terminal::relay(keys, || match agent.pty_output(session) {
            Ok((data, None)) => Ok(Some(Event::Output(data))),
            Ok((_, Some(status))) => Ok(Some(Event::Exited(status))),
            Err(e) => Err(std::io::Error::other(e)),
        });
        let _ = agent.pty_close(session);
        match ended {
            Ok(Some(status)) => Ok(status.code()),
            Ok(None) => Ok(-1),
            Err(e) => Err(MachineError::Invalid {
                node: self.name.clone(),
                message: format!("shell_interact: {e}"),
            }),
        }
    }

    /// Starts a line-by-line shell session (`shell_line`), for a script whose input is not a
    /// terminal; returns its id.
    pub fn shell_open(&self) -> Result<u64, MachineError> {
        let agent = self.agent()?;
        let command = vec!["/bin/sh".into(), "-c".into(), LINE_SHELL.into()];
        let session = agent.pty_open(command, "dumb".into(), 24, 200).map_err(|e| self.agent_err(e))?;
        self.read_until(&agent, session, LINE_SHELL_READY)?;
        Ok(session)
    }

    /// Reads session `session`'s output until it has printed `end` and a newline after it;
    /// returns what came before `end` (its first `LINE_OUTPUT_CAP` bytes, `\r` removed) and
    /// the line after it. A cancelled call hangs the session up.
    fn read_until(&self, agent: &AgentClient, session: u64, end: &str) -> Result<(String, String), MachineError> {
        let mut kept: Vec<u8> = Vec::new();
        // The bytes not yet known to be output: where `end` and its line are looked for. It
        // stays short, so a flood costs no more than reading it.
        let mut window: Vec<u8> = Vec::new();
        loop {
            if let Err(e) = self.aborted() {
                let _ = agent.pty_close(session);
                return Err(e);
            }
            let (data, ended) = agent.pty_output(session).map_err(|e| self.agent_err(e))?;
            window.extend_from_slice(&data);
            let at = find(&window, end.as_bytes());
            if let Some(at) = at {
                let rest = &window[at + end.len()..];
                if let Some(nl) = rest.iter().position(|b| *b == b'\n') {
                    keep(&mut kept, &window[..at]);
                    return Ok((text(&kept), String::from_utf8_lossy(&rest[..nl]).into_owned()));
                }
            }
            // All but what could be the start of `end` is output.
            let known = match at {
                Some(at) => at,
                None => window.len().saturating_sub(end.len()),
            };
            keep(&mut kept, &window[..known]);
            window.drain(..known);
            if let Some(status) = ended {
                let how = match status {
                    ExitStatus::Code(c) => format!("exit status {c}"),
                    ExitStatus::Signal(s) => format!("signal {s}"),
                };
                keep(&mut kept, &window);
                return Err(MachineError::Invalid {
                    node: self.name.clone(),
                    message: format!("the shell session ended ({how}); {}", text(&kept).trim_end()),
                });
            }
        }
    }

    /// Runs one line in session `session` (from `shell_open`): what it printed (stdout and
    /// stderr, as the terminal got them) and its exit status. A cancelled call (Ctrl-C)
    /// hangs the session up.
    pub fn shell_line(&self, session: u64, line: &str) -> Result<(String, i32), MachineError> {
        let agent = self.agent()?;
        let marker = format!(
            "__hutch_done_{:016x}",
            std::collections::hash_map::RandomState::new().build_hasher().finish()
        );
        let input = format!("{line}\nprintf '\\n{marker} %d\\n' \"$?\"\n");
        agent.pty_input(session, input.into_bytes()).map_err(|e| self.agent_err(e))?;
        let end = format!("\n{marker} ");
        let (mut out, after) = self.read_until(&agent, session, &end)?;
        let status = after.trim().parse().unwrap_or(-1);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        Ok((out, status))
    }

    /// Ends a line-by-line session.
    pub fn shell_close(&self, session: u64) -> Result<(), MachineError> {
        let agent = self.agent()?;
        agent.pty_close(session).map_err(|e| self.agent_err(e))
    }
}

/// Adds `more` to a line's output, up to `LINE_OUTPUT_CAP` (the rest is dropped).
fn keep(kept: &mut Vec<u8>, more: &[u8]) {
    let room = LINE_OUTPUT_CAP.saturating_sub(kept.len());
    kept.extend_from_slice(&more[..more.len().min(room)]);
}

/// A session's output as text, without the pty's `\r`.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
