package daemon_test

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// joinFleet writes member's fleet keys file and restores it into a new
// keystore directory, as "dassetctl keys backup --fleet" on the member and
// "dassetctl keys restore" on the joining gateway do.
func joinFleet(t *testing.T, member config.Config) string {
	t.Helper()
	ks, err := privacy.OpenKeystore(member.KeystorePath())
	if err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	if err := ks.BackupFleet(&file, []byte("fleet passphrase")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "keys")
	info, err := privacy.RestoreKeystore(&file, []byte("fleet passphrase"), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Fleet {
		t.Fatal("the fleet keys file restored as a plain keystore backup")
	}
	return dir
}

// deviceLogin logs sn (hardware id "HW-"+sn) in on g with key.
func deviceLogin(t *testing.T, g *testGateway, sn string, key []byte) *gatewayv1.DeviceLoginResponse {
	t.Helper()
	conn, err := agent.Dial(g.d.GRPCAddr().String(), agent.TLSOptions{Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := gatewayv1.NewDeviceServiceClient(conn).Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: sn, HardwareId: "HW-" + sn, PublicKey: key})
	if err != nil {
		t.Fatalf("login of %s on %s: %v", sn, g.d.InstanceID(), err)
	}
	return resp
}

// TestFleetKeysJoin: a gateway whose keystore was restored from another
// member's fleet keys file joins that member's PostgreSQL registry: the
// database accepts its keystore id, it answers with a WireGuard key of its
// own, and a device enrolled through one gateway logs in on the other
// (blind index and verifier under the shared keys), then back on the
// first with its pinned key and the same addresses.
func TestFleetKeysJoin(t *testing.T) {
	cluster := pgtest.Start(t)
	dsn := cluster.NewDatabase(t)
	pgConfig := func(keys string) config.Config {
		cfg := testConfig(t, t.TempDir())
		if keys != "" {
			cfg.KeystoreDir = keys
		}
		cfg.Store = config.Store{Driver: config.DriverPostgres, DSN: dsn}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	cfgA := pgConfig("")
	a := startGateway(t, cfgA)
	cfgB := pgConfig(joinFleet(t, cfgA))
	if cfgB.KeystorePath() == cfgA.KeystorePath() {
		t.Fatal("the two gateways share a keystore directory")
	}
	b := startGateway(t, cfgB)

	const sn = "DS-FLEETKEYS-1"
	a.enroll(t, [2]string{sn, "HW-" + sn})
	key := newKey(t)
	onB := deviceLogin(t, b, sn, key)
	if onB.GatewayInstanceId != b.d.InstanceID() {
		t.Fatalf("login on B names gateway instance %q", onB.GatewayInstanceId)
	}
	onA := deviceLogin(t, a, sn, key)
	if onA.GatewayInstanceId != a.d.InstanceID() {
		t.Fatalf("login on A names gateway instance %q", onA.GatewayInstanceId)
	}
	if !slices.Equal(onA.Addresses, onB.Addresses) || len(onA.Addresses) == 0 {
		t.Fatalf("addresses %v on A, %v on B", onA.Addresses, onB.Addresses)
	}
	pa, pb := onA.GetGateway().GetPublicKey(), onB.GetGateway().GetPublicKey()
	if len(pa) != 32 || len(pb) != 32 || bytes.Equal(pa, pb) {
		t.Fatalf("WireGuard public keys %x (A) and %x (B): want two different keys", pa, pb)
	}
	// Each is its own keystore's key.
	for _, g := range []struct {
		cfg config.Config
		pub []byte
	}{{cfgA, pa}, {cfgB, pb}} {
		ks, err := privacy.OpenKeystore(g.cfg.KeystorePath())
		if err != nil {
			t.Fatal(err)
		}
		if pub := ks.GatewayPublicKey(); !bytes.Equal(pub[:], g.pub) {
			t.Fatalf("a gateway answered with %x, its keystore holds %x", g.pub, pub)
		}
	}
}
