package retention_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/retention"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// t0 is the fake clock's reading: noon UTC, on the minute.
var t0 = time.Date(2030, 6, 15, 12, 0, 0, 0, time.UTC)

const day = 24 * time.Hour

// policyTables is the retention of configs/policy.yaml for the prunable
// tables (tokens: pruned as soon as expired).
func policyTables() map[string]time.Duration {
	return map[string]time.Duration{
		store.TableConnLog:      720 * time.Hour,
		store.TableSessions:     720 * time.Hour,
		store.TableBindingCodes: 24 * time.Hour,
		store.TableAuthFailures: 24 * time.Hour,
		store.TableDeviceTokens: 0,
		store.TableAccessTokens: 0,
	}
}

func random[T ~[32]byte]() T {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return T(b)
}

func pseudonym() privacy.Pseudonym {
	var p privacy.Pseudonym
	_, _ = rand.Read(p[:])
	return p
}

func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func openStore(t testing.TB) (*store.SQLite, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "gateway.db")
	s, err := store.OpenSQLite(context.Background(), path, store.WithClock(func() time.Time { return t0 }))
	must(t, err, "OpenSQLite")
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

// countRows counts the rows of table with a separate read-only connection.
func countRows(t testing.TB, path, table string) int64 {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	must(t, err, "open read-only")
	defer db.Close()
	var n int64
	must(t, db.QueryRow(`SELECT COUNT(*) FROM `+table).Scan(&n), "count "+table)
	return n
}

func enroll(t testing.TB, s store.Store, n int) []store.Device {
	t.Helper()
	ctx := context.Background()
	batch := make([]store.Enrollment, n)
	for i := range batch {
		batch[i] = store.Enrollment{Index: random[privacy.BlindIndex](), SealedSerial: []byte("sealed-serial-bytes"), Verifier: random[privacy.Verifier]()}
	}
	_, err := s.EnrollDevices(ctx, batch)
	must(t, err, "EnrollDevices")
	out := make([]store.Device, n)
	for i, e := range batch {
		out[i], err = s.DeviceByIndex(ctx, e.Index)
		must(t, err, "DeviceByIndex")
	}
	return out
}

func admission(id int64, expires time.Time) store.Admission {
	return store.Admission{
		DeviceID: id, Key: random[store.Key](), ReplaceKey: true, First: 1, Last: 100000,
		Day: t0.Format(time.DateOnly), TokenHash: random[[32]byte](), TokenExpires: expires, Gateway: "gw-retention",
	}
}

// appendConnLog adds n entries at time at, in transactions of 5,000.
func appendConnLog(t testing.TB, s store.Store, n int, at time.Time) {
	t.Helper()
	for n > 0 {
		k := min(n, 5000)
		batch := make([]store.ConnLogEntry, k)
		for i := range batch {
			batch[i] = store.ConnLogEntry{Time: at, Event: "login", Outcome: "ok", Pseudonym: pseudonym(), SourcePrefix: "198.51.100.0/24"}
		}
		must(t, s.AppendConnLog(context.Background(), batch), "AppendConnLog")
		n -= k
	}
}

// fakeEndpoints records the idle timeouts it was asked for.
type fakeEndpoints struct {
	mu    sync.Mutex
	idles []time.Duration
	n     int
}

func (f *fakeEndpoints) ForgetIdleEndpoints(_ context.Context, idle time.Duration) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.idles = append(f.idles, idle)
	return f.n, nil
}

// recorder wraps a store, recording every Prune call and whether two ran at
// once, and counts Checkpoint calls.
type recorder struct {
	*store.SQLite
	mu          sync.Mutex
	calls       []pruneCall
	inflight    atomic.Int32
	overlap     atomic.Bool
	checkpoints atomic.Int32
	delay       time.Duration
}

type pruneCall struct {
	table string
	limit int
	n     int
}

