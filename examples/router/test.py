start_all()
for m in (client, router, server):
    m.wait_for_unit("multi-user.target")

with subtest("the LANs are apart until the router joins them"):
    server.wait_for_unit("nginx.service")
    client.fail("curl -sf --max-time 1 http://server/")
    router.succeed("sysctl -w net.ipv4.ip_forward=1")
    client.succeed("ip route add 192.168.2.0/24 via 192.168.1.2")
    server.succeed("ip route add 192.168.1.0/24 via 192.168.2.2")
    client.succeed("curl -sf --max-time 5 http://server/ | grep 'hutch-debian nginx'")

with subtest("block cuts the router's cables, unblock restores them"):
    router.block()
    client.fail("curl -sf --max-time 2 http://192.168.2.3/")
    router.unblock()
    client.wait_until_succeeds("curl -sf --max-time 2 http://192.168.2.3/", timeout=30)
