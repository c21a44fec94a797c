//! `hutch list`, `exec`, `logs` and `stop` from another terminal, against a test that runs:
//! what a user does to look into a test while it runs, root and rootless.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::tmux::Tmux;
use common::*;

const NOBODY: u32 = 65534;

/// A test file with nodes alpha and beta on one VLAN whose script waits until /tmp/go exists
/// on alpha, and a private runtime directory for it (so parallel tests do not see each other).
struct Waiting {
    dir: Scratch,
    file: PathBuf,
    xdg: PathBuf,
}

impl Waiting {
    fn new(tag: &str, user: Option<u32>, name: &str) -> Waiting {
        let dir = Scratch::new(tag);
        let image = busybox_image_for(user);
        let file = dir.0.join("t.toml");
        std::fs::write(
            &file,
            format!(
                "[test]\nname = \"{name}\"\ntestScript = '''\nstart_all()\nalpha.wait_until_succeeds(\"test -e /tmp/go\", timeout=120)\n'''\n\
                 timeout = 180\n\n[defaults]\nimage = {:?}\nboot = false\nvlans = [1]\n\n[nodes.alpha]\n[nodes.beta]\n",
                image.display().to_string()
            ),
        )
        .unwrap();
        let xdg = dir.0.join("xdg");
        std::fs::create_dir(&xdg).unwrap();
        std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
        if let Some(uid) = user {
            std::os::unix::fs::chown(&xdg, Some(uid), None).unwrap();
        }
        Waiting { dir, file, xdg }
    }

    /// `hutch ARGS` as `user` with this runtime directory.
    fn hutch(&self, user: Option<u32>, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut cmd = hutch_command(user, args);
        cmd.env("XDG_RUNTIME_DIR", &self.xdg).stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().unwrap();
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the test in the background as `user`.
    fn start(&self, user: Option<u32>, out: &str) -> ChildGuard {
        let out = self.dir.0.join(out).display().to_string();
        let file = self.file.display().to_string();
        let child = hutch_command(user, &["test", &file, "--output-dir", &out])
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        ChildGuard::new(child)
    }

    /// Waits until `hutch list` shows `rows` nodes up; returns its output.
    fn wait_up(&self, user: Option<u32>, rows: usize) -> String {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let (code, out, err) = self.hutch(user, &["list"], None);
            if code == 0 && out.lines().filter(|l| l.split_whitespace().nth(2) == Some("up")).count() == rows {
                return out;
            }
            assert!(Instant::now() < end, "nodes never came up in `hutch list`:\n{out}{err}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The run directories registered under the runtime directory.
    fn entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.xdg.join("hutch"))
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

fn row<'a>(list: &'a str, test: &str, node: &str) -> Vec<&'a str> {
    list.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[0] == test && f[1] == node)
        .unwrap_or_else(|| panic!("no row for {test}/{node} in:\n{list}"))
}

