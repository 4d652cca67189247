package privacy

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"
)

func mustSN(t testing.TB, s string) SerialNumber {
	t.Helper()
	sn, err := ParseSerialNumber(s)
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

func mustHW(t testing.TB, s string) HardwareID {
	t.Helper()
	hw, err := ParseHardwareID(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

func openTestKeystore(t testing.TB) (*Keystore, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	k, err := OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	return k, dir
}

func day(s string) time.Time {
	d, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return d
}

func TestKeystoreCreateReopenSameKeys(t *testing.T) {
	k1, dir := openTestKeystore(t)
	sn, hw := mustSN(t, "SN-0001"), mustHW(t, "hw:abc")
	p1, err := k1.Pseudonym(day("2025-03-01 10:00"), k1.BlindIndex(sn))
	if err != nil {
		t.Fatal(err)
	}
	sealed := k1.Seal([]byte("SN-0001"), []byte("aad"))

	k2, err := OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if k1.ID() != k2.ID() || len(k1.ID()) != 32 {
		t.Fatalf("ids differ or malformed: %q %q", k1.ID(), k2.ID())
	}
	if k1.BlindIndex(sn) != k2.BlindIndex(sn) {
		t.Fatal("blind index changed across reopen")
	}
	if k1.Verifier(sn, hw) != k2.Verifier(sn, hw) || k1.DummyVerifier() != k2.DummyVerifier() {
		t.Fatal("verifier changed across reopen")
	}
	if k1.GatewayPrivateKey() != k2.GatewayPrivateKey() {
		t.Fatal("wireguard key changed across reopen")
	}
	p2, err := k2.Pseudonym(day("2025-03-01 23:59"), k2.BlindIndex(sn))
	if err != nil {
		t.Fatal(err)
	}
	if p1 != p2 {
		t.Fatal("pseudonym changed across reopen")
	}
	pt, err := k2.Open(sealed, []byte("aad"))
	if err != nil || string(pt) != "SN-0001" {
		t.Fatalf("open after reopen: %q %v", pt, err)
	}

	// Another keystore has other keys and another id.
	k3, _ := openTestKeystore(t)
	if k3.ID() == k1.ID() || k3.BlindIndex(sn) == k1.BlindIndex(sn) || k3.GatewayPrivateKey() == k1.GatewayPrivateKey() {
		t.Fatal("two keystores share keys")
	}
	if _, err := k3.Open(sealed, []byte("aad")); !errors.Is(err, ErrOpen) {
		t.Fatalf("open under another seal key: %v", err)
	}
}

func TestKeystoreModes(t *testing.T) {
	k, dir := openTestKeystore(t)
	if _, err := k.Pseudonym(day("2025-03-01 00:00"), BlindIndex{}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %04o, want 0700", st.Mode().Perm())
	}
	n := 0
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			if info.Mode().Perm() != 0o700 {
				t.Errorf("%s: mode %04o, want 0700", path, info.Mode().Perm())
			}
			return nil
		}
		n++
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %04o, want 0600", path, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// index, seal, day-key KEK, wireguard, id, one day key.
	if n != 6 {
		t.Errorf("found %d files, want 6", n)
	}
}

func TestKeystoreRefusesReadableKey(t *testing.T) {
	for _, name := range []string{indexKeyFile, sealKeyFile, wireguardKeyFile, "days/2025-03-01.key"} {
		t.Run(name, func(t *testing.T) {
			k, dir := openTestKeystore(t)
			if _, err := k.Pseudonym(day("2025-03-01 00:00"), BlindIndex{}); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, filepath.FromSlash(name))
			if err := os.Chmod(path, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := OpenKeystore(dir)
			if err == nil {
				t.Fatal("opened a keystore with a 0644 key file")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "chmod 600") {
				t.Fatalf("error does not name the file and the fix: %v", err)
			}
			if err := os.Chmod(path, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := OpenKeystore(dir); err != nil {
				t.Fatalf("after chmod 600: %v", err)
			}
		})
	}
	t.Run("dir", func(t *testing.T) {
		_, dir := openTestKeystore(t)
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenKeystore(dir); err == nil || !strings.Contains(err.Error(), "chmod 700") {
			t.Fatalf("opened a 0755 keystore dir: %v", err)
		}
	})
}

func TestKeystoreRefusesMissingKey(t *testing.T) {
	_, dir := openTestKeystore(t)
	if err := os.Remove(filepath.Join(dir, sealKeyFile)); err != nil {
		t.Fatal(err)
	}
	_, err := OpenKeystore(dir)
	if err == nil || !strings.Contains(err.Error(), sealKeyFile) {
		t.Fatalf("a keystore without its seal key opened (or the error does not name it): %v", err)
	}
	if _, statErr := os.Stat(filepath.Join(dir, sealKeyFile)); !errors.Is(statErr, fs.ErrNotExist) {
		t.Fatal("a new seal key was made in an existing keystore")
	}
}

func TestGatewayKeyIsClampedCurve25519(t *testing.T) {
	k, _ := openTestKeystore(t)
	priv := k.GatewayPrivateKey()
	if priv[0]&7 != 0 || priv[31]&128 != 0 || priv[31]&64 == 0 {
		t.Fatalf("private key not clamped: %x", priv)
	}
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	got := k.GatewayPublicKey()
	if !bytes.Equal(got[:], pub) {
		t.Fatal("GatewayPublicKey does not match the private key")
	}
}

func TestBlindIndexAndVerifierDomains(t *testing.T) {
	k, _ := openTestKeystore(t)
	sn := mustSN(t, "alice")
	if k.BlindIndex(sn) == k.AccountIndex("alice") {
		t.Fatal("SN and account indexes are not domain separated")
	}
	if k.BlindIndex(sn) == k.BlindIndex(mustSN(t, "alicf")) {
		t.Fatal("different SNs share an index")
	}
	// The length prefix keeps (SN "ab", HWID "cd") apart from ("a", "bcd").
	if k.Verifier(mustSN(t, "ab"), mustHW(t, "cd")) == k.Verifier(mustSN(t, "a"), mustHW(t, "bcd")) {
		t.Fatal("verifier is ambiguous without the length prefix")
	}
	if k.Verifier(sn, mustHW(t, "x")) == k.DummyVerifier() {
		t.Fatal("dummy verifier equals a real one")
	}
}

func TestSealOpen(t *testing.T) {
	k, _ := openTestKeystore(t)
	aad := []byte("index-1")
	s1 := k.Seal([]byte("SN-secret"), aad)
	s2 := k.Seal([]byte("SN-secret"), aad)
	if bytes.Equal(s1, s2) {
		t.Fatal("two seals of the same value are equal (nonce reuse)")
	}
	if bytes.Contains(s1, []byte("SN-secret")) {
		t.Fatal("sealed value holds the plaintext")
	}
	pt, err := k.Open(s1, aad)
	if err != nil || string(pt) != "SN-secret" {
		t.Fatalf("round trip: %q %v", pt, err)
	}
	for i := range s1 {
		bad := bytes.Clone(s1)
		bad[i] ^= 0x01
		if _, err := k.Open(bad, aad); !errors.Is(err, ErrOpen) {
			t.Fatalf("byte %d flipped: opened (%v)", i, err)
		}
	}
	if _, err := k.Open(s1, []byte("index-2")); !errors.Is(err, ErrOpen) {
		t.Fatalf("other AAD: %v", err)
	}
	if _, err := k.Open(s1[:20], aad); !errors.Is(err, ErrOpen) {
		t.Fatalf("truncated: %v", err)
	}
}

func TestPseudonymPerDay(t *testing.T) {
	k, _ := openTestKeystore(t)
	a, b := k.BlindIndex(mustSN(t, "A1")), k.BlindIndex(mustSN(t, "B2"))
	pa1, _ := k.Pseudonym(day("2025-03-01 00:00"), a)
	pa1b, _ := k.Pseudonym(day("2025-03-01 23:59"), a)
	pa2, _ := k.Pseudonym(day("2025-03-02 00:00"), a)
	pb1, _ := k.Pseudonym(day("2025-03-01 12:00"), b)
	if pa1 != pa1b {
		t.Fatal("pseudonym not stable within a day")
	}
	if pa1 == pa2 {
		t.Fatal("pseudonym equal across days")
	}
	if pa1 == pb1 {
		t.Fatal("two subjects share a pseudonym")
	}
	// UTC day: 23:30 at UTC-5 on Mar 1 is Mar 2 UTC.
	est := time.FixedZone("EST", -5*3600)
	pz, _ := k.Pseudonym(time.Date(2025, 3, 1, 23, 30, 0, 0, est), a)
	if pz != pa2 {
		t.Fatal("pseudonym not keyed by the UTC day")
	}
	if got := k.Days(); strings.Join(got, ",") != "2025-03-01,2025-03-02" {
		t.Fatalf("Days = %v", got)
	}
	all, err := k.PseudonymsFor(context.Background(), a)
	if err != nil || len(all) != 2 || all["2025-03-01"] != pa1 || all["2025-03-02"] != pa2 {
		t.Fatalf("PseudonymsFor = %v", all)
	}
}

func TestDestroyKeysBefore(t *testing.T) {
	k, dir := openTestKeystore(t)
	idx := k.BlindIndex(mustSN(t, "SN-DESTROY"))
	for _, d := range []string{"2025-03-01", "2025-03-02", "2025-03-03"} {
		if _, err := k.Pseudonym(day(d+" 12:00"), idx); err != nil {
			t.Fatal(err)
		}
	}
	old1, err := os.ReadFile(filepath.Join(dir, "days", "2025-03-01.key"))
	if err != nil {
		t.Fatal(err)
	}
	old2, err := os.ReadFile(filepath.Join(dir, "days", "2025-03-02.key"))
	if err != nil {
		t.Fatal(err)
	}
	// The scan must find the key bytes while they exist.
	if found := scanDir(t, dir, old1); len(found) == 0 {
		t.Fatal("scanner did not find the key before destruction")
	}
	keep, _ := k.Pseudonym(day("2025-03-03 00:00"), idx)

	n, err := k.DestroyKeysBefore(day("2025-03-03 05:00"))
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("destroyed %d keys, want 2", n)
	}
	for _, name := range []string{"2025-03-01.key", "2025-03-02.key"} {
		if _, err := os.Stat(filepath.Join(dir, "days", name)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s still exists: %v", name, err)
		}
	}
	for _, old := range [][]byte{old1, old2} {
		if found := scanDir(t, dir, old); len(found) > 0 {
			t.Fatalf("destroyed key bytes still in %v", found)
		}
	}
	for _, d := range []string{"2025-03-01 12:00", "2025-03-02 00:00", "2024-12-31 00:00"} {
		if _, err := k.Pseudonym(day(d), idx); !errors.Is(err, ErrKeyDestroyed) {
			t.Fatalf("Pseudonym(%s) after destruction: %v", d, err)
		}
	}
	if got, _ := k.Pseudonym(day("2025-03-03 23:00"), idx); got != keep {
		t.Fatal("a retained day's pseudonym changed")
	}
	if got := k.Days(); strings.Join(got, ",") != "2025-03-03" {
		t.Fatalf("Days after destruction = %v", got)
	}
	if all, err := k.PseudonymsFor(context.Background(), idx); err != nil {
		t.Fatal(err)
	} else if _, ok := all["2025-03-01"]; ok {
		t.Fatal("PseudonymsFor still gives a destroyed day")
	}

	// The horizon survives a restart: the day is never made again.
	k2, err := OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k2.Pseudonym(day("2025-03-02 12:00"), idx); !errors.Is(err, ErrKeyDestroyed) {
		t.Fatalf("after reopen: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "days", "2025-03-02.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("destroyed day key re-created")
	}
	// An earlier cut moves nothing back.
	if n, err := k2.DestroyKeysBefore(day("2025-01-01 00:00")); err != nil || n != 0 || k2.Horizon() != "2025-03-03" {
		t.Fatalf("earlier cut: n=%d err=%v horizon=%s", n, err, k2.Horizon())
	}
}

// scanDir returns the files under dir whose bytes contain needle.
func scanDir(t *testing.T, dir string, needle []byte) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestBackupRestore(t *testing.T) {
	k, _ := openTestKeystore(t)
	sn := mustSN(t, "SN-BACKUP")
	idx := k.BlindIndex(sn)
	p1, _ := k.Pseudonym(day("2025-03-01 00:00"), idx)
	p2, _ := k.Pseudonym(day("2025-03-02 00:00"), idx)
	if _, err := k.DestroyKeysBefore(day("2025-03-02 00:00")); err != nil {
		t.Fatal(err)
	}
	sealed := k.Seal([]byte("secret"), nil)

	var buf bytes.Buffer
	if err := k.Backup(&buf, []byte("correct horse")); err != nil {
		t.Fatal(err)
	}
	idxKey, _ := os.ReadFile(filepath.Join(k.Dir(), indexKeyFile))
	if bytes.Contains(buf.Bytes(), idxKey) {
		t.Fatal("backup holds a raw key")
	}

	target := filepath.Join(t.TempDir(), "restored")
	_, err := RestoreKeystore(bytes.NewReader(buf.Bytes()), []byte("wrong horse"), target)
	if !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a failed restore left files behind")
	}
	if _, err := RestoreKeystore(bytes.NewReader(buf.Bytes()), []byte("correct horse"), target); err != nil {
		t.Fatal(err)
	}
	r, err := OpenKeystore(target)
	if err != nil {
		t.Fatal(err)
	}
	if r.ID() != k.ID() || r.BlindIndex(sn) != k.BlindIndex(sn) || r.GatewayPrivateKey() != k.GatewayPrivateKey() {
		t.Fatal("restored keystore differs")
	}
	if got, _ := r.Pseudonym(day("2025-03-02 10:00"), idx); got != p2 {
		t.Fatal("restored day key differs")
	}
	if _, err := r.Pseudonym(day("2025-03-01 10:00"), idx); !errors.Is(err, ErrKeyDestroyed) {
		t.Fatalf("restored horizon lost (p1=%v): %v", p1, err)
	}
	if pt, err := r.Open(sealed, nil); err != nil || string(pt) != "secret" {
		t.Fatalf("restored seal key: %q %v", pt, err)
	}

	// Never over an existing keystore.
	_, err = RestoreKeystore(bytes.NewReader(buf.Bytes()), []byte("correct horse"), target)
	if err == nil || !strings.Contains(err.Error(), "non-empty") {
		t.Fatalf("restore over a keystore: %v", err)
	}
	// A damaged backup is refused.
	bad := bytes.Replace(buf.Bytes(), []byte(`"version": 1`), []byte(`"version": 2`), 1)
	if _, err := RestoreKeystore(bytes.NewReader(bad), []byte("correct horse"), filepath.Join(t.TempDir(), "x")); err == nil || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("version 2: %v", err)
	}
	if _, err := RestoreKeystore(strings.NewReader("not json"), []byte("p"), filepath.Join(t.TempDir(), "y")); err == nil {
		t.Fatal("restored garbage")
	}
	if err := k.Backup(&buf, nil); err == nil {
		t.Fatal("backup with an empty passphrase")
	}
}

func TestPseudonymConcurrentFirstUse(t *testing.T) {
	k, dir := openTestKeystore(t)
	idx := k.BlindIndex(mustSN(t, "SN-RACE"))
	const workers = 16
	got := make([]Pseudonym, workers)
	errs := make([]error, workers)
	done := make(chan int, workers)
	for i := range workers {
		go func() {
			got[i], errs[i] = k.Pseudonym(day("2025-04-01 08:00"), idx)
			done <- i
		}()
	}
	for range workers {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Pseudonym did not return")
		}
	}
	for i := range workers {
		if errs[i] != nil || got[i] != got[0] {
			t.Fatalf("worker %d: %v %v (want %v)", i, got[i], errs[i], got[0])
		}
	}
	ents, err := os.ReadDir(filepath.Join(dir, "days"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Fatalf("%d files in days/, want 1", len(ents))
	}
	// A second process-level open sees the same key.
	k2, err := OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := k2.Pseudonym(day("2025-04-01 09:00"), idx); p != got[0] {
		t.Fatal("reopened keystore gives another pseudonym")
	}
}

// Temporary files a crash left mid-write (key material) are removed when
// the keystore is opened; the keys themselves stay.
func TestKeystoreRemovesLeftTemporaryFiles(t *testing.T) {
	k1, dir := openTestKeystore(t)
	left := []string{
		filepath.Join(dir, "."+sealKeyFile+"8410392841"),
		filepath.Join(dir, daysDir, ".2026-01-02.key77"),
		filepath.Join(dir, tmpPrefix+"old-style"),
	}
	for _, p := range left {
		if err := os.WriteFile(p, []byte("half a key"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	k2, err := OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range left {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still there after open: %v", p, err)
		}
	}
	if k1.ID() != k2.ID() {
		t.Fatal("reopening changed the keystore")
	}
}
