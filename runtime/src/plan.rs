//! The node's filesystem, compiled in the parent into a list of steps the child runs in order.
//!
//! Compiling first keeps the child small (it only makes system calls) and lets an error name
//! the exact step that failed. Host paths are absolute: the builder's root stays the host's
//! (in its own mount namespace). Node paths are relative to its working directory, a private
//! staging tmpfs stacked on `/` (no host path is hidden, no pivot_root needed): `newroot` is
//! the node's root, `masked` and `overlay` the builder's scratch.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::spec::{host_store_path, NodeSpec, RootFs};
use crate::upper::Upper;
use crate::Error;

/// One step of building the node's filesystem.
#[derive(Debug)]
pub(crate) enum Op {
    /// mount(2) as given.
    Mount {
        src: Option<CString>,
        dst: CString,
        fstype: Option<CString>,
        flags: MsFlags,
        data: Option<CString>,
    },
    /// Mount procfs for the node's pid namespace (not the builder's).
    Proc { dst: CString, flags: MsFlags },
    /// Wait for PID 1's network namespace and join it (sysfs shows the mounter's).
    JoinNet,
    /// Remount a bind mount adding `flags`, keeping the flags it has (some are locked).
    Remount { dst: CString, flags: MsFlags },
    /// mkdir, an existing directory is fine.
    Mkdir { path: CString, mode: u32 },
    /// Create an empty file as a mount point, an existing one is fine.
    Touch { path: CString, mode: u32 },
    /// symlink(target, link), an existing link is fine.
    Symlink { target: CString, link: CString },
    /// Write a whole file.
    Write { path: CString, contents: Vec<u8>, mode: u32 },
    /// Make a private tmpfs, stack it on `/` and make it the working directory (the process
    /// root stays the host's: absolute paths still reach host files).
    Stage,
    /// Bind a datagram socket at `path` and hand it to the parent (systemd's NOTIFY_SOCKET).
    NotifySocket { path: CString },
    /// Attach the idmapped image tree the runtime passed to the builder at `dst`.
    AttachView { dst: CString },
    /// Attach a detached mount the builder inherited from the runtime (descriptor `fd`).
    AttachInherited { fd: std::os::fd::RawFd, dst: CString },
    /// Make `newroot` the root and detach everything else (staging tmpfs and host root).
    EnterRoot,
}

/// The steps, each with the words an error message uses for it.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
}

/// One op, the words an error message uses for it, and whether the node can do without it.
#[derive(Debug)]
pub(crate) struct Step {
    pub op: Op,
    pub what: String,
    /// A missing target (ENOENT) is not an error: e.g. a /proc file this kernel lacks.
    pub optional: bool,
}

/// Where the pty slave that becomes /dev/console lives on the host.
pub(crate) struct ConsolePath(pub PathBuf);

const NODEV: MsFlags = MsFlags::MS_NODEV;
const NOSUID: MsFlags = MsFlags::MS_NOSUID;
const NOEXEC: MsFlags = MsFlags::MS_NOEXEC;

/// Files under /proc that leak host information or control the host: hidden behind an empty,
/// mode-000 file, as systemd-nspawn does.
const PROC_MASKED: &[&str] = &["kcore", "keys", "sysrq-trigger", "timer_list", "kallsyms", "sched_debug"];
/// Host devices a node gets (bind-mounted: a user namespace cannot mknod).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn c(path: impl AsRef<Path>) -> CString {
    CString::new(path.as_ref().as_os_str().as_bytes()).unwrap_or_default()
}

fn under(root: &str, path: &Path) -> PathBuf {
    Path::new(root).join(path.strip_prefix("/").unwrap_or(path))
}

impl Plan {
    fn push(&mut self, op: Op, what: String) {
        self.steps.push(Step { op, what, optional: false });
    }

    fn push_optional(&mut self, op: Op, what: String) {
        self.steps.push(Step { op, what, optional: true });
    }

