#!/usr/bin/env bash
# Every benchmark, one after another, as root, each printing its table: the README's numbers
# come from this command. Close other work first: the machine's noise is in every number.
set -euo pipefail
cd "$(dirname "$0")/.."
export HUTCH_CACHE=${HUTCH_CACHE:-/var/cache/hutch}
bash scripts/setup.sh
echo "# $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench --locked --bench startup -- "${ROUNDS:-100}"
cargo bench --locked --bench boot -- "${BOOT_ROUNDS:-10}"
cargo bench --locked --bench driver -- "${DRIVER_RUNS:-5}"
cargo bench --locked --bench netns
if [[ -f benches/scale.rs ]]; then cargo bench --locked --bench scale; fi