func (r *recorder) Prune(ctx context.Context, table string, before time.Time, limit int) (int, error) {
	if r.inflight.Add(1) > 1 {
		r.overlap.Store(true)
	}
	defer r.inflight.Add(-1)
	if r.delay > 0 {
		time.Sleep(r.delay)
	}
	n, err := r.SQLite.Prune(ctx, table, before, limit)
	r.mu.Lock()
	r.calls = append(r.calls, pruneCall{table, limit, n})
	r.mu.Unlock()
	return n, err
}

func (r *recorder) Checkpoint(ctx context.Context) error {
	r.checkpoints.Add(1)
	return r.SQLite.Checkpoint(ctx)
}

func TestRunOncePrunesExpired(t *testing.T) {
	ctx := context.Background()
	s, path := openStore(t)
	keys, err := privacy.OpenKeystore(filepath.Join(t.TempDir(), "keys"))
	must(t, err, "OpenKeystore")

	// connection_log: 30 expired, 20 inside retention (one a minute inside
	// the boundary, and one row exactly at it, which "older than" keeps).
	appendConnLog(t, s, 29, t0.Add(-40*day))
	appendConnLog(t, s, 1, t0.Add(-720*time.Hour-time.Minute))
	appendConnLog(t, s, 1, t0.Add(-720*time.Hour))
	appendConnLog(t, s, 1, t0.Add(-720*time.Hour+time.Minute))
	appendConnLog(t, s, 18, t0.Add(-time.Hour))

	devs := enroll(t, s, 4)
	acct, err := s.CreateAccount(ctx, store.Account{NameIndex: random[privacy.BlindIndex](), SealedName: []byte("sealed"), PasswordHash: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"})
	must(t, err, "CreateAccount")
	// Sessions need the device bound to the account (the code is spent).
	bindCode := random[[32]byte]()
	must(t, s.CreateBindingCode(ctx, bindCode, devs[0].ID, t0.Add(time.Hour)), "CreateBindingCode")
	_, err = s.RedeemBindingCode(ctx, bindCode, acct.ID, t0)
	must(t, err, "RedeemBindingCode")

	// sessions: closed 31 days ago (expired), closed yesterday, and one
	// opened 60 days ago still open (never pruned while open).
	for i, c := range []struct {
		opened, closed time.Time
	}{
		{t0.Add(-32 * day), t0.Add(-31 * day)},
		{t0.Add(-33 * day), t0.Add(-32 * day)},
		{t0.Add(-2 * day), t0.Add(-day)},
		{t0.Add(-60 * day), time.Time{}},
	} {
		sess, err := s.OpenSession(ctx, store.Session{ID: "sess-" + string(rune('a'+i)), AccountID: acct.ID, DeviceID: devs[0].ID,
			ClientKey: random[store.Key](), OpenedAt: c.opened, ExpiresAt: c.opened.Add(time.Hour)}, 1, 1000)
		must(t, err, "OpenSession")
		if !c.closed.IsZero() {
			_, err := s.CloseSession(ctx, sess.ID, c.closed)
			must(t, err, "CloseSession")
		}
	}

	// binding_codes (24h past expiry): expired 25h ago, 23h ago, valid.
	for _, exp := range []time.Time{t0.Add(-25 * time.Hour), t0.Add(-23 * time.Hour), t0.Add(10 * time.Minute)} {
		must(t, s.CreateBindingCode(ctx, random[[32]byte](), devs[1].ID, exp), "CreateBindingCode")
	}
	// auth_failures (24h): 3 old, 2 recent.
	idx := random[privacy.BlindIndex]()
	for _, at := range []time.Time{t0.Add(-48 * time.Hour), t0.Add(-25 * time.Hour), t0.Add(-24*time.Hour - time.Second), t0.Add(-time.Hour), t0} {
		must(t, s.RecordAuthFailure(ctx, idx, at), "RecordAuthFailure")
	}
	// device_tokens (0: as soon as expired): two expired, one valid.
	for i, exp := range []time.Time{t0.Add(-time.Minute), t0.Add(-10 * day), t0.Add(time.Hour)} {
		_, err := s.Admit(ctx, admission(devs[1+i].ID, exp))
		must(t, err, "Admit")
	}
	// access_tokens: one expired a second ago, one valid.
	must(t, s.CreateAccessToken(ctx, random[[32]byte](), acct.ID, t0.Add(-time.Second)), "CreateAccessToken")
	must(t, s.CreateAccessToken(ctx, random[[32]byte](), acct.ID, t0.Add(time.Hour)), "CreateAccessToken")

	wantPruned := map[string]int64{
		store.TableConnLog: 30, store.TableSessions: 2, store.TableBindingCodes: 1,
		store.TableAuthFailures: 3, store.TableDeviceTokens: 2, store.TableAccessTokens: 1,
	}
	before := map[string]int64{}
	for table := range wantPruned {
		before[table] = countRows(t, path, table)
	}

	// Day keys: two past the key retention (destroyed), two inside it.
	old1, old2 := t0.Add(-40*day), t0.Add(-31*day)
	keep1, keep2 := t0.Add(-29*day), t0
	pidx := random[privacy.BlindIndex]()
	recent, err := keys.Pseudonym(keep1, pidx)
	must(t, err, "Pseudonym")
	for _, d := range []time.Time{old1, old2, keep2} {
		_, err := keys.Pseudonym(d, pidx)
		must(t, err, "Pseudonym")
	}
	keyFile := func(d time.Time) string {
		return filepath.Join(keys.Dir(), "days", d.UTC().Format(time.DateOnly)+".key")
	}
	if _, err := os.Stat(keyFile(old1)); err != nil {
		t.Fatalf("day key file not where the test expects it: %v", err)
	}

	ep := &fakeEndpoints{n: 3}
	reg := prometheus.NewPedanticRegistry()
	interval := time.Minute
	p, err := retention.New(s, keys, ep, retention.Config{
		Interval: interval, Tables: policyTables(), IdleTimeout: 7 * time.Minute,
		Now: func() time.Time { return t0 },
	}, reg)
	must(t, err, "New")
	m := metricsOf(t, reg)
	for table := range wantPruned {
		if got := m.pruned(table); got != 0 {
			t.Errorf("pruned_total{%s} = %v before any run", table, got)
		}
	}

	res, err := p.RunOnce(ctx)
	must(t, err, "RunOnce")

	if !res.RanAt.Equal(t0) {
		t.Errorf("RanAt = %v, want %v", res.RanAt, t0)
	}
	for table, want := range wantPruned {
		after := countRows(t, path, table)
		if got := before[table] - after; got != want {
			t.Errorf("%s: %d rows deleted (%d → %d), want %d", table, got, before[table], after, want)
		}
		if res.Pruned[table] != want {
			t.Errorf("Result.Pruned[%s] = %d, want %d", table, res.Pruned[table], want)
		}
		if got := m.pruned(table); got != float64(want) {
			t.Errorf("retention_pruned_total{%s} = %v, want %d", table, got, want)
		}
		limit := policyTables()[table]
		if got := m.limit(table); got != limit.Seconds() {
			t.Errorf("retention_limit_seconds{%s} = %v, want %v", table, got, limit.Seconds())
		}
		if got := m.oldest(table); got < 0 || got > (limit+interval).Seconds() {
			t.Errorf("retention_oldest_record_age_seconds{%s} = %v, want within [0, %v]", table, got, (limit + interval).Seconds())
		}
	}
	// The oldest kept connection-log row is the one exactly at the boundary.
	if got := m.oldest(store.TableConnLog); got != (720 * time.Hour).Seconds() {
		t.Errorf("oldest connection_log age %v s, want %v", got, (720 * time.Hour).Seconds())
	}
	// The open session opened 60 days ago is still there.
	if _, err := s.SessionByID(ctx, "sess-d"); err != nil {
		t.Errorf("open session: %v", err)
	}

	// Keys.
	if res.KeysDestroyed != 2 {
		t.Errorf("KeysDestroyed = %d, want 2", res.KeysDestroyed)
	}
	if got := m.keys(); got != 2 {
		t.Errorf("retention_keys_destroyed_total = %v, want 2", got)
	}
	for _, d := range []time.Time{old1, old2} {
		if _, err := os.Stat(keyFile(d)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("key file of %s: stat error %v, want not exist", d.Format(time.DateOnly), err)
		}
		if _, err := keys.Pseudonym(d, pidx); !errors.Is(err, privacy.ErrKeyDestroyed) {
			t.Errorf("Pseudonym(%s) error %v, want ErrKeyDestroyed", d.Format(time.DateOnly), err)
		}
	}
	for _, d := range []time.Time{keep1, keep2} {
		if _, err := os.Stat(keyFile(d)); err != nil {
			t.Errorf("key file of retained day %s: %v", d.Format(time.DateOnly), err)
		}
	}
	again, err := keys.Pseudonym(keep1, pidx)
	if err != nil || again != recent {
		t.Errorf("Pseudonym of a retained day after the run: %v, %v; want the same pseudonym as before", again, err)
	}

	// Endpoints.
	if res.EndpointsForgotten != 3 || len(ep.idles) != 1 || ep.idles[0] != 7*time.Minute {
		t.Errorf("endpoints: forgotten %d, calls %v; want 3 and one call with 7m", res.EndpointsForgotten, ep.idles)
	}

	// The WAL was checkpointed and truncated after the deletions.
	if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() != 0 {
		t.Errorf("WAL is %d bytes after the run, want truncated", fi.Size())
	}

	if got := m.success(); got != 1 {
		t.Errorf("retention_last_run_success = %v, want 1", got)
	}
	if got := m.lastRun(); got != float64(t0.Unix()) {
		t.Errorf("retention_last_run_timestamp_seconds = %v, want %d", got, t0.Unix())
	}
	if n := testutil.CollectAndCount(reg, "dasset_gateway_retention_run_duration_seconds"); n != 1 {
		t.Errorf("run duration histogram: %d series, want 1", n)
	}

	// A second run finds nothing more to delete and counters stay put.
	res2, err := p.RunOnce(ctx)
	must(t, err, "second RunOnce")
	if res2.Total() != 0 || res2.KeysDestroyed != 0 {
		t.Errorf("second run: %+v, want nothing pruned or destroyed", res2)
	}
	if got := m.pruned(store.TableConnLog); got != 30 {
		t.Errorf("retention_pruned_total{connection_log} = %v after a second run, want 30", got)
	}

	// The metrics pass a lint (names, help, units).
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) != 0 {
		t.Errorf("metric lint: %v %v", problems, err)
	}
}

// metricSet reads the pruner's metrics from a registry by name.
type metricSet struct {
	t   testing.TB
	reg prometheus.Gatherer
}

func metricsOf(t testing.TB, reg prometheus.Gatherer) metricSet { return metricSet{t, reg} }

// value is the value of the counter or gauge name with the given table
// label ("" for an unlabelled metric); the test fails when there is none.
func (m metricSet) value(name, table string) float64 {
	m.t.Helper()
	mfs, err := m.reg.Gather()
	must(m.t, err, "Gather")
	for _, mf := range mfs {
		if mf.GetName() != "dasset_gateway_"+name {
			continue
		}
		for _, x := range mf.GetMetric() {
			got := ""
			for _, l := range x.GetLabel() {
				if l.GetName() == "table" {
					got = l.GetValue()
				}
			}
			if got != table {
				continue
			}
			if x.Counter != nil {
				return x.GetCounter().GetValue()
			}
			return x.GetGauge().GetValue()
		}
	}
	m.t.Fatalf("metric dasset_gateway_%s{table=%q} not found", name, table)
	return 0
}

func (m metricSet) pruned(table string) float64 { return m.value("retention_pruned_total", table) }
func (m metricSet) oldest(table string) float64 {
	return m.value("retention_oldest_record_age_seconds", table)
}
func (m metricSet) limit(table string) float64 { return m.value("retention_limit_seconds", table) }
func (m metricSet) keys() float64              { return m.value("retention_keys_destroyed_total", "") }
func (m metricSet) success() float64           { return m.value("retention_last_run_success", "") }
func (m metricSet) lastRun() float64 {
	return m.value("retention_last_run_timestamp_seconds", "")
}

// TestPruneUnderLoad prunes 100,000 expired connection-log rows while eight
// goroutines keep writing; every write must succeed, some during the prune,
// and no Prune call may touch more than 5,000 rows.
func TestPruneUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("inserts 100,000 rows")
	}
	ctx := context.Background()
	s, path := openStore(t)
	const expired, kept = 100000, 1234
	appendConnLog(t, s, expired, t0.Add(-31*day))
	appendConnLog(t, s, kept, t0.Add(-time.Hour))
	devs := enroll(t, s, 4)

	rec := &recorder{SQLite: s}
	p, err := retention.New(rec, nil, nil, retention.Config{
		Tables: map[string]time.Duration{store.TableConnLog: 720 * time.Hour},
		Now:    func() time.Time { return t0 },
	}, prometheus.NewRegistry())
	must(t, err, "New")

	const writers = 8
	var (
		stop      atomic.Bool
		successes atomic.Int64
		wg        sync.WaitGroup
		errMu     sync.Mutex
		writeErrs []error
	)
	deadline := time.Now().Add(2 * time.Minute)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			idx := random[privacy.BlindIndex]()
			for i := 0; i < 1_000_000 && !stop.Load() && time.Now().Before(deadline); i++ {
				var err error
				if w%2 == 0 {
					// A login of its own device: the transaction the pruner
					// must not stall.
					_, err = s.Admit(ctx, admission(devs[w/2].ID, t0.Add(time.Hour)))
				} else {
					err = s.RecordAuthFailure(ctx, idx, t0)
				}
				if err != nil {
					errMu.Lock()
					writeErrs = append(writeErrs, err)
					errMu.Unlock()
					return
				}
				successes.Add(1)
			}
		}()
	}
	// Let the writers start before the prune.
	for i := 0; i < 1000 && successes.Load() < writers; i++ {
		time.Sleep(time.Millisecond)
	}
	startOK := successes.Load()
	res, err := p.RunOnce(ctx)
	during := successes.Load() - startOK
	stop.Store(true)
	wg.Wait()
	must(t, err, "RunOnce")
	for _, err := range writeErrs {
		t.Errorf("concurrent write failed: %v", err)
	}
	if during <= 0 {
		t.Errorf("no concurrent write succeeded while pruning")
	}
	t.Logf("%d concurrent writes succeeded during the prune (%d Prune calls)", during, len(rec.calls))

	if res.Pruned[store.TableConnLog] != expired {
		t.Errorf("pruned %d, want %d", res.Pruned[store.TableConnLog], expired)
	}
	var sum int
	for _, c := range rec.calls {
		if c.limit > retention.MaxBatchSize || c.n > retention.MaxBatchSize || c.n > c.limit {
			t.Errorf("Prune call with limit %d deleted %d rows; at most %d allowed", c.limit, c.n, retention.MaxBatchSize)
		}
		sum += c.n
	}
	if want := expired/retention.MaxBatchSize + 1; len(rec.calls) != want {
		t.Errorf("%d Prune calls, want %d (full batches and one short)", len(rec.calls), want)
	}
	if sum != expired {
		t.Errorf("Prune calls deleted %d rows in all, want %d", sum, expired)
	}
	if got := countRows(t, path, store.TableConnLog); got != kept {
		t.Errorf("connection_log has %d rows after the prune, want the %d unexpired", got, kept)
	}
	if rec.checkpoints.Load() != 1 {
		t.Errorf("%d checkpoints, want 1", rec.checkpoints.Load())
	}
}

