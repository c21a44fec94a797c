//! The driver's costs: the median `machine.succeed("true")` round trip (script → bridge →
//! agent → fork+exec → back), and the nginx example's wall time from `hutch test` to exit.
//!
//! `cargo bench --bench driver [-- RUNS]` (as root; the Debian image is built if missing).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let hutch = env!("CARGO_BIN_EXE_hutch");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let busybox = fixture("busybox-image.sh", &[]);
    let _ = fixture("debian-image.sh", &[]);
    let dir = std::env::temp_dir().join(format!("hutch-bench-driver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rt.toml");
    std::fs::write(
        &file,
        format!(
            "[test]\nname = \"round-trip\"\nscript = \"{}\"\n[nodes.machine]\nimage = \"{}\"\nboot = false\n",
            root.join("benches/scripts/round_trip.py").display(),
            busybox.display()
        ),
    )
    .unwrap();
    let out = Command::new(hutch)
        .args([
            "test",
            &file.display().to_string(),
            "--output-dir",
            &dir.join("out").display().to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("ROUND_TRIP"))
        .unwrap_or("ROUND_TRIP failed")
        .to_string();
    let mut walls = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let status = Command::new(hutch)
            .args([
                "test",
                &root.join("examples/nginx/test.toml").display().to_string(),
                "--output-dir",
                &dir.join("nginx").display().to_string(),
            ])
            .output()
            .unwrap()
            .status;
        if status.success() {
            walls.push(t.elapsed());
        } else {
            eprintln!("nginx example failed");
        }
    }
    walls.sort();
    println!("driver costs (release build)");
    println!(
        "{:<44} {}",
        "succeed(\"true\") round trip",
        line.trim_start_matches("ROUND_TRIP ").trim()
    );
    if !walls.is_empty() {
        println!(
            "{:<44} median {:.3} s, min {:.3} s, max {:.3} s ({} runs)",
            "examples/nginx: hutch test to exit",
            percentile(&walls, 0.5).as_secs_f64(),
            walls[0].as_secs_f64(),
            walls[walls.len() - 1].as_secs_f64(),
            walls.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
