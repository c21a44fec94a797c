//! Bounded, seeded random mutation of hutch's two untrusted-input decoders, on the stable
//! toolchain (CI has no nightly for cargo-fuzz; fuzz/ holds the libFuzzer targets for it):
//! test files (TOML and JSON) through `TestPlan::parse`, and agent frames through `read_frame`,
//! the `Envelope<AgentRequest>`/`Envelope<AgentReply>` decoding, and a live `AgentClient` fed
//! mutated replies. The assertion: no panic, and the client answers within its limit.
//!
//! Budget: HUTCH_FUZZ_SECS seconds per target (default 2); seed: HUTCH_FUZZ_SEED (default fixed,
//! so a failure reproduces; the seed is printed).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant};

use hutch_driver::agent::{
    read_frame, AgentClient, AgentReply, AgentRequest, Command, EntryKind, Envelope, ExitStatus, RunRequest, RunResult, Stream, TreeEntry,
};
use hutch_driver::plan::{Format, PlanContext, TestPlan};

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn budget() -> Duration {
    let secs = std::env::var("HUTCH_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn rng(target: &str) -> Rng {
    let seed = std::env::var("HUTCH_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6875_7463_6821_u64);
    eprintln!("{target}: seed {seed} (HUTCH_FUZZ_SEED), {:?} (HUTCH_FUZZ_SECS)", budget());
    Rng(seed ^ target.len() as u64 | 1)
}

/// Tokens that make mutations reach deeper than random bytes do.
const DICT: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "\"",
    "'",
    "'''",
    "=",
    ",",
    ".",
    ":",
    "\n",
    "-",
    "0",
    "256",
    "-1",
    "1e999",
    "18446744073709551616",
    "\\u0000",
    "\\",
    "[nodes.",
    "[defaults]",
    "[test]",
    "vlans = [",
    "memory = ",
    "\"-5M\"",
    "pids_max",
    "image",
    "toplevel",
    "store",
    "files",
    "env",
    "boot = ",
    "true",
    "null",
    "hostname",
    "testScript",
    "script",
    "name",
    "timeout",
    "..",
    "/",
    "\"op\":",
    "\"id\":",
    "\"run\"",
    "\"shell\"",
    "\"argv\"",
    "\"stdin\"",
    "\"data\"",
    "\"entries\"",
    "\"kind\"",
    "\"ran\"",
    "\"status\"",
    "\"signal\"",
    "==",
    "@@",
];

fn mutate(r: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..1 + r.below(4) {
        let len = input.len();
        match r.below(7) {
            0 if len > 0 => {
                let i = r.below(len);
                input[i] ^= 1 << r.below(8);
            }
            1 => {
                let i = r.below(len + 1);
                input.insert(i, r.next() as u8);
            }
            2 if len > 0 => {
                let a = r.below(len);
                let b = (a + 1 + r.below(16)).min(len);
                input.drain(a..b);
            }
            3 if len > 0 => {
                let a = r.below(len);
                let b = (a + 1 + r.below(32)).min(len);
                let chunk = input[a..b].to_vec();
                let at = r.below(len + 1);
                input.splice(at..at, chunk);
            }
            4 => {
                let t = DICT[r.below(DICT.len())].as_bytes();
                let at = r.below(len + 1);
                input.splice(at..at, t.iter().copied());
            }
            5 => {
                let other = &seeds[r.below(seeds.len())];
                let cut = r.below(len + 1);
                let from = r.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let i = r.below(len);
                input[i] = b"0123456789-.[]{}\"'=\n"[r.below(19)];
            }
            _ => input.push(b'x'),
        }
    }
    input.truncate(64 << 10);
}

/// Runs `f` on mutated inputs until the budget is spent; returns how many ran.
fn fuzz(target: &str, seeds: &[Vec<u8>], mut f: impl FnMut(&[u8])) -> u64 {
    let mut r = rng(target);
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    for s in seeds {
        f(s);
    }
    while Instant::now() < deadline {
        let mut input = seeds[r.below(seeds.len())].clone();
        mutate(&mut r, &mut input, seeds);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&input)));
        assert!(caught.is_ok(), "{target}: panic on input {:?}", String::from_utf8_lossy(&input));
        runs += 1;
    }
    eprintln!("{target}: {runs} mutated inputs, no panic");
    assert!(runs > 100, "{target}: the budget allowed only {runs} runs");
    runs
}

