package daemon_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// TestOfflineDeviceRefusesSessions: a device with no Sync stream and no
// handshake for the idle timeout is shown offline, and session requests for
// it fail with FailedPrecondition ("device offline").
func TestOfflineDeviceRefusesSessions(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Device.IdleTimeout = 2 * time.Second
	g := startGateway(t, cfg)
	const sn, hw = "DS-OFFLINE-01", "HW-OFF-01"
	g.enroll(t, [2]string{sn, hw})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := g.admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: "carol", Password: "carol-password"}); err != nil {
		t.Fatal(err)
	}

	stateDir := filepath.Join(dir, "dev")
	a, err := agent.New(agent.Config{
		Gateway: g.d.GRPCAddr().String(), Serial: sn, HardwareID: hw, StateDir: stateDir,
		Pin: g.d.Fingerprint(), Netstack: true, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAgent := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	waitReady(t, a, done)

	c := agent.ClientConfig{Gateway: g.d.GRPCAddr().String(), TLS: agent.TLSOptions{Pin: g.d.Fingerprint()}, Account: "carol", Password: "carol-password", Netstack: true, StateDir: filepath.Join(dir, "client")}
	tok, _, err := agent.ClientLogin(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	c.Token = tok
	code, _, _, err := agent.BindCode(ctx, agent.Config{Gateway: g.d.GRPCAddr().String(), StateDir: stateDir, Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Bind(ctx, c, code); err != nil {
		t.Fatal(err)
	}
	devs, err := agent.ListDevices(ctx, c)
	if err != nil || len(devs) != 1 || !devs[0].Online {
		t.Fatalf("bound device while its agent runs: %+v, %v; want online", devs, err)
	}

	// The device goes away: no stream, and soon no recent handshake.
	stopAgent()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop")
	}
	poll.Must(t, 20*time.Second, "device shown offline after its agent stopped (idle timeout 2s)", func() error {
		devs, err := agent.ListDevices(ctx, c)
		if err != nil || len(devs) != 1 || devs[0].Online {
			return fmt.Errorf("devices %+v, %v", devs, err)
		}
		return nil
	})
	_, err = agent.OpenSession(ctx, c, sn)
	if err == nil || !strings.Contains(err.Error(), "device offline") {
		t.Fatalf("session to an offline device: %v, want FailedPrecondition \"device offline\"", err)
	}
}
