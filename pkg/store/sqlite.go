package store

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store/migrations"
)

// busyTimeout is how long a connection waits for a lock before SQLITE_BUSY.
const busyTimeout = 10 * time.Second

// Option configures OpenSQLite.
type Option func(*options)

type options struct {
	observe   func(op string, d time.Duration, err error)
	now       func() time.Time
	readConns int
}

// WithObserver sets a function called after every store operation with the
// method name, its duration and its error (nil on success), e.g. to feed a
// latency histogram. It must be fast and safe for concurrent use. Admit is
// reported once per call (not per group-committed batch), with the time
// from the call to its result, queueing for the shared transaction
// included.
func WithObserver(f func(op string, d time.Duration, err error)) Option {
	return func(o *options) { o.observe = f }
}

// WithClock sets the clock used where a method takes no time argument
// (enrolment time, account creation, sessions closed by DeleteAccount and
// Unbind). Default time.Now.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// WithReadConns sets the size of the read connection pool (default: twice
// the number of CPUs, at least 4).
func WithReadConns(n int) Option {
	return func(o *options) { o.readConns = n }
}

// SQLite is the embedded Store: one writer connection for every write
// transaction (BEGIN IMMEDIATE) and a separate pool of read-only
// connections, so reads never wait for the writer (WAL). Concurrent Admit
// calls are group-committed: they share write transactions, each admission
// in its own savepoint (admit.go).
type SQLite struct {
	path string
	w    *sql.DB // exactly one connection
	r    *sql.DB // read-only pool
	ws   *stmtCache
	rs   *stmtCache
	aq   *admitQueue // Admit's group commit (admit.go)
	ch   *Broker     // Changes: in-process, after commit
	opt  options
}

var _ Store = (*SQLite)(nil)

// DBFile is the gateway database's file name in data_dir.
const DBFile = "gateway.db"

// OpenSQLite opens (creating it, mode 0600, and its directory, mode 0700, if
// missing) the database at path and brings its schema up to date.
func OpenSQLite(ctx context.Context, path string, opts ...Option) (*SQLite, error) {
	o := options{now: time.Now, readConns: max(4, 2*runtime.NumCPU())}
	for _, f := range opts {
		f(&o)
	}
	if path == "" || strings.ContainsAny(path, "?#") || strings.HasPrefix(path, "file:") || path == ":memory:" {
		return nil, fmt.Errorf("store: open: %w", &privacy.FieldError{Field: "path", Reason: "must be a plain file path"})
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	_ = f.Close()
	// An existing file keeps no broader mode than the one we create.
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}

	common := []string{
		fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()),
		"foreign_keys(1)",
		"secure_delete(1)",
	}
	wq := url.Values{"_txlock": {"immediate"}, "_pragma": append(common, "journal_mode(WAL)", "synchronous(NORMAL)")}
	w, err := sql.Open("sqlite", path+"?"+wq.Encode())
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	s := &SQLite{path: path, w: w, ws: newStmtCache(w), ch: NewBroker(), opt: o}
	if err := s.migrate(ctx); err != nil {
		_ = w.Close()
		return nil, err
	}

	rq := url.Values{"_txlock": {"deferred"}, "_pragma": append(common, "query_only(1)")}
	r, err := sql.Open("sqlite", path+"?"+rq.Encode())
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("store: open: %w", err)
	}
	r.SetMaxOpenConns(o.readConns)
	r.SetMaxIdleConns(o.readConns)
	r.SetConnMaxIdleTime(5 * time.Minute)
	if err := r.PingContext(ctx); err != nil {
		_ = r.Close()
		_ = w.Close()
		return nil, fmt.Errorf("store: open: read pool: %w", err)
	}
	s.r, s.rs = r, newStmtCache(r)
	s.aq = newAdmitQueue()
	go s.admitLoop()
	return s, nil
}

// migrate brings the schema up to date with the goose migrations of
// pkg/store/migrations, on the writer connection. A database written before
// goose (its version only in PRAGMA user_version) is adopted first: the
// versions it has are recorded as applied, so nothing is run twice and no
// row is touched. After migrating, user_version mirrors the goose version,
// so a program from before goose refuses a newer database instead of
// mangling it.
func (s *SQLite) migrate(ctx context.Context) error {
	latest, err := migrations.Latest(migrations.SQLite)
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	if err := s.adoptLegacy(ctx, latest); err != nil {
		return err
	}
	res, err := migrations.Up(ctx, s.w, migrations.SQLite, nil)
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	if _, err := s.w.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", res.To)); err != nil {
		return fmt.Errorf("store: migrate: set user_version: %w", err)
	}
	return nil
}

// adoptLegacy records the versions of a pre-goose database in goose's
// version table, in one write transaction.
func (s *SQLite) adoptLegacy(ctx context.Context, latest int64) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var v int64
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("store: migrate: read user_version: %w", err)
	}
	if v > latest {
		return fmt.Errorf("store: migrate: %w: user_version %d, this program knows up to %d", migrations.ErrNewer, v, latest)
	}
	if _, err := migrations.Adopt(ctx, tx, migrations.SQLite, v); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	return nil
}

// SchemaVersion is the newest schema version this program knows. It panics
// if the embedded migration files are misnamed, which the first test shows.
func SchemaVersion() int {
	v, err := migrations.Latest(migrations.SQLite)
	if err != nil {
		panic(err)
	}
	return int(v)
}

// Path is the database file.
func (s *SQLite) Path() string { return s.path }

