//! A node's console as the driver sees it: everything printed so far (kept up to a limit),
//! line listeners for the log, and waiting for a pattern without polling. Lines are cut at
//! `LINE_CAP` (the rest marked as cut and skipped up to the next newline), and each byte is
//! looked at once: a flood without newlines costs what its bytes cost, not a rescan per read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How much console text is kept for `get_console_log` and `wait_for_console_text`: the last
/// this many bytes (a flood must not blind later waits).
pub const CONSOLE_KEEP: usize = 64 << 20;
/// The longest console line handed to listeners; the rest of a longer one is cut.
pub const LINE_CAP: usize = 64 << 10;
/// What ends a line that was cut at `LINE_CAP`.
pub const CUT_MARK: &[u8] = b" [hutch: line longer than 64 KiB; the rest of it is cut]";

type Listener = Box<dyn Fn(&[Vec<u8>]) + Send + Sync>;

/// The console of one node across all its boots. The runtime pushes what the pty master reads;
/// the driver reads, listens and waits.
pub struct ConsoleLog {
    inner: Mutex<Inner>,
    grew: Condvar,
}

#[derive(Default)]
struct Inner {
    /// The kept tail of the console; `bytes[0]` is byte `dropped` of everything printed.
    bytes: Vec<u8>,
    dropped: usize,
    lines: LineSplitter,
    listeners: Vec<Listener>,
}

/// Splits a byte stream into lines of at most `LINE_CAP` bytes (plus `CUT_MARK` when cut),
/// looking at each byte once.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// The current line was cut: bytes are skipped up to the next newline.
    skipping: bool,
}

impl Default for ConsoleLog {
    fn default() -> Self {
        Self::new()
    }
}

