//! hutch: NixOS-style multi-machine integration tests in Linux namespaces.
//!
//! The binary parses arguments and calls the library crates; see `run` for `hutch run`.

mod bench_cmd;
mod node;
mod run;
mod spawner;
mod test_cmd;
mod userns;

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
    Run(Box<run::RunArgs>),
    /// Run a test: its nodes on virtual LANs and its Python test script (NixOS driver API).
    Test(test_cmd::TestArgs),
    /// Start N nodes, repeatedly, and report start-up latency per phase, throughput and memory.
    Bench(bench_cmd::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run::main(*args),
        Command::Test(args) => test_cmd::main(args),
        Command::Bench(args) => bench_cmd::main(args),
    };
    std::process::exit(code);
}
