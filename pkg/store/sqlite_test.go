package store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	"github.com/planetxlabs/dasset-gateway/pkg/store/migrations"
	"github.com/planetxlabs/dasset-gateway/pkg/store/storetest"
)

func openTemp(t testing.TB, opts ...store.Option) *store.SQLite {
	t.Helper()
	s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "registry.db"), opts...)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTemp(t) })
}

func rnd32() [32]byte {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return b
}

func enroll(t testing.TB, s store.Store, n int) []store.Enrollment {
	t.Helper()
	batch := make([]store.Enrollment, n)
	for i := range batch {
		batch[i] = store.Enrollment{Index: rnd32(), SealedSerial: []byte("sealed"), Verifier: rnd32()}
	}
	if _, err := s.EnrollDevices(context.Background(), batch); err != nil {
		t.Fatalf("EnrollDevices: %v", err)
	}
	return batch
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "dir", "registry.db")
	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	e := enroll(t, s, 1)[0]
	d, err := s.DeviceByIndex(ctx, e.Index)
	if err != nil {
		t.Fatal(err)
	}
	a := store.Admission{DeviceID: d.ID, Key: rnd32(), First: 7, Last: 9, Day: "2030-01-02", TokenHash: rnd32(), TokenExpires: time.Now().Add(time.Hour), Gateway: "gw-test"}
	admitted, err := s.Admit(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	got, err := s.DeviceByKey(ctx, a.Key)
	if err != nil {
		t.Fatalf("after reopen: %v", err)
	}
	if got.ID != d.ID || got.Offset != admitted.Offset || got.Index != e.Index || !got.EnrolledAt.Equal(admitted.EnrolledAt) {
		t.Fatalf("after reopen %+v, before %+v", got, admitted)
	}
	if _, err := s.DeviceByToken(ctx, a.TokenHash, time.Now()); err != nil {
		t.Fatalf("token after reopen: %v", err)
	}
	if s.Path() != path {
		t.Fatalf("Path() = %q, want %q", s.Path(), path)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("created directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
}

func userVersion(t *testing.T, path string) (int, *sql.DB) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	var v int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v, db
}

func TestSchemaVersion(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	path := s.Path()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	latest := store.SchemaVersion()
	v, db := userVersion(t, path)
	if v != latest || v < 1 {
		t.Fatalf("user_version %d, want %d", v, latest)
	}
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode %q, %v; want wal", mode, err)
	}
	// A database from a newer program is refused, not mangled.
	if _, err := db.Exec("PRAGMA user_version = 999"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if s, err := store.OpenSQLite(ctx, path); !errors.Is(err, migrations.ErrNewer) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("open a database with user_version 999: %v, want ErrNewer", err)
	}
}

