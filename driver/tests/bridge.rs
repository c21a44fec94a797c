//! The bridge for real: python3 runs small test scripts through the embedded module, the
//! driver serves them with the Machine API, and the "nodes" are real agents in local processes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{LocalNode, Scratch};
use hutch_driver::machine::NodeControl;
use hutch_driver::plan::{Format, PlanContext, TestPlan};
use hutch_driver::session::{Outcome, Report, Session, SessionOptions};

/// Run `script` as an inline testScript with these nodes; returns the report and scratch dir.
fn run_with(nodes: &[&str], script: &str, tweak: impl FnOnce(&mut SessionOptions)) -> (Report, Scratch) {
    let dir = Scratch::new("bridge");
    std::fs::create_dir_all(dir.0.join("img")).unwrap();
    let mut toml = format!("[test]\nname = \"bridge\"\ntimeout = 60\ntestScript = '''\n{script}'''\n[defaults]\nimage = \"img\"\n");
    for n in nodes {
        toml.push_str(&format!("[nodes.{n}]\n"));
    }
    let file = dir.0.join("t.toml");
    let ctx = PlanContext {
        cache_dir: dir.0.join("cache"),
    };
    let plan = TestPlan::parse(&toml, &file, Format::Toml, &ctx).unwrap();
    let controls: Vec<(String, Box<dyn NodeControl>)> = nodes
        .iter()
        .map(|n| (n.to_string(), Box::new(LocalNode::new()) as Box<dyn NodeControl>))
        .collect();
    let mut opts = SessionOptions::new(dir.0.join("out"));
    opts.quiet = true;
    opts.junit_xml = Some(dir.0.join("junit.xml"));
    tweak(&mut opts);
    let report = Session::new(&plan, controls, opts).unwrap().run();
    (report, dir)
}

fn run(script: &str) -> Report {
    run_with(&["machine"], script, |_| {}).0
}

fn passed(r: &Report) {
    match &r.outcome {
        Outcome::Failed(f) => panic!("the script failed: {}", f.details()),
        Outcome::SessionEnded => panic!("the script did not run"),
        Outcome::Passed => {}
    }
}

fn failure(r: &Report) -> &hutch_driver::session::Failure {
    match &r.outcome {
        Outcome::Failed(f) => f,
        Outcome::Passed | Outcome::SessionEnded => panic!("the script passed but should have failed"),
    }
}

