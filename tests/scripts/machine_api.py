# The NixOS driver's Machine API against real systemd nodes (run by tests/test_cmd.rs).
import datetime

start_all()
web.wait_for_unit("nginx.service")
web.wait_for_open_port(80)
peer.wait_for_unit("multi-user.target")

with subtest("execute, succeed and fail"):
    status, out = web.execute("echo out; echo err >&2; exit 3")
    t.assertEqual(status, 3)
    t.assertEqual(out, "out\n")
    t.assertEqual(web.succeed("hostname").strip(), "web")
    web.fail("false")
    t.assertIn("root", peer.succeed("id -un", "whoami"))

with subtest("systemd"):
    t.assertEqual(web.get_unit_info("nginx.service")["ActiveState"], "active")
    t.assertEqual(web.get_unit_property("nginx.service", "SubState"), "running")
    web.require_unit_state("nginx.service", "active")
    web.stop_job("nginx.service")
    web.wait_for_closed_port(80)
    web.start_job("nginx.service")
    web.wait_for_open_port(80, timeout=datetime.timedelta(seconds=30))
    status, _ = web.systemctl("is-active nginx.service")
    t.assertEqual(status, 0)

with subtest("files in and out"):
    web.copy_from_host(os.environ["HUTCH_TEST_FILE"], "/tmp/from-host")
    t.assertEqual(web.succeed("cat /tmp/from-host").strip(), "payload from the host")
    web.succeed("echo from the node > /tmp/to-host")
    copied = web.copy_from_machine("/tmp/to-host")
    log(f"copied to {copied}")
    peer.succeed("(sleep 0.3; touch /tmp/flag) &")
    peer.wait_for_file("/tmp/flag", timeout=10)

with subtest("the network by name"):
    peer.succeed("curl -sf --max-time 5 http://web/ | grep 'hutch-debian nginx'")
    peer.wait_until_succeeds("ping -c1 -W1 web", timeout=10)
    web.block()
    peer.wait_until_fails("curl -sf --max-time 1 http://web/", timeout=10)
    web.unblock()
    peer.wait_until_succeeds("curl -sf --max-time 1 http://web/", timeout=30)

with subtest("a command past its timeout is killed"):
    status, _ = web.execute("sleep 30", timeout=1)
    t.assertEqual(status, 124)

with subtest("shutdown, crash and start again"):
    peer.shutdown()
    t.assertFalse(peer.is_up())
    peer.start()
    peer.wait_for_unit("multi-user.target")
    peer.crash()
    t.assertFalse(peer.is_up())
    peer.start()
    peer.succeed("curl -sf --max-time 5 http://web/")
    peer.wait_for_console_text("Reached target.*Multi-User System")
