#!/usr/bin/env bash
# Side-by-side benchmarks (issue 8): generator -> device under test (DUT) -> sink, each a
# network namespace on one veth L2 segment (a bridge namespace joins them, because the
# gateway answers on the interface it receives on), and every contender measured in the
# same run, interleaved round by round (PLATFORM.md pitfall 14):
#
#   kernel             kernel IPv4 forwarding (plain UDP, in and out of the DUT's eth0)
#   xdp                in-kernel XDP forwarder, bpf_redirect (perf/bpf/bench.bpf.c)
#   dpdk               dpdk-testpmd, AF_XDP PMD (copy mode), mac forwarding, one port looped
#   dpdk-geneve        the same forwarding the gateway's Geneve frames (110 bytes)
#   ipt-S-steady|churn kube-proxy style iptables DNAT with S services
#   nft-S-steady|churn kube-proxy style nftables verdict map with S services
#   gw-bounce-...      sluice-gateway bouncing Geneve (E endpoints, F flows)
#   gw-dnat-...        sluice-gateway service DNAT (S services, E endpoints, F flows)
#                      (-bp: with the engine's busy polling on; off otherwise)
#
# Generator: sluice-gen xsk (AF_XDP, copy mode) pinned to core 0, 64-byte (inner) frames.
# DUT: core 1 (its NAPI thread, testpmd's forwarding lcore, the gateway's worker). Sink:
# sluice-gen sink (XDP: count and drop, one-way delay histogram) whose NAPI runs on core 0.
# Per contender: the median of 1 s windows at the sink over all rounds, then one
# low-rate run with timestamps (one-way delay p50/p99, same clock on both ends).
# Also: the gateway's RSS with 1,000,000 endpoints and 10,000 services.
#
# Usage (root): scripts/bench.sh [--quick] [--no-wait]
#   env: ROUNDS (default 2, quick 1), SECONDS_PER_RUN (default 5, quick 3),
#        LATENCY_RATE (pps, default 10000), OUT (default perf/results),
#        CONTENDERS_ONLY (space-separated names, default: all of the mode; with it the
#        loss and RSS runs happen only with RUN_LOSS=1, RUN_RSS=1), BENCH_BIN_DIR
# Writes OUT/bench-<stamp>.json, OUT/bench.md, OUT/bench-throughput.png,
# OUT/bench-services.png. Namespaces sl-bn-<pid>-*, deleted on any exit; addresses only in
# 198.18.0.0/15 (underlay, kube-proxy VIPs and backends) and inside the namespaces.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=0
WAIT=1
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --no-wait) WAIT=0 ;;
        *) echo "bench: unknown option $arg (use --quick, --no-wait)" >&2; exit 2 ;;
    esac
done
if ((QUICK)); then
    ROUNDS=${ROUNDS:-1}; SECS=${SECONDS_PER_RUN:-3}
else
    ROUNDS=${ROUNDS:-2}; SECS=${SECONDS_PER_RUN:-5}
fi
LATENCY_RATE=${LATENCY_RATE:-10000}
OUT=${OUT:-$ROOT/perf/results}

