// Command pprofgw runs the gateway daemon exactly as `dasset-gateway serve`
// does (pkg/config → pkg/daemon), plus a net/http/pprof listener, so that
// scripts/bench-throughput.sh (PROFILE=1) can take CPU profiles of the data
// plane without a profiling hook in the gateway itself. Benchmarks only: it
// is never shipped.
//
// Usage: pprofgw --pprof 127.0.0.1:6061 --config gateway.yaml
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/daemon"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "pprofgw:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := pflag.NewFlagSet("pprofgw", pflag.ContinueOnError)
	path := fs.String("config", "", "gateway YAML configuration")
	pprofAddr := fs.String("pprof", "127.0.0.1:6061", "host:port of the pprof listener")
	config.BindFlags(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	cfg, err := config.Load(*path, fs)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", *pprofAddr)
	if err != nil {
		return fmt.Errorf("pprof listener: %w", err)
	}
	srv := &http.Server{Handler: http.DefaultServeMux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	d, err := daemon.New(ctx, cfg, daemon.Options{})
	if err != nil {
		return err
	}
	if err := d.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
