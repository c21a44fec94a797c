//! Escape attempts from inside a node as its root, run with hutch started by root and by
//! `nobody` (rootless): writing the store, the image, /sys and /proc/sys; remounting them; new
//! proc and sysfs mounts; the masked /proc files; modules, kexec, bpf, perf, handles, keyrings;
//! devices; host processes and interfaces; addresses outside the VLANs; the host's name and
//! time; cgroups; reboot(2). The rows are in tests/escape/attempts.rs; each is judged by the
//! refusal a user would check. Every row must be refused.

mod common;

#[path = "escape/attempts.rs"]
mod attempts;

use std::path::{Path, PathBuf};
use std::process::Command;

use attempts::{Attempt, Node};
use common::*;

/// `nobody`: has a subordinate id range (CI gives it one).
const NOBODY: u32 = 65534;

/// How a row's outcome is judged.
pub enum Check {
    /// The script's last line is one of these.
    Last(&'static [&'static str]),
    /// A check that also looks at the host.
    Custom(fn(&Outcome, &Ctx) -> Result<(), String>),
}

/// What one attempt left: hutch's exit code and output, and the companion node's run.
pub struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    companion: Option<Run>,
}

impl Outcome {
    fn last(&self) -> &str {
        self.stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim()
    }
}

/// What every attempt of one run (rootful or rootless) shares.
pub struct Ctx {
    user: Option<u32>,
    probe_dir: PathBuf,
    host_pid: u32,
    mark: String,
    hostname: String,
    image: PathBuf,
    toplevel: String,
    root_dev: (u64, u64),
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.probe_dir);
    }
}

impl Ctx {
    fn new(user: Option<u32>) -> Ctx {
        let st = nix::sys::stat::stat("/").unwrap();
        let probe_dir = std::env::temp_dir().join(format!("hutch-escape-{}-{}", std::process::id(), user.unwrap_or(0)));
        build_probe(&probe_dir);
        Ctx {
            user,
            probe_dir,
            host_pid: std::process::id(),
            mark: format!("{}-{}", std::process::id(), user.map_or("root".into(), |u| u.to_string())),
            hostname: host_hostname(),
            image: match user {
                None => busybox_image().to_path_buf(),
                Some(_) => busybox_image_for_nobody(),
            },
            toplevel: nix_toplevel().display().to_string(),
            root_dev: (nix::sys::stat::major(st.st_dev), nix::sys::stat::minor(st.st_dev)),
        }
    }

    fn script(&self, how: &str) -> String {
        format!(
            "P=/mnt/escape/escape-probe; SYSPROBE=/bin/hutch-syscall-probe; HOSTPID={}; MARK={}; HOSTDIR={}; TOP={}; MAJ={}; MIN={}\n{how}\n",
            self.host_pid,
            self.mark,
            self.probe_dir.display(),
            self.toplevel,
            self.root_dev.0,
            self.root_dev.1
        )
    }

    fn run(&self, a: &Attempt) -> Outcome {
        let img = self.image.display().to_string();
        let bind = format!("{}:/mnt/escape:ro", self.probe_dir.display());
        let script = self.script(a.how);
        let mut args = vec!["run"];
        match a.node {
            // A pids limit, so the cgroup rows have a limit to escape.
            Node::Busybox => {
                args.extend_from_slice(&["--image", &img, "--pids-max", "64", "--bind", &bind, "--", "/bin/sh", "-c", &script])
            }
            Node::Nix => args.extend_from_slice(&["--toplevel", &self.toplevel, "--bind", &bind, "--", "sh", "-c", &script]),
        }
        let companion = a.companion.then(|| {
            let (user, img) = (self.user, img.clone());
            std::thread::spawn(move || run_as(user, &["run", "--image", &img, "--", "/bin/sh", "-c", "sleep 2; echo alive"]))
        });
        std::thread::sleep(std::time::Duration::from_millis(if a.companion { 300 } else { 0 }));
        let r = run_as(self.user, &args);
        Outcome {
            code: r.code,
            stdout: r.stdout,
            stderr: r.stderr,
            companion: companion.map(|c| c.join().expect("the companion node")),
        }
    }
}