#[test]
fn succeed_fail_and_execute() {
    let r = run(r#"
machine.start()
assert machine.is_up()
assert machine.succeed("echo hi") == "hi\n"
assert machine.succeed("echo a", "echo b") == "a\nb\n"
assert machine.fail("echo no; exit 3") == "no\n"
status, out = machine.execute("echo out; echo err >&2; exit 4")
assert (status, out) == (4, "out\n"), (status, out)
try:
    machine.succeed("echo boom; exit 7")
except RequestedAssertionFailed as e:
    assert "exit code 7" in str(e) and "boom" in str(e) and "machine" in str(e), str(e)
else:
    raise Exception("succeed did not raise")
try:
    machine.fail("true")
except AssertionError as e:
    assert "unexpectedly succeeded" in str(e), str(e)
status, _ = machine.execute("sleep 5", timeout=0.3)
assert status == 124, status
"#);
    passed(&r);
}

#[test]
fn waits_take_seconds_or_timedelta() {
    let r = run(r#"
import datetime, time
flag = "/tmp/hutch-bridge-flag-%d" % os.getpid()
machine.succeed(f"(sleep 0.3; touch {flag}) >/dev/null 2>&1 &")
machine.wait_until_succeeds(f"test -e {flag}", timeout=5)
machine.wait_for_file(flag, timeout=datetime.timedelta(seconds=5))
machine.succeed(f"(sleep 0.3; rm {flag}) >/dev/null 2>&1 &")
machine.wait_until_fails(f"test -e {flag}", timeout=datetime.timedelta(seconds=5))
t = time.monotonic()
try:
    machine.wait_until_succeeds("echo not yet; false", timeout=datetime.timedelta(seconds=1))
except Exception as e:
    assert "timed out after 1s" in str(e) and "not yet" in str(e), str(e)
else:
    raise Exception("no timeout")
took = time.monotonic() - t
assert 0.9 < took < 3, took
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
port = s.getsockname()[1]
machine.wait_for_open_port(port, timeout=5)
machine.wait_for_open_port(port, addr="127.0.0.1", timeout=5)
s.close()
machine.wait_for_closed_port(port, timeout=5)
machine.wait_for_console_text("Welcome to .* node", timeout=5)
assert "Welcome" in machine.get_console_log()
"#);
    passed(&r);
}

#[test]
fn a_python_exception_is_reported_with_its_line() {
    let r = run("machine.succeed('true')\n\nmachine.succeed('echo the output; false')\nmachine.succeed('true')\n");
    let f = failure(&r);
    assert_eq!(f.line, Some(3), "{}", f.details());
    assert_eq!(f.node.as_deref(), Some("machine"));
    let call = f.call.as_deref().unwrap();
    assert!(call.starts_with("machine.succeed(") && call.contains("echo the output"), "{call}");
    assert!(
        f.message.contains("exit code 1") && f.message.contains("the output"),
        "{}",
        f.message
    );
    assert_eq!(r.exit_code(), 1);
    let r = run("x = 1\nraise ValueError('bad value')\n");
    let f = failure(&r);
    assert_eq!(f.line, Some(2));
    assert!(f.message.contains("ValueError: bad value"), "{}", f.message);
    assert!(f.traceback.contains("line 2"));
    let r = run("x = (\n");
    assert!(failure(&r).message.contains("SyntaxError"));
}

#[test]
fn an_unknown_method_is_an_error_on_its_line() {
    let r = run("machine.succeed('true')\nmachine.frobnicate(3)\n");
    let f = failure(&r);
    assert_eq!(f.line, Some(2));
    assert!(
        f.message.contains("AttributeError") && f.message.contains("frobnicate"),
        "{}",
        f.message
    );
}

#[test]
fn screens_are_not_implemented() {
    let r = run(r#"
try:
    machine.screenshot("shot")
except NotImplementedError as e:
    assert "screenshot" in str(e) and "no screen" in str(e), str(e)
else:
    raise Exception("no NotImplementedError")
machine.send_keys("ctrl-alt-delete")
"#);
    let f = failure(&r);
    assert!(
        f.message.contains("NotImplementedError") && f.message.contains("send_keys"),
        "{}",
        f.message
    );
    assert_eq!(f.line, Some(8));
}

#[test]
fn lifecycle_copies_and_globals() {
    let (r, dir) = run_with(
        &["web-1", "db"],
        r#"
assert [m.name for m in machines] == ["db", "web-1"], machines
assert len(vlans) == 1 and vlans[0].nr == 1
start_all()
assert web_1.is_up() and db.is_up()
pid1 = db.succeed("echo $PPID")
db.shutdown()
assert not db.is_up()
db.start()
assert db.succeed("echo $PPID") != pid1
db.crash()
assert not db.is_up()
assert db.succeed("echo again") == "again\n"  # a command starts a stopped node
web_1.block(); web_1.unblock()
open("host.txt", "w").write("from the host\n")
web_1.copy_from_host("host.txt", f"/tmp/hutch-copy-{os.getpid()}/in/host.txt")
assert web_1.succeed(f"cat /tmp/hutch-copy-{os.getpid()}/in/host.txt") == "from the host\n"
path = web_1.copy_from_machine(f"/tmp/hutch-copy-{os.getpid()}/in", "got")
assert open(os.path.join(path, "host.txt")).read() == "from the host\n"
assert path.startswith(os.environ["out"]), path
web_1.succeed(f"rm -r /tmp/hutch-copy-{os.getpid()}")
t.assertEqual(1 + 1, 2)
with subtest("threads"):
    import threading
    outs = []
    ts = [threading.Thread(target=lambda: outs.append(db.succeed("sleep 0.3; echo x"))) for _ in range(5)]
    [x.start() for x in ts]
    [x.join() for x in ts]
    assert outs == ["x\n"] * 5
log.info("done")
"#,
        |_| {},
    );
    passed(&r);
    assert_eq!(r.nodes.iter().find(|n| n.name == "db").unwrap().boots.len(), 3);
    assert!(dir.0.join("out/got/in/host.txt").exists());
    assert!(dir.0.join("out/db.log").exists() && dir.0.join("out/log.txt").exists());
}

#[test]
fn junit_reads_back() {
    let (r, dir) = run_with(
        &["machine"],
        r#"
with subtest("first works"):
    machine.succeed("true")
with subtest("second <fails> & says so"):
    machine.succeed("echo '<oops>'; exit 2")
with subtest("third still runs"):
    machine.succeed("true")
"#,
        |o| o.keep_going = true,
    );
    assert_eq!(r.exit_code(), 1);
    assert_eq!(r.subtests.len(), 3);
    let xml = dir.0.join("junit.xml");
    let parsed = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, xml.etree.ElementTree as E\n\
             s = E.parse(sys.argv[1]).getroot().find('testsuite')\n\
             print(s.get('tests'), s.get('failures'))\n\
             for c in s.findall('testcase'):\n\
             \x20   f = c.find('failure')\n\
             \x20   print(c.get('name'), '|', f.get('message') if f is not None else 'ok')",
        )
        .arg(&xml)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&parsed.stdout);
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "4 2");
    assert_eq!(lines[1], "first works | ok");
    assert!(
        lines[2].starts_with("second <fails> & says so | RequestedAssertionFailed"),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains("<oops>"), "{}", lines[2]);
    assert_eq!(lines[3], "third still runs | ok");
    assert!(lines[4].starts_with("testScript | subtest"), "{}", lines[4]);
}

