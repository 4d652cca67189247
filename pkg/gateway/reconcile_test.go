package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/ipam"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// The reconciler's logic against fakes of the registry and the tunnel;
// pkg/daemon tests it with real gateways on one PostgreSQL.

const selfID, otherID = "gw-self", "gw-other"

type fakeTunnel struct {
	pub    [32]byte
	Tunnel // only the methods below are used
	mu     sync.Mutex
	peers  map[[32]byte][]netip.Prefix
	sets   int // SetPeers calls
}

func (t *fakeTunnel) AddPeer(_ context.Context, k [32]byte, a []netip.Prefix) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.peers[k] = a
	return nil
}

func (t *fakeTunnel) AddPeers(_ context.Context, ps []PeerSpec) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range ps {
		t.peers[p.Key] = p.Allowed
	}
	return nil
}

func (t *fakeTunnel) RemovePeer(_ context.Context, k [32]byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.peers, k)
	return nil
}

func (t *fakeTunnel) RemovePeers(_ context.Context, ks [][32]byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, k := range ks {
		delete(t.peers, k)
	}
	return nil
}

func (t *fakeTunnel) Peers(context.Context) ([]PeerSpec, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []PeerSpec
	for k, a := range t.peers {
		out = append(out, PeerSpec{Key: k, Allowed: a})
	}
	return out, nil
}

func (t *fakeTunnel) SetPeers(_ context.Context, ps []PeerSpec) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sets++
	t.peers = map[[32]byte][]netip.Prefix{}
	for _, p := range ps {
		t.peers[p.Key] = p.Allowed
	}
	return nil
}

func (t *fakeTunnel) LastHandshake(context.Context, [32]byte) (time.Time, error) {
	return time.Time{}, nil
}

func (t *fakeTunnel) PublicKey() [32]byte { return t.pub }

func (t *fakeTunnel) has(k [32]byte) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.peers[k]
	return ok
}

func (t *fakeTunnel) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.peers)
}

// fakeRegistry is the registry: devices and sessions, with read counters.
type fakeRegistry struct {
	Registry
	SessionRegistry
	mu        sync.Mutex
	devices   map[int64]store.Device
	sessions  map[string]store.Session
	devReads  int
	homeReads int
	onHome    func() // called during HomePeers, after the read
	homeErr   error  // SetHome fails with it when set
}

func (r *fakeRegistry) DeviceByID(_ context.Context, id int64) (store.Device, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.devReads++
	d, ok := r.devices[id]
	if !ok {
		return store.Device{}, store.ErrNotFound
	}
	return d, nil
}

func (r *fakeRegistry) HomePeers(_ context.Context, gw string) (store.HomePeers, error) {
	r.mu.Lock()
	r.homeReads++
	var hp store.HomePeers
	for _, d := range r.devices {
		if d.Home == gw && d.KeyPinned && d.Offset != 0 && !d.Revoked {
			hp.Devices = append(hp.Devices, d)
		}
	}
	for _, s := range r.sessions {
		if d := r.devices[s.DeviceID]; d.Home == gw && s.ClosedAt.IsZero() {
			hp.Sessions = append(hp.Sessions, store.HostedSession{Session: s, DeviceOffset: d.Offset, DeviceKey: d.Key})
		}
	}
	hook := r.onHome
	r.mu.Unlock()
	if hook != nil {
		hook()
	}
	return hp, nil
}

func (r *fakeRegistry) SetHome(_ context.Context, id int64, gw string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.homeErr != nil {
		return r.homeErr
	}
	d := r.devices[id]
	d.Home = gw
	r.devices[id] = d
	return nil
}

func (r *fakeRegistry) SessionByID(_ context.Context, id string) (store.Session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.sessions[id]
	if !ok {
		return store.Session{}, store.ErrNotFound
	}
	return s, nil
}

func (r *fakeRegistry) CloseSession(_ context.Context, id string, at time.Time) (store.Session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ss, ok := r.sessions[id]
	if !ok || !ss.ClosedAt.IsZero() {
		return store.Session{}, store.ErrNotFound
	}
	ss.ClosedAt = at
	r.sessions[id] = ss
	return ss, nil
}

