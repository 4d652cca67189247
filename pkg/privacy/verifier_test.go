package privacy

import (
	"crypto/hmac"
	"crypto/sha256"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
)

// TestVerifierIsKeyedArgon2id recomputes the verifier from the key file and
// the documented construction: argon2id (with the declared parameters) over
// the keyed HMAC of SN ‖ HWID, salted under K_index.
func TestVerifierIsKeyedArgon2id(t *testing.T) {
	k, dir := openTestKeystore(t)
	key, err := os.ReadFile(filepath.Join(dir, indexKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	sn, hw := mustSN(t, "SN-0001"), mustHW(t, "hw:abc")
	inner := hmac.New(sha256.New, key)
	inner.Write([]byte("dasset/hwid/v1\x00"))
	inner.Write([]byte{0, 7})
	inner.Write([]byte("SN-0001hw:abc"))
	salt := hmac.New(sha256.New, key)
	salt.Write([]byte("dasset/hwid-kdf-salt/v2\x00"))
	want := argon2.IDKey(inner.Sum(nil), salt.Sum(nil), 1, 128, 1, 32)

	got := k.Verifier(sn, hw)
	if string(got[:]) != string(want) {
		t.Fatalf("verifier = %x, want argon2id(m=128KiB,t=1,p=1) = %x", got, want)
	}
	old := k.hmacVerifier(sn, hw)
	if string(old[:]) != string(inner.Sum(nil)) {
		t.Fatal("hmacVerifier is not the version-1 HMAC")
	}
	if k.UpgradeVerifier(old) != got {
		t.Fatal("upgrading the version-1 verifier does not give the current one")
	}
	if got == old {
		t.Fatal("the verifier is the HMAC itself")
	}
}

func TestVerifierNeedsTheKeystore(t *testing.T) {
	k1, _ := openTestKeystore(t)
	k2, _ := openTestKeystore(t)
	sn, hw := mustSN(t, "SN-0001"), mustHW(t, "hw:abc")
	if k1.Verifier(sn, hw) == k2.Verifier(sn, hw) {
		t.Fatal("two keystores give the same verifier")
	}
	if k1.Verifier(sn, hw) == k1.Verifier(sn, mustHW(t, "hw:abd")) {
		t.Fatal("two hardware ids give the same verifier")
	}
	first, second := k1.Verifier(sn, hw), k1.Verifier(sn, hw)
	if first != second {
		t.Fatal("the verifier is not deterministic")
	}
}

// BenchmarkVerifier is the work of one device login's HWID check (and of
// an unknown serial number's dummy check), beside BenchmarkVerifierHMAC, the
// version-1 HMAC verifier: the ratio is what a keystore holder's HWID
// guessing slows down by.
func BenchmarkVerifier(b *testing.B) {
	k, _ := openTestKeystore(b)
	sn, hw := mustSN(b, "DS-2024-000001"), mustHW(b, "3f2c9a1e-77b0-4c1d-9e55-0a1b2c3d4e5f")
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		k.Verifier(sn, hw)
	}
}

// BenchmarkVerifierHMAC is the reference: the version-1 verifier.
func BenchmarkVerifierHMAC(b *testing.B) {
	k, _ := openTestKeystore(b)
	sn, hw := mustSN(b, "DS-2024-000001"), mustHW(b, "3f2c9a1e-77b0-4c1d-9e55-0a1b2c3d4e5f")
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		k.hmacVerifier(sn, hw)
	}
}

// reportCPU reports the process's CPU time per operation (cpu-ns/op): on a
// shared machine ns/op counts waiting for a core, CPU time does not.
func reportCPU(b *testing.B) func() {
	start := cpuTime(b)
	return func() {
		b.ReportMetric(float64((cpuTime(b)-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
