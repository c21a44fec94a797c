//! Long waits are never silent (issue 16, point 6): a wait that has run 10 s says so, with
//! what it last saw, and a node whose boot never finishes says it is still starting, with its
//! console's last line. Each case is a real node and a real wait of a little over 10 s.

mod common;

use common::*;

/// Runs `script` against one node of `image` (booted unless `command`), returns the output.
fn run(tag: &str, image: &str, node: &str, script: &str) -> TestRun {
    let dir = Scratch::new(&format!("progress-{tag}"));
    std::fs::write(dir.0.join("slow.conf"), "[Unit]\nWants=slow.service\n").unwrap();
    std::fs::write(
        dir.0.join("slow.service"),
        "[Unit]\nDescription=A unit that holds the boot\n[Service]\nType=oneshot\nExecStart=/bin/sleep 13\n",
    )
    .unwrap();
    let toml = format!("[test]\nname = \"progress-{tag}\"\nscript = \"t.py\"\ntimeout = 120\n[defaults]\nimage = {image:?}\n{node}");
    run_test_file(None, &dir.0, &toml, script)
}

#[test]
fn a_long_console_wait_says_it_is_still_waiting_and_what_it_saw() {
    if skip_unless_root("progress_console") {
        return;
    }
    let image = busybox_image().display().to_string();
    // The fixture's last boot line comes first, so the echo is the console's last line.
    let script = "machine.start()\nmachine.wait_for_console_text('staying up')\n\
                  machine.execute('echo just-printed > /dev/console')\n\
                  machine.wait_for_console_text('never-printed', timeout=12)\n";
    // busybox init, kept up (the fixture powers off after boot otherwise).
    let node = "[nodes.machine]\nenv = { HUTCH_STAY_UP = \"1\" }\n";
    let TestRun { passed, all, .. } = run("console", &image, node, script);
    assert!(!passed, "the wait must time out: {all}");
    let still = all
        .lines()
        .find(|l| l.contains("still waiting for \"never-printed\" on the console after 10s of 12s"));
    assert!(still.is_some_and(|l| l.contains("last: just-printed")), "{all}");
}

#[test]
fn a_long_retry_says_it_is_still_waiting_with_the_last_output() {
    if skip_unless_root("progress_retry") {
        return;
    }
    let image = busybox_image().display().to_string();
    let script = "machine.succeed('true')\nmachine.wait_until_succeeds('echo attempt-output; false', timeout=11)\n";
    let TestRun { passed, all, .. } = run("retry", &image, "[nodes.machine]\nboot = false\n", script);
    assert!(!passed, "the wait must time out: {all}");
    let still = all
        .lines()
        .find(|l| l.contains("still waiting for success: echo attempt-output; false after 10s of 11s"));
    assert!(still.is_some_and(|l| l.contains("last: exit code 1: attempt-output")), "{all}");
}

#[test]
fn a_boot_that_does_not_finish_says_it_is_still_starting() {
    if skip_unless_root("progress_boot") {
        return;
    }
    // A oneshot unit multi-user.target wants holds systemd's READY=1 for 13 s.
    let image = debian_image().display().to_string();
    let node = "[nodes.server]\nfiles = { \"/etc/systemd/system/multi-user.target.d/slow.conf\" = \"slow.conf\", \
                \"/etc/systemd/system/slow.service\" = \"slow.service\" }\n";
    let TestRun { passed, all, .. } = run("boot", &image, node, "server.start()\nserver.succeed('true')\n");
    assert!(passed, "the node is up once the unit is done: {all}");
    let still = all
        .lines()
        .find(|l| l.contains("server: still starting (not up yet) after 10s; last: "));
    assert!(still.is_some(), "{all}");
}
