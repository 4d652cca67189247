package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// TestDiskFull: the data directory on a small tmpfs is filled up. Admitted
// devices keep logging in with their pinned key and their tunnel carries
// pings; a new device is refused with Unavailable; /readyz is not ready and
// dasset_gateway_store_writable is 0. Once space is freed, everything works
// again without a restart. Needs root (mounts a tmpfs).
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "hardening-tmpfs", cfg.DataDir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", cfg.DataDir).Run() })

	g := startGateway(t, cfg)
	const (
		snA, hwA = "DS-FULL-0001", "HW-FULL-A"
		snB, hwB = "DS-FULL-0002", "HW-FULL-B"
	)
	g.enroll(t, [2]string{snA, hwA}, [2]string{snB, hwB})
	a, done := startAgent(t, g, snA, hwA, filepath.Join(dir, "devA"))
	waitReady(t, a, done)
	gw4 := netip.MustParseAddr("100.80.0.1")
	if err := pingUntil(a.Net(), a.Addresses(), gw4, 10*time.Second); err != nil {
		t.Fatalf("device A before: %v", err)
	}
	dev := deviceClient(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	keyA := a.PublicKey()
	loginA := func() error {
		_, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: snA, HardwareId: hwA, PublicKey: keyA[:]})
		return err
	}
	if err := loginA(); err != nil {
		t.Fatalf("device A re-login before: %v", err)
	}
	probe := func() (int, string) {
		resp, err := http.Get("http://" + g.d.HTTPAddr().String() + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	metric := func(name string) string {
		resp, err := http.Get("http://" + g.d.HTTPAddr().String() + "/metrics")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, name+" ") {
				return strings.TrimPrefix(l, name+" ")
			}
		}
		return "missing"
	}
	writable := func() string { return metric("dasset_gateway_store_writable") }
	admitWrites := func() string { return metric(`dasset_gateway_store_transaction_duration_seconds_count{op="Admit"}`) }
	if code, _ := probe(); code != http.StatusOK || writable() != "1" {
		t.Fatalf("before: /readyz %d, store_writable %s", code, writable())
	}

	// Fill the file system.
	filler := filepath.Join(cfg.DataDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for range 64 {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	poll.Must(t, 15*time.Second, "/readyz not ready and store_writable 0", func() error {
		if code, body := probe(); code != http.StatusServiceUnavailable || !strings.Contains(body, "not writable") {
			return fmt.Errorf("/readyz %d %q", code, body)
		}
		if w := writable(); w != "0" {
			return fmt.Errorf("store_writable %s", w)
		}
		return nil
	})
	// Admitted device: logs in again, writing nothing (no Admit
	// transaction), and its tunnel carries pings.
	before := admitWrites()
	for i := range 3 {
		if err := loginA(); err != nil {
			t.Fatalf("device A re-login %d on a full disk: %v", i, err)
		}
	}
	if after := admitWrites(); after != before || before == "missing" {
		t.Fatalf("re-logins with the pinned key ran Admit transactions: %s before, %s after", before, after)
	}
	if err := pingUntil(a.Net(), a.Addresses(), gw4, 10*time.Second); err != nil {
		t.Fatalf("device A on a full disk: %v", err)
	}
	// A new device is refused with Unavailable.
	keyB := newKey(t)
	if _, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: snB, HardwareId: hwB, PublicKey: keyB}); status.Code(err) != codes.Unavailable {
		t.Fatalf("new device on a full disk: %v, want Unavailable", err)
	}

	// Space back: everything works again, no restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	poll.Must(t, 15*time.Second, "/readyz ready and store_writable 1", func() error {
		if code, body := probe(); code != http.StatusOK {
			return fmt.Errorf("/readyz %d %q", code, body)
		}
		if w := writable(); w != "1" {
			return fmt.Errorf("store_writable %s", w)
		}
		return nil
	})
	if _, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: snB, HardwareId: hwB, PublicKey: keyB}); err != nil {
		t.Fatalf("new device after space is back: %v", err)
	}
	if err := loginA(); err != nil {
		t.Fatalf("device A after space is back: %v", err)
	}
	if err := pingUntil(a.Net(), a.Addresses(), gw4, 10*time.Second); err != nil {
		t.Fatalf("device A after: %v", err)
	}
}
