//! Bad input: malformed test files and command lines for `hutch test` and `hutch run`, each
//! answered by one message that names the file (or option), the key and the fix, with exit code
//! 2 (`hutch test`) or 125 (`hutch run`), no panic, and nothing created: no cgroup directory
//! (watched with inotify while hutch runs), no hutch-out folder, no file next to the test file,
//! no mount. Rows marked with a finding do not behave so today; they are reported on every run,
//! fail with HUTCH_BAD_INPUT_STRICT=1, and fail always once fixed (so the mark goes with the fix).
//! Then a bounded, seeded random-mutation run of the test-file parser and the agent frame
//! decoder: no panic (the stable-toolchain stand-in for the cargo-fuzz targets in fuzz/).

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use common::*;

/// What is run: a test file for `hutch test`, or a command line.
enum Cmd {
    /// `hutch test NAME` with NAME holding the text (`{IMG}` is an image directory).
    File(&'static str, String),
    /// `hutch ARGS` (`{IMG}` is replaced as above; `{REAL}` by the busybox image).
    Args(&'static [&'static str]),
}

struct Case {
    what: &'static str,
    cmd: Cmd,
    code: i32,
    /// Substrings the message must hold: the key (or option) and the fix.
    want: &'static [&'static str],
    /// One line, starting with the file name (`hutch test`) or `hutch: ` (`hutch run`).
    one_line: bool,
    finding: Option<&'static str>,
}

const B2: &str = "B2: a TOML syntax error is reported on two lines";

const HEAD: &str = "[test]\nname = \"bad\"\nscript = \"ok.py\"\n";
/// A node with a memory limit: were it started, hutch would make its cgroups.
const NODE: &str = "[nodes.machine]\nimage = \"{IMG}\"\nboot = false\nmemory = \"64M\"\n";
/// The same without the limit, for the cases about `memory` itself.
const NODE_BARE: &str = "[nodes.machine]\nimage = \"{IMG}\"\nboot = false\n";

fn file(name: &'static str, text: &str) -> Cmd {
    Cmd::File(name, text.to_string())
}