// TestRunOnceSerialized runs four RunOnce calls at once: Prune calls never
// overlap, and together they delete every expired row exactly once.
func TestRunOnceSerialized(t *testing.T) {
	ctx := context.Background()
	s, path := openStore(t)
	const expired = 8000
	appendConnLog(t, s, expired, t0.Add(-31*day))
	rec := &recorder{SQLite: s, delay: time.Millisecond}
	p, err := retention.New(rec, nil, nil, retention.Config{
		BatchSize: 500,
		Tables:    map[string]time.Duration{store.TableConnLog: 720 * time.Hour},
		Now:       func() time.Time { return t0 },
	}, prometheus.NewRegistry())
	must(t, err, "New")

	const runs = 4
	var wg sync.WaitGroup
	results := make([]retention.Result, runs)
	errs := make([]error, runs)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = p.RunOnce(ctx)
		}()
	}
	wg.Wait()
	var total int64
	for i := range runs {
		must(t, errs[i], "RunOnce")
		total += results[i].Pruned[store.TableConnLog]
	}
	if rec.overlap.Load() {
		t.Error("two Prune calls ran at once")
	}
	if total != expired {
		t.Errorf("runs deleted %d rows in all, want %d", total, expired)
	}
	if got := countRows(t, path, store.TableConnLog); got != 0 {
		t.Errorf("%d rows left", got)
	}
	for _, c := range rec.calls {
		if c.limit != 500 {
			t.Errorf("Prune limit %d, want the configured 500", c.limit)
		}
	}
}

