package daemon_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/daemon"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// BenchmarkLogin measures first logins of enrolled devices against the real
// daemon in process (netstack data plane), over one shared TLS connection so
// the figure is the gateway's own work per login, not the handshake.
// dasset-bench measures the whole thing with a handshake per device.
func BenchmarkLogin(b *testing.B) {
	dir := b.TempDir()
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Tunnel.Mode = "netstack"
	cfg.Tunnel.UAPI = false
	c, _ := net.ListenPacket("udp", "127.0.0.1:0")
	cfg.Tunnel.ListenPort = c.LocalAddr().(*net.UDPAddr).Port
	c.Close()
	cfg.GRPC.Listen = "127.0.0.1:0"
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Admin.Socket = filepath.Join(dir, "admin.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := daemon.New(ctx, cfg, daemon.Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()

	g := &testGateway{d: d, cfg: cfg}
	admin, closeAdmin := adminClient(b, cfg.Admin.Socket)
	defer closeAdmin()
	g.admin = admin
	req := &gatewayv1.EnrollDevicesRequest{}
	for i := 0; i < b.N; i++ {
		req.Devices = append(req.Devices, &gatewayv1.DeviceEnrollment{SerialNumber: fmt.Sprintf("DS-BL-%07d", i), HardwareId: fmt.Sprintf("HW-%07d", i)})
	}
	for start := 0; start < len(req.Devices); start += 5000 {
		part := &gatewayv1.EnrollDevicesRequest{Devices: req.Devices[start:min(start+5000, len(req.Devices))]}
		if _, err := admin.EnrollDevices(ctx, part); err != nil {
			b.Fatal(err)
		}
	}
	keys := make([][]byte, b.N)
	for i := range keys {
		var priv [32]byte
		_, _ = rand.Read(priv[:])
		keys[i], _ = curve25519.X25519(priv[:], curve25519.Basepoint)
	}
	conn, err := agent.Dial(d.GRPCAddr().String(), agent.TLSOptions{Pin: d.Fingerprint()})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	dev := gatewayv1.NewDeviceServiceClient(conn)
	b.ResetTimer()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	start := time.Now()
	for i := 0; i < b.N; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: fmt.Sprintf("DS-BL-%07d", i), HardwareId: fmt.Sprintf("HW-%07d", i), PublicKey: keys[i]}); err != nil {
				b.Error(err)
			}
		}(i)
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "logins/s")
}

func adminClient(tb testing.TB, sock string) (gatewayv1.AdminServiceClient, func()) {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	return gatewayv1.NewAdminServiceClient(conn), func() { conn.Close() }
}

// BenchmarkRestart measures how long a restart takes to re-add every
// admitted device's peer from the store (daemon.New: open, restore, listen)
// with 10,000 admitted devices. Each iteration is one restart.
func BenchmarkRestart(b *testing.B) {
	const devices = 10000
	dir := b.TempDir()
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Tunnel.Mode = "netstack"
	cfg.Tunnel.UAPI = false
	c, _ := net.ListenPacket("udp", "127.0.0.1:0")
	cfg.Tunnel.ListenPort = c.LocalAddr().(*net.UDPAddr).Port
	c.Close()
	cfg.GRPC.Listen = "127.0.0.1:0"
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Admin.Socket = filepath.Join(dir, "admin.sock")
	quiet := daemon.Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))}

	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, cfg, quiet)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	admin, closeAdmin := adminClient(b, cfg.Admin.Socket)
	for start := 0; start < devices; start += 5000 {
		req := &gatewayv1.EnrollDevicesRequest{}
		for i := start; i < start+5000; i++ {
			req.Devices = append(req.Devices, &gatewayv1.DeviceEnrollment{SerialNumber: fmt.Sprintf("DS-RS-%06d", i), HardwareId: "HW-RS"})
		}
		if _, err := admin.EnrollDevices(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	closeAdmin()
	conn, err := agent.Dial(d.GRPCAddr().String(), agent.TLSOptions{Pin: d.Fingerprint()})
	if err != nil {
		b.Fatal(err)
	}
	dev := gatewayv1.NewDeviceServiceClient(conn)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := 0; i < devices; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			var priv [32]byte
			_, _ = rand.Read(priv[:])
			pub, _ := curve25519.X25519(priv[:], curve25519.Basepoint)
			if _, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: fmt.Sprintf("DS-RS-%06d", i), HardwareId: "HW-RS", PublicKey: pub}); err != nil {
				b.Error(err)
			}
		}(i)
	}
	wg.Wait()
	conn.Close()
	cancel()
	<-done

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		d, err := daemon.New(ctx, cfg, quiet)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/restart")
		b.StopTimer()
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		cancel()
		<-done
		b.StartTimer()
	}
	b.ReportMetric(devices, "peers")
}
