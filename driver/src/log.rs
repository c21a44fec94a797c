//! The run's log: lines prefixed by node name (coloured on a terminal) on stderr, the same
//! lines with timestamps in `<output>/log.txt`, and each node's own lines (console included)
//! in `<output>/<node>.log`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, IsTerminal, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// ANSI colours given to nodes in turn.
const PALETTE: &[&str] = &["36", "33", "35", "32", "34", "96", "93", "95", "92", "94"];

/// Where the run's messages go. Shared (`Arc`) by the session, the machines and the bridge.
pub struct Log {
    start: Instant,
    color: bool,
    terminal: bool,
    serial_stdout: AtomicBool,
    inner: Mutex<Inner>,
}

struct Inner {
    main: Option<File>,
    files: HashMap<String, File>,
    colors: HashMap<String, &'static str>,
    dir: Option<std::path::PathBuf>,
    next_color: usize,
}

impl Log {
    /// A log to stderr (coloured when stderr is a terminal and `color` allows) and, when
    /// `dir` is given, to files in it.
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
            color: color.unwrap_or_else(|| io::stderr().is_terminal()),
            terminal: true,
            serial_stdout: AtomicBool::new(true),
            inner: Mutex::new(Inner {
                main,
                files: HashMap::new(),
                colors: HashMap::new(),
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

    /// A line the node printed on its console (`server # ...`).
    pub fn console(&self, node: &str, line: &str) {
        let show = self.serial_stdout.load(Ordering::Relaxed);
        self.write(Some(node), &format!("# {line}"), show);
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
            let text = each_line(msg, |out, line| match node {
                Some(n) => writeln!(out, "[{t:9.3}] {n}{sep}{line}"),
                None => writeln!(out, "[{t:9.3}] {line}"),
            });
            let _ = f.write_all(text.as_bytes());
        }
        drop(g);
        if !(show && self.terminal) {
            return;
        }
        let text = each_line(msg, |out, line| match (node, color, self.color) {
            (Some(n), Some(c), true) => writeln!(out, "\x1b[{c}m{n}\x1b[0m{sep}{line}"),
            (Some(n), _, _) => writeln!(out, "{n}{sep}{line}"),
            (None, _, true) => writeln!(out, "\x1b[1m{line}\x1b[0m"),
            (None, _, false) => writeln!(out, "{line}"),
        });
        let _ = io::stderr().lock().write_all(text.as_bytes());
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
