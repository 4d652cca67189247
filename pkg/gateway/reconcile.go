package gateway

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// Homes is the part of the registry that says which peers belong on which
// gateway of a fleet: a device is a WireGuard peer only on its home (the
// gateway it last logged in to), and the sessions to it are hosted there.
type Homes interface {
	SetHome(ctx context.Context, deviceID int64, gateway string) error
	HomePeers(ctx context.Context, gateway string) (store.HomePeers, error)
	SessionByID(ctx context.Context, id string) (store.Session, error)
	SessionsOf(ctx context.Context, deviceID, accountID int64) ([]store.Session, error)
	Gateways(ctx context.Context) ([]store.Gateway, error)
}

// ChangeFeed delivers what changed in the registry on any gateway of the
// fleet. The channel closes when ctx ends (or the feed broke: the
// reconciler subscribes again).
type ChangeFeed interface {
	Changes(ctx context.Context) (<-chan Change, error)
}

// ChangeKind says what a Change is about.
type ChangeKind int

// Change kinds.
const (
	// ChangeDevice: a device was admitted, moved, revoked, re-keyed or
	// erased (DeviceID; Gateway its home after the change, when known).
	ChangeDevice ChangeKind = iota + 1
	// ChangeSession: a session opened or closed (SessionID, DeviceID).
	ChangeSession
	// ChangeResync: notifications may have been lost; re-read everything.
	ChangeResync
)

// Change is one change notification: ids only.
type Change struct {
	Kind      ChangeKind
	DeviceID  int64
	SessionID string
	Gateway   string
}

// ReconcileObserver receives the reconciler's measurements (metrics).
type ReconcileObserver interface {
	// Reconciled reports one pass: full (the whole desired state read) or
	// incremental (the changes of one batch), the peers it had to repair
	// (full passes only: peers the WireGuard device had wrong although
	// nothing had told the gateway), and whether it failed.
	Reconciled(full bool, repairs int, err error)
}

type nopReconcileObserver struct{}

func (nopReconcileObserver) Reconciled(bool, int, error) {}

// Batching of change notifications: a pass handles what arrived within
// changeBatchWait of the first change (at most changeBatchMax changes);
// a batch needing more than maxIncrementalReads single reads is done as one
// full pass instead.
const (
	changeBatchWait     = 10 * time.Millisecond
	changeBatchMax      = 4096
	maxIncrementalReads = 128
	// maxRemovedLookups bounds the reads a full pass makes to tell why
	// devices left (revoked and erased devices get Revoked on their
	// stream, moved ones have their stream ended).
	maxRemovedLookups = 1024
	// resubscribeWait is how long the reconciler waits before asking for
	// the change feed again after it failed.
	resubscribeWait = time.Second
)

// homeDevice is a device homed on this gateway: a WireGuard peer here.
type homeDevice struct {
	key    [32]byte
	offset uint32
}

// plane is the in-memory view of this gateway's share of the data plane:
// the devices homed here (their peers) and, in sessions.open, the sessions
// hosted here (their client peers and the hub ACL). Local operations (a
// login, a revocation, a session opened or closed here) change it and the
// tunnel at once; the reconciler brings it, and the tunnel, to what the
// registry says.
//
// Lock order: order, then mu or sessions.mu (never both at once).
type plane struct {
	// order keeps tunnel changes in the order of the in-memory state:
	// local operations hold it shared from their in-memory change to their
	// tunnel change, a reconcile pass holds it exclusively from computing
	// its changes to applying them.
	order sync.RWMutex

	mu    sync.Mutex
	byID  map[int64]homeDevice
	byKey map[[32]byte]int64 // pinned key → device id (admission lanes, online counts)
	// elsewhere are the pinned keys of admitted devices homed on other
	// gateways, as last seen (at start, and when one moves away): a device
	// failing over to this gateway keeps its pinned-key admission lanes.
	// Only a priority in the admission queue: the login is verified all
	// the same.
	elsewhere   map[[32]byte]int64
	elsewhereOf map[int64][32]byte
	seq         uint64            // counts local changes
	devSeq      map[int64]uint64  // device id → seq of its last local change
	sessSeq     map[string]uint64 // session id → seq of its last local change
	// pending are devices admitted here while their home could not be
	// recorded (the registry was unavailable): kept here, whatever the
	// registry says of their home, until SetHome succeeds.
	pending map[int64]bool
	// loggedOut are devices homed here that logged out: not peers until
	// they log in again.
	loggedOut map[int64]bool
	// needFull is set when an incremental pass could not apply its
	// changes: the next batch runs a full pass.
	needFull bool
}

