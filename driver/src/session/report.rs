//! The outcome of a run: pass or fail (with the failing call, node, line and output), timings,
//! the summary printed at the end, and the exit codes the CLI maps them to.

use std::time::Duration;

use super::Session;
use crate::bridge::{ScriptReport, SubtestRecord};

/// `hutch test` exit code: the script passed.
pub const EXIT_PASSED: i32 = 0;
/// `hutch test` exit code: the script failed (or timed out, or was interrupted).
pub const EXIT_FAILED: i32 = 1;
/// `hutch test` exit code: the test file is invalid (`PlanError`).
pub const EXIT_BAD_TEST: i32 = 2;

/// How the report names an `--interactive` session that never ran the script.
pub const SESSION_ENDED: &str = "interactive session ended (script not run)";

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// The test's name.
    pub test: String,
    /// Pass or fail.
    pub outcome: Outcome,
    /// Wall time of the whole run, teardown included.
    pub duration: Duration,
    /// Subtests in the order they ended.
    pub subtests: Vec<SubtestRecord>,
    /// Per-node timings.
    pub nodes: Vec<NodeSummary>,
    /// Where logs and copied files are.
    pub output_dir: std::path::PathBuf,
}

/// Pass or fail.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The script ran to its end.
    Passed,
    /// An `--interactive` session ended (exit(), Ctrl-D) without running the script.
    SessionEnded,
    /// It did not.
    Failed(Failure),
}

/// Why a run failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The failing call, e.g. `client.succeed(["curl ..."])`, when a Machine call failed.
    pub call: Option<String>,
    /// The node of that call.
    pub node: Option<String>,
    /// The script line.
    pub line: Option<u32>,
    /// What went wrong, with command, status and output when a command failed.
    pub message: String,
    /// Python's traceback (empty for Rust tests).
    pub traceback: String,
}

impl Failure {
    /// One line: where and what.
    pub fn summary(&self) -> String {
        let first = self.message.lines().next().unwrap_or("");
        match self.line {
            Some(l) => format!("line {l}: {first}"),
            None => first.to_string(),
        }
    }

    /// The whole story: call, message (with output) and traceback.
    pub fn details(&self) -> String {
        let mut s = String::new();
        if let Some(l) = self.line {
            s += &format!("at line {l} of the test script\n");
        }
        if let Some(c) = &self.call {
            s += &format!("in {c}\n");
        }
        s += &self.message;
        if !self.traceback.is_empty() {
            s += "\n\n";
            s += &self.traceback;
        }
        s
    }
}

/// A node's timings.
#[derive(Debug, Clone)]
pub struct NodeSummary {
    /// The node.
    pub name: String,
    /// How long each boot took.
    pub boots: Vec<Duration>,
}

impl Report {
    /// 0 when passed (or an interactive session ended without running the script), 1 when
    /// failed.
    pub fn exit_code(&self) -> i32 {
        match self.outcome {
            Outcome::Passed | Outcome::SessionEnded => EXIT_PASSED,
            Outcome::Failed(_) => EXIT_FAILED,
        }
    }

    /// Whether the test passed.
    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Passed)
    }
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "..."
    }
}

/// `{"commands":["x"],"timeout":null}` as `"x"`; other parameters as `name=value`.
fn call_args(params: &str) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(params) else {
        return shorten(params, 300);
    };
    let mut parts = Vec::new();
    for (k, v) in &map {
        match (k.as_str(), v) {
            (_, serde_json::Value::Null) => {}
            ("commands", serde_json::Value::Array(list)) => parts.extend(list.iter().map(|c| shorten(&c.to_string(), 300))),
            _ => parts.push(format!("{k}={}", shorten(&v.to_string(), 300))),
        }
    }
    parts.join(", ")
}

pub(super) fn build(s: &Session, script: ScriptReport, duration: Duration) -> Report {
    let aborted = s.abort.reason();
    let failed_subtest = script.subtests.iter().find(|t| t.error.is_some());
    let outcome = match (aborted, script.failure, failed_subtest) {
        (Some(reason), f, _) => Outcome::Failed(Failure {
            call: None,
            node: None,
            line: f.as_ref().and_then(|f| f.line),
            message: format!("aborted: {reason}"),
            traceback: String::new(),
        }),
        (None, Some(f), _) => {
            let (call, node, message) = match f.call {
                Some(c) if c.method.is_empty() => (None, c.node, c.error),
                Some(c) => {
                    let name = match &c.node {
                        Some(n) => format!("{n}.{}", c.method),
                        None => c.method.clone(),
                    };
                    (Some(format!("{name}({})", call_args(&c.params))), c.node, c.error)
                }
                None => (None, None, format!("{}: {}", f.kind, f.message)),
            };
            Outcome::Failed(Failure {
                call,
                node,
                line: f.line,
                message,
                traceback: f.traceback,
            })
        }
        (None, None, Some(t)) => Outcome::Failed(Failure {
            call: None,
            node: None,
            line: None,
            message: format!("subtest {:?} failed: {}", t.name, t.error.clone().unwrap_or_default()),
            traceback: t.traceback.clone().unwrap_or_default(),
        }),
        (None, None, None) if script.script_not_run => Outcome::SessionEnded,
        (None, None, None) => Outcome::Passed,
    };
    Report {
        test: s.plan.name.clone(),
        outcome,
        duration,
        subtests: script.subtests,
        nodes: s
            .machines
            .iter()
            .map(|m| NodeSummary {
                name: m.name().to_string(),
                boots: m.boot_times(),
            })
            .collect(),
        output_dir: s.opts.output_dir.clone(),
    }
}

/// Log the summary and write the JUnit report.
pub(super) fn finish(s: &Session, r: &Report) {
    let log = &s.log;
    for n in &r.nodes {
        let boots: Vec<String> = n.boots.iter().map(|b| format!("{:.3}s", b.as_secs_f64())).collect();
        if boots.is_empty() {
            log.info(&format!("  {}: never started", n.name));
        } else {
            log.info(&format!("  {}: booted in {}", n.name, boots.join(", ")));
        }
    }
    for t in &r.subtests {
        let state = if t.error.is_some() { "FAILED" } else { "passed" };
        log.info(&format!("  subtest {:?}: {state} in {:.3}s", t.name, t.duration.as_secs_f64()));
    }
    match &r.outcome {
        Outcome::Passed => log.info(&format!("test {:?} passed in {:.3}s", r.test, r.duration.as_secs_f64())),
        Outcome::SessionEnded => log.info(&format!(
            "test {:?}: {SESSION_ENDED} after {:.3}s",
            r.test,
            r.duration.as_secs_f64()
        )),
        Outcome::Failed(f) => {
            log.info(&format!("test {:?} FAILED after {:.3}s", r.test, r.duration.as_secs_f64()));
            for line in f.details().lines() {
                log.info(&format!("  {line}"));
            }
        }
    }
    log.info(&format!("logs and copied files: {}", r.output_dir.display()));
    if let Some(path) = &s.opts.junit_xml {
        if let Err(e) = std::fs::write(path, super::junit::render(r)) {
            log.info(&format!("cannot write the JUnit report {}: {e}", path.display()));
        }
    }
}