// TestRunOnceErrorInOneTable: a table the store refuses fails the run, but
// the other tables, the keys and the endpoints are still handled.
func TestRunOnceErrorInOneTable(t *testing.T) {
	ctx := context.Background()
	s, path := openStore(t)
	appendConnLog(t, s, 10, t0.Add(-31*day))
	keys, err := privacy.OpenKeystore(filepath.Join(t.TempDir(), "keys"))
	must(t, err, "OpenKeystore")
	old := t0.Add(-40 * day)
	_, err = keys.Pseudonym(old, random[privacy.BlindIndex]())
	must(t, err, "Pseudonym")
	ep := &fakeEndpoints{n: 1}
	reg := prometheus.NewRegistry()
	p, err := retention.New(s, keys, ep, retention.Config{
		Tables: map[string]time.Duration{"no_such_table": time.Hour, store.TableConnLog: 720 * time.Hour},
		Now:    func() time.Time { return t0 },
	}, reg)
	must(t, err, "New")
	res, err := p.RunOnce(ctx)
	if err == nil || !strings.Contains(err.Error(), "no_such_table") || !errors.Is(err, privacy.ErrInvalid) {
		t.Fatalf("RunOnce error %v, want the store's refusal of no_such_table", err)
	}
	if res.Pruned[store.TableConnLog] != 10 || countRows(t, path, store.TableConnLog) != 0 {
		t.Errorf("connection_log: pruned %d, %d left; want 10, 0", res.Pruned[store.TableConnLog], countRows(t, path, store.TableConnLog))
	}
	if res.KeysDestroyed != 1 || res.EndpointsForgotten != 1 {
		t.Errorf("keys destroyed %d, endpoints forgotten %d; want 1, 1", res.KeysDestroyed, res.EndpointsForgotten)
	}
	m := metricsOf(t, reg)
	if m.success() != 0 {
		t.Errorf("retention_last_run_success = %v, want 0", m.success())
	}
	if m.pruned(store.TableConnLog) != 10 || m.pruned("no_such_table") != 0 {
		t.Errorf("pruned_total: connection_log %v, no_such_table %v", m.pruned(store.TableConnLog), m.pruned("no_such_table"))
	}
}

