package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/identity"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// SessionRegistry is the part of the store that holds accounts, bindings and
// sessions.
type SessionRegistry interface {
	CreateAccount(ctx context.Context, a store.Account) (store.Account, error)
	AccountByName(ctx context.Context, nameIndex privacy.BlindIndex) (store.Account, error)
	DeleteAccount(ctx context.Context, id int64) (map[string]int64, error)
	CreateAccessToken(ctx context.Context, hash [32]byte, accountID int64, expires time.Time) error
	AccountByToken(ctx context.Context, hash [32]byte, now time.Time) (store.Account, error)
	SetPasswordHash(ctx context.Context, accountID int64, hash string) error
	DeleteAccessTokens(ctx context.Context, accountID int64) error
	CreateBindingCode(ctx context.Context, hash [32]byte, deviceID int64, expires time.Time) error
	RedeemBindingCode(ctx context.Context, hash [32]byte, accountID int64, now time.Time) (store.Device, error)
	IsBound(ctx context.Context, accountID, deviceID int64) (bool, error)
	BoundDevices(ctx context.Context, accountID int64) ([]store.Device, error)
	TakeBindingNotices(ctx context.Context, accountID int64) (map[int64]time.Time, error)
	Unbind(ctx context.Context, accountID, deviceID int64) (map[string]int64, error)
	OpenSession(ctx context.Context, s store.Session, first, last uint32) (store.Session, error)
	CloseSession(ctx context.Context, id string, at time.Time) (store.Session, error)
	SessionByID(ctx context.Context, id string) (store.Session, error)
	OpenSessions(ctx context.Context) ([]store.Session, error)
	Checkpoint(ctx context.Context) error
}

// AccountKeys blinds account names.
type AccountKeys interface {
	AccountIndex(name string) privacy.BlindIndex
}

// Pair is one client↔device pair the hub lets through.
type Pair struct{ Client, Device netip.Addr }

// ACL is the hub's packet filter table.
type ACL interface {
	SetSessions(pairs []Pair)
}

// SessionOptions are the limits of remote-control sessions.
type SessionOptions struct {
	MaxPerAccount  int
	Duration       time.Duration
	IdleTimeout    time.Duration
	BindingCodeTTL time.Duration
	TokenTTL       time.Duration
	BindURIBase    string // gateway address put into binding URIs
}

type openSession struct {
	store.Session
	clientAddrs []netip.Prefix
	deviceAddrs []netip.Prefix
}

type sessions struct {
	g    *Gateway
	reg  SessionRegistry
	keys AccountKeys
	acl  ACL
	opt  SessionOptions

	mu   sync.Mutex
	open map[string]*openSession
}

func newSessions(g *Gateway, reg SessionRegistry, keys AccountKeys, acl ACL, opt SessionOptions) *sessions {
	if opt.MaxPerAccount <= 0 {
		opt.MaxPerAccount = 4
	}
	if opt.Duration <= 0 {
		opt.Duration = time.Hour
	}
	if opt.IdleTimeout <= 0 {
		opt.IdleTimeout = 10 * time.Minute
	}
	if opt.BindingCodeTTL <= 0 {
		opt.BindingCodeTTL = 5 * time.Minute
	}
	if opt.TokenTTL <= 0 {
		opt.TokenTTL = 12 * time.Hour
	}
	return &sessions{g: g, reg: reg, keys: keys, acl: acl, opt: opt, open: make(map[string]*openSession)}
}

func (s *sessions) enabled() bool { return s.reg != nil && s.keys != nil && s.acl != nil }

func (s *sessions) build(ctx context.Context, ss store.Session) (*openSession, error) {
	d, err := s.g.reg.DeviceByID(ctx, ss.DeviceID)
	if err != nil {
		return nil, err
	}
	return s.g.buildHosted(ss, d.Offset)
}

// buildHosted makes the in-memory form of a session hosted here, its device
// at address offset deviceOffset.
func (g *Gateway) buildHosted(ss store.Session, deviceOffset uint32) (*openSession, error) {
	cp, err := g.plan.ClientPrefixes(ss.ClientOffset)
	if err != nil {
		return nil, err
	}
	dp, err := g.devicePrefixes(deviceOffset)
	if err != nil {
		return nil, err
	}
	return &openSession{Session: ss, clientAddrs: cp, deviceAddrs: dp}, nil
}

