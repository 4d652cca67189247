package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// The connection log is partitioned by UTC day: connection_log_pYYYYMMDD
// holds the rows with time in [day, day+1) (Unix nanoseconds). A day's
// partition is created before the first row of that day is written;
// retention drops a partition whole once all of it is past retention.

const (
	dayNanos   = int64(24 * time.Hour)
	partPrefix = "connection_log_p"
)

func dayOf(nanos int64) int64 {
	d := nanos / dayNanos
	if nanos%dayNanos < 0 {
		d--
	}
	return d
}

func partName(day int64) string {
	return partPrefix + time.Unix(0, day*dayNanos).UTC().Format("20060102")
}

// partDay parses a partition's name back to its day.
func partDay(name string) (int64, bool) {
	s, ok := strings.CutPrefix(name, partPrefix)
	if !ok {
		return 0, false
	}
	t, err := time.Parse("20060102", s)
	if err != nil {
		return 0, false
	}
	return dayOf(t.UnixNano()), true
}

// ensurePartitions creates the partitions of the given days that this
// store has not seen yet, under lockPartitions (gateways creating the same
// day at once create it once).
func (s *Store) ensurePartitions(ctx context.Context, days []int64) error {
	s.mu.Lock()
	var missing []int64
	for _, d := range days {
		if !s.parts[d] && !slices.Contains(missing, d) {
			missing = append(missing, d)
		}
	}
	s.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lock(ctx, tx, lockPartitions); err != nil {
			return err
		}
		for _, d := range missing {
			if _, err := tx.Exec(ctx, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s PARTITION OF connection_log FOR VALUES FROM (%d) TO (%d)`,
				pgx.Identifier{partName(d)}.Sanitize(), d*dayNanos, (d+1)*dayNanos)); err != nil {
				return fmt.Errorf("create partition %s: %w", partName(d), err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	for _, d := range missing {
		s.parts[d] = true
	}
	s.mu.Unlock()
	return nil
}

func (s *Store) forgetPartitions() {
	s.mu.Lock()
	clear(s.parts)
	s.mu.Unlock()
}

// AppendConnLog appends entries in one transaction. Times are stored
// truncated to the minute.
func (s *Store) AppendConnLog(ctx context.Context, entries []store.ConnLogEntry) error {
	for i, e := range entries {
		if err := store.CheckTime("time", e.Time); err != nil {
			return fmt.Errorf("store: AppendConnLog: entry %d: %w", i, err)
		}
		if e.Event == "" {
			return fmt.Errorf("store: AppendConnLog: entry %d: %w", i, store.Invalid("event", "must not be empty"))
		}
		if err := store.CheckSourcePrefix(e.SourcePrefix); err != nil {
			return fmt.Errorf("store: AppendConnLog: entry %d: %w", i, err)
		}
	}
	if len(entries) == 0 {
		return nil
	}
	var (
		times               = make([]int64, len(entries))
		events, outcomes    = make([]string, len(entries)), make([]string, len(entries))
		pseudonyms, sources = make([][]byte, len(entries)), make([]string, len(entries))
		days                []int64
	)
	for i, e := range entries {
		times[i] = nanos(e.Time.Truncate(time.Minute))
		events[i], outcomes[i], pseudonyms[i], sources[i] = e.Event, e.Outcome, e.Pseudonym[:], e.SourcePrefix
		days = append(days, dayOf(times[i]))
	}
	insert := func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO connection_log (time, event, outcome, pseudonym, source_prefix)
			SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::text[])`, times, events, outcomes, pseudonyms, sources)
		return err
	}
	for attempt := 0; ; attempt++ {
		if err := s.ensurePartitions(ctx, days); err != nil {
			return wrap("AppendConnLog", err)
		}
		err := s.write(ctx, "AppendConnLog", insert)
		var pe *pgconn.PgError
		if attempt == 0 && errors.As(err, &pe) && pe.Code == "23514" && strings.Contains(pe.Message, "no partition") {
			// Another gateway's retention dropped a partition this one
			// still knew: learn them again.
			s.forgetPartitions()
			continue
		}
		return err
	}
}

