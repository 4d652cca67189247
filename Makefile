# DASSET gateway. `make run` starts the gateway on configs/gateway.yaml;
# `make test` installs what the tests need (when missing) and runs them all.
SHELL    := /bin/bash
GO       ?= go
BIN      := bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/planetxlabs/dasset-gateway/pkg/daemon.Version=$(VERSION)
FUZZTIME ?= 5m
# Fuzz targets, as package:Target. `make test` runs each for FUZZBRIEF,
# `make fuzz` for FUZZTIME. FUZZBRIEF is a count of executions, not a
# duration: Go 1.26's fuzz coordinator can report a spurious "context
# deadline exceeded" failure when a -fuzztime duration ends on a busy machine
# (go.dev/issue/75804, fixed in Go 1.27); a count has no deadline to race.
# The same message at the end of a long `make fuzz` run, with no crasher
# written to testdata/fuzz, is that bug too.
FUZZBRIEF ?= 3000x
FUZZ_TARGETS := \
	./tunnel/router:FuzzParse \
	./tunnel/router:FuzzWrite \
	./tunnel/wg:FuzzParseUAPI \
	./tunnel/wg:FuzzKeyValidate \
	./pkg/privacy:FuzzParseSerialNumber \
	./pkg/privacy:FuzzParseHardwareID \
	./pkg/privacy:FuzzParsePolicy \
	./pkg/identity:FuzzHashToken \
	./pkg/gateway:FuzzBindingCode \
	./pkg/ctl:FuzzParseDevicesCSV \
	./pkg/config:FuzzLoad

.PHONY: all build run test deps vet lint check-generated check-refs generate unit e2e fuzz bench clean package

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

run: build
	./$(BIN)/dasset-gateway serve --config configs/gateway.yaml

# Everything CI runs. Root-only end-to-end tests skip themselves elsewhere.
test: deps build vet lint check-generated check-refs unit e2e

deps:
	@bash scripts/install-deps.sh

vet:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# golangci-lint, pinned in scripts/tools.sh (installed into .bin on first
# use); configuration in .golangci.yml.
lint:
	@source scripts/tools.sh && tool golangci-lint
	.bin/golangci-lint run ./...

# No file may refer to a document outside the repository.
check-refs:
	bash scripts/check-refs

generate:
	bash scripts/generate.sh

check-generated:
	bash scripts/check-generated

unit:
	$(GO) test -race -count=1 -timeout 600s $$($(GO) list ./... | grep -v /scripts/)
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZBRIEF)

# Root end-to-end tests (network namespaces, real TUNs); they skip elsewhere.
# wg-quick's userspace WireGuard is wireguard-go, built from the module in go.mod.
e2e: build
	$(GO) build -o .bin/wireguard-go golang.zx2c4.com/wireguard
	set -o pipefail; DASSET_BIN=$(CURDIR)/$(BIN) DASSET_WIREGUARD_GO=$(CURDIR)/.bin/wireguard-go $(GO) test -count=1 -timeout 900s -v ./scripts/... 2>&1 | tee /tmp/dasset-e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|SKIP)|^\s+\S+_test.go:[0-9]+:'

# Each target alone (go test -fuzz takes one target per run), FUZZTIME each.
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t#*:}; \
	  echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
	  $(GO) test -count=1 -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

bench: build
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 1s ./tunnel/... ./pkg/store/ ./pkg/store/postgres/ ./pkg/identity/
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 40x ./pkg/retention/
	BIN=$(BIN) BENCH_DEVICES=$(BENCH_DEVICES) BENCH_CONCURRENCY=$(BENCH_CONCURRENCY) bash scripts/bench.sh
	@# The same storm against three gateways on one PostgreSQL, beside one on SQLite.
	BIN=$(BIN) BENCH_DEVICES=$(BENCH_DEVICES) BENCH_CONCURRENCY=$(BENCH_CONCURRENCY) bash scripts/bench-fleet.sh
	@# Data-plane throughput (iperf3 over namespaces); needs root, iperf3 and wg,
	@# so it is skipped, saying why, where they are missing.
	@rc=0; BIN=$(BIN) bash scripts/bench-throughput.sh || rc=$$?; \
	  if [ $$rc = 77 ]; then echo "bench: throughput part skipped (needs root, iperf3 and wg: bash scripts/install-deps.sh bench)"; \
	  elif [ $$rc != 0 ]; then exit $$rc; fi

# Debian packages dasset-gateway and dasset-agent (nfpm) into dist/;
# scripts/pkgtest checks them (lintian, dpkg-deb, systemd-analyze) in make test.
package:
	bash scripts/package.sh dist

clean:
	rm -rf $(BIN) dist
