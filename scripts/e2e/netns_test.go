package e2e

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/argvscan"
	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

const (
	gw4 = "100.80.0.1"
	gw6 = "fdda:55e7::1"

	sn1, hw1 = "DS-E2E-0001", "HW-E2E-AAAA-0001"
	sn2, hw2 = "DS-E2E-0002", "HW-E2E-BBBB-0002"

	// restartBudget is how soon after the restarted gateway is ready both
	// devices must reach it again.
	restartBudget = 10 * time.Second
)

// device is one entry of `dassetctl devices list -o json`.
type device struct {
	SerialNumber string   `json:"serial_number"`
	Addresses    []string `json:"addresses"`
	KeyPinned    bool     `json:"key_pinned"`
	Revoked      bool     `json:"revoked"`
	Online       bool     `json:"online"`
}

type deviceList struct {
	Devices []device `json:"devices"`
}

type peerList struct {
	Peers []struct {
		PublicKey  string   `json:"public_key"` // base64, as protojson writes bytes
		Kind       string   `json:"kind"`
		AllowedIPs []string `json:"allowed_ips"`
	} `json:"peers"`
}

// TestNetns runs the real gateway and two device agents in their own network
// namespaces: enrollment, login, ping through the tunnel (IPv4 and IPv6),
// `wg show`, refused logins, a gateway restart and revocation.
func TestNetns(t *testing.T) {
	h := newHarness(t)
	gwNS, d1NS, d2NS := "dgw-"+h.Suffix, "dd1-"+h.Suffix, "dd2-"+h.Suffix
	for _, ns := range []string{gwNS, d1NS, d2NS} {
		h.Netns(ns)
	}
	gwAddr1 := h.link(gwNS, d1NS, 1)
	gwAddr2 := h.link(gwNS, d2NS, 2)

	g := h.newGateway(gwNS)
	g.start()
	g.WaitReady(30 * time.Second)
	fp := g.fingerprint()
	t.Logf("gateway up on %s in %s, certificate sha256 %s", g.Interface, gwNS, fp)

	// Enrollment: one with its hardware id on standard input (never on a
	// command line), one from a CSV batch.
	if out, err := g.CtlStdin(hw1+"\n", "enroll", "--serial", sn1, "--hwid", "-"); err != nil || !strings.Contains(out, "1 enrolled") {
		t.Fatalf("enroll --hwid -: %v\n%s", err, out)
	}
	csv := filepath.Join(h.Dir, "devices.csv")
	if err := os.WriteFile(csv, []byte("serial_number,hardware_id\n# e2e batch\n"+sn2+","+hw2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g.MustCtl("enroll", "--file", csv)
	devs := listDevices(t, g)
	for _, sn := range []string{sn1, sn2} {
		d, ok := devs[mask(sn)]
		if !ok {
			t.Fatalf("devices list: %s missing: %+v", mask(sn), devs)
		}
		if d.KeyPinned || d.Revoked {
			t.Fatalf("devices list: %s freshly enrolled but %+v", mask(sn), d)
		}
	}

	// Device 1 logs in and reaches the gateway through the tunnel.
	dev1 := netnstest.AgentSpec{NS: d1NS, Gateway: gwAddr1 + ":8443", Pin: fp, Serial: sn1, HWID: hw1,
		Interface: "da1x" + h.Suffix, StateDir: filepath.Join(h.Dir, "agent1"), LogPath: "agent1.log"}
	a1 := h.StartAgent(dev1)
	addr1 := h.WaitAddr(a1, d1NS, dev1.Interface, 30*time.Second)
	if _, err := h.PingWithin(d1NS, 15*time.Second, "-c", "3", "-W", "1", gw4); err != nil {
		t.Fatalf("device 1 → %s: %v", gw4, err)
	}
	if _, err := h.PingWithin(d1NS, 15*time.Second, "-6", "-c", "3", "-W", "1", gw6); err != nil {
		t.Fatalf("device 1 → %s: %v", gw6, err)
	}
	t.Logf("device 1 is %s and pings the gateway over IPv4 and IPv6", addr1)

	// The running agent's command line (and every other) shows neither
	// identifier. Positive control first: a process with both in its argv
	// is found, and only it.
	argvscan.Check(t, sn1, hw1)

	// Refusals, while device 2 has no pinned key yet: a wrong hardware id,
	// and device 2 presenting device 1's WireGuard key.
	wrongHW := h.StartAgent(netnstest.AgentSpec{NS: d2NS, Gateway: gwAddr2 + ":8443", Pin: fp, Serial: sn2, HWID: "HW-E2E-WRONG-9999",
		Interface: "dwx" + h.Suffix, StateDir: filepath.Join(h.Dir, "agent-wronghw"), LogPath: "agent-wronghw.log"})
	h.expectRefused(wrongHW)
	stolenDir := filepath.Join(h.Dir, "agent-stolenkey")
	if err := os.MkdirAll(stolenDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key1, err := os.ReadFile(filepath.Join(dev1.StateDir, "private.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stolenDir, "private.key"), key1, 0o600); err != nil {
		t.Fatal(err)
	}
	stolen := h.StartAgent(netnstest.AgentSpec{NS: d2NS, Gateway: gwAddr2 + ":8443", Pin: fp, Serial: sn2, HWID: hw2,
		Interface: "dsx" + h.Suffix, StateDir: stolenDir, LogPath: "agent-stolenkey.log"})
	h.expectRefused(stolen)
	if d := listDevices(t, g)[mask(sn2)]; d.KeyPinned {
		t.Fatalf("device 2 got a pinned key from the refused logins: %+v", d)
	}
	if a1.Exited() {
		t.Fatalf("device 1's agent stopped: %v: %s", a1.Err(), a1.LastLine())
	}

	// Device 2 logs in with its own key.
	dev2 := netnstest.AgentSpec{NS: d2NS, Gateway: gwAddr2 + ":8443", Pin: fp, Serial: sn2, HWID: hw2,
		Interface: "da2x" + h.Suffix, StateDir: filepath.Join(h.Dir, "agent2"), LogPath: "agent2.log"}
	a2 := h.StartAgent(dev2)
	addr2 := h.WaitAddr(a2, d2NS, dev2.Interface, 30*time.Second)
	if addr2 == addr1 {
		t.Fatalf("both devices got %s", addr1)
	}
	if _, err := h.PingWithin(d2NS, 15*time.Second, "-c", "3", "-W", "1", gw4); err != nil {
		t.Fatalf("device 2 → %s: %v", gw4, err)
	}
	t.Logf("device 2 is %s and pings the gateway", addr2)
	devs = listDevices(t, g)
	for _, sn := range []string{sn1, sn2} {
		if d := devs[mask(sn)]; !d.KeyPinned || len(d.Addresses) != 2 || d.Revoked {
			t.Fatalf("devices list after login: %s: %+v", mask(sn), d)
		}
	}

	// `wg show` on the gateway: both peers, no private key, and set refused.
	pub1, pub2 := h.wgPubkey(dev1.StateDir), h.wgPubkey(dev2.StateDir)
	if !base64Key(pub1) || !base64Key(pub2) || pub1 == pub2 {
		t.Fatalf("device public keys %q, %q: want two distinct base64 keys", pub1, pub2)
	}
	show, err := h.NsRun(gwNS, "wg", "show", g.Interface)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{pub1, pub2} {
		if !strings.Contains(show, "peer: "+k) {
			t.Fatalf("wg show %s lacks peer %s:\n%s", g.Interface, k, show)
		}
	}
	if strings.Contains(show, "private key") {
		t.Fatalf("wg show %s shows a private key line:\n%s", g.Interface, show)
	}
	if pk, err := h.NsRun(gwNS, "wg", "show", g.Interface, "private-key"); err != nil || strings.TrimSpace(pk) != "(none)" {
		t.Fatalf("wg show %s private-key: %q, %v; want (none)", g.Interface, pk, err)
	}
	// Endpoints are shown as the connection log keeps source addresses (the
	// /24, port 0), never the device's own address: device 1 has handshaken
	// from 10.213.1.2.
	eps, err := h.NsRun(gwNS, "wg", "show", g.Interface, "endpoints")
	if err != nil || !strings.Contains(eps, pub1+"\t10.213.1.0:0") || strings.Contains(eps, "10.213.1.2") || strings.Contains(eps, "10.213.2.2") {
		t.Fatalf("wg show %s endpoints: %v\n%s\nwant %s at 10.213.1.0:0 and no full device address", g.Interface, err, eps, pub1)
	}
	var peers peerList
	g.CtlJSON(&peers, "peers")
	seen := map[string]string{}
	for _, p := range peers.Peers {
		seen[p.PublicKey] = p.Kind
	}
	for _, k := range []string{pub1, pub2} {
		if seen[k] != "device" {
			t.Fatalf("dassetctl peers: %s kind %q, want device: %+v", k, seen[k], peers)
		}
	}
	if out, err := h.NsRun(gwNS, "wg", "set", g.Interface, "peer", pub1, "remove"); err == nil {
		t.Fatalf("wg set %s peer … remove succeeded: %s", g.Interface, out)
	}
	if show, err := h.NsRun(gwNS, "wg", "show", g.Interface, "peers"); err != nil || !strings.Contains(show, pub1) {
		t.Fatalf("after a refused wg set, peer %s is gone: %q, %v", pub1, show, err)
	}
	if _, err := h.PingWithin(d1NS, 5*time.Second, "-c", "1", "-W", "1", gw4); err != nil {
		t.Fatalf("device 1 after refused wg set: %v", err)
	}

	// Devices never reach each other through the hub.
	for _, c := range []struct{ ns, dst string }{{d2NS, addr1}, {d1NS, addr2}} {
		dst := strings.TrimSuffix(c.dst, "/32")
		if out, err := h.NsRun(c.ns, "ping", "-c", "2", "-W", "1", dst); err == nil {
			t.Fatalf("%s reaches the other device %s: %s", c.ns, dst, out)
		}
	}

	// Restart: both devices come back without logging in again.
	okBefore := g.loginsOK()
	linesBefore := g.countMsg("device login")
	if okBefore < 2 || linesBefore < 2 {
		t.Fatalf("before restart: logins_total{outcome=ok}=%v, %d \"device login\" lines; want ≥ 2 each", okBefore, linesBefore)
	}
	t.Logf("before restart: logins_total{outcome=ok}=%v, %d \"device login\" log lines", okBefore, linesBefore)
	graceful, stopErr := g.Proc.Stop(15 * time.Second)
	if !graceful || stopErr != nil {
		t.Fatalf("gateway stop on SIGTERM: graceful=%v, %v", graceful, stopErr)
	}
	g.start()
	ready := g.WaitReady(30 * time.Second)
	var wg sync.WaitGroup
	took := make([]time.Duration, 2)
	errs := make([]error, 2)
	for i, ns := range []string{d1NS, d2NS} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = h.PingWithin(ns, restartBudget+10*time.Second, "-c", "1", "-W", "1", gw4)
			took[i] = time.Since(ready)
		}()
	}
	wg.Wait()
	t.Logf("after restart: device 1 reached the gateway %.2fs after ready, device 2 %.2fs", took[0].Seconds(), took[1].Seconds())
	for i := range took {
		if errs[i] != nil {
			t.Fatalf("device %d → gateway after restart: %v", i+1, errs[i])
		}
		if took[i] > restartBudget {
			t.Errorf("device %d reached the restarted gateway after %.2fs, want ≤ %v", i+1, took[i].Seconds(), restartBudget)
		}
	}
	if n := g.countMsg("device login"); n != 0 {
		t.Errorf("restarted gateway logged %d device logins; the agents should resume with their tokens", n)
	}
	if v := g.loginsOK(); v != 0 {
		t.Errorf("restarted gateway: logins_total{outcome=ok}=%v, want 0", v)
	}
	if n := g.countMsg("peers restored from the store"); n != 1 {
		t.Errorf("restarted gateway: %d \"peers restored from the store\" lines, want 1", n)
	}

	// Revocation: device 2 is cut off, device 1 carries on.
	g.MustCtl("devices", "revoke", sn2)
	if ok, err := a2.Wait(15 * time.Second); !ok {
		t.Fatalf("device 2's agent still runs 15s after revocation")
	} else if err == nil {
		t.Fatalf("device 2's agent exited 0 after revocation; want non-zero")
	}
	if !strings.Contains(a2.LogText(), "revoked") {
		t.Fatalf("device 2's agent did not say it was revoked: %s", a2.LastLine())
	}
	t.Logf("device 2 after revocation: %s", a2.LastLine())
	if out, err := h.NsRun(d2NS, "ping", "-c", "2", "-W", "1", gw4); err == nil {
		t.Fatalf("device 2 still pings the gateway after revocation: %s", out)
	}
	if err := h.Poll(5*time.Second, 100*time.Millisecond, func() error {
		show, err := h.NsRun(gwNS, "wg", "show", g.Interface, "peers")
		if err != nil {
			return err
		}
		if strings.Contains(show, pub2) {
			return fmt.Errorf("peer %s still on %s", pub2, g.Interface)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if d := listDevices(t, g)[mask(sn2)]; !d.Revoked {
		t.Fatalf("devices list: %s not revoked: %+v", mask(sn2), d)
	}
	if _, err := h.PingWithin(d1NS, 5*time.Second, "-c", "1", "-W", "1", gw4); err != nil {
		t.Fatalf("device 1 after device 2's revocation: %v", err)
	}
	if a1.Exited() {
		t.Fatalf("device 1's agent stopped: %v: %s", a1.Err(), a1.LastLine())
	}
}

// expectRefused waits for an agent that must be refused: it exits non-zero
// with a one-line reason.
func (h *harness) expectRefused(p *netnstest.Proc) {
	h.T.Helper()
	err := h.ExpectFailure(p, 30*time.Second)
	last := p.LastLine()
	if !strings.HasPrefix(last, "dasset-agent: ") || !strings.Contains(last, "refused") {
		h.T.Fatalf("%s: last line %q; want \"dasset-agent: …refused…\"", p.Name, last)
	}
	h.T.Logf("%s: %v: %s", p.Name, err, last)
}

// listDevices is `dassetctl devices list -o json` by masked serial number.
func listDevices(t *testing.T, g *gateway) map[string]device {
	t.Helper()
	var l deviceList
	g.CtlJSON(&l, "devices", "list")
	m := map[string]device{}
	for _, d := range l.Devices {
		m[d.SerialNumber] = d
	}
	return m
}

// mask is how the gateway shows a serial number to an operator.
func mask(sn string) string { return "****" + sn[len(sn)-2:] }

// base64Key checks that s is a 32-byte base64 key (as wg prints it).
func base64Key(s string) bool {
	b, err := base64.StdEncoding.DecodeString(s)
	return err == nil && len(b) == 32
}
