#!/usr/bin/env bash
# A first throughput figure (issue 3 item 7): generator -> device under test -> sink in
# network namespaces on veth, joined by a bridge namespace (one L2 segment, as in
# dataplane/tests/gateway_binary.rs), and two contenders measured in the same run,
# interleaved A B A B (PLATFORM.md pitfall 14), counted at the sink's veth (pitfall 13):
#   A  kernel IPv4 forwarding through the middle namespace: plain UDP, 64-byte frames,
#      H1 -> 198.19.1.12 routed via 198.18.0.1 (in and out of the same interface);
#   B  sluice-gateway bouncing Geneve with 64-byte inner frames, H1 -> GW -> H2.
# The generator (perf/src/bin/sluice-gen.rs, a UDP socket in a tight loop) runs on core 0,
# which it shares with the gateway's control thread; the gateway's worker, and the middle
# namespace's NAPI thread, run on core 1. The gateway runs only during B windows.
#
# Usage (root): scripts/bench-gateway.sh   [env: WINDOWS=5 SECONDS_PER_WINDOW=3]
# Writes perf/results/gateway-throughput.md and prints the table and a JSON line.
# Addresses only in 198.18.0.0/15; namespaces sl-bg-<pid>-*, deleted on any exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
WINDOWS=${WINDOWS:-5}
SECS=${SECONDS_PER_WINDOW:-3}
CMD="scripts/bench-gateway.sh (WINDOWS=$WINDOWS SECONDS_PER_WINDOW=$SECS)"

[ "$(id -u)" = 0 ] || { echo "bench-gateway: needs root" >&2; exit 1; }

scripts/setup.sh
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

cargo build --release -q -p sluice-dataplane -p sluice-perf --bins
GW_BIN=$ROOT/target/release/sluice-gateway
GEN=$ROOT/target/release/sluice-gen

BASE=sl-bg-$$
BR=$BASE-br; GEN_NS=$BASE-gen; DUT=$BASE-dut; SINK=$BASE-sink
TMP=$(mktemp -d /tmp/sl-bg.XXXXXX)
GW_PID=

