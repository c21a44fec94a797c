//! `hutch list`, `hutch exec`, `hutch logs`, `hutch stop`: reach the nodes of a test that runs
//! in another terminal, through its registry entry and control socket (`registry`, `control`).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::control::{ask, open, ControlReply, ControlRequest, NodeRow};
use crate::registry::{self, Entry};
use hutch_driver::agent::{read_frame, Stream};

/// Which running test: by name when several run.
#[derive(Args, Debug)]
pub struct Select {
    /// The test's name (`[test] name`), when more than one test runs.
    #[arg(long = "test", value_name = "NAME")]
    test: Option<String>,
}

/// Options of `hutch list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    select: Select,
}

/// Options of `hutch exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    select: Select,
    /// The node.
    node: String,
    /// The program and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Options of `hutch logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    select: Select,
    /// The node.
    node: String,
    /// Keep printing what the node logs until the test ends.
    #[arg(short, long)]
    follow: bool,
}

/// Options of `hutch stop`.
#[derive(Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    select: Select,
    /// A node, or a running test's name (stops the whole test).
    target: String,
}

/// The exit code when nothing matches or the test cannot be reached.
const EXIT_NOT_FOUND: i32 = 1;

/// The exit code of a command run by a `hutch` that reaches a running test.
pub(crate) fn finish(r: Result<i32>) -> i32 {
    r.unwrap_or_else(|e| {
        eprintln!("hutch: {e:#}");
        EXIT_NOT_FOUND
    })
}

/// The runs selected by `--test` (all without it); an error when none runs.
fn runs(select: &Select) -> Result<Vec<Entry>> {
    let all = registry::live(&registry::runtime_dir()?);
    if all.is_empty() {
        bail!("no test of yours is running (start one with `hutch test FILE`)");
    }
    let Some(name) = &select.test else {
        return Ok(all);
    };
    let chosen: Vec<Entry> = all.iter().filter(|e| &e.info.test == name).cloned().collect();
    if chosen.is_empty() {
        bail!("no running test is named `{name}` (running: {})", names(&all));
    }
    Ok(chosen)
}

fn names(runs: &[Entry]) -> String {
    runs.iter().map(|e| e.info.test.as_str()).collect::<Vec<_>>().join(", ")
}

fn nodes_of(run: &Entry) -> Result<Vec<NodeRow>> {
    match ask(&run.socket(), &ControlRequest::List)? {
        ControlReply::Nodes { nodes } => Ok(nodes),
        other => bail!("unexpected reply from test `{}`: {other:?}", run.info.test),
    }
}

/// The one selected run that has node `node`.
pub(crate) fn run_with_node(select: &Select, node: &str) -> Result<Entry> {
    let mut with: Vec<Entry> = runs(select)?
        .into_iter()
        .filter(|r| nodes_of(r).is_ok_and(|ns| ns.iter().any(|n| n.name == node)))
        .collect();
    match with.len() {
        0 => bail!("no running test has a node `{node}`; `hutch list` shows them"),
        1 => Ok(with.remove(0)),
        _ => bail!(
            "several running tests have a node `{node}` ({}); choose one with --test NAME",
            names(&with)
        ),
    }
}

