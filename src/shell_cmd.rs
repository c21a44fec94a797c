//! `hutch shell NODE [-- CMD]`: a login shell (or a command) on a fresh pty in a node of a
//! running test, through the test's control socket and the node's agent (`agent::pty`).
//! The user's terminal is put in raw mode for the session and restored after it, like ssh
//! (`hutch_driver::terminal`, which `shell_interact()` shares).

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::Args;
use hutch_driver::agent::{read_frame, write_frame, AgentClient};
use hutch_driver::terminal::{self, Event, Keys};

use crate::attach_cmd::{finish, run_with_node, Select};
use crate::control::{open, ControlReply, ControlRequest, ShellEvent, ShellInput};

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
        let (rows, cols) = terminal::window_size().unwrap_or((24, 80));
        let req = ControlRequest::Shell {
            node: args.node.clone(),
            command: args.command.clone(),
            term: terminal::term(),
            rows,
            cols,
        };
        let (reply, mut stream) = open(&run.socket(), &req)?;
        match reply {
            ControlReply::Done => {}
            ControlReply::Error { message } => bail!("{message}"),
            other => bail!("unexpected reply: {other:?}"),
        }
        let up = Arc::new(Upstream(Mutex::new(stream.try_clone().context("cloning the connection")?)));
        let ended = terminal::relay(up, || match read_frame(&mut stream) {
            Ok(Some(frame)) => match serde_json::from_slice::<ShellEvent>(&frame) {
                Ok(ShellEvent::Output { data }) => Ok(Some(Event::Output(data))),
                Ok(ShellEvent::Exited { status }) => Ok(Some(Event::Exited(status))),
                Err(e) => Err(std::io::Error::other(format!("a bad message from the test: {e}"))),
            },
            Ok(None) | Err(_) => Ok(None),
        })?;
        match ended {
            Some(status) => Ok(status.code()),
            None => bail!("the session ended without a status (the test or the node stopped)"),
        }
    })())
}

/// The connection to the running test, carrying keystrokes and window sizes up.
struct Upstream(Mutex<UnixStream>);

impl Keys for Upstream {
    fn input(&self, data: Vec<u8>) -> bool {
        write_frame(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()), &ShellInput::Data { data }).is_ok()
    }
    fn resize(&self, rows: u16, cols: u16) -> bool {
        write_frame(
            &mut *self.0.lock().unwrap_or_else(|p| p.into_inner()),
            &ShellInput::Resize { rows, cols },
        )
        .is_ok()
    }
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
