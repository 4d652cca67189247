package daemon_test

import (
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
)

// BenchmarkLogin measures first logins of enrolled devices against the real
// daemon in process (netstack data plane), 64 at once over one shared TLS
// connection, so the figure is the gateway's own work per login, not the
// handshake. dasset-bench measures the whole thing with a handshake per
// device.
func BenchmarkLogin(b *testing.B) {
	cfg := testConfig(b, b.TempDir())
	d, stop := quietDaemon(b, cfg)
	defer stop()
	admin, closeAdmin := adminClient(b, cfg.Admin.Socket)
	defer closeAdmin()
	b.ResetTimer()
	_, wall := admitMany(b, d, admin, "DS-BL", 0, b.N, 64)
	b.ReportMetric(float64(b.N)/wall.Seconds(), "logins/s")
}

// BenchmarkRestart measures how long a restart takes to re-add every
// admitted device's peer from the store (daemon.New: open, restore, listen)
// with 10,000 admitted devices. Each iteration is one restart.
func BenchmarkRestart(b *testing.B) {
	const devices = 10000
	cfg := testConfig(b, b.TempDir())
	d, stop := quietDaemon(b, cfg)
	admin, closeAdmin := adminClient(b, cfg.Admin.Socket)
	admitMany(b, d, admin, "DS-RS", 0, devices, 64)
	closeAdmin()
	stop()

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		_, stop := quietDaemon(b, cfg)
		b.ReportMetric(time.Since(start).Seconds(), "s/restart")
		b.StopTimer()
		stop()
		b.StartTimer()
	}
	b.ReportMetric(devices, "peers")
}

// BenchmarkLoginPostgres is BenchmarkLogin with store.driver postgres, on a
// throw-away cluster on the same machine (pgtest: unix socket, fsync off,
// so a durable production database will be slower). Run it beside
// BenchmarkLogin for the SQLite figure.
func BenchmarkLoginPostgres(b *testing.B) {
	cluster := pgtest.Start(b)
	cfg := testConfig(b, b.TempDir())
	cfg.Store = config.Store{Driver: config.DriverPostgres, DSN: cluster.NewDatabase(b)}
	d, stop := quietDaemon(b, cfg)
	defer stop()
	admin, closeAdmin := adminClient(b, cfg.Admin.Socket)
	defer closeAdmin()
	b.ResetTimer()
	_, wall := admitMany(b, d, admin, "DS-BP", 0, b.N, 64)
	b.ReportMetric(float64(b.N)/wall.Seconds(), "logins/s")
}
