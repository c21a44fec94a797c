//! The agent for real: `agent::serve` in a forked child process on one end of a socketpair, the
//! client on the other; every command really runs.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

mod common;

use hutch_driver::agent::{AgentClient, AgentError, Command, EntryKind, ExitStatus, RunRequest, RunResult, OUTPUT_CAP};

/// A forked agent process and its client; the agent exits when the client is dropped.
struct Agent {
    client: Option<AgentClient>,
    pid: libc::pid_t,
}

impl Agent {
    fn start() -> Agent {
        let (ours, pid) = common::fork_agent();
        Agent {
            client: Some(AgentClient::new(ours).unwrap()),
            pid,
        }
    }

    fn client(&self) -> &AgentClient {
        self.client.as_ref().unwrap()
    }

    fn run(&self, command: Command) -> RunResult {
        self.request(command, |_| {})
    }

    fn sh(&self, line: &str) -> RunResult {
        self.run(Command::Shell(line.into()))
    }

    fn request(&self, command: Command, tweak: impl FnOnce(&mut RunRequest)) -> RunResult {
        let mut req = RunRequest {
            command,
            env: BTreeMap::new(),
            stdin: Vec::new(),
            timeout_ms: Some(20_000),
            cwd: None,
        };
        tweak(&mut req);
        self.client().run(req).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.client.take();
        if !common::reap(self.pid, Duration::from_secs(5)) {
            // SAFETY: kill our own child, which did not exit after its socket closed.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            panic!("the agent did not exit when the driver hung up");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A scratch directory, removed when dropped (also when the test fails).
fn scratch(tag: &str) -> common::Scratch {
    common::Scratch::new(&format!("agent-{tag}"))
}

#[test]
fn exit_codes_and_signals() {
    let a = Agent::start();
    assert_eq!(a.sh("true").status, ExitStatus::Code(0));
    assert_eq!(a.sh("exit 3").status, ExitStatus::Code(3));
    assert_eq!(a.run(Command::Argv(vec!["false".into()])).status, ExitStatus::Code(1));
    assert_eq!(a.sh("kill -9 $$").status, ExitStatus::Signal(9));
    let missing = a.run(Command::Argv(vec!["/no/such/program".into()]));
    assert_eq!(missing.status, ExitStatus::Code(127));
    assert!(text(&missing.stderr).contains("/no/such/program"));
}

#[test]
fn shell_is_strict_and_has_a_login_environment() {
    let a = Agent::start();
    assert_eq!(a.sh("false | true").status, ExitStatus::Code(1), "pipefail");
    assert_ne!(a.sh("echo $NOT_SET_ANYWHERE").status, ExitStatus::Code(0), "nounset");
    assert_eq!(a.sh("false; echo after").stdout, b"", "errexit");
    let env = a.sh("echo $HOME $USER; echo $PATH; pwd");
    let out = text(&env.stdout);
    assert!(out.starts_with("/root root\n"), "{out}");
    assert!(out.contains("/usr/bin"), "{out}");
    assert!(out.ends_with("/tmp\n"), "{out}");
    // argv commands get the same login environment.
    let raw = a.run(Command::Argv(vec!["sh".into(), "-c".into(), "echo $PATH".into()]));
    assert!(out.contains(&text(&raw.stdout)), "{out} vs {}", text(&raw.stdout));
    // Simple commands skip the shell, with the same result; builtins still work.
    assert_eq!(text(&a.sh("echo plain words").stdout), "plain words\n");
    assert_eq!(a.sh("test -d /tmp").status, ExitStatus::Code(0));
    assert_eq!(a.sh("no-such-command-here").status, ExitStatus::Code(127));
    assert_eq!(text(&a.sh("cd / && pwd").stdout), "/\n");
    let env = text(&a.sh("FOO=1 env").stdout);
    assert_eq!(env.lines().filter(|l| *l == "FOO=1").count(), 1, "{env}");
    // /etc/profile is sourced when it exists: what it exports is visible to shell commands.
    if std::path::Path::new("/etc/profile").exists() {
        let login = std::process::Command::new("bash")
            .args(["-c", ". /etc/profile >/dev/null 2>&1; echo $PATH"])
            .env_clear()
            .output()
            .unwrap();
        assert!(out.contains(text(&login.stdout).trim()), "{out}");
    }
}

#[test]
fn stdout_stderr_stdin_and_env_are_separate() {
    let a = Agent::start();
    let r = a.sh("echo out; echo err >&2; echo more");
    assert_eq!(text(&r.stdout), "out\nmore\n");
    assert_eq!(text(&r.stderr), "err\n");
    let r = a.request(Command::Argv(vec!["cat".into()]), |q| q.stdin = b"hello\0bytes".to_vec());
    assert_eq!(r.stdout, b"hello\0bytes");
    let r = a.request(Command::Shell("echo \"$FOO\"".into()), |q| {
        q.env.insert("FOO".into(), "bar baz".into());
    });
    assert_eq!(text(&r.stdout), "bar baz\n");
    let r = a.request(Command::Shell("pwd".into()), |q| q.cwd = Some("/".into()));
    assert_eq!(text(&r.stdout), "/\n");
}

#[test]
fn a_command_past_its_timeout_is_killed_with_its_group() {
    let a = Agent::start();
    let dir = scratch("timeout");
    let pidfile = dir.0.join("pid");
    let t = Instant::now();
    let r = a.request(Command::Shell(format!("sleep 30 & echo $! > {}; wait", pidfile.display())), |q| {
        q.timeout_ms = Some(300)
    });
    assert!(r.timed_out);
    assert_eq!(r.status, ExitStatus::Signal(libc::SIGKILL));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Gone, or a zombie waiting for its new parent to reap it.
    assert!(stat.is_empty() || stat.contains(") Z "), "the group's sleep survived: {stat}");
}

#[test]
fn commands_run_concurrently() {
    let a = Agent::start();
    let t = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..10).map(|_| s.spawn(|| a.sh("sleep 0.3"))).collect();
        for h in handles {
            assert!(h.join().unwrap().status.success());
        }
    });
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "10 x sleep 0.3 took {took:?}");
}

