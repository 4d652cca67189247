package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// eventLog records a device agent's Sync events with the time each arrived.
type eventLog struct {
	mu     sync.Mutex
	events []seenEvent
	notify chan struct{}
}

type seenEvent struct {
	at time.Time
	ev *gatewayv1.SyncEvent
}

func newEventLog() *eventLog { return &eventLog{notify: make(chan struct{}, 1)} }

func (l *eventLog) record(ev *gatewayv1.SyncEvent) {
	l.mu.Lock()
	l.events = append(l.events, seenEvent{at: time.Now(), ev: ev})
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// find returns when the first event matching f arrived.
func (l *eventLog) find(f func(*gatewayv1.SyncEvent) bool) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		if f(e.ev) {
			return e.at, true
		}
	}
	return time.Time{}, false
}

// waitFor waits up to within for an event matching f and returns when it
// arrived.
func (l *eventLog) waitFor(t *testing.T, what string, within time.Duration, f func(*gatewayv1.SyncEvent) bool) time.Time {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		if at, ok := l.find(f); ok {
			return at
		}
		select {
		case <-l.notify:
		case <-deadline.C:
			t.Fatalf("device did not see %s within %v", what, within)
		}
	}
}

func opened(id string) func(*gatewayv1.SyncEvent) bool {
	return func(ev *gatewayv1.SyncEvent) bool { return ev.GetSessionOpened().GetSessionId() == id }
}

func closed(id string) func(*gatewayv1.SyncEvent) bool {
	return func(ev *gatewayv1.SyncEvent) bool { return ev.GetSessionClosed().GetSessionId() == id }
}

// startEventAgent is startAgent with the agent's Sync events recorded.
func startEventAgent(t *testing.T, g *testGateway, sn, hwid, stateDir string) (*agent.Agent, *eventLog) {
	t.Helper()
	events := newEventLog()
	a, err := agent.New(agent.Config{
		Gateway: g.d.GRPCAddr().String(), Serial: sn, HardwareID: hwid,
		StateDir: stateDir, Pin: g.d.Fingerprint(), Netstack: true,
		Logger:     slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("agent", sn[len(sn)-2:]),
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		OnEvent: events.record,
	})
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})
	waitReady(t, a, done)
	return a, events
}

// addrOf returns the address of the given family among ps.
func addrOf(t *testing.T, ps []netip.Prefix, v4 bool) netip.Addr {
	t.Helper()
	for _, p := range ps {
		if p.Addr().Is4() == v4 {
			return p.Addr()
		}
	}
	t.Fatalf("no IPv4=%v address in %v", v4, ps)
	return netip.Addr{}
}

// expectDropped runs f (which must fail to get through: its error is
// required) until the router's drop counter for reason rises: the rise is
// the evidence that the packet reached the hub and was dropped there, not
// lost on the way. A packet delayed by a handshake costs another attempt.
func expectDropped(t *testing.T, g *testGateway, reason, what string, f func() error) {
	t.Helper()
	before := g.d.RouterStats().Dropped[reason]
	err := poll.Until(context.Background(), 10*time.Second, 10*time.Millisecond, func() error {
		if err := f(); err == nil {
			t.Fatalf("%s: got through, want it dropped", what)
		}
		if after := g.d.RouterStats().Dropped[reason]; after <= before {
			return fmt.Errorf("router %s drops %d → %d, want a rise", reason, before, after)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v (all drops: %v)", what, err, g.d.RouterStats().Dropped)
	}
}

// waitPeerGone waits until the gateway's WireGuard device has no peer whose
// allowed IPs hold addr: the evidence that a packet from that address can
// no longer be decrypted at the gateway, before checking that it is not.
func waitPeerGone(t *testing.T, g *testGateway, addr netip.Addr) {
	t.Helper()
	poll.Must(t, 5*time.Second, "WireGuard peer of "+addr.String()+" removed", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := g.admin.ListPeers(ctx, &gatewayv1.ListPeersRequest{})
		if err != nil {
			return err
		}
		for _, p := range resp.GetPeers() {
			for _, a := range p.GetAllowedIps() {
				if pre, err := netip.ParsePrefix(a); err == nil && pre.Contains(addr) {
					return fmt.Errorf("peer %x still allows %s", p.GetPublicKey()[:4], a)
				}
			}
		}
		return nil
	})
}

// peerPresent reports whether some peer of the gateway's WireGuard device
// allows addr (the positive control of waitPeerGone).
func peerPresent(t *testing.T, g *testGateway, addr netip.Addr) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := g.admin.ListPeers(ctx, &gatewayv1.ListPeersRequest{})
	if err != nil {
		t.Fatalf("ListPeers: %v", err)
	}
	for _, p := range resp.GetPeers() {
		for _, a := range p.GetAllowedIps() {
			if pre, err := netip.ParsePrefix(a); err == nil && pre.Contains(addr) {
				return true
			}
		}
	}
	return false
}

