//! The agent's server loop: one reader, one thread per request, replies written whole under a
//! lock in whatever order requests finish.

use std::io::{self, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use super::frame::{decode, read_frame, write_frame};
use super::{exec, files, probe, pty, AgentReply, AgentRequest, Envelope};

/// Serve the driver on `stream` until it closes. Runs in the node's namespaces (its commands
/// in its pid namespace too), started by the runtime, so it uses nothing from the node's
/// filesystem but what the commands it runs need. Returns when the driver hangs up.
pub fn serve(stream: UnixStream) -> io::Result<()> {
    prepare_process();
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    while let Some(frame) = read_frame(&mut reader)? {
        let (id, request) = match decode::<Envelope<AgentRequest>>(&frame) {
            Ok(env) => (env.id, env.body),
            Err(e) => {
                let id = serde_json::from_slice::<serde_json::Value>(&frame)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_u64()))
                    .unwrap_or(0);
                let message = format!("the agent could not read this request: {e}");
                reply(&writer, id, AgentReply::Error { message })?;
                continue;
            }
        };
        if let AgentRequest::Ping = request {
            reply(&writer, id, pong())?;
            continue;
        }
        let w = Arc::clone(&writer);
        let spawned = std::thread::Builder::new().name(format!("agent-req-{id}")).spawn(move || {
            let answer = handle(&w, id, request);
            let _ = reply(&w, id, answer);
        });
        if let Err(e) = spawned {
            let message = format!("the agent cannot start a thread: {e}");
            reply(&writer, id, AgentReply::Error { message })?;
        }
    }
    Ok(())
}

/// The whole life of the agent process that the runtime starts beside a node's init (it has
/// joined the node and closed every descriptor but its socket, `init`, PID 1's pidfd, and
/// `pid_ns`, the node's pid namespace for its commands): serve until the driver hangs up,
/// then exit, which ends a node without an init; end at once if the node's PID 1 ends first.
/// Never returns.
///
/// The driver's end of the socket is the node's only lifeline: it closes when the driver is
/// done with the node, or when the driver was killed (SIGKILL of `hutch test`). The node then
/// has no future, and waiting for its commands would keep it (and its network namespace) alive
/// for as long as they run, forever for a daemon (PID 1's parent-death signal only covers a
/// runtime that dies, not a driver that is done with the node).
pub fn agent_main(stream: UnixStream, init: std::os::fd::OwnedFd, pid_ns: std::os::fd::OwnedFd) -> ! {
    super::pidns::set(pid_ns);
    // The node is gone when PID 1 is: nothing is left to serve.
    let _ = std::thread::Builder::new()
        .name("agent-init-watch".into())
        .spawn(move || exit_when_readable(init));
    let code = if serve(stream).is_ok() { 0 } else { 1 };
    super::exec::end_all();
    // A node without an init ends with us (its PID 1 watches a pipe we hold); one with an
    // init is stopped by its runtime, or by its cgroup reaper if the runtime is gone.
    // SAFETY: _exit ends the process without running atexit handlers or flushing stdio
    // buffers copied at fork.
    unsafe { libc::_exit(code) }
}

/// Waits until `pidfd`'s process has ended, then ends this one.
fn exit_when_readable(pidfd: std::os::fd::OwnedFd) {
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll on one pollfd that outlives the call, no timeout.
    while unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) } < 0 {}
    // SAFETY: as in agent_main.
    unsafe { libc::_exit(0) }
}

/// Make the forked process fit to serve, whatever PID 1 had set before forking it.
fn prepare_process() {
    // SAFETY: signal dispositions are set to SIG_IGN, SIG_DFL or a handler that does nothing,
    // then the mask is emptied; prctl(PR_SET_NAME) copies at most 16 bytes from a
    // NUL-terminated literal.
    unsafe {
        // A driver that vanishes mid-reply must not kill the agent with SIGPIPE.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // The guest decides nothing about the agent's life (the driver does): hang-ups of a
        // terminal, an init's kill sprees and job control signals are caught and dropped. A
        // handler, not SIG_IGN: handlers are reset at exec, so commands start with defaults.
        for sig in GUEST_SIGNALS {
            libc::signal(*sig, ignore_signal as *const () as libc::sighandler_t);
        }
        // With SIGCHLD ignored the kernel would reap commands before we read their status.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // `ps` in the node shows what this process is.
        libc::prctl(libc::PR_SET_NAME, c"hutch-agent".as_ptr());
    }
    // Where commands start (like the NixOS driver's backdoor shell): they inherit it.
    let home = if std::path::Path::new("/tmp").is_dir() { "/tmp" } else { "/" };
    let _ = std::env::set_current_dir(home);
}

/// Signals that must not end or stop the agent: a hang-up or interrupt from a terminal it
/// was started from (the runtime's session, before it took its own), job control. The guest
/// cannot name the agent at all (it lives outside the node's pid namespace); this is the
/// second wall.
const GUEST_SIGNALS: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGXCPU,
    libc::SIGXFSZ,
];

extern "C" fn ignore_signal(_: libc::c_int) {}

fn pong() -> AgentReply {
    AgentReply::Pong {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn reply(w: &Mutex<UnixStream>, id: u64, body: AgentReply) -> io::Result<()> {
    let mut s = w.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut *s, &Envelope { id, body })
}

/// Carry out request `id` (on its own thread); a streamed command's output goes out through
/// `w` as it comes, in replies to the same id.
fn handle(w: &Mutex<UnixStream>, id: u64, request: AgentRequest) -> AgentReply {
    match request {
        AgentRequest::Ping => pong(),
        AgentRequest::Cancel { request } => {
            exec::cancel(request);
            AgentReply::Done
        }
        AgentRequest::Run(r) => AgentReply::Ran(exec::run(id, &r, None)),
        AgentRequest::RunStreamed(r) => {
            let mut send = |stream, data: &[u8]| {
                let _ = reply(
                    w,
                    id,
                    AgentReply::Output {
                        stream,
                        data: data.to_vec(),
                    },
                );
            };
            AgentReply::Ran(exec::run(id, &r, Some(&mut send)))
        }
        AgentRequest::ReadFile { path } => files::read_file(&path),
        AgentRequest::WriteFile {
            path,
            data,
            mode,
            make_parents,
        } => files::write_file(&path, &data, mode, make_parents),
        AgentRequest::ReadTree { path } => files::read_tree(&path),
        AgentRequest::WriteTree { path, entries } => files::write_tree(&path, &entries),
        AgentRequest::ProbeTcp { host, port } => probe::tcp(&host, port),
        AgentRequest::ProbeUnix { path, datagram } => probe::unix(&path, datagram),
        AgentRequest::PtyOpen { command, term, rows, cols } => pty::open(&command, &term, rows, cols),
        AgentRequest::PtyInput { session, data } => pty::input(session, &data),
        AgentRequest::PtyOutput { session } => pty::output(session),
        AgentRequest::PtyResize { session, rows, cols } => pty::resize(session, rows, cols),
        AgentRequest::PtyClose { session } => pty::close(session),
    }
}