#[test]
fn twenty_mib_of_output_is_capped() {
    let a = Agent::start();
    let r = a.sh("head -c 20971520 /dev/zero; echo tail >&2");
    assert_eq!(r.stdout_dropped, 4 << 20);
    assert!(r.stdout.len() > OUTPUT_CAP && r.stdout.len() < OUTPUT_CAP + 200);
    assert!(text(&r.stdout[OUTPUT_CAP..]).contains("4194304 more bytes of stdout dropped"));
    assert_eq!(text(&r.stderr), "tail\n");
    assert!(r.status.success());
}

#[test]
fn a_daemon_holding_stdout_does_not_hang_the_reply() {
    let a = Agent::start();
    let t = Instant::now();
    let r = a.sh("sleep 30 & echo $!");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(r.status.success() && r.output_left_open);
    let pid: i32 = text(&r.stdout).trim().parse().unwrap();
    // The daemon is not killed by the reply: it keeps running until we stop it.
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // SAFETY: kill the sleep this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Output written right before exit still arrives whole.
    let r = a.sh("(sleep 30 >/dev/null 2>&1 &); seq 1 20000");
    assert_eq!(text(&r.stdout).lines().count(), 20000);
    assert!(!r.output_left_open);
}

#[test]
fn files_and_trees_round_trip() {
    let a = Agent::start();
    let dir = scratch("files");
    let f = dir.0.join("sub/dir/file");
    let fs = f.to_str().unwrap();
    a.client().write_file(fs, b"contents\n".to_vec(), Some(0o600)).unwrap();
    assert_eq!(a.client().read_file(fs).unwrap(), b"contents\n");
    let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let err = a.client().read_file("/no/such/file").unwrap_err();
    assert!(matches!(&err, AgentError::Remote(m) if m.contains("/no/such/file")), "{err}");

    std::os::unix::fs::symlink("file", dir.0.join("sub/dir/link")).unwrap();
    let tree = a.client().read_tree(dir.0.join("sub").to_str().unwrap()).unwrap();
    let paths: Vec<&str> = tree.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["", "dir", "dir/file", "dir/link"]);
    assert!(matches!(&tree[3].kind, EntryKind::Symlink { target } if target == "file"));
    let copy = dir.0.join("copy/here");
    a.client().write_tree(copy.to_str().unwrap(), tree).unwrap();
    assert_eq!(std::fs::read(copy.join("dir/link")).unwrap(), b"contents\n");
}

#[test]
fn probes_see_listening_sockets() {
    let a = Agent::start();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    assert_eq!(a.client().probe_tcp("127.0.0.1", port).unwrap(), Some(true));
    assert_eq!(a.client().probe_tcp("localhost", port).unwrap(), Some(true));
    drop(l);
    assert_eq!(a.client().probe_tcp("127.0.0.1", port).unwrap(), Some(false));
    assert_eq!(a.client().probe_tcp("no-such-host.invalid", 80).unwrap(), None);
    let dir = scratch("unix");
    let path = dir.0.join("sock");
    let u = std::os::unix::net::UnixListener::bind(&path).unwrap();
    assert!(a.client().probe_unix(path.to_str().unwrap(), false).unwrap());
    drop(u);
    let _ = std::fs::remove_file(&path);
    assert!(!a.client().probe_unix(path.to_str().unwrap(), false).unwrap());
}