fn lifecycle(user: Option<u32>) {
    let tag = format!("attach-{}", user.unwrap_or(0));
    let t = Waiting::new(&tag, user, "attach");
    let mut run = t.start(user, "out");
    let list = t.wait_up(user, 2);
    let alpha = row(&list, "attach", "alpha");
    assert_eq!(alpha[2], "up");
    assert_eq!(alpha[5], "192.168.1.1/24", "{list}");
    let pid: u32 = alpha[3].parse().unwrap_or_else(|_| panic!("pid column: {list}"));
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "node pid {pid} is not running");
    // Only its user can find it: the runtime directory and the run's entry are private.
    let hutch_dir = t.xdg.join("hutch");
    let meta = std::fs::metadata(&hutch_dir).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), user.unwrap_or(0));
    assert_eq!(t.entries().len(), 1);

    // A command's output and exit status come back as hutch exec's own.
    let (code, out, err) = t.hutch(user, &["exec", "beta", "--", "sh", "-c", "echo out; echo err >&2; exit 7"], None);
    assert_eq!((code, out.as_str()), (7, "out\n"), "{err}");
    assert!(err.contains("err"), "{err}");
    let (code, out, err) = t.hutch(user, &["exec", "alpha", "--", "cat"], Some("from a pipe\n"));
    assert_eq!((code, out.as_str()), (0, "from a pipe\n"), "{err}");
    let (code, out, _) = t.hutch(user, &["exec", "alpha", "--", "hostname"], None);
    assert_eq!((code, out.trim()), (0, "alpha"));
    let (code, _, err) = t.hutch(user, &["exec", "--test", "other", "alpha", "--", "true"], None);
    assert_ne!(code, 0);
    assert!(err.contains("no running test is named `other`"), "{err}");
    let (code, _, err) = t.hutch(user, &["exec", "delta", "--", "true"], None);
    assert_ne!(code, 0);
    assert!(err.contains("no running test has a node `delta`"), "{err}");

    // A shell fed from a pipe: its commands run on a pty; its exit status is ours.
    let (code, out, err) = t.hutch(user, &["shell", "alpha"], Some("tty\necho piped-$((2+3))\nexit 4\n"));
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("piped-5") && out.contains("/dev/pts/"), "{out}");
    // ... and it ends when the pipe does.
    let (code, out, err) = t.hutch(user, &["shell", "alpha"], Some("echo no-exit\n"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no-exit"), "{out}");

    // The node's log has what the driver did there.
    let (code, out, _) = t.hutch(user, &["logs", "beta"], None);
    assert_eq!(code, 0);
    assert!(out.contains("hutch exec: sh -c"), "{out}");

    // Stopping one node leaves the test running, with that node down.
    assert_eq!(t.hutch(user, &["stop", "beta"], None).0, 0);
    let (_, list, _) = t.hutch(user, &["list"], None);
    assert_eq!(row(&list, "attach", "beta")[2], "down", "{list}");
    assert_eq!(row(&list, "attach", "alpha")[2], "up", "{list}");

    // `logs -f` follows the node's log until the test ends.
    let follow = hutch_command(user, &["logs", "-f", "alpha"])
        .env("XDG_RUNTIME_DIR", &t.xdg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let follow = ChildGuard::new(follow);

    // What the script waits for, made from outside: the test passes, its entry goes.
    assert_eq!(t.hutch(user, &["exec", "alpha", "--", "touch", "/tmp/go"], None).0, 0);
    let pid = run.id();
    let status = run.child().wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let followed = follow.output();
    let text = String::from_utf8_lossy(&followed.stdout);
    assert_eq!(followed.status.code(), Some(0));
    assert!(text.contains("hutch exec: touch /tmp/go") && text.contains("stopping"), "{text}");
    assert_nothing_left(pid);
    assert!(t.entries().is_empty(), "entries left: {:?}", t.entries());
    let (code, _, err) = t.hutch(user, &["exec", "alpha", "--", "true"], None);
    assert_ne!(code, 0);
    assert!(err.contains("no test of yours is running"), "{err}");
}

#[test]
fn list_exec_logs_stop_reach_a_running_test() {
    if skip_unless_root("attach") {
        return;
    }
    lifecycle(None);
}

#[test]
fn list_exec_logs_stop_reach_a_rootless_running_test() {
    if skip_unless_root("attach_rootless") {
        return;
    }
    lifecycle(Some(NOBODY));
}

#[test]
fn two_runs_are_told_apart_by_name_and_stop_ends_a_whole_test() {
    if skip_unless_root("attach_two") {
        return;
    }
    let one = Waiting::new("attach-two", None, "first");
    let two_file = one.dir.0.join("two.toml");
    std::fs::write(
        &two_file,
        std::fs::read_to_string(&one.file).unwrap().replace("\"first\"", "\"second\""),
    )
    .unwrap();
    let mut first = one.start(None, "out1");
    let out2 = one.dir.0.join("out2").display().to_string();
    let mut second = ChildGuard::new(
        hutch_command(None, &["test", &two_file.display().to_string(), "--output-dir", &out2])
            .env("XDG_RUNTIME_DIR", &one.xdg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    one.wait_up(None, 4);
    let (code, _, err) = one.hutch(None, &["exec", "alpha", "--", "true"], None);
    assert_ne!(code, 0);
    assert!(err.contains("choose one with --test NAME"), "{err}");
    let (code, out, _) = one.hutch(None, &["exec", "--test", "second", "alpha", "--", "hostname"], None);
    assert_eq!((code, out.trim()), (0, "alpha"));
    let (_, list, _) = one.hutch(None, &["list", "--test", "second"], None);
    assert!(list.contains("second") && !list.contains("first"), "{list}");

    // `hutch stop TEST` ends that test (its nodes stopped), not the other.
    assert_eq!(one.hutch(None, &["stop", "second"], None).0, 0);
    let status = second.child().wait().unwrap();
    assert_eq!(status.code(), Some(1), "a stopped test is not a passed one");
    let (_, list, _) = one.hutch(None, &["list"], None);
    assert!(list.contains("first") && !list.contains("second"), "{list}");

    // A killed run leaves its entry; the next command sweeps it.
    let pid = first.id();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = first.child().wait();
    assert_eq!(one.entries().len(), 1, "the killed run's entry is still there");
    let (code, _, err) = one.hutch(None, &["list"], None);
    assert_eq!(code, 0);
    assert!(err.contains("no test of yours is running"), "{err}");
    assert!(one.entries().is_empty(), "the stale entry was not swept: {:?}", one.entries());
}

/// `hutch shell` in a real terminal: a pty in the node, its size (and a resize), Ctrl-C for
/// the node's shell and not for hutch, the exit status, and the user's terminal restored.
fn shell_in_tmux(user: Option<u32>) {
    let tag = format!("shell-{}", user.unwrap_or(0));
    let t = Waiting::new(&tag, user, "shell");
    let mut run = t.start(user, "out");
    t.wait_up(user, 2);
    let who = match user {
        Some(uid) => format!("setpriv --reuid={uid} --regid={uid} --clear-groups "),
        None => String::new(),
    };
    let command = format!(
        "XDG_RUNTIME_DIR={} {who}{} shell alpha; echo SHELL-RC=$? $(stty -a | grep -o -- '-*icanon'); sleep 60",
        t.xdg.display(),
        hutch()
    );
    let tmux = Tmux::new(&tag, (30, 100), &command);
    tmux.wait_for("#");
    tmux.keys(&["echo T$((6*7)); tty; stty size; echo E$((1+1))N", "Enter"]);
    let pane = tmux.wait_for("E2N");
    assert!(pane.contains("/dev/pts/"), "not a tty in the node:\n{pane}");
    assert!(pane.contains("30 100"), "the pty has not the window's size:\n{pane}");
    tmux.run(&["resize-window", "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_millis(800));
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("40 120");
    tmux.keys(&["sleep 100", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["C-c"]);
    tmux.keys(&["echo still-$((1+1))", "Enter"]);
    let pane = tmux.wait_for("still-2");
    assert!(!pane.contains("SHELL-RC"), "Ctrl-C ended hutch shell:\n{pane}");
    tmux.keys(&["exit 3", "Enter"]);
    let pane = tmux.wait_for("SHELL-RC=3");
    assert!(pane.contains("SHELL-RC=3 icanon"), "the terminal was not restored:\n{pane}");
    assert_eq!(t.hutch(user, &["exec", "alpha", "--", "touch", "/tmp/go"], None).0, 0);
    assert_eq!(run.child().wait().unwrap().code(), Some(0));
}

#[test]
fn shell_gets_a_fresh_pty_in_the_node() {
    if skip_unless_root("shell") {
        return;
    }
    shell_in_tmux(None);
}

#[test]
fn shell_gets_a_fresh_pty_in_a_rootless_node() {
    if skip_unless_root("shell_rootless") {
        return;
    }
    shell_in_tmux(Some(NOBODY));
}

/// `--keep-nodes-on-failure`: a failed test says how to get in, its nodes stay up for
/// `hutch exec`, and Ctrl-C ends it with the failure's status and nothing left behind.
#[test]
fn a_failed_test_keeps_its_nodes_until_ctrl_c() {
    if skip_unless_root("keep_nodes") {
        return;
    }
    let t = Waiting::new("keep", None, "keep");
    std::fs::write(
        &t.file,
        std::fs::read_to_string(&t.file).unwrap().replace(
            "alpha.wait_until_succeeds(\"test -e /tmp/go\", timeout=120)",
            "alpha.succeed(\"touch /tmp/mark; false\")",
        ),
    )
    .unwrap();
    let out = t.dir.0.join("out").display().to_string();
    let file = t.file.display().to_string();
    let mut run = ChildGuard::new(
        hutch_command(None, &["test", &file, "--output-dir", &out, "--keep-nodes-on-failure"])
            .env("XDG_RUNTIME_DIR", &t.xdg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = run.child().stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let end = Instant::now() + Duration::from_secs(60);
    while !seen.contains("hutch shell") {
        let line = rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no hint to get in:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
    }
    assert!(seen.contains("`hutch shell alpha`"), "{seen}");
    // The failed node is still there, as the failure left it.
    let (code, out, err) = t.hutch(None, &["exec", "alpha", "--", "ls", "/tmp/mark"], None);
    assert_eq!((code, out.trim()), (0, "/tmp/mark"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(run.child().try_wait().unwrap().is_none(), "the test ended without Ctrl-C");
    let pid = run.id();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = run.child().wait().unwrap();
    assert_eq!(status.code(), Some(1), "a failed test stays failed");
    assert_nothing_left(pid);
    assert!(t.entries().is_empty());
}
