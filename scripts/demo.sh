#!/usr/bin/env bash
# Sluice's main job on one machine: a cluster of network namespaces with two gateways,
# three workers and the controller, two tenants with the same addresses, pods attached by
# the real CNI shim, and traffic that shows what the overlay does. Every step is checked;
# the script exits non-zero when any expectation fails, so it doubles as a test.
#
# Usage (as root):
#   scripts/demo.sh              set up the machine, build (release), run the demo
#   scripts/demo.sh --no-build   skip setup and build: use the binaries in $SLUICE_BIN
#                                (default target/release)
#   scripts/demo.sh --e2e        also the end-to-end checks: a tshark decode of the
#                                underlay's Geneve, a gateway killed and restarted, the
#                                controller killed and restarted (scripts/test.sh runs this)
#
# The demo must finish in under two minutes after the build: the summary has a check that
# fails past 120 s (SLUICE_DEMO_LIMIT_S), timed from the end of the build to the summary,
# without the --e2e checks (the demo is the plain run) and without SLUICE_DEMO_HOLD.
#
# What it creates, all named sd-<pid>-* and removed on exit (even on failure): an underlay
# bridge namespace (198.18.0.0/24, inside 198.18.0.0/15), gateway namespaces gw1 and gw2
# running sluice-gateway, worker namespaces w1..w3 running sluice-node, pod namespaces, a
# temporary directory for sockets, stores and logs, and the workers' bpffs pins. The
# controller runs as a process in the root namespace, reached over a Unix socket. Only
# processes the script started are stopped, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

build=1
e2e=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --e2e) e2e=1 ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "demo: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
[[ $(id -u) == 0 ]] || { echo "demo: run as root (namespaces, XDP)" >&2; exit 1; }

bold=$'\033[1m' green=$'\033[32m' red=$'\033[31m' dim=$'\033[2m' off=$'\033[0m'
if [[ ! -t 1 ]]; then bold='' green='' red='' dim='' off=''; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
say() { printf '   %s\n' "$*"; }

if ((build)); then
  step "setup and release build"
  scripts/setup.sh
  scripts/build-release.sh
fi
bin=${SLUICE_BIN:-$repo/target/release}
for b in sluice-gateway sluice-controller sluicectl sluice-node sluice-cni; do
  [[ -x $bin/$b ]] || { echo "demo: $bin/$b is missing: run scripts/build-release.sh (or drop --no-build)" >&2; exit 1; }
done
for tool in jq curl bpftool nsenter python3; do
  command -v "$tool" >/dev/null || { echo "demo: $tool is missing: run scripts/setup.sh" >&2; exit 1; }
done
((e2e)) && { command -v tshark >/dev/null || { echo "demo: tshark is missing: run scripts/setup.sh" >&2; exit 1; }; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }
started=$(now_ms)
limit_s=${SLUICE_DEMO_LIMIT_S:-120}
uncounted_ms=0 # the --e2e checks and a hold: not part of the demo's two minutes
# The interpreter itself, not a wrapper (pyenv's shims fork): $! must be the server.
python=$(python3 -c 'import sys; print(sys.executable)')
P=sd-$$
work=$(mktemp -d /tmp/sluice-demo.XXXXXX)
namespaces=()
pids=()
pins=()

