package connlog

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

type fakeKeys struct{}

func (fakeKeys) Pseudonym(day time.Time, idx privacy.BlindIndex) (privacy.Pseudonym, error) {
	var p privacy.Pseudonym
	copy(p[:], idx[:16])
	p[0] ^= byte(day.Day())
	return p, nil
}

type appender struct {
	mu    sync.Mutex
	rows  []store.ConnLogEntry
	calls int
	fail  int // fail this many calls first
}

func (a *appender) AppendConnLog(_ context.Context, e []store.ConnLogEntry) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if a.fail > 0 {
		a.fail--
		return errors.New("disk full")
	}
	a.rows = append(a.rows, e...)
	return nil
}

func (a *appender) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.rows)
}

// TestEntryHoldsOnlyThePolicyForm: minute precision, truncated source,
// pseudonym; no virtual address field exists at all.
func TestEntryHoldsOnlyThePolicyForm(t *testing.T) {
	at := time.Date(2026, 11, 29, 10, 17, 42, 999, time.UTC)
	var idx privacy.BlindIndex
	idx[0] = 7
	for _, tc := range []struct {
		src  string
		want string
	}{{"198.51.100.23", "198.51.100.0/24"}, {"2001:db8:0:1::23", "2001:db8::/48"}, {"::ffff:198.51.100.9", "198.51.100.0/24"}} {
		e, err := Entry(fakeKeys{}, gateway.ConnEvent{At: at, Event: gateway.EventLogin, Outcome: gateway.OutcomeDenied, Index: idx, Source: privacy.NewAddr(netip.MustParseAddr(tc.src))})
		if err != nil {
			t.Fatal(err)
		}
		if e.SourcePrefix != tc.want || !e.Time.Equal(at.Truncate(time.Minute)) || e.Outcome != "denied" || e.Event != "login" {
			t.Fatalf("%s: entry %+v", tc.src, e)
		}
		if e.Pseudonym == (privacy.Pseudonym{}) {
			t.Fatal("no pseudonym for a known subject")
		}
	}
	// Malformed input has no subject: no pseudonym, still a row.
	e, err := Entry(fakeKeys{}, gateway.ConnEvent{At: at, Event: gateway.EventLogin, Outcome: gateway.OutcomeInvalid})
	if err != nil || e.Pseudonym != (privacy.Pseudonym{}) || e.SourcePrefix != "" {
		t.Fatalf("subjectless entry %+v, %v", e, err)
	}
}

// TestRecorderBatchesAndLosesNothing: rows are written in batches; a failed
// write keeps them for the next flush; stopping flushes the rest.
func TestRecorderBatchesAndLosesNothing(t *testing.T) {
	app := &appender{fail: 1}
	r := New(app, fakeKeys{}, Options{FlushInterval: 20 * time.Millisecond, FlushSize: 50})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	for i := 0; i < 1000; i++ {
		r.Record(gateway.ConnEvent{At: time.Now(), Event: gateway.EventLogin, Outcome: gateway.OutcomeOK})
	}
	deadline := time.Now().Add(5 * time.Second)
	for app.count() < 900 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		r.Record(gateway.ConnEvent{At: time.Now(), Event: gateway.EventLogout, Outcome: gateway.OutcomeOK})
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if n := app.count(); n != 1010 {
		t.Fatalf("%d rows written, want 1010 (one failed write must not lose rows)", n)
	}
	if app.calls < 2 || app.calls > 1010/2 {
		t.Fatalf("%d writes for 1010 rows: not batched", app.calls)
	}
	// After Run ends, rows are refused and counted as dropped, not queued for ever.
	dropped := 0
	r.opt.OnDrop = func(n int) { dropped += n }
	r.Record(gateway.ConnEvent{At: time.Now(), Event: gateway.EventLogin})
	if dropped != 1 {
		t.Fatalf("record after stop: dropped %d", dropped)
	}
}