impl LineSplitter {
    /// The complete lines `data` finishes (raw bytes, no newline); an unfinished line is kept
    /// for the next call.
    pub fn split(&mut self, mut data: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            if self.skipping {
                match nl {
                    Some(i) => {
                        self.skipping = false;
                        data = &data[i + 1..];
                        continue;
                    }
                    None => break,
                }
            }
            let end = nl.unwrap_or(data.len());
            let room = LINE_CAP - self.partial.len();
            self.partial.extend_from_slice(&data[..end.min(room)]);
            if end > room {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(CUT_MARK);
                lines.push(line);
                self.skipping = nl.is_none();
            } else if nl.is_some() {
                lines.push(std::mem::take(&mut self.partial));
            }
            data = &data[nl.map_or(data.len(), |i| i + 1)..];
        }
        lines
    }

    /// The unfinished line, if any (at the end of the stream).
    pub fn rest(&mut self) -> Option<Vec<u8>> {
        self.skipping = false;
        Some(std::mem::take(&mut self.partial)).filter(|p| !p.is_empty())
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

    /// Append what the node printed; complete lines go to the listeners, in one batch.
    pub fn push(&self, data: &[u8]) {
        let mut g = self.lock();
        g.bytes.extend_from_slice(data);
        // Dropped in slices of a quarter, so keeping the tail costs O(bytes) too.
        if g.bytes.len() > CONSOLE_KEEP + CONSOLE_KEEP / 4 {
            let cut = g.bytes.len() - CONSOLE_KEEP;
            g.bytes.drain(..cut);
            g.dropped += cut;
        }
        let lines = g.lines.split(data);
        if !lines.is_empty() {
            for f in &g.listeners {
                f(&lines);
            }
        }
        drop(g);
        self.grew.notify_all();
    }

    /// Call `f` with every batch of complete lines (raw bytes, without the newline) from now on.
    pub fn subscribe(&self, f: impl Fn(&[Vec<u8>]) + Send + Sync + 'static) {
        self.lock().listeners.push(Box::new(f));
    }
    /// The kept tail of the console, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// The last line the node printed that has any text, for a wait's progress and timeout
    /// messages (made safe where it is logged).
    pub fn last_line(&self) -> Option<String> {
        let g = self.lock();
        // What a terminal shows of a line systemd rewrites in place: the part after its last CR.
        let line = g
            .bytes
            .rsplit(|b| *b == b'\n')
            .filter_map(|l| l.rsplit(|b| *b == b'\r').map(|l| l.trim_ascii()).find(|l| !l.is_empty()))
            .next()?;
        Some(String::from_utf8_lossy(line).into_owned())
    }

    /// Bytes printed so far (an offset for `wait_for`).
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.dropped + g.bytes.len()
    }

    /// Nothing printed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until `re` matches the console text after byte `from`; returns the end of the
    /// match, or `None` when `deadline` passed or `abort` was set. The search holds the
    /// console's lock and may span the whole kept text, so under a flood it is repeated only
    /// after three times its own duration has passed: at most about a quarter of a core, however
    /// fast the node prints.
    pub fn wait_for(&self, re: &regex::bytes::Regex, from: usize, deadline: Instant, abort: &AtomicBool) -> Option<usize> {
        let mut g = self.lock();
        let mut next_scan = Instant::now();
        let mut scanned = None;
        loop {
            let now = Instant::now();
            let total = g.dropped + g.bytes.len();
            if (now >= next_scan || now >= deadline) && scanned != Some(total) {
                let start = from.saturating_sub(g.dropped).min(g.bytes.len());
                if let Some(m) = re.find(&g.bytes[start..]) {
                    return Some(g.dropped + start + m.end());
                }
                scanned = Some(total);
                next_scan = Instant::now() + now.elapsed() * 3;
            }
            let now = Instant::now();
            if now >= deadline || abort.load(Ordering::Relaxed) {
                return None;
            }
            // Wake at least every 200 ms to notice an abort, and when the next search is due.
            let mut wake = deadline.min(now + Duration::from_millis(200));
            if next_scan > now {
                wake = wake.min(next_scan);
            }
            g = self.grew.wait_timeout(g, wake - now).unwrap_or_else(|p| p.into_inner()).0;
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
        c.subscribe(move |l| s.lock().unwrap().extend(l.iter().map(|l| String::from_utf8_lossy(l).into_owned())));
        c.push(b"boot: one\r\nboot: tw");
        c.push(b"o\nrest");
        assert_eq!(*seen.lock().unwrap(), ["boot: one\r", "boot: two"]);
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

    #[test]
    fn the_last_line_is_what_a_terminal_shows_of_it() {
        let c = ConsoleLog::new();
        assert_eq!(c.last_line(), None);
        c.push(b"first\n\x1b[K[ **] Job a running (1s)\r\x1b[K[***] Job a running (2s)\r\n  \n");
        assert_eq!(c.last_line().as_deref(), Some("\x1b[K[***] Job a running (2s)"));
    }

    #[test]
    fn long_lines_are_cut_and_a_flood_is_skipped_to_its_newline() {
        let c = ConsoleLog::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        c.subscribe(move |l| s.lock().unwrap().extend(l.iter().map(|l| l.len())));
        // 1 MiB without a newline, in small reads, then the end of the line and one more.
        for _ in 0..256 {
            c.push(&[b'y'; 4096]);
        }
        c.push(b"tail\nnext\n");
        let cut = LINE_CAP + CUT_MARK.len();
        assert_eq!(*seen.lock().unwrap(), [cut, 4]);
        // A line that reaches the cap in the same read as its newline.
        let mut one = vec![b'z'; LINE_CAP + 10];
        one.extend_from_slice(b"\nok\n");
        c.push(&one);
        assert_eq!(*seen.lock().unwrap(), [cut, 4, cut, 2]);
    }

    #[test]
    fn a_flood_keeps_the_tail_so_later_waits_still_match() {
        let c = ConsoleLog::new();
        let stop = AtomicBool::new(false);
        let chunk = vec![b'y'; 1 << 20];
        for _ in 0..(CONSOLE_KEEP >> 20) + 20 {
            c.push(&chunk);
        }
        let before = c.len();
        c.push(b"\nflood-done\n");
        let re = regex::bytes::Regex::new("flood-done").unwrap();
        let end = c.wait_for(&re, before, Instant::now(), &stop).expect("the text after the flood");
        assert_eq!(end, before + 11);
        assert!(c.text().len() <= CONSOLE_KEEP + CONSOLE_KEEP / 4);
    }
}
