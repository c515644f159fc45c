#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a fresh Debian 12 machine with a Rust
# toolchain (rustup's cargo, rustfmt, clippy) and Python 3. Idempotent: installs only what
# is missing. Run as root (apt-get). Usage: scripts/setup.sh [--fuzz] [--bench]
set -euo pipefail
cd "$(dirname "$0")/.."

want_fuzz=0
want_bench=0
for arg in "$@"; do
  case "$arg" in
    --fuzz) want_fuzz=1 ;;
    --bench) want_bench=1 ;;
    *) echo "setup: unknown option $arg (use --fuzz, --bench)" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# Debian packages that compiling Sluice needs beyond a C toolchain (gcc and make, from
# build-essential here and from the rust image in the Dockerfile): clang and llvm compile
# the BPF C (dataplane/build.rs, libxdp), libelf and zlib link libbpf, m4 builds libxdp
# (xsk-rs), gcc-multilib provides the asm/ headers libxdp's BPF objects include,
# libxdp's configure (libxdp-sys) refuses to run without libpcap's headers, and
# pkg-config finds them. The Dockerfile's build stage installs the same list
# (scripts/test.sh checks it); keep it on one line.
build_packages=(clang llvm libelf-dev zlib1g-dev m4 libpcap-dev gcc-multilib pkg-config)
apt_packages=(build-essential python3 python3-pip "${build_packages[@]}")
# The namespace tests use ip, nsenter (util-linux) and ping.
apt_packages+=(iproute2 iputils-ping)
# Benchmarks tune the veths under test (scripts/bench-gateway.sh).
apt_packages+=(ethtool)
# promtool (package prometheus) checks the gateway's metrics text
# (dataplane/tests/gateway_binary.rs).
apt_packages+=(prometheus)
# The node agent's tests (cni-shim/tests): Debian's Go and libcni build the independent
# CNI client (tests/libcni-driver) offline; bpftool counts the stubs' map entries.
apt_packages+=(golang-go golang-github-appc-cni-dev bpftool)
# The demo cluster and its end-to-end checks (scripts/demo.sh): jq reads sluicectl's and
# bpftool's JSON, curl the gateways' metrics, tshark decodes a capture of the underlay's
# Geneve (it asks a question without DEBIAN_FRONTEND=noninteractive, set below).
apt_packages+=(jq curl tshark)
# scripts/bench.sh (--bench): the contenders (iptables and nftables rules as kube-proxy
# writes them; DPDK's testpmd and its AF_XDP PMD, which come only in these two packages).
if ((want_bench)); then
  apt_packages+=(iptables nftables dpdk-dev librte-net-af-xdp23)
fi
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "setup: $tool not found; install the Rust toolchain (rustup) first" >&2; exit 1; }
done

# Python test peers: scapy builds the golden packet fixtures.
if ! python3 -c 'import scapy' 2>/dev/null; then
  log "pip install scapy"
  python3 -m pip install --quiet scapy==2.8.0 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages scapy==2.8.0
fi

# Python test peers: a grpcio client of the control service, with stubs generated from
# the protos at test time (control/tests/python/peer.py).
grpc_packages=(grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1)
if ! python3 -c 'import grpc, grpc_tools, grpc_health, grpc_reflection' 2>/dev/null; then
  log "pip install ${grpc_packages[*]}"
  python3 -m pip install --quiet "${grpc_packages[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "${grpc_packages[@]}" \
    || log "could not install the Python gRPC packages; the Python peer test will be skipped"
fi

# scripts/bench.sh (--bench): matplotlib draws the plots of perf/results/.
if ((want_bench)) && ! python3 -c 'import matplotlib' 2>/dev/null; then
  log "pip install matplotlib==3.9.2"
  python3 -m pip install --quiet matplotlib==3.9.2 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages matplotlib==3.9.2
fi

if ((want_fuzz)) && ! command -v cargo-fuzz >/dev/null; then
  log "cargo install cargo-fuzz (a few minutes, once)"
  cargo install --quiet --locked cargo-fuzz
fi

log "fetching crates"
cargo fetch --quiet