func (r *fakeRegistry) SessionsOf(context.Context, int64, int64) ([]store.Session, error) {
	return nil, errors.New("not used")
}

func (r *fakeRegistry) Gateways(context.Context) ([]store.Gateway, error) { return nil, nil }

func (r *fakeRegistry) ReserveKey(context.Context, store.Key, store.KeyOwner) error { return nil }

func (r *fakeRegistry) AdmittedDevices(context.Context) ([]store.Device, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []store.Device
	for _, d := range r.devices {
		if d.KeyPinned && d.Offset != 0 && !d.Revoked {
			out = append(out, d)
		}
	}
	return out, nil
}

func (r *fakeRegistry) put(d store.Device) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.devices[d.ID] = d
}

func (r *fakeRegistry) reads() (dev, home int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.devReads, r.homeReads
}

type fakeACL struct {
	mu    sync.Mutex
	pairs []Pair
}

func (a *fakeACL) SetSessions(p []Pair) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pairs = slices.Clone(p)
}

func (a *fakeACL) get() []Pair {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pairs
}

type fakeAccountKeys struct{}

func (fakeAccountKeys) AccountIndex(string) privacy.BlindIndex { return privacy.BlindIndex{} }

type recObs struct {
	mu      sync.Mutex
	full    int
	incr    int
	repairs int
}

func (o *recObs) Reconciled(full bool, repairs int, _ error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if full {
		o.full++
	} else {
		o.incr++
	}
	o.repairs += repairs
}

type reconcileRig struct {
	g   *Gateway
	reg *fakeRegistry
	tun *fakeTunnel
	acl *fakeACL
	obs *recObs
}

