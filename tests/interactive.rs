//! `hutch test --interactive` in a real terminal (tmux), as a user at the keyboard: Ctrl-C
//! interrupts a call and keeps the session, tab completion, `shell_interact()` as one shell
//! session, `exit()` and Ctrl-D with their words and status, a failed `test_script()`, and a
//! killed hutch that leaves no REPL and no node behind. Root and rootless.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A test file with one busybox node `m` and `script`, in a scratch directory the user can
/// write to.
struct Repl {
    dir: Scratch,
    file: PathBuf,
    user: Option<u32>,
}

impl Repl {
    fn new(tag: &str, user: Option<u32>, script: &str) -> Repl {
        let dir = Scratch::new(tag);
        let image = busybox_image_for(user);
        let file = dir.0.join("t.toml");
        std::fs::write(
            &file,
            format!(
                "[test]\nname = \"repl\"\ntestScript = '''\n{script}\n'''\ntimeout = 300\n\n\
                 [defaults]\nimage = {:?}\nboot = false\n\n[nodes.m]\n",
                image.display().to_string()
            ),
        )
        .unwrap();
        if let Some(uid) = user {
            std::os::unix::fs::chown(&dir.0, Some(uid), None).unwrap();
        }
        Repl { dir, file, user }
    }

    fn out(&self) -> PathBuf {
        self.dir.0.join("out")
    }

    /// Where `run_from_pipe` has the JUnit report written.
    fn junit(&self) -> PathBuf {
        self.dir.0.join("junit.xml")
    }

    /// Runs the test `--interactive` as root with `input` on a pipe (no terminal): its output
    /// and hutch's pid.
    fn run_from_pipe(&self, input: &str) -> (std::process::Output, u32) {
        let (file, out, junit) = (self.file.display().to_string(), self.out().display().to_string(), self.junit());
        let junit = junit.display().to_string();
        let mut child = hutch_command(None, &["test", &file, "--interactive", "--output-dir", &out, "--junit-xml", &junit])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        (child.wait_with_output().unwrap(), pid)
    }

    /// The shell command tmux runs: hutch as the user (in its delegated cgroup, as
    /// `hutch_command` does), then its status; after an Enter (`ended`), whether the terminal
    /// is back in canonical mode; then a pause so the pane stays readable.
    fn command(&self) -> String {
        let who = match self.user {
            Some(uid) => {
                let gid = hutch_runtime::Passwd::by_uid(uid).map(|p| p.gid).unwrap_or(uid);
                let cgroup = delegated_cgroup(uid)
                    .map(|d| format!("echo $$ > {}; ", d.join("cgroup.procs").display()))
                    .unwrap_or_default();
                format!("{cgroup}setpriv --reuid={uid} --regid={gid} --clear-groups ")
            }
            None => String::new(),
        };
        format!(
            "cd {dir}; {who}env HUTCH_CACHE={cache} {hutch} test {file} --interactive --output-dir {out}; \
             echo HUTCH-RC=$?; read -r _; echo TTY $(stty -a | grep -o -- '-*icanon'); sleep 600",
            dir = self.dir.0.display(),
            cache = cache().display(),
            hutch = hutch(),
            file = self.file.display(),
            out = self.out().display(),
        )
    }

    /// The REPL in a fresh terminal, at its first prompt; and hutch's pid.
    fn start(&self, tag: &str) -> (Tmux, u32) {
        let tmux = Tmux::new(tag, (50, 160), &self.command());
        tmux.wait_for_lines(">>>", 1, Duration::from_secs(60));
        let shell = tmux.pane_pid();
        let hutch = children(shell)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no hutch under the terminal's shell {shell}"));
        (tmux, hutch)
    }
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether `pid` still runs (a zombie has ended: only its exit status is left).
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rfind(')').and_then(|at| stat[at + 1..].split_whitespace().next());
    state.is_some_and(|s| s != "Z" && s != "X")
}

/// Waits for hutch's status line, then has the terminal's mode printed; returns the
/// history (`HUTCH-RC=N` and `TTY icanon` when the terminal was restored).
/// (Anywhere in a line: a REPL that ends as hutch is killed may move the cursor meanwhile.)
fn ended(tmux: &Tmux) -> String {
    tmux.wait_until("HUTCH-RC=", Duration::from_secs(60), |all| all.contains("HUTCH-RC="));
    tmux.keys(&["Enter"]);
    tmux.wait_until("TTY", Duration::from_secs(30), |all| all.contains("TTY "))
}

