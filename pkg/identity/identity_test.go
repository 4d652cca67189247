package identity

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// fakeStore is an in-memory DeviceStore and AccountStore that counts its
// calls.
type fakeStore struct {
	mu       sync.Mutex
	devices  map[privacy.BlindIndex]store.Device
	accounts map[privacy.BlindIndex]store.Account
	failures map[privacy.BlindIndex][]time.Time
	records  int
	clears   int
	lookups  int
}

func newFakeStore() *fakeStore {
	return &fakeStore{
		devices:  make(map[privacy.BlindIndex]store.Device),
		accounts: make(map[privacy.BlindIndex]store.Account),
		failures: make(map[privacy.BlindIndex][]time.Time),
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

// maxKept bounds the failures kept per index (enough for any lockout here).
const maxKept = 64

func (f *fakeStore) RecordAuthFailure(_ context.Context, idx privacy.BlindIndex, at time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records++
	fs := append(f.failures[idx], at)
	if len(fs) > maxKept {
		fs = fs[len(fs)-maxKept:]
	}
	f.failures[idx] = fs
	return nil
}

func (f *fakeStore) CountAuthFailures(_ context.Context, idx privacy.BlindIndex, since time.Time) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, t := range f.failures[idx] {
		if !t.Before(since) {
			n++
		}
	}
	return n, nil
}

func (f *fakeStore) ClearAuthFailures(_ context.Context, idx privacy.BlindIndex) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clears++
	delete(f.failures, idx)
	return nil
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
}