// failingKeys fails key destruction.
type failingKeys struct{}

func (failingKeys) DestroyKeysBefore(time.Time) (int, error) { return 0, errors.New("disk on fire") }

func TestRunOnceKeyErrorFailsRun(t *testing.T) {
	s, _ := openStore(t)
	reg := prometheus.NewRegistry()
	p, err := retention.New(s, failingKeys{}, nil, retention.Config{
		Tables: policyTables(), Now: func() time.Time { return t0 },
	}, reg)
	must(t, err, "New")
	if _, err := p.RunOnce(context.Background()); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("RunOnce error %v, want the key destruction failure", err)
	}
	if m := metricsOf(t, reg); m.success() != 0 {
		t.Errorf("retention_last_run_success = %v, want 0", m.success())
	}
}

// TestRunOnceCancelled: a cancelled context stops the run with its error.
func TestRunOnceCancelled(t *testing.T) {
	s, path := openStore(t)
	appendConnLog(t, s, 10, t0.Add(-31*day))
	p, err := retention.New(s, nil, nil, retention.Config{
		Tables: policyTables(), Now: func() time.Time { return t0 },
	}, prometheus.NewRegistry())
	must(t, err, "New")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.RunOnce(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("RunOnce error %v, want context.Canceled", err)
	}
	if got := countRows(t, path, store.TableConnLog); got != 10 {
		t.Errorf("%d rows left, want 10 (nothing deleted)", got)
	}
}

