# Every entry of upstream's test driver API (nixpkgs nixos/lib/test-driver: BaseMachine,
# QemuMachine, NspawnMachine, Driver, the testScript globals), called on real Debian systemd
# nodes `server` and `client` on VLAN 1, each result checked. Run by tests/compat.rs.
import contextlib
import datetime
import io
import pathlib
import time

from test_driver.errors import RequestedAssertionFailed as ImportedAssertion
from test_driver.machine import BaseMachine as ImportedBase, retry as imported_retry

out = pathlib.Path(os.environ["out"])

with subtest("globals"):
    for name in ["start_all", "test_script", "run_tests", "machines_qemu", "machines_nspawn",
                 "vlans", "driver", "log", "os", "create_machine", "subtest", "join_all",
                 "retry", "serial_stdout_off", "serial_stdout_on", "polling_condition",
                 "BaseMachine", "QemuMachine", "NspawnMachine", "t", "debug",
                 "dump_machine_ssh", "vlan1", "machines", "server", "client"]:
        assert name in globals(), f"global {name} is missing"
    assert ImportedAssertion is RequestedAssertionFailed and ImportedBase is BaseMachine
    assert imported_retry is retry
    assert issubclass(RequestedAssertionFailed, AssertionError)
    assert machines_qemu == [] and [m.name for m in machines_nspawn] == ["client", "server"]
    assert isinstance(server, BaseMachine) and isinstance(server, NspawnMachine)
    assert not isinstance(server, QemuMachine)
    assert vlans == [vlan1] and vlan1.nr == 1
    vlan1.stop()
    assert vlan1.socket_dir is None and vlan1.logger is log
    debug.breakpoint()

with subtest("the driver object"):
    assert driver.machines == [client, server]
    assert driver.out_dir == out and out.is_dir()
    assert driver.global_timeout == 300 and isinstance(driver.global_timeout, int), driver.global_timeout
    assert driver.polling_conditions == []
    assert driver.test_symbols()["server"] is server
    assert "the driver object" in driver.tests
    assert driver.logger is log and driver.debug is debug
    with driver:
        pass  # a context manager, as upstream's (its exit releases the machines: none is up)
    driver.check_polling_conditions()
    with driver.subtest("nested subtest"):
        pass
    try:
        driver.race_timer.cancel()
    except NotImplementedError as e:
        assert "[test] timeout" in str(e), e
    else:
        raise Exception("race_timer.cancel() did not refuse")

with subtest("host directories before the nodes start"):
    for m in machines:
        assert m.out_dir == out
        assert m.state_dir == out / f"vm-state-{m.name}" and m.state_dir.is_dir()
        assert m.shared_dir == out / "shared" and m.shared_dir.is_dir()
        assert m.pid is None and m.process is None and not m.booted and not m.connected
        assert m.name in repr(m) and m.last_lines is None and m.start_command is None
    (server.shared_dir / "from-host").write_text("dropped by the script\n")

start_all()
server.connect()
server.wait_for_unit("nginx.service")
client.wait_for_unit("multi-user.target")

with subtest("pid, process"):
    pid = server.pid
    assert isinstance(pid, int) and pid > 1, pid
    assert server.get_systemd_process == pid
    # The node's init is PID 1 of a pid namespace of its own.
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert server.process.pid == pid and server.process.poll() is None
    assert server.booted and server.connected and client.pid != pid

with subtest("shared_dir is /tmp/shared in every node"):
    t.assertEqual(server.succeed("cat /tmp/shared/from-host"), "dropped by the script\n")
    client.succeed("echo written by client > /tmp/shared/from-client")
    t.assertEqual((client.shared_dir / "from-client").read_text(), "written by client\n")
    t.assertEqual(server.succeed("cat /tmp/shared/from-client"), "written by client\n")

with subtest("execute"):
    begin = time.monotonic()
    t.assertEqual(server.execute("sleep 2; echo later > /tmp/bg", check_output=False), (-2, ""))
    assert time.monotonic() - begin < 1.5, "check_output=False waited for the command"
    server.wait_for_file("/tmp/bg", timeout=30)
    t.assertEqual(server.execute("echo x; exit 3", check_return=False), (-1, "x\n"))
    t.assertEqual(server.execute("echo x; exit 3"), (3, "x\n"))
    t.assertEqual(server.execute("sleep 10", timeout=1), (124, ""))
    t.assertEqual(server.succeed("echo ok", timeout="5"), "ok\n")
    t.assertEqual(server.fail("false", timeout=datetime.timedelta(seconds=5)), "")

