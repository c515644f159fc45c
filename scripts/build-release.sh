#!/usr/bin/env bash
# Builds every Sluice binary in release mode and copies them to one directory. The
# Dockerfile's build stage runs exactly this script, and scripts/test.sh runs it too (and
# checks the Dockerfile against it), so the image build cannot rot unnoticed.
# Usage: scripts/build-release.sh [OUT_DIR]     (default: target/release/dist)
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/release/dist}
# The binaries the image ships; the Dockerfile copies each of these names.
binaries=(sluice-gateway sluice-controller sluicectl sluice-node sluice-cni)

cargo build --release --locked \
  -p sluice-dataplane --bin sluice-gateway \
  -p sluice-control --bin sluice-controller --bin sluicectl \
  -p sluice-cni --bin sluice-node --bin sluice-cni
mkdir -p "$out"
for b in "${binaries[@]}"; do
  install -m 755 "target/release/$b" "$out/$b"
done
echo "built ${binaries[*]} into $out"
