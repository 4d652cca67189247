// Package identity decides who a device or a client is: device verification
// (blind-index lookup, constant-time HWID verifier check, throttling by
// subject and source, WireGuard key pinning), client accounts (argon2id
// passwords checked in a bounded pool), and bearer tokens.
//
// It never holds a raw serial number or hardware id beyond the call that
// received it: lookups go through the blind index, the HWID through its
// verifier (pkg/privacy).
package identity

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	"github.com/planetxlabs/dasset-gateway/pkg/throttle"
)

// Errors of verification (match with errors.Is).
var (
	// ErrUnauthenticated is the one answer to an unknown serial number, a
	// wrong hardware id, an unknown account and a wrong password: callers
	// cannot tell them apart.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrThrottled refuses an attempt before its credentials are checked:
	// too many recent attempts from its source, or on its (subject, source
	// prefix). The error is a *ThrottledError with the retry hint.
	ErrThrottled = errors.New("too many attempts")
	// ErrBusy refuses a password check when the pool of password checks and
	// its queue are full.
	ErrBusy = errors.New("too many password checks at once")
	// ErrRevoked refuses an authentic but revoked device. It is the store's
	// sentinel, so either package's name matches.
	ErrRevoked = store.ErrRevoked
	// ErrKeyMismatch refuses a WireGuard key other than the pinned one when
	// rekeying is not allowed.
	ErrKeyMismatch = errors.New("wireguard key does not match the pinned key")
)

// ThrottledError is ErrThrottled with the reason (a metric label) and when
// the same attempt may succeed.
type ThrottledError struct {
	Reason     string
	RetryAfter time.Duration
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("%v (%s); retry after %v", ErrThrottled, e.Reason, e.RetryAfter)
}

// Is matches ErrThrottled.
func (e *ThrottledError) Is(target error) bool { return target == ErrThrottled }

// DeviceStore is what device verification needs of the registry
// (pkg/store.Store satisfies it).
type DeviceStore interface {
	DeviceByIndex(ctx context.Context, idx privacy.BlindIndex) (store.Device, error)
}

// AccountStore is what account verification needs (pkg/store.Store
// satisfies it).
type AccountStore interface {
	AccountByName(ctx context.Context, nameIndex privacy.BlindIndex) (store.Account, error)
}

// Throttle decides whether an attempt on a subject (a blind index) from a
// source address may go ahead before its credentials are checked
// (pkg/throttle.Guard satisfies it). Its state is memory only: failures
// never reach the database.
type Throttle interface {
	// Begin returns nil to go ahead, or why not. A proven attempt carries
	// a secret only the subject holds (a device's pinned key).
	Begin(subject [32]byte, src netip.Addr, proven bool) *throttle.Refusal
	// Succeeded forgets the attempts of a caller that proved itself.
	Succeeded(subject [32]byte, src netip.Addr)
}

// Pool runs password checks on a fixed number of workers with a bounded
// queue (pkg/throttle.Pool satisfies it).
type Pool interface {
	Do(ctx context.Context, fn func()) error
}

// Config holds the verifier's limits; nil fields mean no limit (tests).
type Config struct {
	// Devices throttles device logins, keyed by the serial number's blind
	// index and the source.
	Devices Throttle
	// Accounts throttles client logins, keyed by the account name's blind
	// index and the source.
	Accounts Throttle
	// Passwords runs argon2id checks.
	Passwords Pool
}

// Verifier verifies devices and accounts. It is safe for concurrent use.
type Verifier struct {
	keys *privacy.Keystore
	st   DeviceStore
	cfg  Config
}

// NewVerifier makes a Verifier.
func NewVerifier(keys *privacy.Keystore, st DeviceStore, cfg Config) *Verifier {
	if cfg.Devices == nil {
		cfg.Devices = noThrottle{}
	}
	if cfg.Accounts == nil {
		cfg.Accounts = noThrottle{}
	}
	if cfg.Passwords == nil {
		cfg.Passwords = noPool{}
	}
	return &Verifier{keys: keys, st: st, cfg: cfg}
}

type noThrottle struct{}

func (noThrottle) Begin([32]byte, netip.Addr, bool) *throttle.Refusal { return nil }
func (noThrottle) Succeeded([32]byte, netip.Addr)                     {}

type noPool struct{}

func (noPool) Do(_ context.Context, fn func()) error { fn(); return nil }

// DeviceAttempt is a device login as verification sees it.
type DeviceAttempt struct {
	Serial   privacy.SerialNumber
	Hardware privacy.HardwareID
	// Key is the WireGuard public key the device logs in with: when it is
	// the device's pinned key the attempt is proven, and strangers'
	// failures elsewhere cannot slow it.
	Key [32]byte
	// Source is the caller's address (memory only).
	Source netip.Addr
}

