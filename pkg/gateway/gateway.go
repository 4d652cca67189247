// Package gateway is the domain: device admission, the allow-list, and (with
// sessions.go) accounts, bindings and remote-control sessions. It declares the
// small interfaces it consumes; pkg/store, pkg/identity, pkg/connlog and the
// tunnel satisfy them and pkg/daemon wires them together.
package gateway

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/identity"
	"github.com/planetxlabs/dasset-gateway/pkg/ipam"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// Registry is the part of the store the gateway uses.
type Registry interface {
	EnrollDevices(ctx context.Context, batch []store.Enrollment) (store.EnrollResult, error)
	DeviceByIndex(ctx context.Context, idx privacy.BlindIndex) (store.Device, error)
	DeviceByID(ctx context.Context, id int64) (store.Device, error)
	ListDevices(ctx context.Context) ([]store.Device, error)
	DevicesAfter(ctx context.Context, afterID int64, limit int) ([]store.Device, error)
	CountDevices(ctx context.Context) (total, revoked int, err error)
	AdmittedDevices(ctx context.Context) ([]store.Device, error)
	Admit(ctx context.Context, a store.Admission) (store.Device, error)
	RevokeDevice(ctx context.Context, id int64) error
	ResetDeviceKey(ctx context.Context, id int64) error
	DeviceByToken(ctx context.Context, hash [32]byte, now time.Time) (store.Device, error)
	DeleteDeviceTokens(ctx context.Context, deviceID int64) error
	ReserveKey(ctx context.Context, key store.Key, owner store.KeyOwner) error
}

// DeviceVerifier checks a device's credentials against the allow-list,
// throttling attempts by (serial number, source prefix) and by source.
type DeviceVerifier interface {
	VerifyDevice(ctx context.Context, a identity.DeviceAttempt) (store.Device, error)
}

// AccountVerifier checks client passwords (throttled by account and source,
// argon2id in a bounded pool) and hashes new ones in the same pool.
type AccountVerifier interface {
	VerifyAccount(ctx context.Context, accounts identity.AccountStore, name string, password []byte, source netip.Addr) (store.Account, error)
	VerifyPassword(ctx context.Context, a store.Account, password []byte, source netip.Addr) error
	HashPassword(ctx context.Context, password []byte) (string, error)
}

// Keys blinds and seals personal data.
type Keys interface {
	BlindIndex(privacy.SerialNumber) privacy.BlindIndex
	Verifier(privacy.SerialNumber, privacy.HardwareID) privacy.Verifier
	Seal(plaintext, aad []byte) []byte
	Open(sealed, aad []byte) ([]byte, error)
}

// Tunnel is the WireGuard data plane as the gateway sees it.
type Tunnel interface {
	// CheckKey refuses keys that can never be a peer (all-zero, low order,
	// the gateway's own).
	CheckKey(key [32]byte) error
	AddPeer(ctx context.Context, key [32]byte, allowed []netip.Prefix) error
	AddPeers(ctx context.Context, peers []PeerSpec) error
	RemovePeer(ctx context.Context, key [32]byte) error
	RemovePeers(ctx context.Context, keys [][32]byte) error
	// Peers reads the peers the WireGuard device holds now (not a cached
	// view).
	Peers(ctx context.Context) ([]PeerSpec, error)
	// SetPeers makes the device's peers exactly peers, changing only what
	// differs.
	SetPeers(ctx context.Context, peers []PeerSpec) error
	// LastHandshakes returns the last handshake time per peer key, from a
	// cached view of the device.
	LastHandshakes(ctx context.Context) (map[[32]byte]time.Time, error)
	// LastHandshake returns one peer's last handshake from the same cached
	// view (zero: never, or not a peer), without a map of every peer.
	LastHandshake(ctx context.Context, key [32]byte) (time.Time, error)
	PublicKey() [32]byte
}

// PeerSpec is a peer to add.
type PeerSpec struct {
	Key     [32]byte
	Allowed []netip.Prefix
}

// ConnLog records connection-log events; it never blocks a login.
type ConnLog interface {
	Record(e ConnEvent)
}

// ConnEvent is one connection-log event before it is pseudonymised.
type ConnEvent struct {
	At      time.Time
	Event   string
	Outcome Outcome
	Index   privacy.BlindIndex // subject; zero when unknown (invalid input)
	Source  privacy.Addr
}

// Observer receives login measurements (metrics).
type Observer interface {
	Login(outcome string, d time.Duration)
	AdmissionQueue(depth int)
	AdmissionRejected()
}

