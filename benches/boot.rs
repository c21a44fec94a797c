//! A systemd boot to multi-user.target and poweroff (Debian's systemd, the project's image),
//! hutch side by side with systemd-nspawn when it is installed, in paired rounds. Prints the
//! median and p95 wall time, the ratio to nspawn, and the memory peak per node (the runtime
//! and everything it started, measured in a memory cgroup of the harness's own).
//!
//! `cargo bench --bench boot [-- ROUNDS]` (as root).

mod common;

use common::*;

struct Contender {
    name: &'static str,
    cmd: Vec<String>,
    walls: Vec<std::time::Duration>,
    peaks: Vec<u64>,
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10);
    let image = fixture("debian-image.sh", &[]).display().to_string();
    let nixos = fixture("nixos-shaped.sh", &[]).display().to_string();
    let wants = "systemd.wants=hutch-poweroff.service";
    let hutch = env!("CARGO_BIN_EXE_hutch");
    let mut contenders = Vec::new();
    if installed("systemd-nspawn") {
        let cmd = argv(&[
            "systemd-nspawn",
            "-q",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "-D",
            &image,
            "-b",
            wants,
        ]);
        contenders.push(Contender {
            name: "systemd-nspawn",
            cmd,
            walls: vec![],
            peaks: vec![],
        });
    }
    contenders.push(Contender {
        name: "hutch --image",
        cmd: argv(&[hutch, "run", "--image", &image, "--boot", "--", wants]),
        walls: vec![],
        peaks: vec![],
    });
    contenders.push(Contender {
        name: "hutch --toplevel",
        cmd: argv(&[hutch, "run", "--toplevel", &nixos, "--closure-only", "--boot", "--", wants]),
        walls: vec![],
        peaks: vec![],
    });
    for _ in 0..rounds {
        for c in contenders.iter_mut() {
            match measure(&c.cmd) {
                Some(s) => {
                    c.walls.push(s.wall);
                    c.peaks.extend(s.peak);
                }
                None => eprintln!("{}: a run failed: {}", c.name, c.cmd.join(" ")),
            }
        }
    }
    let nspawn_median = contenders.iter().find(|c| c.name == "systemd-nspawn").and_then(|c| {
        let mut w = c.walls.clone();
        w.sort();
        (!w.is_empty()).then(|| percentile(&w, 0.5))
    });
    println!("systemd boot to multi-user.target and poweroff, {rounds} paired rounds");
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>14}",
        "runtime", "median s", "p95 s", "vs nspawn", "peak MiB/node"
    );
    for c in &mut contenders {
        if c.walls.is_empty() {
            continue;
        }
        c.walls.sort();
        c.peaks.sort();
        let med = percentile(&c.walls, 0.5);
        let ratio = nspawn_median
            .map(|n| format!("{:.2}x", med.as_secs_f64() / n.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        let peak = if c.peaks.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", percentile(&c.peaks, 0.5) as f64 / (1 << 20) as f64)
        };
        println!(
            "{:<18} {:>10.3} {:>10.3} {:>10} {:>14}",
            c.name,
            med.as_secs_f64(),
            percentile(&c.walls, 0.95).as_secs_f64(),
            ratio,
            peak
        );
    }
}
