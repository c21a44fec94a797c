//! Kill: SIGKILL of `hutch test` (the 3-node test, tests/scripts/three_nodes.toml) at random
//! moments, 20 times, as root and as `nobody`: during boot, during a command, during teardown.
//! Within 2 s of the kill nothing of the run may remain (processes, mounts, network namespaces,
//! links, cgroups), and the next run must start cleanly and pass.
//!
//! The moments come from a fixed seed, printed, so a failure can be replayed:
//! `HUTCH_KILL_SEED=<seed> cargo test --test kill -- --nocapture`.

mod common;

use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const NOBODY: u32 = 65534;
const KILLS: usize = 20;
const DEFAULT_SEED: u64 = 0x6875_7463_6821;
/// The promise: within 2 s of the kill nothing of the run remains.
const CLEAN_WITHIN: Duration = Duration::from_secs(2);

/// xorshift64*: enough randomness for kill moments, no dependency, same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Where in the run the kill lands: after the log line that opens the phase, plus a delay.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Boot,
    Command,
    Teardown,
}

impl Phase {
    fn marker(self) -> &'static str {
        match self {
            Phase::Boot => "starting all nodes",
            Phase::Command => "gamma: must succeed: sleep",
            Phase::Teardown => "stopping all nodes",
        }
    }

    /// The longest delay after the marker that still lands inside the phase (boot ~50 ms,
    /// gamma's command sleeps HOLD, teardown ~30 ms).
    fn max_delay_ms(self) -> u64 {
        match self {
            Phase::Boot => 40,
            Phase::Command => 900,
            Phase::Teardown => 8,
        }
    }
}

/// gamma's command sleeps this long (seconds), so "during a command" is a wide target.
const HOLD: &str = "1";

/// Starts the test as `user`; lines of its output arrive on the channel.
fn start(user: Option<u32>, file: &str, out: &str, hold: &str) -> (ChildGuard, mpsc::Receiver<String>) {
    let mut child = ChildGuard::new(
        hutch_command(user, &["test", file, "--output-dir", out])
            .env("HUTCH_HOLD", hold)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning hutch"),
    );
    let (tx, rx) = mpsc::channel();
    let pipes: Vec<Box<dyn std::io::Read + Send>> = vec![
        Box::new(child.child().stdout.take().unwrap()),
        Box::new(child.child().stderr.take().unwrap()),
    ];
    for pipe in pipes {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    (child, rx)
}

#[test]
fn sigkill_at_random_moments_leaves_nothing_and_the_next_run_passes() {
    if skip_unless_root("kill") {
        return;
    }
    let seed = std::env::var("HUTCH_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!("kill: seed {seed} (replay with HUTCH_KILL_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let dir = Scratch::new("kill");
    let files: Vec<(Option<u32>, String, String)> = [None, Some(NOBODY)]
        .iter()
        .map(|user| {
            let d = dir.0.join(format!("{user:?}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
            let file = three_nodes_test(&d, *user, None).display().to_string();
            (*user, file, d.join("out").display().to_string())
        })
        .collect();
    // One passing run per user first: hutch's cgroup parents exist from then on.
    for (user, file, out) in &files {
        let (child, _rx) = start(*user, file, out, "0");
        assert!(child.output().status.success(), "the warm-up run as {user:?} failed");
    }
    let before = Census::settled_after(&Census::take(), Duration::from_secs(5));
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    let mut ended_first = 0;
    for i in 0..KILLS {
        let phase = [Phase::Boot, Phase::Command, Phase::Teardown][i % 3];
        let (user, file, out) = &files[(i / 3) % 2];
        let delay = Duration::from_millis(rng.below(phase.max_delay_ms() + 1));
        let (mut child, rx) = start(*user, file, out, HOLD);
        let pid = child.id();
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        // Wait for the phase's marker line, then the random delay, then SIGKILL by pid.
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let hit = line.contains(phase.marker());
                    seen.push_str(&line);
                    seen.push('\n');
                    if hit {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => panic!("kill {i}: no {:?} line from hutch:\n{seen}", phase.marker()),
            }
        }
        std::thread::sleep(delay);
        let ran_out = child.child().try_wait().ok().flatten().is_some();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        let killed_at = Instant::now();
        let status = child.output().status;
        if ran_out {
            ended_first += 1;
        }
        let took = Census::settle(&before, CLEAN_WITHIN.saturating_sub(killed_at.elapsed())) - killed_at;
        let after = Census::take();
        worst = worst.max(took);
        println!(
            "kill {i:>2}: as {:<6} {phase:?} +{:>3} ms: {status}; host clean after {:.0} ms",
            user.map(|u| u.to_string()).unwrap_or_else(|| "root".into()),
            delay.as_millis(),
            took.as_secs_f64() * 1e3
        );
        let grew = after.growth(&before);
        assert!(
            grew.is_empty() && took <= CLEAN_WITHIN + Duration::from_millis(200),
            "kill {i} ({phase:?} +{delay:?}, seed {seed}): after {took:?} still left: {grew:?}\n\
             hutch processes: {:?}\ncgroups: {:?}\nbefore:\n{}",
            hutch_processes(),
            test_cgroups(),
            Census::table(&before, &after)
        );
        // The next run starts cleanly and passes.
        let (next, _rx) = start(*user, file, out, "0");
        let o = next.output();
        assert!(
            o.status.success(),
            "the run after kill {i} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    println!(
        "kill: {KILLS} kills in {:.1}s, host clean at most {:.0} ms after a kill ({ended_first} runs had ended before their kill)",
        t0.elapsed().as_secs_f64(),
        worst.as_secs_f64() * 1e3
    );
}
