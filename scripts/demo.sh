#!/usr/bin/env bash
# Sets up hutch and runs its demo: a busybox node and a NixOS-shaped node, booted and powered
# off, with their start-up phase timings.
set -euo pipefail
cd "$(dirname "$0")/.."
export HUTCH_CACHE=${HUTCH_CACHE:-/var/cache/hutch}
bash scripts/setup.sh
image=$(bash fixtures/busybox-image.sh)
toplevel=$(bash fixtures/nix-toplevel.sh)
set -x
./target/release/hutch run --image "$image" --boot --timings
./target/release/hutch run --toplevel "$toplevel" --closure-only --timings
