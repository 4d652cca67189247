# Pinned Go-module tools, installed into the repository's .bin on first use
# (sourced by the scripts that need them). `tool NAME` installs NAME when it is
# missing or at another version.
TOOLS_BIN=${TOOLS_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.bin}
declare -A TOOL_MODULE=(
  [buf]=github.com/bufbuild/buf/cmd/buf@v1.75.0
  [golangci-lint]=github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
  [protoc-gen-go]=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
  [protoc-gen-go-grpc]=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
)
tool() { # name
  local mod=${TOOL_MODULE[$1]} stamp="$TOOLS_BIN/.$1.version"
  if [ -x "$TOOLS_BIN/$1" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$mod" ]; then return 0; fi
  echo "installing $mod into $TOOLS_BIN" >&2
  mkdir -p "$TOOLS_BIN"
  GOBIN="$TOOLS_BIN" GOFLAGS=-mod=mod go install "$mod"
  echo "$mod" >"$stamp"
}
