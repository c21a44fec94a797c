//! Real systemd (Debian's, from a debootstrapped image) booted by hutch: to multi-user.target
//! with no failed unit and nginx active, ready on READY=1, stopped cleanly; the same systemd
//! booted the NixOS way from an empty root holding only the store; as root and rootless.

mod common;

use common::*;
use nix::sys::signal::Signal;

/// A unit the tests bind into the node: after multi-user.target it prints the failed units
/// and nginx's state to the console.
fn check_unit() -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new("hutch-check");
    let unit = dir.path().join("hutch-check.service");
    std::fs::write(
        &unit,
        "[Unit]\nAfter=multi-user.target nginx.service\n[Service]\nType=oneshot\n\
         ExecStart=/bin/sh -c 'exec >/dev/console 2>&1; systemctl --failed --no-legend --plain | sed \"s/^/hutch-check: failed: /\"; \
         echo hutch-check: nginx=$(systemctl is-active nginx.service); echo hutch-check: done'\n",
    )
    .unwrap();
    let bind = format!("{}:/etc/systemd/system/hutch-check.service:ro", unit.display());
    (dir, bind)
}

mod tempdir {
    /// A temporary directory readable by every user, removed on drop.
    pub struct Dir(std::path::PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let p = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            Dir(p)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Boots, waits for the check unit's report, stops with SIGTERM and checks a clean exit 0.
fn boot_clean(user: Option<u32>, root: &[&str]) {
    let (_dir, bind) = check_unit();
    let mut args: Vec<&str> = root.to_vec();
    args.extend_from_slice(&["--name", "sd", "--boot", "--bind", &bind, "--", "systemd.wants=hutch-check.service"]);
    let mut node = boot(user, &args);
    assert!(
        node.wait_for("hutch-check: done", 60),
        "no report\nconsole:\n{}\nstderr:\n{}",
        node.console(),
        node.stderr()
    );
    assert!(node.wait_for("sd: ready in", 30), "no READY=1: {}", node.stderr());
    let console = node.console();
    assert!(console.contains("Reached target multi-user.target"), "{console}");
    assert!(!console.contains("hutch-check: failed:"), "failed units:\n{console}");
    assert!(console.contains("hutch-check: nginx=active"), "{console}");
    node.signal(Signal::SIGTERM);
    let stderr_before = node.stderr();
    let code = node.finish(30);
    assert_eq!(code, Some(0), "clean poweroff on SIGTERM: {stderr_before}");
}

#[test]
fn debian_systemd_boots_to_multi_user_as_root() {
    if skip_unless_root("debian_root") {
        return;
    }
    let img = debian_image().display().to_string();
    boot_clean(None, &["--image", &img]);
}

#[test]
fn debian_systemd_boots_the_nixos_way_from_an_empty_root() {
    if skip_unless_root("nixos_shaped") {
        return;
    }
    let top = nixos_shaped().display().to_string();
    boot_clean(None, &["--toplevel", &top, "--closure-only"]);
}

#[test]
fn debian_systemd_boots_rootless_as_nobody() {
    if skip_unless_root("debian_rootless") {
        return;
    }
    let img = debian_image_for_nobody().display().to_string();
    boot_clean(Some(65534), &["--image", &img]);
}

#[test]
fn nixos_shaped_systemd_boots_rootless_as_nobody() {
    if skip_unless_root("nixos_shaped_rootless") {
        return;
    }
    let top = nixos_shaped().display().to_string();
    boot_clean(Some(65534), &["--toplevel", &top, "--closure-only"]);
}

fn unit_running(command: &str) -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new("hutch-unit");
    let unit = dir.path().join("hutch-act.service");
    std::fs::write(
        &unit,
        format!("[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\nExecStart={command}\n"),
    )
    .unwrap();
    let bind = format!("{}:/etc/systemd/system/hutch-act.service:ro", unit.display());
    (dir, bind)
}

#[test]
fn systemctl_exit_n_ends_hutch_with_n() {
    if skip_unless_root("systemctl_exit") {
        return;
    }
    let img = debian_image().display().to_string();
    let (_dir, bind) = unit_running("/bin/systemctl exit 7");
    let node = boot(
        None,
        &["--image", &img, "--boot", "--bind", &bind, "--", "systemd.wants=hutch-act.service"],
    );
    assert_eq!(node.finish(60), Some(7));
}

#[test]
fn reboot_is_reported_and_restarts_with_allow_reboot() {
    if skip_unless_root("reboot") {
        return;
    }
    let img = debian_image().display().to_string();
    let (_dir, bind) = unit_running("/bin/systemctl --no-block reboot");
    let mut node = boot(
        None,
        &["--image", &img, "--boot", "--bind", &bind, "--", "systemd.wants=hutch-act.service"],
    );
    assert!(node.wait_for("asked for a reboot", 60), "{}", node.stderr());
    assert_eq!(node.finish(10), Some(0));
    let mut node = boot(
        None,
        &[
            "--image",
            &img,
            "--boot",
            "--allow-reboot",
            "--bind",
            &bind,
            "--",
            "systemd.wants=hutch-act.service",
        ],
    );
    assert!(node.wait_for("rebooting", 60), "{}", node.stderr());
    // After the restart the node comes up again (and asks for another reboot, and so on).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while node.stderr().matches("rebooting").count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(node.stderr().matches("rebooting").count() >= 2, "{}", node.stderr());
    node.signal(Signal::SIGKILL);
    node.finish(10);
}

#[test]
fn sigkill_mid_boot_leaves_nothing_within_a_second() {
    if skip_unless_root("sigkill_boot") {
        return;
    }
    let img = debian_image().display().to_string();
    let mut node = boot(None, &["--image", &img, "--boot", "--memory", "512M"]);
    assert!(node.wait_for("Welcome to", 30), "{}", node.console());
    let pid = node.pid();
    node.signal(Signal::SIGKILL);
    let started = std::time::Instant::now();
    node.finish(5);
    let procs_with_cgroup: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("cgroup")).ok())
        .filter(|c| c.contains(&format!("-{pid}\n")))
        .collect();
    assert!(procs_with_cgroup.is_empty(), "node processes remain: {procs_with_cgroup:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "cleanup took {:?}",
        started.elapsed()
    );
}