// Close finishes the admissions already queued, then closes both
// connection pools. Admit fails once Close has been called.
func (s *SQLite) Close() error {
	var errs []error
	if s.aq != nil {
		s.aq.close()
	}
	s.ch.Close()
	s.ws.close()
	if s.r != nil {
		s.rs.close()
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// Checkpoint copies the WAL into the database file and truncates the WAL
// (wal_checkpoint(TRUNCATE)); run it after pruning so deleted rows leave the
// WAL too.
func (s *SQLite) Checkpoint(ctx context.Context) (err error) {
	defer s.observe("Checkpoint", time.Now(), &err)
	var busy, logFrames, done int
	if err := s.w.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &done); err != nil {
		return fmt.Errorf("store: checkpoint: %w", err)
	}
	if busy != 0 {
		return fmt.Errorf("store: checkpoint: blocked by readers (%d of %d frames copied)", done, logFrames)
	}
	return nil
}

// observe reports one operation; use as defer s.observe(op, time.Now(), &err).
func (s *SQLite) observe(op string, start time.Time, err *error) {
	if s.opt.observe != nil {
		s.opt.observe(op, time.Since(start), *err)
	}
}

// write runs fn in one write transaction on the writer connection.
func (s *SQLite) write(ctx context.Context, op string, fn func(tx *wtx) error) (err error) {
	defer s.observe(op, time.Now(), &err)
	sqlTx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return wrap(op, err)
	}
	tx := &wtx{tx: sqlTx, cache: s.ws}
	defer tx.warm(ctx)
	if err := fn(tx); err != nil {
		_ = sqlTx.Rollback()
		return wrap(op, err)
	}
	if err := sqlTx.Commit(); err != nil {
		return wrap(op, err)
	}
	s.ch.Publish(tx.changes...)
	return nil
}

// Changes delivers the registry's changes, published in-process after each
// commit (a single gateway owns a SQLite database). See Store.Changes.
func (s *SQLite) Changes(ctx context.Context) (<-chan Change, error) {
	ch, err := s.ch.Subscribe(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: Changes: %w", err)
	}
	return ch, nil
}

// read runs fn on the read pool.
func (s *SQLite) read(ctx context.Context, op string, fn func(db *rdb) error) (err error) {
	defer s.observe(op, time.Now(), &err)
	if err := fn(&rdb{db: s.r, cache: s.rs}); err != nil {
		return wrap(op, err)
	}
	return nil
}

// wrap adds the operation and maps SQLite errors to the store's sentinels.
func wrap(op string, err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("store: %s: %w", op, ErrNotFound)
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("store: %s: %w: %w", op, ErrConflict, err)
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			return fmt.Errorf("store: %s: %w: %w", op, ErrNotFound, err)
		}
	}
	return fmt.Errorf("store: %s: %w", op, err)
}

// --- value conversions ---

func nanos(t time.Time) int64 { return t.UnixNano() }

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

func fromNullNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return fromNanos(n.Int64)
}

func to32(dst *[32]byte, b []byte, field string) error {
	if len(b) != 32 {
		return fmt.Errorf("corrupt %s: %d bytes", field, len(b))
	}
	copy(dst[:], b)
	return nil
}

func ownerID(id int64) string { return strconv.FormatInt(id, 10) }

func invalid(field, reason string) error {
	return &privacy.FieldError{Field: field, Reason: reason}
}

func checkTime(field string, t time.Time) error {
	if t.IsZero() {
		return invalid(field, "must be set")
	}
	if y := t.Year(); y < 1678 || y > 2261 {
		return invalid(field, "out of range")
	}
	return nil
}

// --- devices ---