func newReconcileRig(t *testing.T) *reconcileRig {
	t.Helper()
	plan, err := ipam.New(ipam.Config{
		IPv4: netip.MustParsePrefix("100.80.0.0/12"), IPv6: netip.MustParsePrefix("fdda:55e7::/48"),
		ClientIPv4: netip.MustParsePrefix("100.95.0.0/16"), ClientIPv6: netip.MustParsePrefix("fdda:55e7:0:ff::/64"),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &reconcileRig{
		reg: &fakeRegistry{devices: map[int64]store.Device{}, sessions: map[string]store.Session{}},
		tun: &fakeTunnel{peers: map[[32]byte][]netip.Prefix{}},
		acl: &fakeACL{}, obs: &recObs{},
	}
	r.g = &Gateway{
		cfg: Config{InstanceID: selfID, Now: time.Now, IdleTimeout: time.Minute, HomeStale: 30 * time.Second},
		reg: r.reg, tun: r.tun, plan: plan, log: slog.New(slog.DiscardHandler),
		hub: newHub(), plane: newPlane(), homes: r.reg, recObs: r.obs, connlog: nopConnLog{},
	}
	r.g.fleet = &fleetView{homes: r.reg, now: time.Now}
	r.g.sess = newSessions(r.g, r.reg, fakeAccountKeys{}, r.acl, SessionOptions{})
	return r
}

func key(b byte) [32]byte { return [32]byte{b} }

func device(id int64, home string) store.Device {
	return store.Device{ID: id, Key: store.Key(key(byte(id))), KeyPinned: true, Offset: uint32(id) + 1, Home: home}
}

// TestReconcileFull: a full pass makes the tunnel exactly the devices homed
// here (repairing a wrong peer, a missing one and a stray one, counted as
// repairs) and leaves a right tunnel alone.
func TestReconcileFull(t *testing.T) {
	r := newReconcileRig(t)
	ctx := context.Background()
	r.reg.put(device(1, selfID))
	r.reg.put(device(2, selfID))
	r.reg.put(device(3, otherID))
	revoked := device(4, selfID)
	revoked.Revoked = true
	r.reg.put(revoked)
	stray := key(99)
	r.tun.peers[stray] = []netip.Prefix{netip.MustParsePrefix("100.80.9.9/32")}
	r.tun.peers[key(1)] = []netip.Prefix{netip.MustParsePrefix("100.80.7.7/32")} // wrong allowed IPs

	n, err := r.g.ReconcileFull(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("repairs = %d, want 3 (a wrong, a missing, a stray peer)", n)
	}
	if !r.tun.has(key(1)) || !r.tun.has(key(2)) || r.tun.has(key(3)) || r.tun.has(key(4)) || r.tun.has(stray) || r.tun.count() != 2 {
		t.Fatalf("tunnel peers after a full pass: %v", r.tun.peers)
	}
	want, _ := r.g.devicePrefixes(2)
	if got := r.tun.peers[key(1)]; !samePrefixSet(got, want) {
		t.Fatalf("device 1 allowed IPs %v, want %v", got, want)
	}
	if r.g.AdmittedCount() != 2 || !r.g.pinnedKey(key(2)) || r.g.pinnedKey(key(3)) {
		t.Fatalf("in-memory view: %d devices", r.g.AdmittedCount())
	}
	sets := r.tun.sets
	if n, err := r.g.ReconcileFull(ctx); err != nil || n != 0 {
		t.Fatalf("second pass: %d repairs, %v", n, err)
	}
	if r.tun.sets != sets {
		t.Fatal("a pass with nothing to repair changed the tunnel")
	}
	if r.obs.full != 2 || r.obs.repairs != 3 {
		t.Fatalf("observed %d full passes, %d repairs", r.obs.full, r.obs.repairs)
	}
}

// TestReconcileChanges: a device that moved away loses its peer here and
// its stream ends; a revoked one loses its peer and gets Revoked; changes
// of devices homed elsewhere cost no read.
func TestReconcileChanges(t *testing.T) {
	r := newReconcileRig(t)
	ctx := context.Background()
	for id := int64(1); id <= 3; id++ {
		r.reg.put(device(id, selfID))
	}
	if _, err := r.g.ReconcileFull(ctx); err != nil {
		t.Fatal(err)
	}
	ev1, repl1, cancel1 := r.g.hub.subscribe(1)
	defer cancel1()
	ev2, repl2, cancel2 := r.g.hub.subscribe(2)
	defer cancel2()

	r.reg.put(device(1, otherID))
	rv := device(2, selfID)
	rv.Revoked = true
	r.reg.put(rv)
	r.reg.put(device(10, otherID)) // admitted elsewhere: not ours, not read
	before, _ := r.reg.reads()
	err := r.g.ReconcileChanges(ctx, []Change{
		{Kind: ChangeDevice, DeviceID: 1, Gateway: otherID},
		{Kind: ChangeDevice, DeviceID: 2, Gateway: selfID},
		{Kind: ChangeDevice, DeviceID: 10, Gateway: otherID},
		{Kind: ChangeDevice, DeviceID: 2, Gateway: selfID}, // twice in a batch: read once
	})
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := r.reg.reads(); after-before != 2 {
		t.Fatalf("%d device reads for the batch, want 2", after-before)
	}
	if r.tun.has(key(1)) || r.tun.has(key(2)) || !r.tun.has(key(3)) {
		t.Fatalf("tunnel after the changes: %v", r.tun.peers)
	}
	// The moved device keeps a pinned-key lane here (it may fail over
	// back); the revoked one does not.
	if !r.g.pinnedKey(key(1)) || r.g.pinnedKey(key(2)) || r.g.AdmittedCount() != 1 {
		t.Fatalf("pinned lanes: moved %v, revoked %v; %d devices here", r.g.pinnedKey(key(1)), r.g.pinnedKey(key(2)), r.g.AdmittedCount())
	}
	select {
	case <-repl1:
	default:
		t.Fatal("the stream of the device that moved away was not ended")
	}
	select {
	case e := <-ev2:
		if e.Kind != EventRevoked {
			t.Fatalf("revoked device got %+v", e)
		}
	default:
		t.Fatal("the revoked device's stream got no event")
	}
	select {
	case e := <-ev1:
		t.Fatalf("the moved device got %+v", e)
	case <-repl2:
		t.Fatal("the revoked device's stream was ended without its event")
	default:
	}

	// A device homed here again (a login elsewhere moved it back) is
	// added by its notification.
	r.reg.put(device(1, selfID))
	if err := r.g.ReconcileChanges(ctx, []Change{{Kind: ChangeDevice, DeviceID: 1, Gateway: selfID}}); err != nil {
		t.Fatal(err)
	}
	if !r.tun.has(key(1)) {
		t.Fatal("device homed here again has no peer")
	}
}

// TestReconcileBatchThreshold: a batch needing more single reads than
// maxIncrementalReads is one full pass; a resync is one full pass.
func TestReconcileBatchThreshold(t *testing.T) {
	r := newReconcileRig(t)
	ctx := context.Background()
	var changes []Change
	for id := int64(1); id <= maxIncrementalReads+1; id++ {
		r.reg.put(device(id, selfID))
		changes = append(changes, Change{Kind: ChangeDevice, DeviceID: id, Gateway: selfID})
	}
	if err := r.g.ReconcileChanges(ctx, changes); err != nil {
		t.Fatal(err)
	}
	dev, home := r.reg.reads()
	if dev != 0 || home != 1 {
		t.Fatalf("a large batch made %d device reads and %d full reads, want 0 and 1", dev, home)
	}
	if r.tun.count() != maxIncrementalReads+1 {
		t.Fatalf("%d peers", r.tun.count())
	}
	if err := r.g.ReconcileChanges(ctx, []Change{{Kind: ChangeResync}}); err != nil {
		t.Fatal(err)
	}
	if _, home := r.reg.reads(); home != 2 {
		t.Fatalf("a resync made %d full reads in total, want 2", home)
	}
}

// TestReconcileKeepsLocalChanges: a device admitted here while a full pass
// was reading the registry (its read predates the admission) keeps its peer.
func TestReconcileKeepsLocalChanges(t *testing.T) {
	r := newReconcileRig(t)
	ctx := context.Background()
	r.reg.put(device(1, selfID))
	pfx, _ := r.g.devicePrefixes(6)
	r.reg.onHome = func() {
		r.reg.onHome = nil
		// A login of device 5 commits and adds its peer after the read.
		if err := r.g.addHomePeer(ctx, 5, key(5), 6, pfx, false, [32]byte{}, false); err != nil {
			t.Error(err)
		}
	}
	if _, err := r.g.ReconcileFull(ctx); err != nil {
		t.Fatal(err)
	}
	if !r.tun.has(key(5)) || !r.tun.has(key(1)) {
		t.Fatalf("tunnel after a pass that raced a login: %v", r.tun.peers)
	}
	// The next pass, reading the login, keeps it for good.
	r.reg.put(device(5, selfID))
	if n, err := r.g.ReconcileFull(ctx); err != nil || n != 0 {
		t.Fatalf("next pass: %d repairs, %v", n, err)
	}
}

// TestReconcileSessions: a session opened on another gateway to a device
// homed here gets its client peer, ACL pair and SessionOpened here; closed,
// they go and the device is told.
func TestReconcileSessions(t *testing.T) {
	r := newReconcileRig(t)
	ctx := context.Background()
	r.reg.put(device(1, selfID))
	if _, err := r.g.ReconcileFull(ctx); err != nil {
		t.Fatal(err)
	}
	events, _, cancel := r.g.hub.subscribe(1)
	defer cancel()
	client := key(200)
	r.reg.sessions["s1"] = store.Session{ID: "s1", AccountID: 7, DeviceID: 1, ClientKey: store.Key(client), ClientOffset: 3, ExpiresAt: time.Now().Add(time.Hour)}
	change := []Change{{Kind: ChangeSession, SessionID: "s1", DeviceID: 1}}
	if err := r.g.ReconcileChanges(ctx, change); err != nil {
		t.Fatal(err)
	}
	if !r.tun.has(client) || len(r.acl.get()) != 2 || r.g.OpenSessionCount() != 1 {
		t.Fatalf("hosted session: client peer %v, ACL %v", r.tun.has(client), r.acl.get())
	}
	if e := <-events; e.Kind != EventSessionOpened || e.SessionID != "s1" {
		t.Fatalf("device got %+v", e)
	}
	s := r.reg.sessions["s1"]
	s.ClosedAt = time.Now()
	r.reg.sessions["s1"] = s
	if err := r.g.ReconcileChanges(ctx, change); err != nil {
		t.Fatal(err)
	}
	if r.tun.has(client) || len(r.acl.get()) != 0 || r.g.OpenSessionCount() != 0 {
		t.Fatalf("closed session: client peer %v, ACL %v", r.tun.has(client), r.acl.get())
	}
	if e := <-events; e.Kind != EventSessionClosed || e.SessionID != "s1" {
		t.Fatalf("device got %+v", e)
	}
	// A session of a device homed elsewhere is not read.
	r.reg.put(device(2, otherID))
	before, _ := r.reg.reads()
	if err := r.g.ReconcileChanges(ctx, []Change{{Kind: ChangeSession, SessionID: "s2", DeviceID: 2}}); err != nil {
		t.Fatal(err)
	}
	if after, _ := r.reg.reads(); after != before {
		t.Fatal("a session of a device homed elsewhere was read")
	}
}

// TestReconcilePending: a device admitted here while its home could not be
// recorded stays a peer through full passes, and its home is recorded once
// the registry takes it.
func TestReconcilePending(t *testing.T) {
	r := newReconcileRig(t)
	ctx := context.Background()
	r.reg.put(device(1, otherID))
	pfx, _ := r.g.devicePrefixes(2)
	if err := r.g.addHomePeer(ctx, 1, key(1), 2, pfx, false, [32]byte{}, true); err != nil {
		t.Fatal(err)
	}
	_, _, cancel := r.g.hub.subscribe(1) // the device is connected here
	defer cancel()
	r.reg.homeErr = errors.New("registry read-only")
	for range 2 {
		if _, err := r.g.ReconcileFull(ctx); err != nil {
			t.Fatal(err)
		}
		if !r.tun.has(key(1)) {
			t.Fatal("a device admitted during an outage was dropped")
		}
	}
	if d, _ := r.reg.DeviceByID(ctx, 1); d.Home != otherID {
		t.Fatalf("home %q while SetHome fails", d.Home)
	}
	r.reg.homeErr = nil
	if _, err := r.g.ReconcileFull(ctx); err != nil {
		t.Fatal(err)
	}
	if !r.tun.has(key(1)) {
		t.Fatal("device dropped once its home was recorded")
	}
	if d, _ := r.reg.DeviceByID(ctx, 1); d.Home != selfID {
		t.Fatalf("home %q after the retry, want %q", d.Home, selfID)
	}
}

func TestPeerDiff(t *testing.T) {
	a := []netip.Prefix{netip.MustParsePrefix("100.80.0.2/32"), netip.MustParsePrefix("fdda:55e7::2/128")}
	b := []netip.Prefix{a[1], a[0]}
	if n := peerDiff([]PeerSpec{{Key: key(1), Allowed: a}}, []PeerSpec{{Key: key(1), Allowed: b}}); n != 0 {
		t.Fatalf("same prefixes in another order: %d differences", n)
	}
	if n := peerDiff([]PeerSpec{{Key: key(1), Allowed: a}, {Key: key(2), Allowed: a[:1]}}, []PeerSpec{{Key: key(1), Allowed: a[:1]}, {Key: key(3)}}); n != 3 {
		t.Fatalf("%d differences, want 3", n)
	}
}

type fakeFeed struct {
	mu   sync.Mutex
	subs []chan Change
}

func (f *fakeFeed) Changes(ctx context.Context) (<-chan Change, error) {
	ch := make(chan Change, 16)
	f.mu.Lock()
	f.subs = append(f.subs, ch)
	f.mu.Unlock()
	return ch, nil
}

func (f *fakeFeed) last() (chan Change, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.subs) == 0 {
		return nil, 0
	}
	return f.subs[len(f.subs)-1], len(f.subs)
}

func (o *recObs) passes() (full, incr int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.full, o.incr
}

// eventually polls cond for up to 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Must(t, 5*time.Second, what, func() error {
		if !cond() {
			return errors.New("not yet")
		}
		return nil
	})
}

