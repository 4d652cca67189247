#!/usr/bin/env bash
# Builds the Debian packages dasset-gateway and dasset-agent with nfpm
# (packaging/*.yaml) into OUT (default dist/) and prints their paths.
#   scripts/package.sh [OUT]
# Environment: PKG_VERSION (default: X.Y.Z at a tag vX.Y.Z, else
# 0.0.0~gitDATE.COMMIT), PKG_MAINTAINER, GOARCH. nfpm is the pinned one of
# scripts/tools.sh, installed into .bin on first use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-$root/dist}
# shellcheck source=scripts/tools.sh
source scripts/tools.sh
tool nfpm
nfpm=$TOOLS_BIN/nfpm

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
date_rfc=$(git log -1 --format=%cD 2>/dev/null || date -R)
if [ -z "${PKG_VERSION:-}" ]; then
  if tag=$(git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null); then
    PKG_VERSION=${tag#v}
  else
    PKG_VERSION=0.0.0~git$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S 2>/dev/null || date +%Y%m%d%H%M%S).$commit
  fi
fi
# Debian: starts with a digit, then [A-Za-z0-9.+~]; no "-" (native package).
if ! [[ $PKG_VERSION =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
  echo "package: PKG_VERSION=$PKG_VERSION is not a Debian native version" >&2
  exit 1
fi
export PKG_VERSION
export PKG_MAINTAINER=${PKG_MAINTAINER:-PlanetX Labs <dasset@planetxlabs.com>}
export ARCH=${GOARCH:-$(go env GOARCH)}
STAGE=$(mktemp -d)
export STAGE
trap 'rm -rf "$STAGE"' EXIT

# Stripped (lintian wants no symbol tables) position-independent binaries
# without cgo: no library besides the dynamic loader, ASLR for all code.
CGO_ENABLED=0 GOARCH=$ARCH go build -buildmode=pie -trimpath \
  -ldflags "-s -w -X github.com/planetxlabs/dasset-gateway/pkg/daemon.Version=$PKG_VERSION -X main.version=$PKG_VERSION" \
  -o "$STAGE/bin/" ./cmd/dasset-gateway ./cmd/dassetctl ./cmd/dasset-agent

# The units as installed: programs from /usr/bin.
for u in dasset-gateway dasset-agent; do
  sed 's#/usr/local/bin/#/usr/bin/#g' "configs/systemd/$u.service" >"$STAGE/$u.service"
  if grep -q /usr/local "$STAGE/$u.service" || ! grep -q "^ExecStart=/usr/bin/$u " "$STAGE/$u.service"; then
    echo "package: $u.service: ExecStart is not /usr/bin/$u after the rewrite" >&2
    exit 1
  fi
done

# /usr/share/doc: machine-readable copyright, changelog.
{
  printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n'
  printf 'Upstream-Name: dasset-gateway\nSource: https://github.com/planetxlabs/dasset-gateway\n\n'
  printf 'Files: *\nCopyright: %s\nLicense: Expat\n' "$(sed -n 's/^Copyright (c) //p' LICENSE | head -1)"
  # The license text after its title and copyright line, indented; blank
  # lines as " .".
  sed -n '/^Permission is hereby granted/,$p' LICENSE | sed 's/^$/./; s/^/ /'
} >"$STAGE/copyright"
for p in dasset-gateway dasset-agent; do
  printf '%s (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n' \
    "$p" "$PKG_VERSION" "$commit" "$PKG_MAINTAINER" "$date_rfc" | gzip -9n >"$STAGE/$p.changelog.gz"
done

cp configs/gateway.yaml configs/policy.yaml "$STAGE/"
cp -r packaging "$STAGE/"

mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$STAGE"
for p in dasset-gateway dasset-agent; do
  target="$out/${p}_${PKG_VERSION}_${ARCH}.deb"
  "$nfpm" package --config "packaging/$p.yaml" --packager deb --target "$target" >&2
  echo "$target"
done