func newPlane() *plane {
	return &plane{
		byID: make(map[int64]homeDevice), byKey: make(map[[32]byte]int64),
		elsewhere: make(map[[32]byte]int64), elsewhereOf: make(map[int64][32]byte),
		devSeq: make(map[int64]uint64), sessSeq: make(map[string]uint64),
		pending: make(map[int64]bool), loggedOut: make(map[int64]bool),
	}
}

// setDevice records d as homed here (a local change).
func (p *plane) setDevice(id int64, key [32]byte, offset uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	p.devSeq[id] = p.seq
	delete(p.loggedOut, id)
	p.putLocked(id, homeDevice{key: key, offset: offset})
}

// dropDevice records d as no longer a peer here (a local change); with
// loggedOut it stays out until it logs in again.
func (p *plane) dropDevice(id int64, loggedOut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	p.devSeq[id] = p.seq
	delete(p.pending, id)
	if loggedOut {
		p.loggedOut[id] = true
	}
	p.removeLocked(id)
}

// setElsewhereLocked records the pinned key of a device homed on another
// gateway (a zero key: none).
func (p *plane) setElsewhereLocked(id int64, key [32]byte) {
	if old, ok := p.elsewhereOf[id]; ok {
		delete(p.elsewhereOf, id)
		if p.elsewhere[old] == id {
			delete(p.elsewhere, old)
		}
	}
	if key != ([32]byte{}) {
		p.elsewhere[key] = id
		p.elsewhereOf[id] = key
	}
}

func (p *plane) putLocked(id int64, d homeDevice) {
	p.setElsewhereLocked(id, [32]byte{})
	if old, ok := p.byID[id]; ok && p.byKey[old.key] == id {
		delete(p.byKey, old.key)
	}
	p.byID[id] = d
	p.byKey[d.key] = id
}

func (p *plane) removeLocked(id int64) (homeDevice, bool) {
	old, ok := p.byID[id]
	if !ok {
		return homeDevice{}, false
	}
	delete(p.byID, id)
	if p.byKey[old.key] == id {
		delete(p.byKey, old.key)
	}
	return old, true
}

// touchSession records a local change of a session.
func (p *plane) touchSession(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	p.sessSeq[id] = p.seq
}

func (p *plane) snapshot() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seq
}

// forget drops the change records a pass that started at seq0 has made
// irrelevant (after a full pass: every record up to seq0).
func (p *plane) forgetLocked(seq0 uint64) {
	maps.DeleteFunc(p.devSeq, func(_ int64, s uint64) bool { return s <= seq0 })
	maps.DeleteFunc(p.sessSeq, func(_ string, s uint64) bool { return s <= seq0 })
}

func (p *plane) home(id int64) (homeDevice, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.byID[id]
	return d, ok
}

// removal is a device that stopped being a peer here, and why.
type removal struct {
	id     int64
	reason string // "" = moved to another gateway (its stream is ended); else Revoked with this reason
}

// delta is what one pass changes on the tunnel and tells local streams.
type delta struct {
	add     []PeerSpec
	remove  [][32]byte
	events  []deviceEvent
	gone    []int64 // devices whose local Sync stream ends (moved away)
	aclDiff bool
}

type deviceEvent struct {
	device int64
	ev     Event
}

