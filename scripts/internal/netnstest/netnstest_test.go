package netnstest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestTail(t *testing.T) {
	text := "a\nb\nc\nd\n\n"
	for _, c := range []struct {
		n    int
		want string
	}{{2, "c\nd"}, {4, "a\nb\nc\nd"}, {10, "a\nb\nc\nd"}, {0, ""}} {
		if got := Tail(text, c.n); got != c.want {
			t.Errorf("Tail(%q, %d) = %q, want %q", text, c.n, got, c.want)
		}
	}
	if got := LastLine("first\nsecond\n\n"); got != "second" {
		t.Errorf("LastLine = %q, want second", got)
	}
}

func TestField(t *testing.T) {
	out := "Session:   3e20\nInterface: sc1x\n  Client:    100.95.0.1/32 fdda::1/128\nBinding code: K7-2QF\n"
	for label, want := range map[string]string{"Session": "3e20", "Client": "100.95.0.1/32 fdda::1/128",
		"Binding code": "K7-2QF", "Expires": "", "Sess": ""} {
		if got := Field(out, label); got != want {
			t.Errorf("Field(%q) = %q, want %q", label, got, want)
		}
	}
}

func TestPoll(t *testing.T) {
	ctx := context.Background()
	calls := 0
	err := Poll(ctx, time.Second, time.Millisecond, func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Poll: %v after %d calls, want nil after 3", err, calls)
	}

	// Never succeeding: bounded in count, the last error wrapped.
	errLast := errors.New("still down")
	calls = 0
	err = Poll(ctx, 20*time.Millisecond, 10*time.Millisecond, func() error {
		calls++
		return errLast
	})
	if !errors.Is(err, errLast) || !strings.Contains(err.Error(), "not within 20ms") {
		t.Fatalf("Poll error %v, want it to wrap %v and name the limit", err, errLast)
	}
	if calls < 1 || calls > 4 {
		t.Fatalf("Poll called fn %d times, want 1 to 20ms/10ms+2", calls)
	}

	// A cancelled context ends the wait.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	calls = 0
	err = Poll(cctx, time.Hour, time.Second, func() error { calls++; return errLast })
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errLast) || calls != 1 {
		t.Fatalf("Poll with a cancelled context: %v after %d calls", err, calls)
	}
	if err := Poll(ctx, time.Second, 0, func() error { return nil }); err == nil {
		t.Fatal("Poll with a zero interval: no error")
	}
}

func TestModuleRoot(t *testing.T) {
	dir := t.TempDir()
	deep := filepath.Join(dir, "a", "b")
	if err := os.MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ModuleRoot(deep); err != nil || got != dir {
		t.Fatalf("ModuleRoot(%s) = %q, %v; want %s", deep, got, err, dir)
	}
	// This package's own module is the repository.
	wd, _ := os.Getwd()
	root, err := ModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "dasset-gateway")); err != nil {
		t.Fatalf("module root %s has no cmd/dasset-gateway: %v", root, err)
	}
}

func TestVirtualAddr(t *testing.T) {
	out := "7: da1x: <POINTOPOINT,UP> mtu 1420 qdisc noqueue state UNKNOWN\\    inet 10.0.0.2/24 scope global da1x\n" +
		"7: da1x    inet 100.80.0.2/32 scope global da1x\\       valid_lft forever preferred_lft forever\n"
	if got := VirtualAddr(out); got != "100.80.0.2/32" {
		t.Fatalf("VirtualAddr = %q, want 100.80.0.2/32", got)
	}
	if got := VirtualAddr("inet 100.128.0.1/32 inet 10.213.1.2/24"); got != "" {
		t.Fatalf("VirtualAddr outside 100.64.0.0/10 = %q, want none", got)
	}
}

func TestAddrArgs(t *testing.T) {
	got4 := AddrArgs("ns1", "v1", netip.MustParsePrefix("198.51.100.1/26"))
	want4 := []string{"-n", "ns1", "addr", "add", "198.51.100.1/26", "dev", "v1"}
	got6 := AddrArgs("ns1", "v1", netip.MustParsePrefix("2001:db8::1/64"))
	want6 := []string{"-n", "ns1", "-6", "addr", "add", "2001:db8::1/64", "dev", "v1", "nodad"}
	if !slices.Equal(got4, want4) || !slices.Equal(got6, want6) {
		t.Fatalf("AddrArgs: %q, %q; want %q, %q", got4, got6, want4, want6)
	}
}