// adoptSessions hosts the open sessions of a device that just moved here
// (their client peers, the ACL, SessionOpened on its stream). A failed read
// is left to the reconciler.
func (g *Gateway) adoptSessions(ctx context.Context, deviceID int64, deviceOffset uint32) {
	s := g.sess
	if !s.enabled() {
		return
	}
	list, err := g.homes.SessionsOf(ctx, deviceID, 0)
	if err != nil {
		g.log.Warn("reading the sessions of a device that moved here failed; the reconciler retries", "device_id", deviceID, "err", err)
		return
	}
	var add []PeerSpec
	var events []Event
	g.plane.order.RLock()
	defer g.plane.order.RUnlock()
	s.mu.Lock()
	for _, ss := range list {
		if !ss.ClosedAt.IsZero() || s.open[ss.ID] != nil {
			continue
		}
		os, err := g.buildHosted(ss, deviceOffset)
		if err != nil {
			g.log.Warn("skipping session that cannot be hosted", "session", ss.ID, "err", err)
			continue
		}
		g.plane.touchSession(ss.ID)
		s.open[ss.ID] = os
		add = append(add, PeerSpec{Key: ss.ClientKey, Allowed: os.clientAddrs})
		events = append(events, Event{Kind: EventSessionOpened, SessionID: ss.ID, ClientAddr: os.clientAddrs, ExpiresAt: ss.ExpiresAt})
	}
	if len(add) > 0 {
		s.publishACLLocked()
	}
	s.mu.Unlock()
	if err := g.tun.AddPeers(ctx, add); err != nil {
		g.log.Warn("adding the client peers of a device that moved here failed; the reconciler retries", "device_id", deviceID, "err", err)
	}
	for _, e := range events {
		g.hub.publish(deviceID, e)
	}
}

func (s *sessions) publishACLLocked() {
	var pairs []Pair
	for _, os := range s.open {
		for _, c := range os.clientAddrs {
			for _, d := range os.deviceAddrs {
				if c.Addr().Is4() == d.Addr().Is4() {
					pairs = append(pairs, Pair{Client: c.Addr(), Device: d.Addr()})
				}
			}
		}
	}
	s.acl.SetSessions(pairs)
}

func (s *sessions) closeForDevice(ctx context.Context, deviceID int64, reason string) error {
	_, err := s.closeWhere(ctx, reason, deviceID, 0, func(ss store.Session) bool { return ss.DeviceID == deviceID })
	return err
}

