#!/usr/bin/env bash
# The whole test suite: setup, formatting, lints, then every test (as root: CI does this).
# Fixtures are built by the tests themselves and cached in $HUTCH_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
export HUTCH_CACHE=${HUTCH_CACHE:-/var/cache/hutch}
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads="${HUTCH_TEST_THREADS:-4}"
# The slow soaks marked #[ignore] (minutes each): kept out of quick local loops, run here.
cargo test --locked --test agent_soak -- --ignored --nocapture
# hutch on a pure-cgroup2 systemd Debian with stock kernels, in a VM (README: Hosts).
if [[ ${HUTCH_VM_LANE:-1} != 0 ]]; then
    bash scripts/vm-lane.sh
fi