func queryDevices(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, query string, args ...any) ([]Device, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		d, err := ScanDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func deviceByID(ctx context.Context, tx *wtx, id int64) (Device, error) {
	d, err := ScanDevice(tx.QueryRowContext(ctx, `SELECT `+DeviceCols+` FROM devices d WHERE d.id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("device %d: %w", id, ErrNotFound)
	}
	return d, err
}

// EnrollDevices adds the batch to the allow-list, all or nothing. A device
// already enrolled with the same verifier counts as Unchanged; with another
// verifier the whole batch fails with ErrConflict naming its position
// (zero-based) in the batch.
func (s *SQLite) EnrollDevices(ctx context.Context, batch []Enrollment) (EnrollResult, error) {
	var res EnrollResult
	seen := make(map[privacy.BlindIndex]int, len(batch))
	for i, e := range batch {
		switch {
		case e.Index == privacy.BlindIndex{}:
			return res, fmt.Errorf("store: EnrollDevices: device %d: %w", i, invalid("index", "must not be zero"))
		case e.Verifier == privacy.Verifier{}:
			return res, fmt.Errorf("store: EnrollDevices: device %d: %w", i, invalid("verifier", "must not be zero"))
		case len(e.SealedSerial) == 0:
			return res, fmt.Errorf("store: EnrollDevices: device %d: %w", i, invalid("sealed_serial", "must not be empty"))
		}
		if j, ok := seen[e.Index]; ok && batch[j].Verifier != e.Verifier {
			return res, fmt.Errorf("store: EnrollDevices: device %d: same serial number as device %d with another hardware id: %w", i, j, ErrConflict)
		} else if !ok {
			seen[e.Index] = i
		}
	}
	if len(batch) == 0 {
		return res, nil
	}
	now := nanos(s.opt.now())
	err := s.write(ctx, "EnrollDevices", func(tx *wtx) error {
		res = EnrollResult{}
		sel, err := tx.stmt(ctx, `SELECT verifier FROM devices WHERE blind_index = ?`)
		if err != nil {
			return err
		}
		defer sel.Close()
		ins, err := tx.stmt(ctx, `INSERT INTO devices (blind_index, sealed_serial, verifier, enrolled_at) VALUES (?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		for i, e := range batch {
			var ver []byte
			err := sel.QueryRowContext(ctx, e.Index[:]).Scan(&ver)
			switch {
			case err == nil:
				if string(ver) != string(e.Verifier[:]) {
					return fmt.Errorf("device %d: enrolled with another hardware id: %w", i, ErrConflict)
				}
				res.Unchanged++
				continue
			case !errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("device %d: %w", i, err)
			}
			if _, err := ins.ExecContext(ctx, e.Index[:], e.SealedSerial, e.Verifier[:], now); err != nil {
				return fmt.Errorf("device %d: %w", i, err)
			}
			res.Enrolled++
		}
		return nil
	})
	if err != nil {
		return EnrollResult{}, err
	}
	return res, nil
}

// DeviceByIndex finds a device by its blind index.
func (s *SQLite) DeviceByIndex(ctx context.Context, idx privacy.BlindIndex) (d Device, err error) {
	err = s.read(ctx, "DeviceByIndex", func(db *rdb) error {
		d, err = ScanDevice(db.QueryRowContext(ctx, `SELECT `+DeviceCols+` FROM devices d WHERE d.blind_index = ?`, idx[:]))
		return err
	})
	return d, err
}

// DeviceByID finds a device by id.
func (s *SQLite) DeviceByID(ctx context.Context, id int64) (d Device, err error) {
	err = s.read(ctx, "DeviceByID", func(db *rdb) error {
		d, err = ScanDevice(db.QueryRowContext(ctx, `SELECT `+DeviceCols+` FROM devices d WHERE d.id = ?`, id))
		return err
	})
	return d, err
}

// DeviceByKey finds the device that has key pinned.
func (s *SQLite) DeviceByKey(ctx context.Context, key Key) (d Device, err error) {
	err = s.read(ctx, "DeviceByKey", func(db *rdb) error {
		d, err = ScanDevice(db.QueryRowContext(ctx, `SELECT `+DeviceCols+` FROM devices d WHERE d.pinned_key = ?`, key[:]))
		return err
	})
	return d, err
}

// ListDevices lists every device, by id.
// DevicesAfter lists at most limit devices with an id above afterID, by id
// (keyset pagination).
func (s *SQLite) DevicesAfter(ctx context.Context, afterID int64, limit int) (ds []Device, err error) {
	if limit <= 0 {
		return nil, fmt.Errorf("store: DevicesAfter: %w", invalid("limit", "must be positive"))
	}
	err = s.read(ctx, "DevicesAfter", func(db *rdb) error {
		ds, err = queryDevices(ctx, db, `SELECT `+DeviceCols+` FROM devices d WHERE d.id > ? ORDER BY d.id LIMIT ?`, afterID, limit)
		return err
	})
	return ds, err
}

// CountDevices counts the enrolled devices and, of them, the revoked.
func (s *SQLite) CountDevices(ctx context.Context) (total, revoked int, err error) {
	err = s.read(ctx, "CountDevices", func(db *rdb) error {
		return db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(revoked), 0) FROM devices`).Scan(&total, &revoked)
	})
	return total, revoked, err
}

func (s *SQLite) ListDevices(ctx context.Context) (ds []Device, err error) {
	err = s.read(ctx, "ListDevices", func(db *rdb) error {
		ds, err = queryDevices(ctx, db, `SELECT `+DeviceCols+` FROM devices d ORDER BY d.id`)
		return err
	})
	return ds, err
}

// AdmittedDevices lists the devices with a pinned key and an address that
// are not revoked, by id.
func (s *SQLite) AdmittedDevices(ctx context.Context) (ds []Device, err error) {
	err = s.read(ctx, "AdmittedDevices", func(db *rdb) error {
		ds, err = queryDevices(ctx, db, `SELECT `+DeviceCols+` FROM devices d
			WHERE d.pinned_key IS NOT NULL AND d.address_offset IS NOT NULL AND d.revoked = 0 ORDER BY d.id`)
		return err
	})
	return ds, err
}

// claimKey makes key owned by (kind, id) in wg_keys: ErrKeyInUse when
// another owner has it.
func claimKey(ctx context.Context, tx *wtx, key Key, kind KeyOwner, id string) error {
	var k, o string
	err := tx.QueryRowContext(ctx, `SELECT owner_kind, owner_id FROM wg_keys WHERE key = ?`, key[:]).Scan(&k, &o)
	switch {
	case err == nil:
		if KeyOwner(k) == kind && o == id {
			return nil
		}
		return fmt.Errorf("key owned by a %s: %w", k, ErrKeyInUse)
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO wg_keys (key, owner_kind, owner_id) VALUES (?, ?, ?)`, key[:], string(kind), id)
	return err
}

// allocDeviceOffset picks max+1 in [first, last] when that is free, else the
// lowest gap.
func allocDeviceOffset(ctx context.Context, tx *wtx, first, last uint32) (uint32, error) {
	var hi sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(address_offset) FROM devices WHERE address_offset BETWEEN ? AND ?`, first, last).Scan(&hi); err != nil {
		return 0, err
	}
	if !hi.Valid {
		return first, nil
	}
	if hi.Int64 < int64(last) {
		return uint32(hi.Int64 + 1), nil
	}
	return lowestFree(ctx, tx, `
		SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM devices WHERE address_offset = ?1)
		UNION ALL
		SELECT d.address_offset + 1 FROM devices d
		WHERE d.address_offset >= ?1 AND d.address_offset < ?2
		  AND NOT EXISTS (SELECT 1 FROM devices e WHERE e.address_offset = d.address_offset + 1)
		ORDER BY 1 LIMIT 1`, first, last)
}

// allocClientOffset picks the lowest offset in [first, last] free among open
// sessions.
func allocClientOffset(ctx context.Context, tx *wtx, first, last uint32) (uint32, error) {
	return lowestFree(ctx, tx, `
		SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM sessions WHERE client_offset = ?1 AND closed_at IS NULL)
		UNION ALL
		SELECT s.client_offset + 1 FROM sessions s
		WHERE s.closed_at IS NULL AND s.client_offset >= ?1 AND s.client_offset < ?2
		  AND NOT EXISTS (SELECT 1 FROM sessions e WHERE e.client_offset = s.client_offset + 1 AND e.closed_at IS NULL)
		ORDER BY 1 LIMIT 1`, first, last)
}

func lowestFree(ctx context.Context, tx *wtx, query string, first, last uint32) (uint32, error) {
	var off int64
	err := tx.QueryRowContext(ctx, query, first, last).Scan(&off)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("no free offset in [%d, %d]: %w", first, last, ErrExhausted)
	}
	if err != nil {
		return 0, err
	}
	return uint32(off), nil
}

// RevokeDevice marks the device revoked, unpins and releases its key,
// closes its open sessions and deletes its tokens and binding codes. Its
// address offset stays reserved.
func (s *SQLite) RevokeDevice(ctx context.Context, id int64) error {
	at := nanos(s.opt.now())
	return s.write(ctx, "RevokeDevice", func(tx *wtx) error {
		if err := unpin(ctx, tx, id, true); err != nil {
			return err
		}
		if _, err := closeSessions(ctx, tx, at, `device_id = ?`, id); err != nil {
			return err
		}
		for _, q := range []string{`DELETE FROM device_tokens WHERE device_id = ?`, `DELETE FROM binding_codes WHERE device_id = ?`} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return err
			}
		}
		return nil
	})
}

// ResetDeviceKey unpins the device's key and releases it.
func (s *SQLite) ResetDeviceKey(ctx context.Context, id int64) error {
	return s.write(ctx, "ResetDeviceKey", func(tx *wtx) error { return unpin(ctx, tx, id, false) })
}

func unpin(ctx context.Context, tx *wtx, id int64, revoke bool) error {
	q := `UPDATE devices SET pinned_key = NULL WHERE id = ?`
	if revoke {
		q = `UPDATE devices SET pinned_key = NULL, revoked = 1 WHERE id = ?`
	}
	var home string
	err := tx.QueryRowContext(ctx, q+` RETURNING coalesce(home_gateway, '')`, id).Scan(&home)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("device %d: %w", id, ErrNotFound)
	} else if err != nil {
		return err
	}
	if _, err = tx.ExecContext(ctx, `DELETE FROM wg_keys WHERE owner_kind = 'device' AND owner_id = ?`, ownerID(id)); err != nil {
		return err
	}
	tx.emit(Change{Kind: ChangeDevice, DeviceID: id, Gateway: home})
	return nil
}

// DeviceByToken finds the device holding an unexpired token (expires_at > now).
func (s *SQLite) DeviceByToken(ctx context.Context, hash [32]byte, now time.Time) (d Device, err error) {
	err = s.read(ctx, "DeviceByToken", func(db *rdb) error {
		d, err = ScanDevice(db.QueryRowContext(ctx, `SELECT `+DeviceCols+` FROM device_tokens t JOIN devices d ON d.id = t.device_id
			WHERE t.hash = ? AND t.expires_at > ?`, hash[:], nanos(now)))
		return err
	})
	return d, err
}

// DeleteDeviceTokens deletes every token of the device.
func (s *SQLite) DeleteDeviceTokens(ctx context.Context, deviceID int64) error {
	return s.write(ctx, "DeleteDeviceTokens", func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM device_tokens WHERE device_id = ?`, deviceID)
		return err
	})
}