// apply changes the tunnel (removals first: a re-keyed device's new key
// takes its old key's addresses) and publishes the ACL; called with
// order held exclusively. Events are sent by publish, after order is
// released.
func (g *Gateway) applyDelta(ctx context.Context, d *delta) error {
	var errs []error
	if len(d.remove) > 0 {
		if err := g.tun.RemovePeers(ctx, d.remove); err != nil {
			errs = append(errs, fmt.Errorf("removing %d peers: %w", len(d.remove), err))
		}
	}
	if len(d.add) > 0 {
		if err := g.tun.AddPeers(ctx, d.add); err != nil {
			errs = append(errs, fmt.Errorf("adding %d peers: %w", len(d.add), err))
		}
	}
	if d.aclDiff && g.sess.enabled() {
		g.sess.mu.Lock()
		g.sess.publishACLLocked()
		g.sess.mu.Unlock()
	}
	return errors.Join(errs...)
}

func (g *Gateway) publishDelta(d *delta) {
	for _, e := range d.events {
		g.hub.publish(e.device, e.ev)
	}
	for _, id := range d.gone {
		g.hub.drop(id)
	}
}

// retryPending records the home of devices admitted here during a registry
// outage. A device no longer connected here is given up (the registry
// decides where it belongs); one the registry refuses (revoked, unknown)
// too.
func (g *Gateway) retryPending(ctx context.Context) {
	g.plane.mu.Lock()
	ids := slices.Collect(maps.Keys(g.plane.pending))
	g.plane.mu.Unlock()
	for _, id := range ids {
		d, held := g.plane.home(id)
		if held && (g.hub.connected(id) || g.handshookRecently(ctx, d.key)) {
			err := g.homes.SetHome(ctx, id, g.cfg.InstanceID)
			if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrRevoked) {
				g.log.Warn("recording the home of a device admitted during a registry outage failed; retrying", "device_id", id, "err", err)
				continue
			}
			if err == nil {
				g.log.Info("home of a device admitted during a registry outage recorded", "device_id", id)
			}
		}
		g.plane.mu.Lock()
		delete(g.plane.pending, id)
		g.plane.mu.Unlock()
	}
}

// ReconcileFull reads this gateway's whole desired state (HomePeers) and
// makes the in-memory view, the WireGuard peers and the hub ACL match it.
// It returns the number of peers the tunnel had wrong (repairs).
func (g *Gateway) ReconcileFull(ctx context.Context) (repairs int, err error) {
	return g.fullPass(ctx, false)
}

