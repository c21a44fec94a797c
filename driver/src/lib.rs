#![warn(missing_docs)]
//! hutch's test driver: test files (`plan`), the in-node agent (`agent`), the NixOS-compatible
//! Machine API (`machine`), the Python script bridge (`bridge`) and a test run (`session`).

pub mod agent;
pub mod bridge;
pub mod log;
pub mod machine;
pub mod plan;
pub mod session;
