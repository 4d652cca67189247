package daemon_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
	"github.com/planetxlabs/dasset-gateway/tunnel/wg"
)

// homeFleet is two gateways, A and B, on one PostgreSQL database, each with
// its own data directory, WireGuard key (B joined A's fleet keys) and
// tunnel endpoint.
type homeFleet struct {
	a, b       *testGateway
	cfgA, cfgB config.Config
	dsn        string
}

func startHomeFleet(t *testing.T, cluster *pgtest.Cluster, tweak func(*config.Config)) *homeFleet {
	t.Helper()
	dsn := cluster.NewDatabase(t)
	pgConfig := func(keys string) config.Config {
		return memberConfig(t, dsn, keys, func(cfg *config.Config) {
			cfg.Tunnel.Endpoint = fmt.Sprintf("127.0.0.1:%d", cfg.Tunnel.ListenPort)
			if tweak != nil {
				tweak(cfg)
			}
		})
	}
	f := &homeFleet{cfgA: pgConfig(""), dsn: dsn}
	f.a = startGateway(t, f.cfgA)
	f.cfgB = pgConfig(joinFleet(t, f.cfgA))
	f.b = startGateway(t, f.cfgB)
	return f
}

// devicePeer reports whether g holds a WireGuard peer with key (and that it
// is a device peer).
func devicePeer(t *testing.T, g *testGateway, key []byte) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := g.admin.ListPeers(ctx, &gatewayv1.ListPeersRequest{})
	if err != nil {
		t.Fatalf("ListPeers: %v", err)
	}
	for _, p := range resp.GetPeers() {
		if string(p.GetPublicKey()) == string(key) {
			return p.GetKind() == "device"
		}
	}
	return false
}

func waitDevicePeer(t *testing.T, g *testGateway, key []byte, want bool, what string) time.Duration {
	t.Helper()
	start := time.Now()
	poll.Must(t, 10*time.Second, what, func() error {
		if got := devicePeer(t, g, key); got != want {
			return fmt.Errorf("device peer on %s: %v, want %v", g.d.InstanceID(), got, want)
		}
		return nil
	})
	return time.Since(start)
}