[ "$(id -u)" = 0 ] || { echo "bench: needs root" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench: needs at least 2 cores" >&2; exit 1; }

scripts/setup.sh --bench
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
# BENCH_BIN_DIR: binaries built elsewhere (smoke runs of this script with debug builds).
BIN_DIR=${BENCH_BIN_DIR:-$ROOT/target/release}
[ -n "${BENCH_BIN_DIR:-}" ] || cargo build --release -q -p sluice-dataplane -p sluice-perf --bins
GW_BIN=$BIN_DIR/sluice-gateway
GEN=$BIN_DIR/sluice-gen

BASE=sl-bn-$$
BR=$BASE-br; GEN_NS=$BASE-gen; DUT=$BASE-dut; SINK=$BASE-sink
TMP=$(mktemp -d /tmp/sl-bn.XXXXXX)
DUT_PID=
SINK_PID=

log() { printf '[bench] %s\n' "$*" >&2; }

stop_pid() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    set +e
    stop_pid "$SINK_PID"; SINK_PID=
    stop_pid "${CHURN_PID:-}"; CHURN_PID=
    stop_pid "$DUT_PID"; DUT_PID=
    for ns in "$GEN_NS" "$DUT" "$SINK" "$BR"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Foreground only: a background `inns ... &` would make $! a subshell, not the process.
# Background processes start as `nsenter ... &` (nsenter execs the program: $! is its PID).
inns() { local ns=$1; shift; nsenter --net=/run/netns/"$ns" -- "$@"; }
syswrite() { ip netns exec "$1" sh -c "echo $3 > $2" 2>/dev/null || log "cannot set $2 in $1"; }

# --- Wait for a quiet machine (the load is recorded either way). ---
if ((WAIT && !QUICK)); then
    for _ in $(seq 90); do
        awk '{exit !($1 < 0.8)}' /proc/loadavg && break
        log "waiting for a quiet machine: load $(cut -d' ' -f1-3 /proc/loadavg)"
        sleep 10
    done
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Topology: the bridge, generator and sink once; a fresh DUT namespace per contender
# run, so that no contender inherits another's state (conntrack hooks, rules, programs).
GEN_MAC=02:00:00:00:00:11; DUT_MAC=02:00:00:00:00:01; SINK_MAC=02:00:00:00:00:12
napi_threads() { ps -eo pid=,comm= | awk '$2 ~ /^napi\// {print $1}' | sort; }
# Pitfalls 10-11: GRO on the receiving veth, coalescing, threaded NAPI pinned to a core.
tune_rx() {   # namespace device core
    local ns=$1 dev=$2 core=$3 before new pid
    inns "$ns" ethtool -K "$dev" tso off gro on >/dev/null 2>&1 || log "gro on failed: $ns $dev"
    syswrite "$ns" "/sys/class/net/$dev/napi_defer_hard_irqs" 2
    syswrite "$ns" "/sys/class/net/$dev/gro_flush_timeout" 50000
    before=$(napi_threads)
    syswrite "$ns" "/sys/class/net/$dev/threaded" 1
    sleep 0.2
    new=$(comm -13 <(echo "$before") <(napi_threads))
    [ -n "$new" ] || log "no NAPI thread appeared for $ns $dev"
    for pid in $new; do taskset -p -c "$core" "$pid" >/dev/null; done
}
link_host() {   # namespace bridge-port mac address
    ip -n "$1" link add eth0 numtxqueues 1 numrxqueues 1 type veth \
        peer name "$2" netns "$BR" numtxqueues 1 numrxqueues 1
    ip -n "$1" link set eth0 address "$3"
    ip -n "$1" addr add "$4/24" dev eth0
    ip -n "$1" link set eth0 up
    ip -n "$BR" link set "$2" master br0
    ip -n "$BR" link set "$2" up
    ip netns exec "$BR" bridge fdb replace "$3" dev "$2" master static
}
for ns in "$BR" "$GEN_NS" "$SINK"; do
    ip netns add "$ns"
    inns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip -n "$ns" link set lo up
done
ip -n "$BR" link add br0 type bridge nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0
ip -n "$BR" link set br0 up
link_host "$GEN_NS" s $GEN_MAC 198.18.0.11
link_host "$SINK" r $SINK_MAC 198.18.0.12
ip -n "$SINK" addr add 198.19.1.12/24 dev eth0
ip -n "$GEN_NS" neigh replace 198.18.0.1 lladdr $DUT_MAC dev eth0 nud permanent
inns "$GEN_NS" ethtool -K eth0 tso off >/dev/null 2>&1 || true
# Core 0: the generator, its way into the bridge (port s) and the sink.
tune_rx "$BR" s 0
tune_rx "$SINK" eth0 0

# Routed destinations: 198.19.1.0/24 on the segment behind the DUT (kernel forwarding),
# kube-proxy backends 198.19.64.0/18 at the sink, VIPs 198.19.128.0/17 (DNATed).
dut_up() {
    ip netns add "$DUT"
    inns "$DUT" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip -n "$DUT" link set lo up
    link_host "$DUT" g $DUT_MAC 198.18.0.1
    ip -n "$DUT" addr add 198.19.1.1/24 dev eth0
    ip -n "$DUT" route add 198.19.64.0/18 via 198.19.1.12
    inns "$DUT" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
        net.ipv4.conf.eth0.send_redirects=0 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
    ip -n "$DUT" neigh replace 198.19.1.12 lladdr $SINK_MAC dev eth0 nud permanent
    ip -n "$DUT" neigh replace 198.18.0.12 lladdr $SINK_MAC dev eth0 nud permanent
    ip -n "$DUT" neigh replace 198.18.0.11 lladdr $GEN_MAC dev eth0 nud permanent
    inns "$DUT" ethtool -K eth0 tso off >/dev/null 2>&1 || true
    # Core 1: the DUT's receive path and its output into the bridge (port g).
    tune_rx "$DUT" eth0 1
    tune_rx "$BR" g 1
}
dut_down() {
    # Deleting the bridge side first removes the pair now; a namespace's devices otherwise
    # go away asynchronously, and the next port g would collide with the old one.
    ip -n "$BR" link del g 2>/dev/null || true
    ip netns del "$DUT" 2>/dev/null || true
}
dut_up

# conntrack's UDP timeouts are per network namespace: set in the DUT only (churn runs),
# set back when a churn run ends, and gone with the DUT namespace anyway.
CT_DEFAULT=$(inns "$DUT" sysctl -n net.netfilter.nf_conntrack_udp_timeout 2>/dev/null || echo 30)
HOST_CT=$(sysctl -n net.netfilter.nf_conntrack_udp_timeout 2>/dev/null || echo none)

# --- Contenders: start_<kind> sets the DUT up, stop_<kind> takes it down. ---
IPT=iptables
if command -v iptables-legacy >/dev/null && inns "$DUT" iptables-legacy -t nat -L >/dev/null 2>&1; then
    IPT=iptables-legacy
fi
IPT_RESTORE=$IPT-restore   # iptables-restore or iptables-legacy-restore

kp_vip() { echo "198.19.$((128 + $1 / 256)).$(($1 % 256))"; }
kp_backend() { echo "198.19.$((64 + $1 / 256)).$(($1 % 256))"; }

# kube-proxy's iptables mode: KUBE-SERVICES in PREROUTING, a KUBE-SVC chain per service
# (statistic random over its endpoints, probability 1/n, 1/(n-1), ...), a KUBE-SEP chain per
# endpoint doing the DNAT. Two endpoints per service.
ipt_rules() {
    local n=$1 j
    python3 - "$n" <<'PY'
import sys
n = int(sys.argv[1])
vip = lambda j: f"198.19.{128 + j // 256}.{j % 256}"
be = lambda k: f"198.19.{64 + k // 256 % 64}.{k % 256}"
out = ["*nat", ":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]"]
rules = ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"]
for j in range(n):
    svc = f"KUBE-SVC-{j:016X}"
    a, b = f"KUBE-SEP-{2*j:016X}", f"KUBE-SEP-{2*j+1:016X}"
    out += [f":{svc} - [0:0]", f":{a} - [0:0]", f":{b} - [0:0]"]
    rules.append(f"-A KUBE-SERVICES -d {vip(j)}/32 -p udp -m comment --comment \"ns/svc{j}:p cluster IP\" -m udp --dport 80 -j {svc}")
    rules.append(f"-A {svc} -m comment --comment \"ns/svc{j}:p -> {be(2*j)}:8080\" -m statistic --mode random --probability 0.50000000000 -j {a}")
    rules.append(f"-A {svc} -m comment --comment \"ns/svc{j}:p -> {be(2*j+1)}:8080\" -j {b}")
    for sep, k in ((a, 2*j), (b, 2*j+1)):
        rules.append(f"-A {sep} -p udp -m comment --comment ns/svc{j}:p -m udp -j DNAT --to-destination {be(k)}:8080")
print("\n".join(out + rules + ["COMMIT"]))
PY
}

# kube-proxy's nftables mode: a verdict map keyed on daddr . l4proto . dport -> a chain per
# service that picks an endpoint chain with numgen random.
nft_rules() {
    python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1])
