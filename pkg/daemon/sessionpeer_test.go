package daemon_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// sessionFleet is two gateways on one PostgreSQL, each with its own
// WireGuard endpoint (tunnel.endpoint), a device admitted on A, and a
// client of account alice (talking gRPC to A only) with a session open to
// it that pings the device through A.
type sessionFleet struct {
	dsn, certFile string
	a, b          *testGateway
	devState      string
	dev           *agent.Agent
	stopDev       func()
	client        agent.ClientConfig
	s             *agent.Session
}

const (
	followSerial = "DS-FOLLOW-0001"
	followHWID   = "HW-FOLLOW-0001"
)

func startSessionFleet(t *testing.T) *sessionFleet {
	t.Helper()
	f := &sessionFleet{dsn: pgtest.Start(t).NewDatabase(t), devState: filepath.Join(t.TempDir(), "device")}
	keys := filepath.Join(t.TempDir(), "keys")
	var keyFile string
	var err error
	f.certFile, keyFile, _, err = tlsutil.EnsureSelfSigned(t.TempDir(), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fleetConfig := func() config.Config {
		cfg := testConfig(t, t.TempDir())
		cfg.KeystoreDir = keys
		cfg.Store = config.Store{Driver: config.DriverPostgres, DSN: f.dsn}
		cfg.GRPC.CertFile, cfg.GRPC.KeyFile = f.certFile, keyFile
		// Every gateway of a fleet names its own WireGuard endpoint: a
		// client of another gateway cannot guess it.
		cfg.Tunnel.Endpoint = "127.0.0.1:" + strconv.Itoa(cfg.Tunnel.ListenPort)
		// The old home drops a moved device's peers at its next full
		// reconcile at the latest.
		cfg.Tunnel.ReconcileInterval = time.Second
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	f.a, f.b = startGateway(t, fleetConfig()), startGateway(t, fleetConfig())
	f.a.enroll(t, [2]string{followSerial, followHWID})
	f.dev, f.stopDev = f.startDevice(t, f.a)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := f.a.admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: "alice", Password: "alice-password-1"}); err != nil {
		t.Fatal(err)
	}
	f.client = agent.ClientConfig{
		Gateway: f.a.d.GRPCAddr().String(), TLS: agent.TLSOptions{CAFile: f.certFile},
		Account: "alice", Password: "alice-password-1", Netstack: true,
		StateDir: filepath.Join(t.TempDir(), "client"), Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("client", "alice"),
		PollInterval: 200 * time.Millisecond,
	}
	if _, _, err := agent.ClientLogin(ctx, f.client); err != nil {
		t.Fatal(err)
	}
	code, _, _, err := agent.BindCode(ctx, agent.Config{Gateway: f.a.d.GRPCAddr().String(), StateDir: f.devState, CAFile: f.certFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Bind(ctx, f.client, code); err != nil {
		t.Fatal(err)
	}
	if f.s, err = agent.OpenSession(ctx, f.client, followSerial); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.s.Close(context.Background()) })
	if err := pingUntil(f.s.Net(), f.s.ClientAddresses(), addrOf(t, f.dev.Addresses(), true), 15*time.Second); err != nil {
		t.Fatalf("client → device through A: %v", err)
	}
	if _, ep, n := f.s.GatewayPeer(); ep != f.a.cfg.Tunnel.Endpoint || n != 0 {
		t.Fatalf("session's gateway endpoint %s after %d changes, want A's %s, unchanged", ep, n, f.a.cfg.Tunnel.Endpoint)
	}
	return f
}

// startDevice runs the device's agent against g with the device's state
// (its pinned key); stop ends it (once).
func (f *sessionFleet) startDevice(t *testing.T, g *testGateway) (*agent.Agent, func()) {
	t.Helper()
	a, err := agent.New(agent.Config{
		Gateway: g.d.GRPCAddr().String(), Serial: followSerial, HardwareID: followHWID,
		StateDir: f.devState, CAFile: f.certFile, Netstack: true,
		Logger:     slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("agent", "device"),
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Error("device agent did not stop within 10s")
			}
		})
	}
	t.Cleanup(stop)
	waitReady(t, a, done)
	return a, stop
}

