//! `hutch shell NODE [-- CMD]`: a login shell (or a command) on a fresh pty in a node of a
//! running test, through the test's control socket and the node's agent (`agent::pty`).
//! The user's terminal is put in raw mode for the session and restored after it, like ssh.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use hutch_driver::agent::{read_frame, write_frame, AgentClient};

use crate::attach_cmd::{finish, run_with_node, Select};
use crate::control::{open, ControlReply, ControlRequest, ShellEvent, ShellInput};
use crate::terminal::{window_size, RawMode};

/// Options of `hutch shell`.
#[derive(Args, Debug)]
pub struct ShellArgs {
    #[command(flatten)]
    select: Select,
    /// The node.
    node: String,
    /// A program to run on the pty instead of root's login shell (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// Runs `hutch shell`; the exit status is the shell's.
pub fn main(args: ShellArgs) -> i32 {
    finish((|| {
        let run = run_with_node(&args.select, &args.node)?;
        let tty = std::io::stdin().is_terminal();
        let (rows, cols) = window_size().unwrap_or((24, 80));
        let term = std::env::var("TERM")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "vt100".into());
        let req = ControlRequest::Shell {
            node: args.node.clone(),
            command: args.command.clone(),
            term,
            rows,
            cols,
        };
        let (reply, mut stream) = open(&run.socket(), &req)?;
        match reply {
            ControlReply::Done => {}
            ControlReply::Error { message } => bail!("{message}"),
            other => bail!("unexpected reply: {other:?}"),
        }
        let raw = if tty { Some(RawMode::enter()?) } else { None };
        let up = Arc::new(Mutex::new(stream.try_clone().context("cloning the connection")?));
        send_keys(Arc::clone(&up), tty);
        if tty {
            send_resizes(up, (rows, cols));
        }
        let mut out = std::io::stdout();
        while let Ok(Some(frame)) = read_frame(&mut stream) {
            match serde_json::from_slice::<ShellEvent>(&frame) {
                Ok(ShellEvent::Output { data }) => {
                    let _ = out.write_all(&data);
                    let _ = out.flush();
                }
                Ok(ShellEvent::Exited { status }) => {
                    drop(raw);
                    return Ok(status.code());
                }
                Err(e) => bail!("a bad message from the test: {e}"),
            }
        }
        drop(raw);
        bail!("the session ended without a status (the test or the node stopped)")
    })())
}

/// Sends what the user types until standard input ends. The end of a pipe or file is then
/// typed as Ctrl-D, every half second until the session ends: one typed ahead of a shell that
/// has not set up its line editor yet can be lost, and a shell fed from a pipe must end when
/// its input does.
fn send_keys(up: Arc<Mutex<UnixStream>>, tty: bool) {
    let _ = std::thread::Builder::new().name("keys".into()).spawn(move || {
        let mut buf = vec![0u8; 4096];
        let mut stdin = std::io::stdin();
        let send = |data: Vec<u8>| write_frame(&mut *up.lock().unwrap_or_else(|p| p.into_inner()), &ShellInput::Data { data }).is_ok();
        while let Ok(n @ 1..) = stdin.read(&mut buf) {
            if !send(buf[..n].to_vec()) {
                return;
            }
        }
        if tty {
            return;
        }
        loop {
            std::thread::sleep(Duration::from_millis(500));
            if !send(vec![0x04]) {
                return;
            }
        }
    });
}

/// Sends the window's size whenever it changes (looked at four times a second).
fn send_resizes(up: Arc<Mutex<UnixStream>>, mut last: (u16, u16)) {
    let _ = std::thread::Builder::new().name("resize".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250));
        let Some(now) = window_size() else { continue };
        if now != last {
            last = now;
            let msg = ShellInput::Resize { rows: now.0, cols: now.1 };
            if write_frame(&mut *up.lock().unwrap_or_else(|p| p.into_inner()), &msg).is_err() {
                break;
            }
        }
    });
}

/// The test's side of a shell session: starts it through the node's agent, then relays the
/// user's input to it and its output back until it ends or the user goes away (then the
/// session is hung up).
pub fn serve_session(mut stream: UnixStream, agent: &Arc<AgentClient>, command: Vec<String>, term: String, rows: u16, cols: u16) {
    let id = match agent.pty_open(command, term, rows, cols) {
        Ok(id) => id,
        Err(e) => {
            let _ = write_frame(&mut stream, &ControlReply::Error { message: e.to_string() });
            return;
        }
    };
    let Ok(mut down) = stream.try_clone() else {
        let _ = agent.pty_close(id);
        return;
    };
    if write_frame(&mut stream, &ControlReply::Done).is_err() {
        let _ = agent.pty_close(id);
        return;
    }
    let a = Arc::clone(agent);
    let pump = std::thread::Builder::new().name("shell-out".into()).spawn(move || loop {
        match a.pty_output(id) {
            Ok((data, None)) => {
                if !data.is_empty() && write_frame(&mut down, &ShellEvent::Output { data }).is_err() {
                    break;
                }
            }
            Ok((_, Some(status))) => {
                let _ = write_frame(&mut down, &ShellEvent::Exited { status });
                break;
            }
            Err(_) => break,
        }
    });
    loop {
        let msg = match read_frame(&mut stream) {
            Ok(Some(f)) => serde_json::from_slice::<ShellInput>(&f).ok(),
            _ => None,
        };
        let sent = match msg {
            Some(ShellInput::Data { data }) => agent.pty_input(id, data),
            Some(ShellInput::Resize { rows, cols }) => agent.pty_resize(id, rows, cols),
            None => break,
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = agent.pty_close(id);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Ok(p) = pump {
        let _ = p.join();
    }
}