/// Types a line and waits for the `n`-th prompt.
fn line(tmux: &Tmux, text: &str, prompts: &mut usize) -> String {
    tmux.keys(&[text, "Enter"]);
    *prompts += 1;
    tmux.wait_for_lines(">>>", *prompts, Duration::from_secs(60))
}

fn session(user: Option<u32>) {
    let tag = format!("repl-{}", user.unwrap_or(0));
    let t = Repl::new(&tag, user, "start_all()\nm.succeed(\"true\")");
    let (tmux, hutch_pid) = t.start(&tag);
    let mut prompts = 1;
    line(&tmux, "start_all()", &mut prompts);

    // Ctrl-C in a long call: back at the prompt within seconds, the command killed in the
    // node, the node still the same (not restarted), hutch still there.
    tmux.keys(&["m.succeed(\"sleep 100\")", "Enter"]);
    tmux.wait_for_lines("m: must succeed: sleep 100", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let pressed = Instant::now();
    tmux.keys(&["C-c"]);
    prompts += 1;
    let all = tmux.wait_for_lines(">>>", prompts, Duration::from_secs(10));
    let took = pressed.elapsed();
    assert!(took < Duration::from_secs(5), "Ctrl-C took {took:?} to give the prompt back");
    assert!(all.contains("KeyboardInterrupt"), "{all}");
    assert!(running(hutch_pid), "Ctrl-C ended hutch:\n{all}");
    let all = line(&tmux, "print('PS', m.succeed(\"echo ok; ps\").replace(chr(10), '|'))", &mut prompts);
    let ps = all.lines().rfind(|l| l.starts_with("PS ")).unwrap_or_else(|| panic!("{all}"));
    assert!(ps.contains("ok|"), "{all}");
    assert!(!ps.contains("sleep 100"), "the interrupted command still runs in the node: {ps}");
    assert_eq!(all.matches("m: starting").count(), 1, "the node was restarted:\n{all}");

    // Ctrl-C in a wait: the driver stops retrying (the node sees no more attempts).
    tmux.keys(&["m.wait_until_succeeds(\"echo x >> /tmp/attempts; false\")", "Enter"]);
    tmux.wait_for_lines("m: waiting for success", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    tmux.keys(&["C-c"]);
    prompts += 1;
    tmux.wait_for_lines(">>>", prompts, Duration::from_secs(10));
    let count = "a = m.succeed('wc -l < /tmp/attempts'); m.sleep(2); \
                 print('ATTEMPTS', a.strip(), m.succeed('wc -l < /tmp/attempts').strip())";
    let all = line(&tmux, count, &mut prompts);
    let counts = all.lines().rfind(|l| l.starts_with("ATTEMPTS ")).unwrap_or_else(|| panic!("{all}"));
    let n: Vec<u32> = counts.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect();
    assert!(n[0] > 0 && n[0] == n[1], "the wait went on after Ctrl-C: {counts}");

    // Ctrl-C at an empty prompt: a new prompt, as Python's REPL does.
    tmux.keys(&["C-c"]);
    prompts += 1;
    tmux.wait_for_lines(">>>", prompts, Duration::from_secs(10));
    assert!(running(hutch_pid));

    // Tab completes machine methods.
    tmux.keys(&["m.succ", "Tab"]);
    // The line being typed (the last one printed) is completed, not an earlier one.
    tmux.wait_until("m.succ completed", Duration::from_secs(10), |all| {
        all.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim_end() == ">>> m.succeed(")
    });
    tmux.keys(&["C-u"]);

    // shell_interact(): one login shell on a pty in the node.
    tmux.keys(&["m.shell_interact()", "Enter"]);
    tmux.wait_for_lines("~ #", 1, Duration::from_secs(30));
    // One line at a time, each after the shell's prompt (keys typed ahead are echoed among
    // the output).
    tmux.keys(&["cd /tmp; export X=1", "Enter"]);
    tmux.wait_for_lines("/tmp #", 1, Duration::from_secs(30));
    tmux.keys(&["pwd; echo X=$X; tty", "Enter"]);
    tmux.wait_for_lines("/tmp #", 2, Duration::from_secs(30));
    tmux.keys(&["ls /nonexistent; echo rc=$?", "Enter"]);
    tmux.wait_for_lines("rc=", 1, Duration::from_secs(30));
    // Ctrl-C here is the node shell's: it ends the command, not the session.
    tmux.keys(&["sleep 100", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["C-c"]);
    tmux.keys(&["echo still-$((1+1))", "Enter"]);
    let all = tmux.wait_for_lines("still-2", 1, Duration::from_secs(10));
    assert!(
        all.contains("\n/tmp\nX=1\n/dev/pts/"),
        "cd/export did not carry over, or no pty:\n{all}"
    );
    assert!(all.contains("/nonexistent: No such file or directory"), "stderr not shown:\n{all}");
    assert!(all.contains("rc=1"), "{all}");
    tmux.keys(&["exit", "Enter"]);
    prompts += 1;
    tmux.wait_for_lines(">>>", prompts, Duration::from_secs(30));
    let all = line(&tmux, "print('BACK', m.succeed(\"echo $((20+22))\").strip())", &mut prompts);
    assert!(all.contains("BACK 42"), "{all}");

    // exit(): the clear word, status 0, the terminal sane, nothing left.
    tmux.keys(&["exit()", "Enter"]);
    let all = ended(&tmux);
    assert!(all.contains("interactive session ended; nodes stopped"), "{all}");
    assert!(all.contains("interactive session ended (script not run)"), "{all}");
    assert!(all.contains("HUTCH-RC=0\n") && all.contains("TTY icanon"), "{all}");
    assert!(!all.contains("FAILED"), "{all}");
    assert_nothing_left(hutch_pid);
}

root_and_rootless!(
    a_session_survives_ctrl_c_and_ends_with_exit,
    a_rootless_session_survives_ctrl_c_and_ends_with_exit,
    session
);

/// Ctrl-D ends the session like exit(); a test_script() that failed makes it a failed run.
fn endings(user: Option<u32>) {
    let tag = format!("repl-end-{}", user.unwrap_or(0));
    let t = Repl::new(&tag, user, "m.succeed(\"echo in-script; false\")");
    let (tmux, _) = t.start(&format!("{tag}-d"));
    tmux.keys(&["C-d"]);
    let all = ended(&tmux);
    assert!(all.contains("interactive session ended (script not run)"), "{all}");
    assert!(all.contains("HUTCH-RC=0\n") && all.contains("TTY icanon"), "{all}");
    drop(tmux);

    let (tmux, _) = t.start(&format!("{tag}-f"));
    let mut prompts = 1;
    let all = line(&tmux, "test_script()", &mut prompts);
    assert!(all.contains("RequestedAssertionFailed"), "{all}");
    tmux.keys(&["exit()", "Enter"]);
    let all = ended(&tmux);
    assert!(all.contains("test \"repl\" FAILED"), "{all}");
    assert!(all.contains("false"), "the failure does not name the command:\n{all}");
    assert!(all.contains("HUTCH-RC=1\n") && all.contains("TTY icanon"), "{all}");
    assert!(!all.contains("script not run"), "{all}");
}

root_and_rootless!(
    ctrl_d_and_a_failed_test_script_end_the_session,
    ctrl_d_and_a_failed_test_script_end_a_rootless_session,
    endings
);

/// hutch killed (SIGKILL) while the REPL waits at its prompt: Python ends too, the terminal
/// comes back sane, and nothing of the run is left on the host.
fn killed(user: Option<u32>) {
    let tag = format!("repl-kill-{}", user.unwrap_or(0));
    let t = Repl::new(&tag, user, "start_all()");
    let (tmux, hutch_pid) = t.start(&tag);
    let mut prompts = 1;
    line(&tmux, "start_all()", &mut prompts);
    let python = children(hutch_pid)
        .into_iter()
        .find(|&p| stat_of(p).is_some_and(|(comm, _)| comm == "python3"))
        .expect("no python3 under hutch");
    // A line half typed: readline has the terminal.
    tmux.keys(&["m.su"]);
    tmux.wait_for(">>> m.su");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(hutch_pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while running(python) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running(python), "python3 ({python}) outlived the killed hutch");
    let all = ended(&tmux);
    assert!(all.contains("HUTCH-RC=137") && all.contains("TTY icanon"), "{all}");
    assert!(all.contains("the driver has ended"), "{all}");
    assert_nothing_left(hutch_pid);
    // Every process of the run (spawner, node PID 1, agent) is hutch's binary with the test
    // file's path in its command line (forked from hutch): none may live on.
    let file = t.file.display().to_string();
    let end = Instant::now() + Duration::from_secs(10);
    let mut left = of_run(&file);
    while !left.is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        left = of_run(&file);
    }
    assert!(left.is_empty(), "the killed run left processes: {left:?}");
}

/// SIGTERM to hutch (what `hutch stop TEST` does too: an abort) during a call: the run is
/// stopped as an interrupted test (status 143), the REPL ends, the terminal is sane.
fn terminated(user: Option<u32>) {
    let tag = format!("repl-term-{}", user.unwrap_or(0));
    let t = Repl::new(&tag, user, "start_all()");
    let (tmux, hutch_pid) = t.start(&tag);
    let python = children(hutch_pid)
        .into_iter()
        .find(|&p| stat_of(p).is_some_and(|(comm, _)| comm == "python3"))
        .expect("no python3 under hutch");
    tmux.keys(&["m.succeed(\"sleep 100\")", "Enter"]);
    tmux.wait_for_lines("m: must succeed: sleep 100", 1, Duration::from_secs(30));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(hutch_pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let all = ended(&tmux);
    assert!(all.contains("aborted: interrupted by SIGTERM"), "{all}");
    assert!(all.contains("HUTCH-RC=143\n") && all.contains("TTY icanon"), "{all}");
    assert!(!running(python), "python3 ({python}) outlived hutch");
    assert_nothing_left(hutch_pid);
}

root_and_rootless!(
    sigterm_stops_an_interactive_run,
    sigterm_stops_a_rootless_interactive_run,
    terminated
);

/// Live processes of hutch's binary whose command line names `file`.
fn of_run(file: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| running(pid))
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.starts_with(hutch()) && cmd.contains(file)).then(|| format!("{pid}: {cmd}"))
        })
        .collect()
}