#[test]
fn the_whole_test_timeout_stops_everything() {
    let dir = Scratch::new("timeout");
    std::fs::create_dir_all(dir.0.join("img")).unwrap();
    let toml = "[test]\nname = \"slow\"\ntimeout = 1\ntestScript = \"machine.succeed('sleep 30')\"\n[nodes.machine]\nimage = \"img\"\n";
    let ctx = PlanContext { cache_dir: dir.0.clone() };
    let plan = TestPlan::parse(toml, &dir.0.join("t.toml"), Format::Toml, &ctx).unwrap();
    let mut opts = SessionOptions::new(dir.0.join("out"));
    opts.quiet = true;
    let t = Instant::now();
    let r = Session::new(&plan, vec![("machine".into(), Box::new(LocalNode::new()))], opts)
        .unwrap()
        .run();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(failure(&r).message.contains("whole-test timeout of 1s"), "{}", failure(&r).message);
    let log = std::fs::read_to_string(dir.0.join("out/log.txt")).unwrap();
    assert!(log.contains("aborting"), "{log}");
}

#[test]
fn rust_tests_use_the_same_machines() {
    let dir = Scratch::new("rust");
    std::fs::create_dir_all(dir.0.join("img")).unwrap();
    let toml = "[test]\nname = \"rust\"\ntestScript = \"\"\n[nodes.machine]\nimage = \"img\"\n";
    let ctx = PlanContext { cache_dir: dir.0.clone() };
    let plan = TestPlan::parse(toml, &dir.0.join("t.toml"), Format::Toml, &ctx).unwrap();
    let mut opts = SessionOptions::new(dir.0.join("out"));
    opts.quiet = true;
    let r = Session::new(&plan, vec![("machine".into(), Box::new(LocalNode::new()))], opts)
        .unwrap()
        .run_rust(|ms| {
            let m = &ms[0];
            assert_eq!(m.succeed("echo rust", None)?, "rust\n");
            let mut times = Vec::new();
            for _ in 0..50 {
                let t = Instant::now();
                m.succeed("true", None)?;
                times.push(t.elapsed());
            }
            times.sort();
            for _ in 0..5 {
                let t = Instant::now();
                let o = m.execute("true", None)?;
                eprintln!("execute {:?} agent-side {:?}", t.elapsed(), o.duration);
            }
            eprintln!("median succeed(\"true\") through the Machine API: {:?}", times[25]);
            m.fail("false", None)?;
            m.succeed("exit 5", None).map(|_| ())
        });
    let f = failure(&r);
    assert_eq!(f.node.as_deref(), Some("machine"));
    assert!(f.message.contains("`exit 5` failed (exit code 5)"), "{}", f.message);
    assert!(Path::new(&dir.0.join("out/machine.log")).exists());
}

