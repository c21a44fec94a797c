#!/usr/bin/env bash
# Installs what hutch, its tests and its benchmarks need on Debian 12, gives `nobody` a
# subordinate id range for the rootless tests, and builds hutch. Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    uidmap            # newuidmap/newgidmap: rootless id maps
    libsqlite3-dev    # reading the Nix store database (--closure-only); its libsqlite3.a
    libc6-dev         # glibc's static libraries: hutch links statically (.cargo/config.toml)
    pkg-config gcc
    python3           # the test-script bridge
    nix-bin           # offline Nix store for NixOS-mode fixtures
    debootstrap       # the Debian systemd image
    iproute2 iputils-ping  # tests check the network with ip and ping
    tmux              # tests drive hutch shell, hutch run -t and a login console in a real terminal
    bubblewrap runc systemd-container  # peers for the benchmarks
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# Rootless tests run as `nobody` with a range of 65536 ids.
for f in /etc/subuid /etc/subgid; do
    grep -q '^nobody:' "$f" 2>/dev/null || echo 'nobody:200000:65536' >>"$f"
done

# A second unprivileged user for tests/parallel.rs (two users' runs at once): a range of its
# own that does not overlap nobody's, and (below) a delegated cgroup of its own.
if ! id -u hutch2 >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hutch2
fi
for f in /etc/subuid /etc/subgid; do
    grep -q '^hutch2:' "$f" 2>/dev/null || echo 'hutch2:300000:65536' >>"$f"
done

cargo build --release --locked >&2

# Stand-in for the delegated cgroup subtree a systemd user session gives each user: rootless
# tests run each test user's hutch inside it, so systemd in a rootless node manages its own
# cgroups.
for user in nobody hutch2; do
    for mount in /sys/fs/cgroup/unified /sys/fs/cgroup; do
        if [[ $(stat -f -c %T "$mount" 2>/dev/null) == cgroup2fs ]]; then
            dir=$mount/hutch-user-$(id -u "$user")
            mkdir -p "$dir"
            chown -R "$user:$(id -gn "$user")" "$dir"
            break
        fi
    done
done
