package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// netns creates a network namespace with its loopback up, deleted when the
// test ends (after the processes in it are stopped: cleanups run in reverse).
func (h *harness) netns(name string) {
	h.t.Helper()
	_, _ = run("ip", "netns", "del", name) // a leftover of a crashed run
	h.mustRun("ip", "netns", "add", name)
	h.t.Cleanup(func() {
		if _, err := run("ip", "netns", "del", name); err != nil {
			h.t.Errorf("cleanup: %v", err)
		}
	})
	h.mustRun("ip", "-n", name, "link", "set", "lo", "up")
}

// link joins gwNS and devNS with a veth pair on 10.213.<n>.0/24: the gateway
// side is .1, the device side .2. It returns the gateway side's address.
func (h *harness) link(gwNS, devNS string, n int) string {
	h.t.Helper()
	gwIf, devIf := fmt.Sprintf("vg%d", n), fmt.Sprintf("vd%d", n)
	gwAddr, devAddr := fmt.Sprintf("10.213.%d.1", n), fmt.Sprintf("10.213.%d.2", n)
	h.mustRun("ip", "-n", gwNS, "link", "add", gwIf, "type", "veth", "peer", "name", devIf, "netns", devNS)
	h.mustRun("ip", "-n", gwNS, "addr", "add", gwAddr+"/24", "dev", gwIf)
	h.mustRun("ip", "-n", devNS, "addr", "add", devAddr+"/24", "dev", devIf)
	h.mustRun("ip", "-n", gwNS, "link", "set", gwIf, "up")
	h.mustRun("ip", "-n", devNS, "link", "set", devIf, "up")
	if err := poll(10*time.Second, 100*time.Millisecond, func() error {
		_, err := nsRun(devNS, "ping", "-c", "1", "-W", "1", gwAddr)
		return err
	}); err != nil {
		h.t.Fatalf("veth %s→%s: %v", devNS, gwNS, err)
	}
	return gwAddr
}

// gateway is the dasset-gateway process in its namespace, with its config.
type gateway struct {
	h       *harness
	ns      string
	ifname  string
	dir     string
	config  string
	sock    string
	dataDir string
	p       *proc
	runs    int
}

func (h *harness) newGateway(ns string) *gateway {
	h.t.Helper()
	return h.newGatewayNamed(ns, "dgw"+h.suffix)
}

// newGatewayNamed is newGateway with its WireGuard interface named ifname
// (the UAPI socket /var/run/wireguard/IFNAME.sock is shared by all
// namespaces, so each test gives its gateway its own name).
func (h *harness) newGatewayNamed(ns, ifname string) *gateway {
	h.t.Helper()
	g := &gateway{h: h, ns: ns, ifname: ifname, dir: filepath.Join(h.dir, "gateway")}
	g.sock = filepath.Join(g.dir, "admin.sock")
	g.dataDir = filepath.Join(g.dir, "data")
	g.config = filepath.Join(g.dir, "gateway.yaml")
	if err := os.MkdirAll(g.dir, 0o700); err != nil {
		h.t.Fatal(err)
	}
	yaml := fmt.Sprintf(`# written by scripts/e2e
data_dir: %s
keystore_dir: %s
log:
  level: info
  format: json
tunnel:
  mode: tun
  interface: %s
  listen_port: 51820
  uapi: true
grpc:
  listen: 0.0.0.0:8443
admin:
  socket: %s
metrics:
  listen: 127.0.0.1:9591
`, g.dataDir, filepath.Join(g.dir, "keystore"), g.ifname, g.sock)
	if err := os.WriteFile(g.config, []byte(yaml), 0o600); err != nil {
		h.t.Fatal(err)
	}
	// A killed gateway leaves its UAPI socket behind; the name is ours.
	h.t.Cleanup(func() { _ = os.Remove("/var/run/wireguard/" + g.ifname + ".sock") })
	return g
}

// start runs the gateway; each run logs to its own file.
func (g *gateway) start() {
	g.h.t.Helper()
	g.runs++
	g.p = g.h.start(g.ns, fmt.Sprintf("gateway-%d.log", g.runs),
		g.h.path("dasset-gateway"), "serve", "--config", g.config)
}

// waitReady waits until the admin socket answers and /readyz says ready,
// and returns when that was seen.
func (g *gateway) waitReady(within time.Duration) time.Time {
	g.h.t.Helper()
	err := poll(within, 50*time.Millisecond, func() error {
		if g.p.exited() {
			return fmt.Errorf("gateway exited: %v: %s", g.p.err, g.p.lastLine())
		}
		if _, err := g.ctl("status"); err != nil {
			return err
		}
		_, err := g.get("http://127.0.0.1:9591/readyz")
		return err
	})
	if err != nil {
		g.h.t.Fatalf("gateway not ready: %v", err)
	}
	return time.Now()
}

// ctl runs dassetctl against the admin socket (a unix socket on the shared
// file system, so dassetctl runs outside the namespace).
func (g *gateway) ctl(args ...string) (string, error) {
	return run(g.h.path("dassetctl"), append([]string{"--socket", g.sock}, args...)...)
}