/// systemd finds only its own processes in its root cgroup: the agent and its commands live in
/// a child cgroup of the node's (`hutch-agent`). In the root, the agent (outside the node's
/// pid namespace) reads as pid 0, which systemd took for an I/O error at every boot, and on
/// cgroup2 processes there would keep systemd from enabling controllers for its units.
fn systemd_has_its_root_cgroup(user: Option<u32>) {
    let dir = Scratch::new(&format!("agent-cgroup-{}", user.unwrap_or(0)));
    let image = match user {
        Some(_) => debian_image_for_nobody(),
        None => debian_image(),
    };
    let toml = format!(
        "[test]\nname = \"agent-cgroup\"\nscript = \"t.py\"\ntimeout = 120\n[nodes.server]\nimage = {:?}\n",
        image.display().to_string()
    );
    let script = "server.wait_for_unit('multi-user.target')\n\
                  print('ROOT-PROCS', repr(server.succeed('cat /sys/fs/cgroup/cgroup.procs')), flush=True)\n\
                  print('OWN', server.succeed('grep ^0:: /proc/self/cgroup').strip(), flush=True)\n";
    let TestRun { passed, stdout, all } = run_test_file(user, &dir.0, &toml, script);
    assert!(passed, "{all}");
    assert!(stdout.contains("ROOT-PROCS ''"), "{all}");
    assert!(stdout.contains("OWN 0::/hutch-agent"), "{all}");
    let log = std::fs::read_to_string(dir.0.join("out/server.log")).unwrap();
    assert!(!log.contains("Couldn't move remaining userspace processes"), "{log}");
}

root_and_rootless!(
    systemd_has_its_root_cgroup_rootful,
    systemd_has_its_root_cgroup_rootless,
    systemd_has_its_root_cgroup
);