#[test]
fn mutated_test_files_never_panic_the_parser() {
    let dir = std::env::temp_dir().join(format!("hutch-fuzz-plan-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    std::fs::write(dir.join("test.py"), "start_all()\n").unwrap();
    let nginx = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nginx/test.toml")).unwrap();
    let toml_seed = "[test]\nname = \"t\"\nscript = \"test.py\"\ntimeout = 60\n[defaults]\nimage = \"rootfs\"\nvlans = [1, 2]\nmemory = \"512M\"\n\
        [nodes.server]\nfiles = { \"/etc/motd\" = \"test.py\" }\nenv = { A = \"b\" }\nhostname = \"web-1\"\npids_max = 100\n[nodes.client-1]\nboot = false\n";
    let json_seed = "{\"test\": {\"name\": \"t\", \"testScript\": \"start_all()\"}, \"defaults\": {\"image\": \"rootfs\"}, \
        \"nodes\": {\"a\": {\"vlans\": [1]}, \"b\": {\"toplevel\": \"/nix/store/x-system\", \"store\": \"rootfs\", \"closure_only\": true}}}";
    let seeds = vec![nginx, toml_seed.as_bytes().to_vec(), json_seed.as_bytes().to_vec()];
    let ctx = PlanContext {
        cache_dir: dir.join("cache"),
    };
    let (toml_path, json_path) = (dir.join("t.toml"), dir.join("t.json"));
    assert!(
        TestPlan::parse(toml_seed, &toml_path, Format::Toml, &ctx).is_ok(),
        "the TOML seed is valid"
    );
    fuzz("test-file", &seeds, |input| {
        let text = String::from_utf8_lossy(input);
        let _ = TestPlan::parse(&text, &toml_path, Format::Toml, &ctx);
        let _ = TestPlan::parse(&text, &json_path, Format::Json, &ctx);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn frame(json: &[u8]) -> Vec<u8> {
    let mut f = (json.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(json);
    f
}

fn sample_requests() -> Vec<Vec<u8>> {
    let run = RunRequest {
        command: Command::Shell("echo hi".into()),
        env: BTreeMap::from([("A".into(), "b".into())]),
        stdin: b"input".to_vec(),
        timeout_ms: Some(5),
        cwd: Some("/tmp".into()),
    };
    let tree = vec![
        TreeEntry {
            path: String::new(),
            mode: 0o755,
            kind: EntryKind::Dir,
        },
        TreeEntry {
            path: "f".into(),
            mode: 0o644,
            kind: EntryKind::File { data: b"data".to_vec() },
        },
        TreeEntry {
            path: "l".into(),
            mode: 0o777,
            kind: EntryKind::Symlink { target: "f".into() },
        },
    ];
    let bodies = vec![
        AgentRequest::Ping,
        AgentRequest::Run(run),
        AgentRequest::RunStreamed(RunRequest {
            command: Command::Argv(vec!["true".into()]),
            env: BTreeMap::new(),
            stdin: Vec::new(),
            timeout_ms: None,
            cwd: None,
        }),
        AgentRequest::ReadFile { path: "/etc/hosts".into() },
        AgentRequest::WriteFile {
            path: "/x".into(),
            data: vec![0, 1, 2],
            mode: Some(0o600),
            make_parents: true,
        },
        AgentRequest::ReadTree { path: "/etc".into() },
        AgentRequest::WriteTree {
            path: "/t".into(),
            entries: tree,
        },
        AgentRequest::ProbeTcp {
            host: "localhost".into(),
            port: 80,
        },
        AgentRequest::ProbeUnix {
            path: "/run/x".into(),
            datagram: false,
        },
        AgentRequest::PtyOpen {
            command: Vec::new(),
            term: "xterm".into(),
            rows: 24,
            cols: 80,
        },
        AgentRequest::PtyInput {
            session: 1,
            data: b"ls\r".to_vec(),
        },
        AgentRequest::PtyOutput { session: 1 },
        AgentRequest::PtyResize {
            session: 1,
            rows: 40,
            cols: 120,
        },
        AgentRequest::PtyClose { session: 1 },
        AgentRequest::Cancel { request: 2 },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| serde_json::to_vec(&Envelope { id: i as u64, body }).unwrap())
        .collect()
}

fn sample_replies() -> Vec<Vec<u8>> {
    let ran = RunResult {
        status: ExitStatus::Signal(9),
        stdout: b"out".to_vec(),
        stderr: b"err".to_vec(),
        stdout_dropped: 1,
        stderr_dropped: 0,
        timed_out: true,
        output_left_open: false,
        micros: 42,
    };
    let bodies = vec![
        AgentReply::Pong {
            pid: 2,
            version: "0.1.0".into(),
        },
        AgentReply::Ran(ran),
        AgentReply::Output {
            stream: Stream::Stderr,
            data: b"\x1b]0;title\x07".to_vec(),
        },
        AgentReply::File { data: b"file".to_vec() },
        AgentReply::Tree {
            entries: vec![TreeEntry {
                path: String::new(),
                mode: 0o700,
                kind: EntryKind::Dir,
            }],
        },
        AgentReply::Done,
        AgentReply::Probe {
            open: true,
            unresolved: false,
        },
        AgentReply::PtyOpened { session: 1 },
        AgentReply::PtyOutput {
            data: b"\x1b[1mroot@node\x1b[0m# ".to_vec(),
            ended: Some(ExitStatus::Code(3)),
        },
        AgentReply::Error { message: "no".into() },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| serde_json::to_vec(&Envelope { id: i as u64 + 1, body }).unwrap())
        .collect()
}

/// Decodes every frame of a byte stream the way both ends do, until the end or an error.
fn decode_stream(bytes: &[u8]) {
    let mut c = Cursor::new(bytes);
    while let Ok(Some(f)) = read_frame(&mut c) {
        let _ = serde_json::from_slice::<Envelope<AgentRequest>>(&f);
        let _ = serde_json::from_slice::<Envelope<AgentReply>>(&f);
    }
}

#[test]
fn mutated_agent_frames_never_panic_the_decoder() {
    let mut seeds: Vec<Vec<u8>> = sample_requests().into_iter().chain(sample_replies()).collect();
    let mut r = Rng(7);
    // Mutate the JSON and frame it with its true length (reaches the decoder), or mutate the
    // framed bytes themselves (reaches the length prefix), half each.
    let framed: Vec<Vec<u8>> = seeds.iter().map(|s| frame(s)).collect();
    seeds.extend(framed);
    fuzz("agent-frame", &seeds, |input| {
        if r.below(2) == 0 {
            decode_stream(&frame(input));
        } else {
            decode_stream(input);
        }
    });
}

#[test]
fn an_agent_client_fed_mutated_replies_answers_within_its_limit() {
    let seeds = sample_replies();
    let mut r = rng("agent-client");
    let deadline = Instant::now() + budget();
    let mut runs = 0;
    while Instant::now() < deadline && runs < 2000 {
        let mut reply = seeds[r.below(seeds.len())].clone();
        mutate(&mut r, &mut reply, &seeds);
        let raw = r.below(4) == 0;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let client = AgentClient::new(a).unwrap();
        // A fake agent: reads the request, answers with the mutated reply, then closes.
        let agent = std::thread::spawn(move || {
            let mut b = b;
            let _ = read_frame(&mut b);
            let bytes = if raw { reply } else { frame(&reply) };
            let _ = std::io::Write::write_all(&mut b, &bytes);
        });
        let t = Instant::now();
        let limit = Duration::from_millis(500);
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.ping(limit)));
        assert!(answer.is_ok(), "the client panicked");
        assert!(t.elapsed() < limit + Duration::from_millis(500), "the client hung past its limit");
        agent.join().unwrap();
        drop(client);
        runs += 1;
    }
    eprintln!("agent-client: {runs} mutated replies, no panic, no hang");
    assert!(runs > 20);
}
