package fleet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
)

// fleetDevices is how many devices the test runs.
const fleetDevices = 300

// failoverBound is how long a killed gateway's devices may take to ping
// through another one.
const failoverBound = 30 * time.Second

// outageSpan is how long, at least, the test keeps PostgreSQL away while
// the devices ping.
const outageSpan = 3 * time.Second

// session is one open session of the test's accounts.
type session struct {
	account, serial, id string
	host                *member // its device's home when it was opened
}

// TestFleet: three gateways on one PostgreSQL registry, 300 devices spread
// over them (each agent is given all three), two accounts with sessions
// whose gateway peer is the device's home. One gateway is killed with
// SIGKILL: every one of its devices pings through another gateway within
// 30 s with the same key and addresses, its home moves in the registry, the
// sessions to its devices carry traffic again through their new homes, and
// no address is held twice (in the database, against what the devices use,
// in the live gateways' peer lists). The killed gateway starts again and
// nothing flaps back over three of its full reconcile passes. Then
// PostgreSQL stops for a while: the tunnels keep carrying pings, client
// logins and a new device's first login answer Unavailable and /readyz is
// not ready, and all come back by themselves after it. Last, a device
// revoked on one gateway loses its peer on the gateway it lives on within a
// second.
func TestFleet(t *testing.T) {
	f := newFleet(t)
	a, b, c := f.gws[0], f.gws[1], f.gws[2]
	a.startReady()
	for _, m := range []*member{b, c} {
		f.joinKeystore(a, m)
		m.startReady()
	}
	t.Logf("gateways up: a=%s b=%s c=%s", a.instance, b.instance, c.instance)
	var fl struct {
		Gateways []struct {
			InstanceID string `json:"instance_id"`
			PublicKey  string `json:"public_key"`
		} `json:"gateways"`
	}
	a.CtlJSON(&fl, "fleet")
	keys := map[string]bool{}
	for _, g := range fl.Gateways {
		keys[g.PublicKey] = true
	}
	if len(fl.Gateways) != 3 || len(keys) != 3 {
		t.Fatalf("dassetctl fleet on a lists %d gateways with %d WireGuard keys, want 3 of each: %+v", len(fl.Gateways), len(keys), fl)
	}

	// Enrolment (one CSV batch on a) and the two accounts.
	devs := make([]identity, fleetDevices)
	var csv strings.Builder
	csv.WriteString("serial_number,hardware_id\n")
	for i := range devs {
		devs[i] = identity{Serial: fmt.Sprintf("DS-FLEET-%04d", i), HWID: fmt.Sprintf("HW-FLEET-%04d", i)}
		fmt.Fprintf(&csv, "%s,%s\n", devs[i].Serial, devs[i].HWID)
	}
	// One more device is enrolled but not run: it logs in for the first
	// time during the registry outage (refused) and after it.
	fresh := identity{Serial: "DS-FLEET-FRESH", HWID: "HW-FLEET-FRESH"}
	fmt.Fprintf(&csv, "%s,%s\n", fresh.Serial, fresh.HWID)
	csvPath := filepath.Join(f.Dir, "devices.csv")
	if err := os.WriteFile(csvPath, []byte(csv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	a.MustCtl("enroll", "--file", csvPath)
	passwords := map[string]string{"alice": "alice-fleet-password", "bob": "bob-fleet-password"}
	for name, pw := range passwords {
		if _, err := f.RunStdin(pw+"\n", f.Path("dassetctl"), "--socket", a.Sock, "accounts", "create", name, "--password-stdin"); err != nil {
			t.Fatal(err)
		}
	}

	// Every device up, spread over the three gateways.
	started := time.Now()
	f.startDriver(devs)
	var before map[string]deviceState
	f.until(120*time.Second, 250*time.Millisecond, "every device logged in with its addresses", func() error {
		before = f.devices()
		up := 0
		for _, d := range before {
			if d.Ended != "" {
				t.Fatalf("device %s: %s", d.Serial, d.Ended)
			}
			if d.Instance != "" && len(d.Addrs) > 0 {
				up++
			}
		}
		if up < fleetDevices {
			return fmt.Errorf("%d of %d up", up, fleetDevices)
		}
		return nil
	})
	f.ping("every device through its gateway", nil, 30*time.Second)
	t.Logf("%d devices logged in and pinged their gateway in %v", fleetDevices, time.Since(started).Round(time.Millisecond))
	on := map[*member][]deviceState{}
	for _, d := range before {
		m := f.byInstance(d.Instance)
		if m == nil {
			t.Fatalf("device %s logged in to instance %q, not one of the fleet", d.Serial, d.Instance)
		}
		on[m] = append(on[m], d)
	}
	for _, m := range f.gws {
		// Each agent starts on a random gateway of three: 100 each on
		// average, and fewer than 30 on one has a probability below 1e-15.
		if len(on[m]) < 30 {
			t.Fatalf("gateway %s has %d of %d devices; want them spread over the three", m.name, len(on[m]), fleetDevices)
		}
		m.holdsOnly(on[m])
	}
	t.Logf("devices per gateway: a=%d b=%d c=%d", len(on[a]), len(on[b]), len(on[c]))
	f.checkAddresses(before, f.gws)
	f.checkHomes(before)

	// Two accounts, each with sessions to two devices on c (the gateway
	// that will be killed) and one elsewhere; logins and binding through
	// a. Each session's client is given every gateway, its device's home
	// first (a client near the device): the grant's gateway peer (the
	// client's WireGuard peer) is the device's home.
	for name, pw := range passwords {
		f.client("/client/login", clientRequest{Gateway: a.addr, Account: name, Password: pw})
	}
	var sessions []session
	pick := map[string][]deviceState{"alice": {on[c][0], on[c][1], on[a][0]}, "bob": {on[c][2], on[c][3], on[b][0]}}
	for name, ds := range pick {
		for _, d := range ds {
			code := f.client("/bindcode", clientRequest{Serial: d.Serial}).Binding
			f.client("/client/bind", clientRequest{Gateway: a.addr, Account: name, Code: code})
			host := f.byInstance(d.Instance)
			res := f.client("/session/open", clientRequest{Gateway: f.gatewaysFrom(host), Account: name, Serial: d.Serial})
			if res.PeerKey != host.publicKey() {
				t.Fatalf("session %s to %s (homed on %s): gateway peer %s, want %s's key %s", res.ID, d.Serial, host.name, res.PeerKey, host.name, host.publicKey())
			}
			if got := strings.Join(res.Device, ","); got != strings.Join(d.Addrs, ",") {
				t.Fatalf("session %s to %s: device addresses %s, the device has %s", res.ID, d.Serial, got, strings.Join(d.Addrs, ","))
			}
			sessions = append(sessions, session{account: name, serial: d.Serial, id: res.ID, host: host})
		}
	}
	for _, s := range sessions {
		f.client("/session/ping", clientRequest{ID: s.id, WithinMS: 15000})
	}
	t.Logf("%d sessions carry pings", len(sessions))

	// SIGKILL c: its devices come back through a or b within 30 s, with
	// the same keys and addresses.
	victims := on[c]
	serials := make([]string, len(victims))
	for i, d := range victims {
		serials[i] = d.Serial
	}
	c.kill()
	killed := time.Now()
	var after map[string]deviceState
	err := poll.Until(f.Context(), failoverBound, 100*time.Millisecond, func() error {
		after = f.devices()
		for _, sn := range serials {
			d := after[sn]
			if d.Ended != "" {
				t.Fatalf("device %s: %s", sn, d.Ended)
			}
			if d.Instance == c.instance || len(d.Addrs) == 0 {
				return fmt.Errorf("device %s still on c or down", sn)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after SIGKILL of c: %v", err)
	}
	moved := time.Since(killed)
	f.ping("c's devices through another gateway", serials, max(failoverBound-time.Since(killed), time.Second))
	took := time.Since(killed)
	if took > failoverBound {
		t.Fatalf("c's %d devices pinged through another gateway %v after SIGKILL; want within %v", len(serials), took.Round(time.Millisecond), failoverBound)
	}
	t.Logf("SIGKILL of c: its %d devices logged in elsewhere after %v and all pinged after %v",
		len(serials), moved.Round(time.Millisecond), took.Round(time.Millisecond))
	movedTo := map[*member][]deviceState{}
	for _, d0 := range victims {
		d := after[d0.Serial]
		if d.Key != d0.Key {
			t.Fatalf("device %s: key %s after the failover, %s before (a re-key)", d.Serial, d.Key, d0.Key)
		}
		if strings.Join(d.Addrs, ",") != strings.Join(d0.Addrs, ",") {
			t.Fatalf("device %s: addresses %v after the failover, %v before", d.Serial, d.Addrs, d0.Addrs)
		}
		m := f.byInstance(d.Instance)
		if m != a && m != b {
			t.Fatalf("device %s: on instance %q after the failover, neither a nor b", d.Serial, d.Instance)
		}
		movedTo[m] = append(movedTo[m], d)
	}
	for m, ds := range movedTo {
		m.holdsDevices(ds)
	}
	t.Logf("c's devices moved: %d to a, %d to b", len(movedTo[a]), len(movedTo[b]))
	// The devices that were elsewhere did not move, and every device
	// still pings.
	for sn, d := range after {
		if d0 := before[sn]; d0.Instance != c.instance && d.Instance != d0.Instance {
			t.Fatalf("device %s moved from %s to %s though its gateway lived", sn, d0.Instance, d.Instance)
		}
	}
	f.ping("every device after the failover", nil, 10*time.Second)
	f.checkAddresses(after, []*member{a, b})
	f.checkHomes(after)
	// The sessions follow their devices: those of c's devices carry pings
	// again through the devices' new homes (their clients, whose first
	// gateway died, asked the next one for the session's gateway peer),
	// the others never stopped.
	for _, s := range sessions {
		res := f.client("/session/ping", clientRequest{ID: s.id, WithinMS: int(failoverBound / time.Millisecond)})
		newHome := f.byInstance(after[s.serial].Instance)
		if res.PeerKey != newHome.publicKey() {
			t.Fatalf("session %s to %s: gateway peer %s, want its device's home %s (%s)", s.id, s.serial, res.PeerKey, newHome.name, newHome.publicKey())
		}
		if wasOnC := s.host == c; wasOnC != (res.Moves > 0) {
			t.Fatalf("session %s to %s: %d gateway peer changes; device moved: %v", s.id, s.serial, res.Moves, wasOnC)
		}
	}
	t.Logf("every session carries pings through its device's home %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
	// dassetctl fleet (on b) counts the same devices and sessions per
	// gateway.
	want := map[string]load{}
	for _, d := range after {
		l := want[d.Instance]
		l.devices++
		want[d.Instance] = l
	}
	for _, s := range sessions {
		l := want[after[s.serial].Instance]
		l.sessions++
		want[after[s.serial].Instance] = l
	}
	if got := b.loads(); got[a.instance] != want[a.instance] || got[b.instance] != want[b.instance] || got[c.instance] != (load{}) {
		t.Fatalf("dassetctl fleet after the failover: %+v; want a %+v, b %+v, c none", got, want[a.instance], want[b.instance])
	}

	// c starts again (same data directory, instance id and keystore):
	// nothing flaps back. Over three full reconcile passes of c (one a
	// second), c takes none of the moved devices as peers, no device
	// changes gateway and the registry's homes stay.
	c.startReady()
	t.Logf("c restarted as instance %s", c.instance)
	movedKeys := map[string]string{}
	for _, d := range victims {
		movedKeys[d.Key] = d.Serial
	}
	noneBack := func() {
		for _, p := range c.peers() {
			if sn, ok := movedKeys[p.PublicKey]; ok {
				t.Fatalf("device %s is a peer of c again after c restarted (it lives on another gateway)", sn)
			}
		}
	}
	passes := func() float64 {
		return c.counter("dasset_gateway_reconciles_total", map[string]string{"pass": "full", "result": "ok"})
	}
	base := passes()
	f.until(20*time.Second, 250*time.Millisecond, "c runs three full reconcile passes", func() error {
		noneBack()
		if n := passes(); n < base+3 {
			return fmt.Errorf("%v full passes since c was ready, want 3", n-base)
		}
		return nil
	})
	noneBack()
	still := f.devices()
	for sn, d := range still {
		if d.Instance != after[sn].Instance || strings.Join(d.Addrs, ",") != strings.Join(after[sn].Addrs, ",") {
			t.Fatalf("device %s: on %s with %v after c restarted, on %s with %v before", sn, d.Instance, d.Addrs, after[sn].Instance, after[sn].Addrs)
		}
	}
	f.checkHomes(still)
	for _, m := range []*member{a, b} {
		m.holdsOnly(append(slices.Clone(on[m]), movedTo[m]...))
	}
	c.holdsOnly(nil)
	t.Logf("c restarted: over %v full reconcile passes nothing moved back", passes()-base)

	// PostgreSQL restarts: tunnels keep carrying pings; client logins answer
	// Unavailable and /readyz is not ready during the outage; both recover
	// by themselves.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fullOK := func(m *member) float64 {
		return m.counter("dasset_gateway_reconciles_total", map[string]string{"pass": "full", "result": "ok"})
	}
	bFull := fullOK(b) // b's timer never fires: a full pass of b is a resync
	if err := f.pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	for _, m := range f.gws {
		f.until(15*time.Second, 200*time.Millisecond, "gateway "+m.name+" not ready without its registry", func() error {
			if _, err := m.Get("http://127.0.0.1:9591/readyz"); err == nil {
				return fmt.Errorf("/readyz still ready")
			}
			return nil
		})
	}
	for _, m := range f.gws {
		res := f.tryClient("/client/login", clientRequest{Gateway: m.addr, Account: "alice", Password: passwords["alice"]})
		if res.Code != "Unavailable" {
			t.Fatalf("client login on %s during the PostgreSQL outage: %s %s; want Unavailable", m.name, res.Code, res.Error)
		}
		res = f.tryClient("/device/login", clientRequest{Gateway: m.addr, Serial: fresh.Serial, Password: fresh.HWID})
		if res.Code != "Unavailable" {
			t.Fatalf("first login of an enrolled device on %s during the PostgreSQL outage: %s %s; want Unavailable", m.name, res.Code, res.Error)
		}
	}
	// The outage lasts a while: every device pings, a round every 250 ms,
	// for at least outageSpan and until a and c (full passes every second)
	// have each failed two full reconcile passes (a pass that cannot read
	// the registry must leave the peers alone: a hosts about half of the
	// devices).
	failedPasses := func(m *member) float64 {
		return m.counter("dasset_gateway_reconciles_total", map[string]string{"pass": "full", "result": "error"})
	}
	timed := []*member{a, c}
	failedBefore := map[*member]float64{}
	for _, m := range timed {
		failedBefore[m] = failedPasses(m)
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for round := 1; ; round++ {
		f.ping(fmt.Sprintf("every device during the PostgreSQL outage (round %d)", round), nil, 10*time.Second)
		done := time.Since(stopped) >= outageSpan
		for _, m := range timed {
			if failedPasses(m) < failedBefore[m]+2 {
				done = false
			}
		}
		if done {
			break
		}
		if time.Since(stopped) > 30*time.Second {
			t.Fatalf("30 s into the PostgreSQL outage, a and c have not each failed two full reconcile passes")
		}
		<-tick.C
	}
	for _, s := range sessions {
		f.client("/session/ping", clientRequest{ID: s.id, WithinMS: 10000})
	}
	t.Logf("PostgreSQL down for %v: every device pinged, logins answered Unavailable", time.Since(stopped).Round(time.Millisecond))
	if err := f.pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	for _, m := range f.gws {
		f.until(30*time.Second, 200*time.Millisecond, "client login on "+m.name+" after PostgreSQL is back", func() error {
			res := f.tryClient("/client/login", clientRequest{Gateway: m.addr, Account: "bob", Password: passwords["bob"]})
			if res.Code != "OK" {
				return fmt.Errorf("%s %s", res.Code, res.Error)
			}
			return nil
		})
		f.until(30*time.Second, 200*time.Millisecond, "gateway "+m.name+" ready again", func() error {
			_, err := m.Get("http://127.0.0.1:9591/readyz")
			return err
		})
	}
	f.until(30*time.Second, 200*time.Millisecond, "the fresh device's first login after PostgreSQL is back", func() error {
		if res := f.tryClient("/device/login", clientRequest{Gateway: a.addr, Serial: fresh.Serial, Password: fresh.HWID}); res.Code != "OK" {
			return fmt.Errorf("%s %s", res.Code, res.Error)
		}
		return nil
	})
	f.unrun++
	t.Logf("logins and readiness back %v after PostgreSQL restarted", time.Since(restarted).Round(time.Millisecond))
	// b's change feed is back: its listener reconnected and re-read its
	// whole share (a full pass, which its hour-long timer cannot explain).
	f.until(30*time.Second, 100*time.Millisecond, "b resyncs after its change feed reconnected", func() error {
		if n := fullOK(b); n <= bFull {
			return fmt.Errorf("no full pass of b since PostgreSQL stopped (%v)", n)
		}
		return nil
	})
	t.Logf("b resynced its change feed %v after PostgreSQL restarted", time.Since(restarted).Round(time.Millisecond))
	f.ping("every device after the PostgreSQL restart", nil, 10*time.Second)
	final := f.devices()
	f.checkAddresses(final, []*member{a, b})

	// Revoking a device on a cuts its tunnel on b within a second: b's
	// reconcile timer is an hour, so only the change feed can do it.
	inSession := map[string]bool{}
	for _, s := range sessions {
		inSession[s.serial] = true
	}
	var victim deviceState
	for _, d := range final {
		if d.Instance == b.instance && !inSession[d.Serial] {
			victim = d
			break
		}
	}
	b.holdsDevices([]deviceState{victim})
	if has, err := b.hasWGPeer(victim.Key); err != nil || !has {
		t.Fatalf("b's WireGuard device, asked over UAPI, has the device as a peer: %v, %v; want true", has, err)
	}
	revoke := time.Now()
	a.MustCtl("devices", "revoke", victim.Serial)
	answered := time.Since(revoke)
	err = poll.Until(f.Context(), time.Second-time.Since(revoke), 10*time.Millisecond, func() error {
		has, err := b.hasWGPeer(victim.Key)
		if err != nil {
			t.Fatal(err)
		}
		if has {
			return fmt.Errorf("device %s still a peer of b", victim.Serial)
		}
		return nil
	})
	if cut := time.Since(revoke); err != nil || cut > time.Second {
		t.Fatalf("revoked on a: %v after %v; want its peer gone from b within 1s", err, cut)
	}
	t.Logf("revoked on a (dassetctl answered after %v): the device's peer was gone from b after %v",
		answered.Round(time.Millisecond), time.Since(revoke).Round(time.Millisecond))
	f.until(10*time.Second, 100*time.Millisecond, "the revoked device's agent stops", func() error {
		if d := f.devices()[victim.Serial]; !strings.Contains(d.Ended, "revoked") {
			return fmt.Errorf("agent: %q", d.Ended)
		}
		return nil
	})
}