// ReserveKey reserves key for owner (the gateway's own key): idempotent for
// the same owner kind, ErrKeyInUse when anyone else holds it.
func (s *SQLite) ReserveKey(ctx context.Context, key Key, owner KeyOwner) error {
	switch {
	case key == Key{}:
		return fmt.Errorf("store: ReserveKey: %w", invalid("key", "must not be zero"))
	case owner != OwnerGateway && owner != OwnerDevice && owner != OwnerClient:
		return fmt.Errorf("store: ReserveKey: %w", invalid("owner", fmt.Sprintf("unknown owner kind %q", owner)))
	}
	return s.write(ctx, "ReserveKey", func(tx *wtx) error {
		var k string
		err := tx.QueryRowContext(ctx, `SELECT owner_kind FROM wg_keys WHERE key = ?`, key[:]).Scan(&k)
		switch {
		case err == nil:
			if KeyOwner(k) == owner {
				return nil
			}
			return fmt.Errorf("key owned by a %s: %w", k, ErrKeyInUse)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO wg_keys (key, owner_kind, owner_id) VALUES (?, ?, '')`, key[:], string(owner))
		return err
	})
}

// --- auth failures ---

// RecordAuthFailure records one failed login for idx at the given time.
func (s *SQLite) RecordAuthFailure(ctx context.Context, idx privacy.BlindIndex, at time.Time) error {
	if err := checkTime("at", at); err != nil {
		return fmt.Errorf("store: RecordAuthFailure: %w", err)
	}
	return s.write(ctx, "RecordAuthFailure", func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO auth_failures (blind_index, at) VALUES (?, ?)`, idx[:], nanos(at))
		return err
	})
}

// CountAuthFailures counts the failures for idx at or after since.
func (s *SQLite) CountAuthFailures(ctx context.Context, idx privacy.BlindIndex, since time.Time) (n int, err error) {
	err = s.read(ctx, "CountAuthFailures", func(db *rdb) error {
		return db.QueryRowContext(ctx, `SELECT COUNT(*) FROM auth_failures WHERE blind_index = ? AND at >= ?`, idx[:], nanos(since)).Scan(&n)
	})
	return n, err
}

// ClearAuthFailures deletes every failure recorded for idx.
func (s *SQLite) ClearAuthFailures(ctx context.Context, idx privacy.BlindIndex) error {
	return s.write(ctx, "ClearAuthFailures", func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM auth_failures WHERE blind_index = ?`, idx[:])
		return err
	})
}

// --- accounts ---

// CreateAccount adds an account (ErrConflict if the name exists) and returns
// it with its id (and CreatedAt, when zero, set to now).
func (s *SQLite) CreateAccount(ctx context.Context, a Account) (Account, error) {
	switch {
	case a.NameIndex == privacy.BlindIndex{}:
		return Account{}, fmt.Errorf("store: CreateAccount: %w", invalid("name_index", "must not be zero"))
	case len(a.SealedName) == 0:
		return Account{}, fmt.Errorf("store: CreateAccount: %w", invalid("sealed_name", "must not be empty"))
	case a.PasswordHash == "":
		return Account{}, fmt.Errorf("store: CreateAccount: %w", invalid("password_hash", "must not be empty"))
	}
	if a.CreatedAt.IsZero() {
		a.CreatedAt = s.opt.now()
	}
	a.CreatedAt = fromNanos(nanos(a.CreatedAt))
	err := s.write(ctx, "CreateAccount", func(tx *wtx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO accounts (name_index, sealed_name, password_hash, created_at) VALUES (?, ?, ?, ?)`,
			a.NameIndex[:], a.SealedName, a.PasswordHash, nanos(a.CreatedAt))
		if err != nil {
			return err
		}
		a.ID, err = res.LastInsertId()
		return err
	})
	if err != nil {
		return Account{}, err
	}
	return a, nil
}

