package daemon_test

import (
	"context"
	"testing"
	"time"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// TestInstanceIDSurvivesRestart: a gateway keeps its instance id across a
// restart on the same data_dir, so it stays one row of the fleet, whose
// start time is the new run's.
func TestInstanceIDSurvivesRestart(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	list := func(g *testGateway) []*gatewayv1.FleetGateway {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := g.admin.ListGateways(ctx, &gatewayv1.ListGatewaysRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Gateways
	}
	g := startGateway(t, cfg)
	id := g.d.InstanceID()
	first := list(g)
	if len(first) != 1 || first[0].InstanceId != id || !first[0].Self || len(first[0].PublicKey) != 32 {
		t.Fatalf("gateways of a single gateway: %v (instance %s)", first, id)
	}
	g.stop()

	g = startGateway(t, cfg)
	if g.d.InstanceID() != id {
		t.Fatalf("instance id %s after a restart, was %s", g.d.InstanceID(), id)
	}
	again := list(g)
	if len(again) != 1 || again[0].InstanceId != id || !again[0].StartedAt.AsTime().After(first[0].StartedAt.AsTime()) {
		t.Fatalf("gateways after a restart: %v, before %v", again, first)
	}
}
