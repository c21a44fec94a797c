//! `hutch run --image`: what a user checks from inside a busybox node, and that nothing leaks.

mod common;

use common::*;

fn image() -> String {
    busybox_image().display().to_string()
}

fn sh(extra: &[&str], script: &str) -> Run {
    let img = image();
    let mut args = vec!["run", "--image", &img];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    hutch_run(&args)
}

#[test]
fn command_is_pid_1_with_the_hostname_and_a_full_shifted_id_map() {
    if skip_unless_root("command_is_pid_1") {
        return;
    }
    let ids = SharedDir::new("shifted");
    let r = sh(
        &["--name", "web", "--bind", &ids.bind()],
        "echo pid=$$; hostname; id -u; touch /mnt/ids/root /mnt/ids/last && chown 65535:65535 /mnt/ids/last",
    )
    .ok();
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(words, ["pid=1", "web", "0"], "{}{}", r.stdout, r.stderr);
    // As root, node ids are unprivileged host ids: node root is never host root.
    assert_eq!(ids.owner("root"), (524288, 524288));
    assert_eq!(ids.owner("last"), (524288 + 65535, 524288 + 65535));
    // ... and still owns the (root-owned) image, seen through an idmapped mount.
    let r = sh(
        &[],
        "stat -c %u:%g /etc/passwd; echo appended >> /etc/passwd && tail -1 /etc/passwd",
    )
    .ok();
    assert_eq!(r.stdout, "0:0\nappended\n");
    assert!(!std::fs::read_to_string(busybox_image().join("etc/passwd"))
        .unwrap()
        .contains("appended"));
    let r = sh(&["--name", "web", "--hostname", "www.example"], "hostname").ok();
    assert_eq!(r.stdout.trim(), "www.example");
}

#[test]
fn the_node_may_use_every_cpu_hutch_may() {
    if skip_unless_root("every_cpu") {
        return;
    }
    // The builder moves PID 1 off its own CPU for the start; the node must get them all back,
    // its init and the agent alike.
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = |status: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    for _ in 0..5 {
        let r = sh(&[], "cat /proc/1/status").ok();
        assert_eq!(allowed(&r.stdout), allowed(&host), "{}", r.stdout);
    }
    // Started from one CPU (taskset, a CI runner's cpuset), the node keeps that one.
    let this_thread = nix::unistd::Pid::from_raw(0);
    let all = nix::sched::sched_getaffinity(this_thread).unwrap();
    let first = (0..nix::sched::CpuSet::count()).find(|&c| all.is_set(c).unwrap()).unwrap();
    let mut one = nix::sched::CpuSet::new();
    one.set(first).unwrap();
    nix::sched::sched_setaffinity(this_thread, &one).unwrap();
    let r = sh(&[], "cat /proc/1/status; grep Cpus_allowed_list /proc/self/status");
    nix::sched::sched_setaffinity(this_thread, &all).unwrap();
    let r = r.ok();
    assert_eq!(allowed(&r.stdout), first.to_string(), "{}", r.stdout);
    assert!(r.stdout.ends_with(&format!("Cpus_allowed_list:\t{first}\n")), "{}", r.stdout);
}

#[test]
fn exit_status_and_output_pass_through() {
    if skip_unless_root("exit_status") {
        return;
    }
    let r = sh(&[], "echo out; echo err >&2; exit 7");
    assert_eq!(r.code, 7);
    assert_eq!(r.stdout, "out\n");
    assert!(r.stderr.contains("err\n"), "{}", r.stderr);
}

#[test]
fn proc_sys_and_sys_are_read_only_but_the_nodes_network_sysctls_are_not() {
    if skip_unless_root("proc_sys_ro") {
        return;
    }
    let r = sh(
        &[],
        "echo x > /proc/sys/kernel/hostname && echo WROTE-KERNEL; \
         touch /sys/hutch-test && echo WROTE-SYS; \
         echo 1 > /proc/sys/net/ipv4/ip_forward && echo NET-OK; \
         cat /proc/kcore /proc/keys /proc/sysrq-trigger 2>/dev/null | wc -c; \
         awk '$5 == \"/sys\" || $5 == \"/proc/sys\" { print $6 }' /proc/self/mountinfo | grep -c '^ro,'",
    )
    .ok();
    assert!(!r.stdout.contains("WROTE-KERNEL"), "{}", r.stdout);
    assert!(!r.stdout.contains("WROTE-SYS"), "{}", r.stdout);
    assert!(r.stdout.contains("NET-OK"), "{}", r.stdout);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[lines.len() - 2], "0", "masked /proc files read empty: {}", r.stdout);
    assert_eq!(lines[lines.len() - 1], "2", "/sys and /proc/sys mounted ro: {}", r.stdout);
}