    fn mount(&mut self, src: Option<&str>, dst: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) {
        let what = format!("mount {} on {}", fstype.or(src).unwrap_or("(remount)"), node_path(dst));
        let op = Op::Mount {
            src: src.map(c),
            dst: c(dst),
            fstype: fstype.map(c),
            flags,
            data: data.map(|d| CString::new(d).unwrap_or_default()),
        };
        self.push(op, what);
    }

    fn bind(&mut self, src: &Path, dst: &Path, read_only: bool) {
        self.push(
            Op::Mount {
                src: Some(c(src)),
                dst: c(dst),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
            },
            format!("bind {} on {}", src.display(), node_path(dst)),
        );
        if read_only {
            self.push(
                Op::Remount {
                    dst: c(dst),
                    flags: MsFlags::MS_RDONLY,
                },
                format!("make {} read-only", node_path(dst)),
            );
        }
    }

    fn mkdir(&mut self, path: &Path, mode: u32) {
        self.push(Op::Mkdir { path: c(path), mode }, format!("create directory {}", node_path(path)));
    }

    /// mkdir -p of every component below `root`.
    fn mkdir_all(&mut self, root: &str, path: &Path) {
        let mut cur = PathBuf::from(root);
        for part in path.strip_prefix("/").unwrap_or(path).components() {
            cur.push(part);
            self.mkdir(&cur, 0o755);
        }
    }

    fn touch(&mut self, path: &Path, mode: u32) {
        self.push(Op::Touch { path: c(path), mode }, format!("create {}", node_path(path)));
    }

    fn write(&mut self, path: &Path, contents: &[u8], mode: u32) {
        self.push(
            Op::Write {
                path: c(path),
                contents: contents.to_vec(),
                mode,
            },
            format!("write {}", node_path(path)),
        );
    }

    fn symlink(&mut self, target: &str, link: &Path) {
        self.push(
            Op::Symlink {
                target: c(target),
                link: c(link),
            },
            format!("link {} to {target}", node_path(link)),
        );
    }
}

/// How a path reads in error messages: as the node will see it.
fn node_path(p: &Path) -> String {
    match p.strip_prefix("newroot") {
        Ok(rest) => format!("/{}", rest.display()),
        Err(_) => p.display().to_string(),
    }
}

/// What the parent knows that shapes the node's mounts.
pub(crate) struct Context<'a> {
    pub spec: &'a NodeSpec,
    /// The image is seen with the node's ids through an idmapped tree the runtime passes to
    /// the builder (root-owned image, shifted ids), not at its own path.
    pub image_view: bool,
    /// Store paths to mount with `--closure-only`.
    pub closure: Option<Vec<PathBuf>>,
    /// The host's pty slave for /dev/console (boot mode).
    pub console: Option<ConsolePath>,
    /// Mount cgroup2 at /sys/fs/cgroup (the node has its own delegated cgroup).
    pub cgroup2: bool,
    /// devpts may use gid 5 (tty): only when the node has more than one id.
    pub tty_gid: bool,
    /// Text of /run/host/os-release.
    pub host_os_release: &'a [u8],
    /// The node's writable layer (image roots).
    pub upper: &'a Upper,
    /// The node boots systemd (it gets drop-ins for the mounts it must leave alone).
    pub systemd: bool,
}

/// Compiles the node's filesystem: staging, root, Container Interface mounts, binds, files.
pub(crate) fn compile(cx: &Context) -> Result<Plan, Error> {
    let mut p = Plan::default();
    p.push(Op::Stage, "make the staging tmpfs".into());
    p.mkdir(Path::new("newroot"), 0o755);
    p.mkdir(Path::new("masked"), 0o755);
    p.touch(Path::new("masked/file"), 0o000);
    root_fs(cx, &mut p)?;
    proc_fs(&mut p);
    dev_fs(cx, &mut p);
    run_and_tmp(cx, &mut p);
    for bind in &cx.spec.binds {
        let dst = under("newroot", &bind.target);
        if let Some(parent) = bind.target.parent() {
            p.mkdir_all("newroot", parent);
        }
        if bind.source.is_dir() {
            p.mkdir(&dst, 0o755);
        } else {
            p.touch(&dst, 0o644);
        }
        p.bind(&bind.source.clone(), &dst, bind.read_only);
        leave_mounted(cx, &mut p, &bind.target);
    }
    for (path, contents) in &cx.spec.files {
        if let Some(parent) = path.parent() {
            p.mkdir_all("newroot", parent);
        }
        p.write(&under("newroot", path), contents, 0o644);
    }
    // Last: PID 1 makes its network namespace meanwhile.
    p.push(Op::JoinNet, "joining the node's network namespace".into());
    sys_fs(cx, &mut p);
    p.push(Op::EnterRoot, "pivot_root into the node's root".into());
    Ok(p)
}

