//! What `hutch run` relays between a node and the user: the console as sanitised lines when
//! nobody types at it, or, on a terminal (`-t`, or the console of `--boot`), the node's
//! terminal both ways: its bytes as printed, the user's keys as typed, the window's size.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::Context;
use hutch_driver::machine::LineSplitter;
use hutch_driver::terminal::{window_size, Escape, Saved};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The console on its way out: split into lines (cut at 64 KiB), each made safe for stdout
/// (`hutch_driver::safe_text`: escapes shown, colour only on a terminal without `NO_COLOR`)
/// and written raw to `--console-log`, ending in a plain `\n` (never `\r\r\n`). Relayed to a
/// terminal session (`to_terminal`), the bytes go to stdout as they came, and the log still
/// gets lines.
pub struct Relay<'a> {
    lines: LineSplitter,
    color: bool,
    to_terminal: bool,
    log: Option<&'a mut File>,
}

impl<'a> Relay<'a> {
    /// A relay to stdout (raw when `to_terminal`), and to `log` when given.
    pub fn new(log: Option<&'a mut File>, to_terminal: bool) -> Relay<'a> {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Relay {
            lines: LineSplitter::default(),
            color: std::io::stdout().is_terminal() && !no_color,
            to_terminal,
            log,
        }
    }

    fn write(&mut self, lines: &[Vec<u8>]) {
        let (mut out, mut raw) = (String::new(), Vec::new());
        for l in lines {
            out.push_str(&hutch_driver::safe_text::line(l, self.color));
            out.push('\n');
            let end = l.iter().rposition(|&b| b != b'\r').map_or(0, |i| i + 1);
            raw.extend_from_slice(&l[..end]);
            raw.push(b'\n');
        }
        if !self.to_terminal {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
        }
        if let Some(f) = self.log.as_mut() {
            let _ = f.write_all(&raw);
        }
    }

    fn bytes(&mut self, data: &[u8]) {
        if self.to_terminal {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(data);
            let _ = stdout.flush();
            if self.log.is_none() {
                return;
            }
        }
        let lines = self.lines.split(data);
        self.write(&lines);
    }

    /// The node is gone: its unfinished last line too.
    pub fn finish(&mut self) {
        if let Some(rest) = self.lines.rest() {
            self.write(&[rest]);
        }
    }

    /// Relays what the node printed on `fd`; false once its terminal is gone.
    pub fn relay(&mut self, fd: BorrowedFd, buf: &mut [u8]) -> bool {
        match nix::unistd::read(fd, buf) {
            Ok(0) | Err(Errno::EIO) => false,
            Ok(n) => {
                self.bytes(&buf[..n]);
                true
            }
            Err(Errno::EAGAIN | Errno::EINTR) => true,
            Err(_) => false,
        }
    }

    /// Relays what is left on `fd` without waiting.
    pub fn drain(&mut self, fd: BorrowedFd, buf: &mut [u8]) {
        loop {
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) || !self.relay(fd, buf) {
                break;
            }
        }
    }
}

/// The user's side of a terminal session with a node: their keys go to the node's terminal
/// (held back while it is full, so a node that does not read cannot stall its output), the
/// window's size follows theirs, and Ctrl-] three times within a second asks to stop the node.
pub struct Session {
    /// The user's terminal in raw mode, when stdin is one.
    raw: Option<Saved>,
    escape: Escape,
    /// Stdin has not ended.
    pub stdin_open: bool,
    /// Keys read but not yet taken by the node's terminal.
    pending: Vec<u8>,
}

/// What the user's keys asked for.
pub enum Keys {
    /// Nothing more than typing.
    Typed,
    /// The escape: stop the node.
    Escape,
}

impl Session {
    /// Starts a session: the user's terminal (if stdin is one) in raw mode until it is dropped.
    pub fn start() -> anyhow::Result<Session> {
        let raw = match std::io::stdin().is_terminal() {
            true => Some(Saved::raw().context("putting the terminal in raw mode")?),
            false => None,
        };
        Ok(Session {
            raw,
            escape: Escape::default(),
            stdin_open: true,
            pending: Vec::new(),
        })
    }

    /// Says something to the user: `hutch: ` and a line that ends right in raw mode too.
    pub fn say(&self, text: &str) {
        let end = if self.raw.is_some() { "\r\n" } else { "\n" };
        let _ = write!(std::io::stderr(), "hutch: {text}{end}");
    }

    /// Gives the node's terminal (its master, `master`) the user's window size, and makes it
    /// end lines as a terminal does (`\r\n`): a console is made raw for logs.
    pub fn attach(&self, master: BorrowedFd) {
        if let Some((rows, cols)) = window_size() {
            let _ = hutch_runtime::set_window_size(master, rows, cols);
        }
        if let Ok(mut t) = nix::sys::termios::tcgetattr(master) {
            use nix::sys::termios::OutputFlags;
            t.output_flags.insert(OutputFlags::OPOST | OutputFlags::ONLCR);
            let _ = nix::sys::termios::tcsetattr(master, nix::sys::termios::SetArg::TCSANOW, &t);
        }
        // Writes that would block are held back (see `flush`), never waited for.
        if let Ok(flags) = nix::fcntl::fcntl(master, nix::fcntl::F_GETFL) {
            let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            let _ = nix::fcntl::fcntl(master, nix::fcntl::F_SETFL(flags));
        }
    }

    /// The window changed size (SIGWINCH): the node's terminal follows.
    pub fn resized(&self, master: BorrowedFd) {
        if let Some((rows, cols)) = window_size() {
            let _ = hutch_runtime::set_window_size(master, rows, cols);
        }
    }

    /// Whether stdin should be read now: it is open and the node took what came before.
    pub fn wants_keys(&self) -> bool {
        self.stdin_open && self.pending.is_empty()
    }

    /// Whether keys wait for room in the node's terminal.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Reads what the user typed and passes it on to `master`.
    pub fn keys(&mut self, master: BorrowedFd) -> Keys {
        let mut buf = [0u8; 4096];
        match nix::unistd::read(std::io::stdin().as_fd(), &mut buf) {
            Ok(0) => self.stdin_open = false,
            Ok(n) => {
                if self.raw.is_some() && self.escape.typed(&buf[..n]) {
                    return Keys::Escape;
                }
                self.pending.extend_from_slice(&buf[..n]);
                self.flush(master);
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => self.stdin_open = false,
        }
        Keys::Typed
    }

    /// Writes held-back keys as far as the node's terminal takes them.
    pub fn flush(&mut self, master: BorrowedFd) {
        while !self.pending.is_empty() {
            match nix::unistd::write(master, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                // The node's terminal is gone: nobody will read them.
                Err(_) => self.pending.clear(),
            }
        }
    }
}