#[test]
fn polling_conditions_retry_and_join_all() {
    let r = run(r#"
flag = f"/tmp/hutch-poll-{os.getpid()}"
machine.succeed(f"touch {flag}")

@polling_condition(seconds_interval=0)
def flag_exists():
    "the flag file exists"
    return machine.execute(f"test -e {flag}")[0] == 0

calls = []
retry(lambda last: calls.append(last) or len(calls) >= 3, timeout=5)
assert calls == [False, False, False], calls
with flag_exists:
    machine.succeed("true")
    machine.succeed(f"rm {flag}")
    try:
        machine.succeed("true")
    except Exception as e:
        assert "Polling condition failed: the flag file exists" in str(e), str(e)
    else:
        raise Exception("the polling condition did not fire")
machine.succeed("true")
# The node "powers off" by itself (its agent is killed from inside): calls say so, join_all waits.
try:
    machine.execute("kill -9 $PPID")
except Exception as e:
    assert "agent is gone" in str(e), str(e)
else:
    raise Exception("a dead agent went unnoticed")
join_all()
assert not machine.is_up()
"#);
    passed(&r);
}

#[test]
fn a_panicking_rust_test_still_stops_its_nodes() {
    let dir = Scratch::new("panic");
    std::fs::create_dir_all(dir.0.join("img")).unwrap();
    let toml = "[test]\nname = \"p\"\ntestScript = \"\"\n[nodes.machine]\nimage = \"img\"\n";
    let ctx = PlanContext { cache_dir: dir.0.clone() };
    let plan = TestPlan::parse(toml, &dir.0.join("t.toml"), Format::Toml, &ctx).unwrap();
    let mut opts = SessionOptions::new(dir.0.join("out"));
    opts.quiet = true;
    let session = Session::new(&plan, vec![("machine".into(), Box::new(LocalNode::new()))], opts).unwrap();
    let machine = std::sync::Arc::clone(&session.machines()[0]);
    let r = session.run_rust(|ms| {
        ms[0].start()?;
        assert!(ms[0].is_up());
        panic!("the test's own assertion");
    });
    assert!(failure(&r).message.contains("the test's own assertion"));
    assert!(!machine.is_up(), "the node outlived a panicking test");
}

/// A stand-in for systemctl (units are files holding their ActiveState), seen by the agent as
/// /usr/local/bin/systemctl through a private bind mount: systemd itself is tested by the
/// integration tests; this checks how the driver reads and waits on what systemctl says.
const SYSTEMCTL: &str = r#"#!/bin/sh
d=/usr/local/bin/units
[ "$1" = --no-pager ] && shift
case "$1" in
show)
  state=$(cat "$d/$2" 2>/dev/null || echo inactive)
  case "${3:-}" in
  --property=*) p=${3#--property=}; [ "$p" = ActiveState ] && echo "ActiveState=$state" || echo "$p=";;
  *) printf 'Id=%s\nActiveState=%s\nSubState=running\nDescription=a = b\n' "$2" "$state";;
  esac;;
list-jobs) if [ -e "$d/jobs" ]; then echo "1 late.service start waiting"; else echo "No jobs running."; fi;;
start) echo active > "$d/$2";;
stop) echo inactive > "$d/$2";;
*) echo "Unknown command verb $1." >&2; exit 1;;
esac
"#;

