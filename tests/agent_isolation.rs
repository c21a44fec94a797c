//! The agent is out of the node's reach (issue 12), with hutch started by root and by `nobody`:
//! the node's root cannot see the agent (ps, /proc), finds no terminal of the user's among the
//! descriptors it can see, its commands have no parent in the node,
//! `kill -STOP -1` and `kill -9 -1` leave it serving, and a Unix server in the node that turns
//! its client's credentials against it (SO_PEERCRED, SO_PEERPIDFD, pidfd_getfd, SIGSTOP) while
//! the driver probes it never holds the agent. The second wall, checked from the host: a
//! process in the node's user namespace that was told the agent's host pid still cannot
//! ptrace it, take its descriptors or open its memory, because the agent is non-dumpable and
//! its memory belongs to the host's user namespace.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const SCRIPT: &str = r#"
import os, time
start_all()
ps = a.succeed("ps -o pid,comm")
print("AGENT-IN-PS", "hutch-agent" in ps, flush=True)
print("PROC-COMMS", sorted(set(a.succeed("cat /proc/[0-9]*/comm").split())), flush=True)
print("PPID", a.succeed("grep PPid /proc/self/status").split()[1], flush=True)
print("TERMINALS", a.succeed("ls -l /proc/[0-9]*/fd/ 2>/dev/null | grep -c -e /dev/pts -e /dev/tty -e /dev/console || true").strip(), flush=True)
a.execute("kill -STOP -1; kill -CONT 1; kill -9 -1")
print("AFTER-KILL", a.succeed("echo alive").strip(), flush=True)
a.succeed("chmod 755 /bin/escape-probe")
a.succeed("(/bin/escape-probe peer-pidfd /run/trap.sock > /tmp/trap.log 2>&1 &)")
a.wait_for_open_unix_socket("/run/trap.sock", timeout=20)
a.wait_until_succeeds("grep -q peer-sigstop /tmp/trap.log || grep -q peer-pidfd /tmp/trap.log", timeout=20)
for l in a.succeed("cat /tmp/trap.log").splitlines():
    print("TRAP", l, flush=True)
print("AFTER-TRAP", a.succeed("echo alive").strip(), flush=True)
open(os.environ["HUTCH_ISO_READY"], "w").write("ready")
end = time.time() + 60
while not os.path.exists(os.environ["HUTCH_ISO_DONE"]) and time.time() < end:
    time.sleep(0.05)
print("AFTER-HOST", a.succeed("echo alive").strip(), flush=True)
"#;

/// The node's PID 1 below `root`: the process whose innermost pid is 1.
fn node_init_below(root: u32) -> Option<u32> {
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let nspid = status.lines().find(|l| l.starts_with("NSpid:"))?;
        (nspid.split_whitespace().count() > 2 && nspid.ends_with("\t1") && descends_from(pid, root)).then_some(pid)
    })
}

/// Runs the probe as a process of the node's user namespace (root there), in the host's pid
/// and mount namespaces, as `user` on the host: what node root could do had it the agent's pid.
fn probe_as_node_root(user: Option<u32>, init: u32, probe: &Path, args: &[String]) -> String {
    let mut cmd = match user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "nsenter".into(),
            ]);
            c
        }
        None => Command::new("nsenter"),
    };
    let out = cmd
        .args(["-U", "--preserve-credentials", "-t", &init.to_string(), "--"])
        .arg(probe)
        .args(args)
        .output()
        .expect("running nsenter");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn line<'a>(out: &'a str, tag: &str) -> Vec<&'a str> {
    out.lines().filter_map(|l| l.strip_prefix(tag)).map(str::trim).collect()
}

fn isolated(user: Option<u32>) {
    let dir = Scratch::new(&format!("agent-iso-{}", user.unwrap_or(0)));
    build_probe(&dir.0.join("probe"));
    let probe: PathBuf = dir.0.join("probe/escape-probe");
    let image = busybox_image_for(user);
    std::fs::write(
        dir.0.join("t.toml"),
        format!(
            "[test]\nname = \"iso\"\nscript = \"t.py\"\ntimeout = 120\n[nodes.a]\nimage = {:?}\nboot = false\nfiles = {{ \"/bin/escape-probe\" = {:?} }}\n",
            image.display().to_string(),
            probe.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(dir.0.join("t.py"), SCRIPT).unwrap();
    let (ready, done) = (dir.0.join("ready"), dir.0.join("done"));
    let out_dir = dir.0.join("out").display().to_string();
    // hutch's stdin is a terminal, as when a user runs it: the node must find no way to it.
    let pty = nix::pty::openpty(None, None).unwrap();
    let child = hutch_command(user, &["test", "t.toml", "--output-dir", &out_dir])
        .current_dir(&dir.0)
        .stdin(std::process::Stdio::from(pty.slave))
        .env("HUTCH_ISO_READY", &ready)
        .env("HUTCH_ISO_DONE", &done)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child);
    wait_for_path(&ready, &mut guard, Duration::from_secs(60));
    let mut host = String::new();
    if ready.exists() {
        let root = guard.id();
        let agents = hutch_descendants(root, "hutch-agent");
        let init = node_init_below(root);
        assert_eq!(agents.len(), 1, "one agent below hutch {root}: {agents:?}");
        let (agent, init) = (agents[0], init.expect("the node's PID 1"));
        for args in [
            vec!["ptrace".to_string(), agent.to_string()],
            vec!["getfd".into(), agent.to_string()],
            vec!["open-w".into(), format!("/proc/{agent}/mem")],
            vec!["read".into(), format!("/proc/{agent}/environ")],
        ] {
            host.push_str(&probe_as_node_root(user, init, &probe, &args));
        }
    }
    std::fs::write(&done, "done").unwrap();
    let out = guard.output();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let all = format!(
        "stdout:\n{stdout}\nstderr:\n{}\nhost:\n{host}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");

    // Inside the node: no agent to name.
    assert_eq!(line(&stdout, "AGENT-IN-PS"), ["False"], "{all}");
    assert!(line(&stdout, "PROC-COMMS").iter().all(|l| !l.contains("hutch-agent")), "{all}");
    assert_eq!(line(&stdout, "PPID"), ["0"], "a command's parent is outside the node\n{all}");
    assert_eq!(line(&stdout, "TERMINALS"), ["0"], "a terminal is reachable in the node\n{all}");
    assert_eq!(line(&stdout, "AFTER-KILL"), ["alive"], "{all}");
    // The trap server saw a parent-less, short-lived client, never the agent.
    let trap = line(&stdout, "TRAP");
    assert!(trap.contains(&"peer-cred pid=0"), "{all}");
    assert_eq!(line(&stdout, "AFTER-TRAP"), ["alive"], "{all}");
    // From the node's user namespace with the agent's host pid: all refused.
    for (what, refused) in [
        ("ptrace", "ptrace errno=EPERM"),
        ("getfd", "getfd errno=EPERM"),
        ("/mem", "open-w errno=EACCES"),
        ("/environ", "read errno=EACCES"),
    ] {
        assert!(host.contains(refused), "{what}: expected `{refused}`\n{all}");
    }
    assert_eq!(line(&stdout, "AFTER-HOST"), ["alive"], "{all}");
    eprintln!(
        "user {user:?}: in the node {trap:?}; from its user namespace {:?}",
        host.lines().collect::<Vec<_>>()
    );
}

root_and_rootless!(the_agent_is_out_of_reach_rootful, the_agent_is_out_of_reach_rootless, isolated);
