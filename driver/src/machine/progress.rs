//! "Still waiting" lines: a wait or a boot that has run 10 s says so, with what it last saw,
//! and again at 30 s, at 1 min and every minute after, so a stuck test is never silent for
//! minutes (a wait may last 15 min, the whole test an hour).

use std::time::{Duration, Instant};

use super::Machine;

/// When the first line is due, and the next ones after it.
const STEPS: &[Duration] = &[Duration::from_secs(10), Duration::from_secs(30), Duration::from_secs(60)];
/// The interval once the steps are used up.
const EVERY: Duration = Duration::from_secs(60);
/// How much of what the wait last saw a line quotes.
const QUOTE: usize = 160;

/// The schedule of one wait's progress lines.
pub(crate) struct Progress {
    start: Instant,
    next: Duration,
}

impl Progress {
    /// A schedule starting now.
    pub(crate) fn new() -> Progress {
        Progress {
            start: Instant::now(),
            next: STEPS[0],
        }
    }

    /// When the next line is due.
    pub(crate) fn due(&self) -> Instant {
        self.start + self.next
    }

    /// How long the wait has run, when a line is due now (and moves to the next one).
    pub(crate) fn tick(&mut self) -> Option<Duration> {
        let elapsed = self.start.elapsed();
        if elapsed < self.next {
            return None;
        }
        self.next = STEPS.iter().copied().find(|s| *s > elapsed).unwrap_or_else(|| {
            let minutes = elapsed.as_secs() / EVERY.as_secs() + 1;
            EVERY * minutes as u32
        });
        Some(elapsed)
    }
}

impl Machine {
    /// Says that `what` still runs after `elapsed` (of `timeout`), quoting the last line of
    /// what it last saw (a command's output, a unit's state, the console).
    pub(crate) fn still(&self, what: &str, elapsed: Duration, timeout: Option<Duration>, last: Option<&str>) {
        let of = timeout.map(|t| format!(" of {}s", t.as_secs())).unwrap_or_default();
        let seen = last
            .and_then(|l| l.lines().rev().map(str::trim).find(|l| !l.is_empty()))
            .map(|l| match l.char_indices().nth(QUOTE) {
                Some((cut, _)) => format!("; last: {}...", &l[..cut]),
                None => format!("; last: {l}"),
            })
            .unwrap_or_default();
        self.log(&format!("still {what} after {}s{of}{seen}", elapsed.as_secs()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_at_10_30_60_seconds_then_every_minute() {
        let mut p = Progress::new();
        assert_eq!(p.tick(), None);
        let mut dues = Vec::new();
        for elapsed in [10, 31, 65, 121, 130, 185] {
            p.start = Instant::now() - Duration::from_secs(elapsed);
            if p.tick().is_some() {
                dues.push((elapsed, p.next.as_secs()));
            }
        }
        // 130 s is before the line due at 180 s; a late wake-up skips to the next minute.
        assert_eq!(dues, [(10, 30), (31, 60), (65, 120), (121, 180), (185, 240)]);
    }
}