root_and_rootless!(
    a_killed_hutch_takes_its_repl_with_it,
    a_killed_rootless_hutch_takes_its_repl_with_it,
    killed
);

/// From a pipe (no terminal), shell_interact() is one `sh` fed line by line: cd and export
/// carry over, stderr and a failing line's status show; end of input ends the session.
#[test]
fn shell_interact_from_a_pipe_is_one_shell() {
    if skip_unless_root("shell_interact_from_a_pipe_is_one_shell") {
        return;
    }
    let t = Repl::new("repl-pipe", None, "start_all()");
    let input = "m.shell_interact()\ncd /etc\nexport X=1\npwd; echo X=$X\nls /nonexistent\nexit\nprint('BACK', m.succeed('pwd').strip())\n";
    let (output, pid) = t.run_from_pipe(input);
    let (out, junit) = (t.out().display().to_string(), t.junit());
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("/etc\nX=1\n"), "cd/export did not carry over:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("/nonexistent: No such file or directory"),
        "stderr not shown:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("[m: exit status 1]"),
        "no status for the failing line:\n{stdout}\n{stderr}"
    );
    // The shell's cd was its own: a command starts where the agent's commands do.
    assert!(stdout.contains("BACK /tmp"), "{stdout}\n{stderr}");
    assert!(stderr.contains("interactive session ended; nodes stopped"), "{stderr}");
    // The report says the script did not run: neither passed nor failed.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("failures=\"0\""), "{xml}");
    assert!(
        xml.contains("<skipped message=\"interactive session ended (script not run)\"/>"),
        "{xml}"
    );
    assert_nothing_left(pid);
    assert!(Path::new(&out).join("log.txt").exists());
}