func (g *gateway) mustCtl(args ...string) string {
	g.h.t.Helper()
	out, err := g.ctl(args...)
	if err != nil {
		g.h.t.Fatal(err)
	}
	return out
}

// ctlJSON runs dassetctl -o json and decodes its standard output into v.
func (g *gateway) ctlJSON(v any, args ...string) {
	g.h.t.Helper()
	out, err := stdout(g.h.path("dassetctl"), append([]string{"--socket", g.sock, "-o", "json"}, args...)...)
	if err != nil {
		g.h.t.Fatal(err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		g.h.t.Fatalf("dassetctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// get fetches url from inside the gateway's namespace by re-executing this
// test binary there (see TestMain).
func (g *gateway) get(url string) ([]byte, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", "netns", "exec", g.ns, self)
	cmd.Env = append(os.Environ(), httpGetEnv+"="+url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	done := make(chan struct{})
	var out []byte
	go func() {
		out, err = cmd.Output()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(cmdTimeout):
		_ = cmd.Process.Kill()
		<-done
		return nil, errors.New("GET " + url + ": timed out")
	}
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w: %s", url, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// loginsOK is dasset_gateway_logins_total{outcome="ok"} of the running process.
func (g *gateway) loginsOK() float64 {
	g.h.t.Helper()
	m, err := g.get("http://127.0.0.1:9591/metrics")
	if err != nil {
		g.h.t.Fatal(err)
	}
	v, err := counterValue(m, "dasset_gateway_logins_total", map[string]string{"outcome": "ok"})
	if err != nil {
		g.h.t.Fatal(err)
	}
	return v
}

// logRecords decodes the JSON lines of the current run's log.
func (g *gateway) logRecords() []map[string]any {
	var recs []map[string]any
	for _, line := range strings.Split(g.p.logText(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil {
			recs = append(recs, rec)
		}
	}
	return recs
}

// countMsg counts the current run's log records whose msg is msg.
func (g *gateway) countMsg(msg string) int {
	n := 0
	for _, r := range g.logRecords() {
		if r["msg"] == msg {
			n++
		}
	}
	return n
}

// fingerprint is the SHA-256 of the gateway's own certificate, from the file
// and checked against the log line announcing it.
func (g *gateway) fingerprint() string {
	g.h.t.Helper()
	fp, err := certFingerprint(filepath.Join(g.dataDir, "tls.crt"))
	if err != nil {
		g.h.t.Fatal(err)
	}
	var logged string
	for _, r := range g.logRecords() {
		if s, ok := r["sha256"].(string); ok {
			logged = s
		}
	}
	norm := func(s string) string {
		return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(s, "sha256:"), ":", ""))
	}
	if norm(logged) != fp {
		g.h.t.Fatalf("gateway logged certificate fingerprint %q, tls.crt has %s", logged, fp)
	}
	return fp
}

// agentSpec says how to run one dasset-agent.
type agentSpec struct {
	ns, gateway, pin string
	serial, hwid     string
	ifname, stateDir string
	logName          string
}

func (h *harness) startAgent(s agentSpec) *proc {
	h.t.Helper()
	return h.start(s.ns, s.logName, h.path("dasset-agent"), "up",
		"--gateway", s.gateway+":8443", "--serial", s.serial, "--hwid", s.hwid,
		"--interface", s.ifname, "--state-dir", s.stateDir, "--pin", s.pin,
		"--log-format", "json")
}

// waitAddr waits until the agent's interface carries a virtual IPv4 address
// and returns it.
func (h *harness) waitAddr(p *proc, ns, ifname string, within time.Duration) string {
	h.t.Helper()
	var addr string
	err := poll(within, 100*time.Millisecond, func() error {
		if p.exited() {
			return fmt.Errorf("agent exited: %v: %s", p.err, p.lastLine())
		}
		out, err := run("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", ifname)
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(out) {
			if strings.HasPrefix(f, "100.") {
				addr = f
				return nil
			}
		}
		return fmt.Errorf("%s in %s: no virtual address yet: %s", ifname, ns, strings.TrimSpace(out))
	})
	if err != nil {
		h.t.Fatalf("%s: %v", p.name, err)
	}
	return addr
}

// pingWithin pings dst from ns until a ping run succeeds, and returns how
// long that took.
func pingWithin(ns string, within time.Duration, args ...string) (time.Duration, error) {
	start := time.Now()
	err := poll(within, 100*time.Millisecond, func() error {
		_, err := nsRun(ns, append([]string{"ping"}, args...)...)
		return err
	})
	return time.Since(start), err
}

// wgPubkey derives the public key from an agent's private.key with `wg pubkey`.
func (h *harness) wgPubkey(stateDir string) string {
	h.t.Helper()
	f, err := os.Open(filepath.Join(stateDir, "private.key"))
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "wg", "pubkey")
	cmd.Stdin = f
	out, err := cmd.Output()
	if err != nil {
		h.t.Fatalf("wg pubkey: %v", err)
	}
	return strings.TrimSpace(string(out))
}
