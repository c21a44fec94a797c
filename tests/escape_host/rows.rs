//! The rows of tests/escape_host.rs: what a node (its root) tries against the host code that
//! reads what it produced, how, the refusal a user would check, and the judge. Scripts are the
//! test script of a one-node test (`evil`); `$HOSTDIR` is a host directory outside every output
//! directory, which no row may change (checked after each row).

use std::path::Path;
use std::process::{Command, Stdio};

use super::common::*;
use super::terminal::{in_tmux, in_tmux_no_color, no_color, terminal_sane};
use super::{mode_of, Ctx, Outcome};

/// How a row runs.
pub enum How {
    /// `hutch test` on the row's test file, with these extra arguments.
    Test(&'static [&'static str]),
    /// Its own way (given the context and the row's directory, which holds test.toml/test.py).
    Custom(fn(&Ctx, &Path) -> Outcome),
}

/// One attempt.
pub struct Row {
    /// What is attempted, as the table says it.
    pub what: &'static str,
    /// How, as the table says it.
    pub how: &'static str,
    /// The refusal a user would check.
    pub refusal: &'static str,
    /// The node boots its init (busybox init; needed for a console).
    pub boot: bool,
    /// The test script.
    pub script: &'static str,
    /// How it runs.
    pub run: How,
    /// Set up the output directory before the run.
    pub prepare: Option<fn(&Ctx, &Path)>,
    /// `Ok(what was seen)` when refused.
    pub judge: fn(&Outcome, &Ctx) -> Result<String, String>,
}

pub fn line_with<'a>(o: &'a Outcome, marker: &str) -> Result<&'a str, String> {
    o.output
        .lines()
        .find(|l| l.contains(marker))
        .map(str::trim)
        .ok_or_else(|| format!("no {marker:?} in the output (exit {})", o.code))
}

/// A message cut for a table cell (marked with `…` when cut).
fn short(s: &str) -> String {
    let mut cut: String = s.chars().take(240).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    cut.replace('`', "'")
}

fn links_refused(o: &Outcome, _: &Ctx) -> Result<String, String> {
    let l = line_with(o, "RESULT")?;
    if !l.contains("refused") || !l.contains("\"hostdir\"") || !l.contains("evil") {
        return Err(l.to_string());
    }
    if o.out.join("x").symlink_metadata().is_ok() {
        return Err("part of the tree was written".into());
    }
    Ok(short(l.trim_start_matches("RESULT refused: ")))
}

fn plant_link(ctx: &Ctx, out: &Path) {
    let x = out.join("x");
    std::fs::create_dir_all(&x).unwrap();
    std::os::unix::fs::symlink(&ctx.hostdir, x.join("l")).unwrap();
    if let Some(uid) = ctx.user {
        let id = Some(uid);
        for p in [out, x.as_path(), x.join("l").as_path()] {
            std::os::unix::fs::lchown(p, id, id).unwrap();
        }
    }
}

fn link_replaced(o: &Outcome, _: &Ctx) -> Result<String, String> {
    line_with(o, "RESULT copied")?;
    let l = o.out.join("x/l");
    if !l.symlink_metadata().map_err(|e| e.to_string())?.is_dir() || !l.join("f").exists() {
        return Err("the planted link is still there".into());
    }
    Ok(format!(
        "the link became a directory (mode {:o}) holding the node's file",
        mode_of(&l)
    ))
}

fn modes_masked(o: &Outcome, _: &Ctx) -> Result<String, String> {
    line_with(o, "RESULT copied")?;
    let (suid, sgid, sticky) = (
        mode_of(&o.out.join("x/suid")),
        mode_of(&o.out.join("x/sgid")),
        mode_of(&o.out.join("x/sticky")),
    );
    if (suid, sgid, sticky) != (0o755, 0o755, 0o755) {
        return Err(format!("modes {suid:o} {sgid:o} {sticky:o}"));
    }
    Ok(format!("modes {suid:o} {sgid:o} {sticky:o}"))
}

