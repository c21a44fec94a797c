#!/usr/bin/env bash
# run.sh [SECONDS]: run each libFuzzer target for SECONDS (default 60) from the seeds in seeds/.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); exits 0 with a note when
# either is missing, since the stable stand-in (tests/bad_input_fuzz.rs) runs in `cargo test`.
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: no nightly toolchain with cargo-fuzz; skipping (tests/bad_input_fuzz.rs covers stable)" >&2
    exit 0
fi
for target in test_plan agent_frame; do
    mkdir -p "corpus/$target"
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$secs" -rss_limit_mb=2048
done
