package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// rawConnFrom opens a TCP connection to addr from src and does nothing
// with it: an idle stranger holding a connection slot.
func rawConnFrom(t *testing.T, addr, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedAtOnce reports whether the gateway closed c without a word (EOF or
// reset) rather than keeping it open: a read that times out means it is
// still open.
func closedAtOnce(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

func atLeast(got, want float64) error {
	if got < want {
		return fmt.Errorf("counter is %v, want at least %v", got, want)
	}
	return nil
}

// Connection caps against the real daemon: a stranger holding its source's
// connections gets the next one closed at once (counted), while a device
// from another source logs in and pings; the total cap closes a further
// source's connection (counted) without touching the device's; and once
// the stranger lets go, its source is served again.
func TestConnectionCaps(t *testing.T) {
	dir := t.TempDir()
	cfg := hostileConfig(t, dir)
	const perSource, total = 4, 7
	cfg.Throttle.MaxConnsPerSource, cfg.Throttle.MaxConns = perSource, total
	g := startGateway(t, cfg)
	addr := g.d.GRPCAddr().String()
	metrics := g.d.HTTPAddr().String()
	refused := func(reason string) float64 {
		return counter(t, metrics, "dasset_gateway_throttled_total", map[string]string{"call": "connection", "reason": reason})
	}
	const sn, hw = "SN-CAPS-01", "HW-CAPS-01"
	g.enroll(t, [2]string{sn, hw})

	// The stranger (127.0.2.0/24) takes every connection its source may
	// hold; the next one is closed at once and counted.
	held := make([]net.Conn, perSource)
	for i := range held {
		held[i] = rawConnFrom(t, addr, strangerSrc)
	}
	before := refused("source")
	if extra := rawConnFrom(t, addr, strangerSrc); !closedAtOnce(extra) {
		t.Fatalf("connection %d from one source stayed open; the cap is %d", perSource+1, perSource)
	}
	poll.Must(t, 10*time.Second, "source refusal counted", func() error { return atLeast(refused("source"), before+1) })

	// A real device from its own source (127.0.0.1) logs in and pings
	// while the stranger holds its connections.
	a, done := startAgent(t, g, sn, hw, filepath.Join(dir, "agent"))
	waitReady(t, a, done)
	gw := netip.MustParseAddr("100.80.0.1")
	if err := pingUntil(a.Net(), a.Addresses(), gw, 10*time.Second); err != nil {
		t.Fatalf("device → gateway while a stranger holds its source's connections: %v", err)
	}

	// A third source opens as many connections as the whole cap: with the
	// stranger's and the agent's already held, some of them are closed at
	// once and counted as "total", and the device keeps working.
	beforeTotal := refused("total")
	for i := 0; i < total; i++ {
		rawConnFrom(t, addr, "127.0.3.1")
	}
	poll.Must(t, 10*time.Second, "total refusal counted", func() error { return atLeast(refused("total"), beforeTotal+1) })
	if err := pingUntil(a.Net(), a.Addresses(), gw, 10*time.Second); err != nil {
		t.Fatalf("device → gateway after the total cap was reached: %v", err)
	}

	// The stranger lets go: its source is served again (a real call gets a
	// real answer, not a closed connection).
	for _, c := range held {
		c.Close()
	}
	dev := gatewayv1.NewDeviceServiceClient(connFrom(t, addr, g.d.Fingerprint(), strangerSrc))
	poll.Must(t, 10*time.Second, "the stranger's source served again", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: "SN-NOBODY-01", HardwareId: "HW-X", PublicKey: make32(9)})
		if status.Code(err) != codes.Unauthenticated {
			return fmt.Errorf("login from the stranger's source: %v, want Unauthenticated", err)
		}
		return nil
	})
}