func TestFileMode(t *testing.T) {
	s := openTemp(t)
	defer s.Close()
	enroll(t, s, 3) // make the WAL exist
	for _, p := range []string{s.Path(), s.Path() + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s has mode %v, want 0600", filepath.Base(p), fi.Mode().Perm())
		}
	}
	// An existing file with a broader mode is tightened.
	path := filepath.Join(t.TempDir(), "loose.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	s2, err := store.OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("existing file mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestBadPath(t *testing.T) {
	for _, p := range []string{"", ":memory:", "file:x.db", filepath.Join(t.TempDir(), "a?b.db")} {
		if s, err := store.OpenSQLite(context.Background(), p); !errors.Is(err, privacy.ErrInvalid) {
			if s != nil {
				s.Close()
			}
			t.Fatalf("OpenSQLite(%q): %v, want ErrInvalid", p, err)
		}
	}
}

// fileContains reports whether the database or its WAL holds needle.
func fileContains(t *testing.T, path string, needle []byte) bool {
	t.Helper()
	found := false
	for _, p := range []string{path, path + "-wal"} {
		b, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		found = found || bytes.Contains(b, needle)
	}
	return found
}

func TestSecureDelete(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	defer s.Close()
	sealed := []byte("SEALED-NAME-" + rand.Text() + rand.Text())
	nameIndex := privacy.BlindIndex(rnd32())
	// Neighbours on the same pages, so the deleted row is not a whole page.
	for range 5 {
		if _, err := s.CreateAccount(ctx, store.Account{NameIndex: rnd32(), SealedName: []byte("other-" + rand.Text()), PasswordHash: "h"}); err != nil {
			t.Fatal(err)
		}
	}
	a, err := s.CreateAccount(ctx, store.Account{NameIndex: nameIndex, SealedName: sealed, PasswordHash: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateAccount(ctx, store.Account{NameIndex: rnd32(), SealedName: []byte("after"), PasswordHash: "h"}); err != nil {
		t.Fatal(err)
	}
	if !fileContains(t, s.Path(), sealed) {
		t.Fatal("planted sealed value not found in the files before deletion: the check cannot work")
	}
	if err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if !fileContains(t, s.Path(), sealed) || !fileContains(t, s.Path(), nameIndex[:]) {
		t.Fatal("planted values not found in the database after a checkpoint")
	}
	if _, err := s.DeleteAccount(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if fileContains(t, s.Path(), sealed) {
		t.Fatal("deleted sealed value still in the database files")
	}
	if fileContains(t, s.Path(), nameIndex[:]) {
		t.Fatal("deleted name index still in the database files")
	}
	if fi, err := os.Stat(s.Path() + "-wal"); err == nil && fi.Size() != 0 {
		t.Fatalf("WAL is %d bytes after a TRUNCATE checkpoint", fi.Size())
	}
}

func TestObserver(t *testing.T) {
	var (
		mu  sync.Mutex
		ops = map[string]int{}
		bad = map[string]int{}
	)
	s := openTemp(t, store.WithObserver(func(op string, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		ops[op]++
		if err != nil {
			bad[op]++
		}
	}))
	defer s.Close()
	ctx := context.Background()
	enroll(t, s, 2)
	if _, err := s.DeviceByID(ctx, 999); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if ops["EnrollDevices"] != 1 || ops["DeviceByID"] != 1 || bad["DeviceByID"] != 1 || ops["Checkpoint"] != 1 || bad["EnrollDevices"] != 0 {
		t.Fatalf("observed %v, errors %v", ops, bad)
	}
}

func TestClock(t *testing.T) {
	at := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	s := openTemp(t, store.WithClock(func() time.Time { return at }))
	defer s.Close()
	e := enroll(t, s, 1)[0]
	d, err := s.DeviceByIndex(context.Background(), e.Index)
	if err != nil {
		t.Fatal(err)
	}
	if !d.EnrolledAt.Equal(at) {
		t.Fatalf("EnrolledAt %v, want the clock's %v", d.EnrolledAt, at)
	}
}

// TestReadsDoNotWaitForWriter holds the database's write lock from another
// connection and reads through the store meanwhile.
func TestReadsDoNotWaitForWriter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := openTemp(t)
	defer s.Close()
	e := enroll(t, s, 1)[0]

	other, err := sql.Open("sqlite", s.Path()+"?_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	tx, err := other.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("UPDATE devices SET last_login_day = '2030-01-01'"); err != nil {
		t.Fatal(err)
	}
	// The lock is released only after the read returns: a read that waited
	// for the writer would fail with the context's deadline.
	d, err := s.DeviceByIndex(ctx, e.Index)
	if err != nil {
		t.Fatalf("read while another connection writes: %v", err)
	}
	if d.LastLoginDay != "" {
		t.Fatal("read saw an uncommitted write")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkAdmit(b *testing.B) {
	ctx := context.Background()
	s := openTemp(b)
	defer s.Close()
	ids := make([]int64, 0, b.N)
	for len(ids) < b.N {
		batch := enroll(b, s, min(1000, b.N-len(ids)))
		for _, e := range batch {
			d, err := s.DeviceByIndex(ctx, e.Index)
			if err != nil {
				b.Fatal(err)
			}
			ids = append(ids, d.ID)
		}
	}
	exp := time.Now().Add(time.Hour)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Admit(ctx, store.Admission{
			DeviceID: ids[i], Key: rnd32(), First: 1, Last: 1 << 20, Day: "2030-01-02", TokenHash: rnd32(), TokenExpires: exp, Gateway: "gw-test",
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// enrolledIDs enrolls n devices and returns their ids.
func enrolledIDs(b testing.TB, s store.Store, n int) []int64 {
	ctx := context.Background()
	ids := make([]int64, 0, n)
	for len(ids) < n {
		for _, e := range enroll(b, s, min(1000, n-len(ids))) {
			d, err := s.DeviceByIndex(ctx, e.Index)
			if err != nil {
				b.Fatal(err)
			}
			ids = append(ids, d.ID)
		}
	}
	return ids
}

// BenchmarkAdmitParallel is a boot storm against the store alone: first
// admissions of distinct devices from many goroutines at once.
func BenchmarkAdmitParallel(b *testing.B) {
	ctx := context.Background()
	s := openTemp(b)
	defer s.Close()
	ids := enrolledIDs(b, s, b.N)
	exp := time.Now().Add(time.Hour)
	var next atomic.Int64
	b.SetParallelism(32) // 32 × GOMAXPROCS callers, like a storm of logins
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1) - 1
			if _, err := s.Admit(ctx, store.Admission{
				DeviceID: ids[i], Key: rnd32(), First: 1, Last: 1 << 20, Day: "2030-01-02", TokenHash: rnd32(), TokenExpires: exp, Gateway: "gw-test",
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkDeviceByIndex(b *testing.B) {
	ctx := context.Background()
	s := openTemp(b)
	defer s.Close()
	var idx []privacy.BlindIndex
	for range 10 {
		for _, e := range enroll(b, s, 1000) {
			idx = append(idx, e.Index)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := s.DeviceByIndex(ctx, idx[i%len(idx)]); err != nil {
				b.Error(err)
				return
			}
			i += 7
		}
	})
}

// TestAdmitStormDurable runs the conformance storm (500 devices from 64
// goroutines, a tenth made to fail) and checks that what it committed is
// all there, and nothing of the failed admissions, after close and reopen.
func TestAdmitStormDurable(t *testing.T) {
	s := openTemp(t)
	path := s.Path()
	check := storetest.AdmitStorm(t, s)
	check(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	check(t, s)
}

// holdWriteLock takes the database's write lock from another connection
// until the returned function is called.
func holdWriteLock(t *testing.T, ctx context.Context, path string) (*sql.DB, func()) {
	t.Helper()
	other, err := sql.Open("sqlite", path+"?_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	tx, err := other.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("UPDATE devices SET last_login_day = '2030-01-01' WHERE 0"); err != nil {
		t.Fatal(err)
	}
	return other, func() {
		if err := tx.Rollback(); err != nil {
			t.Error(err)
		}
	}
}

// TestAdmitWaitsForCommitOrContext: a caller whose context ends while its
// admission waits for the writer gets the context's error and nothing of
// its admission is written; the others wait and return once committed.
func TestAdmitWaitsForCommitOrContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := openTemp(t)
	defer s.Close()
	ids := enrolledIDs(t, s, 2)
	exp := time.Now().Add(time.Hour)
	a1 := store.Admission{DeviceID: ids[0], Key: rnd32(), First: 1, Last: 10, Day: "2030-01-02", TokenHash: rnd32(), TokenExpires: exp, Gateway: "gw-test"}
	a2 := store.Admission{DeviceID: ids[1], Key: rnd32(), First: 1, Last: 10, Day: "2030-01-02", TokenHash: rnd32(), TokenExpires: exp, Gateway: "gw-test"}

	other, release := holdWriteLock(t, ctx, s.Path())
	defer other.Close()
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err := s.Admit(short, a1); !errors.Is(err, context.DeadlineExceeded) {
		release()
		t.Fatalf("Admit while the writer is held, past its deadline: %v, want %v", err, context.DeadlineExceeded)
	}
	res := make(chan error, 1)
	go func() {
		_, err := s.Admit(ctx, a2)
		res <- err
	}()
	release()
	if err := <-res; err != nil {
		t.Fatalf("Admit queued behind the held writer: %v", err)
	}
	// Committed when Admit returned: another connection sees it.
	var key []byte
	if err := other.QueryRowContext(ctx, "SELECT pinned_key FROM devices WHERE id = ?", ids[1]).Scan(&key); err != nil || !bytes.Equal(key, a2.Key[:]) {
		t.Fatalf("another connection reads key %x (%v), want the admitted one", key, err)
	}
	d, err := s.DeviceByID(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if d.KeyPinned || d.Offset != 0 || d.LastLoginDay != "" {
		t.Fatalf("the abandoned admission wrote %+v", d)
	}
	if _, err := s.DeviceByToken(ctx, a1.TokenHash, time.Now()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("token of the abandoned admission: %v, want ErrNotFound", err)
	}
	// Its key was not claimed either: the same admission now succeeds.
	if _, err := s.Admit(ctx, a1); err != nil {
		t.Fatalf("the abandoned admission again: %v", err)
	}
}

func TestAdmitAfterClose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := openTemp(t)
	id := enrolledIDs(t, s, 1)[0]
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Admit(ctx, store.Admission{DeviceID: id, Key: rnd32(), First: 1, Last: 10, Day: "2030-01-02", TokenHash: rnd32(), TokenExpires: time.Now().Add(time.Hour), Gateway: "gw-test"})
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Admit after Close: %v (context: %v), want an error at once", err, ctx.Err())
	}
}

// TestObserverAdmitPerCall: concurrent admissions share transactions, yet
// the observer sees one "Admit" per call with that call's own error.
func TestObserverAdmitPerCall(t *testing.T) {
	var (
		mu       sync.Mutex
		ops, bad int
	)
	s := openTemp(t, store.WithObserver(func(op string, d time.Duration, err error) {
		if op != "Admit" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		ops++
		if err != nil {
			bad++
		}
	}))
	defer s.Close()
	ctx := context.Background()
	ids := enrolledIDs(t, s, 20)
	exp := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	for i, id := range ids {
		if i%7 == 0 {
			id = -id // unknown device
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Admit(ctx, store.Admission{DeviceID: id, Key: rnd32(), First: 1, Last: 100, Day: "2030-01-02", TokenHash: rnd32(), TokenExpires: exp, Gateway: "gw-test"})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if (i%7 == 0) != errors.Is(err, store.ErrNotFound) || (i%7 != 0 && err != nil) {
			t.Fatalf("admission %d: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if ops != len(ids) || bad != 3 {
		t.Fatalf("observed %d Admit calls, %d failed; want %d and 3", ops, bad, len(ids))
	}
}

// TestBackupSQLite: a backup taken while the store is open holds the live
// rows, none of the deleted ones, is 0600, and never overwrites a file.
func TestBackupSQLite(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	defer s.Close()
	if err := s.SetMeta(ctx, "keystore_id", "0123456789abcdef0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	kept := enroll(t, s, 3)
	gone := enroll(t, s, 1)[0]
	d, err := s.DeviceByIndex(ctx, gone.Index)
	if err != nil {
		t.Fatal(err)
	}
	// Positive control: the value to be erased is in the files now.
	if err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if !fileContains(t, s.Path(), gone.Index[:]) {
		t.Fatal("the blind index to erase is not in the database files: the check cannot work")
	}
	if _, err := s.EraseDevice(ctx, d.ID, nil); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "backup.db")
	info, err := store.BackupSQLite(ctx, s.Path(), out)
	if err != nil {
		t.Fatalf("BackupSQLite: %v", err)
	}
	if info.KeystoreID != "0123456789abcdef0123456789abcdef" || info.SchemaVersion != store.SchemaVersion() || info.Bytes <= 0 {
		t.Fatalf("backup info %+v", info)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != info.Bytes {
		t.Fatalf("backup mode %04o size %d, want 0600 and %d", fi.Mode().Perm(), fi.Size(), info.Bytes)
	}
	if fileContains(t, out, gone.Index[:]) {
		t.Fatal("the erased device's blind index is in the backup")
	}
	b, err := store.OpenSQLite(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, e := range kept {
		if _, err := b.DeviceByIndex(ctx, e.Index); err != nil {
			t.Fatalf("kept device missing from the backup: %v", err)
		}
	}
	if _, err := b.DeviceByIndex(ctx, gone.Index); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("erased device in the backup: %v", err)
	}

	if _, err := store.BackupSQLite(ctx, s.Path(), out); err == nil {
		t.Fatal("BackupSQLite overwrote an existing file")
	}
	if _, err := store.BackupSQLite(ctx, filepath.Join(t.TempDir(), "none.db"), filepath.Join(t.TempDir(), "x.db")); err == nil {
		t.Fatal("BackupSQLite of a missing database succeeded")
	}
}

// TestMigrationMarksVersion1Verifiers: a database written before goose,
// with devices, is marked as holding version-1 verifiers when it is opened
// by this program; UpgradeVerifiers then rewrites them, and after a
// checkpoint no old verifier is left in the database files.
func TestMigrationMarksVersion1Verifiers(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	db := legacyDB(t, path, 2)
	old := make([][32]byte, 5)
	for i := range old {
		old[i] = rnd32()
		idx := rnd32()
		if _, err := db.Exec(`INSERT INTO devices (blind_index, sealed_serial, verifier, enrolled_at) VALUES (?, ?, ?, 1)`,
			idx[:], []byte("sealed"), old[i][:]); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := s.Meta(ctx, "verifier_version"); v != "1" {
		t.Fatalf("verifier_version = %q after migrating a database with devices, want 1", v)
	}
	if err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if !fileContains(t, path, old[2][:]) {
		t.Fatal("old verifier not found in the database files before the upgrade: the check cannot work")
	}
	n, err := s.UpgradeVerifiers(ctx, func(v privacy.Verifier) privacy.Verifier {
		for i := range v {
			v[i] ^= 0x5a
		}
		return v
	})
	if err != nil || n != len(old) {
		t.Fatalf("UpgradeVerifiers = %d, %v; want %d", n, err, len(old))
	}
	if err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	for i, v := range old {
		if fileContains(t, path, v[:]) {
			t.Fatalf("device %d: its version-1 verifier is still in the database files", i)
		}
	}
}

// TestFreshDatabaseHasCurrentVerifiers: a database made by this program has
// nothing to upgrade.
func TestFreshDatabaseHasCurrentVerifiers(t *testing.T) {
	s := openTemp(t)
	defer s.Close()
	if v, _ := s.Meta(context.Background(), "verifier_version"); v != "" {
		t.Fatalf("verifier_version = %q in a fresh database, want unset", v)
	}
}

// BenchmarkHomePeers: HomePeers of one gateway of three at 10,000 devices,
// beside AdmittedDevices (see storetest.BenchHomePeers).
func BenchmarkHomePeers(b *testing.B) {
	s := openTemp(b)
	defer s.Close()
	storetest.BenchHomePeers(b, s, 10000)
}