fn root_fs(cx: &Context, p: &mut Plan) -> Result<(), Error> {
    let root = Path::new("newroot");
    match &cx.spec.root {
        RootFs::Image(dir) => {
            // The image is the read-only lower layer; the node writes into a private tmpfs.
            let dir = match cx.image_view {
                true => {
                    let view = PathBuf::from("view");
                    p.mkdir(&view, 0o755);
                    p.push(Op::AttachView { dst: c(&view) }, "attach the idmapped image".into());
                    view
                }
                false => dir.canonicalize().map_err(Error::io("resolving image", dir))?,
            };
            let (upper, work) = match cx.upper {
                Upper::Tmpfs { size } => {
                    p.mkdir(Path::new("overlay"), 0o755);
                    let opts = format!("mode=0755,size={size}");
                    p.mount(
                        Some("hutch-upper"),
                        Path::new("overlay"),
                        Some("tmpfs"),
                        MsFlags::empty(),
                        Some(&opts),
                    );
                    p.mkdir(Path::new("overlay/upper"), 0o755);
                    p.mkdir(Path::new("overlay/work"), 0o755);
                    ("overlay/upper".to_string(), "overlay/work".to_string())
                }
                Upper::Dir { path, tree } => {
                    let disk = attach_disk(p, path, tree.as_ref());
                    (escape_overlay(&disk.join("upper")), escape_overlay(&disk.join("work")))
                }
            };
            let lower = dir;
            let data = format!("lowerdir={},upperdir={upper},workdir={work},userxattr", escape_overlay(&lower));
            p.mount(Some("overlay"), root, Some("overlay"), MsFlags::empty(), Some(&data));
        }
        RootFs::Nix { store, closure_only, .. } => {
            match cx.upper {
                Upper::Tmpfs { .. } => {
                    let opts = format!("mode=0755,size={}", cx.spec.upper_size());
                    p.mount(Some("hutch-root"), root, Some("tmpfs"), MsFlags::empty(), Some(&opts));
                }
                // A disk the node keeps across its restarts, as a VM keeps its disk image.
                Upper::Dir { path, tree } => {
                    let disk = attach_disk(p, path, tree.as_ref());
                    p.bind(&disk.join("upper"), root, false);
                }
            }
            p.mkdir_all("newroot", Path::new("/nix/store"));
            let node_store = Path::new("newroot/nix/store");
            let host_store = store.canonicalize().map_err(Error::io("resolving store", store))?;
            match (closure_only, &cx.closure) {
                (true, Some(paths)) => {
                    p.mount(Some("hutch-store"), node_store, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"));
                    for path in paths {
                        let host = host_store_path(path, store);
                        let dst = under("newroot", path);
                        if host_store_path(path, store).is_dir() {
                            p.mkdir(&dst, 0o755);
                        } else {
                            p.touch(&dst, 0o644);
                        }
                        p.bind(&host, &dst, true);
                    }
                    p.push(
                        Op::Remount {
                            dst: c(node_store),
                            flags: MsFlags::MS_RDONLY,
                        },
                        "make /nix/store read-only".into(),
                    );
                }
                _ => p.bind(&host_store, node_store, true),
            }
            p.mkdir(Path::new("newroot/etc"), 0o755);
            p.write(Path::new("newroot/etc/os-release"), b"", 0o644);
            p.write(Path::new("newroot/etc/machine-id"), b"", 0o444);
        }
    }
    for dir in ["proc", "sys", "dev", "run", "tmp"] {
        p.mkdir(&root.join(dir), 0o755);
    }
    Ok(())
}

/// Where the node's disk (`Upper::Dir`) is seen by the builder: as root, its detached mount
/// attached in the staging directory; rootless, its own path.
fn attach_disk(p: &mut Plan, path: &Path, tree: Option<&OwnedFd>) -> PathBuf {
    let Some(tree) = tree else {
        return path.to_path_buf();
    };
    p.mkdir(Path::new("disk"), 0o755);
    p.push(
        Op::AttachInherited {
            fd: tree.as_raw_fd(),
            dst: c("disk"),
        },
        "attach the node's disk".into(),
    );
    PathBuf::from("disk")
}

/// Overlay options separate with ',' and ':': escape them in the lower path.
fn escape_overlay(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(':', "\\:")
}

fn proc_fs(p: &mut Plan) {
    let proc_ = Path::new("newroot/proc");
    p.push(
        Op::Proc {
            dst: c(proc_),
            flags: NOSUID | NODEV | NOEXEC,
        },
        "mount proc on /proc".into(),
    );
    // /proc/sys read-only but /proc/sys/net writable: the node owns its network namespace.
    let net = proc_.join("sys/net");
    p.bind(&net, &net, false);
    let sys = proc_.join("sys");
    p.bind(&sys, &sys, true);
    for name in PROC_MASKED {
        let target = proc_.join(name);
        p.push_optional(
            Op::Mount {
                src: Some(c("masked/file")),
                dst: c(&target),
                fstype: None,
                flags: MsFlags::MS_BIND,
                data: None,
            },
            format!("mask /proc/{name}"),
        );
    }
}

fn sys_fs(cx: &Context, p: &mut Plan) {
    // A read-only /sys is the signal systemd, udevd and networkd look for in a container.
    let sys = Path::new("newroot/sys");
    p.mount(
        Some("sysfs"),
        sys,
        Some("sysfs"),
        MsFlags::MS_RDONLY | NOSUID | NODEV | NOEXEC,
        None,
    );
    if cx.cgroup2 {
        let cg = sys.join("fs/cgroup");
        p.mount(Some("cgroup2"), &cg, Some("cgroup2"), NOSUID | NODEV | NOEXEC, Some("nsdelegate"));
    }
}

fn dev_fs(cx: &Context, p: &mut Plan) {
    let dev = Path::new("newroot/dev");
    p.mount(
        Some("hutch-dev"),
        dev,
        Some("tmpfs"),
        NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=0755,size=4m"),
    );
    for name in DEVICES {
        let target = dev.join(name);
        p.touch(&target, 0o666);
        p.bind(&Path::new("/dev").join(name), &target, false);
    }
    p.mkdir(&dev.join("pts"), 0o755);
    let pts_opts = if cx.tty_gid {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    } else {
        "newinstance,ptmxmode=0666,mode=0620"
    };
    p.mount(Some("devpts"), &dev.join("pts"), Some("devpts"), NOSUID | NOEXEC, Some(pts_opts));
    p.symlink("pts/ptmx", &dev.join("ptmx"));
    p.mkdir(&dev.join("shm"), 0o1777);
    let shm = format!("mode=1777,{}", tmpfs_size(cx, SHM_SHARE));
    p.mount(Some("shm"), &dev.join("shm"), Some("tmpfs"), NOSUID | NODEV, Some(&shm));
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        p.symlink(target, &dev.join(link));
    }
    if let Some(ConsolePath(slave)) = &cx.console {
        let target = dev.join("console");
        p.touch(&target, 0o600);
        p.bind(slave, &target, false);
    }
}

