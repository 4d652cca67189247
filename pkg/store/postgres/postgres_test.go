package postgres_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	"github.com/planetxlabs/dasset-gateway/pkg/store/migrations"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
	"github.com/planetxlabs/dasset-gateway/pkg/store/storetest"
)

// cluster is the package's throw-away PostgreSQL; each test takes its own
// database in it.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := pgtest.New(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cluster = c
	// One database for the conformance suite, a schema per subtest.
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Minute)
	_, err = c.CreateDatabase(ctx, conformanceDB)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = c.Close()
		os.Exit(1)
	}
	code := m.Run()
	if err := c.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = max(code, 1)
	}
	os.Exit(code)
}

const conformanceDB = "conformance"

func open(t testing.TB, dsn string) *postgres.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := postgres.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, cluster.NewSchema(t, conformanceDB)) })
}

// TestConcurrentOpenMigratesOnce: gateways starting at once on one empty
// database each open it; the migration advisory lock lets one of them run
// every migration and the others find the schema done: each version is
// recorded exactly once and every store works.
func TestConcurrentOpenMigratesOnce(t *testing.T) {
	ctx := context.Background()
	dsn := cluster.NewDatabase(t)
	const n = 6
	stores := make([]*postgres.Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = postgres.Open(ctx, dsn)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		defer stores[i].Close()
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT version_id, count(*) FROM `+migrations.TableName+` GROUP BY version_id ORDER BY version_id`)
	if err != nil {
		t.Fatal(err)
	}
	type vc struct{ V, C int64 }
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[vc])
	if err != nil {
		t.Fatal(err)
	}
	latest, err := migrations.Latest(migrations.Postgres)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != latest+1 {
		t.Fatalf("versions recorded %v, want 0..%d", got, latest)
	}
	for i, r := range got {
		if r.V != int64(i) || r.C != 1 {
			t.Fatalf("versions recorded %v: want each of 0..%d exactly once", got, latest)
		}
	}
	// Every store works on the one schema: the enrolments of all of them
	// land in one table.
	for i, s := range stores {
		if _, err := s.EnrollDevices(ctx, []store.Enrollment{{Index: privacy.BlindIndex{byte(i + 1)}, SealedSerial: []byte("s"), Verifier: privacy.Verifier{1}}}); err != nil {
			t.Fatalf("store %d: %v", i, err)
		}
	}
	if ds, err := stores[0].ListDevices(ctx); err != nil || len(ds) != n {
		t.Fatalf("ListDevices: %d devices, %v; want %d", len(ds), err, n)
	}
	if v, err := stores[n-1].SchemaVersion(ctx); err != nil || v != latest {
		t.Fatalf("SchemaVersion %d, %v; want %d", v, err, latest)
	}
}

// TestOpenRefusesNewerSchema: a database migrated by a newer program is
// refused, not mangled.
func TestOpenRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	dsn := cluster.NewDatabase(t)
	open(t, dsn).Close()
	latest, err := migrations.Latest(migrations.Postgres)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO `+migrations.TableName+` (version_id, is_applied) VALUES ($1, true)`, latest+1); err != nil {
		t.Fatal(err)
	}
	if s, err := postgres.Open(ctx, dsn); err == nil {
		s.Close()
		t.Fatal("opened a database with a newer schema")
	}
}

