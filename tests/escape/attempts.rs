//! The escape attempts of tests/escape.rs, one row each: what a node's root tries, how, and the
//! refusal a user would check; every row must be refused, rootful and rootless.
//!
//! Each `how` is a shell script run as the node's PID 1 with these variables set:
//! `P` the escape probe (tests/escape/escape-probe.c), `SYSPROBE` the image's syscall probe,
//! `HOSTPID` the test process's host pid, `MARK` a name unique to the run, `HOSTDIR` the host
//! directory bound read-only at /mnt/escape, `TOP` the toplevel (NixOS nodes), `MAJ`/`MIN` the
//! host root filesystem's block device numbers. The row's verdict is the script's last line.

use super::{Check, Ctx, Outcome};

/// What the node boots.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Node {
    /// The busybox image (overlay root).
    Busybox,
    /// The NixOS-shaped toplevel (tmpfs root, the host's store bound read-only).
    Nix,
}

/// One escape attempt.
pub struct Attempt {
    /// What is attempted, as the table says it.
    pub what: &'static str,
    /// The node it runs in.
    pub node: Node,
    /// The script (see the module docs for its variables).
    pub how: &'static str,
    /// The refusal a user would check, as the table says it.
    pub refusal: &'static str,
    /// How the outcome is judged.
    pub check: Check,
    /// A second node runs alongside and must live on (reboot).
    pub companion: bool,
}