// getSession asks gateway g for session id with alice's stored token.
func (f *sessionFleet) getSession(t *testing.T, g *testGateway, id string) (*gatewayv1.SessionInfo, error) {
	t.Helper()
	return f.getSessionAs(t, g, f.client.StateDir, id)
}

// getSessionAs asks gateway g for session id with the token stored in the
// client state directory dir.
func (f *sessionFleet) getSessionAs(t *testing.T, g *testGateway, dir, id string) (*gatewayv1.SessionInfo, error) {
	t.Helper()
	tlsCfg, err := tlsutil.ClientConfig(f.certFile, "", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(g.d.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tok, err := os.ReadFile(filepath.Join(dir, "access-token"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+strings.TrimSpace(string(tok)))
	return gatewayv1.NewClientServiceClient(conn).GetSession(ctx, &gatewayv1.GetSessionRequest{SessionId: id})
}

// TestGetSessionNamesHomeGateway: GetSession answers with the gateway the
// session's device is homed on, from the registry, whichever gateway is
// asked. When the registry moves the device's home from A to B, both
// gateways name B (its key and endpoint from the gateways table), and the
// client, polling A, replaces its WireGuard peer with B within a poll.
func TestGetSessionNamesHomeGateway(t *testing.T) {
	f := startSessionFleet(t)
	info, err := f.getSession(t, f.a, f.s.ID())
	if err != nil || info.GetGateway().GetEndpoint() != f.a.cfg.Tunnel.Endpoint {
		t.Fatalf("GetSession on A before the move: %v, %v; want A's endpoint %s", info, err, f.a.cfg.Tunnel.Endpoint)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := postgres.Open(ctx, f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	devs, err := st.ListDevices(ctx)
	if err != nil || len(devs) != 1 {
		t.Fatalf("devices in the registry: %v, %v; want one", devs, err)
	}
	if err := st.SetHome(ctx, devs[0].ID, f.b.d.InstanceID()); err != nil {
		t.Fatal(err)
	}
	gws, err := st.Gateways(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var keyB []byte
	for _, g := range gws {
		if g.InstanceID == f.b.d.InstanceID() {
			keyB = g.PublicKey[:]
		}
	}
	for _, g := range []*testGateway{f.a, f.b} {
		info, err := f.getSession(t, g, f.s.ID())
		if err != nil || info.GetGateway().GetEndpoint() != f.b.cfg.Tunnel.Endpoint || string(info.GetGateway().GetPublicKey()) != string(keyB) ||
			len(info.GetGateway().GetAllowedIps()) == 0 || info.GetSessionId() != f.s.ID() {
			t.Fatalf("GetSession after the move, asked on %s: %v, %v; want B's endpoint %s and key %x", g.d.InstanceID(), info, err, f.b.cfg.Tunnel.Endpoint, keyB)
		}
	}
	// dassetctl fleet's counts: the device and its session are B's now.
	loads := func() map[string]string {
		t.Helper()
		resp, err := f.a.admin.ListGateways(ctx, &gatewayv1.ListGatewaysRequest{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, g := range resp.GetGateways() {
			out[g.GetInstanceId()] = fmt.Sprintf("%d devices, %d sessions", g.GetDevices(), g.GetSessions())
		}
		return out
	}
	if got := loads(); got[f.a.d.InstanceID()] != "0 devices, 0 sessions" || got[f.b.d.InstanceID()] != "1 devices, 1 sessions" {
		t.Fatalf("ListGateways after the move: %v; want A with none, B with the device and its session", got)
	}
	poll.Must(t, 10*time.Second, "the client following the device to B", func() error {
		if _, ep, n := f.s.GatewayPeer(); ep != f.b.cfg.Tunnel.Endpoint || n != 1 {
			return fmt.Errorf("gateway peer %s after %d changes, want B's %s after 1", ep, n, f.b.cfg.Tunnel.Endpoint)
		}
		return nil
	})

	// Another account's session, unknown ids and closed sessions are
	// NotFound on any gateway.
	if _, err := f.a.admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: "bob", Password: "bob-password-22"}); err != nil {
		t.Fatal(err)
	}
	bob := f.client
	bob.Account, bob.Password, bob.StateDir = "bob", "bob-password-22", filepath.Join(t.TempDir(), "bob")
	if _, _, err := agent.ClientLogin(ctx, bob); err != nil {
		t.Fatal(err)
	}
	if _, err := f.getSessionAs(t, f.b, bob.StateDir, f.s.ID()); status.Code(err) != codes.NotFound {
		t.Fatalf("GetSession of alice's session by bob: %v, want NotFound", err)
	}
	if _, err := f.getSession(t, f.b, "0123456789abcdef0123456789abcdef"); status.Code(err) != codes.NotFound {
		t.Fatalf("GetSession of an unknown id: %v, want NotFound", err)
	}
	if err := f.s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.getSession(t, f.b, f.s.ID()); status.Code(err) != codes.NotFound {
		t.Fatalf("GetSession of a closed session on B: %v, want NotFound", err)
	}
	if got := loads(); got[f.b.d.InstanceID()] != "1 devices, 0 sessions" {
		t.Fatalf("ListGateways after the session closed: %v; want B with the device only", got)
	}
}

// TestSessionFollowsDevice: the device of an open session moves from A to
// B (its agent stops on A and logs in on B with its pinned key). The
// client, polling A, learns from GetSession that B serves the session now,
// replaces its WireGuard peer (same key, same addresses) within a poll, and
// its pings reach the device again, through B, which added the client peer
// when the device came home to it; A drops the device and client peers.
func TestSessionFollowsDevice(t *testing.T) {
	f := startSessionFleet(t)
	devKey, dev4 := f.dev.PublicKey(), addrOf(t, f.dev.Addresses(), true)
	client4, clientAddrs := addrOf(t, f.s.ClientAddresses(), true), fmt.Sprint(f.s.ClientAddresses())

	f.stopDev()
	devB, _ := f.startDevice(t, f.b)
	if devB.GatewayInstance() != f.b.d.InstanceID() || devB.PublicKey() != devKey {
		t.Fatalf("device on instance %q (key kept: %v), want B %q with its pinned key", devB.GatewayInstance(), devB.PublicKey() == devKey, f.b.d.InstanceID())
	}
	moved := time.Now()
	poll.Must(t, 10*time.Second, "the session following the device to B", func() error {
		if _, ep, n := f.s.GatewayPeer(); ep != f.b.cfg.Tunnel.Endpoint || n != 1 {
			return fmt.Errorf("gateway peer %s after %d changes, want B's %s after 1", ep, n, f.b.cfg.Tunnel.Endpoint)
		}
		return nil
	})
	if err := pingUntil(f.s.Net(), f.s.ClientAddresses(), dev4, 15*time.Second); err != nil {
		t.Fatalf("client → device through B: %v", err)
	}
	t.Logf("the session's pings reached the device through B %v after it logged in there", time.Since(moved).Round(time.Millisecond))
	if got := fmt.Sprint(f.s.ClientAddresses()); got != clientAddrs || addrOf(t, devB.Addresses(), true) != dev4 {
		t.Fatalf("addresses changed in the move: client %s → %s, device %s → %s", clientAddrs, got, dev4, addrOf(t, devB.Addresses(), true))
	}
	if !peerPresent(t, f.b, client4) {
		t.Fatal("gateway B has no peer for the client's address")
	}
	waitPeerGone(t, f.a, dev4)
	waitPeerGone(t, f.a, client4)
}
