#!/usr/bin/env bash
# Installs what the tests (and, with `bench`, the benchmarks) run, on a fresh
# Debian machine with only Go: Debian packages when what they provide is
# missing, and the pinned Go tools of scripts/tools.sh into the repository's
# .bin. Says what it installs, one line per item, or "all present".
#
#   scripts/install-deps.sh           what `make test` needs
#   scripts/install-deps.sh bench     that, plus what `make bench` needs
#
# To add a tool, add one line to a table below (a Go tool also gets its pinned
# module in scripts/tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools.sh
source scripts/tools.sh
sets=" test ${*:-} "

# Debian packages: set, what must exist (a command on PATH, or an absolute
# path, which may be a glob), the packages that provide it (comma-separated,
# every one named: they are installed without Recommends), what uses it.
apt_table() {
  cat <<'TABLE'
test  ip               iproute2          netns end-to-end tests (namespaces, veth pairs, addresses)
test  ping             iputils-ping      pings through the tunnels (e2e, canary)
test  wg               wireguard-tools   wg show/set against the UAPI socket (tunnel/wg, e2e)
test  wg-quick         wireguard-tools   stock WireGuard configuration files (e2e)
test  setpriv          util-linux        the admin socket as another uid (scripts/clitools)
test  ps               procps            no secret on an agent's command line (cmd/dasset-agent)
test  prometheus       prometheus        a real Prometheus scraping the gateway (scripts/promtest)
test  promtool         prometheus        alert-rule unit tests (scripts/promtest)
test  systemd-analyze  systemd           systemd unit checks (scripts/promtest, scripts/pkgtest)
test  lintian          lintian           Debian package checks (scripts/pkgtest)
test  /usr/lib/postgresql/*/bin/initdb  postgresql  throw-away clusters (pkg/store/postgres/pgtest)
bench iperf3           iperf3            data-plane throughput (scripts/bench-throughput.sh)
TABLE
}

# Go tools (pinned in scripts/tools.sh): set, name, what uses it.
go_table() {
  cat <<'TABLE'
test  golangci-lint       make lint
test  buf                 make generate, check-generated (buf lint, buf breaking)
test  protoc-gen-go       make generate, check-generated
test  protoc-gen-go-grpc  make generate, check-generated
test  grpcurl             server reflection test (scripts/clitools)
test  grpc-health-probe   health checking test (scripts/clitools)
test  nfpm                make package (scripts/pkgtest)
bench ghz                 hostile-caller load by hand (README, Security)
TABLE
}

installed=0

present() {
  if [[ $1 == /* ]]; then compgen -G "$1" >/dev/null; else command -v "$1" >/dev/null 2>&1; fi
}
pkgs=() lines=()
while read -r set what list why; do
  [[ $sets == *" $set "* ]] || continue
  present "$what" && continue
  IFS=, read -ra provide <<<"$list"
  for p in "${provide[@]}"; do
    [[ " ${pkgs[*]} " == *" $p "* ]] && continue
    pkgs+=("$p")
    lines+=("apt package $p (for $what: $why)")
  done
done < <(apt_table)
if [ ${#pkgs[@]} -gt 0 ] && [ "$(id -u)" != 0 ]; then
  # Not fatal: the tests that need them skip themselves, saying why.
  printf 'install-deps: missing, not installed (not root): %s\n' "${lines[@]}" >&2
  echo "install-deps: as root: apt-get install --no-install-recommends ${pkgs[*]}" >&2
  installed=1
elif [ ${#pkgs[@]} -gt 0 ]; then
  printf 'install-deps: installing %s\n' "${lines[@]}"
  installed=1
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null
  # Without Recommends (wireguard-tools would pull in a kernel module
  # package, prometheus a node exporter); every package a test needs is
  # named in the table instead.
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" </dev/null >/dev/null
fi

while read -r set name why; do
  [[ $sets == *" $set "* ]] || continue
  tool_current "$name" && continue
  echo "install-deps: installing go tool ${TOOL_MODULE[$name]} ($why)"
  installed=1
  mkdir -p "$TOOLS_BIN"
  GOBIN="$TOOLS_BIN" GOFLAGS=-mod=mod go install "${TOOL_MODULE[$name]}" </dev/null
done < <(go_table)

[ $installed = 1 ] || echo "install-deps: all present"
