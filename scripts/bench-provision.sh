#!/usr/bin/env bash
# Measures pod provisioning: time from CNI ADD start to a pod that exchanges traffic,
# p50 and p99, with 10 and with 500 pods already attached on a node. Runs the real
# sluice-gateway and, on two workers (one per pod count, sampled alternately so both see
# the same phases of a shared machine), sluice-node and sluice-cni in network namespaces
# (as root); prints the table and writes perf/results/provision.md with the load average.
# Run it when the machine is quiet: `uptime` is printed first for that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p sluice-dataplane --bin sluice-gateway
uptime
cargo test --release -p sluice-cni --test provision_bench -- --ignored --nocapture
uptime
