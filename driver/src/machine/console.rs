//! A node's console as the driver sees it: everything printed so far (kept up to a limit),
//! line listeners for the log, and waiting for a pattern without polling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How much console text is kept for `get_console_log` and `wait_for_console_text`.
pub const CONSOLE_KEEP: usize = 64 << 20;

type Listener = Box<dyn Fn(&str) + Send + Sync>;

/// The console of one node across all its boots. The runtime pushes what the pty master reads;
/// the driver reads, listens and waits.
pub struct ConsoleLog {
    inner: Mutex<Inner>,
    grew: Condvar,
}

#[derive(Default)]
struct Inner {
    bytes: Vec<u8>,
    partial: Vec<u8>,
    listeners: Vec<Listener>,
}

impl Default for ConsoleLog {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleLog {
    /// An empty console.
    pub fn new() -> ConsoleLog {
        ConsoleLog {
            inner: Mutex::new(Inner::default()),
            grew: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append what the node printed; complete lines go to the listeners.
    pub fn push(&self, data: &[u8]) {
        let mut g = self.lock();
        let room = CONSOLE_KEEP.saturating_sub(g.bytes.len());
        g.bytes.extend_from_slice(&data[..room.min(data.len())]);
        g.partial.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(nl) = g.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = g.partial.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line[..nl]);
            lines.push(text.trim_end_matches('\r').to_string());
        }
        for l in &lines {
            for f in &g.listeners {
                f(l);
            }
        }
        drop(g);
        self.grew.notify_all();
    }

    /// Call `f` with every complete line from now on.
    pub fn subscribe(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        self.lock().listeners.push(Box::new(f));
    }

    /// Everything kept so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// Bytes kept so far (an offset for `wait_for`).
    pub fn len(&self) -> usize {
        self.lock().bytes.len()
    }

    /// Nothing printed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until `re` matches the console text after byte `from`; returns the end of the
    /// match, or `None` when `deadline` passed or `abort` was set.
    pub fn wait_for(&self, re: &regex::bytes::Regex, from: usize, deadline: Instant, abort: &AtomicBool) -> Option<usize> {
        let mut g = self.lock();
        loop {
            let start = from.min(g.bytes.len());
            if let Some(m) = re.find(&g.bytes[start..]) {
                return Some(start + m.end());
            }
            let now = Instant::now();
            if now >= deadline || abort.load(Ordering::Relaxed) {
                return None;
            }
            // Wake at least every 200 ms to notice an abort.
            let wait = (deadline - now).min(Duration::from_millis(200));
            g = self.grew.wait_timeout(g, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lines_go_to_listeners_and_waits_see_new_text() {
        let c = Arc::new(ConsoleLog::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        c.subscribe(move |l| s.lock().unwrap().push(l.to_string()));
        c.push(b"boot: one\r\nboot: tw");
        c.push(b"o\nrest");
        assert_eq!(*seen.lock().unwrap(), ["boot: one", "boot: two"]);
        let re = regex::bytes::Regex::new("boot: t.o").unwrap();
        let stop = AtomicBool::new(false);
        let end = c.wait_for(&re, 0, Instant::now(), &stop).unwrap();
        // From the end of that match, the same text must appear again.
        assert!(c.wait_for(&re, end, Instant::now(), &stop).is_none());
        let c2 = Arc::clone(&c);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.push(b"\nboot: two again\n");
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(c.wait_for(&re, end, deadline, &stop).is_some());
        t.join().unwrap();
    }
}