// AccountByName finds an account by its name index.
func (s *SQLite) AccountByName(ctx context.Context, nameIndex privacy.BlindIndex) (a Account, err error) {
	err = s.read(ctx, "AccountByName", func(db *rdb) error {
		a, err = ScanAccount(db.QueryRowContext(ctx, `SELECT `+AccountCols+` FROM accounts a WHERE a.name_index = ?`, nameIndex[:]))
		return err
	})
	return a, err
}

// AccountByID finds an account by id.
func (s *SQLite) AccountByID(ctx context.Context, id int64) (a Account, err error) {
	err = s.read(ctx, "AccountByID", func(db *rdb) error {
		a, err = ScanAccount(db.QueryRowContext(ctx, `SELECT `+AccountCols+` FROM accounts a WHERE a.id = ?`, id))
		return err
	})
	return a, err
}

// SetPasswordHash replaces the account's password hash.
func (s *SQLite) SetPasswordHash(ctx context.Context, accountID int64, hash string) error {
	if hash == "" {
		return fmt.Errorf("store: SetPasswordHash: %w", invalid("password_hash", "must not be empty"))
	}
	return s.write(ctx, "SetPasswordHash", func(tx *wtx) error {
		res, err := tx.ExecContext(ctx, `UPDATE accounts SET password_hash = ? WHERE id = ?`, hash, accountID)
		return mustAffect(res, err, "account", accountID)
	})
}

func mustAffect(res sql.Result, err error, what string, id int64) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s %d: %w", what, id, ErrNotFound)
	}
	return nil
}

func execCount(ctx context.Context, tx *wtx, q string, args ...any) (int64, error) {
	res, err := tx.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// closeSessions closes the open sessions matching where (a condition on
// sessions), releases their client keys and emits a ChangeSession for each;
// it returns how many it closed.
func closeSessions(ctx context.Context, tx *wtx, at int64, where string, args ...any) (int64, error) {
	if _, err := tx.ExecContext(ctx, `DELETE FROM wg_keys WHERE owner_kind = 'client' AND owner_id IN
		(SELECT id FROM sessions WHERE closed_at IS NULL AND `+where+`)`, args...); err != nil {
		return 0, err
	}
	rows, err := tx.QueryContext(ctx, `UPDATE sessions SET closed_at = ? WHERE closed_at IS NULL AND `+where+` RETURNING id, device_id`, append([]any{at}, args...)...)
	if err != nil {
		return 0, err
	}
	n, err := emitSessions(tx, rows)
	return int64(n), err
}

// emitSessions emits a ChangeSession for each row of (session id, device
// id) and closes rows; it returns how many there were.
func emitSessions(tx *wtx, rows *sql.Rows) (int, error) {
	defer rows.Close()
	n := 0
	for rows.Next() {
		c := Change{Kind: ChangeSession}
		if err := rows.Scan(&c.SessionID, &c.DeviceID); err != nil {
			return n, err
		}
		tx.emit(c)
		n++
	}
	return n, rows.Err()
}

// DeleteAccount deletes the account with its access tokens and bindings and
// closes its open sessions (releasing their keys and offsets). The receipt
// counts rows per table; "sessions" counts the sessions closed.
func (s *SQLite) DeleteAccount(ctx context.Context, id int64) (map[string]int64, error) {
	receipt := map[string]int64{}
	at := nanos(s.opt.now())
	err := s.write(ctx, "DeleteAccount", func(tx *wtx) error {
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM accounts WHERE id = ?`, id).Scan(&one); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("account %d: %w", id, ErrNotFound)
			}
			return err
		}
		var err error
		if receipt[TableSessions], err = closeSessions(ctx, tx, at, `account_id = ?`, id); err != nil {
			return err
		}
		if receipt[TableAccessTokens], err = execCount(ctx, tx, `DELETE FROM access_tokens WHERE account_id = ?`, id); err != nil {
			return err
		}
		if receipt[TableBindings], err = execCount(ctx, tx, `DELETE FROM bindings WHERE account_id = ?`, id); err != nil {
			return err
		}
		receipt[TableAccounts], err = execCount(ctx, tx, `DELETE FROM accounts WHERE id = ?`, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return receipt, nil
}

// CreateAccessToken stores an access token hash for the account
// (ErrNotFound for an unknown account, ErrConflict for a duplicate hash).
func (s *SQLite) CreateAccessToken(ctx context.Context, hash [32]byte, accountID int64, expires time.Time) error {
	if err := checkTime("expires", expires); err != nil {
		return fmt.Errorf("store: CreateAccessToken: %w", err)
	}
	return s.write(ctx, "CreateAccessToken", func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO access_tokens (hash, account_id, expires_at) VALUES (?, ?, ?)`, hash[:], accountID, nanos(expires))
		return err
	})
}

// AccountByToken finds the account holding an unexpired access token.
func (s *SQLite) AccountByToken(ctx context.Context, hash [32]byte, now time.Time) (a Account, err error) {
	err = s.read(ctx, "AccountByToken", func(db *rdb) error {
		a, err = ScanAccount(db.QueryRowContext(ctx, `SELECT `+AccountCols+` FROM access_tokens t JOIN accounts a ON a.id = t.account_id
			WHERE t.hash = ? AND t.expires_at > ?`, hash[:], nanos(now)))
		return err
	})
	return a, err
}

