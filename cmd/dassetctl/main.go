// Command dassetctl is the operators' CLI over a DASSET gateway's
// AdminService. See `dassetctl --help`; the commands live in pkg/ctl.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/planetxlabs/dasset-gateway/pkg/ctl"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version string

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Run(ctx, os.Args[1:], ctl.Env{Version: version})
	stop()
	os.Exit(code)
}
