package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// unbindBudget is how soon after `dasset-agent unbind` returns the client's
// echo replies from the device must have stopped.
const unbindBudget = 2 * time.Second

// session is one `dasset-agent session open` process and what it printed.
type session struct {
	h       *harness
	p       *netnstest.Proc
	ns      string
	ifname  string
	id      string
	client4 string // client's virtual IPv4 address
	device  string // device addresses as printed, space-separated prefixes
}

// client is one client-mode state directory in its namespace.
type client struct {
	h        *harness
	ns       string
	stateDir string
}

// agent runs a one-shot dasset-agent command in the client's namespace with
// the client's state directory.
func (c client) agent(args ...string) (string, error) {
	return c.h.NsRun(c.ns, append(append([]string{c.h.Path("dasset-agent")}, args...), "--state-dir", c.stateDir)...)
}

func (c client) mustAgent(args ...string) string {
	c.h.T.Helper()
	out, err := c.agent(args...)
	if err != nil {
		c.h.T.Fatal(err)
	}
	return out
}

// open starts `session open` in the background and waits until it printed
// its addresses and its interface carries the client address.
func (c client) open(serial, ifname, logName string) *session {
	h := c.h
	h.T.Helper()
	p := h.Start(c.ns, logName, h.Path("dasset-agent"), "session", "open", "--serial", serial,
		"--interface", ifname, "--state-dir", c.stateDir, "--poll", "250ms", "--log-format", "json")
	out := h.WaitOutput(p, 30*time.Second, "its addresses", func(out string) bool { return netnstest.Field(out, "Expires") != "" })
	s := &session{h: h, p: p, ns: c.ns, ifname: ifname, id: netnstest.Field(out, "Session"),
		client4: firstV4(netnstest.Field(out, "Client")), device: netnstest.Field(out, "Device")}
	if s.id == "" || s.client4 == "" || firstV4(s.device) == "" || netnstest.Field(out, "Interface") != ifname {
		h.T.Fatalf("%s: session open printed %q", logName, out)
	}
	if got := strings.TrimSuffix(h.WaitAddr(p, c.ns, ifname, 10*time.Second), "/32"); got != s.client4 {
		h.T.Fatalf("%s: interface %s has %s, session open printed client %s", logName, ifname, got, s.client4)
	}
	return s
}

// linkGone reports whether the session's interface no longer exists.
func (s *session) linkGone() bool {
	_, err := s.h.Run("ip", "-n", s.ns, "link", "show", "dev", s.ifname)
	return err != nil
}

