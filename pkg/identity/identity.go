// Package identity decides who a device or a client is: device verification
// (blind-index lookup, constant-time HWID verifier check, lockout, WireGuard
// key pinning), client accounts (argon2id passwords), and bearer tokens.
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
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// Errors of verification (match with errors.Is).
var (
	// ErrUnauthenticated is the one answer to an unknown serial number, a
	// wrong hardware id, an unknown account and a wrong password: callers
	// cannot tell them apart.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrLockedOut refuses a subject with too many recent failures, before
	// its credentials are checked (a correct HWID is refused too).
	ErrLockedOut = errors.New("locked out: too many failed attempts")
	// ErrRevoked refuses an authentic but revoked device. It is the store's
	// sentinel, so either package's name matches.
	ErrRevoked = store.ErrRevoked
	// ErrKeyMismatch refuses a WireGuard key other than the pinned one when
	// rekeying is not allowed.
	ErrKeyMismatch = errors.New("wireguard key does not match the pinned key")
)

// Lockout defaults, used for zero (or negative) Config values.
const (
	DefaultLockoutAttempts = 10
	DefaultLockoutWindow   = 15 * time.Minute
)

// DeviceStore is what device verification needs of the registry
// (pkg/store.Store satisfies it).
type DeviceStore interface {
	DeviceByIndex(ctx context.Context, idx privacy.BlindIndex) (store.Device, error)
	RecordAuthFailure(ctx context.Context, idx privacy.BlindIndex, at time.Time) error
	CountAuthFailures(ctx context.Context, idx privacy.BlindIndex, since time.Time) (int, error)
	ClearAuthFailures(ctx context.Context, idx privacy.BlindIndex) error
}

// AccountStore is what account verification needs beyond DeviceStore's
// failure records (pkg/store.Store satisfies it).
type AccountStore interface {
	AccountByName(ctx context.Context, nameIndex privacy.BlindIndex) (store.Account, error)
}

// Config tunes lockout.
type Config struct {
	// LockoutAttempts failures within LockoutWindow lock a subject (a
	// serial number or an account name, known or not) out until the oldest
	// of them leaves the window.
	LockoutAttempts int
	LockoutWindow   time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Verifier verifies devices and accounts. It is safe for concurrent use.
type Verifier struct {
	keys *privacy.Keystore
	st   DeviceStore
	cfg  Config
}

// NewVerifier makes a Verifier; zero Config fields take the defaults.
func NewVerifier(keys *privacy.Keystore, st DeviceStore, cfg Config) *Verifier {
	if cfg.LockoutAttempts <= 0 {
		cfg.LockoutAttempts = DefaultLockoutAttempts
	}
	if cfg.LockoutWindow <= 0 {
		cfg.LockoutWindow = DefaultLockoutWindow
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Verifier{keys: keys, st: st, cfg: cfg}
}

// VerifyDevice checks a device's serial number and hardware id.
//
// The serial number's blind index finds the device; the verifier of (SN,
// HWID) is compared in constant time with the stored one, or, for an unknown
// SN, with the keystore's dummy verifier, so both take the same path and
// work. Either failure records an auth failure for the index and returns
// ErrUnauthenticated. A subject with LockoutAttempts failures within
// LockoutWindow gets ErrLockedOut before any check. An authentic revoked
// device gets ErrRevoked. Success clears the failures, writing only when
// there were some (the count read for the lockout check says so).
func (v *Verifier) VerifyDevice(ctx context.Context, sn privacy.SerialNumber, hw privacy.HardwareID) (store.Device, error) {
	if sn.IsZero() {
		return store.Device{}, &privacy.FieldError{Field: "serial_number", Reason: "must not be empty"}
	}
	if hw.Reveal() == "" {
		return store.Device{}, &privacy.FieldError{Field: "hardware_id", Reason: "must not be empty"}
	}
	idx := v.keys.BlindIndex(sn)
	now := v.cfg.Now()
	failures, err := v.lockout(ctx, idx, now)
	if err != nil {
		return store.Device{}, err
	}

	d, err := v.st.DeviceByIndex(ctx, idx)
	known := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Device{}, fmt.Errorf("identity: look up device: %w", err)
	}
	want := v.keys.DummyVerifier()
	if known {
		want = d.Verifier
	}
	got := v.keys.Verifier(sn, hw)
	if !hmac.Equal(got[:], want[:]) || !known {
		return store.Device{}, v.fail(ctx, idx, now)
	}
	if d.Revoked {
		return store.Device{}, fmt.Errorf("identity: device %d: %w", d.ID, ErrRevoked)
	}
	if failures > 0 {
		if err := v.st.ClearAuthFailures(ctx, idx); err != nil {
			return store.Device{}, fmt.Errorf("identity: clear auth failures: %w", err)
		}
	}
	return d, nil
}

// VerifyAccount checks a client's account name and password. An unknown
// account runs DummyPasswordCheck, so it costs what a wrong password costs;
// both record an auth failure under the account's blind index and return
// ErrUnauthenticated. Lockout works as for devices.
func (v *Verifier) VerifyAccount(ctx context.Context, accounts AccountStore, name string, password []byte) (store.Account, error) {
	if name == "" {
		return store.Account{}, &privacy.FieldError{Field: "account", Reason: "must not be empty"}
	}
	idx := v.keys.AccountIndex(name)
	now := v.cfg.Now()
	failures, err := v.lockout(ctx, idx, now)
	if err != nil {
		return store.Account{}, err
	}
	a, err := accounts.AccountByName(ctx, idx)
	if errors.Is(err, store.ErrNotFound) {
		DummyPasswordCheck()
		return store.Account{}, v.fail(ctx, idx, now)
	}
	if err != nil {
		return store.Account{}, fmt.Errorf("identity: look up account: %w", err)
	}
	ok, err := CheckPassword(a.PasswordHash, password)
	if err != nil {
		return store.Account{}, fmt.Errorf("identity: account %d: %w", a.ID, err)
	}
	if !ok {
		return store.Account{}, v.fail(ctx, idx, now)
	}
	if failures > 0 {
		if err := v.st.ClearAuthFailures(ctx, idx); err != nil {
			return store.Account{}, fmt.Errorf("identity: clear auth failures: %w", err)
		}
	}
	return a, nil
}

// lockout returns the subject's recent failures, or ErrLockedOut.
func (v *Verifier) lockout(ctx context.Context, idx privacy.BlindIndex, now time.Time) (int, error) {
	n, err := v.st.CountAuthFailures(ctx, idx, now.Add(-v.cfg.LockoutWindow))
	if err != nil {
		return 0, fmt.Errorf("identity: count auth failures: %w", err)
	}
	if n >= v.cfg.LockoutAttempts {
		// Not recorded: an attacker cannot extend the lockout forever.
		return n, ErrLockedOut
	}
	return n, nil
}

func (v *Verifier) fail(ctx context.Context, idx privacy.BlindIndex, now time.Time) error {
	if err := v.st.RecordAuthFailure(ctx, idx, now); err != nil {
		return fmt.Errorf("identity: record auth failure: %w", err)
	}
	return ErrUnauthenticated
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
