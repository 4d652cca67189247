package fleet

import (
	"path/filepath"
	"testing"

	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// TestExampleConfigs: the three gateway configurations of configs/fleet load
// with the gateway's strict loader (no unknown key), pass its validation,
// and make a fleet: all on PostgreSQL through a DSN file, one certificate,
// and each its own endpoint. It needs no root.
func TestExampleConfigs(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join(netnstest.RepoRoot(t), "configs", "fleet", "gateway-*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 3 {
		t.Fatalf("configs/fleet holds %d gateway configurations, want 3: %v", len(paths), paths)
	}
	endpoints := map[string]string{}
	var first config.Config
	for i, p := range paths {
		c, err := config.Load(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if c.Store.Driver != config.DriverPostgres || c.Store.DSNFile == "" || c.Store.DSN != "" {
			t.Errorf("%s: store %+v; want postgres through dsn_file", p, c.Store)
		}
		if c.Tunnel.Endpoint == "" {
			t.Errorf("%s: no tunnel.endpoint", p)
		} else if other, ok := endpoints[c.Tunnel.Endpoint]; ok {
			t.Errorf("%s and %s share tunnel.endpoint %s", other, p, c.Tunnel.Endpoint)
		}
		endpoints[c.Tunnel.Endpoint] = p
		if c.GRPC.CertFile == "" || c.GRPC.KeyFile == "" {
			t.Errorf("%s: no fleet certificate (grpc.cert_file, grpc.key_file)", p)
		}
		if i == 0 {
			first = c
			continue
		}
		// Apart from the endpoint, the members are configured alike.
		c.Tunnel.Endpoint = first.Tunnel.Endpoint
		if c.Store != first.Store || c.GRPC.CertFile != first.GRPC.CertFile || c.GRPC.KeyFile != first.GRPC.KeyFile ||
			c.DataDir != first.DataDir || c.KeystoreDir != first.KeystoreDir || c.Tunnel != first.Tunnel {
			t.Errorf("%s differs from %s in more than tunnel.endpoint", p, paths[0])
		}
	}
}