/// The busybox image shifted into `nobody`'s mapping (fixtures/busybox-image.sh --shift-for),
/// so the node's root owns its files as it would in a user's own rootless setup.
fn busybox_image_for_nobody() -> PathBuf {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/busybox-image.sh"))
        .args(["--shift-for", "nobody"])
        .env("HUTCH_CACHE", cache())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running fixtures/busybox-image.sh");
    assert!(out.status.success(), "fixtures/busybox-image.sh --shift-for nobody failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default())
}

fn host_hostname() -> String {
    nix::unistd::gethostname().unwrap().to_string_lossy().into_owned()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap()
}

/// The host's image has none of the node's changes.
pub fn image_unchanged(o: &Outcome, ctx: &Ctx) -> Result<(), String> {
    let img = &ctx.image;
    if std::fs::read_to_string(img.join("etc/inittab"))
        .unwrap_or_default()
        .contains("changed")
    {
        return Err("the node's write reached the image's /etc/inittab".into());
    }
    if img.join("bin/ls").symlink_metadata().is_err() {
        return Err("the node's delete reached the image's /bin/ls".into());
    }
    if img.join(format!("etc/hutch-escape-{}", ctx.mark)).exists() {
        return Err("the node's new file reached the image".into());
    }
    if o.last() != "written" {
        return Err(format!("the node could not even write its own overlay: {}", o.last()));
    }
    Ok(())
}

/// The write was refused and the host directory holds only the probe.
pub fn bind_unchanged(o: &Outcome, ctx: &Ctx) -> Result<(), String> {
    let names: Vec<String> = std::fs::read_dir(&ctx.probe_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names != ["escape-probe"] {
        return Err(format!("the host directory changed: {names:?}"));
    }
    match o.last() {
        "create errno=EROFS" | "create errno=EACCES" => Ok(()),
        other => Err(other.to_string()),
    }
}

/// The node counts only a handful of processes in its /proc.
pub fn few_processes(o: &Outcome, _: &Ctx) -> Result<(), String> {
    match o.last().parse::<u32>() {
        Ok(n) if n <= 4 => Ok(()),
        _ => Err(format!("the node sees {} processes", o.last())),
    }
}

/// Of every pid up to pid_max, only a few small ones (the node's) answer, never the host's.
pub fn scan_matches_proc(o: &Outcome, ctx: &Ctx) -> Result<(), String> {
    let list = o.last().strip_prefix("scan-pids visible=").ok_or_else(|| o.last().to_string())?;
    let pids: Vec<u32> = list.split(',').filter_map(|p| p.parse().ok()).collect();
    if pids.is_empty() || pids.len() > 4 || pids.contains(&ctx.host_pid) || pids.iter().any(|p| *p > 100) {
        return Err(format!("pids reachable from the node: {list}"));
    }
    Ok(())
}

/// The node may rename itself; the host's name stays.
pub fn hostname_kept(o: &Outcome, ctx: &Ctx) -> Result<(), String> {
    let now = host_hostname();
    if now != ctx.hostname {
        return Err(format!("the host's hostname changed to {now}"));
    }
    if !o.stdout.contains("sethostname ok") && !o.stdout.contains("sethostname errno=EPERM") {
        return Err(format!("unexpected: {}", o.stdout));
    }
    Ok(())
}

/// reboot(2) ends the node (its init dies of SIGHUP) and the companion node finishes its work.
pub fn reboot_ends_only_the_node(o: &Outcome, _: &Ctx) -> Result<(), String> {
    if o.code != 129 || o.stdout.contains("still-here") {
        return Err(format!(
            "the node did not end with SIGHUP: exit {}, {:?} {:?}",
            o.code, o.stdout, o.stderr
        ));
    }
    let c = o.companion.as_ref().ok_or("no companion")?;
    if c.code != 0 || c.stdout.trim() != "alive" {
        return Err(format!(
            "the other node did not live on: exit {}, {:?} {:?}",
            c.code, c.stdout, c.stderr
        ));
    }
    Ok(())
}

fn judge(a: &Attempt, o: &Outcome, ctx: &Ctx) -> Result<(), String> {
    match a.check {
        Check::Last(ok) if ok.contains(&o.last()) => Ok(()),
        Check::Last(_) => {
            // hutch's own warnings (no delegated cgroup, rootless) are not the attempt's output.
            let err: Vec<&str> = o.stderr.lines().filter(|l| !l.starts_with("hutch: warning")).collect();
            Err(format!("{} (exit {}, stderr {:?})", o.last(), o.code, err.join("\n")))
        }
        Check::Custom(f) => f(o, ctx),
    }
}

/// Runs every row for one kind of hutch user; prints the table; fails on any surprise.
fn run_table(user: Option<u32>) {
    let mode = if user.is_some() { "rootless" } else { "rootful" };
    let ctx = Ctx::new(user);
    let boot = boot_id();
    let rows = attempts::all();
    assert!(rows.len() >= 30, "the issue asks for at least 30 attempts");
    let mut failures = Vec::new();
    let mut table = String::new();
    for a in &rows {
        let o = ctx.run(a);
        let verdict = judge(a, &o, &ctx);
        let seen = match o.last() {
            "" => format!("exit {}", o.code),
            l => l.to_string(),
        };
        let cell = match &verdict {
            Ok(()) => format!("refused: {seen}"),
            Err(e) => {
                failures.push(format!("{}: NOT refused: {e}", a.what));
                format!("**NOT REFUSED**: {e}")
            }
        };
        table.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            a.what,
            a.how.replace('|', "\\|"),
            a.refusal,
            cell
        ));
    }
    assert_eq!(boot_id(), boot, "the host rebooted");
    assert_eq!(host_hostname(), ctx.hostname, "the host's hostname changed");
    finish_escape_table("escape", mode, &table, &failures);
}

#[test]
fn escape_attempts_from_a_rootful_node_are_refused() {
    if skip_unless_root("escape_rootful") {
        return;
    }
    run_table(None);
}

#[test]
fn escape_attempts_from_a_rootless_node_are_refused() {
    if skip_unless_root("escape_rootless") {
        return;
    }
    run_table(Some(NOBODY));
}