// Config is what the gateway needs from the daemon's configuration.
type Config struct {
	Rekey         bool
	TokenTTL      time.Duration
	IdleTimeout   time.Duration
	Keepalive     time.Duration
	MTU           int
	Endpoint      string // host:port; empty = the address the gRPC connection reached
	ListenPort    int
	MaxConcurrent int // logins admitted at once
	MaxQueued     int // logins waiting for a slot; beyond it: rate limited
	Now           func() time.Time
	// InstanceID is the gateway's stable id, its row in the registry's
	// gateways table: the home it records for the devices it admits.
	InstanceID string
	// RunID identifies this run of the gateway (Sync keepalives carry it,
	// so an agent notices a restart and forces a handshake).
	RunID string
	// HomeStale is how old the heartbeat of a device's home gateway may be
	// for the device to count as online from another gateway (0: 30s).
	HomeStale time.Duration
	// Sole says no other gateway can share the registry (an embedded
	// SQLite file): at Start every admitted device is made this gateway's,
	// whatever home it had (a restored backup or a new data directory
	// gives the gateway a new instance id).
	Sole           bool
	SessionOptions SessionOptions
	// Writable reports whether the registry can be written (nil: always).
	// While it cannot, admissions that would need a write are refused with
	// ErrUnavailable; admitted devices back with their pinned key still log
	// in (they need no write).
	Writable func() bool
}

// Gateway is the domain service.
type Gateway struct {
	cfg      Config
	reg      Registry
	verifier DeviceVerifier
	pw       AccountVerifier
	binds    identity.Throttle
	codes    identity.Throttle
	keys     Keys
	plan     *ipam.Allocator
	tun      Tunnel
	connlog  ConnLog
	obs      Observer
	log      *slog.Logger

	// Admission slots and queue. A login that carries the pinned key of an
	// admitted device (an in-memory lookup, before any expensive work) has
	// lanes of its own, so strangers filling the open lanes from many
	// sources cannot keep a device that proves itself out; whoever presents
	// a pinned key with the wrong hardware id is still slowed per (serial,
	// source prefix) by the verifier.
	slots, pinnedSlots   chan struct{}
	queued, pinnedQueued chan struct{}

	hub *hub

	sess *sessions
	subj *subjects

	// plane holds the devices homed here (their pinned keys, so online
	// counts and admission lanes need no store read) and orders changes of
	// the data plane (reconcile.go).
	plane  *plane
	homes  Homes
	recObs ReconcileObserver
	fleet  *fleetView

	memTok *memTokens // device tokens of re-logins that wrote nothing
}

// Deps are the gateway's collaborators.
type Deps struct {
	Registry Registry
	Sessions SessionRegistry
	Verifier DeviceVerifier
	// Passwords checks client passwords; nil: Verifier, when it is also an
	// AccountVerifier.
	Passwords AccountVerifier
	Keys      Keys
	Accounts  AccountKeys
	Plan      *ipam.Allocator
	Tunnel    Tunnel
	ACL       ACL
	// Homes says which devices and sessions are this gateway's (required).
	Homes Homes
	// Reconciles observes reconcile passes (optional).
	Reconciles ReconcileObserver
	ConnLog    ConnLog
	Observer   Observer
	Logger     *slog.Logger

	// Binding limits (optional): BindDevice by (account, source prefix),
	// source and globally; CreateBindingCode by device and source.
	BindThrottle identity.Throttle
	CodeThrottle identity.Throttle

	// Subject rights (optional): export and erasure.
	Subjects   SubjectStore
	Pseudonyms PseudonymKeys
	Ledger     ErasureLedger
}