fn forged(ctx: &Ctx, dir: &Path) -> Outcome {
    // The test binary, where the row's user can run it.
    let exe = dir.join("escape-host-helper");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    super::set_mode(&exe, 0o755);
    let out = dir.join("out");
    let mut cmd = match ctx.user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()])
                .arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let o = cmd
        .args(["--ignored", "--exact", "forged_reply_helper", "--nocapture", "--test-threads=1"])
        .env("HUTCH_FORGED_OUT", &out)
        .env("HUTCH_FORGED_HOSTDIR", &ctx.hostdir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Outcome {
        code: o.status.code().unwrap_or(-1),
        output: format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        stderr: o.stderr,
        out,
    }
}

fn forged_refused(o: &Outcome, _: &Ctx) -> Result<String, String> {
    let lines: Vec<&str> = o.output.lines().filter_map(|l| l.find("FORGED").map(|i| &l[i..])).collect();
    if lines.len() != 3 || lines.iter().any(|l| !l.contains("refused: evil: ")) {
        return Err(format!("{lines:?}"));
    }
    let why: Vec<String> = lines
        .iter()
        .map(|l| short(l.split("refused the copy: ").nth(1).unwrap_or(l)))
        .collect();
    Ok(why.join("; "))
}

fn flood_capped(o: &Outcome, _: &Ctx) -> Result<String, String> {
    if o.code != 0 {
        return Err(format!("exit {}", o.code));
    }
    let size = std::fs::metadata(o.out.join("evil.log")).map_err(|e| e.to_string())?.len();
    let lines = o.stderr.split(|b| *b == b'\n').count();
    if size > (1 << 20) + 4096 || !o.output.contains("passed its log cap of 1 MiB") || lines > 100_000 {
        return Err(format!("evil.log {size} bytes, {lines} stderr lines"));
    }
    Ok(format!("evil.log {size} bytes with the cap note, {lines} stderr lines"))
}

fn escapes_shown(o: &Outcome, _: &Ctx) -> Result<String, String> {
    if o.code != 0 {
        return Err(format!("exit {}", o.code));
    }
    if o.stderr.contains(&0x1b) {
        return Err("an ESC byte reached stderr".into());
    }
    let shown = line_with(o, "\\e]52;")?;
    line_with(o, "marker-after-escapes")?;
    let raw = std::fs::read(o.out.join("evil.log")).unwrap_or_default();
    let main = std::fs::read(o.out.join("log.txt")).unwrap_or_default();
    if !raw.windows(5).any(|w| w == b"\x1b]52;") || main.contains(&0x1b) {
        return Err("evil.log lost the raw bytes, or log.txt holds an ESC".into());
    }
    Ok(format!(
        "no ESC on stderr or in log.txt; shown as \"{}\"; evil.log keeps them raw",
        short(shown.split("# ").nth(1).unwrap_or(shown))
    ))
}

/// `hutch run --boot --console-log` of a node whose console has ONLCR on and prints `\r\n`.
fn console_log(ctx: &Ctx, dir: &Path) -> Outcome {
    let once = dir.join("hutch-once");
    std::fs::write(
        &once,
        "#!/bin/sh\nstty onlcr < /dev/console\nprintf 'crlf-line\\r\\n'\nexec /bin/poweroff -f\n",
    )
    .unwrap();
    super::set_mode(&once, 0o755);
    let log = dir.join("console.log");
    let bind = format!("{}:/etc/init.d/hutch-once:ro", once.display());
    let image = ctx.image.display().to_string();
    let log_s = log.display().to_string();
    let r = run_as(
        ctx.user,
        &["run", "--boot", "--image", &image, "--bind", &bind, "--console-log", &log_s],
    );
    let raw = std::fs::read(&log).unwrap_or_default();
    Outcome {
        code: r.code,
        output: format!("{}{}\nLOG={:?}", r.stdout, r.stderr, String::from_utf8_lossy(&raw)),
        stderr: raw,
        out: dir.join("out"),
    }
}