// DeleteAccessTokens deletes every access token of the account.
func (s *SQLite) DeleteAccessTokens(ctx context.Context, accountID int64) error {
	return s.write(ctx, "DeleteAccessTokens", func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM access_tokens WHERE account_id = ?`, accountID)
		return err
	})
}

// --- bindings ---

// CreateBindingCode stores a binding code hash for the device.
func (s *SQLite) CreateBindingCode(ctx context.Context, hash [32]byte, deviceID int64, expires time.Time) error {
	if err := checkTime("expires", expires); err != nil {
		return fmt.Errorf("store: CreateBindingCode: %w", err)
	}
	return s.write(ctx, "CreateBindingCode", func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO binding_codes (hash, device_id, expires_at) VALUES (?, ?, ?)`, hash[:], deviceID, nanos(expires))
		return err
	})
}

// RedeemBindingCode deletes the code and binds its device to the account in
// one transaction. Unknown or expired codes give ErrNotFound (an expired
// code is deleted); a revoked device gives ErrRevoked.
func (s *SQLite) RedeemBindingCode(ctx context.Context, hash [32]byte, accountID int64, now time.Time) (Device, error) {
	var (
		d       Device
		expired bool
	)
	err := s.write(ctx, "RedeemBindingCode", func(tx *wtx) error {
		var deviceID, expires int64
		err := tx.QueryRowContext(ctx, `SELECT device_id, expires_at FROM binding_codes WHERE hash = ?`, hash[:]).Scan(&deviceID, &expires)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("binding code: %w", ErrNotFound)
		} else if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM binding_codes WHERE hash = ?`, hash[:]); err != nil {
			return err
		}
		if expires <= nanos(now) {
			expired = true // commit the deletion, then report
			return nil
		}
		if d, err = deviceByID(ctx, tx, deviceID); err != nil {
			return err
		}
		if d.Revoked {
			return fmt.Errorf("device %d: %w", d.ID, ErrRevoked)
		}
		n, err := execCount(ctx, tx, `INSERT INTO bindings (account_id, device_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, accountID, deviceID)
		if err != nil || n == 0 {
			return err
		}
		// A new owner: the device's other owners are told on their next ListDevices.
		_, err = tx.ExecContext(ctx, `UPDATE bindings SET other_bound_at = ? WHERE device_id = ? AND account_id <> ?`, nanos(now), deviceID, accountID)
		return err
	})
	if err != nil {
		return Device{}, err
	}
	if expired {
		return Device{}, fmt.Errorf("store: RedeemBindingCode: binding code expired: %w", ErrNotFound)
	}
	return d, nil
}

// IsBound reports whether the device is bound to the account.
func (s *SQLite) IsBound(ctx context.Context, accountID, deviceID int64) (ok bool, err error) {
	err = s.read(ctx, "IsBound", func(db *rdb) error {
		return db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM bindings WHERE account_id = ? AND device_id = ?)`, accountID, deviceID).Scan(&ok)
	})
	return ok, err
}

// BoundDevices lists the devices bound to the account, by id.
func (s *SQLite) BoundDevices(ctx context.Context, accountID int64) (ds []Device, err error) {
	err = s.read(ctx, "BoundDevices", func(db *rdb) error {
		ds, err = queryDevices(ctx, db, `SELECT `+DeviceCols+` FROM bindings b JOIN devices d ON d.id = b.device_id
			WHERE b.account_id = ? ORDER BY d.id`, accountID)
		return err
	})
	return ds, err
}

// TakeBindingNotices returns and clears the account's binding notices; it
// writes only when there are some.
func (s *SQLite) TakeBindingNotices(ctx context.Context, accountID int64) (map[int64]time.Time, error) {
	out := map[int64]time.Time{}
	collect := func(rows *sql.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var id, at int64
			if err := rows.Scan(&id, &at); err != nil {
				return err
			}
			out[id] = time.Unix(0, at).UTC()
		}
		return rows.Err()
	}
	err := s.read(ctx, "TakeBindingNotices", func(db *rdb) error {
		rows, err := db.QueryContext(ctx, `SELECT device_id, other_bound_at FROM bindings WHERE account_id = ? AND other_bound_at IS NOT NULL`, accountID)
		if err != nil {
			return err
		}
		return collect(rows)
	})
	if err != nil || len(out) == 0 {
		return out, err
	}
	clear(out)
	err = s.write(ctx, "TakeBindingNotices", func(tx *wtx) error {
		// One writer: nothing marks a binding between this read and the update.
		rows, err := tx.QueryContext(ctx, `SELECT device_id, other_bound_at FROM bindings WHERE account_id = ? AND other_bound_at IS NOT NULL`, accountID)
		if err != nil {
			return err
		}
		if err := collect(rows); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE bindings SET other_bound_at = NULL WHERE account_id = ? AND other_bound_at IS NOT NULL`, accountID)
		return err
	})
	return out, err
}

// Unbind removes the binding and closes the account's open sessions to the
// device. The receipt counts the rows removed ("bindings") and the sessions
// closed ("sessions"); ErrNotFound when the device was not bound.
func (s *SQLite) Unbind(ctx context.Context, accountID, deviceID int64) (map[string]int64, error) {
	receipt := map[string]int64{}
	at := nanos(s.opt.now())
	err := s.write(ctx, "Unbind", func(tx *wtx) error {
		n, err := execCount(ctx, tx, `DELETE FROM bindings WHERE account_id = ? AND device_id = ?`, accountID, deviceID)
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("binding of device %d to account %d: %w", deviceID, accountID, ErrNotFound)
		}
		receipt[TableBindings] = n
		receipt[TableSessions], err = closeSessions(ctx, tx, at, `account_id = ? AND device_id = ?`, accountID, deviceID)
		return err
	})
	if err != nil {
		return nil, err
	}
	return receipt, nil
}

// --- sessions ---

