//! `hutch bench`: start N nodes, repeatedly, and report where the start-up time goes.

use clap::Args;

/// Options of `hutch bench` (being built; see issue 8).
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The command each node runs, or the init's arguments with --boot.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Runs `hutch bench`; returns the process exit code.
pub fn main(args: BenchArgs) -> i32 {
    let _ = args;
    eprintln!("hutch bench: not built yet");
    crate::run::EXIT_HUTCH
}