// closeWhere closes every open session match accepts, among those of the
// device (deviceID > 0) or else of the account, wherever they are hosted:
// the ones hosted here at once, the others through the registry (their
// host gateway learns it from its change feed). It returns how many it
// closed.
func (s *sessions) closeWhere(ctx context.Context, reason string, deviceID, accountID int64, match func(store.Session) bool) (int, error) {
	if !s.enabled() {
		return 0, nil
	}
	ids := map[string]bool{}
	s.mu.Lock()
	for id, os := range s.open {
		if match(os.Session) {
			ids[id] = true
		}
	}
	s.mu.Unlock()
	all, err := s.g.homes.SessionsOf(ctx, deviceID, accountID)
	if err != nil {
		return 0, newErr(ErrUnavailable, err, "listing open sessions failed")
	}
	for _, ss := range all {
		if ss.ClosedAt.IsZero() && match(ss) {
			ids[ss.ID] = true
		}
	}
	var errs []error
	n := 0
	for id := range ids {
		err := s.close(ctx, id, reason)
		switch {
		case err == nil:
			n++
		case !errors.Is(err, ErrNotFound):
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// close ends a session: store first (so a crash cannot resurrect it), then
// the ACL (so packets stop at once), then the peer, then the device's stream.
// A session hosted on another gateway is closed in the store only: its
// host learns it from the change feed.
func (s *sessions) close(ctx context.Context, id, reason string) error {
	s.g.plane.order.RLock()
	s.mu.Lock()
	os, ok := s.open[id]
	if ok {
		s.g.plane.touchSession(id)
		delete(s.open, id)
		s.publishACLLocked()
	}
	s.mu.Unlock()
	if ok {
		// Held until the client peer is gone, so a reconcile pass cannot
		// apply a read made before the store write below in between.
		defer s.g.plane.order.RUnlock()
	} else {
		s.g.plane.order.RUnlock()
	}
	now := s.g.cfg.Now()
	if !ok {
		ss, err := s.reg.CloseSession(ctx, id, now)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return newErr(ErrNotFound, nil, "session_id: no open session with this id")
		case err != nil:
			return newErr(ErrUnavailable, err, "closing session failed")
		}
		d, _ := s.g.reg.DeviceByID(ctx, ss.DeviceID)
		s.g.connlog.Record(ConnEvent{At: now, Event: EventSessionClose, Outcome: OutcomeOK, Index: d.Index})
		s.g.log.Info("session closed", "session", id, "reason", reason, "host", d.Home)
		return nil
	}
	_, err := s.reg.CloseSession(ctx, id, now)
	// Again after the store write: a pass whose read began before it
	// leaves the session closed here.
	s.g.plane.touchSession(id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return newErr(ErrUnavailable, err, "closing session failed")
	}
	if err := s.g.tun.RemovePeer(ctx, os.ClientKey); err != nil {
		return newErr(ErrUnavailable, err, "removing the client peer failed")
	}
	d, _ := s.g.reg.DeviceByID(ctx, os.DeviceID)
	s.g.connlog.Record(ConnEvent{At: now, Event: EventSessionClose, Outcome: OutcomeOK, Index: d.Index})
	s.g.hub.publish(os.DeviceID, Event{Kind: EventSessionClosed, SessionID: id, Reason: reason})
	s.g.log.Info("session closed", "session", id, "reason", reason)
	return nil
}

// CreateAccount adds an account with an argon2id password hash.
func (g *Gateway) CreateAccount(ctx context.Context, name string, password []byte) (int64, error) {
	s := g.sess
	if !s.enabled() {
		return 0, newErr(ErrUnavailable, nil, "accounts are not configured")
	}
	if err := checkAccountName(name); err != nil {
		return 0, err
	}
	if len(password) < 8 {
		return 0, newErr(ErrInvalid, nil, "password: must be at least 8 characters")
	}
	hash, err := g.hashPassword(ctx, password)
	if err != nil {
		return 0, err
	}
	idx := s.keys.AccountIndex(name)
	a, err := s.reg.CreateAccount(ctx, store.Account{
		NameIndex: idx, SealedName: g.keys.Seal([]byte(name), idx[:]), PasswordHash: hash, CreatedAt: g.cfg.Now(),
	})
	if errors.Is(err, store.ErrConflict) {
		return 0, newErr(ErrConflict, err, "name: an account with this name exists")
	}
	if err != nil {
		return 0, newErr(ErrUnavailable, err, "creating account failed")
	}
	return a.ID, nil
}

// hashPassword hashes a new password in the password pool.
func (g *Gateway) hashPassword(ctx context.Context, password []byte) (string, error) {
	var (
		hash string
		err  error
	)
	if g.pw != nil {
		hash, err = g.pw.HashPassword(ctx, password)
	} else {
		hash, err = identity.HashPassword(password)
	}
	var fe *privacy.FieldError
	switch {
	case errors.As(err, &fe):
		return "", newErr(ErrInvalid, err, "%s", fe.Error())
	case errors.Is(err, identity.ErrBusy):
		return "", busy(err, "password checks")
	case err != nil:
		return "", newErr(ErrUnavailable, err, "hashing password failed")
	}
	return hash, nil
}

func checkAccountName(name string) error {
	if name == "" || len(name) > 128 {
		return newErr(ErrInvalid, nil, "name: must be 1 to 128 bytes")
	}
	for _, r := range name {
		if r < ' ' || r == 0x7f {
			return newErr(ErrInvalid, nil, "name: control characters are not allowed")
		}
	}
	return nil
}

// ClientLogin checks an account's password and returns an access token.
// It goes through the verifier's one path: throttled by (account, source
// prefix) and by source, argon2id in the bounded password pool. An unknown
// account, a wrong password and a throttled attempt get the same answer
// (the throttled one with a retry hint); a full pool is ErrRateLimited.
func (g *Gateway) ClientLogin(ctx context.Context, name string, password []byte, source privacy.Addr) (string, time.Time, error) {
	s := g.sess
	if !s.enabled() || g.pw == nil {
		return "", time.Time{}, newErr(ErrUnavailable, nil, "accounts are not configured")
	}
	if err := checkAccountName(name); err != nil {
		return "", time.Time{}, err
	}
	idx := s.keys.AccountIndex(name)
	now := g.cfg.Now()
	a, err := g.pw.VerifyAccount(ctx, s.reg, name, password, source.Reveal())
	var te *identity.ThrottledError
	switch {
	case errors.As(err, &te):
		g.connlog.Record(ConnEvent{At: now, Event: EventClientLogin, Outcome: OutcomeRateLimited, Index: idx, Source: source})
		return "", time.Time{}, throttled(err, te.RetryAfter, msgClientRefused)
	case errors.Is(err, identity.ErrUnauthenticated):
		g.connlog.Record(ConnEvent{At: now, Event: EventClientLogin, Outcome: OutcomeDenied, Index: idx, Source: source})
		return "", time.Time{}, newErr(ErrUnauthenticated, err, msgClientRefused)
	case errors.Is(err, identity.ErrBusy):
		g.connlog.Record(ConnEvent{At: now, Event: EventClientLogin, Outcome: OutcomeRateLimited, Index: idx, Source: source})
		return "", time.Time{}, busy(err, "logins")
	case err != nil:
		return "", time.Time{}, newErr(ErrUnavailable, err, "checking password failed")
	}
	token, hash, err := identity.NewToken()
	if err != nil {
		return "", time.Time{}, newErr(ErrUnavailable, err, "making token failed")
	}
	exp := now.Add(s.opt.TokenTTL)
	if err := s.reg.CreateAccessToken(ctx, hash, a.ID, exp); err != nil {
		return "", time.Time{}, newErr(ErrUnavailable, err, "storing token failed")
	}
	g.connlog.Record(ConnEvent{At: now, Event: EventClientLogin, Outcome: OutcomeOK, Index: idx, Source: source})
	return token, exp, nil
}

// checkOwnPassword confirms the password of an account the caller holds a
// token for; the answers are those of ClientLogin (a wrong password and a
// throttled attempt alike, the latter with a retry hint).
func (g *Gateway) checkOwnPassword(ctx context.Context, a store.Account, password []byte, source privacy.Addr) error {
	if g.pw == nil {
		return newErr(ErrUnavailable, nil, "accounts are not configured")
	}
	err := g.pw.VerifyPassword(ctx, a, password, source.Reveal())
	var te *identity.ThrottledError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &te):
		return throttled(err, te.RetryAfter, "old_password: wrong password, or too many attempts")
	case errors.Is(err, identity.ErrUnauthenticated):
		return newErr(ErrPermission, err, "old_password: wrong password, or too many attempts")
	case errors.Is(err, identity.ErrBusy):
		return busy(err, "password checks")
	default:
		return newErr(ErrUnavailable, err, "checking password failed")
	}
}

