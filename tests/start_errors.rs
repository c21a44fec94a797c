//! A step that fails in a starting node is reported as that step and its errno, never as the
//! socket's error, also when many nodes start at once. Its own test binary: the cgroups its
//! many parallel starts make would be counted by tests/bad_input.rs's watch of what a bad
//! input creates.

mod common;

use common::*;

/// A step that fails in the node (a bind the node may not read) says which step and why, also
/// when many nodes start at once: the node's processes may end before PID 1 reads the go-ahead,
/// and the kernel then reports a reset (or EPIPE) before the queued message that says why.
/// Before the fix, 6 of 100 such starts under load said only `ECONNRESET` or `EPIPE`.
#[test]
fn a_failing_step_says_why_under_load() {
    if skip_unless_root("failing_step_under_load") {
        return;
    }
    let dir = Scratch::new("failing-step");
    let secret = dir.0.join("private");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(secret.join("f"), "x").unwrap();
    let bind = format!("{}:/etc/f", secret.join("f").display());
    let image = debian_image().display().to_string();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (bind, image) = (bind.clone(), image.clone());
            std::thread::spawn(move || {
                (0..15)
                    .map(|_| hutch_run(&["run", "--image", &image, "--boot", "--bind", &bind]))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for run in workers.into_iter().flat_map(|w| w.join().unwrap()) {
        assert_eq!(run.code, 125, "{}", run.stderr);
        assert!(
            run.stderr.contains("/etc/f: EACCES"),
            "the step and its errno, not the socket's: {}",
            run.stderr
        );
    }
}
