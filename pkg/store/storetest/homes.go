package storetest

import (
	"crypto/rand"
	"maps"
	"strings"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// admitAt admits the device through gateway gw and returns it.
func (t *h) admitAt(id int64, gw string) store.Device {
	t.Helper()
	a := admission(id, 1, 1000)
	a.Gateway = gw
	d, err := t.s.Admit(t.ctx, a)
	t.must(err, "Admit at "+gw)
	return d
}

// sessionAt opens a session to the device opened at t0+minute, binding the
// device to the account first when it is not.
func (t *h) sessionAt(accountID, deviceID int64, minute int) store.Session {
	t.Helper()
	bound, err := t.s.IsBound(t.ctx, accountID, deviceID)
	t.must(err, "IsBound")
	if !bound {
		t.bind(accountID, deviceID)
	}
	s, err := t.s.OpenSession(t.ctx, store.Session{
		ID: rand.Text(), AccountID: accountID, DeviceID: deviceID, ClientKey: random[store.Key](),
		OpenedAt: t0.Add(time.Duration(minute) * time.Minute), ExpiresAt: t0.Add(time.Hour),
	}, 1, 1000)
	t.must(err, "OpenSession")
	return s
}

func (t *h) home(id int64) string {
	t.Helper()
	return t.device(id).Home
}

// testAdmitSetsHome: an enrolled device has no home; each admission makes
// the admitting gateway its home (returned and stored); a refused admission
// leaves it; a key reset keeps it.
func testAdmitSetsHome(t *h) {
	devs := t.enroll(2)
	if devs[0].Home != "" {
		t.Fatalf("enrolled device has home %q, want none", devs[0].Home)
	}
	a := admission(devs[0].ID, 1, 100)
	a.Gateway = gwA
	d, err := t.s.Admit(t.ctx, a)
	t.must(err, "Admit")
	if d.Home != gwA || t.home(d.ID) != gwA {
		t.Fatalf("after admission at %s: returned home %q, stored %q", gwA, d.Home, t.home(d.ID))
	}
	if t.home(devs[1].ID) != "" {
		t.Fatal("admitting one device gave another a home")
	}
	// The same key again, through another gateway: the home moves.
	b := a
	b.Gateway, b.TokenHash = gwB, random[[32]byte]()
	d, err = t.s.Admit(t.ctx, b)
	t.must(err, "Admit at another gateway")
	if d.Home != gwB || t.home(d.ID) != gwB {
		t.Fatalf("re-admission at %s: returned home %q, stored %q", gwB, d.Home, t.home(d.ID))
	}
	// Refused (another key pinned): nothing moves.
	c := admission(devs[0].ID, 1, 100)
	c.Gateway = gwC
	_, err = t.s.Admit(t.ctx, c)
	t.wantErr(err, store.ErrKeyPinned, "another key without ReplaceKey")
	if got := t.home(d.ID); got != gwB {
		t.Fatalf("a refused admission moved the home to %q", got)
	}
	t.must(t.s.ResetDeviceKey(t.ctx, d.ID), "ResetDeviceKey")
	if got := t.home(d.ID); got != gwB {
		t.Fatalf("a key reset changed the home to %q", got)
	}
}

// testSetHome: SetHome moves a device's home (admitted or not), refuses a
// revoked or unknown device and a bad gateway id, naming the field, and
// writes nothing then.
func testSetHome(t *h) {
	devs := t.enroll(3)
	d := t.admitAt(devs[0].ID, gwA)
	t.must(t.s.SetHome(t.ctx, d.ID, gwB), "SetHome")
	got := t.device(d.ID)
	if got.Home != gwB {
		t.Fatalf("home after SetHome %q, want %s", got.Home, gwB)
	}
	want := d
	want.Home = gwB
	if !sameDevice(got, want) {
		t.Fatalf("SetHome changed more than the home: %+v -> %+v", d, got)
	}
	t.must(t.s.SetHome(t.ctx, d.ID, gwB), "SetHome to the same gateway")
	if t.home(d.ID) != gwB {
		t.Fatal("SetHome to the same gateway changed the home")
	}
	// A device never admitted may get a home too (it is no peer anywhere
	// until admitted).
	t.must(t.s.SetHome(t.ctx, devs[1].ID, gwC), "SetHome of an enrolled device")
	if t.home(devs[1].ID) != gwC {
		t.Fatal("SetHome of an enrolled device did not stick")
	}
	t.wantErr(t.s.SetHome(t.ctx, 424242, gwA), store.ErrNotFound, "SetHome of an unknown device")
	for name, gw := range map[string]string{"empty": "", "too long": strings.Repeat("g", 65)} {
		err := t.s.SetHome(t.ctx, d.ID, gw)
		t.wantErr(err, privacy.ErrInvalid, "SetHome with an "+name+" gateway")
		if !strings.Contains(err.Error(), "gateway") {
			t.Fatalf("SetHome with an %s gateway: %v does not name the field", name, err)
		}
	}
	r := t.admitAt(devs[2].ID, gwA)
	t.must(t.s.RevokeDevice(t.ctx, r.ID), "RevokeDevice")
	t.wantErr(t.s.SetHome(t.ctx, r.ID, gwB), store.ErrRevoked, "SetHome of a revoked device")
	if got := t.home(r.ID); got != gwA {
		t.Fatalf("refused SetHome moved a revoked device to %q", got)
	}
	if got := t.home(d.ID); got != gwB {
		t.Fatalf("refused calls moved device %d to %q", d.ID, got)
	}
}

// homeFixture: on gwA two admitted devices (one with an open and a closed
// session), a revoked one and one whose key was reset (with an open
// session); on gwB one admitted device with an open session; an enrolled
// device without a home.
type homeFixture struct {
	a0, a1, revoked, reset, b0, unadmitted store.Device
	sA0, sReset, sB0                       store.Session
}

func (t *h) homeFixture() homeFixture {
	t.Helper()
	devs := t.enroll(6)
	var f homeFixture
	f.a0, f.a1 = t.admitAt(devs[0].ID, gwA), t.admitAt(devs[1].ID, gwA)
	f.revoked, f.reset = t.admitAt(devs[2].ID, gwA), t.admitAt(devs[3].ID, gwA)
	f.b0, f.unadmitted = t.admitAt(devs[4].ID, gwB), devs[5]
	acct := t.account()
	f.sReset = t.sessionAt(acct.ID, f.reset.ID, 1)
	f.sA0 = t.sessionAt(acct.ID, f.a0.ID, 2)
	f.sB0 = t.sessionAt(acct.ID, f.b0.ID, 3)
	closed := t.sessionAt(acct.ID, f.a1.ID, 4)
	_, err := t.s.CloseSession(t.ctx, closed.ID, t0.Add(5*time.Minute))
	t.must(err, "CloseSession")
	t.must(t.s.RevokeDevice(t.ctx, f.revoked.ID), "RevokeDevice")
	t.must(t.s.ResetDeviceKey(t.ctx, f.reset.ID), "ResetDeviceKey")
	f.reset = t.device(f.reset.ID)
	return f
}

func (t *h) wantPeers(gw string, devs []store.Device, sessions []store.Session) {
	t.Helper()
	hp, err := t.s.HomePeers(t.ctx, gw)
	t.must(err, "HomePeers "+gw)
	if len(hp.Devices) != len(devs) {
		t.Fatalf("HomePeers(%s): %d devices %+v, want %d", gw, len(hp.Devices), hp.Devices, len(devs))
	}
	for i, d := range devs {
		if !sameDevice(hp.Devices[i], t.device(d.ID)) {
			t.Fatalf("HomePeers(%s) device %d = %+v, want %+v", gw, i, hp.Devices[i], t.device(d.ID))
		}
	}
	if len(hp.Sessions) != len(sessions) {
		t.Fatalf("HomePeers(%s): %d sessions %+v, want %d", gw, len(hp.Sessions), hp.Sessions, len(sessions))
	}
	for i, s := range sessions {
		got := hp.Sessions[i]
		dev := t.device(s.DeviceID)
		if got.ID != s.ID || got.AccountID != s.AccountID || got.DeviceID != s.DeviceID || got.ClientKey != s.ClientKey ||
			got.ClientOffset != s.ClientOffset || !got.OpenedAt.Equal(s.OpenedAt) || !got.ExpiresAt.Equal(s.ExpiresAt) || !got.ClosedAt.IsZero() {
			t.Fatalf("HomePeers(%s) session %d = %+v, want %+v", gw, i, got.Session, s)
		}
		wantKey := store.Key{}
		if dev.KeyPinned {
			wantKey = dev.Key
		}
		if got.DeviceOffset != dev.Offset || got.DeviceKey != wantKey {
			t.Fatalf("HomePeers(%s) session %d: device offset %d key %x, want %d %x", gw, i, got.DeviceOffset, got.DeviceKey[:4], dev.Offset, wantKey[:4])
		}
	}
}

// testHomePeers: a gateway's peers are its admitted, unrevoked devices (by
// id) and the open sessions of every device homed there (oldest first, a
// device with its key reset included, with no key); they follow a device
// whose home moves; an unknown gateway has none; a bad id is refused.
func testHomePeers(t *h) {
	f := t.homeFixture()
	t.wantPeers(gwA, []store.Device{f.a0, f.a1}, []store.Session{f.sReset, f.sA0})
	t.wantPeers(gwB, []store.Device{f.b0}, []store.Session{f.sB0})
	t.wantPeers(gwC, nil, nil)

	// a0 moves to gwB with its session; gwA keeps a1 and the reset device's session.
	t.must(t.s.SetHome(t.ctx, f.a0.ID, gwB), "SetHome")
	t.wantPeers(gwA, []store.Device{f.a1}, []store.Session{f.sReset})
	t.wantPeers(gwB, []store.Device{f.a0, f.b0}, []store.Session{f.sA0, f.sB0})
	// Closing a session removes it; re-admitting the reset device at gwC
	// makes it (and its session) gwC's.
	_, err := t.s.CloseSession(t.ctx, f.sB0.ID, t0.Add(10*time.Minute))
	t.must(err, "CloseSession")
	t.admitAt(f.reset.ID, gwC)
	t.wantPeers(gwA, []store.Device{f.a1}, nil)
	t.wantPeers(gwB, []store.Device{f.a0, f.b0}, []store.Session{f.sA0})
	t.wantPeers(gwC, []store.Device{f.reset}, []store.Session{f.sReset})

	for _, gw := range []string{"", strings.Repeat("g", 65)} {
		_, err := t.s.HomePeers(t.ctx, gw)
		t.wantErr(err, privacy.ErrInvalid, "HomePeers of a bad gateway id")
	}
}

// testGatewayLoads: an empty store has no loads; each gateway's counts are
// those of its HomePeers, and follow a move and a revocation.
func testGatewayLoads(t *h) {
	loads, err := t.s.GatewayLoads(t.ctx)
	t.must(err, "GatewayLoads")
	if len(loads) != 0 {
		t.Fatalf("GatewayLoads of an empty store: %v", loads)
	}
	f := t.homeFixture()
	check := func(want map[string]store.GatewayLoad) {
		t.Helper()
		loads, err := t.s.GatewayLoads(t.ctx)
		t.must(err, "GatewayLoads")
		if !maps.Equal(loads, want) {
			t.Fatalf("GatewayLoads = %v, want %v", loads, want)
		}
		for _, gw := range []string{gwA, gwB, gwC} {
			hp, err := t.s.HomePeers(t.ctx, gw)
			t.must(err, "HomePeers")
			if l := loads[gw]; l.Devices != len(hp.Devices) || l.Sessions != len(hp.Sessions) {
				t.Fatalf("GatewayLoads[%s] = %+v, HomePeers holds %d devices and %d sessions", gw, l, len(hp.Devices), len(hp.Sessions))
			}
		}
	}
	check(map[string]store.GatewayLoad{gwA: {Devices: 2, Sessions: 2}, gwB: {Devices: 1, Sessions: 1}})
	t.must(t.s.SetHome(t.ctx, f.a0.ID, gwC), "SetHome")
	t.must(t.s.RevokeDevice(t.ctx, f.b0.ID), "RevokeDevice")
	// The revocation closes the revoked device's session too: gwB holds
	// nothing.
	check(map[string]store.GatewayLoad{gwA: {Devices: 1, Sessions: 1}, gwC: {Devices: 1, Sessions: 1}})
}
