# Sluice: every binary in one slim image.
#
#   docker build -t sluice .
#   docker run --rm sluice sluice-gateway --help
#
# The build stage runs scripts/build-release.sh, the same script scripts/test.sh runs (and
# checks this file against), so what builds in CI builds here.

# --- build: the Rust toolchain plus what the XDP programs and libxdp need to compile:
# scripts/setup.sh's build_packages (scripts/test.sh checks that each is installed here)
FROM rust:1-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      clang llvm libelf-dev zlib1g-dev m4 libpcap-dev pkg-config gcc-multilib \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/build-release.sh /out

# --- runtime: the binaries and what they need at run time (libelf and zlib for libbpf;
# iproute2 and util-linux's nsenter for operators; the CNI plugin is copied to the host's
# /opt/cni/bin by whoever installs it)
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libelf1 zlib1g iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/sluice-gateway /out/sluice-controller /out/sluicectl /out/sluice-node /out/sluice-cni /usr/local/bin/
COPY config/ /etc/sluice/examples/
CMD ["sluice-controller", "--help"]
