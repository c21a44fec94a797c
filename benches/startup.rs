//! Start-up latency of one node running /bin/true, hutch side by side with the kernel floor
//! (`unshare` of the same namespaces) and every peer runtime installed here (bwrap, runc, crun,
//! systemd-nspawn). Runs are paired: each round runs every contender once, in turn, so a
//! noisy moment hits them all. Prints medians, p95 and the ratio to the floor.
//!
//! `cargo bench --bench startup [-- ROUNDS]` (root: runc and nspawn need it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Contender {
    name: &'static str,
    cmd: Vec<String>,
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn busybox_image() -> PathBuf {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/busybox-image.sh"))
        .output()
        .expect("fixtures/busybox-image.sh");
    assert!(out.status.success(), "building the busybox image failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A runc bundle whose rootfs is the image and whose process is /bin/true.
fn runc_bundle(image: &Path) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hutch-bench-runc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let _ = std::fs::remove_file(dir.join("config.json"));
    Command::new("runc")
        .arg("spec")
        .current_dir(&dir)
        .status()
        .ok()?
        .success()
        .then_some(())?;
    let config = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config = config
        .replace("\"terminal\": true", "\"terminal\": false")
        .replace("\"sh\"", "\"/bin/true\"")
        .replace("\"path\": \"rootfs\"", &format!("\"path\": \"{}\"", image.display()));
    std::fs::write(dir.join("config.json"), config).ok()?;
    Some(dir)
}

fn time(cmd: &[String]) -> Option<Duration> {
    let start = Instant::now();
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let elapsed = start.elapsed();
    status.success().then_some(elapsed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100);
    let image = busybox_image();
    let img = image.display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut contenders = vec![
        Contender {
            name: "unshare (floor)",
            cmd: s(&[
                "unshare",
                "--user",
                "--map-root-user",
                "--pid",
                "--fork",
                "--mount",
                "--net",
                "--uts",
                "--ipc",
                "--mount-proc",
                "/bin/true",
            ]),
        },
        Contender {
            name: "hutch run",
            cmd: s(&[env!("CARGO_BIN_EXE_hutch"), "run", "--image", &img, "--", "/bin/true"]),
        },
    ];
    if installed("bwrap") {
        contenders.push(Contender {
            name: "bwrap",
            cmd: s(&[
                "bwrap",
                "--unshare-all",
                "--ro-bind",
                &img,
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "/bin/true",
            ]),
        });
    }
    let bundle = if installed("runc") && nix::unistd::Uid::effective().is_root() {
        runc_bundle(&image)
    } else {
        None
    };
    if let Some(b) = &bundle {
        let id = format!("hutch-bench-{}", std::process::id());
        contenders.push(Contender {
            name: "runc",
            cmd: s(&["runc", "run", "--bundle", &b.display().to_string(), &id]),
        });
    }
    if installed("crun") && nix::unistd::Uid::effective().is_root() {
        if let Some(b) = &bundle {
            let id = format!("hutch-bench-crun-{}", std::process::id());
            contenders.push(Contender {
                name: "crun",
                cmd: s(&["crun", "run", "--bundle", &b.display().to_string(), &id]),
            });
        }
    }
    if installed("systemd-nspawn") && nix::unistd::Uid::effective().is_root() {
        contenders.push(Contender {
            name: "systemd-nspawn",
            cmd: s(&["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", &img, "/bin/true"]),
        });
    }
    // Drop contenders that do not work on this host (e.g. crun on a hybrid cgroup layout).
    contenders.retain(|c| {
        let ok = time(&c.cmd).is_some();
        if !ok {
            eprintln!("skipping {}: `{}` fails on this host", c.name, c.cmd.join(" "));
        }
        ok
    });
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    for _ in 0..rounds {
        for (c, out) in contenders.iter().zip(samples.iter_mut()) {
            if let Some(d) = time(&c.cmd) {
                out.push(d);
            }
        }
    }
    let floor = {
        let mut f = samples[0].clone();
        f.sort();
        percentile(&f, 0.5)
    };
    println!("/bin/true in a new node, {rounds} paired rounds, wall time per start (ms)");
    println!("{:<18} {:>8} {:>8} {:>8} {:>9}", "runtime", "median", "p95", "min", "vs floor");
    for (c, mut d) in contenders.iter().zip(samples) {
        if d.is_empty() {
            continue;
        }
        d.sort();
        let med = percentile(&d, 0.5);
        let ms = |x: Duration| x.as_secs_f64() * 1e3;
        println!(
            "{:<18} {:>8.2} {:>8.2} {:>8.2} {:>8.2}x",
            c.name,
            ms(med),
            ms(percentile(&d, 0.95)),
            ms(d[0]),
            med.as_secs_f64() / floor.as_secs_f64()
        );
    }
    if let Some(b) = bundle {
        let _ = std::fs::remove_dir_all(b);
    }
}