// fullPass is ReconcileFull; the initial pass (Start, an empty tunnel)
// reports no repairs.
func (g *Gateway) fullPass(ctx context.Context, initial bool) (repairs int, err error) {
	defer func() {
		if !initial {
			g.recObs.Reconciled(true, repairs, err)
		}
	}()
	g.retryPending(ctx)
	seq0 := g.plane.snapshot()
	hp, err := g.homes.HomePeers(ctx, g.cfg.InstanceID)
	if err != nil {
		return 0, newErr(ErrUnavailable, err, "reading this gateway's peers from the registry failed")
	}
	var d delta
	var removed []int64
	p := g.plane
	p.order.Lock()
	// Devices.
	want := make(map[int64]homeDevice, len(hp.Devices))
	for _, dev := range hp.Devices {
		if _, err := g.devicePrefixes(dev.Offset); err != nil {
			g.log.Warn("skipping device with an address outside the configured network", "device_id", dev.ID, "err", err)
			continue
		}
		want[dev.ID] = homeDevice{key: dev.Key, offset: dev.Offset}
	}
	p.mu.Lock()
	for id := range p.loggedOut {
		if _, ok := want[id]; !ok {
			delete(p.loggedOut, id) // moved or gone: no longer ours to keep out
		}
		delete(want, id)
	}
	keep := func(id int64) bool { return p.devSeq[id] > seq0 || p.pending[id] }
	for id, cur := range p.byID {
		if keep(id) {
			want[id] = cur
			continue
		}
		if _, ok := want[id]; !ok {
			p.removeLocked(id)
			removed = append(removed, id)
		}
	}
	for id := range want {
		if keep(id) {
			if _, held := p.byID[id]; !held {
				delete(want, id) // dropped here since the read
			}
			continue
		}
		p.putLocked(id, want[id])
	}
	sessKeep := func(id string) bool { return p.sessSeq[id] > seq0 }
	p.forgetLocked(seq0)
	p.mu.Unlock()

	// Sessions.
	if g.sess.enabled() {
		wantS := make(map[string]store.HostedSession, len(hp.Sessions))
		for _, hs := range hp.Sessions {
			if _, ok := want[hs.DeviceID]; ok && hs.DeviceOffset != 0 {
				wantS[hs.ID] = hs
			}
		}
		s := g.sess
		s.mu.Lock()
		for id, os := range s.open {
			if _, ok := wantS[id]; ok || sessKeep(id) {
				continue
			}
			delete(s.open, id)
			d.aclDiff = true
			if _, here := want[os.DeviceID]; here {
				d.events = append(d.events, deviceEvent{os.DeviceID, Event{Kind: EventSessionClosed, SessionID: id, Reason: "closed"}})
			}
		}
		for id, hs := range wantS {
			if _, ok := s.open[id]; ok || sessKeep(id) {
				continue
			}
			os, err := g.buildHosted(hs.Session, hs.DeviceOffset)
			if err != nil {
				g.log.Warn("skipping session that cannot be hosted", "session", id, "err", err)
				continue
			}
			s.open[id] = os
			d.aclDiff = true
			d.events = append(d.events, deviceEvent{os.DeviceID, Event{Kind: EventSessionOpened, SessionID: id, ClientAddr: os.clientAddrs, ExpiresAt: os.ExpiresAt}})
		}
		s.mu.Unlock()
	}

	// The tunnel: compare what it holds with the whole desired set.
	peers := g.desiredPeers()
	actual, err := g.tun.Peers(ctx)
	if err == nil {
		repairs = peerDiff(peers, actual)
		if repairs > 0 {
			err = g.tun.SetPeers(ctx, peers)
		}
	}
	if d.aclDiff && g.sess.enabled() {
		g.sess.mu.Lock()
		g.sess.publishACLLocked()
		g.sess.mu.Unlock()
	}
	p.order.Unlock()
	if repairs > 0 {
		g.log.Warn("reconcile repaired WireGuard peers that differed from the registry", "peers", repairs)
	}
	g.resolveRemovals(ctx, removed, &d)
	g.publishDelta(&d)
	if err != nil {
		return repairs, newErr(ErrUnavailable, err, "applying the registry's peers to WireGuard failed")
	}
	return repairs, nil
}

// resolveRemovals finds out why devices stopped being peers here (one read
// each, up to maxRemovedLookups): revoked or erased ones get Revoked on
// their stream, moved ones have it ended.
func (g *Gateway) resolveRemovals(ctx context.Context, ids []int64, d *delta) {
	for i, id := range ids {
		if i >= maxRemovedLookups {
			d.gone = append(d.gone, ids[i:]...)
			return
		}
		dev, err := g.reg.DeviceByID(ctx, id)
		r := removalOf(dev, err)
		switch {
		case r.reason != "":
			d.events = append(d.events, deviceEvent{id, Event{Kind: EventRevoked, Reason: r.reason}})
		default:
			d.gone = append(d.gone, id)
			if err == nil && dev.KeyPinned && !dev.Revoked {
				g.plane.mu.Lock()
				if _, back := g.plane.byID[id]; !back {
					g.plane.setElsewhereLocked(id, dev.Key)
				}
				g.plane.mu.Unlock()
			}
		}
	}
}

// removalOf says why a device read from the registry is not a peer here.
func removalOf(dev store.Device, err error) removal {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return removal{id: dev.ID, reason: "erased"}
	case err == nil && dev.Revoked:
		return removal{id: dev.ID, reason: "revoked by an operator"}
	default:
		return removal{id: dev.ID}
	}
}

// desiredPeers is the peer set of the in-memory view: every device homed
// here and every hosted session's client. Called with order held.
func (g *Gateway) desiredPeers() []PeerSpec {
	g.plane.mu.Lock()
	peers := make([]PeerSpec, 0, len(g.plane.byID))
	for id, d := range g.plane.byID {
		pfx, err := g.devicePrefixes(d.offset)
		if err != nil {
			g.log.Warn("skipping device with an address outside the configured network", "device_id", id, "err", err)
			continue
		}
		peers = append(peers, PeerSpec{Key: d.key, Allowed: pfx})
	}
	g.plane.mu.Unlock()
	if g.sess.enabled() {
		g.sess.mu.Lock()
		for _, os := range g.sess.open {
			peers = append(peers, PeerSpec{Key: os.ClientKey, Allowed: os.clientAddrs})
		}
		g.sess.mu.Unlock()
	}
	return peers
}