cleanup() {
  local rc=$?
  set +e
  # Our own processes only, by PID: TERM, a moment, then KILL.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 20); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null; done
  for pin in "${pins[@]}"; do rm -rf "$pin"; done
  if ((rc != 0)) && [[ -d $work ]]; then
    echo "demo: failed; the last lines of each log:" >&2
    for f in "$work"/*.log; do
      [[ -s $f ]] && { echo "--- $(basename "$f")" >&2; tail -n 5 "$f" >&2; }
    done
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- checks and the summary table ---------------------------------------------------------
# ok CMD...: prints 0 when CMD succeeds, 1 when it fails (without tripping set -e).
ok() { if "$@"; then echo 0; else echo 1; fi; }
results=()
failures=0
# check NAME DETAIL STATUS(0 = pass)
record() {
  local name=$1 detail=$2 status=$3
  if ((status == 0)); then
    results+=("PASS|$name|$detail")
    printf '   %s✓%s %s %s(%s)%s\n' "$green" "$off" "$name" "$dim" "$detail" "$off"
  else
    results+=("FAIL|$name|$detail")
    failures=$((failures + 1))
    printf '   %s✗ %s (%s)%s\n' "$red" "$name" "$detail" "$off"
  fi
}

# -- namespaces ---------------------------------------------------------------------------
# Runs a command in a namespace (nsenter keeps bpffs visible, PLATFORM.md pitfall 2).
# Background processes call nsenter directly, so that $! is the process itself (nsenter
# execs it) and not a subshell: cleanup kills exactly what it started.
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }
new_ns() {
  ip netns add "$1"
  namespaces+=("$1")
  in_ns "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
  ip -n "$1" link set lo up
}
# plug NS NAME ADDR MAC: eth0 in NS on the underlay bridge (one queue; GRO on the bridge
# port so that XDP-redirected frames arrive, PLATFORM.md pitfall 5).
plug() {
  local ns=$1 port=u-$2 addr=$3 mac=$4
  ip -n "$ns" link add eth0 numtxqueues 1 numrxqueues 1 type veth peer name "$port" \
    netns "$P-br" numtxqueues 1 numrxqueues 1
  ip -n "$ns" link set eth0 address "$mac"
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$P-br" link set "$port" master br0 up
  in_ns "$P-br" ethtool -K "$port" gro on >/dev/null
}
wait_for_socket() { # PATH PID WHAT
  for _ in $(seq 200); do
    [[ -S $1 ]] && return 0
    kill -0 "$2" 2>/dev/null || { echo "demo: $3 exited: $(tail -n 3 "$work/$3.log")" >&2; return 1; }
    sleep 0.05
  done
  echo "demo: $3 did not open $1" >&2
  return 1
}

ctl() { "$bin/sluicectl" --controller "unix://$work/controller.sock" "$@"; }

# -- gateways -----------------------------------------------------------------------------
declare -A gw_ip=([gw1]=198.18.0.1 [gw2]=198.18.0.2)
declare -A gw_mac=([gw1]=02:00:00:00:00:01 [gw2]=02:00:00:00:00:02)
declare -A gw_pid=() gw_metrics=([gw1]=9471 [gw2]=9471)
cpus=$(cat /sys/devices/system/cpu/online)
first_cpu=${cpus%%[-,]*}
last_cpu=${cpus##*[-,]}
gateway_config() { # NAME
  cat >"$work/$1.toml" <<EOF
[cores]
control = "$first_cpu"
workers = "$last_cpu"

[[interfaces]]
name = "eth0"
ip = "${gw_ip[$1]}"
mac = "${gw_mac[$1]}"
queues = "0"

[umem]
frame_size = 4096
frame_count = 4096

[rings]
rx = 1024
tx = 1024
fill = 2048
completion = 2048

[control]
grpc = "unix://$work/$1.sock"
metrics = "127.0.0.1:${gw_metrics[$1]}"
EOF
}
start_gateway() { # NAME
  rm -f "$work/$1.sock"
  nsenter --net="/run/netns/$P-$1" -- "$bin/sluice-gateway" --config "$work/$1.toml" >>"$work/$1.log" 2>&1 &
  gw_pid[$1]=$!
  pids+=("$!")
  wait_for_socket "$work/$1.sock" "$!" "$1"
}
# Packets the gateway's workers received (its Prometheus metrics, inside its namespace).
gw_rx() { # NAME
  in_ns "$P-$1" curl -sf --max-time 2 "http://127.0.0.1:${gw_metrics[$1]}/metrics" \
    | awk '/^sluice_rx_packets_total/ {s += $NF} END {printf "%d", s}'
}
gws_rx() { echo $(($(gw_rx gw1) + $(gw_rx gw2))); }

# -- workers ------------------------------------------------------------------------------
declare -A w_ip=([w1]=198.18.0.11 [w2]=198.18.0.12 [w3]=198.18.0.13)
declare -A w_mac=([w1]=02:00:00:00:00:11 [w2]=02:00:00:00:00:12 [w3]=02:00:00:00:00:13)
start_node() { # NAME
  local w=$1
  mkdir -p "$work/$w"
  cat >"$work/$w/node.toml" <<EOF
node = "$w"
underlay_interface = "eth0"
pin_dir = "/sys/fs/bpf/$P-$w"
socket = "$work/$w/node.sock"
state_dir = "$work/$w/state"
controller = "unix://$work/controller.sock"
EOF
  pins+=("/sys/fs/bpf/$P-$w")
  nsenter --net="/run/netns/$P-$w" -- "$bin/sluice-node" --config "$work/$w/node.toml" >>"$work/$w.log" 2>&1 &
  pids+=("$!")
  wait_for_socket "$work/$w/node.sock" "$!" "$w"
}
host_cache() { # WORKER: entries in its transit stub's host cache
  bpftool -j map dump pinned "/sys/fs/bpf/$P-$1/host_cache" | jq length
}

# -- controller ---------------------------------------------------------------------------
start_controller() {
  rm -f "$work/controller.sock"
  "$bin/sluice-controller" --store "$work/controller.redb" \
    --listen "unix://$work/controller.sock" --check-interval-ms 300 >>"$work/controller.log" 2>&1 &
  controller_pid=$!
  pids+=("$!")
  wait_for_socket "$work/controller.sock" "$!" controller
}

# -- pods ---------------------------------------------------------------------------------
declare -A pod_ip=() pod_worker=() pod_net=()
# The network config a runtime passes for the conflist's one plugin: the conflist's
# cniVersion and name, the plugin's fields, this worker's socket, the pod's network.
netconf() { # WORKER NETWORK
  jq -c --arg socket "$work/$1/node.sock" --arg network "$2" \
    '{cniVersion, name} + .plugins[0] + {socket: $socket, network: $network}' \
    config/10-sluice.conflist
}
# cni COMMAND POD: runs the real sluice-cni as a container runtime would.
cni() {
  local cmd=$1 pod=$2 w=${pod_worker[$2]}
  netconf "$w" "${pod_net[$pod]}" | env -i PATH="$PATH" CNI_COMMAND="$cmd" \
    CNI_CONTAINERID="$P-$pod" CNI_NETNS="/run/netns/$P-$pod" CNI_IFNAME=eth0 \
    CNI_PATH=/opt/cni/bin CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod" \
    "$bin/sluice-cni"
}
add_pod() { # POD WORKER NETWORK
  pod_worker[$1]=$2
  pod_net[$1]=$3
  new_ns "$P-$1"
  local out
  out=$(cni ADD "$1") || { echo "demo: ADD $1 failed: $out" >&2; return 1; }
  pod_ip[$1]=$(jq -r '.ips[0].address | split("/")[0]' <<<"$out")
  printf '   %-6s on %s in %-12s %s\n' "$1" "$2" "$3" "${pod_ip[$1]}"
}
serve() { # POD PORT: the pod answers TCP on PORT with its name
  nsenter --net="/run/netns/$P-$1" -- "$python" "$repo/scripts/demo/serve.py" "$1" "$2" >>"$work/serve.log" 2>&1 &
  pids+=("$!")
}
# ping_ok POD DST COUNT: COUNT replies within 5 s (a first ARP lost to a busy machine is
# retried after 1 s, so the deadline tolerates it).
ping_ok() {
  in_ns "$P-$1" ping -q -c "$3" -i 0.05 -w 5 "$2" >/dev/null 2>&1
}
# ping_none POD DST: true when two pings get no reply at all.
ping_none() {
  ! in_ns "$P-$1" ping -q -c 2 -i 0.2 -W 1 "$2" >/dev/null 2>&1
}
# tcp POD DST PORT: what the server answered ("NAME CLIENT-ADDRESS"), empty when nothing.
tcp() {
  in_ns "$P-$1" timeout 5 bash -c "exec 3<>/dev/tcp/$2/$3 && head -n 1 <&3" 2>/dev/null || true
}
wait_tcp_listen() { # POD PORT
  for _ in $(seq 100); do
    in_ns "$P-$1" ss -Hltn "sport = :$2" | grep -q LISTEN && return 0
    sleep 0.05
  done
  return 1
}

###########################################################################################
step "1. the underlay: a bridge, two gateway hosts, three worker hosts (198.18.0.0/24)"
new_ns "$P-br"
for t in iptables ip6tables arptables; do in_ns "$P-br" sysctl -qw "net.bridge.bridge-nf-call-$t=0" 2>/dev/null || true; done
ip -n "$P-br" link add br0 type bridge
ip -n "$P-br" link set br0 up
for g in gw1 gw2; do new_ns "$P-$g"; plug "$P-$g" "$g" "${gw_ip[$g]}" "${gw_mac[$g]}"; say "$g ${gw_ip[$g]}"; done
for w in w1 w2 w3; do new_ns "$P-$w"; plug "$P-$w" "$w" "${w_ip[$w]}" "${w_mac[$w]}"; say "$w ${w_ip[$w]}"; done

step "2. sluice-gateway on gw1 and gw2; the controller; gateways registered with sluicectl"
for g in gw1 gw2; do gateway_config "$g"; start_gateway "$g"; done
say "gateways: pids ${gw_pid[gw1]} ${gw_pid[gw2]} (control core $first_cpu, worker core $last_cpu)"
start_controller
say "controller: pid $controller_pid, store $work/controller.redb"
for g in gw1 gw2; do
  cat <<EOF
---
apiVersion: sluice.dev/v1alpha1
kind: Gateway
metadata:
  name: $g
spec:
  ip: ${gw_ip[$g]}
  mac: "${gw_mac[$g]}"
  control: unix://$work/$g.sock
EOF
done >"$work/gateways.yaml"
ctl apply -f "$work/gateways.yaml" | sed 's/^/   /'

step "3. tenants: two VPCs with the same CIDR, two subnets in blue, a service (config/demo-cluster.yaml)"
ctl apply -f config/demo-cluster.yaml | sed 's/^/   /'
ctl get vpcs | sed 's/^/   /'
ctl get subnets | sed 's/^/   /'

step "4. sluice-node on w1, w2, w3 (they register with the controller)"
for w in w1 w2 w3; do start_node "$w"; done
ctl get nodes | sed 's/^/   /'

step "5. pods attached through the real CNI shim (sluice-cni ADD, as a runtime runs it)"
add_pod a1 w1 blue/blue-a
add_pod a2 w2 blue/blue-a
add_pod b1 w2 blue/blue-b
add_pod r1 w1 red/red-a
add_pod r2 w3 red/red-a
add_pod web-0 w1 blue/blue-b
add_pod web-1 w2 blue/blue-b
add_pod web-2 w3 blue/blue-b
for p in a2 b1 r2; do serve "$p" 7000; done
for p in web-0 web-1 web-2; do serve "$p" 8080; done
for p in a2 b1 r2 web-0 web-1 web-2; do wait_tcp_listen "$p" "$([[ $p == web-* ]] && echo 8080 || echo 7000)"; done
ctl get services | sed 's/^/   /'

step "6. first packets via the bouncer, the rest direct (a1 on w1 -> a2 on w2)"
rx0=$(gws_rx)
first=$(ok ping_ok a1 "${pod_ip[a2]}" 3)
sleep 0.3 # the gateways publish counters every 100 ms
rx1=$(gws_rx)
cache_w1=$(host_cache w1)
cache_w2=$(host_cache w2)
record "first exchange through a gateway" "gateways received $((rx1 - rx0)) packets for ping -c 3" \
  $((first != 0 || rx1 <= rx0))
record "hosts cached from HOST_HINT/DIRECT" "host cache entries: w1 $cache_w1, w2 $cache_w2" \
  $((cache_w1 < 1 || cache_w2 < 1))
later=$(ok ping_ok a1 "${pod_ip[a2]}" 20)
sleep 0.3
rx2=$(gws_rx)
record "later packets direct, worker to worker" "20 pings, gateways received $((rx2 - rx1))" \
  $((later != 0 || rx2 != rx1))

step "7. within a subnet and across subnets (blue)"
record "ping within blue-a" "a1 ${pod_ip[a1]} -> a2 ${pod_ip[a2]}" "$(ok ping_ok a1 "${pod_ip[a2]}" 3)"
answer=$(tcp a1 "${pod_ip[a2]}" 7000)
record "TCP within blue-a" "a2:7000 answered \"$answer\"" $([[ $answer == "a2 ${pod_ip[a1]}" ]]; echo $?)
record "ping across subnets" "a1 (blue-a) -> b1 ${pod_ip[b1]} (blue-b)" "$(ok ping_ok a1 "${pod_ip[b1]}" 3)"
answer=$(tcp a1 "${pod_ip[b1]}" 7000)
record "TCP across subnets" "b1:7000 answered \"$answer\"" $([[ $answer == "b1 ${pod_ip[a1]}" ]]; echo $?)

step "8. isolation: red and blue hold the same addresses; nothing crosses"
say "a1 (blue) and r1 (red) both have ${pod_ip[a1]} / ${pod_ip[r1]}; a2 (blue) and r2 (red) ${pod_ip[a2]} / ${pod_ip[r2]}"
same=$([[ ${pod_ip[a1]} == "${pod_ip[r1]}" && ${pod_ip[a2]} == "${pod_ip[r2]}" ]]; echo $?)
record "overlapping addresses allocated" "blue and red pods share addresses" "$same"
answer=$(tcp r1 "${pod_ip[r2]}" 7000)
record "red reaches red at a shared address" "r1 -> ${pod_ip[r2]}:7000 answered \"$answer\"" \
  $([[ $answer == "r2 ${pod_ip[r1]}" ]]; echo $?)
answer=$(tcp a1 "${pod_ip[a2]}" 7000)
record "blue reaches blue at the same address" "a1 -> ${pod_ip[a2]}:7000 answered \"$answer\"" \
  $([[ $answer == "a2 ${pod_ip[a1]}" ]]; echo $?)
record "red cannot reach a blue-only address" "r1 -> ${pod_ip[b1]}: no reply" "$(ok ping_none r1 "${pod_ip[b1]}")"
answer=$(tcp r1 "${pod_ip[b1]}" 7000)
record "red gets no TCP from blue" "r1 -> ${pod_ip[b1]}:7000: \"$answer\"" $([[ -z $answer ]]; echo $?)

step "9. the service web (VIP 10.96.0.10:80 -> targetPort 8080 on web-0, web-1, web-2)"
declare -A seen=()
for i in $(seq 30); do
  answer=$(tcp a1 10.96.0.10 80)
  [[ -n $answer ]] && seen[${answer%% *}]=$((${seen[${answer%% *}]:-0} + 1))
done
spread=""
for b in web-0 web-1 web-2; do spread+="$b ${seen[$b]:-0}, "; done
record "service answers from all three backends" "30 connections from a1: ${spread%, }" \
  $([[ ${#seen[@]} == 3 && -n ${seen[web-0]:-} && -n ${seen[web-1]:-} && -n ${seen[web-2]:-} ]]; echo $?)
answer=$(tcp r1 10.96.0.10 80)
record "the service is blue's only" "r1 (red) -> 10.96.0.10:80: \"$answer\"" $([[ -z $answer ]]; echo $?)
say "per-backend packets at the gateways (sluice_backend_packets_total):"
for g in gw1 gw2; do
  in_ns "$P-$g" curl -sf --max-time 2 "http://127.0.0.1:${gw_metrics[$g]}/metrics" \
    | awk -v g="$g" '/^sluice_backend_packets_total/ && $NF > 0 {match($0, /backend="[^"]*"/); printf "     %s %s %s\n", g, substr($0, RSTART, RLENGTH), $NF}'
done

###########################################################################################
if ((e2e)); then
  e2e_started=$(now_ms)
  blue_vni=$(ctl get vpcs -o json | jq -r '.items[] | select(.metadata.name == "blue") | .status.vni')
  red_vni=$(ctl get vpcs -o json | jq -r '.items[] | select(.metadata.name == "red") | .status.vni')

  step "E1. tshark decodes the underlay's Geneve and Sluice's options (wire contract)"
  ports=()
  for h in gw1 gw2 w1 w2 w3; do ports+=(-i "u-$h"); done
  nsenter --net="/run/netns/$P-br" -- tshark -q -a duration:60 "${ports[@]}" -f "udp port 6081" -w "$work/underlay.pcapng" >>"$work/tshark.log" 2>&1 &
  tshark_pid=$!
  pids+=("$!")
  for _ in $(seq 100); do grep -q "Capturing on" "$work/tshark.log" 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  # A fresh ARP (answered by a bouncer with HOST_HINT), pings that then go direct (DIRECT),
  # and a service connection (SERVICE_ORIG towards the backend's worker).
  ip -n "$P-a1" neigh flush dev eth0
  in_ns "$P-a1" ip neigh del "${pod_ip[b1]}" dev eth0 2>/dev/null || true
  ping_ok a1 "${pod_ip[a2]}" 5 || true
  tcp a1 10.96.0.10 80 >/dev/null
  ping_ok r1 "${pod_ip[r2]}" 3 || true
  sleep 0.5
  # TERM, not INT: background jobs of a script start with SIGINT ignored.
  kill -TERM "$tshark_pid"
  wait "$tshark_pid" 2>/dev/null || true
  fields=(-e geneve.version -e geneve.vni -e geneve.proto_type -e geneve.option.class
    -e geneve.option.type -e geneve.option.length -e geneve.option.unknown.data)
  tshark -r "$work/underlay.pcapng" -Y geneve -T fields -E separator='|' -E occurrence=a \
    -E aggregator=, "${fields[@]}" >"$work/geneve.txt" 2>>"$work/tshark.log" || true
  frames=$(wc -l <"$work/geneve.txt")
  say "$frames Geneve frames decoded; a sample (version|VNI|protocol|class|type|length|data):"
  sort -u -t'|' -k2,6 "$work/geneve.txt" | head -n 6 | sed 's/^/     /'
  bad_proto=$(awk -F'|' '$3 != "0x6558" && $3 != "0x00006558"' "$work/geneve.txt" | wc -l)
  record "Geneve version 0, protocol 0x6558" "$frames frames, $bad_proto with another protocol" \
    $((frames == 0 || bad_proto != 0))
  vnis=" "
  while IFS='|' read -r _ vni _; do
    vni=$((16#${vni#0x}))
    [[ $vnis == *" $vni "* ]] || vnis+="$vni "
  done <"$work/geneve.txt"
  record "VNIs are the VPCs' own" "seen:${vnis% }; blue $blue_vni, red $red_vni" \
    $([[ $vnis == " $blue_vni $red_vni " || $vnis == " $red_vni $blue_vni " ]]; echo $?)
  # Options per frame, as "class:type:length" triples. tshark lists the header's total
  # options length first, then each option's length in bytes, its 4-byte header included.
  opts=$(awk -F'|' '{n = split($4, c, ","); split($5, t, ","); split($6, l, ","); for (i = 1; i <= n; i++) print c[i] ":" t[i] ":" l[i + 1]}' "$work/geneve.txt" | sort | uniq -c | sed 's/^ *//')
  say "options seen (count class:type:length):"
  sed 's/^/     /' <<<"$opts"
  has_opt() { grep -Eq "^[0-9]+ 0xff01:$1:$2\$" <<<"$opts"; }
  record "HOST_HINT: class 0xFF01, type 0x01, 8-byte body" "endpoint IPv4, host IPv4" "$(ok has_opt "0x0?1" 12)"
  hint_hex=$(printf '%02x' ${pod_ip[a2]//./ } ${w_ip[w2]//./ })
  record "HOST_HINT says a2 lives on w2" "option data $hint_hex" "$(ok grep -q "$hint_hex" "$work/geneve.txt")"
  record "DIRECT: class 0xFF01, type 0x02, no body" "worker to worker" "$(ok has_opt "0x0?2" 4)"
  record "SERVICE_ORIG: class 0xFF01, type 0x03, 8-byte body" "VIP, port, protocol, padding" "$(ok has_opt "0x0?3" 12)"
  vip_hex=$(printf '0a60000a0050%02x' 6)
  record "SERVICE_ORIG carries 10.96.0.10:80/TCP" "option data $vip_hex.." "$(ok grep -q "$vip_hex" "$work/geneve.txt")"

  step "E2. a gateway killed and restarted: forwarding returns once the controller re-syncs it"
  victim=$(ctl get subnets -o json | jq -r '.items[] | select(.metadata.name == "blue-a") | .status.bouncerGateways[0]')
  boot_before=$(ctl get gateways -o json | jq -r --arg g "$victim" '.items[] | select(.metadata.name == $g) | .status.bootId')
  say "blue-a's bouncer is $victim (boot id $boot_before); SIGKILL it"
  kill -KILL "${gw_pid[$victim]}"
  wait "${gw_pid[$victim]}" 2>/dev/null || true
  add_pod a3 w3 blue/blue-a
  t0=$(now_ms)
  # Another metrics port: the old one may still be in TIME_WAIT from our scrapes.
  gw_metrics[$victim]=9472
  gateway_config "$victim"
  start_gateway "$victim"
  synced=1
  for _ in $(seq 200); do
    state=$(ctl get gateways -o json | jq -r --arg g "$victim" '.items[] | select(.metadata.name == $g) | "\(.status.bootId) \(.status.inSync)"')
    if [[ ${state% *} != "$boot_before" && ${state#* } == true ]]; then synced=0; break; fi
    sleep 0.1
  done
  record "the controller re-synced the restarted gateway" "new boot id ${state% *}, in sync $(($(now_ms) - t0)) ms after the restart" $synced
  record "forwarding restored" "a1 -> a3 ${pod_ip[a3]} through the restarted $victim" "$(ok ping_ok a1 "${pod_ip[a3]}" 3)"
  answer=$(tcp a1 "${pod_ip[b1]}" 7000)
  record "cross-subnet TCP after the restart" "b1:7000 answered \"$answer\"" $([[ $answer == "b1 ${pod_ip[a1]}" ]]; echo $?)

  step "E3. the controller crashes (SIGKILL) and restarts: no allocation lost, new pods do not collide"
  endpoints() { ctl get endpoints -o json | jq -r '.items[] | "\(.spec.podName) \(.spec.vpc) \(.spec.ip)"' | sort; }
  # The last allocation before the crash is the one most at risk: a4's ADD has just been
  # answered when the controller dies, with no chance to flush or close its store.
  add_pod a4 w2 blue/blue-a
  before=$(endpoints)
  say "$(wc -l <<<"$before") endpoints before; SIGKILL the controller (pid $controller_pid)"
  kill -KILL "$controller_pid"
  wait "$controller_pid" 2>/dev/null || true
  start_controller
  after=$(endpoints)
  record "every allocation kept across a crash" "$(wc -l <<<"$after") endpoints after, identical" $([[ $before == "$after" ]]; echo $?)
  record "the last one too" "a4 blue ${pod_ip[a4]}" "$(ok grep -qx "a4 blue ${pod_ip[a4]}" <<<"$after")"
  add_pod a5 w3 blue/blue-a
  clash=$(grep -c " blue ${pod_ip[a5]}\$" <<<"$before" || true)
  record "a new pod gets a fresh address" "a5 ${pod_ip[a5]} (in use before: $clash)" $((clash != 0))
  record "the new pod is reachable" "a1 -> a5 ${pod_ip[a5]}" "$(ok ping_ok a1 "${pod_ip[a5]}" 3)"
  uncounted_ms=$((uncounted_ms + $(now_ms) - e2e_started))
fi

###########################################################################################
# For a look at a failed run: SLUICE_DEMO_HOLD=SECONDS keeps everything that long.
if ((failures)) && [[ -n ${SLUICE_DEMO_HOLD:-} ]]; then
  echo "demo: holding for ${SLUICE_DEMO_HOLD}s: namespaces $P-*, directory $work" >&2
  held=$(now_ms)
  sleep "$SLUICE_DEMO_HOLD"
  uncounted_ms=$((uncounted_ms + $(now_ms) - held))
fi
step "10. pods deleted through the shim (sluice-cni DEL); the controller releases every address"
for p in "${!pod_worker[@]}"; do cni DEL "$p" >/dev/null || record "DEL $p" "sluice-cni DEL failed" 1; done
left=$(ctl get endpoints -o json | jq '.items | length')
record "every address released" "$left endpoints left" $((left != 0))

total_ms=$(($(now_ms) - started))
demo_ms=$((total_ms - uncounted_ms))
timing="$((demo_ms / 1000)).$((demo_ms % 1000 / 100)) s from the end of the build to the summary"
((e2e)) && timing+="; the --e2e checks' $((uncounted_ms / 1000)) s not counted"
record "the demo finished in under $limit_s s" "$timing" $((demo_ms >= limit_s * 1000))

step "summary ($((total_ms / 1000)) s after the build)"
printf '   %-6s %-46s %s\n' RESULT CHECK DETAIL
for r in "${results[@]}"; do
  IFS='|' read -r res name detail <<<"$r"
  color=$green; [[ $res == FAIL ]] && color=$red
  printf '   %s%-6s%s %-46s %s\n' "$color" "$res" "$off" "$name" "$detail"
done
echo
if ((failures)); then
  echo "${red}${failures} of ${#results[@]} checks failed${off}"
  exit 1
fi
echo "${green}all ${#results[@]} checks passed${off}; cleaning up"
