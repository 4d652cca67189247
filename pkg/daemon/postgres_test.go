package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// TestPostgresStore: with store.driver postgres the daemon keeps its
// registry in PostgreSQL, not in data_dir: devices admitted on gateway A
// are known to gateway B, started on the same database with its own data
// directory (and the fleet's keystore), which restores them as peers with
// the same addresses. The DSN comes from store.dsn_file.
func TestPostgresStore(t *testing.T) {
	cluster := pgtest.Start(t)
	dsnFile := filepath.Join(t.TempDir(), "dsn")
	if err := os.WriteFile(dsnFile, []byte(cluster.NewDatabase(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(t.TempDir(), "keys")
	pgConfig := func() config.Config {
		cfg := testConfig(t, t.TempDir())
		cfg.KeystoreDir = keys
		cfg.Store = config.Store{Driver: config.DriverPostgres, DSNFile: dsnFile}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	a := startGateway(t, pgConfig())
	admitMany(t, a.d, a.admin, "PG", 0, 3, 3)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list := func(g *testGateway) []string {
		t.Helper()
		resp, err := g.admin.ListDevices(ctx, &gatewayv1.ListDevicesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range resp.Devices {
			if !d.KeyPinned || len(d.Addresses) == 0 {
				t.Fatalf("device %s not admitted: %+v", d.SerialNumber, d)
			}
			out = append(out, d.SerialNumber+" "+d.Addresses[0])
		}
		slices.Sort(out)
		return out
	}
	onA := list(a)
	if len(onA) != 3 {
		t.Fatalf("gateway A lists %v, want 3 admitted devices", onA)
	}

	b := startGateway(t, pgConfig())
	if onB := list(b); !slices.Equal(onB, onA) {
		t.Fatalf("gateway B lists %v, gateway A %v", onB, onA)
	}
	peers, err := b.admin.ListPeers(ctx, &gatewayv1.ListPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	devicePeers := 0
	for _, p := range peers.Peers {
		if p.Kind == "device" {
			devicePeers++
		}
	}
	if devicePeers != 3 {
		t.Fatalf("gateway B restored %d device peers from the database, want 3", devicePeers)
	}
	for _, g := range []*testGateway{a, b} {
		if _, err := os.Stat(filepath.Join(g.cfg.DataDir, "gateway.db")); !os.IsNotExist(err) {
			t.Fatalf("a SQLite database in %s with store.driver postgres: %v", g.cfg.DataDir, err)
		}
	}
}