// TestKeyCutAtDayBoundary: a day's key goes once the day has ended at least
// the key retention ago, not before.
func TestKeyCutAtDayBoundary(t *testing.T) {
	s, _ := openStore(t)
	keys, err := privacy.OpenKeystore(filepath.Join(t.TempDir(), "keys"))
	must(t, err, "OpenKeystore")
	d := time.Date(2030, 5, 10, 0, 0, 0, 0, time.UTC)
	idx := random[privacy.BlindIndex]()
	_, err = keys.Pseudonym(d, idx)
	must(t, err, "Pseudonym")
	var now time.Time
	p, err := retention.New(s, keys, nil, retention.Config{
		KeyRetention: 720 * time.Hour, Now: func() time.Time { return now },
	}, prometheus.NewRegistry())
	must(t, err, "New")
	end := d.Add(day) // the day ends here
	now = end.Add(720*time.Hour - time.Second)
	res, err := p.RunOnce(context.Background())
	must(t, err, "RunOnce")
	if res.KeysDestroyed != 0 {
		t.Fatalf("key destroyed a second before %s after its day", 720*time.Hour)
	}
	if _, err := keys.Pseudonym(d, idx); err != nil {
		t.Fatalf("Pseudonym before destruction: %v", err)
	}
	now = end.Add(720 * time.Hour)
	res, err = p.RunOnce(context.Background())
	must(t, err, "RunOnce")
	if res.KeysDestroyed != 1 {
		t.Fatalf("KeysDestroyed = %d at %s after the day, want 1", res.KeysDestroyed, 720*time.Hour)
	}
	if _, err := keys.Pseudonym(d, idx); !errors.Is(err, privacy.ErrKeyDestroyed) {
		t.Fatalf("Pseudonym after destruction: %v, want ErrKeyDestroyed", err)
	}
	if keys.Horizon() != "2030-05-11" {
		t.Errorf("horizon %q, want 2030-05-11", keys.Horizon())
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	s, _ := openStore(t)
	keys, err := privacy.OpenKeystore(filepath.Join(t.TempDir(), "keys"))
	must(t, err, "OpenKeystore")
	for _, c := range []struct {
		name  string
		keys  retention.Keys
		cfg   retention.Config
		field string
	}{
		{"negative interval", nil, retention.Config{Interval: -time.Second}, "interval"},
		{"batch too big", nil, retention.Config{BatchSize: 5001}, "batch_size"},
		{"negative batch", nil, retention.Config{BatchSize: -1}, "batch_size"},
		{"negative retention", nil, retention.Config{Tables: map[string]time.Duration{"sessions": -time.Hour}}, "tables.sessions"},
		{"empty table name", nil, retention.Config{Tables: map[string]time.Duration{"": time.Hour}}, "tables"},
		{"keys without retention", keys, retention.Config{Tables: map[string]time.Duration{"sessions": time.Hour}}, "key_retention"},
		{"negative key retention", keys, retention.Config{KeyRetention: -time.Hour}, "key_retention"},
		{"negative idle", nil, retention.Config{IdleTimeout: -time.Minute}, "idle_timeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := retention.New(s, c.keys, nil, c.cfg, prometheus.NewRegistry())
			var fe *privacy.FieldError
			if !errors.As(err, &fe) || fe.Field != c.field {
				t.Fatalf("New error %v, want a field error on %s", err, c.field)
			}
		})
	}
	// Registering twice on one registry is an error, not a panic.
	reg := prometheus.NewRegistry()
	_, err = retention.New(s, nil, nil, retention.Config{}, reg)
	must(t, err, "New")
	if _, err := retention.New(s, nil, nil, retention.Config{}, reg); err == nil {
		t.Error("second New on the same registry succeeded")
	}
	if _, err := retention.New(nil, nil, nil, retention.Config{}, prometheus.NewRegistry()); err == nil {
		t.Error("New with a nil store succeeded")
	}
}

