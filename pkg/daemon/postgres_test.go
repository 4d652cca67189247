package daemon_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// TestPostgresStore: with store.driver postgres the daemon keeps its
// registry in PostgreSQL, not in data_dir: devices admitted on gateway A
// are known to gateway B, started on the same database with its own data
// directory (and the fleet's keystore), with the same addresses; they stay
// peers of A, their home, not of B. The DSN comes from store.dsn_file.
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

	// A fleet gateway without tunnel.endpoint is warned that the others
	// cannot name it; B, which sets it, is not.
	const warning = "tunnel.endpoint is empty"
	if !strings.Contains(a.log.String(), warning) {
		t.Fatalf("gateway A (postgres, no tunnel.endpoint) logged no warning %q", warning)
	}
	cfgB := pgConfig()
	cfgB.Tunnel.Endpoint = fmt.Sprintf("127.0.0.1:%d", cfgB.Tunnel.ListenPort)
	b := startGateway(t, cfgB)
	if strings.Contains(b.log.String(), warning) {
		t.Fatalf("gateway B (tunnel.endpoint set) warned %q", warning)
	}
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
	if devicePeers != 0 {
		t.Fatalf("gateway B holds %d device peers of devices homed on A, want none", devicePeers)
	}
	// Each gateway is a row of the fleet, and a device's Login names the
	// gateway that admitted it.
	if a.d.InstanceID() == b.d.InstanceID() {
		t.Fatalf("two gateways with one instance id %s", a.d.InstanceID())
	}
	fleet, err := b.admin.ListGateways(ctx, &gatewayv1.ListGatewaysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, g := range fleet.Gateways {
		rows = append(rows, fmt.Sprintf("%s self=%v", g.InstanceId, g.Self))
		if age := time.Since(g.HeartbeatAt.AsTime()); age < 0 || age > time.Minute {
			t.Fatalf("gateway %s: heartbeat %v ago", g.InstanceId, age)
		}
	}
	want := []string{a.d.InstanceID() + " self=false", b.d.InstanceID() + " self=true"}
	slices.Sort(want)
	if !slices.Equal(rows, want) {
		t.Fatalf("ListGateways on B: %v, want %v", rows, want)
	}
	for i, g := range []*testGateway{a, b} {
		sn := fleetSerial("PGI", i)
		g.enroll(t, [2]string{sn, "HW-" + sn})
		if got := loginInstance(t, g, sn); got != g.d.InstanceID() {
			t.Fatalf("Login on %s names gateway instance %q", g.d.InstanceID(), got)
		}
	}

	for _, g := range []*testGateway{a, b} {
		if _, err := os.Stat(filepath.Join(g.cfg.DataDir, "gateway.db")); !os.IsNotExist(err) {
			t.Fatalf("a SQLite database in %s with store.driver postgres: %v", g.cfg.DataDir, err)
		}
	}
}

// loginInstance logs the enrolled device sn (hardware id "HW-"+sn) in on g
// for the first time and returns the gateway instance its Login response
// names.
func loginInstance(t *testing.T, g *testGateway, sn string) string {
	t.Helper()
	conn, err := agent.Dial(g.d.GRPCAddr().String(), agent.TLSOptions{Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := gatewayv1.NewDeviceServiceClient(conn).Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: sn, HardwareId: "HW-" + sn, PublicKey: newKey(t)})
	if err != nil {
		t.Fatalf("login of %s on %s: %v", sn, g.d.InstanceID(), err)
	}
	return resp.GatewayInstanceId
}

// TestPostgresOutage: while PostgreSQL is down the gateway keeps running,
// logins answer Unavailable and /readyz is not ready; once it is back,
// everything resumes by itself (the pool reconnects).
func TestPostgresOutage(t *testing.T) {
	cluster := pgtest.Start(t)
	cfg := testConfig(t, t.TempDir())
	cfg.Store = config.Store{Driver: config.DriverPostgres, DSN: cluster.NewDatabase(t)}
	g := startGateway(t, cfg)
	admitMany(t, g.d, g.admin, "OUT", 0, 1, 1)
	sn := fleetSerial("OUT", 1)
	g.enroll(t, [2]string{sn, "HW-" + sn})

	conn, err := agent.Dial(g.d.GRPCAddr().String(), agent.TLSOptions{Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dev := gatewayv1.NewDeviceServiceClient(conn)
	key := newKey(t)
	login := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: sn, HardwareId: "HW-" + sn, PublicKey: key})
		return err
	}
	ready := func() int {
		resp, err := http.Get("http://" + g.d.HTTPAddr().String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := ready(); code != http.StatusOK {
		t.Fatalf("/readyz %d before the outage", code)
	}

	ctx := context.Background()
	if err := cluster.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := login(); status.Code(err) != codes.Unavailable {
		t.Fatalf("login during the outage: %v, want Unavailable", err)
	}
	if code := ready(); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d during the outage, want 503", code)
	}

	if err := cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	poll.Must(t, 30*time.Second, "ready and logging in after PostgreSQL came back", func() error {
		if code := ready(); code != http.StatusOK {
			return fmt.Errorf("/readyz %d", code)
		}
		return login()
	})
}