// TestClientSessions runs the remote-control flow in process over netstack:
// accounts, binding codes, sessions, isolation in the hub, close and unbind.
func TestClientSessions(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	g := startGateway(t, cfg)
	const (
		sn1, hw1 = "DS-SESSION-0001", "HW-S001-ABCDEF"
		sn2, hw2 = "DS-SESSION-0002", "HW-S002-ABCDEF"
	)
	g.enroll(t, [2]string{sn1, hw1}, [2]string{sn2, hw2})
	dev1Dir, dev2Dir := filepath.Join(dir, "dev1"), filepath.Join(dir, "dev2")
	a1, ev1 := startEventAgent(t, g, sn1, hw1, dev1Dir)
	a2, ev2 := startEventAgent(t, g, sn2, hw2, dev2Dir)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, acc := range [][2]string{{"alice", "alice-password-1"}, {"bob", "bob-password-22"}} {
		if _, err := g.admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: acc[0], Password: acc[1]}); err != nil {
			t.Fatalf("create account %s: %v", acc[0], err)
		}
	}
	clientLog := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	client := func(name, account, password string) agent.ClientConfig {
		c := agent.ClientConfig{
			Gateway: g.d.GRPCAddr().String(), TLS: agent.TLSOptions{Pin: g.d.Fingerprint()},
			Account: account, Password: password, Netstack: true,
			StateDir: filepath.Join(dir, name), Logger: clientLog.With("client", name),
			PollInterval: 200 * time.Millisecond,
		}
		if _, _, err := agent.ClientLogin(ctx, c); err != nil {
			t.Fatalf("%s login: %v", name, err)
		}
		// Later calls use only what login stored.
		stored, err := agent.LoadClientConfig(c.StateDir)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		stored.Netstack, stored.Logger, stored.PollInterval = true, c.Logger, c.PollInterval
		return stored
	}
	c1 := client("client1", "alice", "alice-password-1")
	c2 := client("client2", "bob", "bob-password-22")
	if st, err := os.Stat(filepath.Join(c1.StateDir, "access-token")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("access token file: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	if _, _, err := agent.ClientLogin(ctx, agent.ClientConfig{Gateway: c1.Gateway, TLS: c1.TLS, Account: "alice", Password: "wrong-password"}); err == nil {
		t.Fatal("login with a wrong password succeeded")
	}

	bindCode := func(stateDir string) string {
		code, _, _, err := agent.BindCode(ctx, agent.Config{Gateway: g.d.GRPCAddr().String(), StateDir: stateDir, Pin: g.d.Fingerprint()})
		if err != nil {
			t.Fatalf("binding code: %v", err)
		}
		return code
	}
	code1 := bindCode(dev1Dir)
	if sn, err := agent.Bind(ctx, c1, code1); err != nil || sn != sn1 {
		t.Fatalf("bind: %q, %v; want %q", sn, err, sn1)
	}
	// A used code, an unknown one and garbage bind nothing.
	if _, err := agent.Bind(ctx, c2, code1); !errors.Is(err, agent.ErrNotFound) {
		t.Fatalf("reused code: %v, want ErrNotFound", err)
	}
	if _, err := agent.Bind(ctx, c2, "0000000000"); !errors.Is(err, agent.ErrNotFound) {
		t.Fatalf("unknown code: %v, want ErrNotFound", err)
	}
	if _, err := agent.Bind(ctx, c2, "not a code!"); !errors.Is(err, agent.ErrInvalidArgument) {
		t.Fatalf("garbage code: %v, want ErrInvalidArgument", err)
	}
	if devs, err := agent.ListDevices(ctx, c2); err != nil || len(devs) != 0 {
		t.Fatalf("client 2 devices after failed binds: %v, %v; want none", devs, err)
	}
	devs, err := agent.ListDevices(ctx, c1)
	if err != nil || len(devs) != 1 || devs[0].Serial != sn1 || !devs[0].Online || len(devs[0].Addresses) != 2 {
		t.Fatalf("client 1 devices: %+v, %v; want device 1 online with 2 addresses", devs, err)
	}
	if sn, err := agent.Bind(ctx, c2, bindCode(dev2Dir)); err != nil || sn != sn2 {
		t.Fatalf("client 2 bind: %q, %v", sn, err)
	}

	// Client 1 opens a session to device 1.
	s1, err := agent.OpenSession(ctx, c1, sn1)
	if err != nil {
		t.Fatalf("open session: %v", err)
	}
	returned := time.Now()
	defer s1.Close(context.Background())
	// Operators see the session with the device's serial masked.
	if ls, err := g.admin.ListSessions(ctx, &gatewayv1.ListSessionsRequest{}); err != nil || len(ls.GetSessions()) != 1 ||
		ls.GetSessions()[0].GetSessionId() != s1.ID() || ls.GetSessions()[0].GetSerialNumber() != "****01" {
		t.Fatalf("admin ListSessions: %v, %v", ls, err)
	}
	at := ev1.waitFor(t, "SessionOpened", 5*time.Second, opened(s1.ID()))
	if at.After(returned.Add(time.Second)) {
		t.Fatalf("device 1 saw SessionOpened %v after OpenSession returned, want within 1s", at.Sub(returned))
	}
	if _, ok := ev2.find(opened(s1.ID())); ok {
		t.Fatal("device 2 was told of device 1's session")
	}
	c1Addr4 := addrOf(t, s1.ClientAddresses(), true)
	if !netip.MustParsePrefix("100.95.0.0/16").Contains(c1Addr4) || !netip.MustParsePrefix("fdda:55e7:0:ff::/64").Contains(addrOf(t, s1.ClientAddresses(), false)) {
		t.Fatalf("client addresses %v outside the client prefixes", s1.ClientAddresses())
	}
	if fmt.Sprint(s1.DeviceAddresses()) != fmt.Sprint(a1.Addresses()) {
		t.Fatalf("session device addresses %v, device 1 has %v", s1.DeviceAddresses(), a1.Addresses())
	}
	dev1v4, dev1v6 := addrOf(t, a1.Addresses(), true), addrOf(t, a1.Addresses(), false)
	dev2v4 := addrOf(t, a2.Addresses(), true)
	for _, dst := range []netip.Addr{dev1v4, dev1v6} {
		if err := pingUntil(s1.Net(), s1.ClientAddresses(), dst, 10*time.Second); err != nil {
			t.Fatalf("client 1 → device 1: %v", err)
		}
	}

	// A TCP connection to a listener on device 1, with bytes both ways and
	// the client's own address seen by the device (no NAT in the hub).
	ln, err := a1.Net().ListenTCP(&net.TCPAddr{IP: dev1v4.AsSlice(), Port: 7000})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	remote := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			remote <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		remote <- c.RemoteAddr().String()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 64)
		n, _ := io.ReadAtLeast(c, buf, len("hello device"))
		_, _ = c.Write(append([]byte("device got: "), buf[:n]...))
	}()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := s1.Net().DialContextTCP(dctx, &net.TCPAddr{IP: dev1v4.AsSlice(), Port: 7000})
	dcancel()
	if err != nil {
		t.Fatalf("TCP client 1 → device 1: %v", err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("hello device")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || string(got) != "device got: hello device" {
		t.Fatalf("TCP reply %q, %v", got, err)
	}
	if r := <-remote; func() bool { ap, err := netip.ParseAddrPort(r); return err != nil || ap.Addr() != c1Addr4 }() {
		t.Fatalf("device saw the connection from %s, want client 1's address %s", r, c1Addr4)
	}

	// Client 2 has its own session, to device 2.
	s2, err := agent.OpenSession(ctx, c2, sn2)
	if err != nil {
		t.Fatalf("client 2 open session: %v", err)
	}
	defer s2.Close(context.Background())
	if err := pingUntil(s2.Net(), s2.ClientAddresses(), dev2v4, 10*time.Second); err != nil {
		t.Fatalf("client 2 → device 2: %v", err)
	}
	ev2.waitFor(t, "client 2's SessionOpened", 5*time.Second, opened(s2.ID()))

	// The hub lets client 1 reach only its session's device. A drop shows in
	// the very next /metrics scrape (the router's counters are not cached).
	metricsAddr := g.d.HTTPAddr().String()
	const dropped = "dasset_gateway_router_dropped_packets_total"
	scrapedBefore := sample(t, scrape(t, metricsAddr), dropped, "reason", "no_session")
	expectDropped(t, g, "no_session", "client 1 → device 2", func() error { return pingFrom(s1.Net(), s1.ClientAddresses(), dev2v4) })
	if scraped, counted := sample(t, scrape(t, metricsAddr), dropped, "reason", "no_session"), g.d.RouterStats().Dropped["no_session"]; scraped <= scrapedBefore || scraped != float64(counted) {
		t.Fatalf("/metrics no_session drops %v → %v right after the drop; the router counts %d", scrapedBefore, scraped, counted)
	}
	expectDropped(t, g, "client_to_client", "client 1 → client 2", func() error {
		return pingFrom(s1.Net(), s1.ClientAddresses(), addrOf(t, s2.ClientAddresses(), true))
	})
	expectDropped(t, g, "device_to_device", "device 1 → device 2", func() error { return pingFrom(a1.Net(), a1.Addresses(), dev2v4) })
	if _, err := agent.OpenSession(ctx, c1, sn2); !errors.Is(err, agent.ErrPermissionDenied) {
		t.Fatalf("client 1 opening a session to device 2 (not bound): %v, want ErrPermissionDenied", err)
	}
	if err := pingUntil(s1.Net(), s1.ClientAddresses(), dev1v4, 10*time.Second); err != nil {
		t.Fatalf("client 1 → device 1 after the refused attempts: %v", err)
	}
	if !peerPresent(t, g, c1Addr4) {
		t.Fatalf("no WireGuard peer allows client 1's %s during its session", c1Addr4)
	}

	// A single gateway with no tunnel.endpoint: GetSession, polled all along,
	// names it as OpenSession did (the address the client reached), so the
	// session never replaced its peer.
	if _, ep, n := s1.GatewayPeer(); n != 0 || ep != net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Tunnel.ListenPort)) {
		t.Fatalf("session's gateway peer %s after %d changes; want 127.0.0.1:%d, unchanged", ep, n, cfg.Tunnel.ListenPort)
	}

	// Closing the session (as `session close --id` does, while this end's
	// tunnel stays up) tells device 1 and cuts client 1 off.
	if err := agent.CloseSession(ctx, c1, s1.ID()); err != nil {
		t.Fatalf("close session: %v", err)
	}
	ev1.waitFor(t, "SessionClosed", 5*time.Second, closed(s1.ID()))
	waitPeerGone(t, g, c1Addr4)
	if err := pingFrom(s1.Net(), s1.ClientAddresses(), dev1v4); err == nil {
		t.Fatal("client 1 reached device 1 after its session closed")
	}
	expectDropped(t, g, "no_session", "device 1 → client 1 after close", func() error { return pingFrom(a1.Net(), a1.Addresses(), c1Addr4) })
	if err := agent.CloseSession(ctx, c1, s1.ID()); !errors.Is(err, agent.ErrNotFound) {
		t.Fatalf("closing a closed session: %v, want ErrNotFound", err)
	}
	// The open end learns of the close within its poll interval (GetSession).
	wctx1, wcancel1 := context.WithTimeout(ctx, 3*time.Second)
	err = s1.Wait(wctx1)
	wcancel1()
	if !errors.Is(err, agent.ErrSessionEnded) {
		t.Fatalf("client 1 after the gateway closed its session: Wait = %v, want ErrSessionEnded", err)
	}
	if err := s1.Close(ctx); err != nil {
		t.Fatalf("Session.Close after the gateway closed it: %v", err)
	}
	// Client 2 is not disturbed.
	if err := pingUntil(s2.Net(), s2.ClientAddresses(), dev2v4, 10*time.Second); err != nil {
		t.Fatalf("client 2 → device 2 after client 1's close: %v", err)
	}

	// Re-open; unbinding during the session cuts the client off at once.
	s3, err := agent.OpenSession(ctx, c1, sn1)
	if err != nil {
		t.Fatalf("re-open: %v", err)
	}
	defer s3.Close(context.Background())
	if s3.ID() == s1.ID() {
		t.Fatal("re-opened session has the old id")
	}
	if err := pingUntil(s3.Net(), s3.ClientAddresses(), dev1v4, 10*time.Second); err != nil {
		t.Fatalf("client 1 → device 1 in the re-opened session: %v", err)
	}
	if _, err := agent.Unbind(ctx, c1, sn1); err != nil {
		t.Fatalf("unbind: %v", err)
	}
	unbound := time.Now()
	ev1.waitFor(t, "SessionClosed after unbind", 5*time.Second, closed(s3.ID()))
	waitPeerGone(t, g, addrOf(t, s3.ClientAddresses(), true))
	// pingFrom waits at most 1s for the reply.
	if err := pingFrom(s3.Net(), s3.ClientAddresses(), dev1v4); err == nil {
		t.Fatal("client 1 reached device 1 after unbinding it")
	}
	expectDropped(t, g, "no_session", "device 1 → client 1 after unbind", func() error {
		return pingFrom(a1.Net(), a1.Addresses(), addrOf(t, s3.ClientAddresses(), true))
	})
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	err = s3.Wait(wctx)
	wcancel()
	if !errors.Is(err, agent.ErrSessionEnded) {
		t.Fatalf("Wait after unbind: %v, want ErrSessionEnded", err)
	}
	t.Logf("client noticed the end %v after unbind (the failed pings included): %v", time.Since(unbound).Round(time.Millisecond), err)
	if _, err := agent.OpenSession(ctx, c1, sn1); !errors.Is(err, agent.ErrPermissionDenied) {
		t.Fatalf("open session after unbind: %v, want ErrPermissionDenied", err)
	}
	if devs, err := agent.ListDevices(ctx, c1); err != nil || len(devs) != 0 {
		t.Fatalf("client 1 devices after unbind: %v, %v; want none", devs, err)
	}
	// A device no longer bound and a serial that was never enrolled get the
	// same answer: a client cannot probe which serial numbers exist.
	_, errBound := agent.Unbind(ctx, c1, sn1)
	_, errUnknown := agent.Unbind(ctx, c1, "DS-NEVER-ENROLLED")
	if !errors.Is(errBound, agent.ErrPermissionDenied) || !errors.Is(errUnknown, agent.ErrPermissionDenied) || errBound.Error() != errUnknown.Error() {
		t.Fatalf("second unbind: %v; unknown serial: %v; want the same PermissionDenied", errBound, errUnknown)
	}
	if err := s3.Close(ctx); err != nil {
		t.Fatalf("Session.Close after unbind: %v", err)
	}
	if err := pingUntil(s2.Net(), s2.ClientAddresses(), dev2v4, 10*time.Second); err != nil {
		t.Fatalf("client 2 → device 2 at the end: %v", err)
	}
}

