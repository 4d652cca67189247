package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// link joins gwNS and devNS with a veth pair on 10.213.<n>.0/24: the gateway
// side is .1, the device side .2. It returns the gateway side's address.
func (h *harness) link(gwNS, devNS string, n int) string {
	h.T.Helper()
	gwAddr := fmt.Sprintf("10.213.%d.1", n)
	h.Link(netnstest.Veth{GwNS: gwNS, PeerNS: devNS,
		GwIf: fmt.Sprintf("vg%d", n), PeerIf: fmt.Sprintf("vd%d", n),
		GwAddrs:   []netip.Prefix{netip.MustParsePrefix(gwAddr + "/24")},
		PeerAddrs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.213.%d.2/24", n))},
	})
	return gwAddr
}

// gateway is the dasset-gateway process in its namespace; each run logs to
// its own file.
type gateway struct {
	*netnstest.Gateway
	h    *harness
	runs int
}

func (h *harness) newGateway(ns string) *gateway {
	h.T.Helper()
	return h.newGatewayNamed(ns, "dgw"+h.Suffix)
}

// newGatewayNamed is newGateway with its WireGuard interface named ifname
// (the UAPI socket /var/run/wireguard/IFNAME.sock is shared by all
// namespaces, so each test gives its gateway its own name).
func (h *harness) newGatewayNamed(ns, ifname string) *gateway {
	h.T.Helper()
	dir := filepath.Join(h.Dir, "gateway")
	return &gateway{h: h, Gateway: h.NewGateway(netnstest.GatewaySpec{NS: ns, Interface: ifname, Dir: dir,
		DataDir: filepath.Join(dir, "data"), KeystoreDir: filepath.Join(dir, "keystore"), WrittenBy: "scripts/e2e"})}
}

// start runs the gateway; each run logs to its own file.
func (g *gateway) start() {
	g.h.T.Helper()
	g.runs++
	g.Start(fmt.Sprintf("gateway-%d.log", g.runs))
}

// loginsOK is dasset_gateway_logins_total{outcome="ok"} of the running process.
func (g *gateway) loginsOK() float64 {
	g.h.T.Helper()
	m, err := g.Get(netnstest.MetricsURL + "/metrics")
	if err != nil {
		g.h.T.Fatal(err)
	}
	v, err := counterValue(m, "dasset_gateway_logins_total", map[string]string{"outcome": "ok"})
	if err != nil {
		g.h.T.Fatal(err)
	}
	return v
}

// logRecords decodes the JSON lines of the current run's log.
func (g *gateway) logRecords() []map[string]any { return logRecordsOf(g.Proc) }

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
	g.h.T.Helper()
	fp, err := netnstest.CertFingerprint(filepath.Join(g.DataDir, "tls.crt"))
	if err != nil {
		g.h.T.Fatal(err)
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
		g.h.T.Fatalf("gateway logged certificate fingerprint %q, tls.crt has %s", logged, fp)
	}
	return fp
}

// wgPubkey derives the public key from an agent's private.key with `wg pubkey`.
func (h *harness) wgPubkey(stateDir string) string {
	h.T.Helper()
	key, err := os.ReadFile(filepath.Join(stateDir, "private.key"))
	if err != nil {
		h.T.Fatal(err)
	}
	out, _, err := h.Output(string(key), "wg", "pubkey")
	if err != nil {
		h.T.Fatalf("wg pubkey: %v", err)
	}
	return strings.TrimSpace(out)
}

// logRecordsOf decodes the JSON lines of a process's log.
func logRecordsOf(p *netnstest.Proc) []map[string]any {
	var recs []map[string]any
	for _, line := range strings.Split(p.LogText(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil {
			recs = append(recs, rec)
		}
	}
	return recs
}
