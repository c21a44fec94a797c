//! A real terminal for tests that drive hutch as a user at a keyboard would: a tmux server of
//! its own (its own socket), keys sent by name, the screen read back.

use std::time::{Duration, Instant};

/// A tmux server of its own, killed (by its socket) when dropped.
pub struct Tmux(String);

impl Tmux {
    /// A detached session of `size` (rows, columns) running `command` (through the shell).
    pub fn new(tag: &str, size: (u16, u16), command: &str) -> Tmux {
        let t = Tmux(format!("hutch-{tag}-{}", std::process::id()));
        let (w, h) = (size.1.to_string(), size.0.to_string());
        t.run(&["new-session", "-d", "-x", &w, "-y", &h, command]);
        t
    }

    /// `tmux ARGS` on this server; its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `keys` (tmux key names: `Enter`, `C-c`, `Tab`, or text).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits until the pane shows `text`; returns the pane.
    pub fn wait_for(&self, text: &str) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let pane = self.run(&["capture-pane", "-p"]);
            if pane.contains(text) {
                return pane;
            }
            assert!(Instant::now() < end, "the pane never showed {text:?}:\n{pane}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the pane printed, its scrollback included.
    pub fn history(&self) -> String {
        self.run(&["capture-pane", "-p", "-S", "-"])
    }

    /// Waits (at most `limit`) until `count` lines of the pane's whole history start with
    /// `prefix` (tmux trims the spaces that end a line); returns the history.
    pub fn wait_for_lines(&self, prefix: &str, count: usize, limit: Duration) -> String {
        let what = format!("{count} lines starting with {prefix:?}");
        self.wait_until(&what, limit, |all| all.lines().filter(|l| l.starts_with(prefix)).count() >= count)
    }

    /// Waits (at most `limit`) until the pane's whole history satisfies `done`; returns it.
    pub fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + limit;
        loop {
            let all = self.history();
            if done(&all) {
                return all;
            }
            assert!(Instant::now() < end, "the pane never showed {what} within {limit:?}:\n{all}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of the program the session started (its shell).
    pub fn pane_pid(&self) -> u32 {
        self.run(&["list-panes", "-F", "#{pane_pid}"])
            .trim()
            .parse()
            .expect("tmux pane pid")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}
