#!/bin/bash
# The VM lane's checks, inside the guest (vmlane.service, as root): hutch as root, as alice
# from a login session (runuser -l: a session scope she does not own), as alice inside her
# manager's delegated scope (systemd-run --user --scope -p Delegate=yes), as bob with no
# session and no manager. One row per check in /results/table.txt: case|who|result|seconds|detail.
set -u
R=/results
exec > >(tee -a $R/log.txt) 2>&1
H=/opt/hutch/hutch
C=/var/cache/hutch
export HUTCH_CACHE=$C
MODE=$(cat /opt/vmlane/mode 2>/dev/null || echo full)
T=$R/table.txt
mkdir -p /tmp/c && chmod 1777 /tmp/c
cd /tmp

# as WHO LABEL CMD: runs CMD (bash) as root, alice's login session, alice's scope or bob;
# its output in $R/LABEL.out; returns its status.
as() {
    local who=$1 label=$2 cmd=$3 tmo=${TMO:-600}
    printf 'export HUTCH_CACHE=%s\n%s\n' "$C" "$cmd" >/tmp/c/$label.sh
    chmod 644 /tmp/c/$label.sh
    echo "=== [$label] as $who: $cmd"
    case $who in
        root) timeout -k 10 "$tmo" bash /tmp/c/$label.sh ;;
        login) timeout -k 10 "$tmo" runuser -l alice -c "bash /tmp/c/$label.sh" ;;
        scope) timeout -k 10 "$tmo" runuser -l alice -c "systemd-run --user --scope -q -p Delegate=yes -- bash /tmp/c/$label.sh" ;;
        nosession) timeout -k 10 "$tmo" setpriv --reuid=1001 --regid=1001 --init-groups env -i HOME=/home/bob PATH=/usr/bin:/bin bash /tmp/c/$label.sh ;;
    esac </dev/null >$R/$label.out 2>&1
    local rc=$?
    sed 's/^/    /' $R/$label.out | tail -40
    echo "=== [$label] rc=$rc"
    return $rc
}

# row CASE WHO OK DETAIL SECONDS
row() {
    local result=PASS
    [ "$3" = 1 ] || result=FAIL
    echo "$1|$2|$result|$5 s|$4" >>$T
}

# check CASE WHO CMD EXPECT: passes when CMD exits 0 and its output matches EXPECT (grep -E).
check() {
    local case=$1 who=$2 cmd=$3 expect=$4 label t0=$SECONDS ok=0
    label=$(printf '%s-%s' "$1" "$2" | tr -c 'a-zA-Z0-9-' '_')
    as "$who" "$label" "$cmd" && grep -qE -- "$expect" $R/$label.out && ok=1
    row "$case" "$who" $ok "$(grep -E -- "$expect" $R/$label.out | head -1 | cut -c1-60)" $((SECONDS - t0))
}

# oom CASE WHO IMAGE: a node with 64M that allocates 300 MB is killed, not survived.
oom() {
    local who=$1 img=$2 label=oom-$1 t0=$SECONDS ok=0
    as "$who" "$label" "$H run --name oom --memory 64M --image $img -- /bin/sh -c 'head -c 300000000 /dev/zero | tail >/dev/null; echo survived'"
    local rc=$?
    [ $rc = 137 ] && ! grep -q survived $R/$label.out && ok=1
    row "64M node allocates 300 MB: killed" "$who" $ok "rc=$rc" $((SECONDS - t0))
}

bb() { [ "$1" = root ] && echo $C/images/busybox || echo $C/images/busybox@$2; }
deb() { [ "$1" = root ] && echo $C/images/debian || echo $C/images/debian@$2; }
overlay='rm -rf /etc && mkdir /etc && ls -A /etc | wc -l && mv /usr /usr2 && ls /usr2/bin >/dev/null && echo overlay-ok'
place='cat /proc/self/cgroup; sleep 2'

: >$T
echo "environment|root|PASS|0 s|$(uname -r), systemd $(systemctl --version | head -1 | cut -d" " -f2), $(stat -f -c %T /sys/fs/cgroup)" >>$T

