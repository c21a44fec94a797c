//! `hutch test`: the examples and the NixOS driver's Machine API, on real systemd nodes.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `hutch test FILE --output-dir OUT ...` as `user`; its exit code and combined output.
fn hutch_test(user: Option<u32>, file: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    // The named image ("debian") must exist before a test file can refer to it.
    let _ = debian_image();
    if user.is_some() {
        let _ = debian_image_for_nobody();
    }
    hutch_test_clean(user, file, out, extra)
}

#[test]
fn the_nginx_example_passes_with_a_junit_report() {
    if skip_unless_root("nginx_example") {
        return;
    }
    let dir = Scratch::new("nginx");
    let junit = dir.0.join("junit.xml").display().to_string();
    let (code, out) = hutch_test(
        None,
        &root().join("examples/nginx/test.toml"),
        &dir.0.join("out"),
        &["--junit-xml", &junit],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("test \"nginx\" passed"), "{out}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<testsuite") && xml.contains("failures=\"0\""), "{xml}");
    assert!(dir.0.join("out/server.log").exists());
}

#[test]
fn the_router_example_passes() {
    if skip_unless_root("router_example") {
        return;
    }
    let dir = Scratch::new("router");
    let (code, out) = hutch_test(None, &root().join("examples/router/test.toml"), &dir.0.join("out"), &[]);
    assert_eq!(code, 0, "{out}");
}

fn machine_api_file(dir: &Path, image: &str) -> PathBuf {
    std::fs::write(dir.join("payload"), "payload from the host\n").unwrap();
    let script = root().join("tests/scripts/machine_api.py");
    let file = dir.join("api.toml");
    std::fs::write(
        &file,
        format!(
            "[test]\nname = \"machine-api\"\nscript = \"{}\"\ntimeout = 300\n\n[defaults]\nimage = \"{image}\"\nvlans = [1]\nmemory = \"256M\"\n\n\
             [nodes.web]\n[nodes.peer]\nenv = {{ HUTCH = \"1\" }}\n",
            script.display()
        ),
    )
    .unwrap();
    file
}

#[test]
fn the_machine_api_works_on_real_systemd_nodes() {
    if skip_unless_root("machine_api") {
        return;
    }
    let dir = Scratch::new("api");
    let file = machine_api_file(&dir.0, "debian");
    std::env::set_var("HUTCH_TEST_FILE", dir.0.join("payload"));
    let out_dir = dir.0.join("out");
    let (code, out) = hutch_test(None, &file, &out_dir, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("to-host")).unwrap_or_default(),
        "from the node\n",
        "{out}"
    );
}

#[test]
fn a_failing_command_fails_the_test_with_node_command_status_and_output() {
    if skip_unless_root("failing") {
        return;
    }
    let dir = Scratch::new("failing");
    let img = busybox_image().display().to_string();
    let file = dir.0.join("fail.toml");
    let script = root().join("tests/scripts/failing.py");
    std::fs::write(
        &file,
        format!(
            "[test]\nname = \"failing\"\nscript = \"{}\"\n[nodes.machine]\nimage = \"{img}\"\nboot = false\n",
            script.display()
        ),
    )
    .unwrap();
    let (code, out) = hutch_test(None, &file, &dir.0.join("out"), &[]);
    assert_eq!(code, 1, "{out}");
    for want in ["machine", "echo about to fail; exit 4", "(exit code 4)", "about to fail", "line 3"] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn a_bad_test_file_exits_2_and_starts_nothing() {
    let dir = Scratch::new("bad");
    let file = dir.0.join("bad.toml");
    std::fs::write(
        &file,
        "[test]\nname = \"bad\"\ntestScript = \"start_all()\"\n[nodes.a]\nimage = \"/nonexistent\"\nmemory = \"12Q\"\n",
    )
    .unwrap();
    let (code, out) = hutch_test(None, &file, &dir.0.join("out"), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("nodes.a.memory") && out.contains("512M"), "{out}");
    assert!(out.contains("nodes.a.image"), "{out}");
    assert!(!dir.0.join("out").exists(), "a bad file created the output directory");
}

#[test]
fn both_examples_pass_rootless_as_nobody() {
    if skip_unless_root("rootless_examples") {
        return;
    }
    for example in ["nginx", "router"] {
        let dir = Scratch::new(&format!("rootless-{example}"));
        let (code, out) = hutch_test(
            Some(65534),
            &root().join(format!("examples/{example}/test.toml")),
            &dir.0.join("out"),
            &[],
        );
        assert_eq!(code, 0, "{example} as nobody:\n{out}");
    }
}

#[test]
fn shutting_down_one_agent_only_node_does_not_wait_for_the_others() {
    if skip_unless_root("no_init_shutdown") {
        return;
    }
    let dir = Scratch::new("no-init");
    let img = busybox_image().display().to_string();
    let file = dir.0.join("t.toml");
    std::fs::write(
        &file,
        format!(
            "[test]\nname = \"no-init\"\ntestScript = '''\nstart_all()\na.shutdown()\nb.succeed(\"true\")\n'''\n\
             [defaults]\nimage = \"{img}\"\nboot = false\nmemory = \"256M\"\n[nodes.a]\n[nodes.b]\n"
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (code, out) = hutch_test(None, &file, &dir.0.join("out"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
