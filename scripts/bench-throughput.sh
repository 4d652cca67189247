#!/usr/bin/env bash
# Data-plane throughput of the gateway, each figure beside its reference in the
# same run (docs/ARCHITECTURE.md, "Performance targets"):
#
#   A  reference   device → hub's WireGuard address, two stock wireguard-go peers
#   B  ours        device (dasset-agent up) → gateway's virtual address 100.80.0.1
#   C  reference   client → device through a stock wireguard-go hub with kernel
#                  forwarding (ip_forward=1 in the hub's namespace)
#   D  ours        client (dasset-agent session open) → device (dasset-agent up)
#                  through the gateway's userspace hub (tunnel/router)
#
# Targets: B/A ≥ 0.9, D/C ≥ 1.0. TCP iperf3, client → server, over the tunnels.
#
# Two topologies of three namespaces each, built the same way, both up for the
# whole run so every round measures the pairs back to back:
#
#   rc ──veth── rh ──veth── rd     stock wireguard-go in each (UDP 51820)
#   oc ──veth── og ──veth── od     dasset-agent session open / dasset-gateway / dasset-agent up
#
# Usage: scripts/bench-throughput.sh            (after `make build`)
# Environment:
#   BIN=bin             where dasset-gateway, dasset-agent, dassetctl are
#   WG_GO=.bin/wireguard  the reference wireguard-go; when missing it is built:
#   REF_BUILD=stock     stock: `go install golang.zx2c4.com/wireguard@<go.mod's
#                       version>` (its own go.mod's x/crypto, x/sys, x/net);
#                       module: the same main package built inside this module
#                       (`go build`), i.e. with the gateway's dependency versions,
#                       into .bin/wireguard-moddeps
#   DURATION=5          seconds per iperf3 run (-t)
#   ROUNDS=3            rounds; each measures A,B,C,D for every -P
#   PARALLEL="1 4"      iperf3 -P values
#   OUT=/tmp/dasset-throughput   logs, iperf3 JSON and results.tsv
#   PROFILE=0           1: also run the gateway under scripts/throughput/pprofgw
#                       (the same daemon with a pprof listener) and save a CPU
#                       profile of each of B and D (-P 4) in $OUT
# Exit status: 0 done, 1 failed, 77 cannot run here (not root, tools missing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=${BIN:-bin}
[[ $BIN = /* ]] || BIN="$root/$BIN"
REF_BUILD=${REF_BUILD:-stock}
case $REF_BUILD in
stock) WG_GO=${WG_GO:-$root/.bin/wireguard} ;;
module) WG_GO=${WG_GO:-$root/.bin/wireguard-moddeps} ;;
*) echo "bench-throughput: REF_BUILD must be stock or module" >&2; exit 1 ;;
esac
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
PARALLEL=${PARALLEL:-1 4}
OUT=${OUT:-/tmp/dasset-throughput}
PROFILE=${PROFILE:-0}

skip() { echo "bench-throughput: skipped: $*" >&2; exit 77; }
die() { echo "bench-throughput: $*" >&2; exit 1; }
log() { printf '%s  %s\n' "$(date +%T)" "$*" >&2; }

[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, TUN devices)"
for t in ip iperf3 wg jq openssl ss timeout curl; do
  command -v "$t" >/dev/null 2>&1 || skip "$t is missing (scripts/install-deps.sh installs iperf3 and wireguard-tools)"
done
[ -c /dev/net/tun ] || skip "/dev/net/tun is missing"
for b in dasset-gateway dasset-agent dassetctl; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run make build"
done
[[ $DURATION =~ ^[0-9]+$ && $ROUNDS =~ ^[0-9]+$ && $DURATION -ge 1 && $ROUNDS -ge 1 ]] || die "DURATION and ROUNDS must be positive integers"
if [ ! -x "$WG_GO" ]; then
  v=$(go list -m -f '{{.Version}}' golang.zx2c4.com/wireguard)
  mkdir -p "$(dirname "$WG_GO")"
  if [ "$REF_BUILD" = stock ]; then
    log "building stock wireguard-go $v (go install) into $WG_GO"
    tmpbin=$(mktemp -d)
    GOBIN=$tmpbin GOFLAGS=-mod=mod go install "golang.zx2c4.com/wireguard@$v"
    mv "$tmpbin/wireguard" "$WG_GO"
    rmdir "$tmpbin"
  else
    log "building wireguard-go $v with this module's dependencies into $WG_GO"
    go build -o "$WG_GO" golang.zx2c4.com/wireguard
  fi
fi

# Names: namespaces and interfaces carry a per-run suffix; the UAPI sockets in
# /var/run/wireguard are shared by all namespaces.
suf=$(printf '%04x' $(($$ % 65536)))
NS_RC=tprc-$suf NS_RH=tprh-$suf NS_RD=tprd-$suf
NS_OC=tpoc-$suf NS_OG=tpog-$suf NS_OD=tpod-$suf
IF_RC=tprc$suf IF_RH=tprh$suf IF_RD=tprd$suf
IF_OG=tpog$suf IF_OD=tpod$suf IF_OC=tpoc$suf
MTU=1420
SN=DS-TPUT-0001 HWID=HW-TPUT-AAAA-0001 ACCOUNT=tputbench PASSWORD=tput-bench-password

case $OUT in /tmp/?* | "$root"/?*) ;; *) die "OUT=$OUT: use a directory under /tmp or the repository (it is emptied)" ;; esac
rm -rf "$OUT"
mkdir -p "$OUT"
GW_CMD=("$BIN/dasset-gateway" serve)
if [ "$PROFILE" = 1 ]; then
  go build -o "$OUT/pprofgw" ./scripts/throughput/pprofgw
  GW_CMD=("$OUT/pprofgw" --pprof 127.0.0.1:6061)
fi
work=$(mktemp -d /tmp/dasset-throughput-work.XXXXXX)
pids=()
namespaces=()

cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  for i in "$IF_RC" "$IF_RH" "$IF_RD" "$IF_OG" "$IF_OD" "$IF_OC"; do rm -f "/var/run/wireguard/$i.sock"; done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS DESCRIPTION CMD...: runs CMD every 0.1s until it succeeds.
wait_for() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "timed out after ${secs}s waiting for $what"
}

# start_bg NS LOGNAME CMD...: starts CMD in NS in the background (ip netns exec
# execs, so $! is CMD's pid).
start_bg() {
  local ns=$1 name=$2
  shift 2
  ip netns exec "$ns" "$@" >"$OUT/$name.log" 2>&1 &
  pids+=($!)
  LAST_PID=$!
}

alive() { kill -0 "$1" 2>/dev/null || die "$2 exited: $(tail -n 3 "$OUT/$2.log")"; }

netns() {
  ip netns del "$1" 2>/dev/null || true
  ip netns add "$1"
  namespaces+=("$1")
  ip -n "$1" link set lo up
}

# veth NS_A IF_A ADDR_A NS_B IF_B ADDR_B (addresses /24)
veth() {
  ip -n "$1" link add "$2" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3/24" dev "$2"
  ip -n "$4" addr add "$6/24" dev "$5"
  ip -n "$1" link set "$2" up
  ip -n "$4" link set "$5" up
  wait_for 10 "veth $4→$1" ip netns exec "$4" ping -c 1 -W 1 "$3"
}

# stock_wg NS IFNAME ADDR/LEN: a stock wireguard-go interface listening on
# 51820 with a fresh key; sets PUB to its public key and LAST_PID.
stock_wg() {
  local ns=$1 ifn=$2 addr=$3
  start_bg "$ns" "wg-$ifn" env WG_PROCESS_FOREGROUND=1 "$WG_GO" -f "$ifn"
  wait_for 10 "/var/run/wireguard/$ifn.sock" test -S "/var/run/wireguard/$ifn.sock"
  (umask 077 && wg genkey >"$work/$ifn.key")
  ip netns exec "$ns" wg set "$ifn" private-key "$work/$ifn.key" listen-port 51820
  ip -n "$ns" addr add "$addr" dev "$ifn"
  ip -n "$ns" link set "$ifn" mtu $MTU up
  PUB=$(wg pubkey <"$work/$ifn.key")
}

# iperf_server NS ADDR: a persistent iperf3 server on ADDR:5201.
iperf_server() {
  start_bg "$1" "iperf3-server-$1" iperf3 -s -B "$2"
  wait_for 10 "iperf3 server on $2 in $1" bash -c "ip netns exec $1 ss -Hltn 'sport = :5201' | grep -q 5201"
}

# cpu_ticks PID...: utime+stime (clock ticks) of each PID, space-separated.
cpu_ticks() {
  local p f out=()
  for p in "$@"; do
    # Fields after "(comm) ": state is [0], utime [11], stime [12].
    if read -r -a f < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null); then
      out+=($((f[11] + f[12])))
    else
      out+=(0)
    fi
  done
  echo "${out[*]}"
}

log "output in $OUT; stock wireguard-go: $("$WG_GO" --version | head -n 1)"

# ---------------------------------------------------------------- reference
for ns in "$NS_RC" "$NS_RH" "$NS_RD" "$NS_OC" "$NS_OG" "$NS_OD"; do netns "$ns"; done
veth "$NS_RH" tprvd 10.214.1.1 "$NS_RD" tprvh 10.214.1.2
veth "$NS_RH" tprvc 10.214.2.1 "$NS_RC" tprvh 10.214.2.2
veth "$NS_OG" tpovd 10.214.3.1 "$NS_OD" tpovg 10.214.3.2
veth "$NS_OG" tpovc 10.214.4.1 "$NS_OC" tpovg 10.214.4.2

REF_HUB=10.215.0.1 REF_DEV=10.215.0.2 REF_CLI=10.215.0.3
stock_wg "$NS_RH" "$IF_RH" $REF_HUB/24
pub_rh=$PUB pid_rh=$LAST_PID
stock_wg "$NS_RD" "$IF_RD" $REF_DEV/24
pub_rd=$PUB pid_rd=$LAST_PID
stock_wg "$NS_RC" "$IF_RC" $REF_CLI/24
pub_rc=$PUB pid_rc=$LAST_PID
ip netns exec "$NS_RH" wg set "$IF_RH" \
  peer "$pub_rd" allowed-ips $REF_DEV/32 endpoint 10.214.1.2:51820 \
  peer "$pub_rc" allowed-ips $REF_CLI/32 endpoint 10.214.2.2:51820
ip netns exec "$NS_RD" wg set "$IF_RD" peer "$pub_rh" allowed-ips 10.215.0.0/24 endpoint 10.214.1.1:51820
ip netns exec "$NS_RC" wg set "$IF_RC" peer "$pub_rh" allowed-ips 10.215.0.0/24 endpoint 10.214.2.1:51820
# The hub forwards between its two peers on the same interface; no ICMP
# redirects (the peers could not act on them anyway).
ip netns exec "$NS_RH" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
  "net.ipv4.conf.$IF_RH.send_redirects=0"
wait_for 15 "reference device → hub" ip netns exec "$NS_RD" ping -c 1 -W 1 $REF_HUB
wait_for 15 "reference client → device via the hub" ip netns exec "$NS_RC" ping -c 1 -W 1 $REF_DEV
log "reference up: hub $REF_HUB, device $REF_DEV, client $REF_CLI (stock wireguard-go)"

# ---------------------------------------------------------------------- ours
gwdir=$work/gateway
mkdir -p "$gwdir"
cat >"$gwdir/gateway.yaml" <<EOF
# written by scripts/bench-throughput.sh
data_dir: $gwdir/data
keystore_dir: $gwdir/keystore
log:
  level: info
  format: json
tunnel:
  mode: tun
  interface: $IF_OG
  listen_port: 51820
  mtu: $MTU
  uapi: true
grpc:
  listen: "0.0.0.0:8443"
admin:
  socket: $gwdir/admin.sock
metrics:
  listen: 127.0.0.1:9591
EOF
ctl() { "$BIN/dassetctl" --socket "$gwdir/admin.sock" "$@"; }
start_bg "$NS_OG" gateway "${GW_CMD[@]}" --config "$gwdir/gateway.yaml"
pid_og=$LAST_PID
wait_for 30 "gateway admin socket" ctl status
alive $pid_og gateway
fp=$(openssl x509 -in "$gwdir/data/tls.crt" -outform DER | sha256sum | cut -d' ' -f1)
printf '%s\n' "$HWID" | ctl enroll --serial $SN --hwid - >/dev/null
(umask 077; printf '%s\n' "$SN" >"$work/serial"; printf '%s\n' "$HWID" >"$work/hwid")
printf '%s\n' "$PASSWORD" | ctl accounts create $ACCOUNT --password-stdin >/dev/null

agent() { local ns=$1; shift; ip netns exec "$ns" "$BIN/dasset-agent" "$@"; }
start_bg "$NS_OD" agent-up "$BIN/dasset-agent" up --gateway 10.214.3.1:8443 --pin "$fp" \
  --serial-file "$work/serial" --hwid-file "$work/hwid" --interface "$IF_OD" --state-dir "$work/device" --log-format json
pid_od=$LAST_PID
wait_for 30 "the device's virtual address" bash -c "ip -n $NS_OD -o -4 addr show dev $IF_OD | grep -q ' 100\.'"
alive $pid_od agent-up
OUR_DEV=$(ip -n "$NS_OD" -o -4 addr show dev "$IF_OD" | awk '{print $4}' | cut -d/ -f1)
OUR_GW=100.80.0.1
wait_for 15 "device → gateway $OUR_GW" ip netns exec "$NS_OD" ping -c 1 -W 1 $OUR_GW

printf '%s\n' "$PASSWORD" | agent "$NS_OC" login --gateway 10.214.4.1:8443 --pin "$fp" \
  --account $ACCOUNT --password-stdin --state-dir "$work/client" >/dev/null
code=$(agent "$NS_OD" bind-code --gateway 10.214.3.1:8443 --pin "$fp" --state-dir "$work/device" --no-qr |
  sed -n 's/^ *Binding code: *//p')
[ -n "$code" ] || die "bind-code printed no code"
agent "$NS_OC" bind --code "$code" --state-dir "$work/client" >/dev/null
start_bg "$NS_OC" session-open "$BIN/dasset-agent" session open --serial $SN --interface "$IF_OC" \
  --state-dir "$work/client" --log-format json
pid_oc=$LAST_PID
wait_for 30 "session open to print its addresses" grep -q '^ *Expires:' "$OUT/session-open.log"
alive $pid_oc session-open
grep -q "^ *Device: *$OUR_DEV/" "$OUT/session-open.log" ||
  die "session open's device addresses are not $OUR_DEV: $(cat "$OUT/session-open.log")"
OUR_CLI=$(sed -n 's/^ *Client: *\([0-9.]*\)\/.*/\1/p' "$OUT/session-open.log")
wait_for 15 "client → device $OUR_DEV through the gateway" ip netns exec "$NS_OC" ping -c 1 -W 1 "$OUR_DEV"
log "ours up: gateway $OUR_GW, device $OUR_DEV, client $OUR_CLI (interface MTUs: device $(ip -n "$NS_OD" -o link show "$IF_OD" | sed -n 's/.* mtu \([0-9]*\).*/\1/p'), client $(ip -n "$NS_OC" -o link show "$IF_OC" | sed -n 's/.* mtu \([0-9]*\).*/\1/p'))"

iperf_server "$NS_RH" $REF_HUB
iperf_server "$NS_RD" $REF_DEV
iperf_server "$NS_OG" $OUR_GW
iperf_server "$NS_OD" "$OUR_DEV"

# ------------------------------------------------------------------ measure
# case → "client namespace, server address, tunnel processes (for CPU)"
declare -A C_NS C_DST C_PIDS C_WHAT
C_NS[A]=$NS_RD C_DST[A]=$REF_HUB C_PIDS[A]="$pid_rd $pid_rh" C_WHAT[A]="ref: device → hub, 2 stock wireguard-go"
C_NS[B]=$NS_OD C_DST[B]=$OUR_GW C_PIDS[B]="$pid_od $pid_og" C_WHAT[B]="ours: device (agent up) → gateway 100.80.0.1"
C_NS[C]=$NS_RC C_DST[C]=$REF_DEV C_PIDS[C]="$pid_rc $pid_rh $pid_rd" C_WHAT[C]="ref: client → device via stock wg-go hub + kernel forwarding"
C_NS[D]=$NS_OC C_DST[D]=$OUR_DEV C_PIDS[D]="$pid_oc $pid_og $pid_od" C_WHAT[D]="ours: client (session open) → device via the gateway's hub"

results=$OUT/results.tsv
printf 'round\tP\tcase\tgbps\tretransmits\ttunnel_cpu_s\tcpu_ns_per_byte\tload1\tcpu_s_per_process\n' >"$results"
hz=$(getconf CLK_TCK)

# measure ROUND P CASE
measure() {
  local r=$1 p=$2 c=$3 json=$OUT/iperf3-r$1-P$2-$3.json t0 t1 bps retr load
  load=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(cpu_ticks ${C_PIDS[$c]})
  if ! timeout $((DURATION + 30)) ip netns exec "${C_NS[$c]}" iperf3 -c "${C_DST[$c]}" -t "$DURATION" \
    -P "$p" -O 1 -J --connect-timeout 5000 >"$json" 2>"$json.err"; then
    die "iperf3 case $c round $r -P $p failed: $(jq -r '.error // empty' "$json" 2>/dev/null) $(cat "$json.err")"
  fi
  t1=$(cpu_ticks ${C_PIDS[$c]})
  # CPU seconds of each tunnel process, in C_PIDS order (sender end, [hub,] receiver end).
  local split
  split=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN{n = split(a, x, " "); split(b, y, " ");
    for (i = 1; i <= n; i++) printf "%s%.2f", (i > 1) ? "+" : "", (y[i] - x[i]) / hz}')
  bps=$(jq -r '.end.sum_received.bits_per_second' "$json")
  retr=$(jq -r '.end.sum_sent.retransmits // 0' "$json")
  local gbps cpu nspb bytes
  gbps=$(awk -v b="$bps" 'BEGIN{printf "%.3f", b/1e9}')
  cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN{n = split(a, x, " "); split(b, y, " ");
    for (i = 1; i <= n; i++) t += y[i] - x[i]; printf "%.2f", t / hz}')
  # CPU per byte: the CPU covers the omitted first second too (-O 1).
  bytes=$(jq -r '[.intervals[].sum.bytes] | add' "$json")
  nspb=$(awk -v c="$cpu" -v b="$bytes" 'BEGIN{printf "%.2f", (b > 0) ? c * 1e9 / b : 0}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$p" "$c" "$gbps" "$retr" "$cpu" "$nspb" "$load" "$split" >>"$results"
  log "round $r -P $p $c ${gbps} Gbit/s (retransmits $retr, tunnel processes ${cpu} s CPU ($split) = ${nspb} ns/byte, load $load)  ${C_WHAT[$c]}"
}

# Profile (PROFILE=1): one CPU profile of the gateway per case of ours.
profile() { # CASE
  local c=$1
  local secs=$((DURATION < 10 ? 10 : DURATION))
  log "profiling the gateway during case $c (-P 4, ${secs}s)"
  ip netns exec "$NS_OG" timeout $((secs + 30)) curl -s -o "$OUT/gateway-$c.pprof" \
    "http://127.0.0.1:6061/debug/pprof/profile?seconds=$secs" &
  local curl_pid=$!
  sleep 0.2
  timeout $((secs + 30)) ip netns exec "${C_NS[$c]}" iperf3 -c "${C_DST[$c]}" -t "$secs" -P 4 -J \
    >"$OUT/iperf3-profile-$c.json" 2>&1 || true
  wait $curl_pid || die "pprof fetch failed"
}

for ((r = 1; r <= ROUNDS; r++)); do
  for p in $PARALLEL; do
    # Alternate which of each pair goes first.
    if ((r % 2)); then order="A B C D"; else order="B A D C"; fi
    for c in $order; do measure "$r" "$p" "$c"; done
  done
done
ip netns exec "$NS_OG" curl -s --max-time 10 http://127.0.0.1:9591/metrics >"$OUT/gateway-metrics.txt" ||
  log "could not fetch the gateway's /metrics"
if [ "$PROFILE" = 1 ]; then
  profile B
  profile D
  log "profiles: go tool pprof -top $OUT/pprofgw $OUT/gateway-B.pprof (and gateway-D.pprof)"
fi

# ------------------------------------------------------------------- report
echo
echo "Throughput (TCP, iperf3 -t $DURATION, Gbit/s received; tunnel CPU = CPU seconds of the"
echo "WireGuard processes of the path during the run). $(date -u +%FT%TZ), $(nproc) CPUs"
echo "($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), Linux $(uname -r), $(iperf3 --version | head -n 1 | cut -d' ' -f1-2)."
echo
awk -F'\t' -v rounds="$ROUNDS" -v plist="$PARALLEL" '
  NR == 1 { next }
  { g[$2, $3, $1] = $4; cpu[$2, $3, $1] = $7 }
  # median of the n values in v[1..n]
  function median(v, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function med(arr_is_cpu, p, c,   i, v) {
    for (i = 1; i <= rounds; i++) v[i] = arr_is_cpu ? cpu[p, c, i] : g[p, c, i]
    return median(v, rounds)
  }
  function pair(p, ref, ours, name, target,   i, rr, line, mr, mo, ratio, verdict, rs, mrr) {
    line = ""
    for (i = 1; i <= rounds; i++) {
      rr = 0
      if (g[p, ref, i] > 0) rr = g[p, ours, i] / g[p, ref, i]
      rs[i] = rr
      line = line sprintf("%s%.2f", (i > 1) ? " " : "", rr)
    }
    mrr = median(rs, rounds)
    mr = med(0, p, ref); mo = med(0, p, ours)
    ratio = 0
    if (mr > 0) ratio = mo / mr
    verdict = "MISS"
    if (mrr >= target) verdict = "ok"
    printf "| %-24s | %s | %6.2f | %6.2f | %5.2f | **%.2f** %s | %s | %.1f / %.1f | ≥ %.1f |\n", name, p, mr, mo, ratio, mrr, verdict, line, med(1, p, ref), med(1, p, ours), target
  }
  END {
    print "| path | -P | ref Gbit/s | ours Gbit/s | ratio of medians | median ratio | ratio per round | tunnel CPU ns/byte ref / ours | target |"
    print "|---|---|---|---|---|---|---|---|---|"
    np = split(plist, pl, " ")
    for (i = 1; i <= np; i++) pair(pl[i], "A", "B", "device → gateway (B/A)", 0.9)
    for (i = 1; i <= np; i++) pair(pl[i], "C", "D", "client → device (D/C)", 1.0)
    print ""
    print "Gbit/s and CPU: medians over the rounds. ratio per round: ours/ref of the two runs"
    print "measured back to back; median ratio (the verdict): their median. tunnel CPU: CPU time"
    print "of the WireGuard processes on the path (both ends, and the hub) per byte sent."
  }' "$results"
echo
echo "Per run (results.tsv):"
column -t -s$'\t' "$results"
echo
echo "The gateway's non-zero drop counters after the runs (gateway-metrics.txt):"
grep -E '^dasset_gateway_[a-z_]*drop' "$OUT/gateway-metrics.txt" | awk '$NF != 0' || echo "  (none)"
