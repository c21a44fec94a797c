//! hutch: NixOS-style multi-machine integration tests in Linux namespaces.
//!
//! The binary parses arguments and calls the library crates; see `run` for `hutch run`.

mod attach_cmd;
mod bench_cmd;
mod control;
mod disks;
mod doctor_cmd;
mod node;
mod publish;
mod registry;
mod run;
mod run_relay;
mod shell_cmd;
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
    /// What this user has and lacks for hutch, with the fix for each (exit 1: something needed is missing).
    Doctor(doctor_cmd::DoctorArgs),
    /// Your running tests and their nodes: test, node, state, pid, uptime, addresses.
    List(attach_cmd::ListArgs),
    /// Run a command in a node of a running test (through its agent); its exit status is ours.
    Exec(attach_cmd::ExecArgs),
    /// A login shell (or `-- CMD`) on a fresh pty in a node of a running test.
    Shell(shell_cmd::ShellArgs),
    /// Print a node's log of a running test (`-f`: follow it until the test ends).
    Logs(attach_cmd::LogsArgs),
    /// Stop a node of a running test, or a whole running test.
    Stop(attach_cmd::StopArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(usage_error(e)),
    };
    let code = match cli.command {
        Command::Run(args) => run::main(*args),
        Command::Test(args) => test_cmd::main(args),
        Command::Bench(args) => bench_cmd::main(args),
        Command::Doctor(args) => doctor_cmd::main(args),
        Command::List(args) => attach_cmd::list(args),
        Command::Exec(args) => attach_cmd::exec(args),
        Command::Shell(args) => shell_cmd::main(args),
        Command::Logs(args) => attach_cmd::logs(args),
        Command::Stop(args) => attach_cmd::stop(args),
    };
    std::process::exit(code);
}

/// Help and version print as usual; a usage error is one line naming the problem, with the
/// exit code of the subcommand's own bad input (125 for `run`, 2 otherwise).
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() { 2 } else { 0 };
    }
    let text = e.render().to_string();
    // The message proper: the lines before clap's blank line and usage.
    let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let first = first.join(" ");
    let first = first.trim_start_matches("error: ");
    // clap's suggestion for a misspelt subcommand or flag ("a similar subcommand exists").
    let tip = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tip: "))
        .find(|t| t.contains("similar"))
        .map(|t| format!("; did you mean {}? See hutch --help", t.rsplit(": ").next().unwrap_or(t).trim()))
        .unwrap_or_else(|| "; see hutch --help".into());
    eprintln!("hutch: {first}{tip}");
    if std::env::args().nth(1).as_deref() == Some("run") {
        run::EXIT_HUTCH
    } else {
        2
    }
}