vip = lambda j: f"198.19.{128 + j // 256}.{j % 256}"
be = lambda k: f"198.19.{64 + k // 256 % 64}.{k % 256}"
lines = ["table ip kube-proxy {"]
lines.append("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict")
lines.append("    elements = {")
lines.append(",\n".join(f"      {vip(j)} . udp . 80 : goto svc-{j}" for j in range(n)))
lines.append("    }\n  }")
for j in range(n):
    lines.append(f"  chain svc-{j} {{\n    numgen random mod 2 vmap {{ 0 : goto sep-{2*j}, 1 : goto sep-{2*j+1} }}\n  }}")
    for k in (2*j, 2*j+1):
        lines.append(f"  chain sep-{k} {{\n    meta l4proto udp dnat to {be(k)}:8080\n  }}")
lines.append("  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }")
lines.append("  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }")
lines.append("}")
print("\n".join(lines))
PY
}

ct_timeout() {
    inns "$DUT" sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$1" \
        net.netfilter.nf_conntrack_udp_timeout_stream="$2" 2>/dev/null || true
}

GW_CONFIG=$TMP/gateway.toml
gw_config() {
    cat > "$GW_CONFIG" <<TOML
[cores]
control = "0"
workers = "1"
[[interfaces]]
name = "eth0"
ip = "198.18.0.1"
mac = "$DUT_MAC"
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
busy_poll_budget = $2
busy_poll_usecs = 20
[control]
grpc = "unix://$TMP/gateway.sock"
metrics = "127.0.0.1:9471"
[tables]
file = "$1"
TOML
}

