#!/usr/bin/env bash
# Regenerates the protobuf Go code with pinned tools. OUT (default: the repo)
# lets check-generated render into a scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.5.1
OUT=${OUT:-.}
BIN=${BIN:-$PWD/.bin}
mkdir -p "$BIN"
if ! command -v protoc >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler >/dev/null
  else
    echo "protoc missing: apt-get install protobuf-compiler" >&2; exit 1
  fi
fi
[ -x "$BIN/protoc-gen-go" ] && "$BIN/protoc-gen-go" --version | grep -q "${PROTOC_GEN_GO_VERSION}" || \
  GOBIN="$BIN" go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
[ -x "$BIN/protoc-gen-go-grpc" ] && "$BIN/protoc-gen-go-grpc" --version | grep -q "${PROTOC_GEN_GO_GRPC_VERSION#v}" || \
  GOBIN="$BIN" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"
mkdir -p "$OUT/proto"
PATH="$BIN:$PATH" protoc -I proto \
  --go_out="$OUT/proto" --go_opt=paths=source_relative \
  --go-grpc_out="$OUT/proto" --go-grpc_opt=paths=source_relative \
  proto/dasset/gateway/v1/*.proto