check "busybox command" root "$H run --image $(bb root) -- /bin/echo hello" '^hello$'
check "rm -rf /etc, mv /usr /usr2" root "$H run --image $(bb root) -- /bin/sh -c '$overlay'" 'overlay-ok'
oom root "$(bb root)"
check "Debian boots, powers off" root "$H run --boot --name deb --image $(deb root) -- systemd.wants=hutch-poweroff.service" 'hutch-report: multi-user reached'
if [ "$MODE" = full ]; then
    # Where the cgroups are: hutch in hutch-PID.scope/supervisor, the node a sibling.
    check "scope: supervisor + sibling node" root "$H run --name place --memory 64M --image $(bb root) -- /bin/sh -c 'cat /sys/fs/cgroup/memory.max; sleep 3' & sleep 2; find /sys/fs/cgroup/system.slice -maxdepth 2 -path '*hutch-*.scope/*' -type d; wait" 'hutch-[0-9]+\.scope/place-'
    check "--memory 64M seen in the node" root "$H run --memory 64M --image $(bb root) -- /bin/cat /sys/fs/cgroup/memory.max" '^67108864$'
    check "default pids limit (no --pids-max)" root "$H run --memory 64M --image $(bb root) -- /bin/cat /sys/fs/cgroup/pids.max" '^4096$'
    check "OOM in a test: node reported crashed" root "$H test /opt/vmlane/oom.toml --output-dir /tmp/oom-root" 'OOM-SEEN .*crashed: out of memory'
    check "nginx example (memory = 512M)" root "$H test /opt/hutch/examples/nginx/test.toml --output-dir /tmp/nginx-root" 'test "nginx" passed'
fi
check "rm -rf /etc, mv /usr /usr2" login "$H run --image $(bb login 1000) -- /bin/sh -c '$overlay'" 'overlay-ok'
oom login "$(bb login 1000)"
if [ "$MODE" = full ]; then
    check "busybox command" login "$H run --image $(bb login 1000) -- /bin/echo hello" '^hello$'
    check "--memory 64M seen in the node" login "$H run --memory 64M --image $(bb login 1000) -- /bin/cat /sys/fs/cgroup/memory.max" '^67108864$'
    check "default pids limit (no --pids-max)" login "$H run --memory 64M --image $(bb login 1000) -- /bin/cat /sys/fs/cgroup/pids.max" '^4096$'
    check "--pids-max 20 seen in the node" login "$H run --pids-max 20 --image $(bb login 1000) -- /bin/cat /sys/fs/cgroup/pids.max" '^20$'
    check "Debian boots, powers off" login "$H run --boot --name deb --image $(deb login 1000) -- systemd.wants=hutch-poweroff.service" 'hutch-report: multi-user reached'
    check "OOM in a test: node reported crashed" login "cd /tmp && $H test /opt/vmlane/oom.toml --output-dir /tmp/oom-alice" 'OOM-SEEN .*crashed: out of memory'
    check "nginx example (memory = 512M)" login "cd /tmp && $H test /opt/hutch/examples/nginx/test.toml --output-dir /tmp/nginx-alice" 'test "nginx" passed'
    check "busybox command" scope "$H run --image $(bb scope 1000) -- /bin/echo hello" '^hello$'
    oom scope "$(bb scope 1000)"
    check "Debian boots, powers off" scope "$H run --boot --name deb --image $(deb scope 1000) -- systemd.wants=hutch-poweroff.service" 'hutch-report: multi-user reached'
    check "no session: works, warns once" nosession "$H run --memory 64M --image $(bb nosession 1001) -- /bin/echo hello 2>&1; [ \$($H run --memory 64M --image $(bb nosession 1001) -- /bin/true 2>&1 | grep -c 'enable-linger') = 1 ] && echo warned-once" 'warned-once'
fi
# Nothing left: no hutch scope, no node cgroup, no hutch process (the reapers have had time).
sleep 3
left=$( (systemctl list-units --all --no-legend 'hutch-*' 2>/dev/null; runuser -l alice -c "systemctl --user list-units --all --no-legend 'hutch-*'" 2>/dev/null; find /sys/fs/cgroup -name 'hutch*' -o -name '*-[0-9]*' -path '*hutch*'; pgrep -a hutch) | grep -v '^$')
[ -z "$left" ] && ok=1 || ok=0
row "nothing left in the cgroup tree" all $ok "$(echo $left | cut -c1-60)" 0
echo DONE >>$T
cat $T
journalctl -b --no-pager >$R/journal.txt 2>&1
sync
