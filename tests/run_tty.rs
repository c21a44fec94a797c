//! `hutch run` at a real terminal (tmux): `-t` gives the command a terminal of the node's own,
//! and a booted node's console is a login console; the user's terminal is sane after both,
//! and nothing is left on the host. Root and rootless.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

/// The shell command that runs `hutch ARGS` as `user` in tmux: it prints hutch's pid first
/// (so the test can check what it left) and, after it, hutch's status and whether the
/// terminal is back in canonical mode.
fn in_terminal(user: Option<u32>, args: &str) -> String {
    let who = match user {
        Some(uid) => {
            let gid = hutch_runtime::Passwd::by_uid(uid).map(|p| p.gid).unwrap_or(uid);
            format!("setpriv --reuid={uid} --regid={gid} --clear-groups ")
        }
        None => String::new(),
    };
    let cgroup = match user.and_then(delegated_cgroup) {
        Some(dir) => format!("echo $$ > {}/cgroup.procs; ", dir.display()),
        None => String::new(),
    };
    format!(
        "sh -c '{cgroup}echo HUTCH-PID=$$; exec env HUTCH_CACHE={} {who}{} {args}'; \
         echo RUN-RC=$? $(stty -a | grep -o -- '-*icanon'); sleep 60",
        cache().display(),
        hutch()
    )
}

/// hutch's pid, from the pane.
fn hutch_pid(pane: &str) -> u32 {
    pane.lines()
        .find_map(|l| l.trim().strip_prefix("HUTCH-PID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no HUTCH-PID line:\n{pane}"))
}

/// `hutch run -t -- /bin/sh`: `tty` names a pty of the node's own devpts (not the host's), the
/// window's size and its changes reach it, Ctrl-C is the node's, `exit 3` is hutch's status.
fn tty_shell(user: Option<u32>) {
    let tag = format!("run-t-{}", user.unwrap_or(0));
    let tmux = Tmux::new(&tag, (30, 100), &in_terminal(user, "run -t --image busybox -- /bin/sh"));
    let pane = tmux.wait_for("/ #");
    let pid = hutch_pid(&pane);
    let pane = tmux.drive_shell("RUN-RC");
    assert!(pane.contains("\n/dev/pts/0\n"), "not the node's first pty:\n{pane}");
    assert_nothing_left(pid);
}

root_and_rootless!(run_t_gives_the_command_a_pty_of_the_node, run_t_works_rootless, tty_shell);

/// `hutch run --boot` of stock Debian (its console getty on): `login:` on the user's terminal,
/// root logs in (the test gives it an empty password, see the README), `exit` brings the
/// prompt back, Ctrl-] three times stops the node cleanly and leaves nothing.
fn login_console(user: Option<u32>) {
    let image = match user {
        Some(_) => getty_image(&["--shift-for", "nobody"]),
        None => getty_image(&[]),
    };
    let dir = Scratch::new(&format!("login-{}", user.unwrap_or(0)));
    let shadow = std::fs::read_to_string(image.join("etc/shadow")).unwrap();
    let open: String = shadow
        .lines()
        .map(|l| match l.split_once(':') {
            Some(("root", rest)) => format!("root::{}\n", rest.split_once(':').map_or("", |(_, r)| r)),
            _ => format!("{l}\n"),
        })
        .collect();
    assert!(open.starts_with("root::"), "{open}");
    let file = dir.0.join("shadow");
    std::fs::write(&file, open).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = format!("run --boot --image {} --bind {}:/etc/shadow", image.display(), file.display());
    let tmux = Tmux::new(&format!("login-{}", user.unwrap_or(0)), (30, 100), &in_terminal(user, &args));
    let pane = tmux.wait_for("login:");
    let pid = hutch_pid(&pane);
    assert!(pane.contains("Ctrl-] three times"), "no word on how to leave:\n{pane}");
    tmux.keys(&["root", "Enter"]);
    tmux.wait_for("root@node");
    tmux.keys(&["echo T$((6*7)); tty; stty size; echo E$((1+1))N", "Enter"]);
    let pane = tmux.wait_for("E2N");
    assert!(pane.contains("\n/dev/console\n"), "{pane}");
    assert!(pane.contains("\n30 100\n"), "the console has not the window's size:\n{pane}");
    tmux.keys(&["exit", "Enter"]);
    tmux.wait_for("logout");
    tmux.wait_for_times("node login:", 2);
    tmux.keys(&["C-]", "C-]", "C-]"]);
    let pane = tmux.wait_for("RUN-RC=");
    assert!(
        pane.contains("RUN-RC=0 icanon"),
        "no clean stop, or the terminal not restored:\n{pane}"
    );
    assert!(pane.contains("node: powered off"), "{pane}");
    assert_nothing_left(pid);
}

root_and_rootless!(
    run_boot_console_is_a_login_console,
    run_boot_login_console_works_rootless,
    login_console
);
