package daemon_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/daemon"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// syncBuffer is an io.Writer safe for concurrent log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testGateway is a real daemon in netstack mode on ephemeral loopback ports.
type testGateway struct {
	d      *daemon.Daemon
	cfg    config.Config
	log    *syncBuffer
	admin  gatewayv1.AdminServiceClient
	cancel context.CancelFunc
	done   chan error
}

func testConfig(t testing.TB, dir string) config.Config {
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Tunnel.Mode = "netstack"
	cfg.Tunnel.ListenPort = freeUDPPort(t)
	cfg.Tunnel.UAPI = false
	cfg.Tunnel.Interface = "dtest0"
	cfg.GRPC.Listen = "127.0.0.1:0"
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Admin.Socket = filepath.Join(dir, "admin.sock")
	cfg.Tunnel.Endpoint = ""
	// Tests and benchmarks log thousands of fresh devices in from one
	// loopback source: lift the per-source and global buckets (the
	// hostile-caller tests set them back).
	cfg.Throttle.SourceRate, cfg.Throttle.SourceBurst = 1<<20, 1<<20
	cfg.Throttle.GlobalRate, cfg.Throttle.GlobalBurst = 1<<20, 1<<20
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config invalid: %v", err)
	}
	return cfg
}

// startGateway starts a daemon on cfg; opts (at most one) are its test
// hooks, its Logger set here.
func startGateway(t *testing.T, cfg config.Config, opts ...daemon.Options) *testGateway {
	t.Helper()
	buf := &syncBuffer{}
	var opt daemon.Options
	if len(opts) > 0 {
		opt = opts[0]
	}
	opt.Logger = privacy.NewLogger(io.MultiWriter(buf, testWriter{t}), slog.LevelDebug, "json")
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, cfg, opt)
	if err != nil {
		cancel()
		t.Fatalf("daemon.New: %v", err)
	}
	g := &testGateway{d: d, cfg: cfg, log: buf, cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- d.Run(ctx) }()
	admin, closeAdmin := adminClient(t, cfg.Admin.Socket)
	t.Cleanup(closeAdmin)
	g.admin = admin
	t.Cleanup(g.stop)
	return g
}

func (g *testGateway) stop() {
	if g.cancel == nil {
		return
	}
	g.cancel()
	g.cancel = nil
	select {
	case <-g.done:
	case <-time.After(15 * time.Second):
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func (g *testGateway) enroll(t *testing.T, pairs ...[2]string) {
	t.Helper()
	req := &gatewayv1.EnrollDevicesRequest{}
	for _, p := range pairs {
		req.Devices = append(req.Devices, &gatewayv1.DeviceEnrollment{SerialNumber: p[0], HardwareId: p[1]})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := g.admin.EnrollDevices(ctx, req); err != nil {
		t.Fatalf("enroll: %v", err)
	}
}

func startAgent(t *testing.T, g *testGateway, sn, hwid, stateDir string) (*agent.Agent, chan error) {
	t.Helper()
	a, err := agent.New(agent.Config{
		Gateway: g.d.GRPCAddr().String(), Serial: sn, HardwareID: hwid,
		StateDir: stateDir, Pin: g.d.Fingerprint(), Netstack: true,
		Logger:     slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("agent", sn[len(sn)-2:]),
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
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
	return a, done
}

func waitReady(t *testing.T, a *agent.Agent, done chan error) {
	t.Helper()
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent stopped before its tunnel came up: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent tunnel not up within 20s")
	}
}

func TestNetstackLoginAndPing(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	g := startGateway(t, cfg)
	g.enroll(t, [2]string{"DS-CANARY-0001", "HW-0001-ABCDEF"}, [2]string{"DS-CANARY-0002", "HW-0002-ABCDEF"})

	a1, done1 := startAgent(t, g, "DS-CANARY-0001", "HW-0001-ABCDEF", filepath.Join(dir, "agent1"))
	waitReady(t, a1, done1)
	gw4 := netip.MustParseAddr("100.80.0.1")
	if err := pingUntil(a1.Net(), a1.Addresses(), gw4, 10*time.Second); err != nil {
		t.Fatalf("device 1 → gateway: %v", err)
	}
	gw6 := netip.MustParseAddr("fdda:55e7::1")
	if err := pingUntil(a1.Net(), a1.Addresses(), gw6, 10*time.Second); err != nil {
		t.Fatalf("device 1 → gateway over IPv6: %v", err)
	}

	// A wrong HWID and an unknown SN get the same answer.
	conn, err := agent.Dial(g.d.GRPCAddr().String(), agent.TLSOptions{Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dev := gatewayv1.NewDeviceServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := a1.PublicKey()
	_, errWrong := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: "DS-CANARY-0002", HardwareId: "HW-WRONG", PublicKey: make32(7)})
	_, errUnknown := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: "DS-NOT-ENROLLED", HardwareId: "HW-0002-ABCDEF", PublicKey: make32(7)})
	if status.Code(errWrong) != codes.Unauthenticated || status.Code(errUnknown) != codes.Unauthenticated {
		t.Fatalf("wrong HWID: %v; unknown SN: %v; want both Unauthenticated", errWrong, errUnknown)
	}
	if status.Convert(errWrong).Message() != status.Convert(errUnknown).Message() {
		t.Fatalf("answers differ: %q vs %q", status.Convert(errWrong).Message(), status.Convert(errUnknown).Message())
	}
	// Device 2 presenting device 1's key is refused.
	_, err = dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: "DS-CANARY-0002", HardwareId: "HW-0002-ABCDEF", PublicKey: key[:]})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second device with the first one's key: %v, want AlreadyExists", err)
	}
	// Bad input names the field.
	_, err = dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: "DS-CANARY-0002", HardwareId: "HW-0002-ABCDEF", PublicKey: []byte{1, 2, 3}})
	if status.Code(err) != codes.InvalidArgument || !bytes.Contains([]byte(status.Convert(err).Message()), []byte("public_key")) {
		t.Fatalf("short key: %v, want InvalidArgument naming public_key", err)
	}

	// The admin view shows the device with a pinned key and its addresses.
	list, err := g.admin.ListDevices(ctx, &gatewayv1.ListDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, d := range list.GetDevices() {
		if d.GetSerialNumber() == "****01" {
			found = true
			if !d.GetKeyPinned() || len(d.GetAddresses()) != 2 {
				t.Fatalf("device 1 in list: %+v", d)
			}
		}
	}
	if !found {
		t.Fatalf("device 1 not in list: %v", list)
	}
}

func freeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func make32(b byte) []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

// TestRetentionKeepsLiveEndpoints: a retention run forgets only idle
// endpoints. Forgetting one re-creates the peer (its last handshake back
// to zero, its session keys gone), so the device's peer must come out of
// two runs with the very handshake it had before.
func TestRetentionKeepsLiveEndpoints(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, testConfig(t, dir))
	g.enroll(t, [2]string{"DS-LIVE-0001", "HW-LIVE-ABCDEF"})
	a, done := startAgent(t, g, "DS-LIVE-0001", "HW-LIVE-ABCDEF", filepath.Join(dir, "agent"))
	waitReady(t, a, done)
	if err := pingUntil(a.Net(), a.Addresses(), netip.MustParseAddr("100.80.0.1"), 10*time.Second); err != nil {
		t.Fatalf("device → gateway: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	handshake := func() time.Time {
		t.Helper()
		resp, err := g.admin.ListPeers(ctx, &gatewayv1.ListPeersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		pub := a.PublicKey()
		for _, p := range resp.GetPeers() {
			if bytes.Equal(p.GetPublicKey(), pub[:]) {
				return p.GetLastHandshake().AsTime()
			}
		}
		t.Fatal("the device is not a peer")
		return time.Time{}
	}
	before := handshake()
	if before.IsZero() || before.Unix() == 0 {
		t.Fatalf("no handshake after a ping: %v", before)
	}
	for i := 0; i < 2; i++ {
		if _, err := g.admin.RunRetention(ctx, &gatewayv1.RunRetentionRequest{}); err != nil {
			t.Fatalf("run retention: %v", err)
		}
		if after := handshake(); !after.Equal(before) {
			t.Fatalf("run %d: the device's last handshake went %v → %v: its live endpoint was forgotten", i+1, before, after)
		}
	}
}

// TestAuditPrunedOnTheDaemonsClock: the audit log's retention is judged by
// the daemon's clock (Options.Now), like every other retention.
func TestAuditPrunedOnTheDaemonsClock(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	clock := &testClock{now: time.Now().UTC()}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := daemon.New(ctx, cfg, daemon.Options{Now: clock.Now, Logger: privacy.NewLogger(testWriter{t}, slog.LevelInfo, "json")})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	g := &testGateway{d: d, cfg: cfg, log: &syncBuffer{}, cancel: stop, done: make(chan error, 1)}
	go func() { g.done <- d.Run(runCtx) }()
	t.Cleanup(g.stop)
	admin, closeAdmin := adminClient(t, cfg.Admin.Socket)
	defer closeAdmin()
	g.admin = admin
	// Audited operator actions.
	g.enroll(t, [2]string{"DS-AUDIT-0001", "HW-AUDIT-0001"})
	g.enroll(t, [2]string{"DS-AUDIT-0002", "HW-AUDIT-0002"})
	if resp, err := admin.RunRetention(ctx, &gatewayv1.RunRetentionRequest{}); err != nil || resp.GetPruned()[store.TableAudit] != 0 {
		t.Fatalf("retention before the audit log's limit: %v, %v; want nothing pruned from it", resp.GetPruned(), err)
	}
	clock.Add(cfg.Retention.AuditLog + 24*time.Hour)
	resp, err := admin.RunRetention(ctx, &gatewayv1.RunRetentionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPruned()[store.TableAudit] < 1 {
		t.Fatalf("retention a day past the audit log's limit on the daemon's clock pruned %v", resp.GetPruned())
	}
}