// peerDiff counts the peers that differ between want and have: missing,
// extra, or with other allowed IPs.
func peerDiff(want, have []PeerSpec) int {
	h := make(map[[32]byte][]netip.Prefix, len(have))
	for _, p := range have {
		h[p.Key] = p.Allowed
	}
	n := 0
	for _, p := range want {
		a, ok := h[p.Key]
		switch {
		case !ok:
			n++
		case !samePrefixSet(a, p.Allowed):
			n++
		}
		delete(h, p.Key)
	}
	return n + len(h)
}

func samePrefixSet(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// ReconcileChanges applies one batch of change notifications: each device
// or session that concerns this gateway is read once and brought up to
// date; a resync, or a batch needing more than maxIncrementalReads reads,
// is a full pass.
func (g *Gateway) ReconcileChanges(ctx context.Context, changes []Change) (err error) {
	devs, sessions, full := g.relevant(changes)
	if full || len(devs)+len(sessions) > maxIncrementalReads {
		_, err := g.fullPass(ctx, false)
		return err
	}
	if len(devs)+len(sessions) == 0 {
		return nil
	}
	defer func() { g.recObs.Reconciled(false, 0, err) }()
	seq0 := g.plane.snapshot()
	type devRead struct {
		dev store.Device
		err error
	}
	reads := make(map[int64]devRead, len(devs))
	for _, id := range devs {
		dev, err := g.reg.DeviceByID(ctx, id)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return newErr(ErrUnavailable, err, "reading a changed device failed")
		}
		reads[id] = devRead{dev, err}
	}
	sreads := make(map[string]store.Session, len(sessions))
	for _, id := range sessions {
		ss, err := g.homes.SessionByID(ctx, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			ss = store.Session{ID: id}
		case err != nil:
			return newErr(ErrUnavailable, err, "reading a changed session failed")
		}
		sreads[id] = ss
	}

	var d delta
	p := g.plane
	p.order.Lock()
	p.mu.Lock()
	var leaving []int64 // devices no longer homed here: their hosted sessions go too
	for id, r := range reads {
		if p.devSeq[id] > seq0 {
			continue // changed here since the read: that change's own notification follows
		}
		dev := r.dev
		wantHere := r.err == nil && dev.Home == g.cfg.InstanceID && dev.KeyPinned && dev.Offset != 0 && !dev.Revoked && !p.loggedOut[id]
		if _, err := g.devicePrefixes(dev.Offset); wantHere && err != nil {
			wantHere = false
		}
		cur, held := p.byID[id]
		switch {
		case wantHere && held && cur.key == dev.Key && cur.offset == dev.Offset:
		case wantHere:
			if held && cur.key != dev.Key {
				d.remove = append(d.remove, cur.key)
			}
			pfx, _ := g.devicePrefixes(dev.Offset)
			d.add = append(d.add, PeerSpec{Key: dev.Key, Allowed: pfx})
			p.putLocked(id, homeDevice{key: dev.Key, offset: dev.Offset})
		case held && p.pending[id] && r.err == nil && !dev.Revoked && dev.KeyPinned && dev.Key == cur.key:
			// Admitted here during an outage: stays until its home is recorded.
		case held:
			p.removeLocked(id)
			delete(p.pending, id)
			d.remove = append(d.remove, cur.key)
			leaving = append(leaving, id)
			rm := removalOf(dev, r.err)
			if rm.reason != "" {
				d.events = append(d.events, deviceEvent{id, Event{Kind: EventRevoked, Reason: rm.reason}})
			} else {
				d.gone = append(d.gone, id)
			}
			if r.err == nil && dev.KeyPinned && !dev.Revoked {
				p.setElsewhereLocked(id, dev.Key)
			}
		case r.err != nil || dev.Revoked || !dev.KeyPinned:
			p.setElsewhereLocked(id, [32]byte{})
		}
	}
	held := func(id int64) (homeDevice, bool) { h, ok := p.byID[id]; return h, ok }
	sessKeep := func(id string) bool { return p.sessSeq[id] > seq0 }
	// Sessions are decided with the devices' new state.
	type sessDecision struct {
		ss     store.Session
		device homeDevice
		host   bool
	}
	var decisions []sessDecision
	for id, ss := range sreads {
		if sessKeep(id) {
			continue
		}
		hd, ok := held(ss.DeviceID)
		decisions = append(decisions, sessDecision{ss: ss, device: hd, host: ok && ss.DeviceID != 0 && ss.ClosedAt.IsZero()})
	}
	p.mu.Unlock()

	if g.sess.enabled() {
		s := g.sess
		s.mu.Lock()
		for _, id := range leaving {
			for sid, os := range s.open {
				if os.DeviceID == id {
					delete(s.open, sid)
					d.remove = append(d.remove, os.ClientKey)
					d.aclDiff = true
				}
			}
		}
		for _, sd := range decisions {
			os, open := s.open[sd.ss.ID]
			switch {
			case sd.host && !open:
				nos, err := g.buildHosted(sd.ss, sd.device.offset)
				if err != nil {
					g.log.Warn("skipping session that cannot be hosted", "session", sd.ss.ID, "err", err)
					continue
				}
				s.open[sd.ss.ID] = nos
				d.add = append(d.add, PeerSpec{Key: nos.ClientKey, Allowed: nos.clientAddrs})
				d.aclDiff = true
				d.events = append(d.events, deviceEvent{nos.DeviceID, Event{Kind: EventSessionOpened, SessionID: nos.ID, ClientAddr: nos.clientAddrs, ExpiresAt: nos.ExpiresAt}})
			case !sd.host && open:
				delete(s.open, sd.ss.ID)
				d.remove = append(d.remove, os.ClientKey)
				d.aclDiff = true
				d.events = append(d.events, deviceEvent{os.DeviceID, Event{Kind: EventSessionClosed, SessionID: os.ID, Reason: "closed"}})
			}
		}
		s.mu.Unlock()
	}
	err = g.applyDelta(ctx, &d)
	if err != nil {
		p.mu.Lock()
		p.needFull = true
		p.mu.Unlock()
	}
	p.order.Unlock()
	g.publishDelta(&d)
	if err != nil {
		return newErr(ErrUnavailable, err, "applying changes to WireGuard failed")
	}
	return nil
}

