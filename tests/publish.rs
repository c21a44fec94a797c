//! `hutch test --publish NODE:HOST_PORT:PORT`: a node's web server reached from the host's
//! loopback while the test runs (root and rootless), listening on 127.0.0.1 only, gone when
//! the test ends; a node the test does not have is refused before anything starts.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A free port on the host's loopback (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The local addresses listening on TCP `port` (/proc/net/tcp, hex `ADDR:PORT`, state 0A).
fn listeners(port: u16) -> Vec<String> {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A").then(|| f[1].to_string())
        })
        .collect()
}

fn get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn published(user: Option<u32>) {
    let dir = Scratch::new(&format!("publish-{}", user.unwrap_or(0)));
    let image = busybox_image_for(user).display().to_string();
    let go = dir.0.join("go");
    let file = dir.0.join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[test]\nname = \"publish\"\ntimeout = 120\ntestScript = '''\nimport os, time\nstart_all()\n\
             web.succeed(\"mkdir -p /www && echo page-from-the-node > /www/index.html && httpd -p 80 -h /www\")\n\
             web.log(\"serving\")\nwhile not os.path.exists({:?}):\n    time.sleep(0.05)\n'''\n\
             [defaults]\nimage = {image:?}\nboot = false\n[nodes.web]\n",
            go.display().to_string()
        ),
    )
    .unwrap();
    let port = free_port();
    let publish = format!("web:{port}:80");
    let out = dir.0.join("out").display().to_string();
    let mut run = ChildGuard::new(
        hutch_command(
            user,
            &["test", &file.display().to_string(), "--output-dir", &out, "--publish", &publish],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let log = Path::new(&out).join("log.txt");
    let end = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("serving") {
        assert!(Instant::now() < end, "the node never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let page = get(port).unwrap();
    assert!(page.contains("page-from-the-node"), "{page}");
    // Two clients at once, each answered.
    let (a, b) = (std::thread::spawn(move || get(port)), std::thread::spawn(move || get(port)));
    assert!(a.join().unwrap().unwrap().contains("page-from-the-node"));
    assert!(b.join().unwrap().unwrap().contains("page-from-the-node"));
    assert_eq!(listeners(port), vec![format!("0100007F:{port:04X}")], "listening beyond 127.0.0.1");
    std::fs::write(&go, "").unwrap();
    let pid = run.id();
    assert_eq!(run.child().wait().unwrap().code(), Some(0));
    assert_nothing_left(pid);
    assert!(listeners(port).is_empty(), "the port outlived the test");
    assert!(get(port).is_err());
}

#[test]
fn a_published_port_reaches_the_node_from_the_host_loopback() {
    if skip_unless_root("publish") {
        return;
    }
    published(None);
}

#[test]
fn a_published_port_reaches_a_rootless_node() {
    if skip_unless_root("publish_rootless") {
        return;
    }
    published(Some(65534));
}

#[test]
fn publishing_a_node_the_test_lacks_is_refused_up_front() {
    let dir = Scratch::new("publish-bad");
    let image = busybox_image().display().to_string();
    let file = dir.0.join("p.toml");
    std::fs::write(
        &file,
        format!("[test]\nname = \"p\"\ntestScript = \"start_all()\"\n[nodes.web]\nimage = {image:?}\nboot = false\n"),
    )
    .unwrap();
    let r = hutch_run(&["test", &file.display().to_string(), "--publish", "db:8080:5432"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--publish db:8080:5432") && r.stderr.contains("no node `db`"),
        "{}",
        r.stderr
    );
    let r = hutch_run(&["test", &file.display().to_string(), "--publish", "web:80"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("NODE:HOST_PORT:PORT"), "{}", r.stderr);
}