/// A line that prints more than shell_interact() keeps (16 MiB) is cut, and the session goes
/// on: the end of its output is still found.
#[test]
fn a_flooding_shell_line_is_cut_and_the_session_goes_on() {
    if skip_unless_root("a_flooding_shell_line_is_cut_and_the_session_goes_on") {
        return;
    }
    let t = Repl::new("repl-flood", None, "start_all()");
    let input = "m.shell_interact()\nhead -c 17000000 /dev/zero | tr '\\0' x; echo\necho still-here\nexit\n";
    let (output, pid) = t.run_from_pipe(input);
    let stdout = &output.stdout;
    let xs = stdout.iter().filter(|b| **b == b'x').count();
    let tail = String::from_utf8_lossy(&stdout[stdout.len().saturating_sub(2000)..]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{tail}\n{stderr}");
    assert_eq!(xs, 16 << 20, "not cut at 16 MiB:\n{tail}\n{stderr}");
    assert!(tail.contains("$ still-here\n"), "the session did not go on:\n{tail}\n{stderr}");
    assert_nothing_left(pid);
}

/// --keep-nodes-on-failure waits for a Ctrl-C that belongs to the REPL here: refused, naming
/// both flags, before anything starts.
#[test]
fn keep_nodes_on_failure_is_refused_with_interactive() {
    let out = std::process::Command::new(hutch())
        .args(["test", "t.toml", "--interactive", "--keep-nodes-on-failure"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--interactive") && err.contains("--keep-nodes-on-failure"), "{err}");
}