// ChangePassword replaces an account's password, given the current one.
// Every open session of the account closes and every access token of the
// account is revoked; the caller gets a fresh token.
func (g *Gateway) ChangePassword(ctx context.Context, a store.Account, oldPassword, newPassword []byte, source privacy.Addr) (token string, expires time.Time, closed int, err error) {
	s := g.sess
	if !s.enabled() {
		return "", time.Time{}, 0, newErr(ErrUnavailable, nil, "accounts are not configured")
	}
	if len(newPassword) < 8 {
		return "", time.Time{}, 0, newErr(ErrInvalid, nil, "new_password: must be at least 8 characters")
	}
	if err := g.checkOwnPassword(ctx, a, oldPassword, source); err != nil {
		return "", time.Time{}, 0, err
	}
	hash, err := g.hashPassword(ctx, newPassword)
	if err != nil {
		return "", time.Time{}, 0, err
	}
	if err := s.reg.SetPasswordHash(ctx, a.ID, hash); err != nil {
		return "", time.Time{}, 0, newErr(ErrUnavailable, err, "storing the new password failed")
	}
	// Tokens before sessions: a stolen token stops working at once.
	if err := s.reg.DeleteAccessTokens(ctx, a.ID); err != nil {
		return "", time.Time{}, 0, newErr(ErrUnavailable, err, "revoking access tokens failed")
	}
	closed, err = s.closeWhere(ctx, "password changed", 0, a.ID, func(ss store.Session) bool { return ss.AccountID == a.ID })
	if err != nil {
		return "", time.Time{}, 0, err
	}
	token, th, err := identity.NewToken()
	if err != nil {
		return "", time.Time{}, 0, newErr(ErrUnavailable, err, "making token failed")
	}
	now := g.cfg.Now()
	expires = now.Add(s.opt.TokenTTL)
	if err := s.reg.CreateAccessToken(ctx, th, a.ID, expires); err != nil {
		return "", time.Time{}, 0, newErr(ErrUnavailable, err, "storing token failed")
	}
	g.log.Info("account password changed", "account_id", a.ID, "sessions_closed", closed)
	return token, expires, closed, nil
}

// AccountByToken authenticates a client access token.
func (g *Gateway) AccountByToken(ctx context.Context, token string) (store.Account, error) {
	s := g.sess
	if !s.enabled() {
		return store.Account{}, newErr(ErrUnavailable, nil, "accounts are not configured")
	}
	h, err := identity.HashToken(token)
	if err != nil {
		return store.Account{}, newErr(ErrUnauthenticated, err, "malformed access token")
	}
	a, err := s.reg.AccountByToken(ctx, h, g.cfg.Now())
	if errors.Is(err, store.ErrNotFound) {
		return store.Account{}, newErr(ErrUnauthenticated, err, "unknown or expired access token")
	}
	if err != nil {
		return store.Account{}, newErr(ErrUnavailable, err, "checking token failed")
	}
	return a, nil
}