// TestRunLoop: Run prunes at once and on every tick, logs counts only, and
// returns nil when its context ends.
func TestRunLoop(t *testing.T) {
	s, path := openStore(t)
	pseud := pseudonym()
	must(t, s.AppendConnLog(context.Background(), []store.ConnLogEntry{
		{Time: t0.Add(-31 * day), Event: "login", Outcome: "ok", Pseudonym: pseud, SourcePrefix: "203.0.113.0/24"},
	}), "AppendConnLog")
	var buf syncBuffer
	var runs atomic.Int64
	ep := &fakeEndpoints{}
	p, err := retention.New(s, nil, ep, retention.Config{
		Interval: 10 * time.Millisecond,
		Tables:   map[string]time.Duration{store.TableConnLog: 720 * time.Hour},
		Now:      func() time.Time { runs.Add(1); return t0 },
		Logger:   slog.New(slog.NewTextHandler(&buf, nil)),
	}, prometheus.NewRegistry())
	must(t, err, "New")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	for i := 0; i < 1000 && runs.Load() < 3; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if runs.Load() < 3 {
		t.Fatalf("%d runs, want at least 3", runs.Load())
	}
	if got := countRows(t, path, store.TableConnLog); got != 0 {
		t.Errorf("%d connection_log rows left", got)
	}
	out := buf.String()
	if strings.Count(out, "retention run") != 1 || !strings.Contains(out, "pruned=1") {
		t.Errorf("want one summary line with pruned=1 (runs that prune nothing stay quiet), got:\n%s", out)
	}
	for _, secret := range []string{"203.0.113", string(pseud[:])} {
		if strings.Contains(out, secret) {
			t.Errorf("log holds personal data %q:\n%s", secret, out)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// BenchmarkPrune deletes b.N batches of 5,000 expired connection-log rows.
func BenchmarkPrune(b *testing.B) {
	s, _ := openStore(b)
	appendConnLog(b, s, b.N*retention.MaxBatchSize, t0.Add(-31*day))
	p, err := retention.New(s, nil, nil, retention.Config{
		Tables: map[string]time.Duration{store.TableConnLog: 720 * time.Hour},
		Now:    func() time.Time { return t0 },
	}, prometheus.NewRegistry())
	must(b, err, "New")
	b.ResetTimer()
	res, err := p.RunOnce(context.Background())
	b.StopTimer()
	must(b, err, "RunOnce")
	if res.Pruned[store.TableConnLog] != int64(b.N*retention.MaxBatchSize) {
		b.Fatalf("pruned %d, want %d", res.Pruned[store.TableConnLog], b.N*retention.MaxBatchSize)
	}
	b.ReportMetric(float64(res.Total())/b.Elapsed().Seconds(), "rows/s")
}