fn test_case(what: &'static str, text: String, want: &'static [&'static str]) -> Case {
    Case {
        what,
        cmd: Cmd::File("t.toml", text),
        code: 2,
        want,
        one_line: true,
        finding: None,
    }
}

fn run_case(what: &'static str, args: &'static [&'static str], want: &'static [&'static str], finding: Option<&'static str>) -> Case {
    Case {
        what,
        cmd: Cmd::Args(args),
        code: 125,
        want,
        one_line: true,
        finding,
    }
}

fn node(extra: &str) -> String {
    format!("{HEAD}{NODE_BARE}{extra}\n")
}

fn cases() -> Vec<Case> {
    let many: String = (0..255).map(|i| format!("[nodes.n{i}]\n")).collect();
    let mut c = vec![
        test_case("unknown top-level table", format!("[tset]\n{HEAD}{NODE}"), &["tset", "expected one of `test`"]),
        test_case("unknown key in [test]", format!("{HEAD}timeout_s = 5\n{NODE}"), &["test.timeout_s", "expected one of"]),
        test_case("misspelt node key", node("imgae = \"x\""), &["nodes.machine.imgae", "expected one of `image`"]),
        test_case("memory of the wrong type", node("memory = true"), &["nodes.machine.memory", "\"512M\""]),
        test_case("vlans of the wrong type", node("vlans = \"1\""), &["nodes.machine.vlans", "expected a sequence"]),
        test_case("timeout of the wrong type", format!("{HEAD}timeout = \"ten\"\n{NODE}"), &["test.timeout", "expected i64"]),
        test_case("no [test] table", NODE.to_string(), &["missing field `test`", "add a [test] table"]),
        test_case("no test name", format!("[test]\nscript = \"ok.py\"\n{NODE}"), &["test", "name = \"nginx\""]),
        test_case("empty test name", format!("[test]\nname = \" \"\nscript = \"ok.py\"\n{NODE}"), &["test.name", "name = \"nginx\""]),
        test_case("no script", format!("[test]\nname = \"bad\"\n{NODE}"), &["test", "script = \"test.py\""]),
        test_case("script and testScript", format!("{HEAD}testScript = \"start_all()\"\n{NODE}"), &["test", "keep one"]),
        test_case("script path that does not exist", format!("[test]\nname = \"bad\"\nscript = \"nope.py\"\n{NODE}"), &["test.script", "relative to the test file"]),
        test_case("image that does not exist", format!("{HEAD}[nodes.machine]\nimage = \"./nope\"\n"), &["nodes.machine.image", "relative to the test file"]),
        test_case("image name never built", format!("{HEAD}[nodes.machine]\nimage = \"nosuchimage\"\n"), &["nodes.machine.image", "build the image first"]),
        test_case("image and toplevel", format!("{HEAD}[nodes.machine]\nimage = \"{{IMG}}\"\ntoplevel = \"top\"\n"), &["nodes.machine", "keep one"]),
        test_case("neither image nor toplevel", format!("{HEAD}[nodes.machine]\nboot = false\n"), &["nodes.machine", "set one on the node or in [defaults]"]),
        test_case("toplevel without init", format!("{HEAD}[nodes.machine]\ntoplevel = \"notop\"\n"), &["nodes.machine.toplevel", "no executable `init`"]),
        test_case("toplevel that does not exist", format!("{HEAD}[nodes.machine]\ntoplevel = \"/nix/store/hutch-no-such-system\"\n"), &["nodes.machine.toplevel", "point `toplevel` at a built NixOS system"]),
        test_case("store that is not a directory", format!("{HEAD}[nodes.machine]\ntoplevel = \"top\"\nstore = \"nostore\"\n"), &["nodes.machine.store", "point it at the directory"]),
        test_case("store on an image node", node("closure_only = true"), &["nodes.machine", "apply to `toplevel` nodes only"]),
        test_case("names that collide after pythonizing", format!("{HEAD}[nodes.web-1]\nimage = \"{{IMG}}\"\n[nodes.web_1]\nimage = \"{{IMG}}\"\n"), &["nodes.web_1", "rename one of them"]),
        test_case("a Python keyword as a node name", format!("{HEAD}[nodes.class]\nimage = \"{{IMG}}\"\n"), &["nodes.class", "rename the node"]),
        test_case("a node name hiding a script global", format!("{HEAD}[nodes.log]\nimage = \"{{IMG}}\"\n"), &["nodes.log", "rename the node"]),
        test_case("a node name that is no hostname", format!("{HEAD}[nodes.1web]\nimage = \"{{IMG}}\"\n"), &["nodes.1web", "start with a letter"]),
        test_case("VLAN 0", node("vlans = [0]"), &["nodes.machine.vlans", "VLANs are 1 to 255"]),
        test_case("VLAN 256", node("vlans = [256]"), &["nodes.machine.vlans", "VLANs are 1 to 255"]),
        test_case("a VLAN listed twice", node("vlans = [1, 1]"), &["nodes.machine.vlans", "list each VLAN once"]),
        test_case("255 nodes on a VLAN", format!("{HEAD}[defaults]\nimage = \"{{IMG}}\"\nvlans = [1]\n{many}"), &["nodes", "split the test"]),
        test_case("negative memory", node("memory = \"-5M\""), &["nodes.machine.memory", "is negative", "\"512M\""]),
        test_case("negative memory in bytes", node("memory = -1"), &["nodes.machine.memory", "\"512M\""]),
        test_case("memory that is no size", node("memory = \"lots\""), &["nodes.machine.memory", "\"512M\""]),
        test_case("pids_max zero", node("pids_max = 0"), &["nodes.machine.pids_max", "pids_max = 1024"]),
        test_case("negative timeout", format!("{HEAD}timeout = -3\n{NODE}"), &["test.timeout", "timeout = 600"]),
        test_case("relative path inside the node", node("files = { \"etc/motd\" = \"ok.py\" }"), &["nodes.machine.files", "must be absolute"]),
        test_case("host file that does not exist", node("files = { \"/etc/motd\" = \"nofile\" }"), &["nodes.machine.files", "relative to the test file"]),
        test_case("environment name with =", node("env = { \"A=B\" = \"x\" }"), &["nodes.machine.env", "no `=`"]),
        test_case("invalid hostname", node("hostname = \"bad host!\""), &["nodes.machine.hostname", "e.g. \"web-1\""]),
        test_case("no nodes", HEAD.to_string(), &["nodes", "add at least one table"]),
        test_case("empty file", String::new(), &["missing field `test`", "add a [test] table"]),
        Case {
            finding: Some(B2),
            ..test_case("TOML syntax error", "[test\nname = \"bad\"\n".into(), &["invalid table header", "line 1"])
        },
        Case {
            finding: None,
            ..test_case("script with a Python syntax error", format!("[test]\nname = \"bad\"\nscript = \"bad.py\"\n{NODE}"), &["test.script", "SyntaxError"])
        },
        Case {
            finding: None,
            ..test_case("inline testScript with a syntax error", format!("[test]\nname = \"bad\"\ntestScript = \"start_all(\"\n{NODE}"), &["testScript", "SyntaxError"])
        },
        Case {
            cmd: file("t.json", "{\"test\": {\"name\": \"bad\", \"script\": \"ok.py\"}, \"nodes\": {\"a\": {\"image\": \"{IMG}\"}, \"a\": {\"image\": \"{IMG}\"}}}"),
            ..test_case("duplicate nodes (JSON)", String::new(), &["nodes", "defined twice", "one entry"])
        },
        Case {
            cmd: file("t.json", "{\"test\": {\"name\": \"bad\",}"),
            ..test_case("JSON syntax error", String::new(), &["trailing comma", "line 1 column"])
        },
        Case {
            cmd: Cmd::Args(&["test", "missing.toml"]),
            ..test_case("test file that does not exist", String::new(), &["missing.toml: cannot read the test file"])
        },
    ];
    c.extend([
        run_case(
            "--image that does not exist",
            &["run", "--image", "/nonexistent/image", "--", "/bin/true"],
            &["--image", "does not exist"],
            None,
        ),
        run_case(
            "--memory zero",
            &["run", "--image", "{IMG}", "--memory", "0", "--", "/bin/true"],
            &["--memory", "512M"],
            None,
        ),
        run_case(
            "--setenv without =",
            &["run", "--image", "{IMG}", "--setenv", "NOEQ", "--", "/bin/true"],
            &["--setenv", "NAME=VALUE"],
            None,
        ),
        run_case(
            "--bind with a bad mode",
            &["run", "--image", "{IMG}", "--bind", "/a:/b:rx", "--", "/bin/true"],
            &["--bind", "SRC:DST:ro"],
            None,
        ),
        run_case(
            "--hostname that is no hostname",
            &["run", "--image", "{IMG}", "--hostname", "bad host!", "--", "/bin/true"],
            &["--hostname", "letters"],
            None,
        ),
        run_case(
            "--stop-timeout NaN",
            &["run", "--image", "{IMG}", "--stop-timeout", "nan", "--", "/bin/true"],
            &["--stop-timeout", "e.g. 10"],
            None,
        ),
        run_case(
            "--toplevel without init",
            // An explicit store: a fresh host with nix-bin has no /nix/store until Nix first runs.
            &["run", "--toplevel", "{IMG}", "--store", "{IMG}"],
            &["has no executable init"],
            None,
        ),
        run_case(
            "--memory negative",
            &["run", "--image", "{IMG}", "--memory", "-5M", "--", "/bin/true"],
            &["--memory"],
            None,
        ),
        run_case(
            "--pids-max negative",
            &["run", "--image", "{IMG}", "--pids-max", "-1", "--", "/bin/true"],
            &["--pids-max"],
            None,
        ),
        run_case(
            "--pids-max not a number",
            &["run", "--image", "{IMG}", "--pids-max", "abc", "--", "/bin/true"],
            &["--pids-max"],
            None,
        ),
        run_case(
            "misspelt option",
            &["run", "--imagee", "{IMG}", "--", "/bin/true"],
            &["--imagee", "--image"],
            None,
        ),
        run_case("no --image nor --toplevel", &["run", "--", "/bin/true"], &["--image"], None),
        run_case(
            "--store with --image",
            &["run", "--store", "/nonexistent", "--image", "{REAL}", "--", "/bin/true"],
            &["--store"],
            None,
        ),
    ]);
    // Usage errors of `hutch test`: one line naming the problem, exit 2.
    let clap: [(&'static str, &'static [&'static str], &'static [&'static str]); 3] = [
        ("`hutch test` without a file", &["test"], &["<FILE>"]),
        ("`hutch test` with an unknown option", &["test", "t.toml", "--bogus"], &["--bogus"]),
        (
            "`hutch test --junit-xml` without a value",
            &["test", "--junit-xml"],
            &["--junit-xml"],
        ),
    ];
    for (what, args, want) in clap {
        c.push(Case {
            what,
            cmd: Cmd::Args(args),
            code: 2,
            want,
            one_line: true,
            finding: None,
        });
    }
    c
}

/// Watches the cgroup folders hutch makes its node cgroups in (inotify IN_CREATE).
struct CgroupWatch {
    fd: OwnedFd,
    watched: usize,
}

const CGROUP_PARENTS: &[&str] = &[
    "/sys/fs/cgroup/unified/hutch",
    "/sys/fs/cgroup/hutch",
    "/sys/fs/cgroup/memory/hutch",
    "/sys/fs/cgroup/pids/hutch",
];

impl CgroupWatch {
    fn new() -> CgroupWatch {
        // SAFETY: no pointers; the result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(raw >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut watched = 0;
        for dir in CGROUP_PARENTS.iter().filter(|d| Path::new(d).is_dir()) {
            let c = std::ffi::CString::new(*dir).unwrap();
            // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_CREATE) } >= 0 {
                watched += 1;
            }
        }
        CgroupWatch { fd, watched }
    }

    /// Names created since the last call whose `-<pid>` suffix is `pid` or one of the 64 pids
    /// after it (hutch and the processes it forked right after starting; pids wrap at
    /// pid_max, back to 300), so other runs on the host do not count.
    fn created_by(&self, pid: u32) -> Vec<String> {
        let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 22);
        let mut names = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let mut at = 0;
            let head = std::mem::size_of::<libc::inotify_event>();
            while at + head <= n as usize {
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = &buf[at + head..at + head + len];
                let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
                names.push(name);
                at += head + len;
            }
        }
        names
            .into_iter()
            .filter(|n| {
                n.rsplit_once('-')
                    .and_then(|(_, p)| p.parse::<u32>().ok())
                    .is_some_and(|p| pids_after(pid, p, pid_max) <= 64)
            })
            .collect()
    }
}

/// A case's folder: the scripts, an empty image folder, a toplevel with and one without init.
fn case_dir(i: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hutch-bad-input-{}-{i}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["rootfs", "notop", "top"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("ok.py"), "start_all()\n").unwrap();
    std::fs::write(dir.join("bad.py"), "start_all()\nmachine.succeed(\"true\"\n").unwrap();
    std::fs::write(dir.join("top/init"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("top/init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Runs one case and checks everything the issue asks of a refusal.
fn check(i: usize, case: &Case, watch: &CgroupWatch, real_image: &str) -> Result<(), String> {
    let dir = case_dir(i);
    let img = dir.join("rootfs").display().to_string();
    let fill = |s: &str| s.replace("{IMG}", &img).replace("{REAL}", real_image);
    let args: Vec<String> = match &case.cmd {
        Cmd::File(name, text) => {
            std::fs::write(dir.join(name), fill(text)).unwrap();
            vec!["test".into(), name.to_string()]
        }
        Cmd::Args(a) => a.iter().map(|s| fill(s)).collect(),
    };
    let before = listing(&dir);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = hutch_command(None, &argv)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_nothing_left(pid);
    let created = watch.created_by(pid);
    let after = listing(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let code = out.status.code().unwrap_or(-1);
    let mut problems = Vec::new();
    if code != case.code {
        problems.push(format!("exit {code}, not {}", case.code));
    }
    if stderr.contains("panicked") || code == 101 {
        problems.push("a panic".into());
    }
    for w in case.want {
        if !stderr.contains(w) {
            problems.push(format!("no {w:?} in the message"));
        }
    }
    let prefix = match &case.cmd {
        Cmd::File(name, _) => format!("{name}: "),
        Cmd::Args(a) if a[0] == "run" => "hutch: ".into(),
        Cmd::Args(_) => String::new(),
    };
    if case.one_line && (lines.len() != 1 || !lines[0].starts_with(&prefix)) {
        problems.push(format!("not one line starting with {prefix:?}"));
    }
    if !case.one_line && !lines.first().is_some_and(|l| l.starts_with("error:")) {
        problems.push("clap's message does not start with `error:`".into());
    }
    if after != before {
        problems.push(format!("files appeared next to the test file: {after:?}"));
    }
    if !created.is_empty() {
        problems.push(format!("cgroups created: {created:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} -- stderr: {:?}",
            problems.join("; "),
            stderr.chars().take(400).collect::<String>()
        ))
    }
}

#[test]
fn malformed_test_files_and_command_lines_get_one_message_and_create_nothing() {
    let root = is_root();
    let real = if root {
        busybox_image().display().to_string()
    } else {
        String::new()
    };
    let watch = CgroupWatch::new();
    if root {
        // The detector must see a real run's cgroups, or its silence proves nothing.
        let dir = case_dir(9999);
        std::fs::write(
            dir.join("t.toml"),
            format!("{HEAD}[nodes.machine]\nimage = \"{real}\"\nboot = false\nmemory = \"64M\"\n"),
        )
        .unwrap();
        let child = hutch_command(None, &["test", "t.toml", "--output-dir", "out"])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "the valid control test failed");
        assert!(
            watch.watched > 0 && !watch.created_by(pid).is_empty(),
            "inotify saw no cgroup of a real run"
        );
    }
    let strict = std::env::var_os("HUTCH_BAD_INPUT_STRICT").is_some_and(|v| v == "1");
    let all = cases();
    assert!(all.len() >= 25);
    let (mut failures, mut known) = (Vec::new(), Vec::new());
    for (i, case) in all.iter().enumerate() {
        if !root && matches!(case.cmd, Cmd::Args(a) if a.contains(&"{REAL}")) {
            continue;
        }
        match (check(i, case, &watch, &real), case.finding) {
            (Ok(()), None) => {}
            (Ok(()), Some(f)) => failures.push(format!("{}: now answered well; remove the mark {f:?}", case.what)),
            (Err(e), None) => failures.push(format!("{}: {e}", case.what)),
            (Err(e), Some(f)) => known.push(format!("{}: {e} [{f}]", case.what)),
        }
    }
    for k in &known {
        eprintln!("KNOWN BAD-INPUT FINDING: {k}");
    }
    if strict {
        failures.extend(known);
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}

/// How many pids the kernel hands out after `first` before `p`: pids run up to pid_max - 1,
/// then start again at 300 (the kernel's RESERVED_PIDS).
fn pids_after(first: u32, p: u32, pid_max: u32) -> u32 {
    const RESERVED: u32 = 300;
    if p >= first {
        p - first
    } else {
        (pid_max - first) + p.saturating_sub(RESERVED)
    }
}