func newFixture(t testing.TB, attempts int) *fixture {
	t.Helper()
	keys, err := privacy.OpenKeystore(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{keys: keys, st: newFakeStore(), clock: &fakeClock{t: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}}
	f.v = NewVerifier(keys, f.st, Config{LockoutAttempts: attempts, LockoutWindow: 10 * time.Minute, Now: f.clock.Now})
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

func TestVerifyDeviceSuccess(t *testing.T) {
	f := newFixture(t, 3)
	sn, hw, want := f.enroll(t, "SN-1", "HW-1")
	d, err := f.v.VerifyDevice(context.Background(), sn, hw)
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != want.ID {
		t.Fatalf("got device %d, want %d", d.ID, want.ID)
	}
	if f.st.records != 0 || f.st.clears != 0 {
		t.Fatalf("a clean login wrote: records=%d clears=%d", f.st.records, f.st.clears)
	}
}

func TestUnknownAndWrongAreIdentical(t *testing.T) {
	f := newFixture(t, 5)
	sn, _, _ := f.enroll(t, "SN-1", "HW-1")
	ctx := context.Background()

	_, errWrong := f.v.VerifyDevice(ctx, sn, mustHW(t, "HW-WRONG"))
	_, errUnknown := f.v.VerifyDevice(ctx, mustSN(t, "SN-NOPE"), mustHW(t, "HW-1"))
	if !errors.Is(errWrong, ErrUnauthenticated) || !errors.Is(errUnknown, ErrUnauthenticated) {
		t.Fatalf("errors: wrong=%v unknown=%v", errWrong, errUnknown)
	}
	if errWrong != errUnknown || errWrong.Error() != errUnknown.Error() {
		t.Fatalf("distinguishable errors: %q vs %q", errWrong, errUnknown)
	}
	if f.st.records != 2 {
		t.Fatalf("recorded %d failures, want 2", f.st.records)
	}
	if f.st.lookups != 2 {
		t.Fatalf("looked up %d times, want 2 (same path)", f.st.lookups)
	}
	for _, s := range []string{"SN-1", "SN-NOPE"} {
		n, _ := f.st.CountAuthFailures(ctx, f.keys.BlindIndex(mustSN(t, s)), time.Time{})
		if n != 1 {
			t.Fatalf("%s: %d failures recorded under its index, want 1", s, n)
		}
	}
}

func TestLockout(t *testing.T) {
	const attempts = 3
	f := newFixture(t, attempts)
	sn, hw, _ := f.enroll(t, "SN-1", "HW-1")
	ctx := context.Background()
	wrong := mustHW(t, "HW-WRONG")

	for i := range attempts {
		if _, err := f.v.VerifyDevice(ctx, sn, wrong); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
		f.clock.Advance(time.Minute)
	}
	// Locked out: even the right HWID is refused, and nothing more is recorded.
	records := f.st.records
	if _, err := f.v.VerifyDevice(ctx, sn, hw); !errors.Is(err, ErrLockedOut) {
		t.Fatalf("right HWID while locked out: %v", err)
	}
	if _, err := f.v.VerifyDevice(ctx, sn, wrong); !errors.Is(err, ErrLockedOut) {
		t.Fatalf("wrong HWID while locked out: %v", err)
	}
	if f.st.records != records {
		t.Fatal("a refused locked-out attempt was recorded")
	}
	// The first failure (at 12:00) leaves the 10-minute window at 12:10.
	f.clock.Advance(6*time.Minute + time.Second) // 12:09:01: failures at 12:00, 12:01, 12:02 still inside
	if _, err := f.v.VerifyDevice(ctx, sn, hw); !errors.Is(err, ErrLockedOut) {
		t.Fatalf("inside the window: %v", err)
	}
	f.clock.Advance(time.Minute) // 12:10:01
	d, err := f.v.VerifyDevice(ctx, sn, hw)
	if err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if d.ID == 0 {
		t.Fatal("no device")
	}
	// Success with failures on record cleared them, once.
	if f.st.clears != 1 {
		t.Fatalf("clears = %d, want 1", f.st.clears)
	}
	if n, _ := f.st.CountAuthFailures(ctx, d.Index, time.Time{}); n != 0 {
		t.Fatalf("%d failures left after success", n)
	}
	if _, err := f.v.VerifyDevice(ctx, sn, hw); err != nil || f.st.clears != 1 {
		t.Fatalf("second login: err=%v clears=%d", err, f.st.clears)
	}
}

func TestLockoutUnknownSN(t *testing.T) {
	f := newFixture(t, 2)
	ctx := context.Background()
	sn, hw := mustSN(t, "SN-GHOST"), mustHW(t, "HW")
	for range 2 {
		if _, err := f.v.VerifyDevice(ctx, sn, hw); !errors.Is(err, ErrUnauthenticated) {
			t.Fatal(err)
		}
	}
	if _, err := f.v.VerifyDevice(ctx, sn, hw); !errors.Is(err, ErrLockedOut) {
		t.Fatalf("unknown SN not locked out: %v", err)
	}
	// Enrolled meanwhile: still locked until the window passes.
	f.enroll(t, "SN-GHOST", "HW")
	if _, err := f.v.VerifyDevice(ctx, sn, hw); !errors.Is(err, ErrLockedOut) {
		t.Fatalf("after enrolment: %v", err)
	}
	f.clock.Advance(11 * time.Minute)
	if _, err := f.v.VerifyDevice(ctx, sn, hw); err != nil {
		t.Fatalf("after the window: %v", err)
	}
}

func TestRevoked(t *testing.T) {
	f := newFixture(t, 3)
	sn, hw, d := f.enroll(t, "SN-R", "HW-R")
	d.Revoked = true
	f.st.devices[d.Index] = d
	if _, err := f.v.VerifyDevice(context.Background(), sn, hw); !errors.Is(err, ErrRevoked) || !errors.Is(err, store.ErrRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	// A wrong HWID does not learn that the device is revoked.
	if _, err := f.v.VerifyDevice(context.Background(), sn, mustHW(t, "HW-X")); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("revoked, wrong HWID: %v", err)
	}
}

func TestVerifyDeviceEmptyInput(t *testing.T) {
	f := newFixture(t, 3)
	_, err := f.v.VerifyDevice(context.Background(), privacy.SerialNumber{}, mustHW(t, "x"))
	var fe *privacy.FieldError
	if !errors.As(err, &fe) || fe.Field != "serial_number" {
		t.Fatalf("empty SN: %v", err)
	}
	_, err = f.v.VerifyDevice(context.Background(), mustSN(t, "x"), privacy.HardwareID{})
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
	_, err := v.VerifyDevice(context.Background(), mustSN(t, "SN"), mustHW(t, "HW"))
	if err == nil || errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("store failure: %v", err)
	}
	if f.st.records != 0 {
		t.Fatal("a store failure counted as an auth failure")
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

	a, err := f.v.VerifyAccount(ctx, f.st, "alice", []byte("hunter2hunter2"))
	if err != nil || a.ID != 7 {
		t.Fatalf("good password: %v %v", a.ID, err)
	}
	_, errWrong := f.v.VerifyAccount(ctx, f.st, "alice", []byte("hunter3"))
	_, errUnknown := f.v.VerifyAccount(ctx, f.st, "bob", []byte("hunter2hunter2"))
	if errWrong != ErrUnauthenticated || errUnknown != ErrUnauthenticated {
		t.Fatalf("wrong=%v unknown=%v", errWrong, errUnknown)
	}
	if _, err := f.v.VerifyAccount(ctx, f.st, "alice", []byte("hunter3")); err != ErrUnauthenticated {
		t.Fatal(err)
	}
	if _, err := f.v.VerifyAccount(ctx, f.st, "alice", []byte("hunter2hunter2")); !errors.Is(err, ErrLockedOut) {
		t.Fatalf("account lockout: %v", err)
	}
	// Account and device indexes are apart: a device SN "alice" is not locked.
	if n, _ := f.st.CountAuthFailures(ctx, f.keys.BlindIndex(mustSN(t, "alice")), time.Time{}); n != 0 {
		t.Fatal("account failures counted under the device index")
	}
}

func benchmarkVerify(b *testing.B, known bool, rightHW bool) {
	f := newFixture(b, 1000) // the fake keeps at most 64 failures: never locked
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
		_, err := f.v.VerifyDevice(ctx, sn, hw)
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