// TestConnLogPartitions: each day's rows go to that day's partition, and
// retention drops the partitions wholly past retention (reporting their
// rows) before deleting single rows of the day that straddles the cut.
func TestConnLogPartitions(t *testing.T) {
	ctx := context.Background()
	dsn := cluster.NewDatabase(t)
	s := open(t, dsn)
	defer s.Close()
	day := time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC)
	var (
		old   = privacy.Pseudonym{1}
		older = privacy.Pseudonym{2}
		today = privacy.Pseudonym{3}
	)
	var entries []store.ConnLogEntry
	for i := range 3 {
		entries = append(entries,
			store.ConnLogEntry{Time: day.Add(-48*time.Hour + time.Duration(i)*time.Hour), Event: "login", Outcome: "ok", Pseudonym: older},
			store.ConnLogEntry{Time: day.Add(-24*time.Hour + time.Duration(i)*time.Hour), Event: "login", Outcome: "ok", Pseudonym: old},
			store.ConnLogEntry{Time: day.Add(time.Duration(i) * time.Hour), Event: "login", Outcome: "ok", Pseudonym: today})
	}
	if err := s.AppendConnLog(ctx, entries); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	partitions := func() map[string]int64 {
		t.Helper()
		rows, err := conn.Query(ctx, `SELECT tableoid::regclass::text, count(*) FROM connection_log GROUP BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for rows.Next() {
			var (
				name string
				n    int64
			)
			if err := rows.Scan(&name, &n); err != nil {
				t.Fatal(err)
			}
			out[name] = n
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		var tables int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_inherits WHERE inhparent = 'connection_log'::regclass`).Scan(&tables); err != nil {
			t.Fatal(err)
		}
		if tables != len(out) {
			t.Fatalf("%d partitions, %d with rows: an empty partition was left behind", tables, len(out))
		}
		return out
	}
	want := map[string]int64{"connection_log_p20291231": 3, "connection_log_p20300101": 3, "connection_log_p20300102": 3}
	if got := partitions(); !maps.Equal(got, want) {
		t.Fatalf("partitions %v, want %v", got, want)
	}

	// Retention up to 01:30 on the 2nd: the two whole days go as two
	// partitions (6 rows, though the batch limit is 2).
	cut := day.Add(90 * time.Minute)
	n, err := s.Prune(ctx, store.TableConnLog, cut, 2)
	if err != nil || n != 6 {
		t.Fatalf("Prune dropping partitions: %d, %v; want 6", n, err)
	}
	if got := partitions(); !maps.Equal(got, map[string]int64{"connection_log_p20300102": 3}) {
		t.Fatalf("partitions after the drop %v", got)
	}
	// Then single rows of the straddling day, within the limit.
	if n, err := s.Prune(ctx, store.TableConnLog, cut, 10); err != nil || n != 2 {
		t.Fatalf("Prune of the day's rows: %d, %v; want 2", n, err)
	}
	if n, err := s.Prune(ctx, store.TableConnLog, cut, 10); err != nil || n != 0 {
		t.Fatalf("Prune again: %d, %v; want 0", n, err)
	}
	got, err := s.ConnLogByPseudonyms(ctx, []privacy.Pseudonym{old, older, today})
	if err != nil || len(got) != 1 || got[0].Pseudonym != today || !got[0].Time.Equal(day.Add(2*time.Hour)) {
		t.Fatalf("left after retention: %+v, %v", got, err)
	}

	// Another gateway still believing in a dropped day writes to it: the
	// partition is made again.
	other := open(t, dsn)
	defer other.Close()
	if err := other.AppendConnLog(ctx, []store.ConnLogEntry{{Time: day.Add(-24 * time.Hour), Event: "login", Outcome: "ok", Pseudonym: old}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prune(ctx, store.TableConnLog, cut, 10); err != nil { // drops it in s, which other has cached
		t.Fatal(err)
	}
	if err := other.AppendConnLog(ctx, []store.ConnLogEntry{{Time: day.Add(-24 * time.Hour), Event: "login", Outcome: "ok", Pseudonym: old}}); err != nil {
		t.Fatalf("append to a day whose partition another gateway dropped: %v", err)
	}
	if got := partitions(); got["connection_log_p20300101"] != 1 {
		t.Fatalf("partitions %v, want the 1st made again with 1 row", got)
	}
}

// TestGatewaysAdmitAtOnce: three stores on one database (three gateways)
// admit 150 new devices at once, 50 each, from one address pool and one
// session-offset pool: every device gets an address, none is held twice
// (checked in the database), and 30 sessions opened at once through the
// three stores get 30 different client offsets.
func TestGatewaysAdmitAtOnce(t *testing.T) {
	ctx := context.Background()
	dsn := cluster.NewSchema(t, conformanceDB)
	var stores []*postgres.Store
	for range 3 {
		s := open(t, dsn)
		defer s.Close()
		stores = append(stores, s)
	}
	const perGateway = 50
	batch := make([]store.Enrollment, 3*perGateway)
	for i := range batch {
		batch[i] = store.Enrollment{Index: privacy.BlindIndex{byte(i), byte(i >> 8), 1}, SealedSerial: []byte("s"), Verifier: privacy.Verifier{1}}
	}
	if _, err := stores[0].EnrollDevices(ctx, batch); err != nil {
		t.Fatal(err)
	}
	devs, err := stores[0].ListDevices(ctx)
	if err != nil || len(devs) != len(batch) {
		t.Fatalf("ListDevices: %d, %v", len(devs), err)
	}
	acct, err := stores[0].CreateAccount(ctx, store.Account{NameIndex: privacy.BlindIndex{9}, SealedName: []byte("n"), PasswordHash: "h"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 30 { // the devices of the sessions below are bound to the account
		code := [32]byte{byte(i), 7}
		if err := stores[0].CreateBindingCode(ctx, code, devs[i].ID, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := stores[0].RedeemBindingCode(ctx, code, acct.ID, now); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(devs)+30)
	for i, d := range devs {
		s := stores[i%3]
		wg.Go(func() {
			a := store.Admission{DeviceID: d.ID, Key: store.Key{byte(i), byte(i >> 8), 2}, First: 1, Last: 1000, Day: "2030-01-02",
				TokenHash: [32]byte{byte(i), byte(i >> 8), 3}, TokenExpires: now.Add(time.Hour), Gateway: fmt.Sprintf("gw-%d", i%3)}
			if _, err := s.Admit(ctx, a); err != nil {
				errs <- fmt.Errorf("admit %d: %w", d.ID, err)
			}
		})
	}
	for i := range 30 {
		s := stores[i%3]
		wg.Go(func() {
			_, err := s.OpenSession(ctx, store.Session{ID: fmt.Sprintf("s%d", i), AccountID: acct.ID, DeviceID: devs[i].ID,
				ClientKey: store.Key{byte(i), 4}, ExpiresAt: now.Add(time.Hour)}, 1, 100)
			if err != nil {
				errs <- fmt.Errorf("session %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var admitted, distinct, sessions, distinctOffsets int
	if err := conn.QueryRow(ctx, `SELECT count(address_offset), count(DISTINCT address_offset) FROM devices`).Scan(&admitted, &distinct); err != nil {
		t.Fatal(err)
	}
	if admitted != len(devs) || distinct != len(devs) {
		t.Fatalf("%d devices with an address, %d distinct addresses; want %d of each", admitted, distinct, len(devs))
	}
	if err := conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT client_offset) FROM sessions WHERE closed_at IS NULL`).Scan(&sessions, &distinctOffsets); err != nil {
		t.Fatal(err)
	}
	if sessions != 30 || distinctOffsets != 30 {
		t.Fatalf("%d open sessions with %d distinct client offsets; want 30 of each", sessions, distinctOffsets)
	}
}

// BenchmarkHomePeers: HomePeers of one gateway of three at 10,000 devices,
// beside AdmittedDevices (see storetest.BenchHomePeers).
func BenchmarkHomePeers(b *testing.B) {
	s := open(b, cluster.NewSchema(b, conformanceDB))
	defer s.Close()
	storetest.BenchHomePeers(b, s, 10000)
}

// BenchmarkAdmitParallel is a boot storm against the store alone: first
// admissions of distinct devices from 64 goroutines at once, each sending
// its change notification in its transaction, with one store listening.
func BenchmarkAdmitParallel(b *testing.B) {
	ctx := context.Background()
	s := open(b, cluster.NewSchema(b, conformanceDB))
	defer s.Close()
	ch, err := s.Changes(ctx)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for range ch {
		}
	}()
	batch := make([]store.Enrollment, b.N)
	for i := range batch {
		batch[i] = store.Enrollment{Index: privacy.BlindIndex{byte(i), byte(i >> 8), byte(i >> 16), 1}, SealedSerial: []byte("s"), Verifier: privacy.Verifier{1}}
	}
	if _, err := s.EnrollDevices(ctx, batch); err != nil {
		b.Fatal(err)
	}
	devs, err := s.ListDevices(ctx)
	if err != nil {
		b.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	var next atomic.Int64
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1) - 1
			if _, err := s.Admit(ctx, store.Admission{DeviceID: devs[i].ID, Key: store.Key{byte(i), byte(i >> 8), byte(i >> 16), 2}, First: 1, Last: 1 << 20,
				Day: "2030-01-02", TokenHash: [32]byte{byte(i), byte(i >> 8), byte(i >> 16), 3}, TokenExpires: exp, Gateway: "gw-0"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