// relevant picks the devices and sessions of a batch this gateway must read:
// a device homed here (or said to be homed here now), a session of such a
// device or hosted here. A device that moved to another gateway is read
// too (one read tells a move from a revocation). full: a resync was asked
// for, or an earlier pass failed.
func (g *Gateway) relevant(changes []Change) (devs []int64, sessions []string, full bool) {
	p := g.plane
	p.mu.Lock()
	full = p.needFull
	p.needFull = false
	seenD := map[int64]bool{}
	seenS := map[string]bool{}
	for _, c := range changes {
		switch c.Kind {
		case ChangeResync:
			full = true
		case ChangeDevice:
			_, held := p.byID[c.DeviceID]
			if (held || c.Gateway == g.cfg.InstanceID) && !seenD[c.DeviceID] {
				seenD[c.DeviceID] = true
				devs = append(devs, c.DeviceID)
			}
		case ChangeSession:
			_, held := p.byID[c.DeviceID]
			if held && !seenS[c.SessionID] {
				seenS[c.SessionID] = true
				sessions = append(sessions, c.SessionID)
			}
		}
	}
	p.mu.Unlock()
	if g.sess.enabled() {
		g.sess.mu.Lock()
		for _, c := range changes {
			if c.Kind == ChangeSession && !seenS[c.SessionID] {
				if _, ok := g.sess.open[c.SessionID]; ok {
					seenS[c.SessionID] = true
					sessions = append(sessions, c.SessionID)
				}
			}
		}
		g.sess.mu.Unlock()
	} else {
		sessions = nil
	}
	return devs, sessions, full
}

