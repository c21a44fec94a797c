//! The user's terminal handed to a program on a pty in a node, for `hutch shell` and for
//! `shell_interact()` under `hutch test --interactive`: raw mode while the session lasts (the
//! settings come back after it, however it ends), keystrokes and window sizes up, output
//! down. Like ssh: Ctrl-C and Ctrl-D are bytes for the node's terminal, not signals here.
//! `hutch run -t` and the login console of `hutch run --boot` use its raw mode and window size,
//! and the escape that leaves a session whose program never ends, as nspawn's: Ctrl-] three
//! times within a second.

use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

use crate::agent::ExitStatus;

/// How often the key and resize readers look whether the session has ended.
const TICK: Duration = Duration::from_millis(100);

/// The terminal's window size (rows, columns), when stdin is a terminal.
pub fn window_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into memory that outlives the call.
    let r = unsafe { libc::ioctl(std::io::stdin().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The user's `TERM` for a program in a node (`vt100` when unset).
pub fn term() -> String {
    std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "vt100".into())
}

/// The settings of the terminal on stdin, put back when this is dropped.
pub struct Saved(Termios);

impl Saved {
    /// Saves stdin's terminal settings; `None` when stdin is not a terminal.
    pub fn stdin() -> Option<Saved> {
        tcgetattr(std::io::stdin()).ok().map(Saved)
    }

    /// Saves the settings, then puts the terminal in raw mode.
    pub fn raw() -> std::io::Result<Saved> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSADRAIN, &raw)?;
        Ok(Saved(saved))
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &self.0);
    }
}

/// Where the user's keystrokes and window sizes go: the session's pty, directly through the
/// agent or through a running test's control socket.
pub trait Keys: Send + Sync + 'static {
    /// Types `data`; false once the session is gone.
    fn input(&self, data: Vec<u8>) -> bool;
    /// The window is now `rows` by `cols`; false once the session is gone.
    fn resize(&self, rows: u16, cols: u16) -> bool;
}

/// What comes down from the session.
pub enum Event {
    /// What its terminal printed (possibly nothing, after a quiet while).
    Output(Vec<u8>),
    /// The program ended.
    Exited(ExitStatus),
}

/// Relays the user's terminal to a session until it ends (`Some(status)`) or its connection
/// does (`None`): raw mode when stdin is a terminal, keystrokes to `keys`, what `next` yields
/// to stdout. The readers of stdin and of the window size end with the session, so nothing
/// here reads the user's next keystroke afterwards (a REPL gets it).
pub fn relay(keys: Arc<dyn Keys>, mut next: impl FnMut() -> std::io::Result<Option<Event>>) -> std::io::Result<Option<ExitStatus>> {
    let tty = std::io::stdin().is_terminal();
    let raw = if tty { Some(Saved::raw()?) } else { None };
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = vec![send_keys(Arc::clone(&keys), tty, Arc::clone(&stop))];
    if tty {
        readers.push(send_resizes(keys, window_size().unwrap_or((24, 80)), Arc::clone(&stop)));
    }
    let mut out = std::io::stdout();
    let ended = loop {
        match next() {
            Ok(Some(Event::Output(data))) => {
                if !data.is_empty() {
                    let _ = out.write_all(&data);
                    let _ = out.flush();
                }
            }
            Ok(Some(Event::Exited(status))) => break Ok(Some(status)),
            Ok(None) => break Ok(None),
            Err(e) => break Err(e),
        }
    };
    stop.store(true, Ordering::SeqCst);
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    drop(raw);
    ended
}

/// Sends what the user types until standard input ends or the session does. The end of a
/// pipe or file is then typed as Ctrl-D, every half second until the session ends: one typed
/// ahead of a shell that has not set up its line editor yet can be lost, and a shell fed from
/// a pipe must end when its input does. Reads fd 0 itself (no buffer that could keep bytes
/// read ahead for a later reader).
fn send_keys(keys: Arc<dyn Keys>, tty: bool, stop: Arc<AtomicBool>) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new().name("keys".into()).spawn(move || {
        let stdin = std::io::stdin();
        let mut buf = vec![0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            let mut fds = [nix::poll::PollFd::new(stdin.as_fd(), nix::poll::PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(TICK.as_millis() as u16)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(_) => break,
            }
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !keys.input(buf[..n].to_vec()) {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => break,
            }
        }
        if tty {
            return;
        }
        while !stop.load(Ordering::SeqCst) {
            if !keys.input(vec![0x04]) {
                return;
            }
            for _ in 0..5 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(TICK);
            }
        }
    });
    spawned.ok()
}

/// Sends the window's size whenever it changes (looked at every tick).
fn send_resizes(keys: Arc<dyn Keys>, mut last: (u16, u16), stop: Arc<AtomicBool>) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new().name("resize".into()).spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            let Some(now) = window_size() else { continue };
            if now != last {
                last = now;
                if !keys.resize(now.0, now.1) {
                    return;
                }
            }
        }
    });
    spawned.ok()
}

/// Ctrl-] (0x1d), the escape key, as telnet, nspawn and `virsh console` have it.
const ESCAPE_KEY: u8 = 0x1d;
/// How many escape keys in a row end the session.
const ESCAPE_COUNT: usize = 3;
/// ...within this long.
const ESCAPE_WITHIN: Duration = Duration::from_secs(1);

/// Watches the keys typed for the escape: Ctrl-] three times within a second.
#[derive(Default)]
pub struct Escape {
    presses: Vec<Instant>,
}

impl Escape {
    /// What to say when the session starts.
    pub const HINT: &'static str = "press Ctrl-] three times within a second to stop it";

    /// Looks at keys just typed; true once the escape is complete.
    pub fn typed(&mut self, keys: &[u8]) -> bool {
        let now = Instant::now();
        for &k in keys {
            if k != ESCAPE_KEY {
                self.presses.clear();
                continue;
            }
            self.presses.retain(|t| now.duration_since(*t) < ESCAPE_WITHIN);
            self.presses.push(now);
            if self.presses.len() >= ESCAPE_COUNT {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_escapes_in_a_row_end_the_session_and_other_keys_reset_the_count() {
        let mut e = Escape::default();
        assert!(!e.typed(b"\x1d\x1d"));
        assert!(!e.typed(b"x"));
        assert!(!e.typed(b"\x1d\x1d"));
        assert!(e.typed(b"\x1d"));
        assert!(Escape::default().typed(b"ls\x1d\x1d\x1d"));
    }
}
