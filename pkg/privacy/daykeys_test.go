package privacy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// fleetKeystores opens a keystore and n more restored from its fleet keys
// file (as joining gateways do).
func fleetKeystores(t *testing.T, n int) []*privacy.Keystore {
	t.Helper()
	first, err := privacy.OpenKeystore(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	if err := first.BackupFleet(&file, []byte("p")); err != nil {
		t.Fatal(err)
	}
	out := []*privacy.Keystore{first}
	for range n {
		dir := filepath.Join(t.TempDir(), "keys")
		if _, err := privacy.RestoreKeystore(bytes.NewReader(file.Bytes()), []byte("p"), dir); err != nil {
			t.Fatal(err)
		}
		k, err := privacy.OpenKeystore(dir)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k)
	}
	return out
}

func openRegistry(t *testing.T) *store.SQLite {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func mustPseudonym(t *testing.T, k *privacy.Keystore, day time.Time, idx privacy.BlindIndex) privacy.Pseudonym {
	t.Helper()
	p, err := k.Pseudonym(day, idx)
	if err != nil {
		t.Fatalf("Pseudonym(%s): %v", day.Format(time.DateOnly), err)
	}
	return p
}

// TestSharedDayKeys: gateways of one fleet sharing their day keys through
// one registry give a subject the same pseudonym on a day, whichever made
// the day's key; a subject's pseudonyms on one gateway include days another
// made; a destruction by one is refused by the others without a restart
// (at once for PseudonymsFor, within the refresh for Pseudonym) and
// survives their restart; a registry restored from before the destruction
// has the destroyed keys deleted when a gateway starts on it.
func TestSharedDayKeys(t *testing.T) {
	ctx := context.Background()
	ks := fleetKeystores(t, 2)
	a, b, c := ks[0], ks[1], ks[2]
	st := openRegistry(t)
	for i, k := range []*privacy.Keystore{a, b} {
		if err := k.ShareDayKeys(ctx, st, 10*time.Millisecond); err != nil {
			t.Fatalf("keystore %d: %v", i, err)
		}
	}
	// c re-reads only when asked (PseudonymsFor).
	if err := c.ShareDayKeys(ctx, st, time.Hour); err != nil {
		t.Fatal(err)
	}
	sn, err := privacy.ParseSerialNumber("SN-SHARED")
	if err != nil {
		t.Fatal(err)
	}
	idx := a.BlindIndex(sn)
	d1 := time.Date(2030, 5, 1, 8, 0, 0, 0, time.UTC)
	d2, d3 := d1.AddDate(0, 0, 1), d1.AddDate(0, 0, 2)

	p1 := mustPseudonym(t, a, d1, idx) // a makes d1
	if got := mustPseudonym(t, b, d1.Add(9*time.Hour), idx); got != p1 {
		t.Fatal("two gateways of the fleet give one subject different pseudonyms on one day")
	}
	p2 := mustPseudonym(t, b, d2, idx) // b makes d2
	if got := mustPseudonym(t, a, d2, idx); got != p2 {
		t.Fatal("the gateway that did not make the day's key gives another pseudonym")
	}
	p3 := mustPseudonym(t, b, d3, idx)
	if p1 == p2 || p2 == p3 {
		t.Fatal("one pseudonym on two days")
	}
	all, err := c.PseudonymsFor(ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all["2030-05-01"] != p1 || all["2030-05-02"] != p2 || all["2030-05-03"] != p3 {
		t.Fatalf("PseudonymsFor on a third gateway: %v; want the three days the others made", all)
	}
	// The registry holds the keys wrapped only: what it holds does not
	// open without the fleet's KEK (another keystore cannot start on it).
	_, wrapped, err := st.DayKeys(ctx)
	if err != nil || len(wrapped) != 3 {
		t.Fatalf("registry day keys: %d, %v", len(wrapped), err)
	}
	stranger, err := privacy.OpenKeystore(filepath.Join(t.TempDir(), "stranger"))
	if err != nil {
		t.Fatal(err)
	}
	if err := stranger.ShareDayKeys(ctx, st, time.Hour); !errors.Is(err, privacy.ErrDayKeyUnwrap) {
		t.Fatalf("a keystore of another fleet shared the registry's day keys: %v", err)
	}

	// An old copy of the registry, from before the destruction.
	old := openRegistry(t)
	for d, w := range wrapped {
		if _, _, err := old.EnsureDayKey(ctx, d, w); err != nil {
			t.Fatal(err)
		}
	}

	// a destroys d1 and d2 (the pruner's cut at d3).
	n, err := a.DestroyKeysBefore(d3)
	if err != nil || n != 2 {
		t.Fatalf("DestroyKeysBefore: %d, %v; want the 2 registry keys", n, err)
	}
	if _, err := a.Pseudonym(d1, idx); !errors.Is(err, privacy.ErrKeyDestroyed) {
		t.Fatalf("a still derives a destroyed day: %v", err)
	}
	all, err = c.PseudonymsFor(ctx, idx)
	if err != nil || len(all) != 1 || all["2030-05-03"] != p3 {
		t.Fatalf("PseudonymsFor on another gateway after the destruction: %v, %v; want d3 only", all, err)
	}
	if _, err := c.Pseudonym(d2, idx); !errors.Is(err, privacy.ErrKeyDestroyed) {
		t.Fatalf("c derives d2 after PseudonymsFor learnt its destruction: %v", err)
	}
	poll.Must(t, 5*time.Second, "b refuses the destroyed day", func() error {
		if _, err := b.Pseudonym(d2, idx); !errors.Is(err, privacy.ErrKeyDestroyed) {
			return fmt.Errorf("Pseudonym(d2) on b: %v", err)
		}
		return nil
	})
	if got := mustPseudonym(t, b, d3, idx); got != p3 {
		t.Fatal("a retained day's pseudonym changed")
	}
	if h := b.Horizon(); h != "2030-05-03" {
		t.Fatalf("b's horizon %q, want 2030-05-03", h)
	}
	b2, err := privacy.OpenKeystore(b.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if h := b2.Horizon(); h != "2030-05-03" {
		t.Fatalf("b's horizon after a restart %q: the destruction it learnt was not kept", h)
	}

	// b restarts on the old registry copy: the keys its horizon destroyed
	// are deleted from it, and the days stay refused.
	if err := b2.ShareDayKeys(ctx, old, time.Hour); err != nil {
		t.Fatal(err)
	}
	h, left, err := old.DayKeys(ctx)
	if err != nil || h != "2030-05-03" || len(left) != 1 {
		t.Fatalf("old registry after a gateway started on it: horizon %q, %d keys, %v; want 2030-05-03 and 1", h, len(left), err)
	}
	if _, err := b2.Pseudonym(d1, idx); !errors.Is(err, privacy.ErrKeyDestroyed) {
		t.Fatalf("a destroyed day came back with an old registry: %v", err)
	}
	if got := mustPseudonym(t, b2, d3, idx); got != p3 {
		t.Fatal("the retained day's key from the old registry differs")
	}

	// A keys backup of a gateway sharing its day keys works (the keys it
	// uses are in the registry, not in its days/ directory) and restores.
	var backup bytes.Buffer
	if err := b2.Backup(&backup, []byte("p")); err != nil {
		t.Fatalf("keys backup of a keystore with shared day keys: %v", err)
	}
	info, err := privacy.RestoreKeystore(&backup, []byte("p"), filepath.Join(t.TempDir(), "restored"))
	if err != nil || info.DayKeys != 0 || info.Horizon != "2030-05-03" {
		t.Fatalf("restore: %+v, %v; want no day key files and the horizon", info, err)
	}
}

// unreachable wraps a registry's day keys: while down, every call fails
// (DayKeys first waits until released, like a database that does not
// answer); calls counts the calls that reached it.
type unreachable struct {
	privacy.SharedDayKeys
	down    atomic.Bool
	release chan struct{}
	calls   atomic.Int32
}

var errDown = errors.New("registry unreachable")

func (u *unreachable) EnsureDayKey(ctx context.Context, day string, wrapped []byte) ([]byte, string, error) {
	u.calls.Add(1)
	if u.down.Load() {
		return nil, "", errDown
	}
	return u.SharedDayKeys.EnsureDayKey(ctx, day, wrapped)
}

func (u *unreachable) DayKeys(ctx context.Context) (string, map[string][]byte, error) {
	u.calls.Add(1)
	if u.down.Load() {
		select {
		case <-u.release:
		case <-ctx.Done():
		}
		return "", nil, errDown
	}
	return u.SharedDayKeys.DayKeys(ctx)
}

// TestSharedDayKeysRegistryDown: pseudonymising runs on the login path.
// While the registry does not answer, a day whose key is in use keeps it
// (the re-read runs in the background and the call returns while it
// hangs), and a day without a key fails — once against the registry, then
// at once without asking it again for a second.
func TestSharedDayKeysRegistryDown(t *testing.T) {
	ctx := context.Background()
	k := fleetKeystores(t, 0)[0]
	reg := &unreachable{SharedDayKeys: openRegistry(t), release: make(chan struct{})}
	if err := k.ShareDayKeys(ctx, reg, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	sn, err := privacy.ParseSerialNumber("SN-DOWN")
	if err != nil {
		t.Fatal(err)
	}
	idx := k.BlindIndex(sn)
	d1 := time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC)
	p1 := mustPseudonym(t, k, d1, idx)

	reg.down.Store(true)
	defer close(reg.release)
	before := reg.calls.Load()
	poll.Must(t, 5*time.Second, "a background re-read hangs on the registry", func() error {
		if got := mustPseudonym(t, k, d1, idx); got != p1 {
			t.Fatal("the day's pseudonym changed while the registry is away")
		}
		if reg.calls.Load() == before {
			return errors.New("no re-read started yet")
		}
		return nil
	})
	// The re-read still hangs (release is open): the day in use answers.
	if got := mustPseudonym(t, k, d1, idx); got != p1 {
		t.Fatal("the day's pseudonym changed while the registry is away")
	}

	d2 := d1.AddDate(0, 0, 1)
	if _, err := k.Pseudonym(d2, idx); !errors.Is(err, errDown) {
		t.Fatalf("a new day with the registry away: %v, want its error", err)
	}
	n := reg.calls.Load()
	if _, err := k.Pseudonym(d2, idx); !errors.Is(err, errDown) {
		t.Fatalf("a new day again: %v, want the error again", err)
	}
	if got := reg.calls.Load(); got != n {
		t.Fatalf("the second attempt within a second asked the registry again (%d calls, then %d)", n, got)
	}
}

// sharingPair is two members of one fleet sharing their day keys through
// one registry (re-read hourly: only when a test asks), and the blind index
// of serial.
func sharingPair(t *testing.T, serial string) (a, b *privacy.Keystore, st *store.SQLite, idx privacy.BlindIndex) {
	t.Helper()
	ks := fleetKeystores(t, 1)
	st = openRegistry(t)
	for _, k := range ks {
		if err := k.ShareDayKeys(context.Background(), st, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	sn, err := privacy.ParseSerialNumber(serial)
	if err != nil {
		t.Fatal(err)
	}
	return ks[0], ks[1], st, ks[0].BlindIndex(sn)
}

// TestDayKEKRotation: after a rotation of the day-key KEK (rotate on one
// member, update the others from its fleet keys file, restart, retire the
// previous KEK everywhere) the fleet pseudonymises as before, the registry's
// keys are rewrapped under the new KEK, and the wrapped keys of a registry
// backup from before the rotation, which the old KEK still opens, open with
// no keystore of the fleet.
func TestDayKEKRotation(t *testing.T) {
	ctx := context.Background()
	a, b, st, idx := sharingPair(t, "SN-ROTATE")
	d1 := time.Date(2030, 7, 1, 0, 0, 0, 0, time.UTC)
	d2 := d1.AddDate(0, 0, 1)
	p1, p2 := mustPseudonym(t, a, d1, idx), mustPseudonym(t, b, d2, idx)
	_, before, err := st.DayKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	backup := openRegistry(t) // a database backup from before the rotation
	for d, w := range before {
		if _, _, err := backup.EnsureDayKey(ctx, d, w); err != nil {
			t.Fatal(err)
		}
	}

	if err := privacy.RotateDayKEK(a.Dir()); err != nil {
		t.Fatal(err)
	}
	if err := privacy.RotateDayKEK(a.Dir()); !errors.Is(err, privacy.ErrRotationUnderWay) {
		t.Fatalf("a second rotation before the retirement: %v", err)
	}
	a2, err := privacy.OpenKeystore(a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	if err := a2.BackupFleet(&file, []byte("p")); err != nil {
		t.Fatal(err)
	}
	// A keystore of another fleet is not updated from it.
	other := fleetKeystores(t, 0)[0]
	if err := privacy.UpdateFleetKeys(bytes.NewReader(file.Bytes()), []byte("p"), other.Dir()); err == nil || !strings.Contains(err.Error(), "is of keystore") {
		t.Fatalf("update of another fleet's keystore: %v", err)
	}
	if err := privacy.UpdateFleetKeys(bytes.NewReader(file.Bytes()), []byte("p"), b.Dir()); err != nil {
		t.Fatal(err)
	}
	b2, err := privacy.OpenKeystore(b.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if b2.GatewayPublicKey() != b.GatewayPublicKey() {
		t.Fatal("the update replaced the member's own WireGuard key")
	}
	// The restarted gateways rewrap the registry's keys.
	for _, k := range []*privacy.Keystore{a2, b2} {
		if err := k.ShareDayKeys(ctx, st, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	_, after, err := st.DayKeys(ctx)
	if err != nil || len(after) != 2 {
		t.Fatalf("registry after the restart: %d keys, %v", len(after), err)
	}
	for d, w := range after {
		if bytes.Equal(w, before[d]) {
			t.Fatalf("the key of %s was not rewrapped", d)
		}
	}

	for _, k := range []*privacy.Keystore{a2, b2} {
		if err := privacy.RetireDayKEK(k.Dir()); err != nil {
			t.Fatal(err)
		}
	}
	if err := privacy.RetireDayKEK(a2.Dir()); err == nil {
		t.Fatal("retired a previous KEK twice")
	}
	for _, k := range []*privacy.Keystore{a2, b2} {
		r, err := privacy.OpenKeystore(k.Dir())
		if err != nil {
			t.Fatal(err)
		}
		if err := r.ShareDayKeys(ctx, st, time.Hour); err != nil {
			t.Fatal(err)
		}
		if mustPseudonym(t, r, d1, idx) != p1 || mustPseudonym(t, r, d2, idx) != p2 {
			t.Fatal("a pseudonym changed across the rotation")
		}
		if err := r.ShareDayKeys(ctx, backup, time.Hour); !errors.Is(err, privacy.ErrDayKeyUnwrap) {
			t.Fatalf("after the retirement a fleet keystore opens a pre-rotation backup's day keys: %v", err)
		}
	}
	// The control: the old KEK (a's keystore as loaded before the
	// rotation) still opens that backup — what retiring it everywhere ends.
	if err := a.ShareDayKeys(ctx, backup, time.Hour); err != nil {
		t.Fatalf("the old KEK does not open the pre-rotation backup: %v", err)
	}
	if mustPseudonym(t, a, d1, idx) != p1 {
		t.Fatal("the old KEK opens the backup's day key but it differs")
	}
}

// TestSharedDayKeysImportFiles: a gateway that made day keys as files
// before sharing them (an upgrade) offers them to the registry, so its
// pseudonyms of those days stay the same and another gateway of the fleet
// (whose fleet keys file holds no day key) derives them too.
func TestSharedDayKeysImportFiles(t *testing.T) {
	ctx := context.Background()
	ks := fleetKeystores(t, 1)
	a, b := ks[0], ks[1]
	sn, err := privacy.ParseSerialNumber("SN-IMPORT")
	if err != nil {
		t.Fatal(err)
	}
	idx := a.BlindIndex(sn)
	d1 := time.Date(2030, 8, 1, 0, 0, 0, 0, time.UTC)
	before := mustPseudonym(t, a, d1, idx) // a key file, before sharing
	if got := mustPseudonym(t, b, d1, idx); got == before {
		t.Fatal("the control failed: unshared keystores gave one pseudonym")
	}
	st := openRegistry(t)
	if err := a.ShareDayKeys(ctx, st, time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := mustPseudonym(t, a, d1, idx); got != before {
		t.Fatal("sharing changed the pseudonym of a day whose key was a file")
	}
	// b made its own file for d1 before sharing: the registry's (a's) wins.
	if err := b.ShareDayKeys(ctx, st, time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := mustPseudonym(t, b, d1, idx); got != before {
		t.Fatal("another gateway of the fleet derives another pseudonym for the imported day")
	}
}

// BenchmarkPseudonym: the connection log pseudonymises on the login path.
// "files" is a single gateway's day key (the reference), "shared" a fleet
// gateway's, kept in the registry and cached: the same work once cached.
func BenchmarkPseudonym(b *testing.B) {
	ctx := context.Background()
	sn, err := privacy.ParseSerialNumber("SN-BENCH")
	if err != nil {
		b.Fatal(err)
	}
	for _, shared := range []bool{false, true} {
		name := map[bool]string{false: "files", true: "shared"}[shared]
		b.Run(name, func(b *testing.B) {
			k, err := privacy.OpenKeystore(filepath.Join(b.TempDir(), "keys"))
			if err != nil {
				b.Fatal(err)
			}
			if shared {
				st, err := store.OpenSQLite(ctx, filepath.Join(b.TempDir(), "registry.db"))
				if err != nil {
					b.Fatal(err)
				}
				defer st.Close()
				if err := k.ShareDayKeys(ctx, st, 30*time.Second); err != nil {
					b.Fatal(err)
				}
			}
			idx, now := k.BlindIndex(sn), time.Now()
			if _, err := k.Pseudonym(now, idx); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := k.Pseudonym(now, idx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestSharedDayKeysRotationHalfDone: a gateway whose keystore has not yet
// taken a rotated KEK (step 2 of a rotation not done on it while another
// member restarted and rewrapped the registry's keys) cannot open the
// registry's keys any more; a destruction made meanwhile by another member
// still reaches it at its next re-read: its cached key of the destroyed day
// is dropped and the horizon recorded, instead of the day staying linkable
// on it until it restarts.
func TestSharedDayKeysRotationHalfDone(t *testing.T) {
	ctx := context.Background()
	a, b, st, idx := sharingPair(t, "SN-HALF-ROTATED")
	d1 := time.Date(2030, 8, 1, 0, 0, 0, 0, time.UTC)
	d2 := d1.AddDate(0, 0, 1)
	p1 := mustPseudonym(t, a, d1, idx)
	if mustPseudonym(t, b, d1, idx) != p1 {
		t.Fatal("the members pseudonymise d1 apart")
	}
	mustPseudonym(t, a, d2, idx)

	if err := privacy.RotateDayKEK(a.Dir()); err != nil {
		t.Fatal(err)
	}
	a2, err := privacy.OpenKeystore(a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if err := a2.ShareDayKeys(ctx, st, time.Hour); err != nil { // rewraps under the new KEK
		t.Fatal(err)
	}
	// b (old KEK only) cannot re-read the registry, and keeps its cached
	// key of d1 while d1 is not destroyed (the control).
	if err := b.SyncDayKeys(ctx); !errors.Is(err, privacy.ErrDayKeyUnwrap) {
		t.Fatalf("re-read by the member without the new KEK: %v, want ErrDayKeyUnwrap", err)
	}
	if p, err := b.Pseudonym(d1, idx); err != nil || p != p1 {
		t.Fatalf("b's cached key of d1 before the destruction: %v, %v", p, err)
	}

	if n, err := a2.DestroyKeysBefore(d2); err != nil || n == 0 {
		t.Fatalf("DestroyKeysBefore: %d, %v", n, err)
	}
	if err := b.SyncDayKeys(ctx); !errors.Is(err, privacy.ErrDayKeyUnwrap) {
		t.Fatalf("re-read by the member without the new KEK: %v, want ErrDayKeyUnwrap", err)
	}
	if _, err := b.Pseudonym(d1, idx); !errors.Is(err, privacy.ErrKeyDestroyed) {
		t.Fatalf("b pseudonymises the destroyed day after re-reading the registry: %v, want ErrKeyDestroyed", err)
	}
	if h := b.Horizon(); h != d2.Format(time.DateOnly) {
		t.Fatalf("b's horizon %q, want %s", h, d2.Format(time.DateOnly))
	}
}

// A retained day's pseudonym never changes while the shared day keys are
// re-read under it: with a refresh so short that every Pseudonym starts a
// background re-read, concurrent callers all get the first answer (the
// re-read used to clear the cached key in place while a caller was still
// hashing with it).
func TestSharedDayKeysStableUnderRefresh(t *testing.T) {
	ctx := context.Background()
	k := fleetKeystores(t, 0)[0]
	if err := k.ShareDayKeys(ctx, openRegistry(t), time.Nanosecond); err != nil {
		t.Fatal(err)
	}
	sn, err := privacy.ParseSerialNumber("SN-STABLE")
	if err != nil {
		t.Fatal(err)
	}
	idx := k.BlindIndex(sn)
	day := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	want := mustPseudonym(t, k, day, idx)
	var wrong atomic.Int64
	done := make(chan struct{})
	const workers, rounds = 4, 3000
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for range rounds {
				p, err := k.Pseudonym(day, idx)
				if err != nil || p != want {
					wrong.Add(1)
				}
			}
		}()
	}
	for range workers {
		<-done
	}
	if n := wrong.Load(); n > 0 {
		t.Fatalf("%d of %d pseudonyms of a retained day differed from the first while the day keys were re-read", n, workers*rounds)
	}
}