world_file() {   # endpoints services -> path (generated once)
    local f=$TMP/world-$1-$2.yaml
    [ -s "$f" ] || "$GEN" world --endpoints "$1" --services "$2" --backends 2 "$f"
    echo "$f"
}

start_gateway() {   # endpoints services [busy-poll budget]
    gw_config "$(world_file "$1" "$2")" "${3:-0}"
    rm -f "$TMP/gateway.sock"
    nsenter --net=/run/netns/"$DUT" -- "$GW_BIN" --config "$GW_CONFIG" </dev/null >/dev/null 2>>"$TMP/gateway.stderr" &
    DUT_PID=$!
    for _ in $(seq 1200); do
        if [ -S "$TMP/gateway.sock" ] && ip -n "$DUT" -j -d link show dev eth0 | grep -q '"xdp"'; then
            sleep 0.5; return 0
        fi
        kill -0 "$DUT_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "the gateway did not start:"; tail -5 "$TMP/gateway.stderr" >&2; exit 1
}

# contender -> "setup args" ; each start_* leaves DUT_PID set when it runs a process.
start() {
    local c=$1
    case "$c" in
        kernel) ;;
        xdp)
            nsenter --net=/run/netns/"$DUT" -- "$GEN" fwd --iface eth0 --out eth0 --dst-mac $SINK_MAC --src-mac $DUT_MAC \
                >/dev/null 2>>"$TMP/fwd.stderr" &
            DUT_PID=$!; sleep 0.5 ;;
        dpdk|dpdk-geneve)
            nsenter --net=/run/netns/"$DUT" -- dpdk-testpmd --no-huge -m 512 -l 0,1 --main-lcore 0 --no-pci \
                --file-prefix="$BASE" --log-level=lib.eal:error \
                --vdev net_af_xdp0,iface=eth0,start_queue=0,queue_count=1 -- \
                --forward-mode=mac --eth-peer=0,$SINK_MAC --port-topology=loop --nb-cores=1 \
                --rxq=1 --txq=1 --total-num-mbufs=32768 --auto-start --stats-period=1 \
                </dev/null >"$TMP/testpmd.log" 2>&1 &
            DUT_PID=$!
            for _ in $(seq 100); do grep -q "Port statistics\|Press enter" "$TMP/testpmd.log" && break; sleep 0.1; done
            sleep 1 ;;
        ipt-*)
            local n=${c#ipt-}; n=${n%-*}
            ipt_rules "$n" | inns "$DUT" "$IPT_RESTORE" -w
            case "$c" in *churn) ct_timeout 1 1 ;; esac ;;
        nft-*)
            local n=${c#nft-}; n=${n%-*}
            nft_rules "$n" > "$TMP/nft.rules"
            inns "$DUT" nft -f "$TMP/nft.rules"
            case "$c" in *churn) ct_timeout 1 1 ;; esac ;;
        gw-*)
            local e s
            e=$(sed -E 's/.*-e([0-9]+).*/\1/' <<<"$c"); s=$(sed -E 's/.*-s([0-9]+).*/\1/' <<<"$c")
            [[ "$c" == *-s* ]] || s=10
            # -bp: the engine's busy polling on (SO_PREFER_BUSY_POLL, budget 64, 20 us).
            if [[ "$c" == *-bp ]]; then start_gateway "$e" "$s" 64; else start_gateway "$e" "$s"; fi ;;
    esac
}