// ConnLogByPseudonyms returns the entries of any of the pseudonyms, oldest
// first (in insertion order within a minute).
func (s *Store) ConnLogByPseudonyms(ctx context.Context, ps []privacy.Pseudonym) (out []store.ConnLogEntry, err error) {
	if len(ps) == 0 {
		return nil, nil
	}
	err = s.read(ctx, "ConnLogByPseudonyms", func(q querier) error {
		rows, err := q.Query(ctx, `SELECT time, event, outcome, pseudonym, source_prefix FROM connection_log
			WHERE pseudonym = ANY($1) ORDER BY time, id`, pseudonymArgs(ps))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				e  store.ConnLogEntry
				t  int64
				pb []byte
			)
			if err := rows.Scan(&t, &e.Event, &e.Outcome, &pb, &e.SourcePrefix); err != nil {
				return err
			}
			if len(pb) != len(e.Pseudonym) {
				return fmt.Errorf("corrupt pseudonym: %d bytes", len(pb))
			}
			copy(e.Pseudonym[:], pb)
			e.Time = fromNanos(t)
			out = append(out, e)
		}
		return rows.Err()
	})
	return out, err
}

// --- retention ---

// prunable maps each prunable table to its age column and extra condition.
var prunable = map[string]struct{ col, cond string }{
	store.TableConnLog:      {"time", ""},
	store.TableSessions:     {"closed_at", "closed_at IS NOT NULL AND "},
	store.TableBindingCodes: {"expires_at", ""},
	store.TableDeviceTokens: {"expires_at", ""},
	store.TableAccessTokens: {"expires_at", ""},
	store.TableAuthFailures: {"at", ""},
}

func prunableTable(table string) (col, cond string, err error) {
	p, ok := prunable[table]
	if !ok {
		return "", "", store.Invalid("table", fmt.Sprintf("%q is not a prunable table", table))
	}
	return p.col, p.cond, nil
}

// Prune deletes the rows of table older than before, oldest first. For the
// connection log it first drops every daily partition that lies wholly
// before before, and if it dropped any returns their row count (which may
// exceed limit: a dropped partition costs no per-row work); otherwise, and
// for every other table, it deletes at most limit rows in one transaction.
func (s *Store) Prune(ctx context.Context, table string, before time.Time, limit int) (int, error) {
	col, cond, err := prunableTable(table)
	if err != nil {
		return 0, fmt.Errorf("store: Prune: %w", err)
	}
	if limit <= 0 {
		return 0, fmt.Errorf("store: Prune: %w", store.Invalid("limit", "must be positive"))
	}
	if err := store.CheckTime("before", before); err != nil {
		return 0, fmt.Errorf("store: Prune: %w", err)
	}
	if table == store.TableConnLog {
		n, err := s.dropPartitions(ctx, nanos(before))
		if err != nil || n > 0 {
			return int(n), err
		}
	}
	var n int64
	key := "ctid"
	if table == store.TableConnLog {
		key = "id" // a ctid is unique only within one partition
	}
	err = s.write(ctx, "Prune", func(tx pgx.Tx) error {
		var err error
		n, err = execCount(ctx, tx, `DELETE FROM `+table+` WHERE `+key+` IN
			(SELECT `+key+` FROM `+table+` WHERE `+cond+col+` < $1 ORDER BY `+col+` LIMIT $2)`, nanos(before), limit)
		if err != nil {
			return fmt.Errorf("%s: %w", table, err)
		}
		return nil
	})
	return int(n), err
}

// dropPartitions drops the connection-log partitions whose every row is
// older than before and returns how many rows they held.
func (s *Store) dropPartitions(ctx context.Context, before int64) (n int64, err error) {
	err = s.write(ctx, "Prune", func(tx pgx.Tx) error {
		n = 0
		if err := lock(ctx, tx, lockPartitions); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'connection_log'::regclass`)
		if err != nil {
			return err
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		slices.Sort(names)
		for _, name := range names {
			day, ok := partDay(name)
			if !ok || (day+1)*dayNanos > before {
				continue
			}
			ident := pgx.Identifier{name}.Sanitize()
			var rowsIn int64
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+ident).Scan(&rowsIn); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DROP TABLE `+ident); err != nil {
				return fmt.Errorf("drop partition %s: %w", name, err)
			}
			n += rowsIn
		}
		return nil
	})
	if err == nil && n > 0 {
		s.forgetPartitions()
	}
	return n, err
}

// OldestRecord is the age column of the oldest prunable row of table (zero
// when there is none).
func (s *Store) OldestRecord(ctx context.Context, table string) (t time.Time, err error) {
	col, cond, err := prunableTable(table)
	if err != nil {
		return time.Time{}, fmt.Errorf("store: OldestRecord: %w", err)
	}
	err = s.read(ctx, "OldestRecord", func(q querier) error {
		var n *int64
		if err := q.QueryRow(ctx, `SELECT min(`+col+`) FROM `+table+` WHERE `+cond+`true`).Scan(&n); err != nil {
			return fmt.Errorf("%s: %w", table, err)
		}
		t = fromNullNanos(n)
		return nil
	})
	return t, err
}