func sessionByID(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id string) (Session, error) {
	s, err := ScanSession(q.QueryRowContext(ctx, `SELECT `+SessionCols+` FROM sessions WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Session{}, fmt.Errorf("session: %w", ErrNotFound)
	}
	return s, err
}

// OpenSession records a new open session with the caller's ID, reserves the
// client key (ErrKeyInUse) and allocates the lowest client offset in
// [first, last] free among open sessions (ErrExhausted). OpenedAt, when
// zero, is now.
func (s *SQLite) OpenSession(ctx context.Context, sess Session, first, last uint32) (Session, error) {
	if sess.OpenedAt.IsZero() {
		sess.OpenedAt = s.opt.now()
	}
	switch {
	case sess.ID == "":
		return Session{}, fmt.Errorf("store: OpenSession: %w", invalid("id", "must not be empty"))
	case sess.ClientKey == Key{}:
		return Session{}, fmt.Errorf("store: OpenSession: %w", invalid("client_key", "must not be zero"))
	case first == 0:
		return Session{}, fmt.Errorf("store: OpenSession: %w", invalid("first", "must be at least 1"))
	case first > last:
		return Session{}, fmt.Errorf("store: OpenSession: %w", invalid("last", "must not be below first"))
	case sess.MaxPerAccount < 0:
		return Session{}, fmt.Errorf("store: OpenSession: %w", invalid("max_per_account", "must not be negative"))
	}
	for _, c := range []struct {
		f string
		t time.Time
	}{{"opened_at", sess.OpenedAt}, {"expires_at", sess.ExpiresAt}} {
		if err := checkTime(c.f, c.t); err != nil {
			return Session{}, fmt.Errorf("store: OpenSession: %w", err)
		}
	}
	sess.OpenedAt, sess.ExpiresAt, sess.ClosedAt = fromNanos(nanos(sess.OpenedAt)), fromNanos(nanos(sess.ExpiresAt)), time.Time{}
	err := s.write(ctx, "OpenSession", func(tx *wtx) error {
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM sessions WHERE id = ?`, sess.ID).Scan(&one); err == nil {
			return fmt.Errorf("session id: %w", ErrConflict)
		} else if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		// The binding and the device's standing are checked here, in the
		// writing transaction, not only by the caller before: an Unbind or
		// a revocation committed in between would otherwise leave a
		// session open that no later close finds.
		if err := CheckSessionBinding(tx.QueryRowContext(ctx, `SELECT d.revoked FROM bindings b JOIN devices d ON d.id = b.device_id
			WHERE b.account_id = ? AND b.device_id = ?`, sess.AccountID, sess.DeviceID), sess); err != nil {
			return err
		}
		// One writer: the count and the insert below cannot interleave with
		// another OpenSession.
		if sess.MaxPerAccount > 0 {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM sessions WHERE account_id = ? AND closed_at IS NULL`, sess.AccountID).Scan(&n); err != nil {
				return err
			}
			if n >= sess.MaxPerAccount {
				return fmt.Errorf("account %d has %d open sessions (limit %d): %w", sess.AccountID, n, sess.MaxPerAccount, ErrLimit)
			}
		}
		if err := claimKey(ctx, tx, sess.ClientKey, OwnerClient, sess.ID); err != nil {
			return err
		}
		off, err := allocClientOffset(ctx, tx, first, last)
		if err != nil {
			return err
		}
		sess.ClientOffset = off
		if _, err = tx.ExecContext(ctx, `INSERT INTO sessions (id, account_id, device_id, client_key, client_offset, opened_at, expires_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, sess.ID, sess.AccountID, sess.DeviceID, sess.ClientKey[:], off, nanos(sess.OpenedAt), nanos(sess.ExpiresAt)); err != nil {
			return err
		}
		tx.emit(Change{Kind: ChangeSession, SessionID: sess.ID, DeviceID: sess.DeviceID})
		return nil
	})
	if err != nil {
		return Session{}, err
	}
	sess.MaxPerAccount = 0
	return sess, nil
}

// CloseSession closes an open session at the given time (now when zero),
// releasing its client key and offset. Closing a closed session returns it
// unchanged.
func (s *SQLite) CloseSession(ctx context.Context, id string, at time.Time) (Session, error) {
	if at.IsZero() {
		at = s.opt.now()
	}
	if err := checkTime("at", at); err != nil {
		return Session{}, fmt.Errorf("store: CloseSession: %w", err)
	}
	var sess Session
	err := s.write(ctx, "CloseSession", func(tx *wtx) error {
		var err error
		if sess, err = sessionByID(ctx, tx, id); err != nil || !sess.ClosedAt.IsZero() {
			return err
		}
		if _, err := closeSessions(ctx, tx, nanos(at), `id = ?`, id); err != nil {
			return err
		}
		sess.ClosedAt = fromNanos(nanos(at))
		return nil
	})
	if err != nil {
		return Session{}, err
	}
	return sess, nil
}

// SessionByID finds a session, open or closed.
func (s *SQLite) SessionByID(ctx context.Context, id string) (sess Session, err error) {
	err = s.read(ctx, "SessionByID", func(db *rdb) error {
		sess, err = sessionByID(ctx, db, id)
		return err
	})
	return sess, err
}