stop() {
    local c=$1
    case "$c" in
        xdp|dpdk*) stop_pid "$DUT_PID"; DUT_PID= ;;
        gw-*)
            inns "$DUT" "$GW_BIN" stats --metrics 127.0.0.1:9471 > "$TMP/gw-stats-$c.txt" 2>&1 || true
            stop_pid "$DUT_PID"; DUT_PID= ;;
        ipt-*)
            inns "$DUT" "$IPT" -t nat -F; inns "$DUT" "$IPT" -t nat -X
            ct_timeout "$CT_DEFAULT" 120 ;;
        nft-*)
            inns "$DUT" nft delete table ip kube-proxy
            ct_timeout "$CT_DEFAULT" 120 ;;
    esac
    # A fresh DUT for the next contender: nothing carries over.
    dut_down
    dut_up
}

# What the generator sends for a contender: sluice-gen xsk arguments.
traffic() {
    local c=$1 flows
    case "$c" in
        *-churn*) flows=1000000 ;;
        *-f*) flows=$(sed -E 's/.*-f([0-9]+).*/\1/' <<<"$c") ;;
        *) flows=10000 ;;
    esac
    case "$c" in
        kernel|xdp|dpdk) echo "--kind plain --dst-ip 198.19.1.12 --port 9 --flows 1000" ;;
        # testpmd forwarding the very frames the gateway gets: the I/O ceiling for Geneve.
        dpdk-geneve) echo "--kind geneve --world-endpoints 10 --port 9 --flows 1000" ;;
        ipt-*|nft-*)
            local n=${c#*-}; n=${n%-*}
            echo "--kind plain --services $n --vip-base 198.19.128.0 --port 80 --flows $flows" ;;
        gw-bounce-*)
            echo "--kind geneve --world-endpoints $(sed -E 's/.*-e([0-9]+).*/\1/' <<<"$c") --port 9 --flows $flows" ;;
        gw-dnat-*)
            echo "--kind geneve --world-endpoints $(sed -E 's/.*-e([0-9]+).*/\1/' <<<"$c") --services $(sed -E 's/.*-s([0-9]+).*/\1/' <<<"$c") --port 80 --flows $flows" ;;
    esac
}

# One measured run: sink for SECS+2 s, generator for SECS+1 s starting 0.5 s in; writes
# a JSON line {contender, round, sent, gen_seconds, windows, ...} to samples.
measure() {   # contender round mode(tput|latency)
    local c=$1 round=$2 mode=$3 extra="" sinkx="" secs=$SECS
    if [ "$mode" = latency ]; then extra="--rate $LATENCY_RATE --batch 1 --stamps"; sinkx="--stamps"; secs=3; fi
    nsenter --net=/run/netns/"$SINK" -- "$GEN" sink --seconds $((secs + 2)) $sinkx > "$TMP/sink.json" 2>>"$TMP/sink.stderr" &
    SINK_PID=$!
    sleep 0.5
    # shellcheck disable=SC2046
    inns "$GEN_NS" "$GEN" xsk $(traffic "$c") --seconds $((secs + 1)) --core 0 $extra \
        > "$TMP/gen.json" 2>>"$TMP/gen.stderr" || { log "generator failed for $c"; tail -3 "$TMP/gen.stderr" >&2; }
    wait "$SINK_PID" || true; SINK_PID=
    python3 - "$c" "$round" "$mode" "$TMP/gen.json" "$TMP/sink.json" <<'PY' >> "$TMP/samples.jsonl"
import json, sys
c, rnd, mode, gen, sink = sys.argv[1:6]
def load(p):
    try:
        return json.loads(open(p).read().strip().splitlines()[-1])
    except Exception:
        return {}
g, s = load(gen), load(sink)
# Whole seconds while the generator ran: drop the sink's first and last windows.
w = s.get("windows", [])
print(json.dumps({"contender": c, "round": int(rnd), "mode": mode, "sent": g.get("sent"),
    "gen_seconds": g.get("seconds"), "gen_windows": g.get("windows"),
    "sink_windows": w[1:-1] if len(w) > 2 else w, "sink": s}))
PY
    python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).read().splitlines()[-1]); w=d["sink_windows"]; print("[bench] %-28s %-8s r%d: sink %s Mpps%s" % (d["contender"], d["mode"], d["round"], " ".join("%.3f"%(x/1e6) for x in w), (" delay p50 %s us p99 %s us" % (d["sink"].get("delay_us",{}).get("p50"), d["sink"].get("delay_us",{}).get("p99"))) if d["mode"]=="latency" else ""))' "$TMP/samples.jsonl" >&2
}