#[test]
fn the_image_is_never_written_and_two_nodes_share_it() {
    if skip_unless_root("image_unwritten") {
        return;
    }
    let img = image();
    let marker = format!("hutch-test-{}", std::process::id());
    let script = format!("echo changed > /etc/inittab; echo new > /etc/{marker}; rm /bin/ls; sleep 0.3; cat /etc/{marker}; ls /etc/{marker}-*  2>/dev/null; true");
    let a = {
        let (img, script) = (img.clone(), script.clone());
        std::thread::spawn(move || hutch_run(&["run", "--image", &img, "--", "/bin/sh", "-c", &script]))
    };
    let b = hutch_run(&["run", "--image", &img, "--", "/bin/sh", "-c", &script]).ok();
    let a = a.join().expect("first node").ok();
    assert_eq!(a.stdout.trim(), "new");
    assert_eq!(b.stdout.trim(), "new");
    let image = busybox_image();
    assert!(!image.join("etc").join(&marker).exists(), "a node's file reached the image");
    assert!(image.join("bin/ls").symlink_metadata().is_ok(), "a node's delete reached the image");
    assert!(!std::fs::read_to_string(image.join("etc/inittab")).unwrap().contains("changed"));
}

#[test]
fn the_seccomp_filter_refuses_the_dangerous_calls() {
    if skip_unless_root("seccomp") {
        return;
    }
    let img = image();
    let calls = [
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "bpf",
        "perf_event_open",
        "open_by_handle_at",
        "add_key",
        "request_key",
        "keyctl",
        "swapon",
        "swapoff",
        "syslog",
        "acct",
    ];
    let mut args = vec!["run", "--image", &img, "--", "/bin/hutch-syscall-probe"];
    args.extend_from_slice(&calls);
    let r = hutch_run(&args).ok();
    for call in calls {
        assert!(
            r.stdout.contains(&format!("{call} errno=EPERM")),
            "{call} not refused:\n{}",
            r.stdout
        );
    }
    let r = sh(&[], "grep -E '^(Seccomp|CapBnd)' /proc/self/status").ok();
    assert!(r.stdout.contains("Seccomp:\t2"), "filter mode: {}", r.stdout);
    // nspawn's set minus audit, plus NET_ADMIN: no SYS_MODULE (16), SYS_RAWIO (17), SYS_TIME (25).
    let bnd = r.stdout.lines().find_map(|l| l.strip_prefix("CapBnd:\t")).unwrap();
    let bits = u64::from_str_radix(bnd.trim(), 16).unwrap();
    for cap in [16, 17, 25, 29, 30] {
        assert_eq!(bits & (1 << cap), 0, "capability {cap} kept: {bnd}");
    }
    for cap in [0, 12, 21] {
        assert_ne!(bits & (1 << cap), 0, "capability {cap} dropped: {bnd}");
    }
}

