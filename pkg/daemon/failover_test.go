package daemon_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// TestAgentFailover: an agent given two gateways of one fleet (one
// PostgreSQL registry, one keystore, one TLS certificate), one by name and
// one by address, logs in to one of them; when that gateway stops, the agent logs in on the other with the
// same WireGuard key (the pinned one: no re-key), moves its WireGuard peer
// there and pings the gateway address through the new tunnel.
func TestAgentFailover(t *testing.T) {
	cluster := pgtest.Start(t)
	dsn := cluster.NewDatabase(t)
	keys := filepath.Join(t.TempDir(), "keys")
	certFile, keyFile, _, err := tlsutil.EnsureSelfSigned(t.TempDir(), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// Each gateway its own keystore (the second joins from the first's
	// fleet keys file): two processes on one keystore directory race on
	// its files.
	fleetConfig := func(keys string) config.Config {
		cfg := testConfig(t, t.TempDir())
		cfg.KeystoreDir = keys
		cfg.Store = config.Store{Driver: config.DriverPostgres, DSN: dsn}
		cfg.GRPC.CertFile, cfg.GRPC.KeyFile = certFile, keyFile
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	cfgA := fleetConfig(keys)
	gws := []*testGateway{startGateway(t, cfgA)}
	gws = append(gws, startGateway(t, fleetConfig(joinFleet(t, cfgA))))
	const sn, hwid = "DS-FAILOVER-01", "HW-FAILOVER-01"
	gws[0].enroll(t, [2]string{sn, hwid})

	var logs syncBuffer
	// The first gateway by name: each address of localhost is a candidate,
	// verified against the name with the certificate as CA; the second by
	// address, verified the same way.
	a, err := agent.New(agent.Config{
		Gateway: fmt.Sprintf("localhost:%d,%s", gws[0].d.GRPCAddr().(*net.TCPAddr).Port, gws[1].d.GRPCAddr()),
		Serial:  sn, HardwareID: hwid,
		StateDir: filepath.Join(t.TempDir(), "agent"), CAFile: certFile, Netstack: true,
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { t.Log(logs.String()) })
	key := a.PublicKey()
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
	gw4 := netip.MustParseAddr("100.80.0.1")

	var first, other *testGateway
	for i, g := range gws {
		if a.GatewayInstance() == g.d.InstanceID() {
			first, other = g, gws[1-i]
		}
	}
	if first == nil {
		t.Fatalf("the agent logged in to gateway instance %q, neither %s nor %s", a.GatewayInstance(), gws[0].d.InstanceID(), gws[1].d.InstanceID())
	}
	if err := pingUntil(a.Net(), a.Addresses(), gw4, 10*time.Second); err != nil {
		t.Fatalf("through the first gateway: %v", err)
	}
	addrs := a.Addresses()

	first.stop()
	start := time.Now()
	poll.Must(t, 15*time.Second, "the agent logged in on the other gateway", func() error {
		if got := a.GatewayInstance(); got != other.d.InstanceID() {
			return fmt.Errorf("on gateway instance %q", got)
		}
		return nil
	})
	if err := pingUntil(a.Net(), a.Addresses(), gw4, 10*time.Second); err != nil {
		t.Fatalf("through the second gateway: %v", err)
	}
	t.Logf("failover to the second gateway and a ping through it took %v", time.Since(start))

	if a.PublicKey() != key {
		t.Fatal("the agent changed its WireGuard key")
	}
	if got := a.Addresses(); fmt.Sprint(got) != fmt.Sprint(addrs) {
		t.Fatalf("addresses %v on the second gateway, %v on the first", got, addrs)
	}
	// The second gateway holds the device as a peer with its one key.
	lctx, lcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer lcancel()
	peers, err := other.admin.ListPeers(lctx, &gatewayv1.ListPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range peers.Peers {
		if p.Kind == "device" && bytes.Equal(p.PublicKey, key[:]) {
			found = true
		}
	}
	if !found {
		t.Fatal("the second gateway has no device peer with the agent's key")
	}
	out := logs.String()
	for _, want := range []string{"failing over", "gateway_instance=" + other.d.InstanceID()} {
		if !strings.Contains(out, want) {
			t.Errorf("agent log lacks %q", want)
		}
	}
}
