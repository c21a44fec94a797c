//! The console a booted node gets: a pty with a size (200x50), so Debian's systemd does not
//! cut its status lines at 80 columns (an ellipsis in the middle of a unit name, and a colour
//! code cut in half that broke the user's terminal), and a run that ends without its nodes'
//! noise.

mod common;

use common::*;

#[test]
fn systemd_status_lines_are_not_cut_at_80_columns() {
    if skip_unless_root("console_size") {
        return;
    }
    let dir = Scratch::new("console-size");
    let image = debian_image().display().to_string();
    std::fs::write(
        dir.0.join("test.toml"),
        format!("[test]\nname = \"console-size\"\nscript = \"test.py\"\ntimeout = 300\n\n[nodes.server]\nimage = {image:?}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.0.join("test.py"),
        "start_all()\nserver.wait_for_unit('multi-user.target')\n\
         assert server.succeed('stty size < /dev/console').split() == ['50', '200']\n\
         log = server.get_console_log()\n\
         assert 'Reached target' in log, log\n\
         cut = [l for l in log.splitlines() if '\\u2026' in l]\n\
         assert not cut, cut\n",
    )
    .unwrap();
    let file = dir.0.join("test.toml").display().to_string();
    let out = dir.0.join("out").display().to_string();
    let r = hutch_run(&["test", &file, "--output-dir", &out]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// Issue 16 point 8: a passing run ends without the nodes' noise. A node printing on its
/// console all the time shows nothing on the terminal once the nodes are being stopped; its
/// log keeps what it printed.
#[test]
fn a_passing_run_ends_without_console_noise() {
    if skip_unless_root("console_quiet_end") {
        return;
    }
    let dir = Scratch::new("console-quiet-end");
    let image = debian_image().display().to_string();
    let toml = format!("[test]\nname = \"quiet-end\"\nscript = \"t.py\"\ntimeout = 120\n[nodes.server]\nimage = {image:?}\n");
    let script = "server.wait_for_unit('multi-user.target')\n\
                  server.execute('while :; do echo noisy-tick > /dev/console; done', check_output=False)\n\
                  server.wait_for_console_text('noisy-tick')\n";
    let TestRun { passed, all, .. } = run_test_file(None, &dir.0, &toml, script);
    assert!(passed, "{all}");
    let (during, after) = all.split_once("stopping all nodes").expect("the run stops its nodes");
    assert!(
        during.contains("server # noisy-tick"),
        "the console is shown while the test runs: {all}"
    );
    assert!(!after.contains(" # "), "nothing of the nodes after the stop: {after}");
    let log = std::fs::read_to_string(dir.0.join("out/server.log")).unwrap();
    assert!(log.contains("noisy-tick"), "the node's log keeps its console");
}

/// A clean shutdown (`server.shutdown()`, a reboot) says nothing of failing to unmount the
/// mounts hutch made (/tmp, /tmp/shared): they are locked in the node, and systemd leaves them.
#[test]
fn a_clean_shutdown_does_not_fail_to_unmount_what_hutch_mounted() {
    if skip_unless_root("console_clean_shutdown") {
        return;
    }
    let dir = Scratch::new("console-clean-shutdown");
    let image = debian_image().display().to_string();
    let toml = format!("[test]\nname = \"clean-shutdown\"\nscript = \"t.py\"\ntimeout = 120\n[nodes.server]\nimage = {image:?}\n");
    let script = "server.start()\nserver.succeed('mountpoint /tmp && mountpoint /tmp/shared')\nserver.shutdown()\n";
    let TestRun { passed, all, .. } = run_test_file(None, &dir.0, &toml, script);
    assert!(passed, "{all}");
    let log = std::fs::read_to_string(dir.0.join("out/server.log")).unwrap();
    assert!(
        log.contains("Reached target") && log.contains("shutdown.target"),
        "a clean stop: {log}"
    );
    assert!(!log.contains("Failed unmounting"), "{log}");
}
