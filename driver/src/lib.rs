#![warn(missing_docs)]
//! hutch's test driver: test files (`plan`), the in-node agent (`agent`), the NixOS-compatible
//! Machine API (`machine`), the Python script bridge (`bridge`) and a test run (`session`).
//!
//! # Wiring a run
//! 1. `plan::TestPlan::load(path)`: a `PlanError` (every problem, with file, key and fix) maps
//!    to exit code `session::EXIT_BAD_TEST`.
//! 2. One `machine::NodeControl` per `plan.nodes` entry, built by the runtime from the
//!    `NodePlan` (root, VLANs, memory, files, env, boot, hostname).
//! 3. `session::Session::new(&plan, controls, options)?.run()` runs the script; the returned
//!    `Report` has `exit_code()` (0 passed, 1 failed) and the failing call, node, line and output.
//!    `Session::abort_handle()` lets a Ctrl-C handler stop the run; `run_rust` runs a Rust test.
//!
//! # The agent inside a node
//! The runtime's PID-1 process forks a child just before it execs the init; the child calls
//! `agent::serve(stream)` on its end of a socketpair and `_exit`s when it returns. The driver
//! end comes back from `NodeControl::start`. The agent uses nothing from the node's filesystem
//! for itself (it is the already-loaded runtime binary), so it serves from the first moment,
//! before the init has made /etc, /bin or /run.

pub mod agent;
pub mod bridge;
pub mod cancel;
pub mod log;
pub mod machine;
pub mod plan;
pub mod safe_text;
pub mod session;
pub mod terminal;
