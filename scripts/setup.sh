#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a fresh Debian 12 machine with a Rust
# toolchain (rustup's cargo, rustfmt, clippy) and Python 3. Idempotent: installs only what
# is missing. Run as root (apt-get). Usage: scripts/setup.sh [--fuzz]
set -euo pipefail
cd "$(dirname "$0")/.."

want_fuzz=0
[[ "${1:-}" == "--fuzz" ]] && want_fuzz=1

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# Debian packages. gcc and make build the C parts of -sys crates.
apt_packages=(build-essential pkg-config python3 python3-pip)
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

if ((want_fuzz)) && ! command -v cargo-fuzz >/dev/null; then
  log "cargo install cargo-fuzz (a few minutes, once)"
  cargo install --quiet --locked cargo-fuzz
fi

log "fetching crates"
cargo fetch --quiet