#[test]
fn units_are_waited_for_and_failures_are_fast() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the private bind mount needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let fake = Scratch::new("systemctl");
    std::fs::create_dir_all(fake.0.join("units")).unwrap();
    std::fs::write(fake.0.join("systemctl"), SYSTEMCTL).unwrap();
    std::fs::set_permissions(fake.0.join("systemctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = Scratch::new("units");
    std::fs::create_dir_all(dir.0.join("img")).unwrap();
    let toml = r#"[test]
name = "units"
testScript = '''
import time
u = "/usr/local/bin/units"
machine.succeed(f"echo failed > {u}/broken.service")
t0 = time.monotonic()
try:
    machine.wait_for_unit("broken.service", timeout=30)
except Exception as e:
    assert 'unit "broken.service" reached state "failed"' in str(e), str(e)
else:
    raise Exception("a failed unit was waited for")
try:
    machine.wait_for_unit("idle.service", timeout=30)
except Exception as e:
    assert "inactive and there are no pending jobs" in str(e), str(e)
else:
    raise Exception("an inactive unit without jobs was waited for")
assert time.monotonic() - t0 < 5, "failures were not fast"
machine.succeed(f"touch {u}/jobs; (sleep 0.5; echo active > {u}/late.service; rm {u}/jobs) >/dev/null 2>&1 &")
machine.wait_for_unit("late.service", timeout=10)
info = machine.get_unit_info("late.service")
assert info["ActiveState"] == "active" and info["Description"] == "a = b", info
assert machine.get_unit_property("late.service", "ActiveState") == "active"
machine.require_unit_state("late.service")
machine.stop_job("late.service")
try:
    machine.require_unit_state("late.service", "active")
except RequestedAssertionFailed as e:
    assert 'but it is in state "inactive"' in str(e), str(e)
machine.start_job("late.service")
machine.require_unit_state("late.service", "active")
status, _ = machine.systemctl("frobnicate")
assert status == 1, status
'''
[nodes.machine]
image = "img"
"#;
    let ctx = PlanContext { cache_dir: dir.0.clone() };
    let plan = TestPlan::parse(toml, &dir.0.join("t.toml"), Format::Toml, &ctx).unwrap();
    let mut node = LocalNode::new();
    let src = fake.0.clone();
    node.setup = Some(std::sync::Arc::new(move || common::bind_privately(&src, "/usr/local/bin")));
    let mut opts = SessionOptions::new(dir.0.join("out"));
    opts.quiet = true;
    let r = Session::new(&plan, vec![("machine".into(), Box::new(node))], opts).unwrap().run();
    passed(&r);
}

#[test]
fn the_whole_test_timeout_cuts_a_hanging_boot_short() {
    let dir = Scratch::new("hang");
    std::fs::create_dir_all(dir.0.join("img")).unwrap();
    let toml = "[test]\nname = \"hang\"\ntimeout = 1\ntestScript = \"start_all()\"\n[nodes.machine]\nimage = \"img\"\n";
    let ctx = PlanContext { cache_dir: dir.0.clone() };
    let plan = TestPlan::parse(toml, &dir.0.join("t.toml"), Format::Toml, &ctx).unwrap();
    let mut opts = SessionOptions::new(dir.0.join("out"));
    opts.quiet = true;
    let mut node = LocalNode::new();
    node.boot_delay = Duration::from_secs(60);
    let t = Instant::now();
    let r = Session::new(&plan, vec![("machine".into(), Box::new(node))], opts).unwrap().run();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(failure(&r).message.contains("whole-test timeout"), "{}", failure(&r).message);
}

#[test]
fn upstream_semantics_of_execute_retry_errors_and_strings() {
    let (r, dir) = run_with(
        &["machine"],
        r#"
import time
from test_driver.errors import RequestedAssertionFailed as Imported
assert Imported is RequestedAssertionFailed and issubclass(Imported, AssertionError)
assert isinstance(machine, NspawnMachine) and not isinstance(machine, QemuMachine)
assert machines_nspawn == [machine] and machines_qemu == []
flag = f"/tmp/hutch-bg-{os.getpid()}"
begin = time.monotonic()
assert machine.execute(f"sleep 1; touch {flag}", check_output=False) == (-2, "")
assert time.monotonic() - begin < 0.5, "check_output=False waited"
machine.wait_for_file(flag, timeout=10)
machine.succeed(f"rm {flag}")
assert machine.execute("echo x; exit 3", check_return=False) == (-1, "x\n")
assert machine.execute("exit 3") == (3, "")
assert isinstance(machine.pid, int) and machine.process.pid == machine.pid
machine.sleep("0.1")
machine.succeed("true", timeout="5")
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
machine.wait_for_open_port(str(s.getsockname()[1]), timeout="5")
s.close()
for check in [lambda: machine.wait_until_succeeds("false", timeout=0.5),
              lambda: t.assertEqual(1, 2),
              lambda: retry(lambda last: False, timeout_seconds=0.5)]:
    try:
        check()
    except RequestedAssertionFailed:
        pass
    else:
        raise Exception("no RequestedAssertionFailed")
try:
    machine.get_tty_text("1")
except NotImplementedError as e:
    assert "get_tty_text" in str(e) and "virtual terminals" in str(e), str(e)
else:
    raise Exception("get_tty_text was not refused")
try:
    machine.cleanup_statedir()
except Exception as e:
    assert "running" in str(e), str(e)
else:
    raise Exception("cleanup_statedir ran under a running node")
(machine.state_dir / "old").write_text("x")
machine.crash()
machine.cleanup_statedir()
assert machine.state_dir.is_dir() and not (machine.state_dir / "old").exists()
(machine.shared_dir / "note").write_text("shared")
assert machine.pid is None and machine.process is None
"#,
        |_| {},
    );
    passed(&r);
    assert!(dir.0.join("out/vm-state-machine").is_dir());
    assert_eq!(std::fs::read_to_string(dir.0.join("out/shared/note")).unwrap(), "shared");
}
