//! Agent robustness: one `hutch test` run of three busybox nodes without init (`boot = false`)
//! whose script makes a node misbehave: a command printing 100 MiB (while another node is
//! asked something), a command that forks a daemon and exits, commands that never read stdin,
//! and a node that ends itself under a running command (its agent, out of its reach, goes with
//! it). The driver must stay responsive, its memory bounded, and the failure must be reported
//! on that node only.

mod common;

use common::*;

const TEST: &str = r#"
[test]
name = "agent-robustness"
script = "t.py"
timeout = 300

[defaults]
image = "IMAGE"
boot = false
vlans = []

[nodes.a]
[nodes.b]
[nodes.c]
"#;

/// Prints `TIMING label seconds` for each step; the Rust side judges them.
const SCRIPT: &str = r#"
import threading, time

def timed(label, fn):
    t = time.monotonic()
    r = fn()
    print(f"TIMING {label} {time.monotonic() - t:.3f}", flush=True)
    return r

start_all()
big = {}
def print_100_mib():
    big["status"], big["out"] = a.execute("head -c 104857600 /dev/zero | tr '\\0' x")
worker = threading.Thread(target=print_100_mib)
worker.start()
time.sleep(0.5)
timed("during-big", lambda: c.succeed("echo c-ok"))
worker.join()
out = big["out"]
print(f"BIG status={big['status']} len={len(out)} dropped={'more bytes of stdout dropped' in out}", flush=True)

print("DAEMON", timed("daemon", lambda: a.succeed("sleep 4321 & echo started")).strip(), flush=True)
print("DETACHED", timed("detached", lambda: a.succeed("(setsid sleep 4322 </dev/null >/dev/null 2>&1 &); echo detached")).strip(), flush=True)
print("STDIN", timed("stdin", lambda: a.succeed("cat; read x || echo eof")).strip(), flush=True)
print("NOREAD", timed("noread", lambda: a.succeed("sleep 0.2; echo ignored-stdin")).strip(), flush=True)

try:
    b.succeed("kill -TERM 1; sleep 10")
    print("KILL-ANSWERED", flush=True)
except Exception as e:
    print(f"KILLED {e}", flush=True)
print("C-AFTER", timed("c-after", lambda: c.succeed("echo c-alive")).strip(), flush=True)
print("A-AFTER", timed("a-after", lambda: a.succeed("echo a-alive")).strip(), flush=True)
# The uncaught end: b (started again by the command) ends itself again, so the test fails on b.
b.succeed("kill -TERM 1; sleep 10")
"#;

fn timing(out: &str, label: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("TIMING {label} ")))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no timing for {label}:\n{out}"))
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line:\n{out}"))
}

/// Processes on the host whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(marker))
        .collect()
}

#[test]
fn a_misbehaving_node_fails_alone_and_the_driver_stays_responsive_and_small() {
    if skip_unless_root("agent_robustness") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hutch-agent-robustness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = busybox_image().display().to_string();
    std::fs::write(dir.join("t.toml"), TEST.replace("IMAGE", &image)).unwrap();
    std::fs::write(dir.join("t.py"), SCRIPT).unwrap();
    let out_dir = dir.join("out").display().to_string();
    let child = hutch_command(None, &["test", "t.toml", "--output-dir", &out_dir])
        .current_dir(&dir)
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; both pointers are valid for the call.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child); // reaped above
    assert_nothing_left(pid as u32);
    let stdout = std::fs::read_to_string(dir.join("stdout")).unwrap();
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
    let leftovers = [processes_with("sleep 4321"), processes_with("sleep 4322")].concat();
    let _ = std::fs::remove_dir_all(&dir);
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    let max_rss_mib = usage.ru_maxrss as f64 / 1024.0;
    eprintln!("hutch test: max RSS of hutch and its helpers {max_rss_mib:.1} MiB after a node printed 100 MiB");

    // The big output: capped by the agent, and the driver answered another node meanwhile.
    let big = line(&stdout, "BIG ");
    assert!(big.starts_with("BIG status=0") && big.ends_with("dropped=True"), "{all}");
    let len: usize = big.split("len=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(len <= (16 << 20) + 256, "{len} bytes reached the script");
    assert!(timing(&stdout, "during-big") < 2.0, "another node waited on the big output\n{all}");
    assert!(max_rss_mib < 256.0, "hutch grew to {max_rss_mib:.0} MiB");

    // Daemons and stdin: the commands return at once.
    assert_eq!(line(&stdout, "DAEMON "), "DAEMON started");
    assert!(timing(&stdout, "daemon") < 5.0, "{all}");
    assert_eq!(line(&stdout, "DETACHED "), "DETACHED detached");
    assert!(timing(&stdout, "detached") < 5.0, "{all}");
    assert_eq!(line(&stdout, "STDIN "), "STDIN eof");
    assert!(timing(&stdout, "stdin") < 2.0, "{all}");
    assert_eq!(line(&stdout, "NOREAD "), "NOREAD ignored-stdin");
    assert!(leftovers.is_empty(), "the daemons outlived the test: {leftovers:?}");

    // The node's end under a command: named on b (the command killed with the node, or the
    // agent gone with it: whichever the driver sees first), the others go on.
    let killed = line(&stdout, "KILLED ");
    let gone = |s: &str| s.contains("agent is gone") || s.contains("exit code 137");
    assert!(killed.contains("b:") && gone(killed), "{killed}");
    assert_eq!(line(&stdout, "C-AFTER "), "C-AFTER c-alive");
    assert_eq!(line(&stdout, "A-AFTER "), "A-AFTER a-alive");
    assert!(timing(&stdout, "c-after") < 2.0 && timing(&stdout, "a-after") < 2.0, "{all}");

    // The run fails, on b and only b.
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1,
        "exit status {status:#x}\n{all}"
    );
    let report = &stderr[stderr.find("FAILED").unwrap_or_else(|| panic!("no failure report\n{all}"))..];
    assert!(report.contains("b: ") && gone(report), "{report}");
    assert!(
        !report.contains("a:") && !report.contains("c:"),
        "the failure names another node: {report}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
