package identity

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	"github.com/planetxlabs/dasset-gateway/pkg/throttle"
)

// fakeStore is an in-memory DeviceStore and AccountStore that counts its
// lookups. It has no write method: verification writes nothing.
type fakeStore struct {
	mu       sync.Mutex
	devices  map[privacy.BlindIndex]store.Device
	accounts map[privacy.BlindIndex]store.Account
	lookups  int
}

func newFakeStore() *fakeStore {
	return &fakeStore{
		devices:  make(map[privacy.BlindIndex]store.Device),
		accounts: make(map[privacy.BlindIndex]store.Account),
	}
}

func (f *fakeStore) DeviceByIndex(_ context.Context, idx privacy.BlindIndex) (store.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	d, ok := f.devices[idx]
	if !ok {
		return store.Device{}, fmt.Errorf("fake: device: %w", store.ErrNotFound)
	}
	return d, nil
}

func (f *fakeStore) AccountByName(_ context.Context, idx privacy.BlindIndex) (store.Account, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.accounts[idx]
	if !ok {
		return store.Account{}, fmt.Errorf("fake: account: %w", store.ErrNotFound)
	}
	return a, nil
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type fixture struct {
	keys  *privacy.Keystore
	st    *fakeStore
	clock *fakeClock
	v     *Verifier
	guard *throttle.Guard
}

func newFixture(t testing.TB, attempts int) *fixture {
	t.Helper()
	keys, err := privacy.OpenKeystore(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{keys: keys, st: newFakeStore(), clock: &fakeClock{t: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}}
	f.guard = throttle.NewGuard(throttle.GuardConfig{
		Pair: throttle.BackoffConfig{Free: attempts, Base: time.Second, Max: 10 * time.Minute, Entries: 1000},
		Now:  f.clock.Now,
	})
	f.v = NewVerifier(keys, f.st, Config{Devices: f.guard, Accounts: f.guard})
	return f
}

func (f *fixture) enroll(t testing.TB, sn, hw string) (privacy.SerialNumber, privacy.HardwareID, store.Device) {
	t.Helper()
	s, h := mustSN(t, sn), mustHW(t, hw)
	idx := f.keys.BlindIndex(s)
	d := store.Device{ID: int64(len(f.st.devices) + 1), Index: idx, Verifier: f.keys.Verifier(s, h), SealedSerial: f.keys.Seal([]byte(sn), idx[:])}
	f.st.devices[idx] = d
	return s, h, d
}

func mustSN(t testing.TB, s string) privacy.SerialNumber {
	t.Helper()
	sn, err := privacy.ParseSerialNumber(s)
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

func mustHW(t testing.TB, s string) privacy.HardwareID {
	t.Helper()
	hw, err := privacy.ParseHardwareID(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

var (
	stranger = netip.MustParseAddr("198.51.100.7")
	home     = netip.MustParseAddr("203.0.113.9")
)

func attempt(sn privacy.SerialNumber, hw privacy.HardwareID, key [32]byte, src netip.Addr) DeviceAttempt {
	return DeviceAttempt{Serial: sn, Hardware: hw, Key: key, Source: src}
}

func TestVerifyDeviceSuccess(t *testing.T) {
	f := newFixture(t, 3)
	sn, hw, want := f.enroll(t, "SN-1", "HW-1")
	d, err := f.v.VerifyDevice(context.Background(), attempt(sn, hw, [32]byte{1}, home))
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != want.ID {
		t.Fatalf("got device %d, want %d", d.ID, want.ID)
	}
	if n := f.guard.Entries(); n != 0 { // the pair was forgotten (no source limit here)
		t.Fatalf("%d throttle entries after a success, want 0", n)
	}
}

func TestUnknownAndWrongAreIdentical(t *testing.T) {
	f := newFixture(t, 5)
	sn, _, _ := f.enroll(t, "SN-1", "HW-1")
	ctx := context.Background()

	_, errWrong := f.v.VerifyDevice(ctx, attempt(sn, mustHW(t, "HW-WRONG"), [32]byte{1}, stranger))
	_, errUnknown := f.v.VerifyDevice(ctx, attempt(mustSN(t, "SN-NOPE"), mustHW(t, "HW-1"), [32]byte{1}, stranger))
	if !errors.Is(errWrong, ErrUnauthenticated) || !errors.Is(errUnknown, ErrUnauthenticated) {
		t.Fatalf("errors: wrong=%v unknown=%v", errWrong, errUnknown)
	}
	if errWrong != errUnknown || errWrong.Error() != errUnknown.Error() {
		t.Fatalf("distinguishable errors: %q vs %q", errWrong, errUnknown)
	}
	if f.st.lookups != 2 {
		t.Fatalf("looked up %d times, want 2 (same path)", f.st.lookups)
	}
}

// The finding of the hostile-caller review: ten wrong hardware ids from
// anywhere locked the serial out everywhere. Now a stranger's failures slow
// only the stranger's own (serial, source prefix).
func TestStrangerCannotLockDeviceOut(t *testing.T) {
	const attempts = 3
	f := newFixture(t, attempts)
	sn, hw, _ := f.enroll(t, "SN-1", "HW-1")
	ctx := context.Background()
	wrong := mustHW(t, "HW-WRONG")

	var throttled *ThrottledError
	for i := range 50 {
		_, err := f.v.VerifyDevice(ctx, attempt(sn, wrong, [32]byte{9}, stranger))
		if errors.As(err, &throttled) {
			break
		}
		if !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
	}
	if throttled == nil || throttled.Reason != "pair" || throttled.RetryAfter <= 0 {
		t.Fatalf("the stranger was never slowed: %+v", throttled)
	}
	// The right HWID from the stranger's prefix waits too (it is not proven).
	if _, err := f.v.VerifyDevice(ctx, attempt(sn, hw, [32]byte{1}, stranger)); !errors.Is(err, ErrThrottled) {
		t.Fatalf("unproven attempt from the throttled pair: %v", err)
	}
	// The device from its own network: admitted at once.
	if _, err := f.v.VerifyDevice(ctx, attempt(sn, hw, [32]byte{1}, home)); err != nil {
		t.Fatalf("device from its own prefix: %v", err)
	}
	// The delay grows: after the wait, one more wrong attempt, then a longer wait.
	f.clock.Advance(throttled.RetryAfter)
	if _, err := f.v.VerifyDevice(ctx, attempt(sn, wrong, [32]byte{9}, stranger)); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("after the wait: %v", err)
	}
	_, err := f.v.VerifyDevice(ctx, attempt(sn, wrong, [32]byte{9}, stranger))
	var again *ThrottledError
	if !errors.As(err, &again) || again.RetryAfter <= throttled.RetryAfter {
		t.Fatalf("second wait %+v not longer than the first %v", again, throttled.RetryAfter)
	}
}

// A device that carries its pinned key passes the source and global limits:
// a stranger in its own /24 who exhausted them cannot keep it out.
func TestPinnedKeyPassesExhaustedSource(t *testing.T) {
	f := newFixture(t, 3)
	f.guard = throttle.NewGuard(throttle.GuardConfig{
		Source: throttle.Rate{PerSecond: 0.001, Burst: 5}, Sources: 100,
		Global: throttle.Rate{PerSecond: 0.001, Burst: 5},
		Pair:   throttle.BackoffConfig{Free: 3, Base: time.Second, Max: time.Minute, Entries: 100},
		Now:    f.clock.Now,
	})
	f.v = NewVerifier(f.keys, f.st, Config{Devices: f.guard})
	sn, hw, d := f.enroll(t, "SN-1", "HW-1")
	pinned := [32]byte{7}
	d.Key, d.KeyPinned = pinned, true
	f.st.devices[d.Index] = d
	ctx := context.Background()
	neighbour := netip.MustParseAddr("203.0.113.200") // same /24 as home
	for i := range 20 {
		f.v.VerifyDevice(ctx, attempt(mustSN(t, fmt.Sprintf("SN-X%d", i)), hw, [32]byte{9}, neighbour))
	}
	if _, err := f.v.VerifyDevice(ctx, attempt(sn, hw, [32]byte{8}, home)); !errors.Is(err, ErrThrottled) {
		t.Fatalf("unproven attempt from the exhausted /24: %v", err)
	}
	if _, err := f.v.VerifyDevice(ctx, attempt(sn, hw, pinned, home)); err != nil {
		t.Fatalf("pinned key from the exhausted /24: %v", err)
	}
}

func TestUnknownSNThrottledLikeKnown(t *testing.T) {
	f := newFixture(t, 2)
	ctx := context.Background()
	_, hw, _ := f.enroll(t, "SN-REAL", "HW")
	count := func(sn string) int {
		for i := range 20 {
			_, err := f.v.VerifyDevice(ctx, attempt(mustSN(t, sn), mustHW(t, "HW-WRONG"), [32]byte{1}, stranger))
			if errors.Is(err, ErrThrottled) {
				return i
			}
		}
		return -1
	}
	if k, u := count("SN-REAL"), count("SN-GHOST"); k != u || k != 2 {
		t.Fatalf("known SN throttled after %d attempts, unknown after %d (want both 2)", k, u)
	}
	_ = hw
}

func TestRevoked(t *testing.T) {
	f := newFixture(t, 3)
	sn, hw, d := f.enroll(t, "SN-R", "HW-R")
	d.Revoked = true
	f.st.devices[d.Index] = d
	if _, err := f.v.VerifyDevice(context.Background(), attempt(sn, hw, [32]byte{1}, home)); !errors.Is(err, ErrRevoked) || !errors.Is(err, store.ErrRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	// A wrong HWID does not learn that the device is revoked.
	if _, err := f.v.VerifyDevice(context.Background(), attempt(sn, mustHW(t, "HW-X"), [32]byte{1}, home)); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("revoked, wrong HWID: %v", err)
	}
}

func TestVerifyDeviceEmptyInput(t *testing.T) {
	f := newFixture(t, 3)
	_, err := f.v.VerifyDevice(context.Background(), attempt(privacy.SerialNumber{}, mustHW(t, "x"), [32]byte{1}, home))
	var fe *privacy.FieldError
	if !errors.As(err, &fe) || fe.Field != "serial_number" {
		t.Fatalf("empty SN: %v", err)
	}
	_, err = f.v.VerifyDevice(context.Background(), attempt(mustSN(t, "x"), privacy.HardwareID{}, [32]byte{1}, home))
	if !errors.As(err, &fe) || fe.Field != "hardware_id" {
		t.Fatalf("empty HWID: %v", err)
	}
}

type failingStore struct{ *fakeStore }

func (failingStore) DeviceByIndex(context.Context, privacy.BlindIndex) (store.Device, error) {
	return store.Device{}, errors.New("disk on fire")
}

func TestStoreErrorIsNotUnauthenticated(t *testing.T) {
	f := newFixture(t, 3)
	v := NewVerifier(f.keys, failingStore{f.st}, Config{})
	_, err := v.VerifyDevice(context.Background(), attempt(mustSN(t, "SN"), mustHW(t, "HW"), [32]byte{1}, home))
	if err == nil || errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("store failure: %v", err)
	}
}

func TestCheckKey(t *testing.T) {
	k1, k2 := [32]byte{1}, [32]byte{2}
	unpinned := store.Device{ID: 1}
	pinned := store.Device{ID: 1, Key: k1, KeyPinned: true}

	if r, err := CheckKey(unpinned, k1, false); err != nil || r {
		t.Fatalf("pin: replace=%v err=%v", r, err)
	}
	if r, err := CheckKey(pinned, k1, false); err != nil || r {
		t.Fatalf("same key: replace=%v err=%v", r, err)
	}
	if r, err := CheckKey(pinned, k2, false); !errors.Is(err, ErrKeyMismatch) || r {
		t.Fatalf("other key: replace=%v err=%v", r, err)
	}
	if r, err := CheckKey(pinned, k2, true); err != nil || !r {
		t.Fatalf("rekey: replace=%v err=%v", r, err)
	}
	var fe *privacy.FieldError
	if _, err := CheckKey(unpinned, [32]byte{}, true); !errors.As(err, &fe) || fe.Field != "public_key" {
		t.Fatalf("zero key: %v", err)
	}
}

func TestVerifyAccount(t *testing.T) {
	f := newFixture(t, 2)
	ctx := context.Background()
	hash, err := HashPassword([]byte("hunter2hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	idx := f.keys.AccountIndex("alice")
	f.st.accounts[idx] = store.Account{ID: 7, NameIndex: idx, PasswordHash: hash}

	a, err := f.v.VerifyAccount(ctx, f.st, "alice", []byte("hunter2hunter2"), home)
	if err != nil || a.ID != 7 {
		t.Fatalf("good password: %v %v", a.ID, err)
	}
	_, errWrong := f.v.VerifyAccount(ctx, f.st, "alice", []byte("hunter3"), stranger)
	_, errUnknown := f.v.VerifyAccount(ctx, f.st, "bob", []byte("hunter2hunter2"), stranger)
	if errWrong != ErrUnauthenticated || errUnknown != ErrUnauthenticated {
		t.Fatalf("wrong=%v unknown=%v", errWrong, errUnknown)
	}
	// The stranger's guesses on alice: two free, then slowed.
	f.v.VerifyAccount(ctx, f.st, "alice", []byte("hunter3"), stranger)
	if _, err := f.v.VerifyAccount(ctx, f.st, "alice", []byte("hunter2hunter2"), stranger); !errors.Is(err, ErrThrottled) {
		t.Fatalf("account guessing not slowed: %v", err)
	}
	// ... but alice from her own network logs in at once.
	if _, err := f.v.VerifyAccount(ctx, f.st, "alice", []byte("hunter2hunter2"), home); err != nil {
		t.Fatalf("alice locked out by a stranger: %v", err)
	}
}

// Password checks run in the pool: a full pool refuses with ErrBusy
// without running argon2id.
func TestVerifyAccountPoolBusy(t *testing.T) {
	f := newFixture(t, 100)
	pool := throttle.NewPool(1, 0)
	f.v = NewVerifier(f.keys, f.st, Config{Passwords: pool})
	release := make(chan struct{})
	started := make(chan struct{})
	go pool.Do(context.Background(), func() { close(started); <-release })
	<-started
	defer close(release)
	if _, err := f.v.VerifyAccount(context.Background(), f.st, "alice", []byte("pw"), home); !errors.Is(err, ErrBusy) {
		t.Fatalf("full pool: %v, want ErrBusy", err)
	}
}

func benchmarkVerify(b *testing.B, known bool, rightHW bool) {
	f := newFixture(b, 1<<30) // never slowed
	sn, hw, _ := f.enroll(b, "SN-BENCH-0001", "HW-BENCH-0001")
	if !known {
		sn = mustSN(b, "SN-BENCH-9999")
	}
	if !rightHW {
		hw = mustHW(b, "HW-BENCH-WRONG")
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, err := f.v.VerifyDevice(ctx, attempt(sn, hw, [32]byte{1}, home))
		if known && rightHW && err != nil || !(known && rightHW) && !errors.Is(err, ErrUnauthenticated) {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyKnown is a successful login.
func BenchmarkVerifyKnown(b *testing.B) { benchmarkVerify(b, true, true) }

// BenchmarkVerifyKnownWrongHWID is a known SN with a wrong HWID: it should
// cost what BenchmarkVerifyUnknown costs.
func BenchmarkVerifyKnownWrongHWID(b *testing.B) { benchmarkVerify(b, true, false) }

// BenchmarkVerifyUnknown is an unknown SN.
func BenchmarkVerifyUnknown(b *testing.B) { benchmarkVerify(b, false, true) }

// The registry satisfies the interfaces declared here.
var (
	_ DeviceStore  = store.Store(nil)
	_ AccountStore = store.Store(nil)
)
