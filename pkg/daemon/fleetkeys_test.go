package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/daemon"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres"
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

// memberConfig is the test configuration of a fleet member on the
// PostgreSQL database dsn, with its own data directory and the keystore
// keys ("": its own, made at first start), changed by tweak (may be nil).
func memberConfig(t *testing.T, dsn, keys string, tweak func(*config.Config)) config.Config {
	t.Helper()
	cfg := testConfig(t, t.TempDir())
	if keys != "" {
		cfg.KeystoreDir = keys
	}
	cfg.Store = config.Store{Driver: config.DriverPostgres, DSN: dsn}
	if tweak != nil {
		tweak(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
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
	pgConfig := func(keys string) config.Config { return memberConfig(t, dsn, keys, nil) }
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

type connLogExport struct {
	ConnectionLog []struct {
		Time      time.Time `json:"time"`
		Outcome   string    `json:"outcome"`
		Pseudonym string    `json:"pseudonym"`
	} `json:"connection_log"`
}

// exportConnLog exports sn on g and returns its connection-log rows.
func exportConnLog(t *testing.T, g *testGateway, sn string) connLogExport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := g.admin.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: sn}, Reason: "fleet day keys"})
	if err != nil {
		t.Fatalf("export of %s on %s: %v", sn, g.d.InstanceID(), err)
	}
	var doc connLogExport
	if err := json.Unmarshal([]byte(resp.GetJson()), &doc); err != nil {
		t.Fatalf("export is not JSON: %v", err)
	}
	return doc
}

// TestFleetDayKeys: two gateways of a fleet (the second joined from the
// first's fleet keys file) pseudonymise one device alike on one day, so a
// subject export on one finds the connection-log rows the other wrote;
// once the day's key is destroyed from the first gateway's keystore, the
// second (not restarted) no longer finds them, though the rows are still
// in the database.
func TestFleetDayKeys(t *testing.T) {
	cluster := pgtest.Start(t)
	dsn := cluster.NewDatabase(t)
	pgConfig := func(keys string) config.Config { return memberConfig(t, dsn, keys, nil) }
	cfgA := pgConfig("")
	a := startGateway(t, cfgA)
	b := startGateway(t, pgConfig(joinFleet(t, cfgA)))

	const sn = "DS-DAYKEYS-1"
	a.enroll(t, [2]string{sn, "HW-" + sn})
	key := newKey(t)
	deviceLogin(t, b, sn, key)
	// The connection log is written in batches. Every export is audited:
	// ask five times a second, not more.
	ctx := context.Background()
	var rows connLogExport
	if err := poll.Until(ctx, 15*time.Second, 200*time.Millisecond, func() error {
		if rows = exportConnLog(t, a, sn); len(rows.ConnectionLog) < 1 {
			return fmt.Errorf("the export on A holds %d connection-log rows, want B's login", len(rows.ConnectionLog))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	deviceLogin(t, a, sn, key)
	if err := poll.Until(ctx, 15*time.Second, 200*time.Millisecond, func() error {
		if rows = exportConnLog(t, b, sn); len(rows.ConnectionLog) < 2 {
			return fmt.Errorf("the export on B holds %d connection-log rows, want both logins", len(rows.ConnectionLog))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r0, r1 := rows.ConnectionLog[0], rows.ConnectionLog[1]
	if r0.Pseudonym == "" || (r0.Time.UTC().YearDay() == r1.Time.UTC().YearDay() && r0.Pseudonym != r1.Pseudonym) {
		t.Fatalf("pseudonyms %q and %q of one device on one day, one row from each gateway: want equal", r0.Pseudonym, r1.Pseudonym)
	}

	// Destroy every day key up to tomorrow from A's keystore (as A's
	// pruner does when the days pass its retention).
	st, err := postgres.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ks, err := privacy.OpenKeystore(cfgA.KeystorePath())
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.ShareDayKeys(ctx, st, time.Minute); err != nil {
		t.Fatal(err)
	}
	n, err := ks.DestroyKeysBefore(time.Now().Add(24 * time.Hour))
	if err != nil || n < 1 {
		t.Fatalf("DestroyKeysBefore: %d keys, %v", n, err)
	}
	for _, g := range []*testGateway{b, a} {
		if got := exportConnLog(t, g, sn); len(got.ConnectionLog) != 0 {
			t.Fatalf("after the destruction the export on %s still finds %d connection-log rows", g.d.InstanceID(), len(got.ConnectionLog))
		}
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var left int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM connection_log`).Scan(&left); err != nil || left < 2 {
		t.Fatalf("connection-log rows in the database: %d, %v; want the 2 rows, now unlinkable", left, err)
	}
}

// TestFleetDayKeyDestroyedByPruner: the retention pruner of one gateway of
// a fleet (C, whose clock runs three days ahead, with a one-day
// connection-log retention) destroys today's shared day key at its start;
// gateway B, running since before and not restarted, stops deriving
// today's pseudonyms within its day-key refresh: its connection log refuses
// the next logins for want of the key.
func TestFleetDayKeyDestroyedByPruner(t *testing.T) {
	cluster := pgtest.Start(t)
	dsn := cluster.NewDatabase(t)
	pgConfig := func(keys string) config.Config { return memberConfig(t, dsn, keys, nil) }
	cfgA := pgConfig("")
	a := startGateway(t, cfgA)
	b := startGateway(t, pgConfig(joinFleet(t, cfgA)), daemon.Options{DayKeyRefresh: 100 * time.Millisecond})
	const sn = "DS-DAYKEYS-2"
	a.enroll(t, [2]string{sn, "HW-" + sn})
	key := newKey(t)
	deviceLogin(t, b, sn, key)
	ctx := context.Background()
	if err := poll.Until(ctx, 15*time.Second, 200*time.Millisecond, func() error {
		if n := len(exportConnLog(t, b, sn).ConnectionLog); n < 1 {
			return fmt.Errorf("the export on B holds %d connection-log rows, want its login", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	const refused = "pseudonym key destroyed"
	if strings.Contains(b.log.String(), refused) {
		t.Fatal("B refused a pseudonym before any destruction")
	}

	cfgC := pgConfig(joinFleet(t, cfgA))
	cfgC.Retention.ConnectionLog = 24 * time.Hour
	ahead := func() time.Time { return time.Now().Add(72 * time.Hour) }
	startGateway(t, cfgC, daemon.Options{Now: ahead})
	today := time.Now().UTC().Format(time.DateOnly)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	poll.Must(t, 15*time.Second, "C's pruner destroyed today's day key", func() error {
		var horizon string
		if err := conn.QueryRow(ctx, `SELECT horizon FROM day_key_horizon`).Scan(&horizon); err != nil {
			return err
		}
		if horizon <= today {
			return fmt.Errorf("horizon %q", horizon)
		}
		return nil
	})
	if err := poll.Until(ctx, 10*time.Second, 200*time.Millisecond, func() error {
		deviceLogin(t, b, sn, key)
		if !strings.Contains(b.log.String(), refused) {
			return errors.New("B's connection log still pseudonymises today")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