// DeleteAccount cancels an account: cancellation is erasure (eraseAccount):
// its sessions close, its peers go, and every row of it goes, connection
// log and auth failures included; the account goes on the erasure ledger.
// Returns the erasure receipt.
func (g *Gateway) DeleteAccount(ctx context.Context, name string) (map[string]int64, error) {
	s := g.sess
	if !s.enabled() {
		return nil, newErr(ErrUnavailable, nil, "accounts are not configured")
	}
	if err := checkAccountName(name); err != nil {
		return nil, err
	}
	a, err := s.reg.AccountByName(ctx, s.keys.AccountIndex(name))
	if errors.Is(err, store.ErrNotFound) {
		return nil, newErr(ErrNotFound, err, "name: no such account")
	}
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "looking up account failed")
	}
	if g.subj != nil {
		return g.eraseAccount(ctx, a, "account deleted")
	}
	if _, err := s.closeWhere(ctx, "account deleted", 0, a.ID, func(ss store.Session) bool { return ss.AccountID == a.ID }); err != nil {
		return nil, err
	}
	receipt, err := s.reg.DeleteAccount(ctx, a.ID)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "deleting account failed")
	}
	g.checkpoint(ctx, s.reg, receipt)
	return receipt, nil
}

// BindingCode is a short-lived single-use code a device shows as a QR code.
type BindingCode struct {
	Code    string
	Expires time.Time
	URI     string
}

// CreateBindingCode makes a binding code for a logged-in device.
// Codes are throttled per device and per source: a device shows a code now
// and then, never thousands.
func (g *Gateway) CreateBindingCode(ctx context.Context, d store.Device, source privacy.Addr) (BindingCode, error) {
	s := g.sess
	if !s.enabled() {
		return BindingCode{}, newErr(ErrUnavailable, nil, "binding is not configured")
	}
	if g.codes != nil {
		if r := g.codes.Begin(d.Index, source.Reveal(), false); r != nil {
			return BindingCode{}, &Error{Kind: ErrRateLimited, Msg: "too many binding codes; retry later", RetryAfter: r.RetryAfter}
		}
	}
	code, hash, err := newBindingCode()
	if err != nil {
		return BindingCode{}, newErr(ErrUnavailable, err, "making code failed")
	}
	exp := g.cfg.Now().Add(s.opt.BindingCodeTTL)
	if err := s.reg.CreateBindingCode(ctx, hash, d.ID, exp); err != nil {
		return BindingCode{}, newErr(ErrUnavailable, err, "storing code failed")
	}
	uri := "dasset://bind?code=" + code
	if s.opt.BindURIBase != "" {
		uri += "&gateway=" + s.opt.BindURIBase
	}
	return BindingCode{Code: code, Expires: exp, URI: uri}, nil
}

// BindDevice redeems a binding code for an account.
// Guesses are throttled by (account, source prefix), by source and
// globally; a successful bind forgets the account's attempts.
func (g *Gateway) BindDevice(ctx context.Context, a store.Account, code string, source privacy.Addr) (privacy.SerialNumber, error) {
	s := g.sess
	hash, err := hashBindingCode(code)
	if err != nil {
		return privacy.SerialNumber{}, newErr(ErrInvalid, err, "code: %v", err)
	}
	if g.binds != nil {
		if r := g.binds.Begin(a.NameIndex, source.Reveal(), false); r != nil {
			return privacy.SerialNumber{}, &Error{Kind: ErrRateLimited, Msg: "too many binding attempts; retry later", RetryAfter: r.RetryAfter}
		}
	}
	d, err := s.reg.RedeemBindingCode(ctx, hash, a.ID, g.cfg.Now())
	if errors.Is(err, store.ErrNotFound) {
		return privacy.SerialNumber{}, newErr(ErrNotFound, err, "code: unknown, used or expired binding code")
	}
	if err != nil {
		return privacy.SerialNumber{}, newErr(ErrUnavailable, err, "binding failed")
	}
	if g.binds != nil {
		g.binds.Succeeded(a.NameIndex, source.Reveal())
	}
	return g.openSerial(d)
}

// UnbindDevice removes a binding; open sessions of that pair close at once.
func (g *Gateway) UnbindDevice(ctx context.Context, a store.Account, sn privacy.SerialNumber) (map[string]int64, error) {
	s := g.sess
	d, err := g.boundDevice(ctx, a, sn)
	if err != nil {
		return nil, err
	}
	if _, err := s.closeWhere(ctx, "device unbound", d.ID, 0, func(ss store.Session) bool { return ss.AccountID == a.ID && ss.DeviceID == d.ID }); err != nil {
		return nil, err
	}
	receipt, err := s.reg.Unbind(ctx, a.ID, d.ID)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "unbinding failed")
	}
	g.checkpoint(ctx, s.reg, receipt)
	return receipt, nil
}

