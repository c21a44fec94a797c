//! nixpkgs testScripts run unchanged: every entry of upstream's test driver API (BaseMachine,
//! QemuMachine, NspawnMachine, Driver, the globals) called on real Debian systemd nodes by
//! tests/scripts/upstream_api.py, which checks each result; the driver's side of it here.

mod common;

use std::path::Path;

use common::*;

/// Runs the script on two Debian nodes as `user` (None: root) and checks what it left.
fn run_upstream_api(user: Option<u32>, tag: &str) {
    let _ = debian_image();
    if user.is_some() {
        let _ = debian_image_for_nobody();
    }
    let dir = Scratch::new(tag);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/upstream_api.py");
    let file = dir.0.join("compat.toml");
    std::fs::write(
        &file,
        format!(
            "[test]\nname = \"upstream-api\"\nscript = \"{}\"\ntimeout = 300\n\n[defaults]\nimage = \"debian\"\n\
             vlans = [1]\nmemory = \"256M\"\n\n[nodes.server]\n[nodes.client]\n",
            script.display()
        ),
    )
    .unwrap();
    let out = dir.0.join("out");
    let (code, text) = hutch_test_clean(user, &file, &out, &[]);
    assert_eq!(code, 0, "{text}");
    // What the script left on the host: the shared directory, the state directories and the
    // lines it logged as the node's console.
    assert_eq!(
        std::fs::read_to_string(out.join("shared/from-client")).unwrap(),
        "written by client\n"
    );
    assert!(out.join("vm-state-server").is_dir() && out.join("vm-state-client").is_dir());
    let server_log = std::fs::read_to_string(out.join("server.log")).unwrap();
    for line in ["# serial-line-from-the-script", "# serial-line-from-log", "# typed-by-hutch"] {
        assert!(server_log.contains(line), "{line:?} is not in server.log:\n{server_log}");
    }
}

#[test]
fn upstream_driver_api_works_or_is_refused_by_name_on_real_nodes() {
    if skip_unless_root("upstream_api") {
        return;
    }
    run_upstream_api(None, "compat");
}

#[test]
fn upstream_driver_api_works_rootless_as_nobody() {
    if skip_unless_root("upstream_api_rootless") {
        return;
    }
    run_upstream_api(Some(65534), "compat-nobody");
}
