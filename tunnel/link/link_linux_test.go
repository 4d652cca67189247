//go:build linux

package link

import (
	"errors"
	"os"
	"testing"
	"time"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (creates TUN interfaces)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
}

// TestCreateTUNWaitsWhileBusy: while another descriptor holds the interface
// (the previous gateway still exiting), creation retries and succeeds once
// it is released; with no wait it fails at once with ErrBusy.
func TestCreateTUNWaitsWhileBusy(t *testing.T) {
	needRoot(t)
	const name = "hardening-busy"
	holder, err := createTUNOnce(name, 1420)
	if err != nil {
		t.Fatalf("first TUN: %v", err)
	}
	released := false
	defer func() {
		if !released {
			holder.Close()
		}
	}()
	if _, err := CreateTUN(Config{Name: name, MTU: 1420, BusyWait: -1}); !errors.Is(err, ErrBusy) {
		t.Fatalf("second TUN while the first is open: %v, want ErrBusy", err)
	}
	done := make(chan error, 1)
	go func() {
		dev, err := CreateTUN(Config{Name: name, MTU: 1420, BusyWait: 20 * time.Second})
		if err == nil {
			dev.Close()
		}
		done <- err
	}()
	holder.Close()
	released = true
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("TUN after the holder closed: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("CreateTUN did not return")
	}
}