// VerifyDevice checks a device's serial number and hardware id.
//
// The serial number's blind index finds the device. The throttle then
// decides whether the attempt may go ahead (ErrThrottled otherwise): an
// attempt with the device's pinned key is only limited on its own (serial,
// source prefix); others also by source and globally. The verifier of (SN,
// HWID) is compared in constant time with the stored one, or, for an unknown
// SN, with the keystore's dummy verifier, so both take the same path and
// work; either failure returns ErrUnauthenticated and is counted in memory
// only. An authentic revoked device gets ErrRevoked. Nothing is written.
func (v *Verifier) VerifyDevice(ctx context.Context, a DeviceAttempt) (store.Device, error) {
	sn, hw := a.Serial, a.Hardware
	if sn.IsZero() {
		return store.Device{}, &privacy.FieldError{Field: "serial_number", Reason: "must not be empty"}
	}
	if hw.Reveal() == "" {
		return store.Device{}, &privacy.FieldError{Field: "hardware_id", Reason: "must not be empty"}
	}
	idx := v.keys.BlindIndex(sn)

	d, err := v.st.DeviceByIndex(ctx, idx)
	known := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Device{}, fmt.Errorf("identity: look up device: %w", err)
	}
	proven := known && d.KeyPinned && hmac.Equal(d.Key[:], a.Key[:])
	if r := v.cfg.Devices.Begin(idx, a.Source, proven); r != nil {
		return store.Device{}, &ThrottledError{Reason: r.Reason, RetryAfter: r.RetryAfter}
	}
	want := v.keys.DummyVerifier()
	if known {
		want = d.Verifier
	}
	got := v.keys.Verifier(sn, hw)
	if !hmac.Equal(got[:], want[:]) || !known {
		return store.Device{}, ErrUnauthenticated
	}
	if d.Revoked {
		return store.Device{}, fmt.Errorf("identity: device %d: %w", d.ID, ErrRevoked)
	}
	v.cfg.Devices.Succeeded(idx, a.Source)
	return d, nil
}

// VerifyAccount checks a client's account name and password, from source.
// The throttle goes first (keyed by the account name's blind index and the
// source prefix, so a stranger's guesses never lock the real user out of
// their own network); the argon2id check then runs in the password pool
// (ErrBusy when it is full). An unknown account runs DummyPasswordCheck, so
// it costs what a wrong password costs; both return ErrUnauthenticated.
func (v *Verifier) VerifyAccount(ctx context.Context, accounts AccountStore, name string, password []byte, source netip.Addr) (store.Account, error) {
	if name == "" {
		return store.Account{}, &privacy.FieldError{Field: "account", Reason: "must not be empty"}
	}
	idx := v.keys.AccountIndex(name)
	if r := v.cfg.Accounts.Begin(idx, source, false); r != nil {
		return store.Account{}, &ThrottledError{Reason: r.Reason, RetryAfter: r.RetryAfter}
	}
	a, err := accounts.AccountByName(ctx, idx)
	known := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Account{}, fmt.Errorf("identity: look up account: %w", err)
	}
	ok, err := v.CheckPassword(ctx, a.PasswordHash, known, password)
	if err != nil {
		return store.Account{}, fmt.Errorf("identity: account %d: %w", a.ID, err)
	}
	if !ok {
		return store.Account{}, ErrUnauthenticated
	}
	v.cfg.Accounts.Succeeded(idx, source)
	return a, nil
}

// VerifyPassword checks the password of an account the caller already holds
// a token for (changing the password, cancelling the account): throttled by
// (account, source prefix) like a login, argon2id in the pool.
func (v *Verifier) VerifyPassword(ctx context.Context, a store.Account, password []byte, source netip.Addr) error {
	if r := v.cfg.Accounts.Begin(a.NameIndex, source, false); r != nil {
		return &ThrottledError{Reason: r.Reason, RetryAfter: r.RetryAfter}
	}
	ok, err := v.CheckPassword(ctx, a.PasswordHash, true, password)
	if err != nil {
		return fmt.Errorf("identity: account %d: %w", a.ID, err)
	}
	if !ok {
		return ErrUnauthenticated
	}
	v.cfg.Accounts.Succeeded(a.NameIndex, source)
	return nil
}

// CheckPassword checks pw against hash in the password pool; known=false
// runs the dummy check (same cost) and reports false. A full pool is
// ErrBusy.
func (v *Verifier) CheckPassword(ctx context.Context, hash string, known bool, pw []byte) (ok bool, err error) {
	perr := v.cfg.Passwords.Do(ctx, func() {
		if !known {
			DummyPasswordCheck()
			return
		}
		ok, err = CheckPassword(hash, pw)
	})
	if errors.Is(perr, throttle.ErrBusy) {
		return false, ErrBusy
	}
	if perr != nil {
		return false, perr
	}
	return ok, err
}

// HashPassword hashes pw in the password pool (ErrBusy when it is full).
func (v *Verifier) HashPassword(ctx context.Context, pw []byte) (hash string, err error) {
	perr := v.cfg.Passwords.Do(ctx, func() { hash, err = HashPassword(pw) })
	if errors.Is(perr, throttle.ErrBusy) {
		return "", ErrBusy
	}
	if perr != nil {
		return "", perr
	}
	return hash, err
}

// CheckKey decides what to do with the WireGuard key a device logs in with:
// a device without a pinned key pins it (replace=false); the pinned key is
// fine; another key is ErrKeyMismatch unless rekeyAllowed, when it replaces
// the pinned one (replace=true). An all-zero key is refused.
func CheckKey(d store.Device, key [32]byte, rekeyAllowed bool) (replace bool, err error) {
	if key == ([32]byte{}) {
		return false, &privacy.FieldError{Field: "public_key", Reason: "must not be all zero"}
	}
	switch {
	case !d.KeyPinned:
		return false, nil
	case hmac.Equal(d.Key[:], key[:]):
		return false, nil
	case rekeyAllowed:
		return true, nil
	default:
		return false, fmt.Errorf("identity: device %d: %w", d.ID, ErrKeyMismatch)
	}
}
