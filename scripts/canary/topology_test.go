package canary

import (
	"fmt"
	"os"
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

// link joins gwNS and devNS with a veth pair named prefix+"g"/prefix+"d".
// Both sides get an IPv4 address in a /25 and an IPv6 address in a /64
// (no duplicate address detection, so they are usable at once); it returns
// once the device side pings the gateway side over both.
func (h *harness) link(gwNS, devNS, prefix, gw4, dev4, gw6, dev6 string) {
	h.t.Helper()
	gwIf, devIf := prefix+"g", prefix+"d"
	h.mustRun("ip", "-n", gwNS, "link", "add", gwIf, "type", "veth", "peer", "name", devIf, "netns", devNS)
	h.mustRun("ip", "-n", gwNS, "addr", "add", gw4+"/25", "dev", gwIf)
	h.mustRun("ip", "-n", devNS, "addr", "add", dev4+"/25", "dev", devIf)
	h.mustRun("ip", "-n", gwNS, "-6", "addr", "add", gw6+"/64", "dev", gwIf, "nodad")
	h.mustRun("ip", "-n", devNS, "-6", "addr", "add", dev6+"/64", "dev", devIf, "nodad")
	h.mustRun("ip", "-n", gwNS, "link", "set", gwIf, "up")
	h.mustRun("ip", "-n", devNS, "link", "set", devIf, "up")
	for _, dst := range []string{gw4, gw6} {
		if err := poll(10*time.Second, 100*time.Millisecond, func() error {
			_, err := nsRun(devNS, "ping", "-c", "1", "-W", "1", dst)
			return err
		}); err != nil {
			h.t.Fatalf("veth %s→%s (%s): %v", devNS, gwNS, dst, err)
		}
	}
}

// gateway is the dasset-gateway process in its namespace.
type gateway struct {
	h       *harness
	ns      string
	ifname  string
	config  string
	sock    string
	dataDir string
	log     string
	p       *proc
}

// newGateway writes a config whose data directory, keystore and process
// output are all under scanned; the config and admin socket are not.
func (h *harness) newGateway(ns, scanned string) *gateway {
	h.t.Helper()
	dir := filepath.Join(h.dir, "gw")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		h.t.Fatal(err)
	}
	g := &gateway{h: h, ns: ns, ifname: "cgw" + h.suffix,
		config:  filepath.Join(dir, "gateway.yaml"),
		sock:    filepath.Join(dir, "admin.sock"),
		dataDir: filepath.Join(scanned, "data"),
		log:     filepath.Join(scanned, "gateway.log"),
	}
	yaml := fmt.Sprintf(`# written by scripts/canary
data_dir: %s
keystore_dir: %s
log:
  level: debug
  format: json
tunnel:
  mode: tun
  interface: %s
  listen_port: 51820
  uapi: true
grpc:
  listen: ":8443"
admin:
  socket: %s
metrics:
  listen: 127.0.0.1:9591
`, g.dataDir, filepath.Join(scanned, "keystore"), g.ifname, g.sock)
	if err := os.WriteFile(g.config, []byte(yaml), 0o600); err != nil {
		h.t.Fatal(err)
	}
	// A killed gateway leaves its UAPI socket behind; the name is ours.
	h.t.Cleanup(func() { _ = os.Remove("/var/run/wireguard/" + g.ifname + ".sock") })
	return g
}

// start runs the gateway with stdout and stderr in g.log.
func (g *gateway) start() {
	g.h.t.Helper()
	g.p = g.h.start(g.ns, g.log, g.h.path("dasset-gateway"), "serve", "--config", g.config)
}

// waitReady waits until the admin socket answers and /readyz says ready.
func (g *gateway) waitReady(within time.Duration) {
	g.h.t.Helper()
	err := poll(within, 100*time.Millisecond, func() error {
		if g.p.exited() {
			return fmt.Errorf("gateway exited: %v: %s", g.p.err, g.p.lastLine())
		}
		if _, err := g.ctl("status"); err != nil {
			return err
		}
		_, err := selfIn(g.ns, httpGetEnv+"=http://127.0.0.1:9591/readyz")
		return err
	})
	if err != nil {
		g.h.t.Fatalf("gateway not ready: %v", err)
	}
}

// ctl runs dassetctl against the admin socket and returns its stdout.
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

// startAgent runs dasset-agent up in ns; its state and log stay outside the
// scanned set (the agent is not the gateway).
func (h *harness) startAgent(ns, gw, pin, serial, hwid, ifname, name string) *proc {
	h.t.Helper()
	return h.start(ns, filepath.Join(h.dir, name+".log"), h.path("dasset-agent"), "up",
		"--gateway", gw, "--serial", serial, "--hwid", hwid,
		"--interface", ifname, "--state-dir", filepath.Join(h.dir, name), "--pin", pin,
		"--log-format", "json")
}

// waitAddr waits until the agent's interface carries a virtual IPv4 address.
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
		return fmt.Errorf("%s in %s: no virtual address yet", ifname, ns)
	})
	if err != nil {
		h.t.Fatalf("%s: %v", p.name, err)
	}
	return addr
}
