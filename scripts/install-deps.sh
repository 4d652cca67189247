#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, only when missing.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip        || need+=(iproute2)
have ping      || need+=(iputils-ping)
have wg        || need+=(wireguard-tools)
have wg-quick  || need+=(wireguard-tools)
have iperf3    || need+=(iperf3)
have prometheus || need+=(prometheus)
have promtool  || need+=(prometheus)
# PostgreSQL for the fleet store's tests (pkg/store/postgres/pgtest runs
# initdb and pg_ctl from /usr/lib/postgresql/VERSION/bin; no server is used).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || have initdb || need+=(postgresql)

# Go-module tools the tests drive (pinned), into the repo's .bin.
root=$(cd "$(dirname "$0")/.." && pwd)
gotool() { # name module@version
  [ -x "$root/.bin/$1" ] && return 0
  echo "installing $2"
  GOBIN="$root/.bin" GOFLAGS=-mod=mod go install "$2"
}
gotool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
gotool grpc-health-probe github.com/grpc-ecosystem/grpc-health-probe@v0.4.63

if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing packages (${need[*]}); install them as root: apt-get install ${need[*]}" >&2
  exit 0
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: wireguard-tools recommends a kernel module package.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