// boundDevice finds a device bound to the account. An unknown serial number
// and a device bound to someone else get the same answer, so a client cannot
// probe which serial numbers are enrolled.
func (g *Gateway) boundDevice(ctx context.Context, a store.Account, sn privacy.SerialNumber) (store.Device, error) {
	notBound := newErr(ErrPermission, nil, "serial_number: no device with this serial number is bound to this account")
	d, err := g.deviceBySerial(ctx, sn)
	if errors.Is(err, ErrNotFound) {
		return store.Device{}, notBound
	}
	if err != nil {
		return store.Device{}, err
	}
	bound, err := g.sess.reg.IsBound(ctx, a.ID, d.ID)
	if err != nil {
		return store.Device{}, newErr(ErrUnavailable, err, "checking binding failed")
	}
	if !bound {
		return store.Device{}, notBound
	}
	return d, nil
}

// BoundDevice is a device as its account sees it.
type BoundDevice struct {
	Serial    privacy.SerialNumber
	Online    bool
	Addresses []netip.Prefix
	// BoundByAnother is when another account bound the device, told once
	// (zero when nothing new).
	BoundByAnother time.Time
}

// BoundDevices lists an account's devices with online state.
func (g *Gateway) BoundDevices(ctx context.Context, a store.Account) ([]BoundDevice, error) {
	devs, err := g.sess.reg.BoundDevices(ctx, a.ID)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "listing devices failed")
	}
	notices, err := g.sess.reg.TakeBindingNotices(ctx, a.ID)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "reading binding notices failed")
	}
	// An account has a few devices: look each one up in the cached status
	// instead of building a map of every peer (and devices homed on other
	// gateways up in the cached gateways table).
	g.fleet.refresh(ctx)
	online := func(k [32]byte) bool { return g.handshookRecently(ctx, k) }
	out := make([]BoundDevice, 0, len(devs))
	for _, d := range devs {
		v, err := g.view(d, online)
		if err != nil {
			return nil, err
		}
		out = append(out, BoundDevice{Serial: v.Serial, Online: v.Online, Addresses: v.Addresses, BoundByAnother: notices[d.ID]})
	}
	return out, nil
}

// SessionGrant is what a client gets when it opens a session.
type SessionGrant struct {
	ID          string
	ClientAddrs []netip.Prefix
	DeviceAddrs []netip.Prefix
	GatewayKey  [32]byte
	Endpoint    string
	AllowedIPs  []netip.Prefix
	Keepalive   time.Duration
	MTU         int
	ExpiresAt   time.Time
}