if ((QUICK)); then
    CONTENDERS=(kernel xdp dpdk dpdk-geneve ipt-10-steady ipt-5000-steady ipt-5000-churn nft-5000-steady
        nft-5000-churn gw-bounce-e10-f1 gw-bounce-e10-f1-bp gw-dnat-s10-e10-f10000 gw-dnat-s5000-e10000-churn)
else
    CONTENDERS=(kernel xdp dpdk dpdk-geneve
        ipt-10-steady ipt-5000-steady ipt-10-churn ipt-5000-churn
        nft-10-steady nft-5000-steady nft-10-churn nft-5000-churn
        gw-bounce-e10-f1 gw-bounce-e10-f1-bp gw-bounce-e10-f10000 gw-bounce-e1000000-f10000
        gw-dnat-s10-e10-f1 gw-dnat-s10-e10-f10000 gw-dnat-s10000-e10-f10000
        gw-dnat-s10000-e1000000-f10000 gw-dnat-s5000-e10000-churn)
fi
if [ -n "${CONTENDERS_ONLY:-}" ]; then read -r -a CONTENDERS <<<"$CONTENDERS_ONLY"; fi
if ! command -v dpdk-testpmd >/dev/null; then
    log "dpdk-testpmd missing: skipping the dpdk contender"
    CONTENDERS=("${CONTENDERS[@]/dpdk*}")
fi

START=$(date +%s)
: > "$TMP/samples.jsonl"
: > "$TMP/busy"
for round in $(seq "$ROUNDS"); do
    for c in "${CONTENDERS[@]}"; do
        [ -n "$c" ] || continue
        start "$c"
        read -r _ u0 n0 s0 i0 w0 q0 sq0 _ < /proc/stat
        t0=$(date +%s.%N)
        measure "$c" "$round" tput
        t1=$(date +%s.%N)
        read -r _ u1 n1 s1 i1 w1 q1 sq1 _ < /proc/stat
        # Busy = 1 - idle/wall over both cores (pitfall 12).
        echo "$c $round $(python3 -c "import os,sys; i=int(sys.argv[2])-int(sys.argv[1]); w=float(sys.argv[4])-float(sys.argv[3]); print(round(1-i/(w*os.sysconf('SC_CLK_TCK')*os.cpu_count()),3))" "$i0" "$i1" "$t0" "$t1")" >> "$TMP/busy"
        if [ "$round" = 1 ]; then measure "$c" "$round" latency; fi
        if [ "$c" = gw-dnat-s10000-e1000000-f10000 ] && [ -n "$DUT_PID" ]; then
            grep VmRSS "/proc/$DUT_PID/status" | awk '{print $2}' > "$TMP/gw-rss-kb"
        fi
        stop "$c"
    done