fn no_cr(o: &Outcome, _: &Ctx) -> Result<String, String> {
    let raw = &o.stderr;
    if !raw.windows(10).any(|w| w == b"crlf-line\n") || raw.contains(&b'\r') {
        return Err(line_with(o, "LOG=")?.chars().take(300).collect());
    }
    Ok("`crlf-line\\n`, no `\\r` in the file".into())
}

fn junit_parses(o: &Outcome, _: &Ctx) -> Result<String, String> {
    let junit = o.out.parent().unwrap().join("junit.xml");
    let check = "import sys, xml.etree.ElementTree as E\n\
                 r = E.parse(sys.argv[1]).getroot()\n\
                 text = ''.join((f.get('message') or '') + (f.text or '') for f in r.iter('failure'))\n\
                 print('failures', r.get('failures'), 'ffff-shown', '\\\\u{ffff}' in text, 'fffe-shown', '\\\\u{fffe}' in text)\n";
    let p = Command::new("python3").arg("-c").arg(check).arg(&junit).output().unwrap();
    let said = String::from_utf8_lossy(&p.stdout).trim().to_string();
    if o.code != 1 || !p.status.success() || said != "failures 2 ffff-shown True fffe-shown True" {
        return Err(format!("exit {}, python: {said} {}", o.code, String::from_utf8_lossy(&p.stderr)));
    }
    Ok(format!("xml.etree parses it: {said}"))
}

const COPY_LINKS: &str = r#"start_all()
evil.succeed("mkdir -p /tmp/x && echo data > /tmp/x/f && ln -s $HOSTDIR /tmp/x/hostdir && ln -s /etc/shadow /tmp/x/shadow")
try:
    evil.copy_from_machine("/tmp/x")
    print("RESULT copied")
except Exception as e:
    print("RESULT refused:", str(e).splitlines()[0])
"#;

const COPY_OVER_LINK: &str = r#"start_all()
evil.succeed("mkdir -p /tmp/x/l && chmod 777 /tmp/x/l && echo planted > /tmp/x/l/f")
evil.copy_from_machine("/tmp/x")
print("RESULT copied")
"#;

const COPY_MODES: &str = r#"start_all()
evil.succeed("mkdir -p /tmp/x/sticky && chmod 1777 /tmp/x/sticky && echo x > /tmp/x/suid && chmod 4755 /tmp/x/suid && echo x > /tmp/x/sgid && chmod 2775 /tmp/x/sgid")
evil.copy_from_machine("/tmp/x")
print("RESULT copied")
"#;

const FLOOD: &str = r#"start_all()
evil.succeed("yes | head -c 8000000 > /dev/console; head -c 100000000 /dev/zero | tr '\\0' y > /dev/console; echo > /dev/console; echo flood-done > /dev/console")
evil.wait_for_console_text("flood-done")
"#;

const ESCAPES: &str = r#"start_all()
evil.succeed(r"""printf '\033]0;hutch-owned-title\007\033]52;c;aHV0Y2gtb3duZWQ=\007\033[2J\033c[\033[0;1;31m  OK  \033[0m] cut \033\342\200\246 and \033[0;1\342\200\246\nmarker-after-escapes\n' > /dev/console""")
evil.wait_for_console_text("marker-after-escapes")
"#;

const JUNIT: &str = r#"start_all()
allbytes = "printf '" + "".join("\\%03o" % b for b in range(256)) + "\\357\\277\\276\\357\\277\\277'"
with subtest("every byte in a failure message"):
    out = evil.succeed(allbytes)
    raise Exception("the node printed: " + out)
evil.succeed(allbytes + "; exit 3")
"#;