#[test]
fn no_host_process_and_only_loopback_are_visible() {
    if skip_unless_root("isolation") {
        return;
    }
    let r = sh(
        &[],
        "ls /proc | grep -E '^[0-9]+$' | wc -l; ls /sys/class/net; cat /sys/class/net/lo/flags",
    )
    .ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    let pids: usize = lines[0].trim().parse().unwrap();
    assert!(pids <= 4, "the node sees {pids} processes");
    assert_eq!(&lines[1..lines.len() - 1], ["lo"], "{}", r.stdout);
    let flags = u32::from_str_radix(lines[lines.len() - 1].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is up");
}

#[test]
fn memory_limit_kills_an_allocation_past_it() {
    if skip_unless_root("memory") {
        return;
    }
    let img = image();
    let small = hutch_run(&["run", "--image", &img, "--memory", "64M", "--", "/bin/hutch-alloc", "16"]).ok();
    assert!(small.stdout.contains("allocated 16 MiB"), "{}", small.stdout);
    let big = hutch_run(&["run", "--image", &img, "--memory", "64M", "--", "/bin/hutch-alloc", "256"]);
    assert_eq!(big.code, 137, "expected the OOM killer: {}{}", big.stdout, big.stderr);
}

#[test]
fn pids_limit_stops_a_fork_flood() {
    if skip_unless_root("pids") {
        return;
    }
    let flood = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do sleep 1 & done; echo all-started";
    let limited = sh(&["--pids-max", "8"], flood);
    assert_ne!(limited.code, 0);
    assert!(!limited.stdout.contains("all-started"), "{}", limited.stdout);
    assert!(limited.stderr.contains("can't fork"), "{}", limited.stderr);
    let free = sh(&[], flood).ok();
    assert!(free.stdout.contains("all-started"));
}

#[test]
fn binds_and_environment_reach_the_node() {
    if skip_unless_root("binds") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hutch-bind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello"), "from the host\n").unwrap();
    let spec = format!("{}:/mnt/host:ro", dir.display());
    let r = sh(
        &["--bind", &spec, "--setenv", "GREETING=hi there"],
        "cat /mnt/host/hello; echo $GREETING $container; touch /mnt/host/x 2>/dev/null && echo WROTE; true",
    )
    .ok();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(r.stdout, "from the host\nhi there hutch\n");
}

#[test]
fn busybox_init_boots_and_powers_off_cleanly() {
    if skip_unless_root("boot") {
        return;
    }
    let img = image();
    let r = hutch_run(&["run", "--image", &img, "--boot"]).ok();
    assert!(r.stdout.contains("hutch-busybox: booted"), "{}", r.stdout);
    assert!(r.stderr.contains("powered off"), "{}", r.stderr);
}

#[test]
fn sigterm_stops_the_node_and_its_status_is_reported() {
    if skip_unless_root("sigterm") {
        return;
    }
    let img = image();
    let child = std::process::Command::new(hutch())
        .args([
            "run",
            "--image",
            &img,
            "--",
            "/bin/sh",
            "-c",
            "trap 'echo stopping; exit 3' TERM; echo up; while true; do sleep 0.05; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_nothing_left(pid);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "up\nstopping\n");
}

#[test]
fn sigkill_of_hutch_takes_the_node_and_its_cgroups_with_it() {
    if skip_unless_root("sigkill") {
        return;
    }
    let img = image();
    let marker = format!("hutch-sigkill-{}", std::process::id());
    let child = std::process::Command::new(hutch())
        .args([
            "run",
            "--image",
            &img,
            "--memory",
            "64M",
            "--",
            "/bin/sh",
            "-c",
            &format!("sleep 1000; echo {marker}"),
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = child.id();
    assert!(!cgroup_dirs(pid).is_empty(), "the node has cgroups while it runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut child = child;
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(survivors.is_empty(), "node processes outlived hutch: {survivors:?}");
    assert_nothing_left(pid);
}

#[test]
fn bad_input_gets_one_line_and_exit_125() {
    let img = image();
    let file = std::env::temp_dir().join(format!("hutch-not-a-dir-{}", std::process::id()));
    std::fs::write(&file, "x").unwrap();
    let file_s = file.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "--image", "/nonexistent/image", "--", "/bin/true"],
            "--image: /nonexistent/image does not exist",
        ),
        (vec!["run", "--image", &file_s, "--", "/bin/true"], "is not a directory"),
        (vec!["run", "--image", &img, "--", "/bin/no-such-command"], "not found in node"),
        (
            vec!["run", "--image", &img, "--memory", "lots", "--", "/bin/true"],
            "--memory: \"lots\" is not a positive size",
        ),
        (vec!["run", "--image", &img, "--bind", "relative:/x", "--", "/bin/true"], "--bind"),
        (vec!["run", "--image", &img, "--name", "bad name!", "--", "/bin/true"], "--name"),
        (vec!["run", "--image", &img], "no command given"),
        (vec!["run", "--toplevel", &img], "has no executable init"),
    ];
    for (args, expected) in cases {
        if !is_root() && expected == "not found in node" {
            continue;
        }
        let r = hutch_run(&args);
        assert_eq!(r.code, 125, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(expected), "{args:?}: expected {expected:?} in {:?}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {:?}", r.stderr);
    }
    std::fs::remove_file(&file).ok();
}

#[test]
fn sigterm_powers_off_a_busybox_init_cleanly() {
    if skip_unless_root("busybox_stop") {
        return;
    }
    let img = image();
    let mut node = boot(None, &["--image", &img, "--boot", "--setenv", "HUTCH_STAY_UP=1"]);
    assert!(node.wait_for("hutch-busybox: staying up", 10), "{}", node.console());
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(node.finish(10), Some(0));
}

#[test]
fn vlans_give_the_node_eth_links_with_nixos_test_addresses() {
    if skip_unless_root("vlans") {
        return;
    }
    let r = sh(
        &["--name", "web", "--vlan", "1", "--vlan", "3", "--node-number", "7"],
        "ip addr; cat /etc/hosts",
    )
    .ok();
    for want in [
        "eth1",
        "192.168.1.7/24",
        "eth2",
        "192.168.3.7/24",
        "2001:db8:3::7/64",
        "52:54:00:12:01:07",
        "192.168.1.7 web",
    ] {
        assert!(r.stdout.contains(want), "missing {want}:\n{}", r.stdout);
    }
    let links = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("hutch"),
        "a link reached the host's namespace"
    );
}
