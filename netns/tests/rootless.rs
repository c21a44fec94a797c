//! Everything works for an unprivileged user inside a user namespace it owns: this test
//! re-executes itself as user `nobody` under `unshare --user --map-root-user --net`.

mod common;

use common::*;
use hutch_netns::{bare_namespaces, Hub, NodeSpec, Shape, Topology};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

const INNER: &str = "HUTCH_NETNS_ROOTLESS_INNER";

#[test]
fn lan_works_as_nobody_in_own_user_namespace() {
    if std::env::var_os(INNER).is_some() {
        return; // the inner run executes `inner` only
    }
    let exe = std::env::current_exe().unwrap();
    let mut argv: Vec<String> = Vec::new();
    if nix::unistd::geteuid().is_root() {
        argv.extend(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"].map(String::from));
    }
    argv.extend(["unshare", "--user", "--map-root-user", "--net"].map(String::from));
    argv.push(exe.to_string_lossy().into_owned());
    argv.extend(["--exact", "inner", "--nocapture", "--test-threads=1"].map(String::from));
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .env(INNER, "1")
        .output()
        .expect("run setpriv/unshare");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && text.contains("unshare failed") && text.contains("Operation not permitted") {
        println!("SKIP: this host does not let unprivileged users create user namespaces:\n{text}");
        return;
    }
    assert!(out.status.success(), "inner run failed:\n{text}");
    assert!(text.contains("ROOTLESS-OK"), "inner test did not run:\n{text}");
}

/// The part that runs as `nobody`, mapped to root in its own user namespace.
#[test]
fn inner() {
    if std::env::var_os(INNER).is_none() {
        return; // only meaningful when re-executed by the test above
    }
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    let outside: u32 = map.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_ne!(outside, 0, "not unprivileged: uid_map {map}");
    let topo = Topology::new([NodeSpec::new("client", [1]), NodeSpec::new("server", [1])]).unwrap();
    let ns = bare_namespaces(2).unwrap();
    let hub = Hub::new(&topo).unwrap();
    hub.attach_many(&[("client", ns[0].as_fd()), ("server", ns[1].as_fd())]).unwrap();
    assert_ping(&ns[0], "192.168.1.2");
    assert_ping(&ns[1], "192.168.1.1");
    assert_ping(&ns[0], "2001:db8:1::2");
    assert_ping(&ns[1], "2001:db8:1::1");
    hub.block("server", None).unwrap();
    assert!(!ping(&ns[0], "192.168.1.2", &["-c", "1", "-W", "1"]).0);
    hub.unblock("server", None).unwrap();
    assert!(wait_for(3.0, || ping(&ns[0], "192.168.1.2", &["-c", "1", "-W", "1"]).0));
    let delay = Shape {
        delay: Duration::from_millis(100),
        ..Shape::default()
    };
    hub.shape("server", 1, delay).unwrap();
    let (ok, text) = ping(&ns[0], "192.168.1.2", &["-c", "2", "-i", "0.2", "-W", "2"]);
    assert!(ok && rtts(&text).iter().all(|&t| t >= 100.0), "{text}");
    drop(hub);
    println!("ROOTLESS-OK as uid {outside} outside");
}