// New builds a Gateway.
func New(cfg Config, d Deps) (*Gateway, error) {
	if d.Registry == nil || d.Verifier == nil || d.Keys == nil || d.Plan == nil || d.Tunnel == nil || d.Homes == nil {
		return nil, errors.New("gateway: registry, homes, verifier, keys, address plan and tunnel are required")
	}
	if cfg.InstanceID == "" {
		return nil, errors.New("gateway: an instance id is required")
	}
	if cfg.HomeStale <= 0 {
		cfg.HomeStale = 30 * time.Second
	}
	if d.Reconciles == nil {
		d.Reconciles = nopReconcileObserver{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 256
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = 16 * cfg.MaxConcurrent
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = 30 * 24 * time.Hour
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 3 * time.Minute
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.ConnLog == nil {
		d.ConnLog = nopConnLog{}
	}
	if d.Observer == nil {
		d.Observer = nopObserver{}
	}
	g := &Gateway{
		cfg: cfg, reg: d.Registry, verifier: d.Verifier, keys: d.Keys, plan: d.Plan, tun: d.Tunnel,
		connlog: d.ConnLog, obs: d.Observer, log: d.Logger,
		slots:        make(chan struct{}, cfg.MaxConcurrent),
		queued:       make(chan struct{}, cfg.MaxQueued),
		pinnedSlots:  make(chan struct{}, cfg.MaxConcurrent),
		pinnedQueued: make(chan struct{}, cfg.MaxQueued),
		hub:          newHub(),
		plane:        newPlane(),
		homes:        d.Homes,
		recObs:       d.Reconciles,
		memTok:       newMemTokens(),
	}
	g.fleet = &fleetView{homes: d.Homes, now: cfg.Now}
	g.pw = d.Passwords
	g.binds, g.codes = d.BindThrottle, d.CodeThrottle
	if g.pw == nil {
		g.pw, _ = d.Verifier.(AccountVerifier)
	}
	g.sess = newSessions(g, d.Sessions, d.Accounts, d.ACL, cfg.SessionOptions)
	if d.Subjects != nil && d.Pseudonyms != nil && d.Ledger != nil {
		g.subj = &subjects{st: d.Subjects, keys: d.Pseudonyms, ledger: d.Ledger}
	}
	return g, nil
}

type nopConnLog struct{}

func (nopConnLog) Record(ConnEvent) {}

type nopObserver struct{}

func (nopObserver) Login(string, time.Duration) {}
func (nopObserver) AdmissionQueue(int)          {}
func (nopObserver) AdmissionRejected()          {}

// Start reserves the gateway's own key, makes this gateway the home of
// admitted devices that have none yet (a registry written before gateways
// recorded homes; on a sole gateway, every admitted device), and adds the peers of the devices homed here and of the
// sessions they have, from the store, in one batch, before anything is
// served. It returns the number of devices homed here.
func (g *Gateway) Start(ctx context.Context) (int, error) {
	if err := g.reg.ReserveKey(ctx, g.tun.PublicKey(), store.OwnerGateway); err != nil {
		return 0, fmt.Errorf("gateway: reserve own WireGuard key: %w", err)
	}
	devs, err := g.reg.AdmittedDevices(ctx)
	if err != nil {
		return 0, fmt.Errorf("gateway: load admitted devices: %w", err)
	}
	adopted := 0
	for _, d := range devs {
		if d.Home == g.cfg.InstanceID || (d.Home != "" && !g.cfg.Sole) {
			continue
		}
		if err := g.homes.SetHome(ctx, d.ID, g.cfg.InstanceID); err != nil && !errors.Is(err, store.ErrRevoked) && !errors.Is(err, store.ErrNotFound) {
			return 0, fmt.Errorf("gateway: recording the home of device %d: %w", d.ID, err)
		}
		adopted++
	}
	g.plane.mu.Lock()
	for _, d := range devs {
		if d.KeyPinned && !d.Revoked && d.Home != "" && d.Home != g.cfg.InstanceID && !g.cfg.Sole {
			g.plane.setElsewhereLocked(d.ID, d.Key)
		}
	}
	g.plane.mu.Unlock()
	if adopted > 0 {
		g.log.Info("admitted devices without a home gateway (or, on a sole gateway, with another) now homed here", "devices", adopted)
	}
	if _, err := g.fullPass(ctx, true); err != nil {
		return 0, fmt.Errorf("gateway: restore peers: %w", err)
	}
	return g.AdmittedCount(), nil
}

func (g *Gateway) devicePrefixes(offset uint32) ([]netip.Prefix, error) {
	return g.plan.DevicePrefixes(offset)
}

// LoginRequest is a device login, already parsed into typed values.
type LoginRequest struct {
	Serial   privacy.SerialNumber
	Hardware privacy.HardwareID
	Key      [32]byte
	Source   privacy.Addr   // the device's source address (memory only)
	Local    netip.AddrPort // the gateway address the gRPC connection reached
}

// Admission is what a device gets on login.
type Admission struct {
	Addresses    []netip.Prefix
	GatewayKey   [32]byte
	Endpoint     string
	AllowedIPs   []netip.Prefix
	Keepalive    time.Duration
	MTU          int
	Token        string
	TokenExpires time.Time
	Outcome      Outcome
}

// Admit verifies a device and adds it as a WireGuard peer.
func (g *Gateway) Admit(ctx context.Context, req LoginRequest) (adm Admission, err error) {
	start := g.cfg.Now()
	var idx privacy.BlindIndex
	outcome := OutcomeOK
	defer func() {
		if err != nil {
			outcome = outcomeOf(err)
		}
		g.obs.Login(string(outcome), g.cfg.Now().Sub(start))
		g.connlog.Record(ConnEvent{At: start, Event: EventLogin, Outcome: outcome, Index: idx, Source: req.Source})
		if err != nil {
			g.log.Info("device login refused", "outcome", string(outcome), "source", req.Source, "reason", err)
		} else {
			g.log.Info("device login", "outcome", string(outcome), "source", req.Source, "addresses", adm.Addresses)
		}
	}()

	release, err := g.acquire(ctx, g.pinnedKey(req.Key))
	if err != nil {
		return Admission{}, err
	}
	defer release()

	if err := g.tun.CheckKey(req.Key); err != nil {
		return Admission{}, newErr(ErrInvalid, err, "public_key: %v", err)
	}
	idx = g.keys.BlindIndex(req.Serial)
	dev, err := g.verifier.VerifyDevice(ctx, identity.DeviceAttempt{
		Serial: req.Serial, Hardware: req.Hardware, Key: req.Key, Source: req.Source.Reveal(),
	})
	var te *identity.ThrottledError
	switch {
	case errors.As(err, &te):
		// The same answer as an unknown serial or a wrong hardware id, with
		// a retry hint: a throttled caller learns nothing about the serial.
		return Admission{}, throttled(err, te.RetryAfter, msgDeviceRefused)
	case errors.Is(err, identity.ErrRevoked):
		return Admission{}, newErr(ErrPermission, err, "device revoked")
	case errors.Is(err, identity.ErrUnauthenticated):
		return Admission{}, newErr(ErrUnauthenticated, err, msgDeviceRefused)
	case err != nil:
		return Admission{}, newErr(ErrUnavailable, err, "verifying device failed")
	}
	replace, err := identity.CheckKey(dev, req.Key, g.cfg.Rekey)
	if err != nil {
		return Admission{}, newErr(ErrPermission, err, "public_key: another key is pinned for this device; an operator must reset it")
	}
	token, hash, err := identity.NewToken()
	if err != nil {
		return Admission{}, newErr(ErrUnavailable, err, "making device token failed")
	}
	first, last := g.plan.DeviceRange()
	expires := start.Add(g.cfg.TokenTTL)
	oldKey, hadKey := dev.Key, dev.KeyPinned
	day := start.UTC().Format(time.DateOnly)
	// An admitted device back with its pinned key: nothing to store but the
	// token (and the day, once a day), so the token stays in memory and the
	// login writes nothing; when the day's write fails (full or read-only
	// disk), the device is admitted all the same.
	admitted := !replace && dev.KeyPinned && dev.Key == store.Key(req.Key) && dev.Offset != 0 && !dev.Revoked
	memOnly := admitted && dev.LastLoginDay == day // the token is all there is to store
	// moved: the device's home was another gateway; its peer and sessions
	// come here, the old home drops them. A login that writes nothing else
	// records the new home alone.
	moved := dev.Home != "" && dev.Home != g.cfg.InstanceID
	pending := false // admitted here, home not recorded (registry unavailable)
	if memOnly && dev.Home != g.cfg.InstanceID {
		err = errors.New("the registry cannot be written now")
		if g.cfg.Writable == nil || g.cfg.Writable() {
			err = g.homes.SetHome(ctx, dev.ID, g.cfg.InstanceID)
		}
		switch {
		case err == nil:
			dev.Home = g.cfg.InstanceID
		case errors.Is(err, store.ErrRevoked):
			return Admission{}, newErr(ErrPermission, err, "device revoked")
		case errors.Is(err, store.ErrNotFound) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
			return Admission{}, newErr(ErrUnavailable, err, "recording the device's gateway failed")
		default:
			g.log.Warn("registry not writable: admitting a known device with its pinned key here without recording its home; retried in the background", "device_id", dev.ID, "err", err)
			pending, err = true, nil
		}
	}
	if !memOnly {
		if !admitted && g.cfg.Writable != nil && !g.cfg.Writable() {
			return Admission{}, newErr(ErrUnavailable, nil, "the registry cannot be written now (disk full or read-only); new admissions resume when it can")
		}
		var stored store.Device
		stored, err = g.reg.Admit(ctx, store.Admission{
			DeviceID: dev.ID, Key: req.Key, ReplaceKey: replace, First: first, Last: last,
			Day: day, TokenHash: hash, TokenExpires: expires, Gateway: g.cfg.InstanceID,
		})
		switch {
		case err == nil:
			dev = stored
		case admitted && isStorageFault(err):
			g.log.Warn("registry not writable: admitting a known device with its pinned key without storing its login", "device_id", dev.ID, "err", err)
			memOnly, err = true, nil
			pending = dev.Home != g.cfg.InstanceID
		}
	}
	if memOnly {
		g.memTok.put(dev.ID, dev.Key, hash, expires)
	}
	switch {
	case errors.Is(err, store.ErrKeyInUse):
		return Admission{}, newErr(ErrConflict, err, "public_key: already in use by another peer")
	case errors.Is(err, store.ErrKeyPinned):
		return Admission{}, newErr(ErrPermission, err, "public_key: another key is pinned for this device")
	case errors.Is(err, store.ErrExhausted):
		return Admission{}, newErr(ErrExhausted, err, "no free virtual address in the device network")
	case errors.Is(err, store.ErrRevoked):
		return Admission{}, newErr(ErrPermission, err, "device revoked")
	case err != nil:
		return Admission{}, newErr(ErrUnavailable, err, "storing admission failed")
	}
	pfx, err := g.devicePrefixes(dev.Offset)
	if err != nil {
		return Admission{}, newErr(ErrUnavailable, err, "device address outside the configured network")
	}
	if err := g.addHomePeer(ctx, dev.ID, req.Key, dev.Offset, pfx, replace && hadKey && oldKey != store.Key(req.Key), oldKey, pending); err != nil {
		return Admission{}, err
	}
	if replace && hadKey && oldKey != store.Key(req.Key) {
		outcome = OutcomeRekeyed
	}
	if moved {
		g.adoptSessions(ctx, dev.ID, dev.Offset)
	}
	return Admission{
		Addresses:    pfx,
		GatewayKey:   g.tun.PublicKey(),
		Endpoint:     g.endpoint(req.Local),
		AllowedIPs:   g.plan.Network(),
		Keepalive:    g.cfg.Keepalive,
		MTU:          g.cfg.MTU,
		Token:        token,
		TokenExpires: expires,
		Outcome:      outcome,
	}, nil
}

// acquire takes an admission slot: a bounded number of logins run at once
// and a bounded number wait; beyond that the login is refused at once.
// pinned logins (see pinnedKey) take their own lanes.
func (g *Gateway) acquire(ctx context.Context, pinned bool) (func(), error) {
	slots, queued := g.slots, g.queued
	if pinned {
		slots, queued = g.pinnedSlots, g.pinnedQueued
	}
	select {
	case slots <- struct{}{}:
		return func() { <-slots }, nil
	default:
	}
	select {
	case queued <- struct{}{}:
	default:
		g.obs.AdmissionRejected()
		return nil, busy(nil, "logins")
	}
	g.obs.AdmissionQueue(len(g.queued) + len(g.pinnedQueued))
	defer func() { <-queued; g.obs.AdmissionQueue(len(g.queued) + len(g.pinnedQueued)) }()
	select {
	case slots <- struct{}{}:
		return func() { <-slots }, nil
	case <-ctx.Done():
		return nil, newErr(ErrUnavailable, ctx.Err(), "login cancelled while waiting")
	}
}

// addHomePeer makes a device admitted here a peer (removing its old key's
// peer first on a re-key), in the order of the in-memory state.
func (g *Gateway) addHomePeer(ctx context.Context, id int64, key [32]byte, offset uint32, pfx []netip.Prefix, rekeyed bool, oldKey [32]byte, pending bool) error {
	g.plane.order.RLock()
	defer g.plane.order.RUnlock()
	if rekeyed {
		if err := g.tun.RemovePeer(ctx, oldKey); err != nil {
			return newErr(ErrUnavailable, err, "removing the old peer failed")
		}
	}
	g.plane.setDevice(id, key, offset)
	if pending {
		g.plane.mu.Lock()
		g.plane.pending[id] = true
		g.plane.mu.Unlock()
	}
	if err := g.tun.AddPeer(ctx, key, pfx); err != nil {
		g.plane.dropDevice(id, false)
		return newErr(ErrUnavailable, err, "adding the WireGuard peer failed")
	}
	return nil
}

// dropHomePeer removes a device's peer here (revoked, key reset, logged
// out, erased); a device homed elsewhere has none, and removing it is a
// no-op.
func (g *Gateway) dropHomePeer(ctx context.Context, d store.Device, loggedOut bool) error {
	g.plane.order.RLock()
	defer g.plane.order.RUnlock()
	cur, held := g.plane.home(d.ID)
	g.plane.dropDevice(d.ID, loggedOut)
	var keys [][32]byte
	if d.KeyPinned {
		keys = append(keys, d.Key)
	}
	if held && cur.key != d.Key {
		keys = append(keys, cur.key)
	}
	if err := g.tun.RemovePeers(ctx, keys); err != nil {
		return newErr(ErrUnavailable, err, "removing the WireGuard peer failed")
	}
	return nil
}

// pinnedKey reports whether key is the pinned key of a device homed here,
// or of one homed on another gateway as last seen (a device failing over).
func (g *Gateway) pinnedKey(key [32]byte) bool {
	g.plane.mu.Lock()
	defer g.plane.mu.Unlock()
	_, here := g.plane.byKey[key]
	_, elsewhere := g.plane.elsewhere[key]
	return here || elsewhere
}

func (g *Gateway) endpoint(local netip.AddrPort) string {
	if g.cfg.Endpoint != "" {
		return g.cfg.Endpoint
	}
	if !local.IsValid() {
		return ""
	}
	return netip.AddrPortFrom(local.Addr().Unmap(), uint16(g.cfg.ListenPort)).String()
}

func outcomeOf(err error) Outcome {
	var e *Error
	if errors.As(err, &e) && e.RetryAfter > 0 {
		return OutcomeRateLimited
	}
	switch {
	case errors.Is(err, ErrInvalid):
		return OutcomeInvalid
	case errors.Is(err, ErrRateLimited):
		return OutcomeRateLimited
	default:
		return OutcomeDenied
	}
}

// RecordInvalidLogin counts a login the API edge refused as malformed before
// it reached Admit (the connection log has no subject for it).
func (g *Gateway) RecordInvalidLogin(source privacy.Addr, field string) {
	now := g.cfg.Now()
	g.obs.Login(string(OutcomeInvalid), 0)
	g.connlog.Record(ConnEvent{At: now, Event: EventLogin, Outcome: OutcomeInvalid, Source: source})
	g.log.Info("device login refused", "outcome", string(OutcomeInvalid), "source", source, "field", field)
}

// Enrollment is one device to enroll.
type Enrollment struct {
	Serial   privacy.SerialNumber
	Hardware privacy.HardwareID
}

// EnrollOptions say what the caller may learn and do.
type EnrollOptions struct {
	// Disclose is for the privacy role: a device already enrolled with
	// another hardware id fails the batch (ErrConflict), and so does an
	// erased device unless AfterErasure. Without it every existing device
	// (enrolled with whatever hardware id, or erased) counts as Unchanged and
	// is left as it is: its stored verifier is never even compared, so the
	// answer says nothing about the hardware id sent.
	Disclose bool
	// AfterErasure re-enrolls erased devices (with Disclose only).
	AfterErasure bool
}

// EnrollReport is what an enrolment did, and the devices it found
// existing (their blind indexes, for the audit log).
type EnrollReport struct {
	store.EnrollResult
	Existing []privacy.BlindIndex
}

// Enroll adds devices to the allow-list, all or nothing (see EnrollOptions
// for existing and erased devices).
func (g *Gateway) Enroll(ctx context.Context, batch []Enrollment, opt EnrollOptions) (EnrollReport, error) {
	var rep EnrollReport
	rows := make([]store.Enrollment, len(batch))
	g.computeEnrollments(batch, rows)
	var erased []privacy.BlindIndex
	keep := rows[:0:0]
	for i, row := range rows {
		idx := row.Index
		if g.subj != nil && g.subj.ledger.Contains(idx) {
			rep.Existing = append(rep.Existing, idx)
			switch {
			case !opt.Disclose:
				rep.Unchanged++
				continue
			case !opt.AfterErasure:
				return rep, newErr(ErrPrecondition, nil, "devices[%d]: this device was erased; re-enroll it explicitly with after_erasure", i)
			}
			erased = append(erased, idx)
			keep = append(keep, row)
			continue
		}
		d, err := g.reg.DeviceByIndex(ctx, idx)
		switch {
		case errors.Is(err, store.ErrNotFound):
			keep = append(keep, row)
			continue
		case err != nil:
			return rep, newErr(ErrUnavailable, err, "enrolling failed")
		}
		rep.Existing = append(rep.Existing, idx)
		switch {
		case !opt.Disclose:
			rep.Unchanged++
		case !hmac.Equal(d.Verifier[:], row.Verifier[:]):
			return rep, newErr(ErrConflict, nil, "devices[%d]: already enrolled with another hardware id", i)
		default:
			keep = append(keep, row) // the store counts it as unchanged
		}
	}
	res, err := g.reg.EnrollDevices(ctx, keep)
	if errors.Is(err, store.ErrConflict) {
		if !opt.Disclose {
			// A device of the batch was enrolled by someone else meanwhile,
			// or the batch names one serial number twice.
			return rep, newErr(ErrConflict, nil, "the batch holds a serial number twice, or another enrolment of the same devices ran at the same time; check the batch and re-run it")
		}
		// The store names the batch position ("device 3: ...") and no personal data.
		return rep, newErr(ErrConflict, err, "%s", err.Error())
	}
	if err != nil {
		return rep, newErr(ErrUnavailable, err, "enrolling failed")
	}
	rep.Enrolled += res.Enrolled
	rep.Unchanged += res.Unchanged
	for _, idx := range erased {
		if err := g.subj.ledger.Remove(idx); err != nil {
			return rep, newErr(ErrUnavailable, err, "updating the erasure ledger failed")
		}
	}
	g.log.Info("devices enrolled", "enrolled", rep.Enrolled, "unchanged", rep.Unchanged)
	return rep, nil
}

// computeEnrollments fills rows from batch: blind index, sealed serial and
// verifier. The verifiers (a memory-hard KDF each) are computed on every
// core.
func (g *Gateway) computeEnrollments(batch []Enrollment, rows []store.Enrollment) {
	workers := min(runtime.GOMAXPROCS(0), max(1, len(batch)))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(batch); i += workers {
				e := batch[i]
				idx := g.keys.BlindIndex(e.Serial)
				rows[i] = store.Enrollment{
					Index:        idx,
					SealedSerial: g.keys.Seal([]byte(e.Serial.Reveal()), idx[:]),
					Verifier:     g.keys.Verifier(e.Serial, e.Hardware),
				}
			}
		}()
	}
	wg.Wait()
}