fn run_and_tmp(cx: &Context, p: &mut Plan) {
    let run = Path::new("newroot/run");
    let run_opts = format!("mode=0755,{}", tmpfs_size(cx, RUN_SHARE));
    p.mount(Some("hutch-run"), run, Some("tmpfs"), NOSUID | NODEV, Some(&run_opts));
    p.mkdir(&run.join("host"), 0o755);
    p.write(&run.join("host/os-release"), cx.host_os_release, 0o444);
    p.write(&run.join("host/container-manager"), b"hutch\n", 0o444);
    if cx.spec.boot {
        p.push(
            Op::NotifySocket {
                path: c(run.join("host/notify")),
            },
            "bind /run/host/notify".into(),
        );
    }
    // `--tmpfs-size` bounds what a node writes to tmpfs: its writable layer and its /tmp.
    let tmp_size = cx
        .spec
        .tmpfs_size
        .map_or_else(|| tmpfs_size(cx, TMP_SHARE), |b| format!("size={b}"));
    let tmp_opts = format!("mode=1777,{tmp_size}");
    p.mount(
        Some("hutch-tmp"),
        Path::new("newroot/tmp"),
        Some("tmpfs"),
        NOSUID | NODEV,
        Some(&tmp_opts),
    );
    leave_mounted(cx, p, Path::new("/tmp"));
}

