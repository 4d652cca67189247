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
	gwNS, d1NS, d2NS := "dgw-"+h.suffix, "dd1-"+h.suffix, "dd2-"+h.suffix
	for _, ns := range []string{gwNS, d1NS, d2NS} {
		h.netns(ns)
	}
	gwAddr1 := h.link(gwNS, d1NS, 1)
	gwAddr2 := h.link(gwNS, d2NS, 2)

	g := h.newGateway(gwNS)
	g.start()
	g.waitReady(30 * time.Second)
	fp := g.fingerprint()
	t.Logf("gateway up on %s in %s, certificate sha256 %s", g.ifname, gwNS, fp)

	// Enrollment: one by flags, one from a CSV batch.
	g.mustCtl("enroll", "--serial", sn1, "--hwid", hw1)
	csv := filepath.Join(h.dir, "devices.csv")
	if err := os.WriteFile(csv, []byte("serial_number,hardware_id\n# e2e batch\n"+sn2+","+hw2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g.mustCtl("enroll", "--file", csv)
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
	dev1 := agentSpec{ns: d1NS, gateway: gwAddr1, pin: fp, serial: sn1, hwid: hw1,
		ifname: "da1x" + h.suffix, stateDir: filepath.Join(h.dir, "agent1"), logName: "agent1.log"}
	a1 := h.startAgent(dev1)
	addr1 := h.waitAddr(a1, d1NS, dev1.ifname, 30*time.Second)
	if _, err := pingWithin(d1NS, 15*time.Second, "-c", "3", "-W", "1", gw4); err != nil {
		t.Fatalf("device 1 → %s: %v", gw4, err)
	}
	if _, err := pingWithin(d1NS, 15*time.Second, "-6", "-c", "3", "-W", "1", gw6); err != nil {
		t.Fatalf("device 1 → %s: %v", gw6, err)
	}
	t.Logf("device 1 is %s and pings the gateway over IPv4 and IPv6", addr1)

	// Refusals, while device 2 has no pinned key yet: a wrong hardware id,
	// and device 2 presenting device 1's WireGuard key.
	wrongHW := h.startAgent(agentSpec{ns: d2NS, gateway: gwAddr2, pin: fp, serial: sn2, hwid: "HW-E2E-WRONG-9999",
		ifname: "dwx" + h.suffix, stateDir: filepath.Join(h.dir, "agent-wronghw"), logName: "agent-wronghw.log"})
	expectRefused(t, wrongHW)
	stolenDir := filepath.Join(h.dir, "agent-stolenkey")
	if err := os.MkdirAll(stolenDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key1, err := os.ReadFile(filepath.Join(dev1.stateDir, "private.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stolenDir, "private.key"), key1, 0o600); err != nil {
		t.Fatal(err)
	}
	stolen := h.startAgent(agentSpec{ns: d2NS, gateway: gwAddr2, pin: fp, serial: sn2, hwid: hw2,
		ifname: "dsx" + h.suffix, stateDir: stolenDir, logName: "agent-stolenkey.log"})
	expectRefused(t, stolen)
	if d := listDevices(t, g)[mask(sn2)]; d.KeyPinned {
		t.Fatalf("device 2 got a pinned key from the refused logins: %+v", d)
	}
	if a1.exited() {
		t.Fatalf("device 1's agent stopped: %v: %s", a1.err, a1.lastLine())
	}

	// Device 2 logs in with its own key.
	dev2 := agentSpec{ns: d2NS, gateway: gwAddr2, pin: fp, serial: sn2, hwid: hw2,
		ifname: "da2x" + h.suffix, stateDir: filepath.Join(h.dir, "agent2"), logName: "agent2.log"}
	a2 := h.startAgent(dev2)
	addr2 := h.waitAddr(a2, d2NS, dev2.ifname, 30*time.Second)
	if addr2 == addr1 {
		t.Fatalf("both devices got %s", addr1)
	}
	if _, err := pingWithin(d2NS, 15*time.Second, "-c", "3", "-W", "1", gw4); err != nil {
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
	pub1, pub2 := h.wgPubkey(dev1.stateDir), h.wgPubkey(dev2.stateDir)
	if !base64Key(pub1) || !base64Key(pub2) || pub1 == pub2 {
		t.Fatalf("device public keys %q, %q: want two distinct base64 keys", pub1, pub2)
	}
	show, err := nsRun(gwNS, "wg", "show", g.ifname)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{pub1, pub2} {
		if !strings.Contains(show, "peer: "+k) {
			t.Fatalf("wg show %s lacks peer %s:\n%s", g.ifname, k, show)
		}
	}
	if strings.Contains(show, "private key") {
		t.Fatalf("wg show %s shows a private key line:\n%s", g.ifname, show)
	}
	if pk, err := nsRun(gwNS, "wg", "show", g.ifname, "private-key"); err != nil || strings.TrimSpace(pk) != "(none)" {
		t.Fatalf("wg show %s private-key: %q, %v; want (none)", g.ifname, pk, err)
	}
	var peers peerList
	g.ctlJSON(&peers, "peers")
	seen := map[string]string{}
	for _, p := range peers.Peers {
		seen[p.PublicKey] = p.Kind
	}
	for _, k := range []string{pub1, pub2} {
		if seen[k] != "device" {
			t.Fatalf("dassetctl peers: %s kind %q, want device: %+v", k, seen[k], peers)
		}
	}
	if out, err := nsRun(gwNS, "wg", "set", g.ifname, "peer", pub1, "remove"); err == nil {
		t.Fatalf("wg set %s peer … remove succeeded: %s", g.ifname, out)
	}
	if show, err := nsRun(gwNS, "wg", "show", g.ifname, "peers"); err != nil || !strings.Contains(show, pub1) {
		t.Fatalf("after a refused wg set, peer %s is gone: %q, %v", pub1, show, err)
	}
	if _, err := pingWithin(d1NS, 5*time.Second, "-c", "1", "-W", "1", gw4); err != nil {
		t.Fatalf("device 1 after refused wg set: %v", err)
	}

	// Devices never reach each other through the hub.
	for _, c := range []struct{ ns, dst string }{{d2NS, addr1}, {d1NS, addr2}} {
		dst := strings.TrimSuffix(c.dst, "/32")
		if out, err := nsRun(c.ns, "ping", "-c", "2", "-W", "1", dst); err == nil {
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
	graceful, stopErr := g.p.stop(15 * time.Second)
	if !graceful || stopErr != nil {
		t.Fatalf("gateway stop on SIGTERM: graceful=%v, %v", graceful, stopErr)
	}
	g.start()
	ready := g.waitReady(30 * time.Second)
	var wg sync.WaitGroup
	took := make([]time.Duration, 2)
	errs := make([]error, 2)
	for i, ns := range []string{d1NS, d2NS} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = pingWithin(ns, restartBudget+10*time.Second, "-c", "1", "-W", "1", gw4)
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
	g.mustCtl("devices", "revoke", sn2)
	if ok, err := a2.wait(15 * time.Second); !ok {
		t.Fatalf("device 2's agent still runs 15s after revocation")
	} else if err == nil {
		t.Fatalf("device 2's agent exited 0 after revocation; want non-zero")
	}
	if !strings.Contains(a2.logText(), "revoked") {
		t.Fatalf("device 2's agent did not say it was revoked: %s", a2.lastLine())
	}
	t.Logf("device 2 after revocation: %s", a2.lastLine())
	if out, err := nsRun(d2NS, "ping", "-c", "2", "-W", "1", gw4); err == nil {
		t.Fatalf("device 2 still pings the gateway after revocation: %s", out)
	}
	if err := poll(5*time.Second, 100*time.Millisecond, func() error {
		show, err := nsRun(gwNS, "wg", "show", g.ifname, "peers")
		if err != nil {
			return err
		}
		if strings.Contains(show, pub2) {
			return fmt.Errorf("peer %s still on %s", pub2, g.ifname)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if d := listDevices(t, g)[mask(sn2)]; !d.Revoked {
		t.Fatalf("devices list: %s not revoked: %+v", mask(sn2), d)
	}
	if _, err := pingWithin(d1NS, 5*time.Second, "-c", "1", "-W", "1", gw4); err != nil {
		t.Fatalf("device 1 after device 2's revocation: %v", err)
	}
	if a1.exited() {
		t.Fatalf("device 1's agent stopped: %v: %s", a1.err, a1.lastLine())
	}
}

// expectRefused waits for an agent that must be refused: it exits non-zero
// with a one-line reason.
func expectRefused(t *testing.T, p *proc) {
	t.Helper()
	ok, err := p.wait(30 * time.Second)
	if !ok {
		t.Fatalf("%s: still running after 30s; want a refusal and exit", p.name)
	}
	if err == nil {
		t.Fatalf("%s: exited 0; want non-zero", p.name)
	}
	last := p.lastLine()
	if !strings.HasPrefix(last, "dasset-agent: ") || !strings.Contains(last, "refused") {
		t.Fatalf("%s: last line %q; want \"dasset-agent: …refused…\"", p.name, last)
	}
	t.Logf("%s: %v: %s", p.name, err, last)
}

// listDevices is `dassetctl devices list -o json` by masked serial number.
func listDevices(t *testing.T, g *gateway) map[string]device {
	t.Helper()
	var l deviceList
	g.ctlJSON(&l, "devices", "list")
	m := map[string]device{}
	for _, d := range l.Devices {
		m[d.SerialNumber] = d
	}
	return m
}

// mask is how the gateway shows a serial number to an operator.
func mask(sn string) string { return "****" + sn[len(sn)-4:] }

// base64Key checks that s is a 32-byte base64 key (as wg prints it).
func base64Key(s string) bool {
	b, err := base64.StdEncoding.DecodeString(s)
	return err == nil && len(b) == 32
}
