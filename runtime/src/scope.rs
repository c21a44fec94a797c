//! A transient systemd scope of hutch's own, with `Delegate=yes`, asked of PID 1 (root) or of
//! the user's manager (rootless) over D-Bus, as systemd-run --scope and podman do: systemd's
//! delegation rules give a program cgroups only below a unit delegated to it.
//!
//! The call runs in a forked helper: D-Bus clients start threads, and the runtime must stay
//! single-threaded to clone nodes safely. The helper asks for a scope holding its parent's
//! pid, waits until the kernel shows the parent in it, reports on a pipe and exits.

use std::io::Read;
use std::time::{Duration, Instant};

use nix::unistd::{fork, ForkResult, Pid};
use zbus::zvariant::Value;

/// Which systemd manager makes the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Manager {
    /// PID 1, on the system bus (hutch runs as root).
    System,
    /// The user's `systemd --user`, on the user's bus.
    User,
}

/// Moves this process into a new transient scope `hutch-<pid>.scope` with `Delegate=yes`.
/// Returns the scope's cgroup path (as in /proc/self/cgroup), or why it could not be had.
/// Call while the process has one thread.
pub(crate) fn enter(manager: Manager) -> Result<String, String> {
    let me = Pid::this();
    let unit = format!("hutch-{me}.scope");
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the caller guarantees a single thread; the child talks D-Bus, writes to the
    // pipe and leaves with _exit.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(r);
            let code = match ask(manager, &unit, me) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = nix::unistd::write(&w, e.as_bytes());
                    1
                }
            };
            // SAFETY: ends the helper without the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut why = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut why);
            let status = loop {
                match nix::sys::wait::waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            match (status, crate::cgroup::own_cgroup2()) {
                (Ok(nix::sys::wait::WaitStatus::Exited(_, 0)), Some(path)) if path.ends_with(&unit) => Ok(path),
                _ if !why.is_empty() => Err(why),
                _ => Err(format!("the manager did not move hutch into {unit}")),
            }
        }
    }
}

/// The helper's side: StartTransientUnit, then wait for `pid` to be in the unit's cgroup.
fn ask(manager: Manager, unit: &str, pid: Pid) -> Result<(), String> {
    let conn = connect(manager)?;
    let proxy = zbus::blocking::Proxy::new(
        &conn,
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
    )
    .map_err(|e| format!("systemd's manager interface: {e}"))?;
    let props: Vec<(&str, Value)> = vec![
        ("Description", Value::from("hutch: nodes and their supervisor")),
        ("PIDs", Value::from(vec![pid.as_raw() as u32])),
        ("Delegate", Value::from(true)),
        // Gone once hutch and its helpers have exited, also when one of them failed.
        ("CollectMode", Value::from("inactive-or-failed")),
    ];
    let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
    let _job: zbus::zvariant::OwnedObjectPath = proxy
        .call("StartTransientUnit", &(unit, "fail", props, aux))
        .map_err(|e| format!("StartTransientUnit {unit}: {e}"))?;
    // A scope's start moves its pids; the job may finish after the reply.
    let deadline = Instant::now() + Duration::from_secs(5);
    let file = format!("/proc/{pid}/cgroup");
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("0::") && l.ends_with(unit)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("{unit} was started but hutch is not in it"))
}

fn connect(manager: Manager) -> Result<zbus::blocking::Connection, String> {
    match manager {
        Manager::System => zbus::blocking::Connection::system().map_err(|e| format!("the system bus: {e}")),
        Manager::User => {
            let uid = nix::unistd::Uid::effective();
            let dir = std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| format!("/run/user/{uid}"));
            let address = format!("unix:path={dir}/bus");
            if !std::path::Path::new(&dir).join("bus").exists() {
                return Err(format!("no user bus at {dir}/bus (no systemd user manager runs for uid {uid})"));
            }
            zbus::blocking::connection::Builder::address(address.as_str())
                .and_then(|b| b.build())
                .map_err(|e| format!("the user bus {address}: {e}"))
        }
    }
}