// DeviceView is a device as operators see it.
type DeviceView struct {
	ID           int64
	Serial       privacy.SerialNumber
	Addresses    []netip.Prefix
	KeyPinned    bool
	LastLoginDay string
	Revoked      bool
	Online       bool
}

func (g *Gateway) view(d store.Device, online func(key [32]byte) bool) (DeviceView, error) {
	sn, err := g.openSerial(d)
	if err != nil {
		return DeviceView{}, err
	}
	v := DeviceView{ID: d.ID, Serial: sn, KeyPinned: d.KeyPinned, LastLoginDay: d.LastLoginDay, Revoked: d.Revoked}
	if d.Offset != 0 {
		v.Addresses, _ = g.devicePrefixes(d.Offset)
	}
	v.Online = !d.Revoked && d.KeyPinned && (g.hub.connected(d.ID) || online(d.Key) || g.fleet.homeAlive(d.Home, g.cfg.InstanceID, g.cfg.HomeStale))
	return v, nil
}

func (g *Gateway) openSerial(d store.Device) (privacy.SerialNumber, error) {
	raw, err := g.keys.Open(d.SealedSerial, d.Index[:])
	if err != nil {
		return privacy.SerialNumber{}, newErr(ErrUnavailable, err, "opening a sealed serial number failed (wrong keystore?)")
	}
	return privacy.ParseSerialNumber(string(raw))
}

