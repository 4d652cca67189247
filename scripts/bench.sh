#!/usr/bin/env bash
# Boot storm against a real gateway beside its reference, in the same run.
#
#   scripts/bench.sh [DEVICES [CONCURRENCY]]     (defaults 2000 256)
#   BENCH_DEVICES=10000 make bench               (the figure of docs/ARCHITECTURE.md)
#
# Starts a netstack gateway (no TUN, no root needed) on free loopback ports
# with its data in a temporary directory, runs `dasset-bench baseline` (a bare
# TLS gRPC server with the same TLS setup) and `dasset-bench bootstorm`
# against the gateway with the same N and C, and prints both summaries and a
# side-by-side table. The JSON files are kept in $BENCH_OUT (default
# /tmp/dasset-bench) as baseline.json and bootstorm.json.
set -euo pipefail

BIN=${BIN:-bin}
N=${1:-${BENCH_DEVICES:-2000}}
C=${2:-${BENCH_CONCURRENCY:-256}}
OUT=${BENCH_OUT:-/tmp/dasset-bench}
mkdir -p "$OUT"

work=$(mktemp -d /tmp/dasset-bench-gw.XXXXXX)
gw_pid=
cleanup() {
	if [[ -n $gw_pid ]]; then
		kill "$gw_pid" 2>/dev/null || true
		wait "$gw_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

read -r grpc_port metrics_port wg_port < <("$BIN/dasset-bench" free-ports --tcp 2 --udp 1)
cat >"$work/gateway.yaml" <<EOF
data_dir: $work/data
tunnel:
  mode: netstack
  listen_port: $wg_port
  uapi: false
grpc:
  listen: 127.0.0.1:$grpc_port
admin:
  socket: $work/admin.sock
metrics:
  listen: 127.0.0.1:$metrics_port
# The boot storm sends every fresh device from one loopback source: lift the
# per-source and global buckets so the gateway's own cost is measured.
throttle:
  source_rate: 1000000
  source_burst: 1000000
  global_rate: 1000000
  global_burst: 1000000
EOF

"$BIN/dasset-gateway" serve --config "$work/gateway.yaml" >"$OUT/gateway.log" 2>&1 &
gw_pid=$!
for _ in $(seq 1 100); do
	curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break
	kill -0 "$gw_pid" 2>/dev/null || { echo "gateway exited:"; cat "$OUT/gateway.log"; exit 1; }
	sleep 0.1
done
curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null || { echo "gateway not ready after 10s"; cat "$OUT/gateway.log"; exit 1; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); devices=$N concurrency=$C"
echo "== baseline (bare TLS gRPC server, Login does nothing)"
"$BIN/dasset-bench" baseline --devices "$N" --concurrency "$C" | tee "$OUT/baseline.json"
echo "== bootstorm (netstack gateway pid $gw_pid)"
"$BIN/dasset-bench" bootstorm --gateway "127.0.0.1:$grpc_port" --cert "$work/data/tls.crt" \
	--enroll-socket "$work/admin.sock" --pid "$gw_pid" \
	--devices "$N" --concurrency "$C" | tee "$OUT/bootstorm.json"
echo "== gateway Go runtime after the storm (from /metrics)"
curl -sf "http://127.0.0.1:$metrics_port/metrics" |
	grep -E '^(go_goroutines|go_memstats_heap_alloc_bytes|go_memstats_heap_inuse_bytes|go_memstats_sys_bytes|process_resident_memory_bytes) ' |
	awk '$1 == "go_goroutines" { printf "  %-32s %12d\n", $1, $2; next } { printf "  %-32s %12.0f KiB\n", $1, $2/1024 }' || true
echo "== side by side"
"$BIN/dasset-bench" compare "$OUT/baseline.json" "$OUT/bootstorm.json"
