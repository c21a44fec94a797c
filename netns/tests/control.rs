//! Run-time control of links: cutting and restoring them, and shaping them (netem, or the
//! user-space relay on kernels without netem).

mod common;

use common::*;
use hutch_netns::{bare_namespaces, Hub, HubError, NodeSpec, Shape, Topology};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// Two nodes on VLAN 1: "a" (node 1, 192.168.1.1) and "b" (node 2).
fn pair() -> (Hub, Vec<OwnedFd>) {
    attached_lan(&[("a", &[1]), ("b", &[1])])
}

fn eth1_state(ns: &OwnedFd) -> String {
    String::from_utf8_lossy(&run_in(ns, &["ip", "-o", "link", "show", "eth1"]).stdout).to_string()
}

#[test]
fn block_cuts_and_unblock_restores() {
    if !can_run("block_cuts_and_unblock_restores") {
        return;
    }
    let (hub, ns) = pair();
    assert_ping(&ns[0], "192.168.1.2");
    hub.block("b", None).unwrap();
    // The node sees the cable pulled.
    let state = eth1_state(&ns[1]);
    assert!(state.contains("NO-CARRIER"), "{state}");
    let t = Instant::now();
    let (ok, text) = ping(&ns[0], "192.168.1.2", &["-c", "1", "-W", "1"]);
    assert!(!ok, "ping went through a blocked link:\n{text}");
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    let (ok, _) = ping(&ns[1], "192.168.1.1", &["-c", "1", "-W", "1"]);
    assert!(!ok, "the blocked node still reached out");
    hub.unblock("b", Some(1)).unwrap();
    let back = wait_for(3.0, || ping(&ns[0], "192.168.1.2", &["-c", "1", "-W", "1"]).0);
    assert!(back, "unblock did not restore the link");
    assert!(!eth1_state(&ns[1]).contains("NO-CARRIER"));
    // Per VLAN: a VLAN the node is not on is an error that names it.
    let err = hub.block("b", Some(7)).unwrap_err();
    assert!(matches!(err, HubError::NotOnVlan { vlan: 7, .. }), "{err}");
}

#[test]
fn delay_shows_in_rtt_changes_and_goes() {
    if !can_run("delay_shows_in_rtt_changes_and_goes") {
        return;
    }
    let (hub, ns) = pair();
    let delay = Shape {
        delay: Duration::from_millis(100),
        ..Shape::default()
    };
    hub.shape("b", 1, delay).unwrap();
    let (ok, text) = ping(&ns[0], "192.168.1.2", &["-c", "3", "-i", "0.2", "-W", "2"]);
    assert!(ok, "{text}");
    let r = rtts(&text);
    assert_eq!(r.len(), 3, "{text}");
    assert!(r.iter().all(|&t| t >= 100.0), "RTTs {r:?} under 100 ms");
    // A shaped link can be cut and restored like any other.
    hub.block("b", Some(1)).unwrap();
    assert!(
        !ping(&ns[0], "192.168.1.2", &["-c", "1", "-W", "1"]).0,
        "blocked shaped link carried a ping"
    );
    hub.unblock("b", Some(1)).unwrap();
    let back = wait_for(3.0, || ping(&ns[0], "192.168.1.2", &["-c", "1", "-W", "1"]).0);
    assert!(back, "shaped link did not come back after unblock");
    // Changed in place, at any time.
    let shorter = Shape {
        delay: Duration::from_millis(30),
        ..Shape::default()
    };
    hub.shape("b", 1, shorter).unwrap();
    let (_, text) = ping(&ns[0], "192.168.1.2", &["-c", "3", "-i", "0.2", "-W", "2"]);
    let r = rtts(&text);
    // Lower bounds hold for every packet; upper bounds only for the fastest (a busy machine
    // may delay any single one).
    let fastest = r.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        r.len() == 3 && r.iter().all(|&t| t >= 30.0) && fastest < 100.0,
        "RTTs {r:?} after change to 30 ms"
    );
    hub.unshape("b", 1).unwrap();
    hub.unshape("b", 1).unwrap(); // removing twice is fine
    let (_, text) = ping(&ns[0], "192.168.1.2", &["-c", "3", "-i", "0.2", "-W", "2"]);
    let r = rtts(&text);
    let fastest = r.iter().cloned().fold(f64::MAX, f64::min);
    assert!(!r.is_empty() && fastest < 20.0, "RTTs {r:?} after unshape");
}

#[test]
fn loss_is_roughly_as_asked() {
    if !can_run("loss_is_roughly_as_asked") {
        return;
    }
    let (hub, ns) = pair();
    let lossy = Shape {
        loss_percent: 20.0,
        ..Shape::default()
    };
    hub.shape("b", 1, lossy).unwrap();
    let (_, text) = ping(&ns[0], "192.168.1.2", &["-c", "100", "-i", "0.01", "-W", "1"]);
    let loss = loss_percent(&text);
    println!("20% loss -> {loss}% ping loss over 100 pings");
    assert!((5.0..=40.0).contains(&loss), "loss {loss}%:\n{text}");
    hub.unshape("b", 1).unwrap();
    let (_, text) = ping(&ns[0], "192.168.1.2", &["-c", "50", "-i", "0.01", "-W", "1"]);
    assert_eq!(loss_percent(&text), 0.0, "{text}");
}

