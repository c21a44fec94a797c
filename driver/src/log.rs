//! The run's log: lines prefixed by node name (coloured on a terminal) on stderr, the same
//! lines with timestamps in `<output>/log.txt`, and each node's own lines (console included)
//! in `<output>/<node>.log`. What reaches stderr and log.txt is made safe first (`safe_text`:
//! control characters shown escaped, colour only on a terminal without `NO_COLOR`); the
//! node's file keeps its console's raw bytes. A node's console is logged up to a cap (default
//! `DEFAULT_CONSOLE_CAP`), then dropped with one note saying so.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, IsTerminal, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::safe_text;

/// How many bytes of a node's console are logged by default before the rest is dropped.
pub const DEFAULT_CONSOLE_CAP: u64 = 256 << 20;

/// ANSI colours given to nodes in turn.
const PALETTE: &[&str] = &["36", "33", "35", "32", "34", "96", "93", "95", "92", "94"];

/// Where the run's messages go. Shared (`Arc`) by the session, the machines and the bridge.
pub struct Log {
    start: Instant,
    color: bool,
    terminal: bool,
    serial_stdout: AtomicBool,
    console_cap: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    main: Option<File>,
    files: HashMap<String, File>,
    colors: HashMap<String, &'static str>,
    /// Console bytes logged per node, against `console_cap`.
    console_bytes: HashMap<String, u64>,
    dir: Option<std::path::PathBuf>,
    next_color: usize,
}

