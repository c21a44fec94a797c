//! The console a booted node gets: a pty with a size (200x50), so Debian's systemd does not
//! cut its status lines at 80 columns (an ellipsis in the middle of a unit name, and a colour
//! code cut in half that broke the user's terminal).

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