// OpenSessions lists the sessions not closed, oldest first.
func (s *SQLite) OpenSessions(ctx context.Context) (out []Session, err error) {
	err = s.read(ctx, "OpenSessions", func(db *rdb) error {
		rows, err := db.QueryContext(ctx, `SELECT `+SessionCols+` FROM sessions WHERE closed_at IS NULL ORDER BY opened_at, id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			sess, err := ScanSession(rows)
			if err != nil {
				return err
			}
			out = append(out, sess)
		}
		return rows.Err()
	})
	return out, err
}

// --- connection log ---

// AppendConnLog appends entries in one transaction. Times are stored
// truncated to the minute.
func (s *SQLite) AppendConnLog(ctx context.Context, entries []ConnLogEntry) error {
	for i, e := range entries {
		if err := checkTime("time", e.Time); err != nil {
			return fmt.Errorf("store: AppendConnLog: entry %d: %w", i, err)
		}
		if e.Event == "" {
			return fmt.Errorf("store: AppendConnLog: entry %d: %w", i, invalid("event", "must not be empty"))
		}
		if err := checkSourcePrefix(e.SourcePrefix); err != nil {
			return fmt.Errorf("store: AppendConnLog: entry %d: %w", i, err)
		}
	}
	if len(entries) == 0 {
		return nil
	}
	return s.write(ctx, "AppendConnLog", func(tx *wtx) error {
		st, err := tx.stmt(ctx, `INSERT INTO connection_log (time, event, outcome, pseudonym, source_prefix) VALUES (?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer st.Close()
		for i, e := range entries {
			if _, err := st.ExecContext(ctx, nanos(e.Time.Truncate(time.Minute)), e.Event, e.Outcome, e.Pseudonym[:], e.SourcePrefix); err != nil {
				return fmt.Errorf("entry %d: %w", i, err)
			}
		}
		return nil
	})
}

// checkSourcePrefix accepts "" or a masked prefix no longer than /24 (IPv4)
// or /48 (IPv6): a full source address must never reach the database.
func checkSourcePrefix(v string) error {
	if v == "" {
		return nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return invalid("source_prefix", "not a prefix")
	}
	maxBits := 48
	if p.Addr().Is4() {
		maxBits = 24
	}
	if p.Bits() > maxBits || p.Masked() != p {
		return invalid("source_prefix", fmt.Sprintf("must be a masked prefix of at most /%d", maxBits))
	}
	return nil
}

// ConnLogByPseudonyms returns the entries of any of the pseudonyms, oldest
// first (in insertion order within a minute).
func (s *SQLite) ConnLogByPseudonyms(ctx context.Context, ps []privacy.Pseudonym) ([]ConnLogEntry, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	const chunk = 500
	type row struct {
		id int64
		e  ConnLogEntry
	}
	var rs []row
	err := s.read(ctx, "ConnLogByPseudonyms", func(db *rdb) error {
		for start := 0; start < len(ps); start += chunk {
			part := ps[start:min(start+chunk, len(ps))]
			args := make([]any, len(part))
			for i := range part {
				args[i] = part[i][:]
			}
			rows, err := db.db.QueryContext(ctx, `SELECT id, time, event, outcome, pseudonym, source_prefix FROM connection_log
				WHERE pseudonym IN (?`+strings.Repeat(", ?", len(part)-1)+`)`, args...)
			if err != nil {
				return err
			}
			for rows.Next() {
				var (
					r  row
					t  int64
					ps []byte
				)
				if err := rows.Scan(&r.id, &t, &r.e.Event, &r.e.Outcome, &ps, &r.e.SourcePrefix); err != nil {
					rows.Close()
					return err
				}
				if len(ps) != len(r.e.Pseudonym) {
					rows.Close()
					return fmt.Errorf("corrupt pseudonym: %d bytes", len(ps))
				}
				copy(r.e.Pseudonym[:], ps)
				r.e.Time = fromNanos(t)
				rs = append(rs, r)
			}
			if err := rows.Err(); err != nil {
				return err
			}
			rows.Close()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(rs, func(a, b row) int {
		if c := a.e.Time.Compare(b.e.Time); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	out := make([]ConnLogEntry, len(rs))
	for i := range rs {
		out[i] = rs[i].e
	}
	return out, nil
}

// --- retention ---

// prunable maps each prunable table to its age column and extra condition.
var prunable = map[string]struct{ col, cond string }{
	TableConnLog:      {"time", ""},
	TableSessions:     {"closed_at", "closed_at IS NOT NULL AND "},
	TableBindingCodes: {"expires_at", ""},
	TableDeviceTokens: {"expires_at", ""},
	TableAccessTokens: {"expires_at", ""},
	TableAuthFailures: {"at", ""},
}

func prunableTable(table string) (col, cond string, err error) {
	p, ok := prunable[table]
	if !ok {
		return "", "", invalid("table", fmt.Sprintf("%q is not a prunable table", table))
	}
	return p.col, p.cond, nil
}

// Prune deletes at most limit rows of table older than before (oldest
// first) in one transaction and returns how many it deleted. Sessions are
// pruned only once closed, by their closing time; tokens and codes by
// expiry.
func (s *SQLite) Prune(ctx context.Context, table string, before time.Time, limit int) (int, error) {
	col, cond, err := prunableTable(table)
	if err != nil {
		return 0, fmt.Errorf("store: Prune: %w", err)
	}
	if limit <= 0 {
		return 0, fmt.Errorf("store: Prune: %w", invalid("limit", "must be positive"))
	}
	if err := checkTime("before", before); err != nil {
		return 0, fmt.Errorf("store: Prune: %w", err)
	}
	var n int64
	err = s.write(ctx, "Prune", func(tx *wtx) error {
		var err error
		n, err = execCount(ctx, tx, `DELETE FROM `+table+` WHERE rowid IN
			(SELECT rowid FROM `+table+` WHERE `+cond+col+` < ? ORDER BY `+col+` LIMIT ?)`, nanos(before), limit)
		if err != nil {
			return fmt.Errorf("%s: %w", table, err)
		}
		return nil
	})
	return int(n), err
}

// OldestRecord is the age column of the oldest prunable row of table (zero
// when there is none).
func (s *SQLite) OldestRecord(ctx context.Context, table string) (t time.Time, err error) {
	col, cond, err := prunableTable(table)
	if err != nil {
		return time.Time{}, fmt.Errorf("store: OldestRecord: %w", err)
	}
	err = s.read(ctx, "OldestRecord", func(db *rdb) error {
		var n sql.NullInt64
		if err := db.QueryRowContext(ctx, `SELECT MIN(`+col+`) FROM `+table+` WHERE `+cond+`1`).Scan(&n); err != nil {
			return fmt.Errorf("%s: %w", table, err)
		}
		t = fromNullNanos(n)
		return nil
	})
	return t, err
}