const fn row(what: &'static str, node: Node, how: &'static str, refusal: &'static str, ok: &'static [&'static str]) -> Attempt {
    Attempt {
        what,
        node,
        how,
        refusal,
        check: Check::Last(ok),
        companion: false,
    }
}

const fn custom(mut a: Attempt, f: fn(&Outcome, &Ctx) -> Result<(), String>) -> Attempt {
    a.check = Check::Custom(f);
    a
}

use Node::{Busybox, Nix};

const EROFS_EACCES: &[&str] = &["create errno=EROFS", "create errno=EACCES"];
const OPEN_REFUSED: &[&str] = &["open-w errno=EROFS", "open-w errno=EACCES"];
const MOUNT_EPERM: &[&str] = &["mount errno=EPERM"];
const MASKED: &[&str] = &["read bytes=0", "read errno=ENOENT"];

/// Every attempt, in table order.
pub fn all() -> Vec<Attempt> {
    Vec::from([
        // The Nix store (NixOS nodes bind it read-only).
        row("write a new file into /nix/store", Nix, "$P create /nix/store/hutch-escape-$MARK", "EROFS", EROFS_EACCES),
        row("overwrite the toplevel's init", Nix, "$P open-w $TOP/init", "EROFS (rootless: EACCES)", OPEN_REFUSED),
        row("remount /nix/store rw (`mount -o remount,rw`)", Nix, "$P mount - - /nix/store remount", "EPERM", MOUNT_EPERM),
        row("remount the /nix/store bind rw (`mount -o remount,bind,rw`)", Nix, "$P mount - - /nix/store remount,bind", "EPERM", MOUNT_EPERM),
        row(
            "write /nix/store after that remount",
            Nix,
            "$P mount - - /nix/store remount,bind >/dev/null; $P create /nix/store/hutch-escape-$MARK",
            "EROFS, nothing reaches the host's store",
            EROFS_EACCES,
        ),
        // The image.
        custom(
            row(
                "change the image (write /etc/inittab, delete /bin/ls, add a file)",
                Busybox,
                "echo changed > /etc/inittab && rm /bin/ls && echo x > /etc/hutch-escape-$MARK && echo written",
                "the writes stay in the node's overlay: the host's image is unchanged",
                &[],
            ),
            super::image_unchanged,
        ),
        row(
            "reach the host's mounts (its root filesystem left mounted under the node's root)",
            Busybox,
            "echo roots=$(awk '$5 == \"/\"' /proc/self/mountinfo | wc -l) hostroot=$(awk -v d=$MAJ:$MIN '$3 == d && $4 == \"/\"' /proc/self/mountinfo | wc -l)",
            "one root, the host's root filesystem mounted nowhere",
            &["roots=1 hostroot=0"],
        ),
        row("remount a read-only --bind rw", Busybox, "$P mount - - /mnt/escape remount,bind", "EPERM", MOUNT_EPERM),
        custom(
            row(
                "write a read-only --bind after that remount",
                Busybox,
                "$P mount - - /mnt/escape remount,bind >/dev/null; $P create /mnt/escape/hutch-escape-$MARK",
                "EROFS, nothing reaches the host directory",
                EROFS_EACCES,
            ),
            super::bind_unchanged,
        ),
        // /sys
        row("write a sysfs file", Busybox, "$P open-w /sys/kernel/mm/transparent_hugepage/enabled", "EROFS", &["open-w errno=EROFS"]),
        row("create a file in /sys", Busybox, "$P create /sys/hutch-escape-$MARK", "EROFS", &["create errno=EROFS"]),
        row("remount /sys rw (`mount -o remount,rw`)", Busybox, "$P mount - - /sys remount", "EPERM", MOUNT_EPERM),
        row("bind-remount /sys rw", Busybox, "$P mount - - /sys remount,bind", "EPERM", MOUNT_EPERM),
        row(
            "write sysfs after that remount",
            Busybox,
            "$P mount - - /sys remount,bind >/dev/null; $P open-w /sys/kernel/mm/transparent_hugepage/enabled",
            "EROFS",
            &["open-w errno=EROFS"],
        ),
        row("mount a new sysfs", Busybox, "$P mount sysfs sysfs /tmp/sys none", "EPERM", MOUNT_EPERM),
        // /proc/sys and the masked /proc files.
        row("write a global sysctl (/proc/sys/kernel/printk_ratelimit)", Busybox, "$P open-w /proc/sys/kernel/printk_ratelimit", "EROFS", OPEN_REFUSED),
        row("write /proc/sys/kernel/hostname", Busybox, "$P open-w /proc/sys/kernel/hostname", "EROFS", OPEN_REFUSED),
        row("remount /proc/sys rw (`mount -o remount,rw`)", Busybox, "$P mount - - /proc/sys remount", "EPERM", MOUNT_EPERM),
        row(
            "write a global sysctl after that remount",
            Busybox,
            "$P mount - - /proc/sys remount >/dev/null; $P open-w /proc/sys/kernel/printk_ratelimit",
            "EROFS",
            OPEN_REFUSED,
        ),
        row("mount a new procfs beside the masked one", Busybox, "$P mount proc proc /tmp/proc none", "EPERM", MOUNT_EPERM),
        row(
            "write a global sysctl through the new procfs",
            Busybox,
            "$P mount proc proc /tmp/proc none >/dev/null; $P open-w /tmp/proc/sys/kernel/printk_ratelimit",
            "EPERM (no new procfs) or EROFS",
            &["open-w errno=EROFS", "open-w errno=EACCES", "open-w errno=ENOENT"],
        ),
        row(
            "read /proc/keys through the new procfs",
            Busybox,
            "$P mount proc proc /tmp/proc none >/dev/null; $P read /tmp/proc/keys",
            "nothing to read",
            MASKED,
        ),
        row("unmount the mask on /proc/keys", Busybox, "$P umount /proc/keys", "EPERM", &["umount errno=EPERM", "umount errno=EINVAL"]),
        row("read /proc/keys after unmounting its mask", Busybox, "$P umount /proc/keys >/dev/null; $P read /proc/keys", "nothing to read", MASKED),
        row("read /proc/kcore", Busybox, "$P read /proc/kcore", "masked: empty or absent", MASKED),
        row("read /proc/keys", Busybox, "$P read /proc/keys", "masked: empty", MASKED),
        row("read /proc/sysrq-trigger", Busybox, "$P read /proc/sysrq-trigger", "masked: empty or absent", MASKED),
        row(
            "open /proc/sysrq-trigger for writing",
            Busybox,
            "$P open-w /proc/sysrq-trigger",
            "absent or not writable",
            &["open-w errno=ENOENT", "open-w errno=EACCES", "open-w errno=EROFS"],
        ),
        row("read /proc/timer_list", Busybox, "$P read /proc/timer_list", "masked: empty", MASKED),
        row("read /proc/kallsyms", Busybox, "$P read /proc/kallsyms", "masked: empty", MASKED),
        // The kernel's global state: the seccomp filter and the bounding set.
        row("load a module (init_module)", Busybox, "$SYSPROBE init_module", "EPERM", &["init_module errno=EPERM"]),
        row("load a module from a file (finit_module)", Busybox, "$SYSPROBE finit_module", "EPERM", &["finit_module errno=EPERM"]),
        row("unload a module (delete_module)", Busybox, "$SYSPROBE delete_module", "EPERM", &["delete_module errno=EPERM"]),
        row("kexec_load", Busybox, "$SYSPROBE kexec_load", "EPERM", &["kexec_load errno=EPERM"]),
        row("kexec_file_load", Busybox, "$SYSPROBE kexec_file_load", "EPERM", &["kexec_file_load errno=EPERM"]),
        row("bpf", Busybox, "$SYSPROBE bpf", "EPERM", &["bpf errno=EPERM"]),
        row("perf_event_open", Busybox, "$SYSPROBE perf_event_open", "EPERM", &["perf_event_open errno=EPERM"]),
        row("open_by_handle_at", Busybox, "$SYSPROBE open_by_handle_at", "EPERM", &["open_by_handle_at errno=EPERM"]),
        row("keyring: add_key", Busybox, "$SYSPROBE add_key", "EPERM", &["add_key errno=EPERM"]),
        row("keyring: keyctl", Busybox, "$SYSPROBE keyctl", "EPERM", &["keyctl errno=EPERM"]),
        row("keyring: request_key", Busybox, "$SYSPROBE request_key", "EPERM", &["request_key errno=EPERM"]),
        row("swapon", Busybox, "$SYSPROBE swapon", "EPERM", &["swapon errno=EPERM"]),
        row("read the kernel log (syslog)", Busybox, "$SYSPROBE syslog", "EPERM", &["syslog errno=EPERM"]),
        row("raw I/O ports (iopl)", Busybox, "$P iopl", "EPERM (ENOSYS where the kernel has no iopl)", &["iopl errno=EPERM", "iopl errno=ENOSYS"]),
        // Devices.
        row("mknod the host's root block device", Busybox, "$P mknod-blk /dev/hutch-disk $MAJ $MIN", "EPERM", &["mknod-blk errno=EPERM"]),
        row(
            "read that block device",
            Busybox,
            "$P mknod-blk /dev/hutch-disk $MAJ $MIN >/dev/null; $P read /dev/hutch-disk",
            "ENOENT (never made)",
            &["read errno=ENOENT"],
        ),
        row("mknod /dev/mem", Busybox, "$P mknod-chr /dev/hutch-mem 1 1", "EPERM", &["mknod-chr errno=EPERM"]),
        // Host processes.
        custom(
            row("see host processes", Busybox, "ls /proc | grep -c '^[0-9][0-9]*$'", "only the node's own (at most 4)", &[]),
            super::few_processes,
        ),
        row("read a host process's /proc entry", Busybox, "$P read /proc/$HOSTPID/cmdline", "ENOENT", &["read errno=ENOENT"]),
        row("ptrace-attach a host process", Busybox, "$P ptrace $HOSTPID", "ESRCH", &["ptrace errno=ESRCH"]),
        row("signal a host process (kill -0)", Busybox, "$P kill0 $HOSTPID", "ESRCH", &["kill0 errno=ESRCH"]),
        row("pidfd_open a host process", Busybox, "$P pidfd $HOSTPID", "ESRCH", &["pidfd errno=ESRCH"]),
        custom(
            row(
                "reach any pid outside the node (kill -0 of every pid up to pid_max)",
                Busybox,
                "$P scan-pids",
                "only the node's own pids answer",
                &[],
            ),
            super::scan_matches_proc,
        ),
        // The network.
        row(
            "see host network interfaces",
            Busybox,
            "echo $(ls /sys/class/net) / $(tail -n +3 /proc/net/dev | cut -d: -f1)",
            "only lo",
            &["lo / lo"],
        ),
        row("connect to 10.0.0.1 (outside every VLAN)", Busybox, "$P connect 10.0.0.1 80", "ENETUNREACH", &["connect errno=ENETUNREACH"]),
        row("connect to 2001:db8::1 (outside every VLAN)", Busybox, "$P connect 2001:db8::1 80", "ENETUNREACH", &["connect errno=ENETUNREACH"]),
        // The host's name and time.
        custom(
            row("change the hostname", Busybox, "$P sethostname hutch-escape-$MARK; hostname", "only the node's: the host's hostname is unchanged", &[]),
            super::hostname_kept,
        ),
        row("set the time (settimeofday)", Busybox, "$P settimeofday", "EPERM", &["settimeofday errno=EPERM"]),
        row("set the time (clock_settime)", Busybox, "$P clock_settime", "EPERM", &["clock_settime errno=EPERM"]),
        row("adjust the time (clock_adjtime)", Busybox, "$P clock_adjtime", "EPERM", &["clock_adjtime errno=EPERM"]),
        row("set the time (busybox `date -s`)", Busybox, "date -s 2020-01-01 2>&1 >/dev/null | tail -n 1", "EPERM", &["date: can't set date: Operation not permitted"]),
        // Cgroups.
        row("mount the cgroup v1 pids hierarchy", Busybox, "$P mount cgroup cgroup /tmp/cgp none pids", "EPERM", MOUNT_EPERM),
        row(
            "raise its own pids limit through it",
            Busybox,
            "$P mount cgroup cgroup /tmp/cgp none pids >/dev/null; $P open-w /tmp/cgp$(sed -n 's/^[0-9]*:pids://p' /proc/self/cgroup)/pids.max",
            "EPERM (no mount) or EACCES",
            &["open-w errno=EACCES", "open-w errno=ENOENT", "open-w errno=EROFS"],
        ),
        row(
            "move itself to the root of the mounted pids hierarchy",
            Busybox,
            "if $P mount cgroup cgroup /tmp/cgp none pids | grep -q 'mount ok'; then echo $$ 2>/dev/null > /tmp/cgp/cgroup.procs && echo moved || echo refused; else echo refused; fi",
            "refused",
            &["refused"],
        ),
        row(
            "see the host's cgroup tree through a cgroup v1 mount (cpu)",
            Busybox,
            "$P mount cgroup cgroup /tmp/cgc none cpu >/dev/null; [ -e /tmp/cgc/release_agent ] && echo host-root || echo own-subtree",
            "EPERM, or only the node's own subtree",
            &["own-subtree", "mount errno=EPERM"],
        ),
        row(
            "write the host's release_agent (CVE-2022-0492)",
            Busybox,
            "$P mount cgroup cgroup /tmp/cgc none cpu >/dev/null; $P open-w /tmp/cgc/release_agent",
            "EACCES/EPERM (or no such file)",
            &["open-w errno=EACCES", "open-w errno=EPERM", "open-w errno=ENOENT"],
        ),
        // The root directory and the node's end.
        row("break out of a chroot (chroot, cd .. x64, chroot .)", Busybox, "$P chroot-escape $HOSTDIR", "ENOENT: still the node's root", &["chroot-escape errno=ENOENT"]),
        Attempt {
            companion: true,
            ..custom(
                row("reboot(2)", Busybox, "$P reboot; echo still-here", "the node ends (SIGHUP, exit 129); the host and a second node live on", &[]),
                super::reboot_ends_only_the_node,
            )
        },
    ])
}
