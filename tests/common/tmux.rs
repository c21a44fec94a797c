//! A terminal for tests that drive hutch as a user at a keyboard: a tmux server of the
//! test's own, keys sent to it, its screen read back.

use std::time::{Duration, Instant};

/// A tmux server of its own, killed (by its socket) when dropped.
pub struct Tmux(String);

impl Tmux {
    /// Starts `command` in a new session of a server of its own, `size` = (rows, columns).
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

    /// Types `keys` (tmux key names, e.g. `Enter`, `C-c`).
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
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let pane = self.run(&["capture-pane", "-p", "-S", "-"]);
            if pane.matches(text).count() >= n {
                return pane;
            }
            assert!(Instant::now() < end, "the pane never showed {text:?} {n} times:\n{pane}");
            std::thread::sleep(Duration::from_millis(50));
        }
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
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}