#[test]
fn a_dead_agent_is_reported_as_gone() {
    let a = Agent::start();
    a.client().ping(Duration::from_secs(5)).unwrap();
    let waiting = std::thread::scope(|s| {
        let h = s.spawn(|| {
            a.client().run(RunRequest {
                command: Command::Shell("sleep 10".into()),
                env: BTreeMap::new(),
                stdin: Vec::new(),
                timeout_ms: None,
                cwd: None,
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: kill the agent process this test forked.
        unsafe { libc::kill(a.pid, libc::SIGKILL) };
        h.join().unwrap()
    });
    let err = waiting.unwrap_err();
    assert!(matches!(err, AgentError::Gone { .. }), "{err}");
    assert!(err.to_string().contains("agent is gone"));
    let again = a.client().ping(Duration::from_secs(1)).unwrap_err();
    assert!(matches!(again, AgentError::Gone { .. }));
}

#[test]
fn round_trip_is_about_a_fork_and_exec() {
    let a = Agent::start();
    let mut argv = Vec::new();
    let mut shell = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        a.run(Command::Argv(vec!["true".into()]));
        argv.push(t.elapsed());
        let t = Instant::now();
        a.sh("true");
        shell.push(t.elapsed());
    }
    argv.sort();
    shell.sort();
    eprintln!("median round trip: argv true {:?}, shell true {:?}", argv[25], shell[25]);
    assert!(argv[25] < Duration::from_millis(50));
}

#[test]
fn the_agent_needs_nothing_from_the_nodes_filesystem() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: chroot needs root");
        return;
    }
    // An empty root, like a NixOS node before its /etc, /bin or /lib64 exist.
    let root = scratch("emptyroot");
    let (ours, pid) = common::fork_agent_in(Some(&root.0));
    let a = Agent {
        client: Some(AgentClient::new(ours).unwrap()),
        pid,
    };
    a.client().ping(Duration::from_secs(5)).unwrap();
    a.client().write_file("/etc/hostname", b"node\n".to_vec(), None).unwrap();
    assert_eq!(a.client().read_file("/etc/hostname").unwrap(), b"node\n");
    assert_eq!(std::fs::read(root.0.join("etc/hostname")).unwrap(), b"node\n");
    // No shell and no programs: every command is a clear exit 127, never a dead agent.
    let r = a.sh("echo hello | grep hello");
    assert_eq!(r.status, ExitStatus::Code(127));
    assert!(text(&r.stderr).contains("cannot run"), "{}", text(&r.stderr));
    assert_eq!(a.sh("true").status, ExitStatus::Code(127));
    assert_eq!(a.run(Command::Argv(vec!["/bin/true".into()])).status, ExitStatus::Code(127));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| assert_eq!(a.sh("true").status, ExitStatus::Code(127)));
        }
    });
    assert_eq!(a.client().probe_tcp("localhost", 1).unwrap(), Some(false));
    drop(a);
}

#[test]
fn commands_inherit_no_stray_descriptors() {
    // A descriptor without close-on-exec, as a runtime might hold when it forks the agent.
    // SAFETY: open(2) with a NUL-terminated literal path; we close the result below.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0);
    let a = Agent::start();
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    let r = a.run(Command::Argv(vec!["ls".into(), "/proc/self/fd".into()]));
    let fds = text(&r.stdout);
    // stdio and the one ls opened to list the directory.
    assert_eq!(fds.split_whitespace().collect::<Vec<_>>(), ["0", "1", "2", "3"], "{fds}");
}

/// A cancelled script call (Ctrl-C in `--interactive`): its command is killed in the node and
/// the request ends at once with `Cancelled`, instead of waiting for the command's end; the
/// next request finds the command gone.
#[test]
fn a_cancelled_call_kills_its_command() {
    let a = Agent::start();
    let dir = std::env::temp_dir().join(format!("hutch-cancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("pid");
    let token = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = Instant::now();
    let got = std::thread::scope(|s| {
        let setter = std::sync::Arc::clone(&token);
        let file = pidfile.clone();
        s.spawn(move || {
            while !file.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
            setter.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        hutch_driver::cancel::scope(token, || {
            a.client().run(RunRequest {
                command: Command::Shell(format!("echo $$ > {}; exec sleep 100", pidfile.display())),
                env: BTreeMap::new(),
                stdin: Vec::new(),
                timeout_ms: Some(200_000),
                cwd: None,
            })
        })
    });
    assert!(matches!(got, Err(AgentError::Cancelled)), "{got:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "the cancel took {:?}", t.elapsed());
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the command (pid {pid}) still runs"
    );
    // The connection is fine afterwards.
    assert_eq!(a.sh("echo after").stdout, b"after\n");
    let _ = std::fs::remove_dir_all(&dir);
}