// OpenSession opens a remote-control session from an account's client to a
// bound, online device.
func (g *Gateway) OpenSession(ctx context.Context, a store.Account, sn privacy.SerialNumber, clientKey [32]byte, local netip.AddrPort) (SessionGrant, error) {
	s := g.sess
	if err := g.tun.CheckKey(clientKey); err != nil {
		return SessionGrant{}, newErr(ErrInvalid, err, "client_public_key: %v", err)
	}
	d, err := g.boundDevice(ctx, a, sn)
	if err != nil {
		return SessionGrant{}, err
	}
	if d.Revoked {
		return SessionGrant{}, newErr(ErrPermission, nil, "device revoked")
	}
	if !g.Online(ctx, d) {
		return SessionGrant{}, newErr(ErrPrecondition, nil, "device offline")
	}
	// A device homed on another gateway is reached through it: the client
	// needs that gateway's key and endpoint.
	var home store.Gateway
	if d.Home != "" && d.Home != g.cfg.InstanceID {
		var ok bool
		if home, ok = g.fleet.gateway(ctx, d.Home); !ok {
			return SessionGrant{}, newErr(ErrUnavailable, nil, "the device's gateway is not in the registry's gateways table")
		}
		if home.Endpoint == "" {
			return SessionGrant{}, newErr(ErrUnavailable, nil, "the device's gateway has no tunnel.endpoint configured; every gateway of a fleet needs one")
		}
	}
	id, err := newSessionID()
	if err != nil {
		return SessionGrant{}, newErr(ErrUnavailable, err, "making session id failed")
	}
	now := g.cfg.Now()
	first, last := g.plan.ClientRange()
	ss, err := s.reg.OpenSession(ctx, store.Session{
		ID: id, AccountID: a.ID, DeviceID: d.ID, ClientKey: clientKey, OpenedAt: now, ExpiresAt: now.Add(s.opt.Duration),
		MaxPerAccount: s.opt.MaxPerAccount, // counted in the insert's transaction
	}, first, last)
	switch {
	case errors.Is(err, store.ErrLimit):
		return SessionGrant{}, newErr(ErrExhausted, err, "too many open sessions for this account (limit %d)", s.opt.MaxPerAccount)
	case errors.Is(err, store.ErrKeyInUse):
		return SessionGrant{}, newErr(ErrConflict, err, "client_public_key: already in use by another peer")
	case errors.Is(err, store.ErrExhausted):
		return SessionGrant{}, newErr(ErrExhausted, err, "no free client address")
	case err != nil:
		return SessionGrant{}, newErr(ErrUnavailable, err, "storing session failed")
	}
	if d.Home != "" && d.Home != g.cfg.InstanceID {
		return g.remoteGrant(ctx, ss, d, home)
	}
	os, err := s.build(ctx, ss)
	if err != nil {
		_, _ = s.reg.CloseSession(ctx, id, now)
		return SessionGrant{}, newErr(ErrUnavailable, err, "building session failed")
	}
	g.plane.order.RLock()
	g.plane.touchSession(id)
	s.mu.Lock()
	s.open[id] = os
	s.publishACLLocked()
	s.mu.Unlock()
	err = g.tun.AddPeer(ctx, clientKey, os.clientAddrs)
	if err != nil {
		s.mu.Lock()
		delete(s.open, id)
		s.publishACLLocked()
		s.mu.Unlock()
	}
	g.plane.order.RUnlock()
	if err != nil {
		_, _ = s.reg.CloseSession(ctx, id, now)
		return SessionGrant{}, newErr(ErrUnavailable, err, "adding the client peer failed")
	}
	g.connlog.Record(ConnEvent{At: now, Event: EventSessionOpen, Outcome: OutcomeOK, Index: d.Index})
	g.hub.publish(d.ID, Event{Kind: EventSessionOpened, SessionID: id, ClientAddr: os.clientAddrs, ExpiresAt: ss.ExpiresAt})
	g.log.Info("session opened", "session", id, "client", os.clientAddrs, "device", os.deviceAddrs)
	return SessionGrant{
		ID: id, ClientAddrs: os.clientAddrs, DeviceAddrs: os.deviceAddrs, GatewayKey: g.tun.PublicKey(),
		Endpoint: g.endpoint(local), AllowedIPs: g.plan.Network(), Keepalive: g.cfg.Keepalive, MTU: g.cfg.MTU,
		ExpiresAt: ss.ExpiresAt,
	}, nil
}

// remoteGrant answers OpenSession for a device homed on another gateway:
// the session is in the registry, and its home gateway (whose key and
// endpoint the grant names) adds the client peer when the change reaches
// it.
func (g *Gateway) remoteGrant(ctx context.Context, ss store.Session, d store.Device, home store.Gateway) (SessionGrant, error) {
	cp, err := g.plan.ClientPrefixes(ss.ClientOffset)
	if err == nil {
		var dp []netip.Prefix
		if dp, err = g.devicePrefixes(d.Offset); err == nil {
			g.connlog.Record(ConnEvent{At: ss.OpenedAt, Event: EventSessionOpen, Outcome: OutcomeOK, Index: d.Index})
			g.log.Info("session opened", "session", ss.ID, "client", cp, "device", dp, "host", d.Home)
			return SessionGrant{
				ID: ss.ID, ClientAddrs: cp, DeviceAddrs: dp, GatewayKey: home.PublicKey,
				Endpoint: home.Endpoint, AllowedIPs: g.plan.Network(), Keepalive: g.cfg.Keepalive, MTU: g.cfg.MTU,
				ExpiresAt: ss.ExpiresAt,
			}, nil
		}
	}
	_, _ = g.sess.reg.CloseSession(ctx, ss.ID, g.cfg.Now())
	return SessionGrant{}, newErr(ErrUnavailable, err, "building session failed")
}

// CloseSession closes a session; a non-nil account must own it.
func (g *Gateway) CloseSession(ctx context.Context, a *store.Account, id string) error {
	s := g.sess
	s.mu.Lock()
	os, ok := s.open[id]
	s.mu.Unlock()
	if !ok && s.enabled() {
		// Hosted by another gateway, or not open.
		ss, err := g.homes.SessionByID(ctx, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return newErr(ErrUnavailable, err, "looking up session failed")
		case ss.ClosedAt.IsZero():
			os, ok = &openSession{Session: ss}, true
		}
	}
	if !ok || (a != nil && os.AccountID != a.ID) {
		return newErr(ErrNotFound, nil, "session_id: no open session with this id")
	}
	reason := "closed by the client"
	if a == nil {
		reason = "closed by an operator"
	}
	return s.close(ctx, id, reason)
}