#[test]
fn rate_and_jitter() {
    if !can_run("rate_and_jitter") {
        return;
    }
    let (hub, ns) = pair();
    // 100 kbit/s: a 1242-byte frame takes about 99 ms to send.
    let slow = Shape {
        rate_bits_per_sec: Some(100_000),
        ..Shape::default()
    };
    hub.shape("b", 1, slow).unwrap();
    let (ok, text) = ping(&ns[0], "192.168.1.2", &["-c", "2", "-i", "0.3", "-s", "1200", "-W", "2"]);
    assert!(ok, "{text}");
    let r = rtts(&text);
    assert!(r.iter().all(|&t| t >= 80.0), "RTTs {r:?} at 100 kbit/s");
    let jittery = Shape {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(40),
        ..Shape::default()
    };
    hub.shape("b", 1, jittery).unwrap();
    let (_, text) = ping(&ns[0], "192.168.1.2", &["-c", "20", "-i", "0.05", "-W", "2"]);
    let r = rtts(&text);
    let min = r.iter().cloned().fold(f64::MAX, f64::min);
    let max = r.iter().cloned().fold(0.0, f64::max);
    assert!(r.len() >= 18 && (10.0..60.0).contains(&min) && max - min > 10.0, "RTTs {r:?}");
}

#[test]
fn errors_name_the_problem() {
    if !can_run("errors_name_the_problem") {
        return;
    }
    let (hub, ns) = pair();
    let err = hub.attach("a", ns[0].as_fd()).unwrap_err();
    assert!(matches!(err, HubError::AlreadyAttached(_)), "{err}");
    let err = hub.attach("zed", ns[0].as_fd()).unwrap_err();
    assert!(err.to_string().contains("\"zed\""), "{err}");
    let bad = Shape {
        loss_percent: 150.0,
        ..Shape::default()
    };
    let err = hub.shape("a", 1, bad).unwrap_err();
    assert!(err.to_string().contains("loss_percent"), "{err}");
    // Detach, then attach again into a fresh namespace (a restarted node).
    hub.detach("a").unwrap();
    let gone = String::from_utf8_lossy(&run_in(&ns[0], &["ip", "-o", "link"]).stdout).to_string();
    assert!(!gone.contains("eth1"), "{gone}");
    let fresh = bare_namespaces(1).unwrap();
    hub.attach("a", fresh[0].as_fd()).unwrap();
    assert_ping(&fresh[0], "192.168.1.2");
    let err = hub.block("a", Some(2)).unwrap_err();
    assert!(err.to_string().contains("VLAN 2"), "{err}");
}

#[test]
fn shaped_link_carries_tcp_at_the_given_rate() {
    if !can_run("shaped_link_carries_tcp_at_the_given_rate") {
        return;
    }
    use std::io::{Read, Write};
    let (hub, ns) = pair();
    // 8 Mbit/s towards b: 1 MB takes about a second.
    let rate = Shape {
        rate_bits_per_sec: Some(8_000_000),
        ..Shape::default()
    };
    hub.shape("b", 1, rate).unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = spawn_in(&ns[1], move || {
        let l = std::net::TcpListener::bind("192.168.1.2:5000").unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let t = Instant::now();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        (got, t.elapsed())
    });
    ready_rx.recv().unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sent = data.clone();
    spawn_in(&ns[0], move || {
        let mut c = std::net::TcpStream::connect("192.168.1.2:5000").unwrap();
        c.write_all(&sent).unwrap();
    })
    .join()
    .unwrap();
    let (got, took) = server.join().unwrap();
    println!("1 MB over an 8 Mbit/s shaped link: {took:?}");
    assert!(got == data, "data changed on the way ({} bytes)", got.len());
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn netem_backend_works_or_names_the_missing_kernel_option() {
    if !can_run("netem_backend_works_or_names_the_missing_kernel_option") {
        return;
    }
    let topo = Topology::new([NodeSpec::new("a", [1]), NodeSpec::new("b", [1])]).unwrap();
    let ns = bare_namespaces(2).unwrap();
    let options = hutch_netns::HubOptions {
        shaping: hutch_netns::ShapingBackend::Netem,
    };
    let hub = Hub::with_options(&topo, options).unwrap();
    hub.attach_many(&[("a", ns[0].as_fd()), ("b", ns[1].as_fd())]).unwrap();
    let delay = Shape {
        delay: Duration::from_millis(100),
        ..Shape::default()
    };
    match hub.shape("b", 1, delay) {
        Ok(()) => {
            let (ok, text) = ping(&ns[0], "192.168.1.2", &["-c", "2", "-i", "0.2", "-W", "2"]);
            assert!(ok, "{text}");
            assert!(rtts(&text).iter().all(|&t| t >= 100.0), "{text}");
            hub.unshape("b", 1).unwrap();
        }
        Err(e @ HubError::NoNetem) => {
            assert!(e.to_string().contains("CONFIG_NET_SCH_NETEM"), "{e}");
            println!("this kernel has no netem: {e}");
        }
        Err(e) => panic!("netem shaping failed: {e}"),
    }
}

#[test]
fn a_failed_attach_leaves_other_nodes_alone() {
    if !can_run("a_failed_attach_leaves_other_nodes_alone") {
        return;
    }
    let (hub, ns) = pair();
    // A node described outside the topology with b's number collides with b's hub-side link.
    let clash = hutch_netns::Node::standalone("clash", 2, &[1], hutch_netns::Addressing::NixOs).unwrap();
    let fresh = bare_namespaces(1).unwrap();
    let err = hub.attach_node(&clash, fresh[0].as_fd()).unwrap_err();
    assert!(err.to_string().contains("n2v1"), "{err}");
    // b keeps its link, and the failed node got nothing.
    assert_ping(&ns[0], "192.168.1.2");
    let links = String::from_utf8_lossy(&run_in(&fresh[0], &["ip", "-o", "link"]).stdout).to_string();
    assert!(!links.contains("eth1"), "{links}");
}
