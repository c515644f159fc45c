#!/usr/bin/env bash
# Sets up a fresh machine and measures the gateway pipeline without I/O: each path
# (bounce, route, dnat, arp) at small tables (10 endpoints, 10 services) and large ones
# (1,000,000 endpoints, 10,000 services of 100 backends), over 1,000 flows, one packet at
# a time and in batches of 32; small and large are interleaved and compared as medians
# of the same run. Then the cost of a one-endpoint table update at 10 and 1,000,000
# endpoints. Writes perf/results/pipeline.md.
# Usage: scripts/bench-pipeline.sh [--criterion]   (also run criterion's per-path bench)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=perf/results/pipeline.md
{
  echo "# Gateway pipeline, $(date -u +%F)"
  echo
  echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, kernel $(uname -r)."
  echo "Command: \`scripts/bench-pipeline.sh\`. ns per packet, medians of 31 interleaved rounds."
  echo
  cargo bench --quiet -p sluice-dataplane --bench pipeline_interleaved 2>/dev/null
  echo
  echo "One-endpoint update (add and remove, each a full transaction), criterion median:"
  echo
  cargo bench --quiet -p sluice-dataplane --bench tables -- --noplot >/dev/null 2>&1
  for size in 10 1000000; do
    python3 - "target/criterion/apply_one_endpoint/$size/new/estimates.json" "$size" <<'PY'
import json, sys
median = json.load(open(sys.argv[1]))["median"]["point_estimate"]
print(f"* {sys.argv[2]} endpoints: {median:.0f} ns")
PY
  done
} | tee "$out"
if [[ "${1:-}" == "--criterion" ]]; then
  cargo bench -p sluice-dataplane --bench pipeline
fi
