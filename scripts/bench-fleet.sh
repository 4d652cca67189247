#!/usr/bin/env bash
# Boot storm against a fleet of three gateways on one PostgreSQL registry,
# beside one gateway on SQLite, in the same run.
#
#   scripts/bench-fleet.sh [DEVICES [CONCURRENCY]]     (defaults 2000 256)
#
# Starts a throw-away PostgreSQL cluster (initdb and pg_ctl from Debian's
# postgresql package, as the postgres user when run as root; listening only on
# a unix socket in a temporary directory), three netstack gateways on it (no
# TUN, no root needed; free loopback ports; one certificate; the second and
# third join with the first one's keys, `dassetctl keys backup --fleet` /
# `keys restore`, and make their own WireGuard keys), and one netstack gateway on SQLite. Then, with the same N and C:
#
#   single   `dasset-bench bootstorm` against the SQLite gateway
#   fleet    `dasset-bench bootstorm --gateway A,B,C` (device i to the
#            (i mod 3)-th gateway)
#
# after enrolling the devices in both (not timed), and prints both summaries,
# the PostgreSQL server's CPU during the fleet's storm, and a side-by-side
# table. The load average is printed before and after the storms. The JSON
# files and the gateway logs are kept in $BENCH_OUT (default
# /tmp/dasset-bench-fleet).
set -euo pipefail

BIN=${BIN:-bin}
N=${1:-${BENCH_DEVICES:-2000}}
C=${2:-${BENCH_CONCURRENCY:-256}}
OUT=${BENCH_OUT:-/tmp/dasset-bench-fleet}
mkdir -p "$OUT"

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [[ -z $pgbin || ! -x $pgbin/initdb ]]; then
	echo "bench-fleet: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): bash scripts/install-deps.sh" >&2
	exit 1
fi

