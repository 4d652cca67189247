package daemon_test

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

func p99(l []time.Duration) time.Duration { return l[len(l)*99/100] }

// BenchmarkLoginP99DuringPrune: login p99 on an idle gateway beside login
// p99 while the pruner deletes ROWS expired connection-log rows (1,000,000
// by default; target in docs/ARCHITECTURE.md: within 2× of idle). Run with -benchtime 1x.
func BenchmarkLoginP99DuringPrune(b *testing.B) {
	const rows, logins = 1_000_000, 2000
	cfg := testConfig(b, b.TempDir())
	cfg.Retention.Interval = time.Hour
	if v := os.Getenv("DASSET_BENCH_BATCH"); v != "" {
		cfg.Retention.BatchSize, _ = strconv.Atoi(v)
	}
	// run starts the daemon (its pruner runs at once) and logs in fresh
	// devices while it works.
	run := func(prefix string) ([]time.Duration, time.Duration) {
		d, stop := quietDaemon(b, cfg)
		defer stop()
		admin, closeAdmin := adminClient(b, cfg.Admin.Socket)
		defer closeAdmin()
		return admitMany(b, d, admin, prefix, 0, logins, 16)
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
