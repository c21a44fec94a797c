# One command on each node (and a daemon on beta) and a ping from alpha to beta (see three_nodes.toml).
import os

start_all()
alpha.succeed("hostname | grep -qx alpha")
beta.succeed("ip -4 addr show eth1 | grep -q 192.168.1.2/24")
# A daemon that outlives its command: whatever ends the run must end it too.
beta.succeed("sleep 600 </dev/null >/dev/null 2>&1 &")
# tests/kill.rs sets HUTCH_HOLD to make a command last long enough to be killed during it.
gamma.succeed(f"sleep {os.environ.get('HUTCH_HOLD', '0')}; echo gamma-ok")
alpha.succeed("ping -c 1 -W 5 192.168.1.2")
