#!/usr/bin/env bash
# Sets up a fresh machine and measures the gateway pipeline's per-packet cost (no I/O):
# each path (bounce, route, dnat, arp) at small tables (10 endpoints, 10 services) and
# large ones (1,000,000 endpoints, 10,000 services of 100 backends), over 1,000 flows.
# Prints ns/packet and the large/small ratio measured in the same run, and writes the
# table to perf/results/pipeline.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo bench -p sluice-dataplane --bench pipeline -- "$@"
python3 scripts/pipeline_report.py target/criterion | tee perf/results/pipeline.md
