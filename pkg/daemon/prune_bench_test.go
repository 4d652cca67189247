package daemon_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/daemon"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// loginLatencies runs n first logins (16 at once, one shared TLS connection)
// of devices prefix-0..n-1 and returns their latencies, sorted.
func loginLatencies(b *testing.B, d *daemon.Daemon, admin gatewayv1.AdminServiceClient, prefix string, n int) []time.Duration {
	ctx := context.Background()
	req := &gatewayv1.EnrollDevicesRequest{}
	for i := 0; i < n; i++ {
		req.Devices = append(req.Devices, &gatewayv1.DeviceEnrollment{SerialNumber: fmt.Sprintf("%s-%05d", prefix, i), HardwareId: "HW-P"})
	}
	if _, err := admin.EnrollDevices(ctx, req); err != nil {
		b.Fatal(err)
	}
	conn, err := agent.Dial(d.GRPCAddr().String(), agent.TLSOptions{Pin: d.Fingerprint()})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	dev := gatewayv1.NewDeviceServiceClient(conn)
	lat := make([]time.Duration, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			var priv [32]byte
			_, _ = rand.Read(priv[:])
			pub, _ := curve25519.X25519(priv[:], curve25519.Basepoint)
			start := time.Now()
			if _, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: fmt.Sprintf("%s-%05d", prefix, i), HardwareId: "HW-P", PublicKey: pub}); err != nil {
				b.Error(err)
			}
			lat[i] = time.Since(start)
		}(i)
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat
}

func p99(l []time.Duration) time.Duration { return l[len(l)*99/100] }

// BenchmarkLoginP99DuringPrune: login p99 on an idle gateway beside login
// p99 while the pruner deletes ROWS expired connection-log rows (1,000,000
// by default; DESIGN.md: within 2× of idle). Run with -benchtime 1x.
func BenchmarkLoginP99DuringPrune(b *testing.B) {
	const rows, logins = 1_000_000, 2000
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
	cfg.Retention.Interval = time.Hour
	if v := os.Getenv("DASSET_BENCH_BATCH"); v != "" {
		cfg.Retention.BatchSize, _ = strconv.Atoi(v)
	}
	quiet := daemon.Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))}

	run := func(prefix string) ([]time.Duration, time.Duration) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		d, err := daemon.New(ctx, cfg, quiet)
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }() // the pruner runs at once
		admin, closeAdmin := adminClient(b, cfg.Admin.Socket)
		defer closeAdmin()
		start := time.Now()
		lat := loginLatencies(b, d, admin, prefix, logins)
		took := time.Since(start)
		cancel()
		<-done
		return lat, took
	}
	b.StopTimer()
	idle, _ := run("DS-IDLE") // nothing to prune
	// Fill the connection log with expired rows while the daemon is down.
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(cfg.DataDir, "gateway.db"))
	if err != nil {
		b.Fatal(err)
	}
	old := time.Now().Add(-60 * 24 * time.Hour).Truncate(time.Minute)
	batch := make([]store.ConnLogEntry, 5000)
	for i := 0; i < rows; i += len(batch) {
		for j := range batch {
			var p privacy.Pseudonym
			_, _ = rand.Read(p[:])
			batch[j] = store.ConnLogEntry{Time: old, Event: "login", Outcome: "ok", Pseudonym: p, SourcePrefix: "198.51.100.0/24"}
		}
		if err := st.AppendConnLog(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	st.Close()
	b.StartTimer()
	busy, took := run("DS-BUSY")
	b.StopTimer()
	b.ReportMetric(float64(p99(idle).Microseconds())/1000, "idle-p99-ms")
	b.ReportMetric(float64(p99(busy).Microseconds())/1000, "prune-p99-ms")
	b.ReportMetric(float64(p99(busy))/float64(p99(idle)), "p99-ratio")
	b.ReportMetric(took.Seconds(), "busy-logins-s")
}
