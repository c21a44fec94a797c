//! An image's symlinks resolve inside the node's root when hutch writes into it (issue 12, 2b):
//! a test file's `files` onto a path whose link points at a host path (absolute, or climbing
//! with `..`) lands inside the node, never on the host; and a link into the image itself
//! (Debian's sites-enabled -> sites-available) is followed inside the image, as the node would.
//! As root and as `nobody`.

mod common;

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::*;

const SCRIPT: &str = r#"
start_all()
for p in ["/var/TRAP/abs", "/var/TRAP/rel", "/etc/web/available/site", "/etc/web/enabled/site", "/etc/web/enabled/abs"]:
    print("NODE", p, a.succeed(f"cat {p} 2>&1 || echo missing").strip(), flush=True)
"#;

fn links(user: Option<u32>) {
    let dir = Scratch::new(&format!("links-{}", user.unwrap_or(0)));
    // A copy of the busybox image (ownership kept) with the links an image could carry.
    let image = dir.0.join("image");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(busybox_image_for(user))
        .arg(&image)
        .status()
        .unwrap();
    assert!(ok.success());
    // The directory the links name exists on the host (empty) and in the image: a write that
    // follows a link on the host lands in the host's.
    // One per user: the rootful and rootless runs go at once.
    let trap_name = format!("hutch-links-trap-{}", user.unwrap_or(0));
    let trap = Path::new("/var").join(&trap_name);
    let trap = trap.as_path();
    let _ = std::fs::remove_dir_all(trap);
    std::fs::create_dir_all(trap).unwrap();
    std::fs::set_permissions(trap, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::create_dir_all(image.join("var").join(&trap_name)).unwrap();
    symlink(trap.join("abs"), image.join("etc/abs-target")).unwrap();
    symlink(format!("../../../../../../var/{trap_name}/rel"), image.join("etc/rel-target")).unwrap();
    std::fs::create_dir_all(image.join("etc/web/available")).unwrap();
    std::fs::create_dir_all(image.join("etc/web/enabled")).unwrap();
    std::fs::write(image.join("etc/web/available/site"), "old\n").unwrap();
    symlink("../available/site", image.join("etc/web/enabled/site")).unwrap();
    symlink("/etc/web/available/abs", image.join("etc/web/enabled/abs")).unwrap();
    // Owned like the image's /etc: node root (the test user's uid when rootless).
    let owner = std::fs::metadata(image.join("etc")).unwrap();
    for made in [
        &format!("var/{trap_name}"),
        "etc/web",
        "etc/web/available",
        "etc/web/enabled",
        "etc/web/available/site",
    ] {
        std::os::unix::fs::lchown(image.join(made), Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    let content = dir.0.join("content");
    std::fs::write(&content, "from the test file\n").unwrap();
    let c = content.display().to_string();
    let toml = format!(
            "[test]\nname = \"links\"\nscript = \"t.py\"\ntimeout = 60\n[nodes.a]\nimage = {:?}\nboot = false\n\
             files = {{ \"/etc/abs-target\" = {c:?}, \"/etc/rel-target\" = {c:?}, \"/etc/web/enabled/site\" = {c:?}, \"/etc/web/enabled/abs\" = {c:?} }}\n",
            image.display().to_string()
        );
    let TestRun { passed, stdout, all } = run_test_file(user, &dir.0, &toml, &SCRIPT.replace("TRAP", &trap_name));
    let host_trap: Vec<_> = std::fs::read_dir(trap).unwrap().flatten().map(|e| e.path()).collect();
    let _ = Command::new("rm").arg("-rf").arg(&image).status();
    let _ = std::fs::remove_dir_all(trap);
    assert!(passed, "{all}");
    assert!(
        host_trap.is_empty(),
        "written on the host through the image's links: {host_trap:?}\n{all}"
    );
    let node = |p: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("NODE {p} ")))
            .unwrap_or_else(|| panic!("no line for {p}\n{all}"))
            .to_string()
    };
    // The host paths the links named, inside the node.
    assert_eq!(node(&format!("/var/{trap_name}/abs")), "from the test file", "{all}");
    assert_eq!(node(&format!("/var/{trap_name}/rel")), "from the test file", "{all}");
    // A link into the image: the file it points at was written, as in the node.
    assert_eq!(node("/etc/web/available/site"), "from the test file", "{all}");
    assert_eq!(node("/etc/web/enabled/site"), "from the test file", "{all}");
    assert_eq!(node("/etc/web/enabled/abs"), "from the test file", "{all}");
}

root_and_rootless!(
    files_follow_image_links_inside_the_node_rootful,
    files_follow_image_links_inside_the_node_rootless,
    links
);