cleanup() {
    set +e
    if [ -n "$GW_PID" ]; then kill -TERM "$GW_PID" 2>/dev/null; wait "$GW_PID" 2>/dev/null; fi
    for ns in "$GEN_NS" "$DUT" "$SINK" "$BR"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

inns() { local ns=$1; shift; nsenter --net=/run/netns/"$ns" -- "$@"; }
# sysfs as seen from a namespace (ip netns exec mounts that namespace's /sys).
sysread() { ip netns exec "$1" cat "$2"; }
syswrite() { ip netns exec "$1" sh -c "echo $3 > $2" 2>/dev/null || echo "bench-gateway: cannot set $2 in $1" >&2; }

for ns in "$BR" "$GEN_NS" "$DUT" "$SINK"; do
    ip netns add "$ns"
    inns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip -n "$ns" link set lo up
done
for t in iptables ip6tables arptables; do
    inns "$BR" sh -c "[ ! -e /proc/sys/net/bridge/bridge-nf-call-$t ] || echo 0 > /proc/sys/net/bridge/bridge-nf-call-$t"
done
ip -n "$BR" link add br0 type bridge nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0
ip -n "$BR" link set br0 up
# namespace port mac address
while read -r ns port mac addr; do
    ip -n "$ns" link add eth0 numtxqueues 1 numrxqueues 1 type veth \
        peer name "$port" netns "$BR" numtxqueues 1 numrxqueues 1
    ip -n "$ns" link set eth0 address "$mac"
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$BR" link set "$port" master br0
    ip -n "$BR" link set "$port" up
done <<LINKS
$GEN_NS s 02:00:00:00:00:11 198.18.0.11
$DUT g 02:00:00:00:00:01 198.18.0.1
$SINK r 02:00:00:00:00:12 198.18.0.12
LINKS

# Kernel forwarding: 198.19.1.0/24 lives on the same segment, reached through the DUT.
ip -n "$DUT" addr add 198.19.1.1/24 dev eth0
ip -n "$SINK" addr add 198.19.1.12/24 dev eth0
ip -n "$GEN_NS" route add 198.19.1.0/24 via 198.18.0.1
inns "$DUT" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
    net.ipv4.conf.eth0.send_redirects=0 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
# Static neighbours: no ARP during a window.
ip -n "$GEN_NS" neigh replace 198.18.0.1 lladdr 02:00:00:00:00:01 dev eth0 nud permanent
ip -n "$DUT" neigh replace 198.19.1.12 lladdr 02:00:00:00:00:12 dev eth0 nud permanent
ip -n "$DUT" neigh replace 198.18.0.11 lladdr 02:00:00:00:00:11 dev eth0 nud permanent

# Pitfalls 10-11: TSO off on the senders, GRO on (veth NAPI) on the receivers, coalescing,
# threaded NAPI; the DUT's NAPI thread on core 1, the sink's on core 0.
inns "$GEN_NS" ethtool -K eth0 tso off >/dev/null 2>&1 || true
inns "$DUT" ethtool -K eth0 tso off >/dev/null 2>&1 || true
napi_threads() { ps -eo pid=,comm= | awk '$2 ~ /^napi\// {print $1}' | sort; }
for pair in "$DUT:1" "$SINK:0"; do
    ns=${pair%%:*}; core=${pair##*:}
    inns "$ns" ethtool -K eth0 gro on >/dev/null 2>&1 || echo "bench-gateway: gro on failed in $ns" >&2
    syswrite "$ns" /sys/class/net/eth0/napi_defer_hard_irqs 2
    syswrite "$ns" /sys/class/net/eth0/gro_flush_timeout 50000
    before=$(napi_threads)
    syswrite "$ns" /sys/class/net/eth0/threaded 1
    sleep 0.2
    new=$(comm -13 <(echo "$before") <(napi_threads))
    if [ -z "$new" ]; then echo "bench-gateway: no NAPI thread appeared for $ns" >&2; fi
    for pid in $new; do taskset -p -c "$core" "$pid" >/dev/null; done
done

# The gateway's configuration and tables.
"$GEN" tables "$TMP/tables.yaml"
cat > "$TMP/gateway.toml" <<TOML
[cores]
control = "0"
workers = "1"

[[interfaces]]
name = "eth0"
ip = "198.18.0.1"
mac = "02:00:00:00:00:01"
queues = "0"

[umem]
frame_size = 4096
frame_count = 8192

[rings]
rx = 2048
tx = 2048
fill = 4096
completion = 4096

[engine]
batch_size = 64
zero_copy = "off"
need_wakeup = true
busy_poll_budget = 64
busy_poll_usecs = 20

[control]
grpc = "unix://$TMP/gateway.sock"
metrics = "127.0.0.1:9471"

[tables]
file = "$TMP/tables.yaml"
TOML

start_gateway() {
    nsenter --net=/run/netns/"$DUT" -- "$GW_BIN" --config "$TMP/gateway.toml" \
        </dev/null >/dev/null 2>>"$TMP/gateway.stderr" &
    GW_PID=$!
    for _ in $(seq 100); do
        if ip -n "$DUT" -j -d link show dev eth0 | grep -q '"xdp"' && [ -S "$TMP/gateway.sock" ]; then
            sleep 1; return 0
        fi
        kill -0 "$GW_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench-gateway: the gateway did not start:" >&2; cat "$TMP/gateway.stderr" >&2; exit 1
}
stop_gateway() {
    inns "$DUT" "$GW_BIN" stats --metrics 127.0.0.1:9471 > "$TMP/gw-stats.txt" 2>&1 || true
    kill -TERM "$GW_PID"; wait "$GW_PID" || true; GW_PID=
    sleep 0.6   # the queue is re-bindable about 0.5 s after the socket closed (pitfall 8)
}

sink_rx() { sysread "$SINK" /sys/class/net/eth0/statistics/rx_packets; }

# One window: prints "sent delivered seconds".
window() {
    local kind=$1 dst=$2 before after out
    before=$(sink_rx)
    out=$(inns "$GEN_NS" "$GEN" send "$kind" "$dst" "$SECS" 0)
    sleep 0.2   # let the last packets drain
    after=$(sink_rx)
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["sent"], int(sys.argv[3])-int(sys.argv[2]), d["seconds"])' \
        "$out" "$before" "$after"
}

# Warm-up: one short window of each, not recorded.
SECS_SAVE=$SECS; SECS=1
window udp 198.19.1.12:9 >/dev/null
start_gateway; window geneve 198.18.0.1:6081 > /dev/null; stop_gateway
SECS=$SECS_SAVE

: > "$TMP/samples"
for i in $(seq "$WINDOWS"); do
    read -r s d t < <(window udp 198.19.1.12:9)
    echo "kernel $i $s $d $t" | tee -a "$TMP/samples" >&2
    start_gateway
    read -r s d t < <(window geneve 198.18.0.1:6081)
    stop_gateway
    echo "gateway $i $s $d $t" | tee -a "$TMP/samples" >&2
done
cp "$TMP/gw-stats.txt" "$TMP/gw-last-stats.txt"

CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
MACHINE="$CPU, $(nproc) cores, Linux $(uname -r)"
python3 - "$TMP/samples" "$MACHINE" "$CMD" "$ROOT/perf/results/gateway-throughput.md" <<'PY'
import json, statistics, sys
samples, machine, cmd, out = sys.argv[1:5]
rows = {"kernel": [], "gateway": []}
for line in open(samples):
    kind, _, sent, delivered, secs = line.split()
    rows[kind].append((int(sent) / float(secs), int(delivered) / float(secs)))
med = {k: (statistics.median(s for s, _ in v), statistics.median(d for _, d in v)) for k, v in rows.items()}
ratio = med["gateway"][1] / med["kernel"][1] if med["kernel"][1] else float("nan")
windows = " ".join(f"{d/1e6:.3f}" for _, d in rows["gateway"])
kwindows = " ".join(f"{d/1e6:.3f}" for _, d in rows["kernel"])
md = f"""# sluice-gateway throughput against kernel forwarding

Machine: {machine}

Command: `{cmd}`

64-byte frames (Geneve: 64-byte inner frame), one veth L2 segment through a bridge
namespace, generator (UDP socket) on core 0, device under test on core 1; counted at the
sink's veth (rx_packets); median of {len(rows['kernel'])} interleaved windows (A B A B).

| path through the middle namespace | delivered Mpps (median) | generator sent Mpps (median) | per window, delivered Mpps |
|---|---|---|---|
| kernel IPv4 forwarding | {med['kernel'][1]/1e6:.3f} | {med['kernel'][0]/1e6:.3f} | {kwindows} |
| sluice-gateway, Geneve bounce (copy-mode AF_XDP) | {med['gateway'][1]/1e6:.3f} | {med['gateway'][0]/1e6:.3f} | {windows} |
| ratio sluice-gateway / kernel | {ratio:.2f} | | |
"""
open(out, "w").write(md)
print(md)
print(json.dumps({"bench": "gateway-throughput", "machine": machine, "command": cmd,
    "kernel_forwarding_mpps": round(med["kernel"][1]/1e6, 4),
    "sluice_gateway_mpps": round(med["gateway"][1]/1e6, 4),
    "kernel_sent_mpps": round(med["kernel"][0]/1e6, 4),
    "gateway_sent_mpps": round(med["gateway"][0]/1e6, 4),
    "ratio": round(ratio, 3),
    "windows": {k: [[round(s/1e6, 4), round(d/1e6, 4)] for s, d in v] for k, v in rows.items()}}))
PY
echo "--- gateway counters after the last window:" >&2
cat "$TMP/gw-last-stats.txt" >&2 || true