// Session returns one of the account's open sessions (ErrNotFound once it
// has ended, or when it is someone else's), as the registry holds it, so
// any gateway of a fleet answers for any session, with the WireGuard peer
// its client uses now: the device's home gateway (local is the address the
// client's gRPC connection reached, for this gateway's endpoint when
// tunnel.endpoint is empty).
func (g *Gateway) Session(ctx context.Context, a store.Account, id string, local netip.AddrPort) (SessionView, error) {
	s := g.sess
	if !s.enabled() {
		return SessionView{}, newErr(ErrUnavailable, nil, "sessions are not configured")
	}
	notFound := func(err error) (SessionView, error) {
		return SessionView{}, newErr(ErrNotFound, err, "session_id: no open session with this id")
	}
	ss, err := s.reg.SessionByID(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return notFound(err)
	case err != nil:
		return SessionView{}, newErr(ErrUnavailable, err, "reading the session failed")
	case ss.AccountID != a.ID || !ss.ClosedAt.IsZero() || !g.cfg.Now().Before(ss.ExpiresAt):
		return notFound(nil)
	}
	d, err := g.reg.DeviceByID(ctx, ss.DeviceID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return notFound(err)
	case err != nil:
		return SessionView{}, newErr(ErrUnavailable, err, "reading the session's device failed")
	}
	cp, err := g.plan.ClientPrefixes(ss.ClientOffset)
	if err != nil {
		return SessionView{}, newErr(ErrUnavailable, err, "session addresses")
	}
	dp, err := g.devicePrefixes(d.Offset)
	if err != nil {
		return SessionView{}, newErr(ErrUnavailable, err, "device addresses")
	}
	key, endpoint, err := g.homePeer(ctx, d.Home, local)
	if err != nil {
		return SessionView{}, err
	}
	return SessionView{
		ID: ss.ID, DeviceID: ss.DeviceID, AccountID: ss.AccountID, ClientAddrs: cp, DeviceAddrs: dp,
		OpenedAt: ss.OpenedAt, ExpiresAt: ss.ExpiresAt,
		Gateway: &PeerView{Key: key, Endpoint: endpoint, AllowedIPs: g.plan.Network(), Keepalive: g.cfg.Keepalive},
	}, nil
}

// SessionView is an open session as operators see it.
type SessionView struct {
	ID          string
	DeviceID    int64
	AccountID   int64
	Serial      privacy.SerialNumber // zero when it could not be opened
	ClientAddrs []netip.Prefix
	DeviceAddrs []netip.Prefix
	OpenedAt    time.Time
	ExpiresAt   time.Time
	// Gateway is the WireGuard peer the session's client uses now (Session
	// only; nil elsewhere).
	Gateway *PeerView
}

// PeerView is a gateway as a WireGuard peer of a client.
type PeerView struct {
	Key        [32]byte
	Endpoint   string // host:port
	AllowedIPs []netip.Prefix
	Keepalive  time.Duration
}

// ReapSessions closes sessions past their expiry or idle longer than the
// idle timeout (no handshake from the client peer). Run it periodically.
func (g *Gateway) ReapSessions(ctx context.Context) {
	s := g.sess
	if !s.enabled() {
		return
	}
	s.mu.Lock()
	n := len(s.open)
	s.mu.Unlock()
	if n == 0 {
		return // no WireGuard status read (it locks every peer) when idle
	}
	now := g.cfg.Now()
	type candidate struct {
		id  string
		key [32]byte
	}
	s.mu.Lock()
	var expired []string
	var quiet []candidate // open longer than the idle timeout
	for id, os := range s.open {
		switch {
		case !now.Before(os.ExpiresAt):
			expired = append(expired, id)
		case now.Sub(os.OpenedAt) > s.opt.IdleTimeout:
			quiet = append(quiet, candidate{id, os.ClientKey})
		}
	}
	s.mu.Unlock()
	// One look-up per candidate in the cached status, not a map of every
	// peer; a failed read counts as no handshake.
	var idle []string
	for _, c := range quiet {
		hs, err := g.tun.LastHandshake(ctx, c.key)
		if err != nil || now.Sub(hs) > s.opt.IdleTimeout {
			idle = append(idle, c.id)
		}
	}
	for _, id := range expired {
		if err := s.close(ctx, id, "expired"); err != nil && !errors.Is(err, ErrNotFound) {
			g.log.Warn("closing expired session failed", "session", id, "err", err)
		}
	}
	for _, id := range idle {
		if err := s.close(ctx, id, "idle"); err != nil && !errors.Is(err, ErrNotFound) {
			g.log.Warn("closing idle session failed", "session", id, "err", err)
		}
	}
}

// OpenSessionCount is the number of open sessions.
func (g *Gateway) OpenSessionCount() int {
	g.sess.mu.Lock()
	defer g.sess.mu.Unlock()
	return len(g.sess.open)
}

func newSessionID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}
