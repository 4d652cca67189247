package daemon_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/daemon"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func adminClient(tb testing.TB, sock string) (gatewayv1.AdminServiceClient, func()) {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	return gatewayv1.NewAdminServiceClient(conn), func() { conn.Close() }
}

// quietDaemon runs the real daemon with a discarding logger (benchmarks);
// stop ends it and waits.
func quietDaemon(tb testing.TB, cfg config.Config) (*daemon.Daemon, func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, cfg, daemon.Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	return d, func() { cancel(); <-done }
}

func fleetSerial(prefix string, i int) string { return fmt.Sprintf("%s-%06d", prefix, i) }

// admitMany enrolls devices prefix-from … prefix-(to-1) and logs each in once
// with a fresh key, conc at once over one TLS connection. It returns the
// login latencies, sorted, and the wall time of the logins alone.
func admitMany(tb testing.TB, d *daemon.Daemon, admin gatewayv1.AdminServiceClient, prefix string, from, to, conc int) ([]time.Duration, time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for start := from; start < to; start += 5000 {
		req := &gatewayv1.EnrollDevicesRequest{}
		for i := start; i < min(start+5000, to); i++ {
			req.Devices = append(req.Devices, &gatewayv1.DeviceEnrollment{SerialNumber: fleetSerial(prefix, i), HardwareId: "HW-" + fleetSerial(prefix, i)})
		}
		if _, err := admin.EnrollDevices(ctx, req); err != nil {
			tb.Fatal(err)
		}
	}
	keys := make([][]byte, to-from)
	for i := range keys {
		keys[i] = newKey(tb)
	}
	conn, err := agent.Dial(d.GRPCAddr().String(), agent.TLSOptions{Pin: d.Fingerprint()})
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	dev := gatewayv1.NewDeviceServiceClient(conn)
	lat := make([]time.Duration, to-from)
	errs := make(chan error, to-from)
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	began := time.Now()
	for i := from; i < to; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			start := time.Now()
			_, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: fleetSerial(prefix, i), HardwareId: "HW-" + fleetSerial(prefix, i), PublicKey: keys[i-from]})
			lat[i-from] = time.Since(start)
			if err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	wall := time.Since(began)
	close(errs)
	for err := range errs {
		tb.Fatalf("login: %v", err)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat, wall
}
