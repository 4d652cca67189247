# Pinned Go-module tools, installed into the repository's .bin on first use
# (sourced by the scripts that need them, and by install-deps.sh). `tool NAME`
# installs NAME when it is missing or at another version; `tool_current NAME`
# says whether it is installed at the pinned version.
TOOLS_BIN=${TOOLS_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.bin}
declare -A TOOL_MODULE=(
  [buf]=github.com/bufbuild/buf/cmd/buf@v1.75.0
  [ghz]=github.com/bojand/ghz/cmd/ghz@v0.93.0
  [golangci-lint]=github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
  [grpc-health-probe]=github.com/grpc-ecosystem/grpc-health-probe@v0.4.63
  [grpcurl]=github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
  # v2.46+ need go.digitalxero.dev modules that not every proxy serves.
  [nfpm]=github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.44.0
  [protoc-gen-go]=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
  [protoc-gen-go-grpc]=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
)
tool_current() { # name
  # The binary records the version of its module (go version -m).
  local mod=${TOOL_MODULE[$1]} bin="$TOOLS_BIN/$1"
  [ -x "$bin" ] && [ "$(go version -m "$bin" 2>/dev/null | awk '$1 == "mod" {print $3}')" = "${mod##*@}" ]
}
tool() { # name
  local mod=${TOOL_MODULE[$1]}
  tool_current "$1" && return 0
  echo "installing $mod into $TOOLS_BIN" >&2
  mkdir -p "$TOOLS_BIN"
  GOBIN="$TOOLS_BIN" GOFLAGS=-mod=mod go install "$mod"
}
