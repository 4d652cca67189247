package netnstest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// MetricsURL is the gateway's metrics listener, on its namespace's loopback
// (reachable only from inside that namespace: see Gateway.Get).
const MetricsURL = "http://127.0.0.1:9591"

// GatewaySpec says where one dasset-gateway keeps its files.
type GatewaySpec struct {
	// NS is the namespace the gateway runs in.
	NS string
	// Interface is its WireGuard interface. The UAPI socket
	// /var/run/wireguard/IFNAME.sock is shared by all namespaces, so each
	// test gives its gateway its own name.
	Interface string
	// Dir holds the config file and the admin socket.
	Dir string
	// DataDir and KeystoreDir are the gateway's data_dir and keystore_dir.
	DataDir, KeystoreDir string
	// LogLevel is log.level (default "info"); the log format is JSON.
	LogLevel string
	// GRPCListen is grpc.listen (default "0.0.0.0:8443").
	GRPCListen string
	// WrittenBy names the test in the config's first comment line.
	WrittenBy string
	// UAPIEndpoints is tunnel.uapi_endpoints (default "truncated").
	UAPIEndpoints string
}

// Gateway is one dasset-gateway in its namespace, with its config.
type Gateway struct {
	// NS and Interface are as in the GatewaySpec.
	NS, Interface string
	// Config, Sock and DataDir are the config file, the admin socket and
	// the data directory.
	Config, Sock, DataDir string
	// Proc is the running process (the last one Start started).
	Proc *Proc

	h *Harness
}

// NewGateway writes the config s describes (TUN mode with UAPI, WireGuard
// port 51820, gRPC on 8443, metrics on MetricsURL) and returns the gateway,
// not yet started.
func (h *Harness) NewGateway(s GatewaySpec) *Gateway {
	h.T.Helper()
	if s.LogLevel == "" {
		s.LogLevel = "info"
	}
	if s.GRPCListen == "" {
		s.GRPCListen = "0.0.0.0:8443"
	}
	if s.UAPIEndpoints == "" {
		s.UAPIEndpoints = "truncated"
	}
	g := &Gateway{h: h, NS: s.NS, Interface: s.Interface, DataDir: s.DataDir,
		Config: filepath.Join(s.Dir, "gateway.yaml"), Sock: filepath.Join(s.Dir, "admin.sock")}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		h.T.Fatal(err)
	}
	yaml := fmt.Sprintf(`# written by %s
data_dir: %s
keystore_dir: %s
log:
  level: %s
  format: json
tunnel:
  mode: tun
  interface: %s
  listen_port: 51820
  uapi: true
  uapi_endpoints: %s
grpc:
  listen: %q
admin:
  socket: %s
metrics:
  listen: %s
`, s.WrittenBy, s.DataDir, s.KeystoreDir, s.LogLevel, s.Interface, s.UAPIEndpoints, s.GRPCListen, g.Sock, strings.TrimPrefix(MetricsURL, "http://"))
	if err := os.WriteFile(g.Config, []byte(yaml), 0o600); err != nil {
		h.T.Fatal(err)
	}
	// A killed gateway leaves its UAPI socket behind; the name is ours.
	h.T.Cleanup(func() { _ = os.Remove("/var/run/wireguard/" + g.Interface + ".sock") })
	return g
}

// Start runs `dasset-gateway serve` with its output in logPath (relative to
// the harness's Dir unless absolute).
func (g *Gateway) Start(logPath string) {
	g.h.T.Helper()
	g.Proc = g.h.Start(g.NS, logPath, g.h.Path("dasset-gateway"), "serve", "--config", g.Config)
}

// WaitReady waits until the admin socket answers and /readyz says ready,
// and returns when that was seen.
func (g *Gateway) WaitReady(within time.Duration) time.Time {
	g.h.T.Helper()
	err := g.h.Poll(within, 50*time.Millisecond, func() error {
		if g.Proc.Exited() {
			return fmt.Errorf("gateway exited: %v: %s", g.Proc.Err(), g.Proc.LastLine())
		}
		if _, err := g.Ctl("status"); err != nil {
			return err
		}
		_, err := g.Get(MetricsURL + "/readyz")
		return err
	})
	if err != nil {
		g.h.T.Fatalf("gateway not ready: %v", err)
	}
	return time.Now()
}

// Ctl runs dassetctl against the admin socket (a unix socket on the shared
// file system, so dassetctl runs outside the namespace) and returns its
// standard output; the error carries its standard error.
func (g *Gateway) Ctl(args ...string) (string, error) {
	return g.CtlStdin("", args...)
}

// CtlStdin is Ctl with input on dassetctl's standard input.
func (g *Gateway) CtlStdin(input string, args ...string) (string, error) {
	out, _, err := g.h.Output(input, g.h.Path("dassetctl"), append([]string{"--socket", g.Sock}, args...)...)
	return out, err
}

// MustCtl is Ctl that fails the test on error.
func (g *Gateway) MustCtl(args ...string) string {
	g.h.T.Helper()
	out, err := g.Ctl(args...)
	if err != nil {
		g.h.T.Fatal(err)
	}
	return out
}

// CtlJSON runs dassetctl -o json and decodes its standard output into v.
func (g *Gateway) CtlJSON(v any, args ...string) {
	g.h.T.Helper()
	out := g.MustCtl(append([]string{"-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		g.h.T.Fatalf("dassetctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Get fetches url from inside the gateway's namespace by re-executing the
// test binary there with HTTPGetEnv set.
func (g *Gateway) Get(url string) ([]byte, error) {
	return g.h.SelfIn(g.NS, HTTPGetEnv, url)
}
