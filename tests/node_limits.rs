//! Every tmpfs a node gets has a size (issue 12, point 5): /run, /dev/shm and /tmp take 20, 20
//! and 25% of the node's memory limit, or of the host's RAM without one, so a node without a
//! memory cgroup (rootless on a host that delegates none) cannot put gigabytes into host
//! shmem. A node filling /dev/shm and /tmp gets ENOSPC at its share. As root and as `nobody`.

mod common;

use common::*;

const SCRIPT: &str = r#"
start_all()
for m in [limited, free]:
    for fs in ["/run", "/dev/shm", "/tmp"]:
        kib = m.succeed(f"df -k {fs} | tail -1").split()[1]
        print("SIZE", m.name, fs, kib, flush=True)
for fs in ["/dev/shm", "/tmp"]:
    out = limited.execute(f"dd if=/dev/zero of={fs}/fill bs=1M count=64 2>&1")[1]
    kib = limited.succeed(f"du -k {fs}/fill").split()[0]
    print("FILL", fs, "nospace" if "No space left" in out else "wrote-all", kib, flush=True)
"#;

fn sizes(user: Option<u32>) {
    let dir = Scratch::new(&format!("limits-{}", user.unwrap_or(0)));
    let image = busybox_image_for(user).display().to_string();
    let toml = format!(
        "[test]\nname = \"limits\"\nscript = \"t.py\"\ntimeout = 60\n[defaults]\nimage = {image:?}\nboot = false\n\
             [nodes.limited]\nmemory = \"64M\"\n[nodes.free]\n"
    );
    let TestRun { passed, stdout, all } = run_test_file(user, &dir.0, &toml, SCRIPT);
    assert!(passed, "{all}");
    let size = |node: &str, fs: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("SIZE {node} {fs} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no size of {fs} on {node}\n{all}"))
    };
    let ram_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap();
    for (fs, share) in [("/run", 20), ("/dev/shm", 20), ("/tmp", 25)] {
        let want = 64 * 1024 * share / 100;
        assert!(
            size("limited", fs).abs_diff(want) <= 8,
            "{fs}: {} KiB, want {want}\n{all}",
            size("limited", fs)
        );
        let want = ram_kib * share / 100;
        assert!(
            size("free", fs).abs_diff(want) <= want / 50,
            "{fs}: {} KiB, want ~{want}\n{all}",
            size("free", fs)
        );
    }
    for (fs, cap) in [("/dev/shm", 64 * 1024 * 20 / 100), ("/tmp", 64 * 1024 * 25 / 100)] {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("FILL {fs} ")))
            .unwrap_or_else(|| panic!("{all}"));
        let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(line.starts_with("nospace") && kib > 0 && kib <= cap + 8, "{fs}: {line}\n{all}");
    }
    eprintln!(
        "user {user:?}: {}",
        stdout
            .lines()
            .filter(|l| l.starts_with("SIZE") || l.starts_with("FILL"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

root_and_rootless!(every_tmpfs_has_a_size_rootful, every_tmpfs_has_a_size_rootless, sizes);