// TestClientSessionKernelTUN opens a client session on a real kernel TUN
// (root only) and reaches a TCP listener on a device's netstack from the
// host's own network stack, through the interface, its route and the hub.
// It re-runs itself in a network namespace of its own (unshare -n), so the
// interface and the route to the virtual network never touch the host's.
func TestClientSessionKernelTUN(t *testing.T) {
	if os.Getenv("DASSET_TEST_IN_NETNS") == "" {
		if os.Geteuid() != 0 {
			t.Skip("needs root for a kernel TUN and a network namespace")
		}
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			t.Skip("no /dev/net/tun")
		}
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			t.Skip("no unshare(1)")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, unshare, "-n", "--", os.Args[0], "-test.run=^TestClientSessionKernelTUN$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "DASSET_TEST_IN_NETNS=1")
		out, err := cmd.CombinedOutput()
		t.Logf("in a new network namespace:\n%s", out)
		if err != nil {
			t.Fatalf("in a new network namespace: %v", err)
		}
		if !bytes.Contains(out, []byte("--- PASS: TestClientSessionKernelTUN")) {
			t.Fatal("the run in the namespace did not pass")
		}
		return
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	g := startGateway(t, testConfig(t, dir))
	const sn, hw = "DS-KTUN-0001", "HW-KTUN-ABCDEF"
	g.enroll(t, [2]string{sn, hw})
	devDir := filepath.Join(dir, "dev")
	a, _ := startEventAgent(t, g, sn, hw, devDir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := g.admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: "carol", Password: "carol-password"}); err != nil {
		t.Fatal(err)
	}
	c := agent.ClientConfig{
		Gateway: g.d.GRPCAddr().String(), TLS: agent.TLSOptions{Pin: g.d.Fingerprint()},
		Account: "carol", Password: "carol-password", StateDir: filepath.Join(dir, "client"),
		Interface: "dasset-c0", Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	if _, _, err := agent.ClientLogin(ctx, c); err != nil {
		t.Fatal(err)
	}
	code, _, _, err := agent.BindCode(ctx, agent.Config{Gateway: c.Gateway, StateDir: devDir, Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Bind(ctx, c, code); err != nil {
		t.Fatal(err)
	}
	s, err := agent.OpenSession(ctx, c, sn)
	if err != nil {
		t.Fatalf("open session on a kernel TUN: %v", err)
	}
	if s.Net() != nil {
		t.Fatal("a kernel TUN session has a netstack")
	}
	link, err := netlink.LinkByName("dasset-c0")
	if err != nil {
		t.Fatalf("session interface: %v", err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, a := range addrs {
		have[a.IPNet.String()] = true
	}
	for _, p := range s.ClientAddresses() {
		if !have[p.String()] {
			t.Fatalf("interface addresses %v lack %s", addrs, p)
		}
	}

	dev4 := addrOf(t, a.Addresses(), true)
	ln, err := a.Net().ListenTCP(&net.TCPAddr{IP: dev4.AsSlice(), Port: 7001})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 16)
		n, _ := io.ReadAtLeast(conn, buf, 4)
		_, _ = conn.Write(append([]byte("tun:"), buf[:n]...))
	}()
	// The host's own stack: the kernel picks the TUN by the session's route.
	var conn net.Conn
	err = poll.Until(ctx, 10*time.Second, 100*time.Millisecond, func() error {
		d := net.Dialer{Timeout: time.Second}
		conn, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(dev4, 7001).String())
		return err
	})
	if err != nil {
		t.Fatalf("TCP from the host through the session TUN: %v", err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || string(got) != "tun:ping" {
		t.Fatalf("reply %q, %v", got, err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("dasset-c0"); err == nil {
		t.Fatal("session interface still there after Close")
	}
}
