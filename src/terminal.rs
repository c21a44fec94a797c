//! The user's terminal while it drives a node's terminal (`hutch shell`, `hutch run -t`, the
//! console of `hutch run --boot`): raw mode for the session and its settings back after it,
//! like ssh; the window's size; and the escape that leaves a session whose program never ends
//! (a login console), as nspawn's: Ctrl-] three times within a second.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

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

/// The user's terminal in raw mode while it lives; its settings come back on drop (also when
/// the session ends with an error).
pub struct RawMode(Termios);

impl RawMode {
    /// Puts the terminal on stdin in raw mode: every key goes to the node as typed (Ctrl-C
    /// included: it interrupts the node's program, not hutch).
    pub fn enter() -> Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSADRAIN, &raw).context("putting the terminal in raw mode")?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &self.0);
    }
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