// handshookRecently reports whether key handshook within the idle timeout.
func (g *Gateway) handshookRecently(ctx context.Context, key [32]byte) bool {
	t, err := g.tun.LastHandshake(ctx, key)
	if err != nil {
		g.log.Warn("reading a WireGuard handshake failed", "err", err)
		return false
	}
	return !t.IsZero() && g.cfg.Now().Sub(t) < g.cfg.IdleTimeout
}

// onlineSet is the set of peer keys that handshook within the idle timeout.
func (g *Gateway) onlineSet(ctx context.Context) map[[32]byte]bool {
	hs, err := g.tun.LastHandshakes(ctx)
	if err != nil {
		g.log.Warn("reading WireGuard handshakes failed", "err", err)
		return nil
	}
	now := g.cfg.Now()
	on := make(map[[32]byte]bool, len(hs))
	for k, t := range hs {
		if !t.IsZero() && now.Sub(t) < g.cfg.IdleTimeout {
			on[k] = true
		}
	}
	return on
}

// AdmittedCount counts the admitted devices homed on this gateway.
func (g *Gateway) AdmittedCount() int {
	g.plane.mu.Lock()
	defer g.plane.mu.Unlock()
	return len(g.plane.byID)
}

// OnlineCount counts admitted devices that are online.
func (g *Gateway) OnlineCount(ctx context.Context) (int, error) {
	on := g.onlineSet(ctx)
	g.plane.mu.Lock()
	defer g.plane.mu.Unlock()
	n := 0
	for k, id := range g.plane.byKey {
		if on[k] || g.hub.connected(id) {
			n++
		}
	}
	return n, nil
}