// RunReconciler keeps this gateway's data plane equal to the registry
// until ctx ends: it follows the change feed (batching what arrives
// together), runs a full pass after (re)subscribing, on every resync and
// every interval. Without a feed (nil) it runs the full passes alone.
func (g *Gateway) RunReconciler(ctx context.Context, feed ChangeFeed, interval time.Duration) error {
	if interval <= 0 {
		interval = 30 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	if feed == nil {
		g.follow(ctx, nil, t.C)
		return nil
	}
	for ctx.Err() == nil {
		ch, err := feed.Changes(ctx)
		if err != nil {
			g.log.Warn("subscribing to registry changes failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(resubscribeWait):
			}
			continue
		}
		g.runFull(ctx)
		g.follow(ctx, ch, t.C)
	}
	return nil
}

func (g *Gateway) runFull(ctx context.Context) {
	if _, err := g.fullPass(ctx, false); err != nil && ctx.Err() == nil {
		g.log.Warn("full reconcile failed; retrying at the next interval", "err", err)
	}
}

// follow handles changes until ch closes or ctx ends.
func (g *Gateway) follow(ctx context.Context, ch <-chan Change, tick <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			g.runFull(ctx)
		case c, ok := <-ch:
			if !ok {
				return
			}
			batch, open := collect(ctx, ch, c)
			if err := g.ReconcileChanges(ctx, batch); err != nil && ctx.Err() == nil {
				g.log.Warn("applying registry changes failed; a full reconcile follows", "changes", len(batch), "err", err)
				g.plane.mu.Lock()
				g.plane.needFull = true
				g.plane.mu.Unlock()
			}
			if !open {
				return
			}
		}
	}
}

// collect gathers the changes arriving within changeBatchWait of first.
func collect(ctx context.Context, ch <-chan Change, first Change) (batch []Change, open bool) {
	batch = append(batch, first)
	timer := time.NewTimer(changeBatchWait)
	defer timer.Stop()
	for len(batch) < changeBatchMax {
		select {
		case c, ok := <-ch:
			if !ok {
				return batch, false
			}
			batch = append(batch, c)
		case <-timer.C:
			return batch, true
		case <-ctx.Done():
			return batch, true
		}
	}
	return batch, true
}

// fleetView caches the registry's gateways table for a moment: the home
// gateway of a device is named in session grants, and its heartbeat tells
// whether a device homed there counts as online.
type fleetView struct {
	homes Homes
	now   func() time.Time

	mu    sync.Mutex
	at    time.Time
	beats map[string]store.Gateway
}

// fleetViewTTL is how long a read of the gateways table is reused.
const fleetViewTTL = 2 * time.Second

// refresh re-reads the gateways table when the cached copy is older than
// fleetViewTTL (or force).
func (f *fleetView) refresh(ctx context.Context, force ...bool) {
	f.mu.Lock()
	fresh := !f.at.IsZero() && f.now().Sub(f.at) < fleetViewTTL && len(force) == 0
	f.mu.Unlock()
	if fresh {
		return
	}
	gws, err := f.homes.Gateways(ctx)
	if err != nil {
		return // the cached copy stays
	}
	beats := make(map[string]store.Gateway, len(gws))
	for _, g := range gws {
		beats[g.InstanceID] = g
	}
	f.mu.Lock()
	f.at, f.beats = f.now(), beats
	f.mu.Unlock()
}

// homeAlive reports whether home, another gateway than self, heartbeat
// within stale (from the cached table).
func (f *fleetView) homeAlive(home, self string, stale time.Duration) bool {
	if home == "" || home == self {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	g, ok := f.beats[home]
	return ok && f.now().Sub(g.HeartbeatAt) < stale
}

// gateway returns home's row, reading the table again if it is not cached.
func (f *fleetView) gateway(ctx context.Context, home string) (store.Gateway, bool) {
	f.refresh(ctx)
	f.mu.Lock()
	g, ok := f.beats[home]
	f.mu.Unlock()
	if ok {
		return g, true
	}
	f.refresh(ctx, true)
	f.mu.Lock()
	defer f.mu.Unlock()
	g, ok = f.beats[home]
	return g, ok
}