work=$(mktemp -d /tmp/dasset-bench-fleet.XXXXXX)
pg=$work/pg
pids=()
pg_started=
as_pg() {
	if [[ $(id -u) == 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}
cleanup() {
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	if [[ -n $pg_started ]]; then
		as_pg "$pgbin/pg_ctl" stop --pgdata "$pg/data" --mode fast --wait >/dev/null 2>&1 || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL: a unix socket in $pg, no TCP port; durability off (throw-away).
mkdir -p "$pg"
pguser=$(id -un)
if [[ $(id -u) == 0 ]]; then
	chmod 0711 "$work" # the postgres user passes through to its own directory
	chown postgres: "$pg"
	pguser=postgres
fi
as_pg "$pgbin/initdb" --pgdata "$pg/data" --username "$pguser" --auth trust --encoding UTF8 --locale C \
	--no-sync --no-instructions >"$OUT/initdb.log" 2>&1 || { echo "initdb failed:"; cat "$OUT/initdb.log"; exit 1; }
as_pg "$pgbin/pg_ctl" start --pgdata "$pg/data" --wait --timeout 60 --log "$pg/log" \
	-o "-c listen_addresses='' -c unix_socket_directories=$pg -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null ||
	{ echo "PostgreSQL did not start:"; cat "$pg/log"; exit 1; }
pg_started=1
dsn="host=$pg port=5432 user=$pguser dbname=postgres sslmode=disable"

# gateway NAME STORE_KEYS...: writes $work/NAME/gateway.yaml on free ports and
# starts the gateway; sets port_NAME, metrics_NAME, pid_NAME.
gateway() {
	local name=$1 store=$2 extra=${3:-}
	local grpc metrics wg
	read -r grpc metrics wg < <("$BIN/dasset-bench" free-ports --tcp 2 --udp 1)
	mkdir -p "$work/$name"
	cat >"$work/$name/gateway.yaml" <<EOF
data_dir: $work/$name/data
keystore_dir: $work/$name/keys
store:
$store
tunnel:
  mode: netstack
  listen_port: $wg
  uapi: false
grpc:
  listen: 127.0.0.1:$grpc
$extra
admin:
  socket: $work/$name/admin.sock
metrics:
  listen: 127.0.0.1:$metrics
# The boot storm sends every fresh device from one loopback source: lift the
# per-source and global buckets so the gateway's own cost is measured.
throttle:
  source_rate: 1000000
  source_burst: 1000000
  global_rate: 1000000
  global_burst: 1000000
EOF
	"$BIN/dasset-gateway" serve --config "$work/$name/gateway.yaml" >"$OUT/gateway-$name.log" 2>&1 &
	local pid=$!
	pids+=("$pid")
	for _ in $(seq 1 300); do
		curl -sf "http://127.0.0.1:$metrics/readyz" >/dev/null 2>&1 && break
		kill -0 "$pid" 2>/dev/null || { echo "gateway $name exited:"; cat "$OUT/gateway-$name.log"; exit 1; }
		sleep 0.1
	done
	curl -sf "http://127.0.0.1:$metrics/readyz" >/dev/null || { echo "gateway $name not ready after 30s"; cat "$OUT/gateway-$name.log"; exit 1; }
	printf -v "port_$name" %s "$grpc"
	printf -v "metrics_$name" %s "$metrics"
	printf -v "pid_$name" %s "$pid"
}

# The fleet: a first, then b and c with a's keys and a's certificate.
pgstore="  driver: postgres
  dsn: \"$dsn\""
gateway a "$pgstore"
cert=$work/a/data/tls.crt
tlsfiles="  cert_file: $cert
  key_file: $work/a/data/tls.key"
for m in b c; do
	printf 'bench-fleet-passphrase\n' | "$BIN/dassetctl" keys backup --fleet --keystore "$work/a/keys" --out "$work/keys-$m.backup" --passphrase-stdin >/dev/null
	printf 'bench-fleet-passphrase\n' | "$BIN/dassetctl" keys restore --keystore "$work/$m/keys" --in "$work/keys-$m.backup" --passphrase-stdin >/dev/null
	gateway "$m" "$pgstore" "$tlsfiles"
done
# One gateway on SQLite (the default store).
gateway single "  driver: sqlite"

load() { cut -d' ' -f1-3 /proc/loadavg; }
# CPU seconds the PostgreSQL server has used: the postmaster with its
# reaped children, plus its live children (the gateways' connections).
ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk -v all="$2" '{ t = $12 + $13; if (all) t += $14 + $15; print t }'; }
pgcpu() {
	local pm t c
	pm=$(head -n1 "$pg/data/postmaster.pid")
	t=$(ticks "$pm" 1)
	for c in $(ps -o pid= --ppid "$pm"); do
		t=$((t + $(ticks "$c" 0 || echo 0)))
	done
	awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); devices=$N concurrency=$C; PostgreSQL $(basename "$(dirname "$pgbin")")"
# Enrolment is not timed: both get the storm's devices first (dasset-bench's
# serial numbers and hardware ids), through dassetctl.
awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) printf "DS-BENCH-%06d,HW-DS-BENCH-%06d\n", i, i }' >"$work/devices.csv"
"$BIN/dassetctl" --socket "$work/single/admin.sock" enroll --file "$work/devices.csv" >/dev/null
"$BIN/dassetctl" --socket "$work/a/admin.sock" enroll --file "$work/devices.csv" >/dev/null
echo "== single gateway on SQLite (pid $pid_single); load average $(load)"
"$BIN/dasset-bench" bootstorm --gateway "127.0.0.1:$port_single" --cert "$work/single/data/tls.crt" \
	--pid "$pid_single" --label sqlite \
	--devices "$N" --concurrency "$C" | tee "$OUT/single.json"
echo "== fleet: three gateways on PostgreSQL (pids $pid_a,$pid_b,$pid_c); load average $(load)"
# Reconcile passes (incremental ones on the others' changes, batched) each
# fleet gateway has run so far.
passes() {
	local m out=""
	for m in a b c; do
		local port_var=metrics_$m
		out+="$m: $(curl -sf "http://127.0.0.1:${!port_var}/metrics" |
			awk '/^dasset_gateway_reconciles_total\{/ { split($1, l, "\""); n[l[2] "/" l[4]] += $2 } END { for (k in n) printf "%s=%d ", k, n[k] }')"
		out+=" "
	done
	echo "$out"
}
passes_before=$(passes)
pg_before=$(pgcpu)
"$BIN/dasset-bench" bootstorm --gateway "127.0.0.1:$port_a,127.0.0.1:$port_b,127.0.0.1:$port_c" --cert "$cert" \
	--pid "$pid_a,$pid_b,$pid_c" --label fleet \
	--devices "$N" --concurrency "$C" | tee "$OUT/fleet.json"
pg_after=$(pgcpu)
echo "== reconcile passes (pass/result=count) before the fleet storm: $passes_before"
echo "== reconcile passes after it:                                   $(passes)"
awk -v b="$pg_before" -v a="$pg_after" -v n="$N" 'BEGIN { printf "== PostgreSQL server CPU during the fleet storm: %.2f s, %.2f ms per device\n", a - b, (a - b) * 1000 / n }'
echo "== load average after: $(load)"
echo "== side by side (fleet / single)"
"$BIN/dasset-bench" compare "$OUT/single.json" "$OUT/fleet.json"