impl Log {
    /// A log to stderr (coloured when `color` says so; by default when stderr is a terminal
    /// and `NO_COLOR` is unset or empty) and, when `dir` is given, to files in it.
    pub fn new(dir: Option<&Path>, color: Option<bool>) -> io::Result<Log> {
        let main = match dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                Some(File::create(d.join("log.txt"))?)
            }
            None => None,
        };
        Ok(Log {
            start: Instant::now(),
            color: color.unwrap_or_else(|| io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())),
            terminal: true,
            serial_stdout: AtomicBool::new(true),
            console_cap: DEFAULT_CONSOLE_CAP,
            inner: Mutex::new(Inner {
                main,
                files: HashMap::new(),
                colors: HashMap::new(),
                console_bytes: HashMap::new(),
                dir: dir.map(Path::to_path_buf),
                next_color: 0,
            }),
        })
    }

    /// A log that writes only files (or nothing): for tests and embedding.
    pub fn quiet(dir: Option<&Path>) -> io::Result<Log> {
        let mut l = Log::new(dir, Some(false))?;
        l.terminal = false;
        Ok(l)
    }

    /// The same log with another cap on the console bytes each node's log file holds.
    pub fn with_console_cap(mut self, bytes: u64) -> Log {
        self.console_cap = bytes;
        self
    }

    /// Time since the log was made.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether console lines are printed on the terminal (`serial_stdout_on/off`).
    pub fn set_serial_stdout(&self, on: bool) {
        self.serial_stdout.store(on, Ordering::Relaxed);
    }

    /// A driver-level message.
    pub fn info(&self, msg: &str) {
        self.write(None, msg, true);
    }

    /// A message about a node (`server: must succeed: ...`).
    pub fn node(&self, node: &str, msg: &str) {
        self.write(Some(node), msg, true);
    }

    /// Detail kept in the log files only (a command's stderr, each attempt of a wait).
    pub fn detail(&self, node: &str, msg: &str) {
        self.write(Some(node), msg, false);
    }

    /// Lines the node printed on its console (`server # ...`), raw bytes without newlines:
    /// kept raw in the node's file, made safe for log.txt and the terminal, all in one write
    /// per sink. Past the node's cap, lines are dropped and one note says so.
    pub fn console(&self, node: &str, lines: &[Vec<u8>]) {
        let t = self.start.elapsed().as_secs_f64();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock, and the terminal written under it too: once the console is
        // turned off and a message logged after that, no console line follows that message.
        let show = self.serial_stdout.load(Ordering::Relaxed) && self.terminal;
        let used = g.console_bytes.get(node).copied().unwrap_or(0);
        if used > self.console_cap {
            return;
        }
        let color = g.color(node);
        let (mut raw, mut main, mut term) = (Vec::new(), String::new(), String::new());
        let mut take = 0;
        for l in lines {
            let len = raw.len();
            let _ = write!(raw, "[{t:9.3}] # ");
            raw.extend_from_slice(l);
            raw.push(b'\n');
            if used + raw.len() as u64 > self.console_cap {
                raw.truncate(len);
                break;
            }
            take += 1;
            let _ = writeln!(main, "[{t:9.3}] {node} # {}", safe_text::line(l, false));
            if show && self.color {
                let _ = writeln!(term, "\x1b[{color}m{node}\x1b[0m # {}", safe_text::line(l, true));
            } else if show {
                let _ = writeln!(term, "{node} # {}", safe_text::line(l, false));
            }
        }
        // Past the cap, the count stays above it: nothing more is logged.
        let used = if take < lines.len() {
            self.console_cap + 1
        } else {
            used + raw.len() as u64
        };
        g.console_bytes.insert(node.to_string(), used);
        if let Some(f) = g.node_file(node) {
            let _ = f.write_all(&raw);
        }
        if let Some(f) = g.main.as_mut() {
            let _ = f.write_all(main.as_bytes());
        }
        if !term.is_empty() {
            let _ = io::stderr().lock().write_all(term.as_bytes());
        }
        drop(g);
        if take < lines.len() {
            self.node(
                node,
                &format!(
                    "the console passed its log cap of {} MiB: the rest of it is not logged (hutch test --console-log-max SIZE)",
                    self.console_cap >> 20
                ),
            );
        }
    }

    fn write(&self, node: Option<&str>, msg: &str, show: bool) {
        let t = self.start.elapsed().as_secs_f64();
        let sep = if msg.starts_with('#') { " " } else { ": " };
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let color = node.map(|n| g.color(n));
        // Each sink gets the whole message in one write: a write per formatted fragment cost
        // dozens of system calls per line, on the path of every command a script runs.
        if let Some(f) = node.and_then(|n| g.node_file(n)) {
            let _ = f.write_all(each_line(msg, |out, line| writeln!(out, "[{t:9.3}] {line}")).as_bytes());
        }
        if let Some(f) = g.main.as_mut() {
            let text = each_line(msg, |out, line| {
                let line = safe_text::line(line.as_bytes(), false);
                match node {
                    Some(n) => writeln!(out, "[{t:9.3}] {n}{sep}{line}"),
                    None => writeln!(out, "[{t:9.3}] {line}"),
                }
            });
            let _ = f.write_all(text.as_bytes());
        }
        if !(show && self.terminal) {
            return;
        }
        // Messages may quote node output (a failed command's): never raw on the terminal.
        let text = each_line(msg, |out, line| {
            let line = safe_text::line(line.as_bytes(), self.color);
            match (node, color, self.color) {
                (Some(n), Some(c), true) => writeln!(out, "\x1b[{c}m{n}\x1b[0m{sep}{line}"),
                (Some(n), _, _) => writeln!(out, "{n}{sep}{line}"),
                (None, _, true) => writeln!(out, "\x1b[1m{line}\x1b[0m"),
                (None, _, false) => writeln!(out, "{line}"),
            }
        });
        // Still under the lock: the terminal shows messages and console lines in log order.
        let _ = io::stderr().lock().write_all(text.as_bytes());
        drop(g);
    }
}

/// `msg`, each of its lines formatted by `format`, as one string.
fn each_line(msg: &str, format: impl Fn(&mut String, &str) -> std::fmt::Result) -> String {
    let mut out = String::with_capacity(msg.len() + 32);
    for line in msg.lines() {
        let _ = format(&mut out, line);
    }
    out
}

impl Inner {
    /// The node's colour, given in turn on first use.
    fn color(&mut self, node: &str) -> &'static str {
        let next = &mut self.next_color;
        self.colors.entry(node.to_string()).or_insert_with(|| {
            *next += 1;
            PALETTE[(*next - 1) % PALETTE.len()]
        })
    }

    /// The node's log file, created on first use when the log has a directory.
    fn node_file(&mut self, node: &str) -> Option<&mut File> {
        if !self.files.contains_key(node) {
            let f = File::create(self.dir.as_ref()?.join(format!("{node}.log"))).ok()?;
            self.files.insert(node.to_string(), f);
        }
        self.files.get_mut(node)
    }
}
