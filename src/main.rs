//! hutch: NixOS-style multi-machine integration tests in Linux namespaces.
//!
//! The binary parses arguments and calls the library crates; see `run` for `hutch run`.

mod run;

use clap::{Parser, Subcommand};

/// Command-line entry point.
#[derive(Parser)]
#[command(
    name = "hutch",
    version,
    about = "Run NixOS-style integration tests in Linux namespaces: no VM, no root needed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start one node: a command or an init as PID 1 in namespaces hutch makes itself.
    Run(run::RunArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run::main(args),
    };
    std::process::exit(code);
}
