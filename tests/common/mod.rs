//! Shared helpers for hutch's integration tests: fixtures built by the project's own scripts,
//! running `hutch` as root or as another user, and the check that nothing leaked.

#![allow(dead_code)]

mod census;
#[allow(unused_imports)]
pub use census::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

mod shared_dir;
mod tmux;
#[allow(unused_imports)]
pub use shared_dir::SharedDir;
#[allow(unused_imports)]
pub use tmux::Tmux;

/// The hutch binary under test.
pub fn hutch() -> &'static str {
    env!("CARGO_BIN_EXE_hutch")
}

/// True when the tests run as root (what CI does); root-only tests skip otherwise.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Prints why a test is skipped and returns true when it must be.
pub fn skip_unless_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root (CI runs the suite as root)");
        return true;
    }
    false
}

/// The fixture cache: `$HUTCH_CACHE`, else /var/cache/hutch (world-traversable, so rootless
/// tests as `nobody` can read the images too).
pub fn cache() -> PathBuf {
    std::env::var_os("HUTCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hutch"))
}

fn build_fixture(script: &str, args: &[&str]) -> PathBuf {
    // One at a time in a test process: two variants of an image built at once race on the
    // name they publish it under (images/debian).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("fixtures").join(script))
        .args(args)
        .env("HUTCH_CACHE", cache())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running fixtures/{script}: {e}"));
    assert!(out.status.success(), "fixtures/{script} failed");
    let path = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(!path.is_empty(), "fixtures/{script} printed no path");
    PathBuf::from(path)
}

/// The Debian image with its console getty as stock Debian has it (fixtures/debian-getty.sh)
/// with `args`.
pub fn getty_image(args: &[&str]) -> PathBuf {
    build_fixture("debian-getty.sh", args)
}

/// The busybox root filesystem (fixtures/busybox-image.sh).
pub fn busybox_image() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_fixture("busybox-image.sh", &[]))
}

/// The busybox root filesystem `user` boots: the plain one for root, else a copy shifted into
/// the user's rootless mapping (fixtures/busybox-image.sh --shift-for USER).
pub fn busybox_image_for(user: Option<u32>) -> PathBuf {
    static SHIFTED: std::sync::Mutex<Vec<(u32, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let Some(uid) = user.filter(|u| *u != 0) else {
        return busybox_image().to_path_buf();
    };
    let mut shifted = SHIFTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = shifted.iter().find(|(u, _)| *u == uid) {
        return p.clone();
    }
    let name = hutch_runtime::Passwd::by_uid(uid)
        .map(|p| p.name)
        .unwrap_or_else(|| panic!("uid {uid} has no user name"));
    let p = build_fixture("busybox-image.sh", &["--shift-for", &name]);
    shifted.push((uid, p.clone()));
    p
}

/// The offline-built NixOS-shaped toplevel (fixtures/nix-toplevel.sh).
pub fn nix_toplevel() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_fixture("nix-toplevel.sh", &[]))
}

/// What a `hutch` run left: its exit code and output.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with the whole output unless the run exited 0.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "hutch failed\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// Runs `hutch ARGS` as the current user, then checks nothing of it remains.
pub fn hutch_run(args: &[&str]) -> Run {
    run_as(None, args)
}

/// Runs `hutch ARGS` as `user` (a uid, via setpriv) when given, then checks nothing remains.
pub fn run_as(user: Option<u32>, args: &[&str]) -> Run {
    let child = hutch_command(user, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning hutch");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for hutch");
    assert_nothing_left(pid);
    Run::from(out)
}

/// The cgroup directories hutch may create for a run whose process id is `pid`.
pub fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for parent in [
        "/sys/fs/cgroup/unified/hutch",
        "/sys/fs/cgroup/hutch",
        "/sys/fs/cgroup/memory/hutch",
        "/sys/fs/cgroup/pids/hutch",
    ] {
        if let Ok(entries) = std::fs::read_dir(parent) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(&format!("-{pid}")) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

/// Asserts a finished hutch run (process `pid`) left no cgroup and no mount on the host.
pub fn assert_nothing_left(pid: u32) {
    // The reaper may still be finishing its cleanup for a killed run: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !cgroup_dirs(pid).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(cgroup_dirs(pid).is_empty(), "cgroups left behind: {:?}", cgroup_dirs(pid));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let ours: Vec<&str> = mounts.lines().filter(|l| l.contains("hutch-") || l.contains("/oldroot")).collect();
    assert!(ours.is_empty(), "mounts left in the host's table: {ours:?}");
}

/// The Debian bookworm image with systemd (fixtures/debian-image.sh), owned for root.
pub fn debian_image() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_fixture("debian-image.sh", &[]))
}

/// The same image shifted into `nobody`'s rootless mapping.
pub fn debian_image_for_nobody() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_fixture("debian-image.sh", &["--shift-for", "nobody"]))
}