// expectEnded checks that the session process ends on its own within 10s
// of after (what ended the session) with a non-zero exit and, unless reason
// is empty, reason in its last line; and that its interface goes.
func (s *session) expectEnded(after, reason string) {
	t := s.h.T
	t.Helper()
	if ok, err := s.p.Wait(10 * time.Second); !ok {
		t.Fatalf("session open still runs 10s after %s", after)
	} else if err == nil {
		t.Fatalf("session open exited 0 after %s; want non-zero: %s", after, s.p.LastLine())
	}
	if last := s.p.LastLine(); !strings.Contains(last, reason) {
		t.Fatalf("session open after %s: last line %q; want %q", after, last, reason)
	}
	t.Logf("session open after %s: %v: %s", after, s.p.Err(), s.p.LastLine())
	if err := s.h.Poll(5*time.Second, 50*time.Millisecond, func() error {
		if !s.linkGone() {
			return fmt.Errorf("interface %s still in %s", s.ifname, s.ns)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestSessions runs the remote-control flow over real namespaces: the real
// gateway, two device agents (`up`) and two clients (`login`, `bind`,
// `session open` on kernel TUNs), each in its own network namespace. It
// checks that a session reaches its device (ICMP v4/v6, TCP, the device sees
// the client's own address), that the hub drops everything else (with its
// drop counters rising for the right reason), that devices hear of session
// open and close, and that unbinding cuts an open session off at once.
func TestSessions(t *testing.T) {
	began := time.Now()
	h := newHarness(t)
	gwNS := "sgw-" + h.Suffix
	d1NS, d2NS := "sd1-"+h.Suffix, "sd2-"+h.Suffix
	c1NS, c2NS := "sc1-"+h.Suffix, "sc2-"+h.Suffix
	for _, ns := range []string{gwNS, d1NS, d2NS, c1NS, c2NS} {
		h.Netns(ns)
	}
	gwD1, gwD2 := h.link(gwNS, d1NS, 1), h.link(gwNS, d2NS, 2)
	gwC1, gwC2 := h.link(gwNS, c1NS, 3), h.link(gwNS, c2NS, 4)

	g := h.newGatewayNamed(gwNS, "sgw"+h.Suffix)
	g.start()
	g.WaitReady(30 * time.Second)
	fp := g.fingerprint()
	g.MustCtl("enroll", "--serial", sn1, "--hwid", hw1)
	g.MustCtl("enroll", "--serial", sn2, "--hwid", hw2)

	dev1 := netnstest.AgentSpec{NS: d1NS, Gateway: gwD1 + ":8443", Pin: fp, Serial: sn1, HWID: hw1,
		Interface: "sa1x" + h.Suffix, StateDir: filepath.Join(h.Dir, "device1"), LogPath: "device1.log"}
	dev2 := netnstest.AgentSpec{NS: d2NS, Gateway: gwD2 + ":8443", Pin: fp, Serial: sn2, HWID: hw2,
		Interface: "sa2x" + h.Suffix, StateDir: filepath.Join(h.Dir, "device2"), LogPath: "device2.log"}
	a1, a2 := h.StartAgent(dev1), h.StartAgent(dev2)
	dev1v4 := strings.TrimSuffix(h.WaitAddr(a1, d1NS, dev1.Interface, 30*time.Second), "/32")
	dev2v4 := strings.TrimSuffix(h.WaitAddr(a2, d2NS, dev2.Interface, 30*time.Second), "/32")
	devs := listDevices(t, g)
	if !slices.Contains(devs[mask(sn1)].Addresses, dev1v4+"/32") || !slices.Contains(devs[mask(sn2)].Addresses, dev2v4+"/32") {
		t.Fatalf("devices list %+v lacks the interfaces' addresses %s, %s", devs, dev1v4, dev2v4)
	}
	t.Logf("devices up: device 1 %s, device 2 %s (%.1fs since start)", dev1v4, dev2v4, time.Since(began).Seconds())

	// Two accounts; each client logs in from its own namespace.
	accounts := map[string]string{"alice": "alice-e2e-password", "bob": "bob-e2e-password"}
	for name, pw := range accounts {
		if _, err := h.RunStdin(pw+"\n", h.Path("dassetctl"), "--socket", g.Sock, "accounts", "create", name, "--password-stdin"); err != nil {
			t.Fatal(err)
		}
	}
	login := func(c client, gw, account, pw string) (string, error) {
		return h.RunStdin(pw+"\n", "ip", "netns", "exec", c.ns, h.Path("dasset-agent"), "login", "--gateway", gw+":8443",
			"--pin", fp, "--account", account, "--password-stdin", "--state-dir", c.stateDir)
	}
	c1 := client{h: h, ns: c1NS, stateDir: filepath.Join(h.Dir, "client1")}
	c2 := client{h: h, ns: c2NS, stateDir: filepath.Join(h.Dir, "client2")}
	if out, err := login(c1, gwC1, "alice", "not-alices-password"); err == nil {
		t.Fatalf("login with a wrong password succeeded: %s", out)
	}
	if _, err := login(c1, gwC1, "alice", accounts["alice"]); err != nil {
		t.Fatal(err)
	}
	if _, err := login(c2, gwC2, "bob", accounts["bob"]); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(c1.stateDir, "access-token")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("client 1's access token: %v, %v; want mode 0600", st, err)
	}

	// Binding: each device shows a code, its client binds with it.
	bindCode := func(d netnstest.AgentSpec) string {
		t.Helper()
		return h.BindCode(d.NS, d.Gateway, fp, d.StateDir)
	}
	code1 := bindCode(dev1)
	if out := c1.mustAgent("bind", "--code", code1); !strings.Contains(out, "Bound device "+sn1) {
		t.Fatalf("client 1 bind: %q", out)
	}
	if out, err := c2.agent("bind", "--code", code1); err == nil {
		t.Fatalf("client 2 bound with client 1's used code: %s", out)
	}
	if out := c2.mustAgent("bind", "--code", bindCode(dev2)); !strings.Contains(out, "Bound device "+sn2) {
		t.Fatalf("client 2 bind: %q", out)
	}
	if out := c1.mustAgent("devices"); !strings.Contains(out, sn1) || !strings.Contains(out, dev1v4) || strings.Contains(out, sn2) {
		t.Fatalf("client 1 devices: want only device 1 with %s:\n%s", dev1v4, out)
	}

	// Client 1 opens a session to device 1; device 1 hears of it.
	opening := time.Now()
	s1 := c1.open(sn1, "sc1x"+h.Suffix, "session1.log")
	if firstV4(s1.device) != dev1v4 {
		t.Fatalf("session device addresses %q, device 1 is %s", s1.device, dev1v4)
	}
	at, err := h.waitRecord(a1, 5*time.Second, "session opened", map[string]string{"session_id": s1.id})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("session %s: client %s; device 1 logged \"session opened\" %v after `session open` started",
		s1.id, s1.client4, at.Sub(opening).Round(time.Millisecond))
	if took, err := h.PingWithin(c1NS, 10*time.Second, "-c", "1", "-W", "1", dev1v4); err != nil {
		t.Fatalf("client 1 → device 1 %s: %v", dev1v4, err)
	} else {
		t.Logf("client 1 pings device 1 over IPv4 (first reply within %v)", took.Round(time.Millisecond))
	}
	var dev1v6 string
	for _, f := range strings.Fields(s1.device) {
		if a, _, _ := strings.Cut(f, "/"); strings.Contains(a, ":") {
			dev1v6 = a
		}
	}
	if dev1v6 == "" {
		t.Fatalf("session printed no IPv6 device address: %q", s1.device)
	}
	if _, err := h.PingWithin(c1NS, 10*time.Second, "-6", "-c", "1", "-W", "1", dev1v6); err != nil {
		t.Fatalf("client 1 → device 1 %s: %v", dev1v6, err)
	}

	// TCP from client 1 to a listener on device 1's virtual address; the
	// device sees client 1's own virtual address (no NAT in the hub).
	echo := h.Start(d1NS, "tcpecho.log", h.SelfArgv(tcpEchoEnv, dev1v4+":7000")...)
	h.WaitOutput(echo, 10*time.Second, `"listening"`, func(out string) bool { return strings.Contains(out, "listening") })
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	reply, err := h.NsRun(c1NS, "env", tcpDialEnv+"="+dev1v4+":7000", self)
	if err != nil {
		t.Fatalf("TCP client 1 → device 1: %v", err)
	}
	if want := s1.client4 + " said hello device\n"; reply != want {
		t.Fatalf("TCP reply %q, want %q", reply, want)
	}
	if ok, err := echo.Wait(5 * time.Second); !ok || err != nil {
		t.Fatalf("echo server: ended=%v, %v: %s", ok, err, echo.LogText())
	}
	t.Logf("TCP client 1 → device 1:7000: %q", strings.TrimSpace(reply))

	// Client 2's session to device 2; device 1 hears nothing of it.
	s2 := c2.open(sn2, "sc2x"+h.Suffix, "session2.log")
	if _, err := h.PingWithin(c2NS, 10*time.Second, "-c", "1", "-W", "1", dev2v4); err != nil {
		t.Fatalf("client 2 → device 2: %v", err)
	}
	if _, err := h.waitRecord(a2, 5*time.Second, "session opened", map[string]string{"session_id": s2.id}); err != nil {
		t.Fatal(err)
	}
	if hasRecord(a2, "session opened", map[string]string{"session_id": s1.id}) || hasRecord(a1, "session opened", map[string]string{"session_id": s2.id}) {
		t.Fatal("a device was told of the other device's session")
	}

	// The hub lets client 1 reach only its session's device.
	m := &dropMeter{g: g}
	before := m.fresh()
	blocked := func(what, ns, dst string) {
		t.Helper()
		if out, err := h.NsRun(ns, "ping", "-c", "2", "-W", "1", dst); err == nil {
			t.Fatalf("%s got through: %s", what, out)
		}
	}
	for _, c := range []struct{ what, reason, ns, dst string }{
		{"client 1 → device 2", "no_session", c1NS, dev2v4},
		{"client 1 → client 2", "client_to_client", c1NS, s2.client4},
		{"device 1 → device 2", "device_to_device", d1NS, dev2v4},
	} {
		blocked(c.what, c.ns, c.dst)
		after := m.fresh()
		expectRise(t, c.what, c.reason, before, after, true)
		before = after
	}
	if out, err := c1.agent("session", "open", "--serial", sn2, "--interface", "sx"+h.Suffix); err == nil {
		t.Fatalf("client 1 opened a session to device 2, bound to client 2: %s", out)
	} else {
		t.Logf("client 1 → session to device 2 refused: %v", err)
	}
	if _, err := h.PingWithin(c1NS, 5*time.Second, "-c", "1", "-W", "1", dev1v4); err != nil {
		t.Fatalf("client 1 → device 1 after the blocked attempts: %v", err)
	}

	// `session close` ends it at the gateway: device 1 hears of it, client 1
	// is cut off, and the hub drops device 1's packets to client 1's old
	// address (the client's own packets now die in the gateway's WireGuard,
	// which no longer knows its key).
	peers := func() []string {
		t.Helper()
		out, err := h.NsRun(gwNS, "wg", "show", g.Interface, "peers")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Fields(out)
	}
	pub1, pub2 := h.wgPubkey(dev1.StateDir), h.wgPubkey(dev2.StateDir)
	peersOpen := peers()
	if len(peersOpen) != 4 || !slices.Contains(peersOpen, pub1) || !slices.Contains(peersOpen, pub2) {
		t.Fatalf("gateway peers with two sessions open: %v; want both devices and two clients", peersOpen)
	}
	before = m.fresh()
	closing := time.Now()
	if out := c1.mustAgent("session", "close", "--id", s1.id); !strings.Contains(out, "Session "+s1.id+" closed.") {
		t.Fatalf("session close: %q", out)
	}
	closed := time.Now()
	at, err = h.waitRecord(a1, 5*time.Second, "session closed", map[string]string{"session_id": s1.id})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("device 1 logged \"session closed\" %v after `session close` started (the command took %v)",
		at.Sub(closing).Round(time.Millisecond), closed.Sub(closing).Round(time.Millisecond))
	if p := peers(); len(p) != 3 || !slices.Contains(p, pub1) || !slices.Contains(p, pub2) {
		t.Fatalf("gateway peers after client 1's session closed: %v (were %v); want client 1's gone", p, peersOpen)
	}
	blocked("client 1 → device 1 after close", c1NS, dev1v4)
	blocked("device 1 → client 1's old address", d1NS, s1.client4)
	expectRise(t, "device 1 → client 1 after close", "no_session", before, m.fresh(), true)
	// The session process notices within its poll interval (GetSession)
	// that the gateway closed the session, exits non-zero with the reason
	// and takes its interface down.
	s1.expectEnded("`session close`", "the gateway closed the session")
	if _, err := h.PingWithin(c2NS, 5*time.Second, "-c", "1", "-W", "1", dev2v4); err != nil {
		t.Fatalf("client 2 → device 2 after client 1's close: %v", err)
	}

	// Re-open, then unbind device 1 from client 1 during the session: the
	// client is cut off at once.
	s3 := c1.open(sn1, "sc1x"+h.Suffix, "session3.log")
	if s3.id == s1.id {
		t.Fatalf("re-opened session has the old id %s", s1.id)
	}
	if _, err := h.waitRecord(a1, 5*time.Second, "session opened", map[string]string{"session_id": s3.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.PingWithin(c1NS, 10*time.Second, "-c", "1", "-W", "1", dev1v4); err != nil {
		t.Fatalf("client 1 → device 1 in the re-opened session: %v", err)
	}
	before = m.fresh()
	// Echo requests every 50ms across the unbind; -D stamps each reply.
	pinger := h.Start(c1NS, "ping-unbind.log", "ping", "-D", "-n", "-i", "0.05", "-w", "5", dev1v4)
	// Unbind once replies flow (a few, so the cut is measured mid-stream).
	if err := h.Poll(3*time.Second, 20*time.Millisecond, func() error {
		if n := len(replyTimes(pinger.LogText())); n < 5 {
			return fmt.Errorf("%d echo replies before the unbind, want 5:\n%s", n, pinger.LogText())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	unbindStart := time.Now()
	out := c1.mustAgent("unbind", "--serial", sn1)
	unbound := time.Now()
	if !strings.Contains(out, "Unbound device "+sn1) {
		t.Fatalf("unbind: %q", out)
	}
	if at, err := h.waitRecord(a1, 2*time.Second, "session closed", map[string]string{"session_id": s3.id}); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("device 1 logged \"session closed\" %v after `unbind` started", at.Sub(unbindStart).Round(time.Millisecond))
	}
	if ok, err := pinger.Wait(10 * time.Second); !ok {
		t.Fatal("ping across the unbind still runs after 10s")
	} else {
		t.Logf("ping across the unbind: %v", err)
	}
	replies := replyTimes(pinger.LogText())
	if len(replies) == 0 || !replies[0].Before(unbindStart) {
		t.Fatalf("no echo reply from device 1 before the unbind:\n%s", pinger.LogText())
	}
	last := replies[len(replies)-1]
	cut := last.Sub(unbound)
	t.Logf("unbind: the call took %v; last echo reply %v after it started, %v after it returned (%d replies, 50ms apart)",
		unbound.Sub(unbindStart).Round(time.Millisecond), last.Sub(unbindStart).Round(time.Millisecond), cut.Round(time.Millisecond), len(replies))
	if cut > unbindBudget {
		t.Errorf("client 1 still reached device 1 %v after unbind returned, want ≤ %v", cut, unbindBudget)
	}
	// The session process notices within its poll interval and exits 1
	// with the reason; its interface goes.
	s3.expectEnded("unbind", "")
	blocked("device 1 → client 1's address after unbind", d1NS, s3.client4)
	expectRise(t, "device 1 → client 1 after unbind", "no_session", before, m.fresh(), false)
	if out, err := c1.agent("session", "open", "--serial", sn1, "--interface", "sx"+h.Suffix); err == nil {
		t.Fatalf("session open after unbind succeeded: %s", out)
	}
	if out := c1.mustAgent("devices"); strings.Contains(out, sn1) {
		t.Fatalf("client 1 still lists device 1 after unbind:\n%s", out)
	}
	if _, err := h.PingWithin(c2NS, 5*time.Second, "-c", "1", "-W", "1", dev2v4); err != nil {
		t.Fatalf("client 2 → device 2 at the end: %v", err)
	}
	for _, p := range []*netnstest.Proc{a1, a2, s2.p} {
		if p.Exited() {
			t.Fatalf("%s stopped: %v: %s", p.Name, p.Err(), p.LastLine())
		}
	}
	// SIGINT ends a running session cleanly: it closes the session (device
	// 2 hears of it), logs "session closed", exits 0 and takes its
	// interface down.
	if err := s2.p.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if ok, err := s2.p.Wait(15 * time.Second); !ok || err != nil {
		t.Fatalf("session open after SIGINT: ended=%v, %v: %s", ok, err, s2.p.LastLine())
	}
	if !hasRecord(s2.p, "session closed", map[string]string{"session": s2.id}) {
		t.Fatalf("session open did not log \"session closed\": %s", s2.p.LastLine())
	}
	if !s2.linkGone() {
		t.Fatalf("interface %s still in %s after session open exited", s2.ifname, c2NS)
	}
	if _, err := h.waitRecord(a2, 5*time.Second, "session closed", map[string]string{"session_id": s2.id}); err != nil {
		t.Fatal(err)
	}
	t.Logf("session flow done in %.1fs", time.Since(began).Seconds())
}
