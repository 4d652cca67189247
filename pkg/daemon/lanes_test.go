package daemon_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// A device that carries its pinned key logs in while strangers from many
// sources keep the open admission lanes full: the flood's logins are
// refused at once (the rejection counter keeps rising during the device's
// logins, so the lanes were full while it logged in), the device's never.
func TestPinnedDeviceHasItsOwnLane(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.GRPC.MaxConcurrentLogins = 1 // one slot, 16 waiting (the queue is 16× the slots)
	g := startGateway(t, cfg)
	addr, metrics := g.d.GRPCAddr().String(), g.d.HTTPAddr().String()
	rejected := func() float64 { return counter(t, metrics, "dasset_gateway_admission_rejections_total", nil) }
	const sn, hw = "SN-LANE-01", "HW-LANE-01"
	g.enroll(t, [2]string{sn, hw})
	key := newKey(t)
	dev := gatewayv1.NewDeviceServiceClient(connFrom(t, addr, g.d.Fingerprint(), "127.0.0.1"))
	login := func(ctx context.Context) error {
		_, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: sn, HardwareId: hw, PublicKey: key})
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := login(ctx); err != nil {
		t.Fatalf("first login (pins the key): %v", err)
	}

	// The flood: 8 sources × 16 streams (gRPC allows 16 per connection) of
	// unknown serials, far more than one slot and 16 waiting places.
	fctx, stopFlood := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var floodErr error
	var errOnce sync.Once
	for s := range 8 {
		c := gatewayv1.NewDeviceServiceClient(connFrom(t, addr, g.d.Fingerprint(), fmt.Sprintf("127.0.%d.1", 10+s)))
		for w := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; fctx.Err() == nil && i < 1_000_000; i++ {
					_, err := c.Login(fctx, &gatewayv1.DeviceLoginRequest{SerialNumber: fmt.Sprintf("SN-NOBODY-%d-%d-%d", s, w, i), HardwareId: "HW-GUESS", PublicKey: make32(byte(1 + w))})
					if fctx.Err() != nil {
						return
					}
					if code := status.Code(err); code != codes.Unauthenticated && code != codes.ResourceExhausted {
						errOnce.Do(func() { floodErr = err })
						return
					}
				}
			}()
		}
	}
	defer func() { stopFlood(); wg.Wait() }()
	poll.Must(t, 30*time.Second, "the flood fills the open lanes (rejections counted)", func() error { return atLeast(rejected(), 1) })

	const rounds = 20
	before := rejected()
	for i := range rounds {
		if err := login(ctx); err != nil {
			t.Fatalf("pinned re-login %d of %d during the flood: %v", i+1, rounds, err)
		}
	}
	after := rejected()
	stopFlood()
	wg.Wait()
	if floodErr != nil {
		t.Fatalf("flood login: %v, want Unauthenticated or ResourceExhausted", floodErr)
	}
	if after <= before {
		t.Fatalf("no flood login was rejected during the device's %d logins (%v → %v): the lanes were not shown full", rounds, before, after)
	}
	t.Logf("%d pinned re-logins admitted while %v flood logins were rejected", rounds, after-before)
}