/// Debian's systemd booted the NixOS way: a toplevel in the store (fixtures/nixos-shaped.sh).
pub fn nixos_shaped() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_fixture("nixos-shaped.sh", &[]))
}

/// The cgroup2 directory that stands in for a systemd user session's delegated subtree
/// (scripts/setup.sh makes it for `nobody`), when this host has one.
pub fn delegated_cgroup(uid: u32) -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|m| Path::new(m).join(format!("hutch-user-{uid}")))
        .find(|d| d.join("cgroup.procs").exists())
}

/// A command that runs `hutch ARGS` as `user` (inside its delegated cgroup when there is one).
pub fn hutch_command(user: Option<u32>, args: &[&str]) -> Command {
    let mut cmd = match user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            // The user's primary group (nobody's is nogroup, 65534), else the uid.
            let gid = hutch_runtime::Passwd::by_uid(uid).map(|p| p.gid).unwrap_or(uid);
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                hutch().into(),
            ]);
            if let Some(dir) = delegated_cgroup(uid) {
                let procs = dir.join("cgroup.procs");
                // SAFETY: the closure only writes a file between fork and exec (no locks taken
                // that another thread could hold: std::fs::write allocates, which the test
                // harness tolerates because it forks from a thread that is not in malloc).
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut c, move || std::fs::write(&procs, "0"));
                }
            }
            c
        }
        None => Command::new(hutch()),
    };
    cmd.args(args).env("HUTCH_CACHE", cache()).stdin(Stdio::null());
    cmd
}

/// A booted node whose console goes to a file the test reads while the node runs.
pub struct Boot {
    child: std::process::Child,
    dir: PathBuf,
}

/// Starts `hutch run ARGS --console-log ...` in the background.
pub fn boot(user: Option<u32>, args: &[&str]) -> Boot {
    let dir = std::env::temp_dir().join(format!(
        "hutch-boot-{}-{}",
        std::process::id(),
        BOOTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777));
    let log = dir.join("console.log").display().to_string();
    let mut full = vec!["run", "--console-log", &log];
    full.extend_from_slice(args);
    let child = hutch_command(user, &full)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .expect("spawning hutch");
    Boot { child, dir }
}

static BOOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Boot {
    /// hutch's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the node printed on its console so far (colour codes removed).
    pub fn console(&self) -> String {
        let raw = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let mut out = String::new();
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// What hutch printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Waits until the console or stderr shows `text`; false after `secs` or once hutch exits.
    pub fn wait_for(&mut self, text: &str, secs: u64) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if self.console().contains(text) || self.stderr().contains(text) {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return self.console().contains(text) || self.stderr().contains(text);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    /// Sends a signal to hutch.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits up to `secs` for hutch to exit (SIGKILL after that) and checks nothing remains.
    pub fn finish(mut self, secs: u64) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert_nothing_left(self.child.id());
        code
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A scratch directory every user can write, removed on drop (also when the test fails).
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh `/tmp/hutch-<tag>-<pid>`.
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("hutch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// tests/scripts/three_nodes.toml with the busybox fixture as its image, written into `dir`
/// next to a copy of its script (`script` replaces three_nodes.py when given).
/// The image is the one `user` can boot (shifted into its rootless mapping when not root).
pub fn three_nodes_test(dir: &Path, user: Option<u32>, script: Option<&str>) -> PathBuf {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let toml = std::fs::read_to_string(scripts.join("three_nodes.toml")).unwrap();
    let image = busybox_image_for(user).display().to_string();
    std::fs::write(dir.join("three_nodes.toml"), toml.replace("\"IMAGE\"", &format!("{image:?}"))).unwrap();
    let py = match script {
        Some(s) => s.to_string(),
        None => std::fs::read_to_string(scripts.join("three_nodes.py")).unwrap(),
    };
    std::fs::write(dir.join("three_nodes.py"), py).unwrap();
    for f in ["three_nodes.toml", "three_nodes.py"] {
        let _ = std::fs::set_permissions(dir.join(f), std::os::unix::fs::PermissionsExt::from_mode(0o644));
    }
    dir.join("three_nodes.toml")
}

/// A child process killed (by its pid) and reaped when the guard goes, so a failing test
/// leaves no run behind.
pub struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    /// The guarded process.
    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the child was taken")
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for it and collects its output (the guard has nothing left to clean).
    pub fn output(mut self) -> Output {
        self.0
            .take()
            .expect("the child was taken")
            .wait_with_output()
            .expect("waiting for the child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The uid of a local user, when it exists.
pub fn uid_of_user(name: &str) -> Option<u32> {
    hutch_runtime::Passwd::by_name(name).map(|p| p.uid)
}

/// Publishes the busybox fixture as the named image `busybox` in $HUTCH_CACHE/images, and a
/// copy shifted for each of `users` as `busybox@<uid>` (what fixtures/debian-image.sh does for
/// `debian`), so one test file naming `image = "busybox"` boots as root and as those users.
pub fn publish_busybox_image(users: &[u32]) {
    let images = cache().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut links = vec![("busybox".to_string(), busybox_image().to_path_buf())];
    for uid in users {
        links.push((format!("busybox@{uid}"), busybox_image_for(Some(*uid))));
    }
    for (name, target) in links {
        // A fresh link renamed over the old one: concurrent readers never see none.
        let tmp = images.join(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        std::fs::rename(&tmp, images.join(&name)).unwrap();
    }
}

/// Compiles tests/escape/escape-probe.c with `gcc -static` into a new directory `nobody` can read.
pub fn build_probe(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/escape/escape-probe.c");
    let out = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(dir.join("escape-probe"))
        .arg(&src)
        .output()
        .expect("running gcc (apt-get install gcc libc6-dev)");
    assert!(out.status.success(), "gcc failed:\n{}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The comm and the parent pid of a process, from /proc/<pid>/stat.
pub fn stat_of(pid: u32) -> Option<(String, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let comm = s[s.find('(')? + 1..s.rfind(')')?].to_string();
    let ppid = s[s.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// Whether `pid` is `ancestor` or below it (up to 16 generations).
pub fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..16 {
        if pid == ancestor {
            return true;
        }
        match stat_of(pid) {
            Some((_, ppid)) if ppid > 1 => pid = ppid,
            _ => return false,
        }
    }
    false
}

/// Host pids of the processes below `root` whose comm is `comm`.
pub fn hutch_descendants(root: u32, comm: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if stat_of(pid).is_some_and(|(c, _)| c == comm) && descends_from(pid, root) {
            out.push(pid);
        }
    }
    out
}

/// Ends an escape table run (tests/escape*.rs): prints the table for `mode` (rootful or
/// rootless), writes it to `$HUTCH_ESCAPE_REPORT/<stem>-<mode>.md` when asked, and fails on
/// any row that was not refused.
pub fn finish_escape_table(stem: &str, mode: &str, table: &str, failures: &[String]) {
    eprintln!("{stem}, hutch run by {mode}:\n{table}");
    if let Some(dir) = std::env::var_os("HUTCH_ESCAPE_REPORT") {
        std::fs::write(Path::new(&dir).join(format!("{stem}-{mode}.md")), table).unwrap();
    }
    assert!(
        failures.is_empty(),
        "{mode}: {} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `nobody`: the rootless tests' user (CI gives it a subordinate id range).
pub const NOBODY: u32 = 65534;

/// Two tests of `check(user)`: hutch started by root (`None`) and by `nobody`; both skip
/// unless the test process is root (it switches users and builds fixtures).
#[macro_export]
macro_rules! root_and_rootless {
    ($rootful:ident, $rootless:ident, $check:path) => {
        #[test]
        fn $rootful() {
            if common::skip_unless_root(stringify!($rootful)) {
                return;
            }
            $check(None);
        }

        #[test]
        fn $rootless() {
            if common::skip_unless_root(stringify!($rootless)) {
                return;
            }
            $check(Some(common::NOBODY));
        }
    };
}

/// Waits (at most `limit`) until `path` exists or `child` has exited: a test script says it
/// is at the point where the test acts from the host.
pub fn wait_for_path(path: &Path, child: &mut ChildGuard, limit: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + limit;
    while !path.exists() && std::time::Instant::now() < end && child.child().try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    path.exists()
}

/// A finished `hutch test` of a test file written by [`run_test_file`].
pub struct TestRun {
    /// It exited 0.
    pub passed: bool,
    /// Its stdout (what the script printed).
    pub stdout: String,
    /// stdout and stderr, for failure messages.
    pub all: String,
}

/// Writes `toml` as t.toml and `script` as t.py into `dir` and runs `hutch test` on them as
/// `user`, with the output directory in `dir`.
pub fn run_test_file(user: Option<u32>, dir: &Path, toml: &str, script: &str) -> TestRun {
    std::fs::write(dir.join("t.toml"), toml).unwrap();
    std::fs::write(dir.join("t.py"), script).unwrap();
    let out_dir = dir.join("out").display().to_string();
    let out = hutch_command(user, &["test", "t.toml", "--output-dir", &out_dir])
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    TestRun {
        passed: out.status.success(),
        stdout,
        all,
    }
}

/// Runs `hutch test FILE --output-dir OUT EXTRA...` as `user`, checks it left nothing behind,
/// and returns its exit code and combined output.
pub fn hutch_test_clean(user: Option<u32>, file: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let (file_s, out_s) = (file.display().to_string(), out.display().to_string());
    let mut args = vec!["test", &file_s, "--output-dir", &out_s];
    args.extend_from_slice(extra);
    let child = hutch_command(user, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning hutch");
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert_nothing_left(pid);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}