// Online reports whether a device is reachable: a live Sync stream or a
// handshake within the idle timeout here; for a device homed on another
// gateway, that gateway's heartbeat is fresh (within HomeStale). That
// gateway alone sees the device's stream and handshakes, and it closes a
// session nobody uses when it turns idle.
func (g *Gateway) Online(ctx context.Context, d store.Device) bool {
	if d.Revoked || !d.KeyPinned {
		return false
	}
	if g.hub.connected(d.ID) || g.handshookRecently(ctx, d.Key) {
		return true
	}
	if d.Home != "" && d.Home != g.cfg.InstanceID {
		g.fleet.refresh(ctx)
		return g.fleet.homeAlive(d.Home, g.cfg.InstanceID, g.cfg.HomeStale)
	}
	return false
}

func (g *Gateway) deviceBySerial(ctx context.Context, sn privacy.SerialNumber) (store.Device, error) {
	d, err := g.reg.DeviceByIndex(ctx, g.keys.BlindIndex(sn))
	if errors.Is(err, store.ErrNotFound) {
		return store.Device{}, newErr(ErrNotFound, err, "serial_number: no such device")
	}
	if err != nil {
		return store.Device{}, newErr(ErrUnavailable, err, "looking up device failed")
	}
	return d, nil
}

// Revoke removes a device from the network: its peer, its sessions, its
// tokens; later logins are refused.
func (g *Gateway) Revoke(ctx context.Context, sn privacy.SerialNumber) error {
	d, err := g.deviceBySerial(ctx, sn)
	if err != nil {
		return err
	}
	g.memTok.drop(d.ID)
	if err := g.reg.RevokeDevice(ctx, d.ID); err != nil {
		return newErr(ErrUnavailable, err, "revoking failed")
	}
	if err := g.sess.closeForDevice(ctx, d.ID, "device revoked"); err != nil {
		return err
	}
	if err := g.dropHomePeer(ctx, d, false); err != nil {
		return err
	}
	g.hub.publish(d.ID, Event{Kind: EventRevoked, Reason: "revoked by an operator"})
	g.log.Info("device revoked", "device_id", d.ID)
	return nil
}

