#!/usr/bin/env bash
# Sets up hutch and runs its demo: the nginx example (two Debian systemd nodes on a LAN, the
# seed test), then a busybox node and a NixOS-shaped node booted and powered off with their
# start-up phase timings.
set -euo pipefail
cd "$(dirname "$0")/.."
export HUTCH_CACHE=${HUTCH_CACHE:-/var/cache/hutch}
bash scripts/setup.sh
bash fixtures/debian-image.sh >/dev/null
image=$(bash fixtures/busybox-image.sh)
toplevel=$(bash fixtures/nix-toplevel.sh)
hutch=./target/$(rustc --print host-tuple)/release/hutch
set -x
$hutch test examples/nginx/test.toml --timings
$hutch run --image "$image" --boot --timings
$hutch run --toplevel "$toplevel" --closure-only --timings
