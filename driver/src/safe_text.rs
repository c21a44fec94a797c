//! Bytes a node printed, made safe to show on the user's terminal, in `log.txt` and in JUnit
//! XML. A node's console or a command's output may hold anything: a window title or clipboard
//! write (OSC 52), a screen clear, a colour code cut in half by systemd's 80-column status
//! lines (a lone ESC before `…`, after which tmux showed nothing). Here only complete colour
//! codes (SGR) pass, and only when colour is wanted; every other control character is shown
//! escaped (`\e`, `\a`, `\x07`), a cut CSI sequence is dropped, and a line that set a colour
//! ends with a reset. The raw bytes stay in the node's own log file.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The longest SGR sequence passed through: longer ones are not colour codes anyone writes.
const MAX_SGR: usize = 64;

/// One line of node output (no `\n`), safe to show. Trailing `\r` is dropped, and of a line
/// with `\r` inside only what follows the last one is kept (what a terminal would show).
pub fn line(raw: &[u8], color: bool) -> Cow<'_, str> {
    let mut raw = raw;
    while let [rest @ .., b'\r'] = raw {
        raw = rest;
    }
    if let Some(cr) = raw.iter().rposition(|&b| b == b'\r') {
        raw = &raw[cr + 1..];
    }
    if raw.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t') {
        // Printable ASCII (valid UTF-8): the line as it is.
        return Cow::Borrowed(std::str::from_utf8(raw).unwrap_or_default());
    }
    let mut out = String::with_capacity(raw.len() + 16);
    let mut colored = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            0x1b => i = escape(raw, i, color, &mut out, &mut colored),
            b'\t' | 0x20..=0x7e => {
                out.push(b as char);
                i += 1;
            }
            0x00..=0x1f | 0x7f => {
                shown_control(b, &mut out);
                i += 1;
            }
            _ => i = non_ascii(raw, i, &mut out),
        }
    }
    if colored {
        out.push_str("\x1b[0m");
    }
    Cow::Owned(out)
}

/// Every line of `text` through `line`, joined by `\n`.
pub fn text(text: &str, color: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for (n, l) in text.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        out.push_str(&line(l.as_bytes(), color));
    }
    out
}

fn shown_control(b: u8, out: &mut String) {
    match b {
        0x1b => out.push_str("\\e"),
        0x07 => out.push_str("\\a"),
        0x08 => out.push_str("\\b"),
        0x0d => out.push_str("\\r"),
        _ => {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// An escape sequence at `raw[at]` (ESC): a complete SGR passes when `color`; erase-in-line
/// (systemd's status lines use it) and a cut CSI are dropped; anything else is shown escaped.
/// A lone ESC before a byte that cannot start a sequence (systemd's cut `\e…`) is dropped.
/// Returns where scanning goes on.
fn escape(raw: &[u8], at: usize, color: bool, out: &mut String, colored: &mut bool) -> usize {
    match raw.get(at + 1) {
        Some(b'[') => {}
        Some(0x20..=0x7e) => {
            shown_control(0x1b, out);
            return at + 1;
        }
        _ => return at + 1,
    }
    let start = at + 2;
    let mut j = start;
    while j < raw.len() && (0x30..=0x3f).contains(&raw[j]) {
        j += 1;
    }
    let params_end = j;
    while j < raw.len() && (0x20..=0x2f).contains(&raw[j]) {
        j += 1;
    }
    let Some(&fin) = raw.get(j).filter(|f| (0x40..=0x7e).contains(*f)) else {
        // Cut (the line ended, or a byte that cannot be in a CSI sequence): dropped.
        return j;
    };
    let params = &raw[start..params_end];
    let sgr =
        fin == b'm' && params_end == j && params.len() <= MAX_SGR && params.iter().all(|b| b.is_ascii_digit() || *b == b';' || *b == b':');
    if sgr {
        if color {
            out.push_str("\x1b[");
            out.push_str(std::str::from_utf8(params).unwrap_or_default());
            out.push('m');
            *colored = true;
        }
    } else if fin != b'K' {
        shown_control(0x1b, out);
        out.push_str(&String::from_utf8_lossy(&raw[at + 1..=j]));
    }
    j + 1
}

/// A UTF-8 character at `raw[at]`: shown unless it is a C1 control (which some terminals
/// obey) or a noncharacter; an invalid byte is shown as `\xNN`.
fn non_ascii(raw: &[u8], at: usize, out: &mut String) -> usize {
    let len = match raw[at] {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    };
    let c = raw
        .get(at..at + len)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.chars().next());
    match c {
        Some(c) if ('\u{80}'..='\u{9f}').contains(&c) || c == '\u{fffe}' || c == '\u{ffff}' => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
            at + len
        }
        Some(c) => {
            out.push(c);
            at + len
        }
        None => {
            let _ = write!(out, "\\x{:02x}", raw[at]);
            at + 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::line;

    #[test]
    fn plain_text_passes_and_controls_are_shown() {
        assert_eq!(line(b"hello\tworld\r", true), "hello\tworld");
        assert_eq!(line(b"progress 10%\rprogress 99%", true), "progress 99%");
        assert_eq!(line(b"bell\x07 nul\x00 del\x7f", false), "bell\\a nul\\x00 del\\x7f");
        assert_eq!(line("caf\u{e9} \u{2026}".as_bytes(), false), "caf\u{e9} \u{2026}");
        assert_eq!(line(b"bad \xff\xc3", false), "bad \\xff\\xc3");
        assert_eq!(line("c1 \u{9b}2J".as_bytes(), false), "c1 \\u{9b}2J");
    }

    #[test]
    fn colour_passes_only_when_wanted_and_is_reset() {
        let ok = b"[\x1b[0;32m  OK  \x1b[0m] Started";
        assert_eq!(line(ok, true), "[\x1b[0;32m  OK  \x1b[0m] Started\x1b[0m");
        assert_eq!(line(ok, false), "[  OK  ] Started");
    }

    #[test]
    fn cut_and_hostile_sequences_never_reach_the_terminal_raw() {
        // systemd's status line cut at 80 columns: a lone ESC, then an ellipsis.
        assert_eq!(line("Starting \x1b\u{2026}".as_bytes(), true), "Starting \u{2026}");
        assert_eq!(line("x \x1b[0;1\u{2026}".as_bytes(), true), "x \u{2026}");
        assert_eq!(line(b"end \x1b[0;3", true), "end ");
        assert_eq!(line(b"end \x1b", true), "end ");
        // Window title, clipboard (OSC 52), screen clear: shown, not obeyed.
        assert_eq!(line(b"\x1b]0;owned\x07", true), "\\e]0;owned\\a");
        assert_eq!(line(b"\x1b]52;c;aGk=\x1b\\", true), "\\e]52;c;aGk=\\e\\");
        assert_eq!(line(b"\x1b[2J\x1b[H", true), "\\e[2J\\e[H");
        assert_eq!(line(b"\x1b[Kerased", true), "erased");
    }
}
