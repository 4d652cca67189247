#!/usr/bin/env bash
# Regenerates the protobuf Go code with pinned tools: buf (which carries its
# own copy of the well-known types, so no system protoc or libprotobuf-dev is
# needed) driving the pinned protoc-gen-go and protoc-gen-go-grpc plugins.
# OUT (default: the repository) lets check-generated render into a scratch
# directory.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools.sh
source scripts/tools.sh
OUT=${OUT:-.}
tool buf
tool protoc-gen-go
tool protoc-gen-go-grpc
PATH="$TOOLS_BIN:$PATH" "$TOOLS_BIN/buf" generate -o "$OUT"
