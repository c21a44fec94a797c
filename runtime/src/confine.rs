//! What a node's root may not do: the capability bounding set and the seccomp filter.
//!
//! Both are prepared in the parent (the filter is compiled once) and applied by the child just
//! before exec, after every mount is made.

use std::collections::BTreeMap;

use caps::Capability;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::Error;

/// systemd-nspawn's default capability set without the audit capabilities, plus NET_ADMIN
/// because every node has a network namespace of its own.
pub(crate) const KEEP: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_IPC_OWNER,
    Capability::CAP_KILL,
    Capability::CAP_LEASE,
    Capability::CAP_LINUX_IMMUTABLE,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_NET_BROADCAST,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SETUID,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_BOOT,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SYS_NICE,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_SYS_RESOURCE,
    Capability::CAP_SYS_TTY_CONFIG,
];

/// System calls a node may not make: they reach the host kernel's global state (modules,
/// kexec, keyrings, swap, the kernel log, BPF, perf) or bypass path-based confinement.
pub const DENIED_SYSCALLS: &[(&str, i64)] = &[
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("keyctl", libc::SYS_keyctl),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("syslog", libc::SYS_syslog),
    ("acct", libc::SYS_acct),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("quotactl", libc::SYS_quotactl),
    ("userfaultfd", libc::SYS_userfaultfd),
];

/// The filter: the denied calls fail with EPERM, everything else is allowed. Compiled once per
/// process, copied for each node.
pub(crate) fn seccomp_program() -> Result<BpfProgram, Error> {
    static PROGRAM: std::sync::OnceLock<BpfProgram> = std::sync::OnceLock::new();
    if let Some(program) = PROGRAM.get() {
        return Ok(program.clone());
    }
    let program = compile()?;
    Ok(PROGRAM.get_or_init(|| program).clone())
}

fn compile() -> Result<BpfProgram, Error> {
    let rules = DENIED_SYSCALLS.iter().map(|(_, nr)| (*nr, vec![])).collect::<BTreeMap<_, _>>();
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| Error::Host {
        problem: format!("seccomp: {e}"),
        fix: "run hutch on x86_64 or aarch64".into(),
    })?;
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
        .and_then(BpfProgram::try_from)
        .map_err(|e| Error::Host {
            problem: format!("seccomp filter: {e}"),
            fix: "report this as a bug".into(),
        })?;
    Ok(filter)
}

/// Drops every capability not in [`KEEP`] from the bounding set (child side).
pub(crate) fn drop_bounding() -> Result<(), nix::errno::Errno> {
    for cap in caps::all() {
        if !KEEP.contains(&cap) {
            caps::drop(None, caps::CapSet::Bounding, cap).map_err(|_| nix::errno::Errno::last())?;
        }
    }
    Ok(())
}

/// Installs the filter for this process and everything it execs (child side). The node's
/// root holds CAP_SYS_ADMIN in its user namespace, so no_new_privs is not needed, and not set:
/// setuid programs inside the node keep working.
pub(crate) fn install_seccomp(program: &BpfProgram) -> Result<(), nix::errno::Errno> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}
