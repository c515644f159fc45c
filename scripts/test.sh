#!/usr/bin/env bash
# Sets up a fresh machine and runs every check Sluice has: formatting, clippy, every unit,
# property and integration test, fixture drift, and a short fuzz run of the pipeline.
# Usage: scripts/test.sh            (everything)
#        FUZZ_SECONDS=0 scripts/test.sh   (skip fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz_seconds=${FUZZ_SECONDS:-60}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "setup"
if ((fuzz_seconds > 0)); then scripts/setup.sh --fuzz; else scripts/setup.sh; fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "golden fixtures match what scapy generates"
python3 dataplane/tests/gen_fixtures.py >/dev/null
git diff --exit-code --stat -- dataplane/tests/fixtures \
  || { echo "fixtures drifted from dataplane/tests/gen_fixtures.py" >&2; exit 1; }

if ((fuzz_seconds > 0)); then
  step "fuzz the pipeline for ${fuzz_seconds}s"
  scripts/fuzz.sh "$fuzz_seconds"
fi

step "Python grpcio peer against the control service"
if python3 -c 'import grpc, grpc_tools, grpc_health, grpc_reflection' 2>/dev/null; then
  cargo test --release -p sluice-control --test python_peer -- --ignored
else
  echo "SKIPPED: python3 cannot import grpc, grpc_tools, grpc_health and grpc_reflection" \
    "(scripts/setup.sh installs them with pip)"
fi

step "release binaries (scripts/build-release.sh, which the Dockerfile's build stage runs)"
scripts/build-release.sh target/release/dist
# The Dockerfile must build with that script and ship every binary it produces.
grep -q '^RUN scripts/build-release.sh /out$' Dockerfile \
  || { echo "Dockerfile: the build stage no longer runs scripts/build-release.sh /out" >&2; exit 1; }
for b in $(sed -n 's/^binaries=(\(.*\))$/\1/p' scripts/build-release.sh); do
  grep -q "/out/$b" Dockerfile || { echo "Dockerfile: does not copy $b from the build stage" >&2; exit 1; }
  if [[ $b == sluice-cni ]]; then # a CNI plugin answers VERSION, not --help
    echo '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION "target/release/dist/$b" >/dev/null
  else
    "target/release/dist/$b" --help >/dev/null
  fi || { echo "target/release/dist/$b does not run" >&2; exit 1; }
done
# Its build stage must apt-get install every package setup.sh installs to compile
# (build_packages=(...) there): the stage on one line, then what follows "apt-get install"
# up to the next "&&".
installed=$(sed -n '/^FROM .* AS build$/,/^FROM /p' Dockerfile | tr '\\\n' '  ' | grep -o 'apt-get install[^&]*')
build_packages=$(sed -n 's/^build_packages=(\(.*\))$/\1/p' scripts/setup.sh)
[[ -n $build_packages ]] || { echo "scripts/setup.sh: no build_packages=(...) line" >&2; exit 1; }
for p in $build_packages; do
  [[ " $installed " == *" $p "* ]] \
    || { echo "Dockerfile: the build stage does not apt-get install $p (scripts/setup.sh's build_packages)" >&2; exit 1; }
done
echo "Dockerfile and scripts/build-release.sh agree; every binary runs;" \
  "the build stage installs setup.sh's build packages"

step "the demo cluster with its end-to-end checks (scripts/demo.sh --e2e)"
SLUICE_BIN=target/release/dist scripts/demo.sh --no-build --e2e

# Last, so that the runner's summary closes the log.
step "cargo test"
cargo test --workspace --release --no-fail-fast 2>&1 | tee /tmp/sluice-test.log
summary=$(grep -E '^test result:' /tmp/sluice-test.log | awk '{p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed, %d skipped", p, f, i}')
echo
echo "$summary"