func TestCertFingerprint(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "netnstest"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	crt := filepath.Join(dir, "tls.crt")
	if err := os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	if got, err := CertFingerprint(crt); err != nil || got != hex.EncodeToString(sum[:]) {
		t.Fatalf("CertFingerprint = %q, %v; want %x", got, err, sum)
	}
	notCert := filepath.Join(dir, "tls.key")
	if err := os.WriteFile(notCert, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CertFingerprint(notCert); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("CertFingerprint of a key: %v, want \"no PEM certificate\"", err)
	}
}

func TestPick(t *testing.T) {
	jobs := map[string]Job{"JOB_A": func(string) int { return 3 }, "JOB_B": func(v string) int { return len(v) }}
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if _, _, ok := pick(getenv, jobs); ok {
		t.Fatal("pick with no variable set chose a job")
	}
	env["JOB_B"] = "hello"
	if job, v, ok := pick(getenv, jobs); !ok || v != "hello" || job(v) != 5 {
		t.Fatalf("pick with JOB_B set: ok=%v value %q", ok, v)
	}
	env[HTTPGetEnv] = "http://[::1"
	if job, v, ok := pick(getenv, jobs); !ok || v != env[HTTPGetEnv] || job(v) != 2 {
		t.Fatalf("pick with %s set: ok=%v value %q; want the HTTP GET job (exit 2 for a bad URL)", HTTPGetEnv, ok, v)
	}
}

func TestHTTPGet(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	}))
	defer srv.Close()
	var out, errb bytes.Buffer
	if code := HTTPGet(srv.URL+"/readyz", &out, &errb); code != 0 || out.String() != "ok\n" {
		t.Fatalf("GET /readyz: exit %d, body %q, stderr %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := HTTPGet(srv.URL+"/other", &out, &errb); code != 1 || !strings.Contains(errb.String(), "503") {
		t.Fatalf("GET a 503: exit %d, stderr %q; want 1 naming the status", code, errb.String())
	}
	if code := HTTPGet("http://[::1", &out, &errb); code != 2 {
		t.Fatalf("GET a malformed URL: exit %d, want 2", code)
	}
}

// TestStartProcAndWaitHTTP: a process started by StartProc logs to its
// file and is stopped gracefully; WaitHTTP waits through 503s for a 200,
// and gives up at once on a process that has ended.
func TestStartProcAndWaitHTTP(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) < 3 {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	}))
	defer srv.Close()
	dir := t.TempDir()

	p := StartProc(t, filepath.Join(dir, "sleeper.log"), "sh", "-c", "echo started; exec sleep 60")
	if p.Name != "sleeper" || p.Pid() <= 0 {
		t.Fatalf("Name %q, Pid %d", p.Name, p.Pid())
	}
	if err := WaitHTTP(p, srv.URL+"/readyz", 30*time.Second); err != nil {
		t.Fatalf("WaitHTTP: %v", err)
	}
	if n := hits.Load(); n != 3 {
		t.Fatalf("WaitHTTP returned after %d requests, want 3 (two 503s, then 200)", n)
	}
	if err := Poll(context.Background(), 10*time.Second, 10*time.Millisecond, func() error {
		if p.LastLine() != "started" {
			return errors.New("no output yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if graceful, err := p.Stop(10 * time.Second); !graceful || err == nil || !p.Exited() {
		t.Fatalf("Stop: graceful %v, err %v, exited %v; want a graceful end by SIGTERM", graceful, err, p.Exited())
	}

	done := StartProc(t, filepath.Join(dir, "done.log"), "sh", "-c", "echo bye; exit 3")
	if ok, err := done.Wait(10 * time.Second); !ok || err == nil {
		t.Fatalf("Wait: ok %v, err %v; want exit 3", ok, err)
	}
	hits.Store(0)
	err := WaitHTTP(done, srv.URL+"/readyz", 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), "done exited") || !strings.Contains(err.Error(), "bye") || hits.Load() != 0 {
		t.Fatalf("WaitHTTP on an ended process: %v after %d requests; want an error naming it and no request", err, hits.Load())
	}
}

// TestWaitOutput: WaitOutput returns the output once it holds what is
// waited for, not before.
func TestWaitOutput(t *testing.T) {
	h := &Harness{T: t}
	p := StartProc(t, filepath.Join(t.TempDir(), "printer.log"), "sh", "-c", "echo one; sleep 0.3; echo Ready: yes; exec sleep 60")
	out := h.WaitOutput(p, 30*time.Second, "Ready", func(out string) bool { return Field(out, "Ready") != "" })
	if out != "one\nReady: yes\n" {
		t.Fatalf("WaitOutput returned %q", out)
	}
}