done
# Loss and misroutes under table churn: the gateway doing DNAT (10,000 endpoints, 1,000
# services, 10,000 flows) at LOSS_RATE, without and then with a controller applying 1,000
# transactions per second over gRPC Apply (endpoints only, then endpoints and services). Loss = generated - delivered at the sink;
# misrouted = frames that came back to the generator's host (every other endpoint lives on
# the sink host) plus the gateway's drops, by reason, from its metrics.
LOSS_RATE=${LOSS_RATE:-50000}
gw_metrics() {   # the gateway's packet counters and drops, summed over workers, as JSON
    inns "$DUT" python3 -c '
import json, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9471/metrics", timeout=5).read().decode()
out, drops = {}, {}
for line in text.splitlines():
    if not line.startswith("sluice_") or " " not in line:
        continue
    name, value = line.rsplit(" ", 1)
    base = name.split("{")[0].removeprefix("sluice_").removesuffix("_total")
    if base == "drops":
        reason = name.split("reason=\"")[1].split("\"")[0]
        drops[reason] = drops.get(reason, 0) + int(float(value))
    elif base in ("rx_packets", "tx_packets", "fill_ring_empty", "tx_ring_full"):
        out[base] = out.get(base, 0) + int(float(value))
out["drops"] = {k: v for k, v in drops.items() if v}
print(json.dumps(out))' 2>/dev/null || echo '{}'
}
gen_rx() { ip netns exec "$GEN_NS" cat /sys/class/net/eth0/statistics/rx_packets; }
for mode in baseline churn-endpoints churn; do
    [ -n "${CONTENDERS_ONLY:-}" ] && [ -z "${RUN_LOSS:-}" ] && break
    start_gateway 10000 1000
    rx0=$(gen_rx)
    nsenter --net=/run/netns/"$SINK" -- "$GEN" sink --seconds $((SECS + 3)) > "$TMP/sink.json" 2>>"$TMP/sink.stderr" &
    SINK_PID=$!
    sleep 0.5
    CHURN_PID=
    if [ "$mode" != baseline ]; then
        only=; [ "$mode" = churn-endpoints ] && only=--endpoints-only
        "$GEN" churn --server "unix://$TMP/gateway.sock" --rate 1000 --seconds $((SECS + 1)) \
            --endpoints 10000 --services 1000 $only > "$TMP/churn.json" 2>>"$TMP/churn.stderr" &
        CHURN_PID=$!
    fi
    inns "$GEN_NS" "$GEN" xsk --kind geneve --world-endpoints 10000 --services 1000 --port 80 \
        --flows 10000 --rate "$LOSS_RATE" --batch 32 --seconds $((SECS + 1)) --core 0 > "$TMP/gen.json" 2>>"$TMP/gen.stderr"
    [ -z "$CHURN_PID" ] || wait "$CHURN_PID" || log "the churn controller failed: $(tail -1 "$TMP/churn.stderr")"
    wait "$SINK_PID" || true; SINK_PID=
    metrics=$(gw_metrics)
    rx1=$(gen_rx)
    python3 - "$mode" "$TMP/gen.json" "$TMP/sink.json" "$TMP/churn.json" "$((rx1 - rx0))" "$metrics" "$LOSS_RATE" <<'PY' >> "$TMP/loss.jsonl"
import json, sys
mode, gen, sink, churn, back, metrics, rate = sys.argv[1:8]
last = lambda p: json.loads(open(p).read().strip().splitlines()[-1])
g, s = last(gen), last(sink)
c = last(churn) if mode != "baseline" else None
m = json.loads(metrics)
print(json.dumps({"mode": mode, "rate_pps": int(rate), "sent": g["sent"], "delivered": s["frames"],
    "lost": g["sent"] - s["frames"], "back_at_generator": int(back), "gateway_drops": m.get("drops"), "gateway": m, "churn": c}))
PY
    log "loss $mode: $(tail -1 "$TMP/loss.jsonl")"
    stop gw-loss
    rm -f "$TMP/churn.json"
done

# RSS of the gateway with 1,000,000 endpoints and 10,000 services, idle, in quick mode too.
if [ ! -s "$TMP/gw-rss-kb" ] && { [ -z "${CONTENDERS_ONLY:-}" ] || [ -n "${RUN_RSS:-}" ]; }; then
    start_gateway 1000000 10000
    grep VmRSS "/proc/$DUT_PID/status" | awk '{print $2}' > "$TMP/gw-rss-kb"
    stop_pid "$DUT_PID"; DUT_PID=
fi
END=$(date +%s)

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
mkdir -p "$OUT"
touch "$TMP/loss.jsonl"
python3 perf/report.py --samples "$TMP/samples.jsonl" --busy "$TMP/busy" --loss "$TMP/loss.jsonl" \
    --rss-kb "$(cat "$TMP/gw-rss-kb" 2>/dev/null || echo 0)" --out "$OUT" \
    --machine "$CPU, $(nproc) cores, Linux $(uname -r)" \
    --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" --seconds $((END - START)) \
    --command "scripts/bench.sh $* (ROUNDS=$ROUNDS SECONDS_PER_RUN=$SECS)" \
    --notes "iptables binary: $IPT; conntrack UDP timeout in the DUT namespace: $CT_DEFAULT s by default, 1 s in churn runs (the host's: $HOST_CT before, $(sysctl -n net.netfilter.nf_conntrack_udp_timeout 2>/dev/null || echo none) after); dpdk: $(dpkg-query -W -f='${Version}' dpdk-dev 2>/dev/null || echo missing)"