// TestRunReconciler: the loop runs a full pass on subscribing, applies the
// feed's changes, subscribes again (with a full pass) when the feed's
// channel closes, and stops with its context.
func TestRunReconciler(t *testing.T) {
	r := newReconcileRig(t)
	r.reg.put(device(1, selfID))
	feed := &fakeFeed{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.g.RunReconciler(ctx, feed, time.Hour) }()
	eventually(t, "the first full pass added device 1", func() bool { return r.tun.has(key(1)) })

	ch, _ := feed.last()
	r.reg.put(device(2, selfID))
	ch <- Change{Kind: ChangeDevice, DeviceID: 2, Gateway: selfID}
	eventually(t, "device 2 added from its change", func() bool { return r.tun.has(key(2)) })
	if _, incr := r.obs.passes(); incr != 1 {
		t.Fatalf("%d incremental passes, want 1", incr)
	}

	close(ch)
	eventually(t, "subscribed again", func() bool { _, n := feed.last(); return n == 2 })
	eventually(t, "a full pass after subscribing again", func() bool { full, _ := r.obs.passes(); return full == 2 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunReconciler did not stop with its context")
	}
}

// TestStartHomes: Start adds the peers of the devices homed here, adopts
// the homeless ones, leaves those homed elsewhere to their gateway but
// keeps their keys for the pinned-key admission lanes; on a sole gateway
// it adopts every admitted device.
func TestStartHomes(t *testing.T) {
	for _, sole := range []bool{false, true} {
		r := newReconcileRig(t)
		r.g.cfg.Sole = sole
		r.reg.put(device(1, selfID))
		r.reg.put(device(2, otherID))
		r.reg.put(device(3, ""))
		n, err := r.g.Start(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		wantN := 2
		if sole {
			wantN = 3
		}
		if n != wantN || !r.tun.has(key(1)) || !r.tun.has(key(3)) || r.tun.has(key(2)) != sole {
			t.Fatalf("sole=%v: Start homed %d devices, peers %v", sole, n, r.tun.peers)
		}
		if d, _ := r.reg.DeviceByID(context.Background(), 3); d.Home != selfID {
			t.Fatalf("sole=%v: the homeless device's home is %q after Start", sole, d.Home)
		}
		if !r.g.pinnedKey(key(1)) || !r.g.pinnedKey(key(2)) || r.g.pinnedKey(key(99)) {
			t.Fatalf("sole=%v: pinned lanes: here %v, elsewhere %v, stranger %v", sole, r.g.pinnedKey(key(1)), r.g.pinnedKey(key(2)), r.g.pinnedKey(key(99)))
		}
		if sole != (r.g.AdmittedCount() == 3) {
			t.Fatalf("sole=%v: %d devices counted here", sole, r.g.AdmittedCount())
		}
	}
}

// TestReconcileKeepsLocalClose: a session closed here while a full pass was
// reading the registry (its read saw the session open) stays closed.
func TestReconcileKeepsLocalClose(t *testing.T) {
	r := newReconcileRig(t)
	ctx := context.Background()
	r.reg.put(device(1, selfID))
	client := key(200)
	r.reg.sessions["s1"] = store.Session{ID: "s1", AccountID: 7, DeviceID: 1, ClientKey: store.Key(client), ClientOffset: 3, ExpiresAt: time.Now().Add(time.Hour)}
	if _, err := r.g.ReconcileFull(ctx); err != nil {
		t.Fatal(err)
	}
	if !r.tun.has(client) || r.g.OpenSessionCount() != 1 {
		t.Fatal("the session is not hosted")
	}
	r.reg.onHome = func() {
		r.reg.onHome = nil
		if err := r.g.CloseSession(ctx, nil, "s1"); err != nil {
			t.Error(err)
		}
	}
	if _, err := r.g.ReconcileFull(ctx); err != nil {
		t.Fatal(err)
	}
	if r.tun.has(client) || r.g.OpenSessionCount() != 0 || len(r.acl.get()) != 0 {
		t.Fatalf("a pass that read the session open brought it back: peer %v, %d open, ACL %v", r.tun.has(client), r.g.OpenSessionCount(), r.acl.get())
	}
}