with subtest("numbers as strings, as upstream passes them to a shell"):
    server.wait_for_open_port("80")
    server.wait_for_open_port("80", "localhost", "10")
    server.wait_for_closed_port("81", timeout=10)
    begin = time.monotonic()
    server.sleep("1")
    assert time.monotonic() - begin >= 1
    server.wait_until_succeeds("true", timeout="10")
    client.wait_until_succeeds("curl -sf --max-time 2 http://server/ >/dev/null", timeout="30")

with subtest("failures are RequestedAssertionFailed"):
    checks = [
        lambda: server.succeed("exit 7"),
        lambda: server.fail("true"),
        lambda: server.wait_until_succeeds("false", timeout=1),
        lambda: server.wait_until_fails("true", timeout=1),
        lambda: server.wait_for_file("/nonexistent", timeout=1),
        lambda: server.require_unit_state("nginx.service", "inactive"),
        lambda: server.wait_for_unit("hutch-no-such.service", timeout=10),
        lambda: t.assertEqual(1, 2),
    ]
    for i, check in enumerate(checks):
        try:
            check()
        except RequestedAssertionFailed:
            pass
        else:
            raise Exception(f"check {i} did not raise RequestedAssertionFailed")

with subtest("retry"):
    calls = []
    begin = time.monotonic()
    try:
        retry(lambda last: calls.append(last), timeout_seconds=2)
    except RequestedAssertionFailed as e:
        assert "timed out" in str(e), e
    else:
        raise Exception("retry did not raise")
    took = time.monotonic() - begin
    # Once a second: calls at 0 s and 1 s (maybe 2 s), then the last try.
    assert calls[-1] is True and 2 <= len(calls) <= 4 and all(c is False for c in calls[:-1]), calls
    assert 2 <= took < 4.5, took
    calls = []
    retry(lambda last: calls.append(last) or len(calls) >= 2, timeout=10)
    t.assertEqual(calls, [False, False])

with subtest("systemd"):
    t.assertEqual(server.get_unit_info("nginx.service")["ActiveState"], "active")
    t.assertEqual(server.get_unit_property("nginx.service", "SubState"), "running")
    server.require_unit_state("nginx.service")
    t.assertEqual(server.systemctl("is-active nginx.service")[0], 0)
    t.assertEqual(server.stop_job("nginx.service")[0], 0)
    server.wait_for_closed_port(80)
    t.assertEqual(server.start_job("nginx.service")[0], 0)
    server.wait_for_open_port(80)
    server.succeed("test -S /run/systemd/private")
    server.wait_for_open_unix_socket("/run/systemd/private")

with subtest("the console"):
    server.execute("head -n1 /dev/console > /tmp/typed", check_output=False)
    server.wait_until_succeeds("pgrep -f 'head -n[1] /dev/console'", timeout=10)
    server.send_console("typed-by-hutch\n")
    server.wait_until_succeeds("grep -q typed-by-hutch /tmp/typed", timeout=10)
    server.wait_for_console_text("typed-by-hutch", timeout=10)  # the tty echoes it
    assert any("typed-by-hutch" in line for line in server.full_console_log)
    assert "Multi-User System" in server.get_console_log()
    server.log_serial("serial-line-from-the-script")
    log.log_serial("serial-line-from-log", server)

with subtest("log"):
    log.log("a message")
    log.info("info", "in", "parts")
    log.warning("warning")
    log.error("error")
    log.debug("debug")
    log.log_test_error("an error line")
    log.set_log_level(1)
    log("called")
    with log.nested("nested"):
        pass
    with log.subtest("a subtest through log"):
        pass
    log.print_serial_logs(False)
    serial_stdout_on()
    serial_stdout_off()
    server.log("a node message")
    with server.nested("a nested node message", {"k": "v"}):
        pass

with subtest("polling conditions and run_callbacks"):
    healthy = [True]

    @polling_condition(seconds_interval=0)
    def still_healthy():
        "the flag still holds"
        return healthy[0]

    with still_healthy:
        assert driver.polling_conditions == [still_healthy]
        server.run_callbacks()
        healthy[0] = False
        try:
            server.run_callbacks()
        except Exception as e:
            assert "the flag still holds" in str(e), e
        else:
            raise Exception("run_callbacks() did not check the polling condition")
        healthy[0] = True
        still_healthy.wait(timeout=5)
    assert server.callbacks == [driver.check_polling_conditions]