// ResetKey unpins a device's key so its next login may pin a new one.
func (g *Gateway) ResetKey(ctx context.Context, sn privacy.SerialNumber) error {
	d, err := g.deviceBySerial(ctx, sn)
	if err != nil {
		return err
	}
	g.memTok.drop(d.ID)
	if err := g.reg.ResetDeviceKey(ctx, d.ID); err != nil {
		return newErr(ErrUnavailable, err, "resetting key failed")
	}
	if err := g.dropHomePeer(ctx, d, false); err != nil {
		return err
	}
	g.log.Info("device key reset", "device_id", d.ID)
	return nil
}

// DeviceByToken authenticates a device bearer token.
func (g *Gateway) DeviceByToken(ctx context.Context, token string) (store.Device, error) {
	h, err := identity.HashToken(token)
	if err != nil {
		return store.Device{}, newErr(ErrUnauthenticated, err, "malformed device token")
	}
	var d store.Device
	if id, key, ok := g.memTok.lookup(h, g.cfg.Now()); ok {
		d, err = g.reg.DeviceByID(ctx, id)
		if err == nil && (!d.KeyPinned || d.Key != key) {
			// Key reset since (here or on another gateway, perhaps with a
			// new key pinned): the token went with the old key.
			err = store.ErrNotFound
		}
	} else {
		d, err = g.reg.DeviceByToken(ctx, h, g.cfg.Now())
		if err == nil && !d.KeyPinned && !d.Revoked {
			// Key reset since: the registry keeps the token until the
			// next admission, but it went with the old key.
			err = store.ErrNotFound
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		return store.Device{}, newErr(ErrUnauthenticated, err, "unknown or expired device token")
	}
	if err != nil {
		return store.Device{}, newErr(ErrUnavailable, err, "checking token failed")
	}
	if d.Revoked {
		return store.Device{}, newErr(ErrPermission, nil, "device revoked")
	}
	return d, nil
}

// Logout removes the device's peer and revokes its tokens.
func (g *Gateway) Logout(ctx context.Context, d store.Device, source privacy.Addr) error {
	g.memTok.drop(d.ID)
	if err := g.reg.DeleteDeviceTokens(ctx, d.ID); err != nil {
		return newErr(ErrUnavailable, err, "revoking tokens failed")
	}
	if err := g.sess.closeForDevice(ctx, d.ID, "device logged out"); err != nil {
		return err
	}
	if err := g.dropHomePeer(ctx, d, true); err != nil {
		return err
	}
	g.connlog.Record(ConnEvent{At: g.cfg.Now(), Event: EventLogout, Outcome: OutcomeOK, Index: d.Index, Source: source})
	g.hub.publish(d.ID, Event{Kind: EventRevoked, Reason: "logged out"})
	return nil
}

// Subscribe registers a Sync stream for a device: one live stream per
// device, so a new one replaces the old. The returned channel gets the
// device's events; replaced is closed when a newer stream of the same device
// took over; cancel unregisters it.
func (g *Gateway) Subscribe(d store.Device) (events <-chan Event, replaced <-chan struct{}, cancel func()) {
	return g.hub.subscribe(d.ID)
}

// Now is the gateway's clock.
func (g *Gateway) Now() time.Time { return g.cfg.Now() }

// InstanceID is the gateway's stable instance id (its row in the gateways
// table).
func (g *Gateway) InstanceID() string { return g.cfg.InstanceID }

// RunID identifies this run of the gateway (Sync keepalives carry it).
func (g *Gateway) RunID() string { return g.cfg.RunID }

// EventKind says what happened.
type EventKind int

// Event kinds.
const (
	EventSessionOpened EventKind = iota + 1
	EventSessionClosed
	EventRevoked
)

// Event is sent to a device's Sync stream.
type Event struct {
	Kind       EventKind
	SessionID  string
	ClientAddr []netip.Prefix
	ExpiresAt  time.Time
	Reason     string
}

// hub fans events out to the Sync streams of devices: at most one stream
// per device (a token cannot hold thousands of streams open).
type hub struct {
	mu   sync.Mutex
	subs map[int64]*subscription
}

type subscription struct {
	ch       chan Event
	replaced chan struct{}
}

func newHub() *hub { return &hub{subs: make(map[int64]*subscription)} }

func (h *hub) subscribe(id int64) (<-chan Event, <-chan struct{}, func()) {
	s := &subscription{ch: make(chan Event, 16), replaced: make(chan struct{})}
	h.mu.Lock()
	if old := h.subs[id]; old != nil {
		close(old.replaced)
	}
	h.subs[id] = s
	h.mu.Unlock()
	return s.ch, s.replaced, func() {
		h.mu.Lock()
		if h.subs[id] == s {
			delete(h.subs, id)
		}
		h.mu.Unlock()
	}
}

// publish never blocks: when the stream's buffer of 16 events is full the
// event is dropped (a device that slow reconnects, and its agent forces a
// fresh handshake on every reconnect).
func (h *hub) publish(id int64, e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.subs[id]; s != nil {
		select {
		case s.ch <- e:
		default:
		}
	}
}

// drop ends a device's stream here (the device moved to another gateway,
// where its newer stream is): as if a newer stream had replaced it.
func (h *hub) drop(id int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.subs[id]; s != nil {
		close(s.replaced)
		delete(h.subs, id)
	}
}

func (h *hub) connected(id int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.subs[id] != nil
}
