#!/usr/bin/env bash
# Fuzzes `pipeline::process` with libFuzzer for N seconds (default 60), seeded with one
# packet of every path. Any panic, or a packet leaving with another VNI, fails the run.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
seeds=$(mktemp -d)
corpus=$(mktemp -d)
trap 'rm -rf "$seeds" "$corpus"' EXIT

cargo run --quiet --release -p sluice-dataplane --features testkit --example fuzz_seeds -- "$seeds"
cd dataplane/fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run process "$corpus" "$seeds" -- \
  -max_total_time="$seconds" -max_len=512 -print_final_stats=1 2>&1 | tail -n 25
