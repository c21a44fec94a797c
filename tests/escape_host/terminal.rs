//! The terminal rows of tests/escape_host.rs: `hutch test` in a tmux pane (a real terminal,
//! with OSC 52 clipboard writes allowed), judged by what the pane shows, its title and tmux's
//! paste buffer.

use std::path::Path;
use std::process::{Command, Stdio};

use super::common::*;
use super::rows::line_with;
use super::{Ctx, Outcome};

/// hutch test in a tmux pane (a real terminal, with OSC 52 clipboard writes allowed).
pub fn in_tmux(ctx: &Ctx, dir: &Path) -> Outcome {
    tmux_run(ctx, dir, "")
}

/// The same with `NO_COLOR=1`.
pub fn in_tmux_no_color(ctx: &Ctx, dir: &Path) -> Outcome {
    tmux_run(ctx, dir, "NO_COLOR=1 ")
}

/// hutch test in a tmux pane with `env` set; `stderr` of the outcome is the pane with its
/// escape sequences (`capture-pane -e`).
fn tmux_run(ctx: &Ctx, dir: &Path, env: &str) -> Outcome {
    let row = dir.file_name().unwrap_or_default().to_string_lossy();
    let sock = format!("hutch-escape-{}-{}-{row}", std::process::id(), ctx.user.unwrap_or(0));
    let conf = dir.join("tmux.conf");
    std::fs::write(&conf, "set -g set-clipboard on\nset -g allow-rename on\n").unwrap();
    let out = dir.join("out");
    let hutch_line = format!("{} test {}/test.toml --output-dir {}", hutch(), dir.display(), out.display());
    let user_line = match ctx.user {
        Some(uid) => {
            let cg = delegated_cgroup(uid)
                .map(|d| format!("echo $$ > {}/cgroup.procs; ", d.display()))
                .unwrap_or_default();
            format!(
                "{cg}exec setpriv --reuid={uid} --regid={uid} --clear-groups env {env}HUTCH_CACHE={} {hutch_line}",
                cache().display()
            )
        }
        None => format!("exec env {env}HUTCH_CACHE={} {hutch_line}", cache().display()),
    };
    let shell = format!("sh -c '{user_line}'; echo hutch-exit=$?; sleep 600");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &sock, "-f"])
            .arg(&conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let started = tmux(&["new-session", "-d", "-x", "160", "-y", "60", "-s", "hutch", &shell]);
    assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut pane = String::new();
    while std::time::Instant::now() < deadline {
        pane = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "hutch", "-S", "-500"]).stdout).into_owned();
        if pane.contains("hutch-exit=") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let escaped = tmux(&["capture-pane", "-p", "-e", "-t", "hutch", "-S", "-500"]).stdout;
    let title = String::from_utf8_lossy(&tmux(&["display-message", "-p", "-t", "hutch", "#{pane_title}"]).stdout).into_owned();
    let buffers = String::from_utf8_lossy(&tmux(&["show-buffer"]).stdout).into_owned();
    tmux(&["kill-server"]);
    Outcome {
        code: if pane.contains("hutch-exit=0") { 0 } else { 1 },
        output: format!("{pane}\nTITLE={title}\nBUFFER={buffers}\n"),
        stderr: escaped,
        out,
    }
}

/// Title and clipboard untouched, the lines after the cut codes and the pass line shown.
fn terminal_kept(o: &Outcome) -> Result<(), String> {
    let title = line_with(o, "TITLE=")?;
    let buffer = line_with(o, "BUFFER=")?;
    if title.contains("hutch-owned") || buffer.contains("hutch-owned") {
        return Err(format!("{title}, {buffer}"));
    }
    line_with(o, "marker-after-escapes")?;
    line_with(o, "test \"escape-host\" passed")?;
    if o.code != 0 {
        return Err("hutch failed in the terminal".into());
    }
    Ok(())
}

/// A foreground colour code (SGR 30-37 or 90-97) in tmux's `capture-pane -e` output.
fn has_color(pane: &[u8]) -> bool {
    pane.windows(4)
        .any(|w| w[0] == 0x1b && w[1] == b'[' && (w[2] == b'3' || w[2] == b'9') && w[3].is_ascii_digit())
}

pub fn terminal_sane(o: &Outcome, _: &Ctx) -> Result<String, String> {
    terminal_kept(o)?;
    if !has_color(&o.stderr) {
        return Err("no colour on a terminal".into());
    }
    Ok("pane title and clipboard untouched; every line after the cut sequences shown, the pass line too; node names coloured".into())
}

pub fn no_color(o: &Outcome, _: &Ctx) -> Result<String, String> {
    terminal_kept(o)?;
    if has_color(&o.stderr) {
        let pane = String::from_utf8_lossy(&o.stderr);
        let colored: Vec<&str> = pane.lines().filter(|l| has_color(l.as_bytes())).take(3).collect();
        return Err(format!("colour codes on the terminal despite NO_COLOR: {colored:?}"));
    }
    Ok("no colour code in the pane; title and clipboard untouched".into())
}