/// Every row, in table order.
pub fn all() -> Vec<Row> {
    let row = |what, how, refusal, boot, script, run, judge| Row {
        what,
        how,
        refusal,
        boot,
        script,
        run,
        prepare: None,
        judge,
    };
    vec![
        row(
            "copy out a link to a host directory and to /etc/shadow",
            "`ln -s $HOSTDIR /tmp/x/hostdir; ln -s /etc/shadow /tmp/x/shadow`, then the script's `copy_from_machine(\"/tmp/x\")`",
            "the copy is refused, naming the node and the link; nothing written",
            false,
            COPY_LINKS,
            How::Test(&[]),
            links_refused,
        ),
        Row {
            prepare: Some(plant_link),
            ..row(
                "a second copy onto a link an earlier copy left (`out/x/l -> $HOSTDIR`)",
                "`mkdir -p /tmp/x/l; chmod 777 /tmp/x/l; echo planted > /tmp/x/l/f`, then `copy_from_machine(\"/tmp/x\")`",
                "the link is replaced, never followed: $HOSTDIR unchanged (files and mode)",
                false,
                COPY_OVER_LINK,
                How::Test(&[]),
                link_replaced,
            )
        },
        row(
            "copy out a setuid, a setgid file and a sticky world-writable directory",
            "`chmod 4755 /tmp/x/suid; chmod 2775 /tmp/x/sgid; chmod 1777 /tmp/x/sticky`, then `copy_from_machine(\"/tmp/x\")`",
            "modes masked to 0755",
            false,
            COPY_MODES,
            How::Test(&[]),
            modes_masked,
        ),
        row(
            "forged `read_tree` replies: an absolute entry path (mode 4755), an entry under `l -> $HOSTDIR`, a `..` entry",
            "the node's agent answers with trees no honest agent sends (a stand-in agent: what node root could send holding the agent's socket)",
            "each refused with a message naming the node and the entry; $HOSTDIR unchanged",
            false,
            "",
            How::Custom(forged),
            forged_refused,
        ),
        row(
            "console flood: 8 MB of `yes` lines, then 100 MB without a newline",
            "`yes \\| head -c 8000000 > /dev/console; head -c 100000000 /dev/zero \\| tr '\\0' y > /dev/console` with `--console-log-max 1M`",
            "evil.log stays under 1 MiB with a note; the long line is cut at 64 KiB; the run passes",
            true,
            FLOOD,
            How::Test(&["--console-log-max", "1M"]),
            flood_capped,
        ),
        row(
            "terminal escape sequences on the console (window title, OSC 52 clipboard, clear screen, reset, cut SGR codes), stderr a pipe",
            "`printf '\\033]0;...\\007\\033]52;c;...\\007\\033[2J\\033c ... \\033\\342\\200\\246 ... \\033[0;1\\342\\200\\246\\n' > /dev/console`",
            "no ESC byte on stderr or in log.txt, shown escaped; raw in evil.log",
            true,
            ESCAPES,
            How::Test(&[]),
            escapes_shown,
        ),
        row(
            "the same sequences in a real terminal (tmux, clipboard writes allowed)",
            "as above, hutch test in a tmux pane",
            "pane title and tmux clipboard unchanged; the lines after the cut codes and the pass line shown",
            true,
            ESCAPES,
            How::Custom(in_tmux),
            terminal_sane,
        ),
        row(
            "the same with `NO_COLOR=1` in the terminal",
            "as above",
            "no colour code reaches the pane",
            true,
            ESCAPES,
            How::Custom(in_tmux_no_color),
            no_color,
        ),
        row(
            "`\\r\\n` with ONLCR on into `hutch run --boot --console-log`",
            "`stty onlcr < /dev/console; printf 'crlf-line\\r\\n'` in the node's boot script",
            "the file has `crlf-line\\n`, no `\\r\\r\\n`",
            true,
            "",
            How::Custom(console_log),
            no_cr,
        ),
        row(
            "every byte 0-255 and U+FFFE/U+FFFF in a command's output and a failure message, into JUnit XML",
            "`printf` of all 256 bytes and `\\357\\277\\276\\357\\277\\277`, in a failing subtest's exception and a failing `succeed`",
            "junit.xml stays well-formed (Python's xml.etree parses it)",
            false,
            JUNIT,
            How::Test(&["--keep-going"]),
            junit_parses,
        ),
    ]
}
