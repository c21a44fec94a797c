//! A node cannot take its user's per-user kernel counters (issue 12, point 6). The kernel
//! charges a node's inotify instances to the user who runs hutch (host root, as root); each
//! node's user namespace is capped at half of every host limit, so a node holding all it can
//! get leaves the host user (here the test script, which runs as that user) able to make one.
//! As root and as `nobody`.

mod common;

use common::*;

const SCRIPT: &str = r#"
import ctypes
start_all()
a.succeed("chmod 755 /bin/escape-probe")
a.succeed("(/bin/escape-probe inotify-fill > /tmp/fill.log 2>&1 &)")
a.wait_until_succeeds("grep -q inotify-fill /tmp/fill.log", timeout=20)
print("NODE", a.succeed("cat /tmp/fill.log").strip(), flush=True)
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0o2000000)
print("HOST", "ok" if fd >= 0 else f"errno={ctypes.get_errno()}", flush=True)
"#;

fn fill(user: Option<u32>) {
    let dir = Scratch::new(&format!("ucounts-{}", user.unwrap_or(0)));
    build_probe(&dir.0.join("probe"));
    let probe = dir.0.join("probe/escape-probe");
    let toml = format!(
            "[test]\nname = \"ucounts\"\nscript = \"t.py\"\ntimeout = 60\n[nodes.a]\nimage = {:?}\nboot = false\nfiles = {{ \"/bin/escape-probe\" = {:?} }}\n",
            busybox_image_for(user).display().to_string(),
            probe.display().to_string()
        );
    let TestRun { passed, stdout, all } = run_test_file(user, &dir.0, &toml, SCRIPT);
    assert!(passed, "{all}");
    let host_max: u64 = std::fs::read_to_string("/proc/sys/user/max_inotify_instances")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let node = stdout
        .lines()
        .find_map(|l| l.strip_prefix("NODE "))
        .unwrap_or_else(|| panic!("{all}"));
    let count: u64 = node
        .split("count=")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    eprintln!("user {user:?}: the node got {count} of the host's {host_max} inotify instances ({node})");
    assert!(count > 0 && count <= host_max / 2, "{all}");
    assert_eq!(stdout.lines().find_map(|l| l.strip_prefix("HOST ")), Some("ok"), "{all}");
}

root_and_rootless!(
    a_node_leaves_its_user_inotify_instances_rootful,
    a_node_leaves_its_user_inotify_instances_rootless,
    fill
);