/// `hutch list`: every running test of this user and its nodes.
pub fn list(args: ListArgs) -> i32 {
    finish((|| {
        let runs = match runs(&args.select) {
            Ok(r) => r,
            Err(e) if args.select.test.is_none() => {
                eprintln!("hutch: {e:#}");
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        println!(
            "{:<20} {:<16} {:<6} {:>8} {:>8}  ADDRESSES",
            "TEST", "NODE", "STATE", "PID", "UPTIME"
        );
        for run in &runs {
            for n in nodes_of(run)? {
                let pid = n.pid.map_or("-".into(), |p| p.to_string());
                let up = n.uptime_secs.map_or("-".into(), |s| format!("{s}s"));
                let addrs = if n.addresses.is_empty() {
                    "-".into()
                } else {
                    n.addresses.join(",")
                };
                println!("{:<20} {:<16} {:<6} {pid:>8} {up:>8}  {addrs}", run.info.test, n.name, n.state);
            }
        }
        Ok(0)
    })())
}

/// `hutch exec NODE -- CMD`: the command's output on ours as it comes (its stderr on our
/// stderr), its exit status as ours.
pub fn exec(args: ExecArgs) -> i32 {
    finish((|| {
        let run = run_with_node(&args.select, &args.node)?;
        let mut stdin = Vec::new();
        // A terminal is not read (the command would wait for its end); a pipe or file is.
        if !std::io::stdin().is_terminal() {
            std::io::stdin().read_to_end(&mut stdin).context("reading standard input")?;
        }
        let req = ControlRequest::Exec {
            node: args.node.clone(),
            argv: args.command.clone(),
            stdin,
        };
        let (mut reply, mut conn) = open(&run.socket(), &req)?;
        loop {
            match reply {
                ControlReply::Output { stream, data } => {
                    let _ = match stream {
                        Stream::Stdout => std::io::stdout().write_all(&data).and_then(|()| std::io::stdout().flush()),
                        Stream::Stderr => std::io::stderr().write_all(&data),
                    };
                }
                ControlReply::Ran { status } => return Ok(status.code()),
                ControlReply::Error { message } => bail!("{}: {message}", args.node),
                other => bail!("unexpected reply: {other:?}"),
            }
            let Some(frame) = read_frame(&mut conn).context("reading the command's output")? else {
                bail!(
                    "{}: the test closed the connection before the command ended (the test or the node stopped)",
                    args.node
                );
            };
            reply = serde_json::from_slice(&frame).context("the test's reply")?;
        }
    })())
}

/// `hutch logs NODE [-f]`: the node's log file of the running test (console and driver lines).
pub fn logs(args: LogsArgs) -> i32 {
    finish((|| {
        let run = run_with_node(&args.select, &args.node)?;
        let path: PathBuf = run.info.output_dir.join(format!("{}.log", args.node));
        let mut file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
            if n > 0 {
                pending.extend_from_slice(&buf[..n]);
                print_lines(&mut pending, color);
                continue;
            }
            if !args.follow || !run.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if !pending.is_empty() {
            pending.push(b'\n');
            print_lines(&mut pending, color);
        }
        Ok(0)
    })())
}

/// Prints the whole lines of `pending` through the terminal-safe filter (a node's bytes are
/// untrusted), keeping a partial last line for later.
fn print_lines(pending: &mut Vec<u8>, color: bool) {
    let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
        return;
    };
    let mut out = std::io::stdout().lock();
    for line in pending[..end].split(|b| *b == b'\n') {
        let _ = writeln!(out, "{}", hutch_driver::safe_text::line(line, color));
    }
    pending.drain(..=end);
}

/// `hutch stop NODE|TEST`: a node is killed (the test goes on, and sees it down); a test is
/// aborted (its nodes stopped, its report written).
pub fn stop(args: StopArgs) -> i32 {
    finish((|| {
        let all = runs(&args.select)?;
        let tests: Vec<&Entry> = all.iter().filter(|e| e.info.test == args.target).collect();
        let (run, node) = match tests.as_slice() {
            [one] => ((*one).clone(), None),
            [] => (run_with_node(&args.select, &args.target)?, Some(args.target.clone())),
            _ => bail!(
                "several runs of test `{}` are running; stop them by pid (`hutch list`) or one node each",
                args.target
            ),
        };
        match ask(&run.socket(), &ControlRequest::Stop { node: node.clone() })? {
            ControlReply::Done => {
                if node.is_none() {
                    // Wait (up to a minute) for the test to end, so a script can rely on it.
                    for _ in 0..600 {
                        if !run.dir.exists() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                Ok(0)
            }
            ControlReply::Error { message } => bail!("{message}"),
            other => bail!("unexpected reply: {other:?}"),
        }
    })())
}