/// The node's mounts are locked (see child.rs): systemd, stopping, would try to unmount /tmp
/// and the binds and print `Failed unmounting` for each. A drop-in in /run (gone with the
/// node) takes the mount's unit off umount.target, as for mounts nspawn makes.
fn leave_mounted(cx: &Context, p: &mut Plan, node_path: &Path) {
    if !cx.systemd {
        return;
    }
    let dir = Path::new("/run/systemd/system").join(format!("{}.mount.d", unit_name(node_path)));
    p.mkdir_all("newroot", &dir);
    p.write(
        &under("newroot", &dir.join("50-hutch-locked.conf")),
        b"# hutch: this mount is the container manager's and locked; it is not unmounted at shutdown.\n\
          [Unit]\nDefaultDependencies=no\n",
        0o644,
    );
}

/// systemd's unit name of a mount point (`systemd-escape --path`): `/tmp/shared` is
/// `tmp-shared`, `-` and bytes outside `[A-Za-z0-9:_.]` are `\xNN`, as is a leading `.`.
fn unit_name(path: &Path) -> String {
    let parts: Vec<&[u8]> = path
        .as_os_str()
        .as_encoded_bytes()
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    if parts.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, b) in part.iter().enumerate() {
            match b {
                b'.' if i == 0 && j == 0 => out.push_str("\\x2e"),
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(*b as char),
                _ => out.push_str(&format!("\\x{b:02x}")),
            }
        }
    }
    out
}

/// Shares (percent) of the node's memory limit, or of the host's RAM without one, that its
/// /run, /dev/shm and /tmp may fill: without a size each tmpfs offers half of the host's RAM,
/// and a node without a memory cgroup (rootless on a host without delegation) put 1.5 GB into
/// host shmem. With a limit the pages are charged to the node anyway; the size makes a full
/// tmpfs an ENOSPC in the node rather than its OOM kill.
const RUN_SHARE: u64 = 20;
const SHM_SHARE: u64 = 20;
const TMP_SHARE: u64 = 25;

/// The `size=` option for a tmpfs that may take `share` percent of the node's memory.
fn tmpfs_size(cx: &Context, share: u64) -> String {
    match cx.spec.memory {
        Some(limit) => format!("size={}", (limit / 100 * share).max(1 << 20)),
        None => format!("size={share}%"),
    }
}

#[cfg(test)]
mod tests {
    use super::unit_name;
    use std::path::Path;

    #[test]
    fn mount_unit_names_are_systemd_escape_path() {
        // As `systemd-escape --path` prints them.
        for (path, unit) in [
            ("/tmp", "tmp"),
            ("/tmp/shared", "tmp-shared"),
            ("/", "-"),
            ("/srv/my-data//x/", "srv-my\\x2ddata-x"),
            ("/.hidden/a b", "\\x2ehidden-a\\x20b"),
        ] {
            assert_eq!(unit_name(Path::new(path)), unit, "{path}");
        }
    }
}