// TestFleetDataPlane: the registry decides which gateway holds a device's
// peer (its home, the gateway it last logged in to), and every gateway
// follows it through the change feed: on one PostgreSQL, with two
// in-process gateways.
func TestFleetDataPlane(t *testing.T) {
	cluster := pgtest.Start(t)

	// A device that logs in on B with its pinned key moves there: B adds
	// its peer, A drops its own; back on A, the reverse. A restart of A
	// restores only the devices homed on A.
	t.Run("moves", func(t *testing.T) {
		f := startHomeFleet(t, cluster, nil)
		const sn1, sn2 = "DS-HOME-MOVE-1", "DS-HOME-MOVE-2"
		f.a.enroll(t, [2]string{sn1, "HW-" + sn1}, [2]string{sn2, "HW-" + sn2})
		k1, k2 := newKey(t), newKey(t)
		onA := deviceLogin(t, f.a, sn1, k1)
		deviceLogin(t, f.b, sn2, k2)
		if !devicePeer(t, f.a, k1) || devicePeer(t, f.b, k1) {
			t.Fatal("device 1, homed on A, is not a peer on A alone")
		}
		waitDevicePeer(t, f.a, k2, false, "device 2 (homed on B) not a peer on A")

		onB := deviceLogin(t, f.b, sn1, k1) // a pinned re-login: only its home changes
		if fmt.Sprint(onB.Addresses) != fmt.Sprint(onA.Addresses) {
			t.Fatalf("addresses %v on B, %v on A", onB.Addresses, onA.Addresses)
		}
		if !devicePeer(t, f.b, k1) {
			t.Fatal("B has no peer for the device that logged in there")
		}
		took := waitDevicePeer(t, f.a, k1, false, "A dropped the peer of the device that moved to B")
		t.Logf("A dropped the moved device's peer %v after its login on B", took.Round(time.Millisecond))
		deviceLogin(t, f.a, sn1, k1)
		waitDevicePeer(t, f.b, k1, false, "B dropped the peer of the device that moved back to A")
		if !devicePeer(t, f.a, k1) {
			t.Fatal("A has no peer for the device that moved back")
		}

		f.a.stop()
		f.a = startGateway(t, f.cfgA)
		if !devicePeer(t, f.a, k1) {
			t.Fatal("A restarted without the peer of its own device")
		}
		if devicePeer(t, f.a, k2) {
			t.Fatal("A restarted with the peer of a device homed on B")
		}
		if !devicePeer(t, f.b, k2) || devicePeer(t, f.b, k1) {
			t.Fatal("B's peers changed while A restarted")
		}
	})

	// Revoking, on A, a device homed on B cuts it on B: B drops its peer
	// and its Sync stream on B gets Revoked.
	t.Run("revoke", func(t *testing.T) {
		f := startHomeFleet(t, cluster, nil)
		const sn = "DS-HOME-REVOKE"
		f.a.enroll(t, [2]string{sn, "HW-" + sn})
		a, events := startEventAgent(t, f.b, sn, "HW-"+sn, filepath.Join(t.TempDir(), "agent"))
		key := a.PublicKey()
		if !devicePeer(t, f.b, key[:]) {
			t.Fatal("the agent's device is not a peer on B")
		}
		if err := pingUntil(a.Net(), a.Addresses(), netip.MustParseAddr("100.80.0.1"), 10*time.Second); err != nil {
			t.Fatalf("ping through B: %v", err)
		}
		// Its Sync stream on B is up (the first keepalive came).
		events.waitFor(t, "a keepalive from B", 10*time.Second, func(ev *gatewayv1.SyncEvent) bool { return ev.GetKeepalive() != nil })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		revoked := time.Now()
		if _, err := f.a.admin.RevokeDevice(ctx, &gatewayv1.RevokeDeviceRequest{SerialNumber: sn}); err != nil {
			t.Fatalf("revoke on A: %v", err)
		}
		at := events.waitFor(t, "Revoked on its stream on B", 10*time.Second, func(ev *gatewayv1.SyncEvent) bool { return ev.GetRevoked() != nil })
		waitDevicePeer(t, f.b, key[:], false, "B dropped the revoked device's peer")
		t.Logf("revoked on A: Revoked on B's stream after %v, B's peer gone by %v",
			at.Sub(revoked).Round(time.Millisecond), time.Since(revoked).Round(time.Millisecond))

		// Erasure and a key reset on A reach B the same way.
		const snE, snR = "DS-HOME-ERASE", "DS-HOME-RESET"
		f.a.enroll(t, [2]string{snE, "HW-" + snE}, [2]string{snR, "HW-" + snR})
		e, eEvents := startEventAgent(t, f.b, snE, "HW-"+snE, filepath.Join(t.TempDir(), "erased"))
		eKey := e.PublicKey()
		rKey := newKey(t)
		deviceLogin(t, f.b, snR, rKey)
		if !devicePeer(t, f.b, eKey[:]) || !devicePeer(t, f.b, rKey) {
			t.Fatal("the devices to erase and reset are not peers on B")
		}
		eEvents.waitFor(t, "a keepalive from B", 10*time.Second, func(ev *gatewayv1.SyncEvent) bool { return ev.GetKeepalive() != nil })
		if _, err := f.a.admin.EraseSubject(ctx, &gatewayv1.EraseSubjectRequest{Subject: &gatewayv1.EraseSubjectRequest_SerialNumber{SerialNumber: snE}, Reason: "fleet test"}); err != nil {
			t.Fatalf("erase on A: %v", err)
		}
		if _, err := f.a.admin.ResetDeviceKey(ctx, &gatewayv1.ResetDeviceKeyRequest{SerialNumber: snR}); err != nil {
			t.Fatalf("reset key on A: %v", err)
		}
		eEvents.waitFor(t, "Revoked (erased) on its stream on B", 10*time.Second, func(ev *gatewayv1.SyncEvent) bool { return ev.GetRevoked().GetReason() == "erased" })
		waitDevicePeer(t, f.b, eKey[:], false, "B dropped the erased device's peer")
		waitDevicePeer(t, f.b, rKey, false, "B dropped the peer of the device whose key was reset")
	})

	// A device homed on A that logs in on B while the registry refuses to
	// record its new home is admitted on B all the same (it proved itself
	// with its pinned key), and B's full passes keep it; once the registry
	// takes writes again, B records the home and A drops its peer.
	t.Run("outage", func(t *testing.T) {
		f := startHomeFleet(t, cluster, func(c *config.Config) { c.Tunnel.ReconcileInterval = time.Second })
		const sn = "DS-HOME-OUTAGE"
		f.a.enroll(t, [2]string{sn, "HW-" + sn})
		state := filepath.Join(t.TempDir(), "agent")
		run := func(g *testGateway) (*agent.Agent, func()) {
			a, err := agent.New(agent.Config{
				Gateway: g.d.GRPCAddr().String(), Serial: sn, HardwareID: "HW-" + sn,
				StateDir: state, Pin: g.d.Fingerprint(), Netstack: true,
				Logger:     slog.New(slog.NewTextHandler(testWriter{t}, nil)),
				MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			stop := func() {
				cancel()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
				}
			}
			t.Cleanup(stop)
			waitReady(t, a, done)
			return a, stop
		}
		onA, stopA := run(f.a) // its key is pinned and its home is A
		key := onA.PublicKey()
		stopA()

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		db, err := pgx.Connect(ctx, f.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close(context.Background())
		if _, err := db.Exec(ctx, `CREATE FUNCTION test_no_home() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN
				IF NEW.home_gateway IS DISTINCT FROM OLD.home_gateway THEN
					RAISE EXCEPTION 'test: the registry refuses home changes';
				END IF;
				RETURN NEW;
			END $$;
			CREATE TRIGGER test_no_home BEFORE UPDATE ON devices FOR EACH ROW EXECUTE FUNCTION test_no_home();`); err != nil {
			t.Fatal(err)
		}
		onB, _ := run(f.b) // the same key: a pinned re-login on B, today
		if onB.PublicKey() != key || onB.GatewayInstance() != f.b.d.InstanceID() {
			t.Fatalf("the agent is on %q with another key (%v)", onB.GatewayInstance(), onB.PublicKey() != key)
		}
		full := func() float64 {
			return counter(t, f.b.d.HTTPAddr().String(), "dasset_gateway_reconciles_total", map[string]string{"pass": "full"})
		}
		passes := full()
		poll.Must(t, 15*time.Second, "three full passes on B", func() error {
			if n := full(); n < passes+3 {
				return fmt.Errorf("%v full passes since", n-passes)
			}
			return nil
		})
		if !devicePeer(t, f.b, key[:]) {
			t.Fatal("B dropped the device it admitted while its home could not be recorded")
		}
		if err := pingUntil(onB.Net(), onB.Addresses(), netip.MustParseAddr("100.80.0.1"), 10*time.Second); err != nil {
			t.Fatalf("ping through B while the home is not recorded: %v", err)
		}
		if !devicePeer(t, f.a, key[:]) {
			t.Fatal("A dropped the device although the registry still names A its home")
		}

		if _, err := db.Exec(ctx, `DROP TRIGGER test_no_home ON devices`); err != nil {
			t.Fatal(err)
		}
		waitDevicePeer(t, f.a, key[:], false, "A dropped the device once B recorded its home")
		if !devicePeer(t, f.b, key[:]) {
			t.Fatal("B lost the device after recording its home")
		}
	})

	// A device token that a re-login kept in A's memory (it wrote nothing)
	// dies with the key it was issued for: after a key reset on B and a new
	// key pinned on B, the old key's holder can no longer act as the device
	// on A (make binding codes, log the device out).
	t.Run("stale token", func(t *testing.T) {
		f := startHomeFleet(t, cluster, nil)
		const sn = "DS-HOME-TOKEN"
		f.a.enroll(t, [2]string{sn, "HW-" + sn})
		oldKey := newKey(t)
		stored := deviceLogin(t, f.a, sn, oldKey).GetDeviceToken() // the first login's, in the registry
		old := deviceLogin(t, f.a, sn, oldKey).GetDeviceToken()    // same day, same key: kept in memory
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		auth := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+old)
		devA, devB := deviceClient(t, f.a), deviceClient(t, f.b)
		if _, err := devA.CreateBindingCode(auth, &gatewayv1.CreateBindingCodeRequest{}); err != nil {
			t.Fatalf("the old key's token before the reset: %v", err)
		}
		if _, err := f.b.admin.ResetDeviceKey(ctx, &gatewayv1.ResetDeviceKeyRequest{SerialNumber: sn}); err != nil {
			t.Fatalf("reset key on B: %v", err)
		}
		// Between the reset and a new key: no token of the old key works.
		authStored := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+stored)
		if _, err := devB.CreateBindingCode(authStored, &gatewayv1.CreateBindingCodeRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("the old key's stored token on B after the reset: %v, want Unauthenticated", err)
		}
		if _, err := devA.CreateBindingCode(auth, &gatewayv1.CreateBindingCodeRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("the old key's token on A after the reset: %v, want Unauthenticated", err)
		}
		newK := newKey(t)
		deviceLogin(t, f.b, sn, newK)
		_, err := devA.CreateBindingCode(auth, &gatewayv1.CreateBindingCodeRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("the old key's token on A after a reset and a new key pinned on B: %v, want Unauthenticated", err)
		}
		if _, err := devA.Logout(auth, &gatewayv1.LogoutRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("logout with the old key's token on A: %v, want Unauthenticated", err)
		}
		waitDevicePeer(t, f.b, newK, true, "the device with its new key stays a peer on B")
	})

	// A peer removed behind the gateway's back (straight on its WireGuard
	// device) comes back at the next full pass, counted as a repair.
	t.Run("repair", func(t *testing.T) {
		f := startHomeFleet(t, cluster, func(c *config.Config) { c.Tunnel.ReconcileInterval = time.Second })
		const sn = "DS-HOME-REPAIR"
		f.a.enroll(t, [2]string{sn, "HW-" + sn})
		key := newKey(t)
		deviceLogin(t, f.a, sn, key)
		metricsAddr := f.a.d.HTTPAddr().String()
		before := counter(t, metricsAddr, "dasset_gateway_reconcile_repairs_total", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := f.a.d.WireGuard().RemovePeer(ctx, wg.Key(key)); err != nil {
			t.Fatal(err)
		}
		if devicePeer(t, f.a, key) {
			t.Fatal("the peer is still there after removing it")
		}
		waitDevicePeer(t, f.a, key, true, "the full pass put the removed peer back")
		if after := counter(t, metricsAddr, "dasset_gateway_reconcile_repairs_total", nil); after <= before {
			t.Fatalf("reconcile repairs %v → %v, want a rise", before, after)
		}
	})

	// A boot storm on A costs B no reads: B skips the changes of devices
	// homed elsewhere (their notification names the home). The storm's
	// changes reach B before a later change it must act on (the feed keeps
	// commit order), so B dropping a revoked device of its own shows it
	// went through them.
	t.Run("storm", func(t *testing.T) {
		f := startHomeFleet(t, cluster, nil)
		const n = 60
		reads := func(g *testGateway, op string) uint64 {
			for _, m := range scrape(t, g.d.HTTPAddr().String())["dasset_gateway_store_transaction_duration_seconds"].GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "op" && l.GetValue() == op {
						return m.GetHistogram().GetSampleCount()
					}
				}
			}
			return 0
		}
		const sn = "DS-HOME-BARRIER"
		f.b.enroll(t, [2]string{sn, "HW-" + sn})
		key := newKey(t)
		deviceLogin(t, f.b, sn, key)
		// B's reconciler has subscribed (its first full pass is done).
		poll.Must(t, 10*time.Second, "B's first full reconcile pass", func() error {
			if counter(t, f.b.d.HTTPAddr().String(), "dasset_gateway_reconciles_total", map[string]string{"pass": "full"}) < 1 {
				return fmt.Errorf("no full pass yet")
			}
			return nil
		})
		aBefore := reads(f.a, "DeviceByID")
		bBefore, bHomeBefore := reads(f.b, "DeviceByID"), reads(f.b, "HomePeers")
		admitMany(t, f.a.d, f.a.admin, "STORM", 0, n, 8)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := f.a.admin.RevokeDevice(ctx, &gatewayv1.RevokeDeviceRequest{SerialNumber: sn}); err != nil {
			t.Fatal(err)
		}
		waitDevicePeer(t, f.b, key, false, "B dropped its device revoked on A")
		aReads := reads(f.a, "DeviceByID") - aBefore
		bReads, bHome := reads(f.b, "DeviceByID")-bBefore, reads(f.b, "HomePeers")-bHomeBefore
		t.Logf("%d logins on A: A read %d devices, B read %d devices and made %d full reads", n, aReads, bReads, bHome)
		if aReads < n {
			t.Fatalf("A read %d devices for %d logins of its own: its notifications did not reach it", aReads, n)
		}
		if bReads > 3 || bHome > 0 {
			t.Fatalf("B made %d device reads and %d full reads for a storm on A (want at most the barrier's few, no full read)", bReads, bHome)
		}
	})

	// A session opened on A to a device homed on B is served by B: the
	// grant names B's key and endpoint, B adds the client peer and tells
	// the device, and traffic flows client → B → device.
	t.Run("session", func(t *testing.T) {
		f := startHomeFleet(t, cluster, nil)
		const sn = "DS-HOME-SESSION"
		f.a.enroll(t, [2]string{sn, "HW-" + sn})
		dir := t.TempDir()
		devDir := filepath.Join(dir, "device")
		dev, events := startEventAgent(t, f.b, sn, "HW-"+sn, devDir)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := f.a.admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: "carol", Password: "carol-password-1"}); err != nil {
			t.Fatal(err)
		}
		c := agent.ClientConfig{
			Gateway: f.a.d.GRPCAddr().String(), TLS: agent.TLSOptions{Pin: f.a.d.Fingerprint()},
			Account: "carol", Password: "carol-password-1", Netstack: true,
			StateDir: filepath.Join(dir, "client"), Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("client", "carol"),
			PollInterval: 200 * time.Millisecond,
		}
		if _, _, err := agent.ClientLogin(ctx, c); err != nil {
			t.Fatal(err)
		}
		stored, err := agent.LoadClientConfig(c.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		stored.Netstack, stored.Logger, stored.PollInterval = true, c.Logger, c.PollInterval
		code, _, _, err := agent.BindCode(ctx, agent.Config{Gateway: f.b.d.GRPCAddr().String(), StateDir: devDir, Pin: f.b.d.Fingerprint()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := agent.Bind(ctx, stored, code); err != nil {
			t.Fatal(err)
		}
		s, err := agent.OpenSession(ctx, stored, sn)
		if err != nil {
			t.Fatalf("open session on A to a device homed on B: %v", err)
		}
		defer s.Close(context.Background())
		events.waitFor(t, "SessionOpened on its stream on B", 10*time.Second, opened(s.ID()))
		clientAddr := addrOf(t, s.ClientAddresses(), true)
		if !peerPresent(t, f.b, clientAddr) {
			t.Fatal("B has no client peer for the session")
		}
		if peerPresent(t, f.a, clientAddr) {
			t.Fatal("A holds the client peer of a session to a device homed on B")
		}
		if err := pingUntil(s.Net(), s.ClientAddresses(), addrOf(t, dev.Addresses(), true), 10*time.Second); err != nil {
			t.Fatalf("client → device through B: %v", err)
		}
		if err := agent.CloseSession(ctx, stored, s.ID()); err != nil {
			t.Fatalf("close the session on A: %v", err)
		}
		events.waitFor(t, "SessionClosed on its stream on B", 10*time.Second, closed(s.ID()))
		waitPeerGone(t, f.b, clientAddr)

		// A session follows its device: when the device logs in on A
		// (with its pinned key), A hosts the session and B drops it.
		s2, err := agent.OpenSession(ctx, stored, sn)
		if err != nil {
			t.Fatalf("second session: %v", err)
		}
		defer s2.Close(context.Background())
		client2 := addrOf(t, s2.ClientAddresses(), true)
		poll.Must(t, 10*time.Second, "B hosts the second session", func() error {
			if !peerPresent(t, f.b, client2) {
				return fmt.Errorf("no client peer on B")
			}
			return nil
		})
		key := dev.PublicKey()
		deviceLogin(t, f.a, sn, key[:])
		if !peerPresent(t, f.a, client2) {
			t.Fatal("A does not host the session of the device that moved to it")
		}
		waitPeerGone(t, f.b, client2)
	})
}
