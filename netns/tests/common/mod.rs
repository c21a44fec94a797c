//! Helpers for tests on real namespaces: bare node namespaces, commands run inside them, and a
//! check that nothing of ours shows up in the host's own namespace.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

/// True when the test may create namespaces (root, or root inside a user namespace). Prints why
/// a test is skipped otherwise.
pub fn can_run(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    println!("SKIP {test}: needs root (or a user namespace where we are root) to create network namespaces");
    false
}

/// Runs `argv` inside the network namespace `ns` (setns in the child before exec).
pub fn run_in(ns: &OwnedFd, argv: &[&str]) -> Output {
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    // SAFETY: between fork and exec the closure only makes one async-signal-safe syscall.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap_or_else(|e| panic!("running {argv:?}: {e}"))
}

/// Runs a shell command inside `ns` and asserts it succeeds.
pub fn sh_in(ns: &OwnedFd, script: &str) {
    let out = run_in(ns, &["sh", "-c", script]);
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Pings `addr` from `ns`; returns success and the output text.
pub fn ping(ns: &OwnedFd, addr: &str, extra: &[&str]) -> (bool, String) {
    let mut argv = vec!["ping", "-n"];
    argv.extend_from_slice(extra);
    argv.push(addr);
    let out = run_in(ns, &argv);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Pings once with a short deadline and asserts it works.
pub fn assert_ping(ns: &OwnedFd, addr: &str) {
    let (ok, text) = ping(ns, addr, &["-c", "1", "-W", "2"]);
    assert!(ok, "ping {addr} failed:\n{text}");
}

/// The RTTs in ms from ping output.
pub fn rtts(text: &str) -> Vec<f64> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("time="))
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// Packet loss percentage from ping's summary line.
pub fn loss_percent(text: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.contains("packet loss"))
        .unwrap_or_else(|| panic!("no summary in ping output:\n{text}"));
    let word = line
        .split(", ")
        .find(|w| w.ends_with("packet loss"))
        .unwrap_or_else(|| panic!("no loss in {line}"));
    word.split('%').next().unwrap().trim().parse().unwrap()
}

/// Links in the caller's own namespace that look like ours (bridge `brN`, hub ends `nXvY`,
/// node MACs 52:54:0x:..). Must always be empty: the hub never creates anything here.
pub fn our_links_in_host() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link"]).output().expect("ip -o link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let name = l.split(": ").nth(1).unwrap_or("");
            let name = name.split('@').next().unwrap_or("");
            let hub_end = name.starts_with('n')
                && name[1..]
                    .split_once('v')
                    .is_some_and(|(a, b)| a.chars().all(|c| c.is_ascii_digit()) && b.chars().all(|c| c.is_ascii_digit()));
            let bridge = name.starts_with("br") && name[2..].chars().all(|c| c.is_ascii_digit());
            hub_end || bridge || l.contains("52:54:00:12:") || l.contains("52:54:01:")
        })
        .map(str::to_string)
        .collect()
}

/// Waits up to `secs` for `cond`.
pub fn wait_for(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

/// Runs `f` on a new thread that has entered the network namespace `ns`.
pub fn spawn_in<T: Send + 'static>(ns: &OwnedFd, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let fd = ns.try_clone().expect("dup netns fd");
    std::thread::spawn(move || {
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A hub with `nodes` (name, VLANs) all attached, each in a bare namespace of its own; the
/// namespaces come back in the order of `nodes`.
pub fn attached_lan(nodes: &[(&str, &[u32])]) -> (hutch_netns::Hub, Vec<OwnedFd>) {
    use std::os::fd::AsFd;
    let specs = nodes
        .iter()
        .map(|(name, vlans)| hutch_netns::NodeSpec::new(*name, vlans.iter().copied()));
    let topo = hutch_netns::Topology::new(specs).unwrap();
    let ns = hutch_netns::bare_namespaces(nodes.len()).unwrap();
    let hub = hutch_netns::Hub::new(&topo).unwrap();
    let batch: Vec<_> = nodes.iter().zip(&ns).map(|((name, _), fd)| (*name, fd.as_fd())).collect();
    hub.attach_many(&batch).unwrap();
    (hub, ns)
}