with subtest("files"):
    server.succeed("echo from the vm > /tmp/vmfile")
    server.copy_from_vm("/tmp/vmfile", "vmcopy")
    t.assertEqual((out / "vmcopy" / "vmfile").read_text(), "from the vm\n")
    server.copy_from_machine("/tmp/vmfile")
    t.assertEqual((out / "vmfile").read_text(), "from the vm\n")
    (out / "host-file").write_text("from the host\n")
    server.copy_from_host(str(out / "host-file"), "/root/in/host-file")
    server.copy_from_host_via_shell(str(out / "host-file"), "/root/via-shell")
    t.assertEqual(server.succeed("cat /root/in/host-file /root/via-shell"), "from the host\n" * 2)

with subtest("ssh_backdoor_command and dump_machine_ssh"):
    cmd = server.ssh_backdoor_command(1)
    assert f"--target {server.pid}" in cmd, cmd
    # The printed line gets a shell in the node (util-linux nsenter on the host).
    import shlex
    import subprocess
    line = cmd.split("  #")[0].replace("/bin/sh -l", "/bin/sh -c hostname")
    r = subprocess.run(shlex.split(line), capture_output=True, text=True)
    t.assertEqual((r.returncode, r.stdout), (0, "server\n"), r.stderr)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        dump_machine_ssh(0)
        driver.dump_machine_ssh(0)
    assert text.getvalue().count(f"--target {client.pid}") == 2, text.getvalue()

with subtest("the network"):
    client.block()
    server.wait_until_fails("ping -c1 -W1 client", timeout=10)
    client.unblock()
    server.wait_until_succeeds("ping -c1 -W1 client", timeout=30)

with subtest("forward_port: the node's web server from the host's loopback"):
    import socket
    import urllib.request
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    server.forward_port(host_port, "80")
    page = urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=10).read()
    assert b"nginx" in page, page

with subtest("what a container cannot do is refused by name"):
    refused = [
        ("screenshot", lambda: server.screenshot("shot")),
        ("get_screen_text", server.get_screen_text),
        ("get_screen_text_variants", server.get_screen_text_variants),
        ("wait_for_text", lambda: server.wait_for_text("x")),
        ("send_key", lambda: server.send_key("ctrl-alt-delete")),
        ("send_chars", lambda: server.send_chars("abc")),
        ("send_monitor_command", lambda: server.send_monitor_command("info")),
        ("wait_for_monitor_prompt", server.wait_for_monitor_prompt),
        ("wait_for_qmp_event", lambda: server.wait_for_qmp_event(lambda e: True)),
        ("get_tty_text", lambda: server.get_tty_text("1")),
        ("wait_until_tty_matches", lambda: server.wait_until_tty_matches("1", "login")),
        ("dump_tty_contents", lambda: server.dump_tty_contents("1")),
        ("wait_for_x", server.wait_for_x),
        ("get_window_names", server.get_window_names),
        ("wait_for_window", lambda: server.wait_for_window("xterm")),
        ("switch_root", server.switch_root),
        ("create_machine", lambda: create_machine("run-x-vm")),
        ("QemuMachine", lambda: QemuMachine()),
    ]
    for name, call in refused:
        try:
            call()
        except NotImplementedError as e:
            assert name in str(e) and "container" in str(e) or name == "create_machine", (name, e)
        else:
            raise Exception(f"{name} did not refuse")

with subtest("lifecycle: release, cleanup_statedir, background poweroff"):
    try:
        client.cleanup_statedir()
    except Exception as e:
        assert "running" in str(e), e
    else:
        raise Exception("cleanup_statedir() ran under a running node")
    t.assertEqual(client.execute("systemctl poweroff", check_output=False), (-2, ""))
    client.wait_for_shutdown()
    assert not client.is_up() and client.pid is None
    (client.state_dir / "leftover").write_text("x")
    client.cleanup_statedir()
    assert client.state_dir.is_dir() and list(client.state_dir.iterdir()) == []
    client.start()
    client.wait_for_unit("multi-user.target")
    client.release()
    assert not client.is_up()
    server.reboot()
    server.wait_for_unit("nginx.service")
    server.start(allow_reboot=True)  # already up: nothing to do
    t.assertEqual(server.succeed("systemctl is-system-running || true").strip(), "running")
    server.crash()
    assert not server.is_up() and server.process is None
    join_all()
