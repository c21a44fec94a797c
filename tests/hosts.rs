//! What hosts other than the development machine need: a writable layer in which image
//! directories can be deleted and renamed (opaque and redirected directories need user xattrs
//! on the upper layer), and a node's disk that survives its restarts within a test.

mod common;

use std::process::Stdio;

use common::*;

/// Deleting and renaming directories of the image, the moves that need the upper layer's
/// xattrs (they failed with EIO on a tmpfs upper layer before Linux 6.6).
const DELETE_AND_RENAME: &str = "rm -rf /etc && mkdir /etc && test -z \"$(ls -A /etc)\" && mv /usr /usr2 && test -d /usr2/bin && \
                                 ! test -e /usr && echo layer-ok";

#[test]
fn a_node_deletes_and_renames_image_directories_as_root_and_rootless() {
    if skip_unless_root("delete_and_rename") {
        return;
    }
    for user in [None, Some(65534)] {
        let img = busybox_image_for(user).display().to_string();
        let out = hutch_command(user, &["run", "--image", &img, "--", "/bin/sh", "-c", DELETE_AND_RENAME])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("layer-ok"), "as {user:?}: {text}");
        assert!(!text.contains("xattr"), "as {user:?}: {text}");
    }
    // The image itself is untouched.
    assert!(busybox_image().join("etc").is_dir() && busybox_image().join("usr").is_dir());
}

#[test]
fn the_tmpfs_layer_has_a_size_bounded_by_the_memory_limit_or_the_option() {
    if skip_unless_root("tmpfs_size") {
        return;
    }
    let img = busybox_image().display().to_string();
    let df = "df -k / | tail -1 | awk '{print $2}'";
    for (args, kib) in [
        (vec!["--memory", "64M"], 65536),
        (vec!["--memory", "64M", "--tmpfs-size", "8M"], 8192),
    ] {
        let mut full = vec!["run", "--image", &img];
        full.extend(args.iter().copied());
        full.extend(["--", "/bin/sh", "-c", df]);
        let out = hutch_command(None, &full).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), kib.to_string(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = hutch_command(None, &["run", "--image", &img, "--tmpfs-size", "lots", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tmpfs-size") && err.contains("512M"), "{err}");
}

/// Writes, then shutdown()/start(), reboot() and crash()/start(): what the node wrote is there
/// each time; deleting and renaming image directories works on the kept layer too.
const PERSISTENCE: &str = r#"
machine.start()
machine.succeed("echo one > /root/marker && echo changed > /etc/issue && rm -rf /etc/motd && mkdir -p /srv/data && mv /srv/data /srv/moved")
machine.shutdown()
machine.start()
machine.succeed("grep -qx one /root/marker && grep -qx changed /etc/issue && ! test -e /etc/motd && test -d /srv/moved")
machine.succeed("echo two >> /root/marker && sync")
machine.reboot()
machine.succeed("test $(cat /root/marker | wc -l) = 2")
machine.succeed("echo three >> /root/marker")
machine.crash()
machine.start()
machine.succeed("test $(cat /root/marker | wc -l) = 3")
"#;

fn persistence_file(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("t.toml");
    std::fs::write(
        &file,
        format!(
            "[test]\nname = \"disk\"\ntimeout = 300\ntestScript = '''{PERSISTENCE}'''\n[defaults]\nimage = \"debian\"\nmemory = \"256M\"\n[nodes.machine]\n"
        ),
    )
    .unwrap();
    file
}

#[test]
fn a_nodes_disk_survives_shutdown_reboot_and_crash_and_goes_with_the_test() {
    if skip_unless_root("disk_survives") {
        return;
    }
    let _ = debian_image();
    let _ = debian_image_for_nobody();
    for user in [None, Some(65534)] {
        let dir = Scratch::new(&format!("disk-{}", user.unwrap_or(0)));
        let file = persistence_file(&dir.0);
        let out_dir = dir.0.join("out");
        let (f, o) = (file.display().to_string(), out_dir.display().to_string());
        let child = hutch_command(user, &["test", &f, "--output-dir", &o])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert_nothing_left(pid);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "as {user:?}: {text}");
        assert!(!out_dir.join("disks").exists(), "as {user:?}: the disks outlived the test");
    }
}

/// The same for a NixOS-mode node (a toplevel on an empty root), as root and as `nobody`: its
/// root is the kept disk itself, as a VM's disk image survives its reboots.
#[test]
fn a_nixos_nodes_root_survives_shutdown_reboot_and_crash() {
    if skip_unless_root("nixos_disk_survives") {
        return;
    }
    let dir = Scratch::new("disk-nixos");
    let file = dir.0.join("t.toml");
    let script = "machine.start()\nmachine.succeed('mkdir -p /root /srv && echo one > /root/marker && echo x > /srv/data')\n\
                  machine.shutdown()\nmachine.start()\nmachine.succeed('grep -qx one /root/marker && test -f /srv/data')\n\
                  machine.reboot()\nmachine.succeed('grep -qx one /root/marker')\nmachine.succeed('echo two >> /root/marker')\n\
                  machine.crash()\nmachine.start()\nmachine.succeed('test $(wc -l < /root/marker) = 2')\n";
    std::fs::write(
        &file,
        format!(
            "[test]\nname = \"nixos-disk\"\ntimeout = 300\ntestScript = \"\"\"{script}\"\"\"\n[nodes.machine]\ntoplevel = {:?}\nclosure_only = true\n",
            nixos_shaped().display().to_string()
        ),
    )
    .unwrap();
    for user in [None, Some(65534)] {
        let out = dir.0.join(format!("out-{}", user.unwrap_or(0)));
        let (code, all) = hutch_test_clean(user, &file, &out, &[]);
        assert_eq!(code, 0, "as {user:?}: {all}");
        assert!(!out.join("disks").exists(), "as {user:?}: the disk outlived the test: {all}");
    }
}
