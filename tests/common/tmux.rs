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

    /// Runs a tmux command against this server; its stdout.
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

    /// Waits until the pane (with what scrolled out of it) shows `text`; returns it.
    pub fn wait_for(&self, text: &str) -> String {
        self.wait_for_times(text, 1)
    }

    /// Waits until the pane (with what scrolled out of it) shows `text` `n` times; returns it.
    pub fn wait_for_times(&self, text: &str, n: usize) -> String {
        let what = format!("{text:?} {n} times");
        self.wait_until(&what, Duration::from_secs(30), |all| all.matches(text).count() >= n)
    }

    /// Drives a shell at its prompt in a session started at 30 rows and 100 columns, as a
    /// user would: `tty`, the window's size and a change of it, Ctrl-C for the shell's
    /// foreground command and not for hutch, then `exit 3`. The command that ran hutch prints
    /// `<ended>=<hutch's status> <stty's icanon flag>` when it ends; that must read `=3 icanon`
    /// (the status passed through, the user's terminal restored). Returns the pane after `tty`.
    pub fn drive_shell(&self, ended: &str) -> String {
        self.keys(&["echo T$((6*7)); tty; stty size; echo E$((1+1))N", "Enter"]);
        let first = self.wait_for("E2N");
        assert!(first.contains("\n30 100\n"), "the pty has not the window's size:\n{first}");
        self.run(&["resize-window", "-x", "120", "-y", "40"]);
        std::thread::sleep(Duration::from_millis(800));
        self.keys(&["stty size", "Enter"]);
        self.wait_for("40 120");
        self.keys(&["sleep 100", "Enter"]);
        std::thread::sleep(Duration::from_millis(300));
        self.keys(&["C-c"]);
        self.keys(&["echo still-$((1+1))", "Enter"]);
        let pane = self.wait_for("still-2");
        assert!(!pane.contains(ended), "Ctrl-C ended hutch:\n{pane}");
        self.keys(&["exit 3", "Enter"]);
        let pane = self.wait_for(&format!("{ended}="));
        assert!(
            pane.contains(&format!("{ended}=3 icanon")),
            "not status 3, or the terminal not restored:\n{pane}"
        );
        first
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
