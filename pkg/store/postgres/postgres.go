// Package postgres is the Store on PostgreSQL (pgx v5, pgxpool), for fleets
// of gateways sharing one registry. It passes the same conformance suite
// (pkg/store/storetest) as the embedded SQLite store and keeps the same
// schema version (pkg/store/migrations/postgres), migrated at open under an
// advisory lock so that gateways starting together migrate once.
//
// SQLite has one writer; here many gateways write at once, so what SQLite
// gets from its single writer is made explicit: allocations of address
// offsets and of session client offsets (with the per-account session
// count) each hold a transaction-scoped advisory lock, a device's admission
// locks its row, and unique keys settle the rest. Transactions that still
// collide (serialization failure, deadlock) are retried a bounded number of
// times.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	"github.com/planetxlabs/dasset-gateway/pkg/store/migrations"
)

// Transaction-scoped advisory locks ("dass" + a number).
const (
	lockDeviceOffsets int64 = 0x6461737300000001
	lockSessions      int64 = 0x6461737300000002
	lockPartitions    int64 = 0x6461737300000003
)

// maxAttempts bounds the retries of a transaction that failed with a
// serialization failure or a deadlock.
const maxAttempts = 8

// Option configures Open.
type Option func(*options)

type options struct {
	observe func(op string, d time.Duration, err error)
	now     func() time.Time
}

// WithObserver sets a function called after every store operation with its
// name, duration and error (nil on success). It must be fast and safe for
// concurrent use.
func WithObserver(f func(op string, d time.Duration, err error)) Option {
	return func(o *options) { o.observe = f }
}

// WithClock sets the clock used where a method takes no time argument.
// Default time.Now.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// Store is the PostgreSQL registry.
type Store struct {
	pool *pgxpool.Pool
	opt  options

	mu    sync.Mutex
	parts map[int64]bool // days whose connection_log partition exists

	broker *store.Broker // Changes' subscribers
	lmu    sync.Mutex
	listen *listener // started by the first Changes
	closed bool
}

var _ store.Store = (*Store)(nil)

// Open connects to the database named by dsn (a libpq keyword/value string
// or a postgres:// URL; pool settings such as pool_max_conns are read from
// it too) and brings its schema up to date, holding the migration advisory
// lock while doing so.
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	o := options{now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	if dsn == "" {
		return nil, fmt.Errorf("store: open postgres: %w", store.Invalid("dsn", "must not be empty"))
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open postgres: %w", store.Invalid("dsn", err.Error()))
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: open postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: open postgres: %w", err)
	}
	s := &Store{pool: pool, opt: o, parts: map[int64]bool{}, broker: store.NewBroker()}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// migrate runs the postgres migrations under the migration advisory lock.
func (s *Store) migrate(ctx context.Context) error {
	locker, err := migrations.PostgresLocker()
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	db := stdlib.OpenDBFromPool(s.pool)
	defer db.Close()
	if _, err := migrations.Up(ctx, db, migrations.Postgres, locker); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	return nil
}

// SchemaVersion is the version recorded in the database.
func (s *Store) SchemaVersion(ctx context.Context) (int64, error) {
	var v int64
	if err := s.pool.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM `+migrations.TableName+` WHERE is_applied`).Scan(&v); err != nil {
		return 0, fmt.Errorf("store: schema version: %w", err)
	}
	return v, nil
}

// Close stops the change listener, ends every Changes subscription and
// closes the connection pool.
func (s *Store) Close() error {
	s.closeListener()
	s.pool.Close()
	return nil
}

// Ping checks that the database answers (readiness).
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}

// Checkpoint is a no-op: PostgreSQL's write-ahead log belongs to the server,
// which recycles it, and a logical backup never contains it.
func (s *Store) Checkpoint(ctx context.Context) (err error) {
	defer s.observe("Checkpoint", time.Now(), &err)
	return ctx.Err()
}

func (s *Store) observe(op string, start time.Time, err *error) {
	if s.opt.observe != nil {
		s.opt.observe(op, time.Since(start), *err)
	}
}

// write runs fn in one transaction (READ COMMITTED), retrying it on a
// serialization failure or deadlock. fn must be safe to run again.
func (s *Store) write(ctx context.Context, op string, fn func(tx pgx.Tx) error) (err error) {
	defer s.observe(op, time.Now(), &err)
	for attempt := 1; ; attempt++ {
		err = pgx.BeginFunc(ctx, s.pool, fn)
		if err == nil {
			return nil
		}
		if !retryable(err) || attempt == maxAttempts || ctx.Err() != nil {
			return wrap(op, err)
		}
		// Jittered, growing pause before the next attempt.
		d := time.Duration(attempt) * time.Duration(1+rand.IntN(5)) * time.Millisecond
		select {
		case <-ctx.Done():
			return wrap(op, ctx.Err())
		case <-time.After(d):
		}
	}
}

// read runs fn against the pool.
func (s *Store) read(ctx context.Context, op string, fn func(q querier) error) (err error) {
	defer s.observe(op, time.Now(), &err)
	if err := fn(s.pool); err != nil {
		return wrap(op, err)
	}
	return nil
}

type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// wrap adds the operation and maps PostgreSQL errors to the store's
// sentinels.
func wrap(op string, err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("store: %s: %w", op, store.ErrNotFound)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505": // unique_violation
			return fmt.Errorf("store: %s: %w: %w", op, store.ErrConflict, err)
		case "23503": // foreign_key_violation
			return fmt.Errorf("store: %s: %w: %w", op, store.ErrNotFound, err)
		}
	}
	return fmt.Errorf("store: %s: %w", op, err)
}

// --- value conversions ---

func nanos(t time.Time) int64 { return t.UnixNano() }

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

func fromNullNanos(n *int64) time.Time {
	if n == nil {
		return time.Time{}
	}
	return fromNanos(*n)
}

func to32(dst *[32]byte, b []byte, field string) error {
	if len(b) != 32 {
		return fmt.Errorf("corrupt %s: %d bytes", field, len(b))
	}
	copy(dst[:], b)
	return nil
}

func ownerID(id int64) string { return strconv.FormatInt(id, 10) }

func lock(ctx context.Context, tx pgx.Tx, key int64) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, key)
	return err
}

// --- devices ---

func queryDevices(ctx context.Context, q querier, query string, args ...any) ([]store.Device, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Device
	for rows.Next() {
		d, err := store.ScanDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func deviceForUpdate(ctx context.Context, tx pgx.Tx, id int64) (store.Device, error) {
	d, err := store.ScanDevice(tx.QueryRow(ctx, `SELECT `+store.DeviceCols+` FROM devices d WHERE d.id = $1 FOR UPDATE`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Device{}, fmt.Errorf("device %d: %w", id, store.ErrNotFound)
	}
	return d, err
}

// EnrollDevices adds the batch to the allow-list, all or nothing (see
// store.SQLite.EnrollDevices for the semantics).
func (s *Store) EnrollDevices(ctx context.Context, batch []store.Enrollment) (store.EnrollResult, error) {
	var res store.EnrollResult
	seen := make(map[privacy.BlindIndex]int, len(batch))
	for i, e := range batch {
		switch {
		case e.Index == privacy.BlindIndex{}:
			return res, fmt.Errorf("store: EnrollDevices: device %d: %w", i, store.Invalid("index", "must not be zero"))
		case e.Verifier == privacy.Verifier{}:
			return res, fmt.Errorf("store: EnrollDevices: device %d: %w", i, store.Invalid("verifier", "must not be zero"))
		case len(e.SealedSerial) == 0:
			return res, fmt.Errorf("store: EnrollDevices: device %d: %w", i, store.Invalid("sealed_serial", "must not be empty"))
		}
		if j, ok := seen[e.Index]; ok && batch[j].Verifier != e.Verifier {
			return res, fmt.Errorf("store: EnrollDevices: device %d: same serial number as device %d with another hardware id: %w", i, j, store.ErrConflict)
		} else if !ok {
			seen[e.Index] = i
		}
	}
	if len(batch) == 0 {
		return res, nil
	}
	now := nanos(s.opt.now())
	err := s.write(ctx, "EnrollDevices", func(tx pgx.Tx) error {
		res = store.EnrollResult{}
		for i, e := range batch {
			tag, err := tx.Exec(ctx, `INSERT INTO devices (blind_index, sealed_serial, verifier, enrolled_at) VALUES ($1, $2, $3, $4)
				ON CONFLICT (blind_index) DO NOTHING`, e.Index[:], e.SealedSerial, e.Verifier[:], now)
			if err != nil {
				return fmt.Errorf("device %d: %w", i, err)
			}
			if tag.RowsAffected() == 1 {
				res.Enrolled++
				continue
			}
			var ver []byte
			if err := tx.QueryRow(ctx, `SELECT verifier FROM devices WHERE blind_index = $1`, e.Index[:]).Scan(&ver); err != nil {
				return fmt.Errorf("device %d: %w", i, err)
			}
			if string(ver) != string(e.Verifier[:]) {
				return fmt.Errorf("device %d: enrolled with another hardware id: %w", i, store.ErrConflict)
			}
			res.Unchanged++
		}
		return nil
	})
	if err != nil {
		return store.EnrollResult{}, err
	}
	return res, nil
}

func (s *Store) deviceWhere(ctx context.Context, op, where string, arg any) (d store.Device, err error) {
	err = s.read(ctx, op, func(q querier) error {
		d, err = store.ScanDevice(q.QueryRow(ctx, `SELECT `+store.DeviceCols+` FROM devices d WHERE `+where, arg))
		return err
	})
	return d, err
}

// DeviceByIndex finds a device by its blind index.
func (s *Store) DeviceByIndex(ctx context.Context, idx privacy.BlindIndex) (store.Device, error) {
	return s.deviceWhere(ctx, "DeviceByIndex", `d.blind_index = $1`, idx[:])
}

// DeviceByID finds a device by id.
func (s *Store) DeviceByID(ctx context.Context, id int64) (store.Device, error) {
	return s.deviceWhere(ctx, "DeviceByID", `d.id = $1`, id)
}

// DeviceByKey finds the device that has key pinned.
func (s *Store) DeviceByKey(ctx context.Context, key store.Key) (store.Device, error) {
	return s.deviceWhere(ctx, "DeviceByKey", `d.pinned_key = $1`, key[:])
}

// ListDevices lists every device, by id.
// DevicesAfter lists at most limit devices with an id above afterID, by id
// (keyset pagination).
func (s *Store) DevicesAfter(ctx context.Context, afterID int64, limit int) (ds []store.Device, err error) {
	if limit <= 0 {
		return nil, fmt.Errorf("store: DevicesAfter: %w", store.Invalid("limit", "must be positive"))
	}
	err = s.read(ctx, "DevicesAfter", func(q querier) error {
		ds, err = queryDevices(ctx, q, `SELECT `+store.DeviceCols+` FROM devices d WHERE d.id > $1 ORDER BY d.id LIMIT $2`, afterID, limit)
		return err
	})
	return ds, err
}

// CountDevices counts the enrolled devices and, of them, the revoked.
func (s *Store) CountDevices(ctx context.Context) (total, revoked int, err error) {
	err = s.read(ctx, "CountDevices", func(q querier) error {
		return q.QueryRow(ctx, `SELECT COUNT(*), COUNT(*) FILTER (WHERE revoked) FROM devices`).Scan(&total, &revoked)
	})
	return total, revoked, err
}

func (s *Store) ListDevices(ctx context.Context) (ds []store.Device, err error) {
	err = s.read(ctx, "ListDevices", func(q querier) error {
		ds, err = queryDevices(ctx, q, `SELECT `+store.DeviceCols+` FROM devices d ORDER BY d.id`)
		return err
	})
	return ds, err
}

// AdmittedDevices lists the devices with a pinned key and an address that
// are not revoked, by id.
func (s *Store) AdmittedDevices(ctx context.Context) (ds []store.Device, err error) {
	err = s.read(ctx, "AdmittedDevices", func(q querier) error {
		ds, err = queryDevices(ctx, q, `SELECT `+store.DeviceCols+` FROM devices d
			WHERE d.pinned_key IS NOT NULL AND d.address_offset IS NOT NULL AND NOT d.revoked ORDER BY d.id`)
		return err
	})
	return ds, err
}

// claimKey makes key owned by (kind, id) in wg_keys: ErrKeyInUse when
// another owner has it.
func claimKey(ctx context.Context, tx pgx.Tx, key store.Key, kind store.KeyOwner, id string) error {
	tag, err := tx.Exec(ctx, `INSERT INTO wg_keys (key, owner_kind, owner_id) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING`, key[:], string(kind), id)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	var k, o string
	if err := tx.QueryRow(ctx, `SELECT owner_kind, owner_id FROM wg_keys WHERE key = $1`, key[:]).Scan(&k, &o); err != nil {
		if errors.Is(err, pgx.ErrNoRows) { // released meanwhile: let the transaction run again
			return &pgconn.PgError{Code: "40001", Message: "wg_keys row vanished while claiming it"}
		}
		return err
	}
	if store.KeyOwner(k) == kind && o == id {
		return nil
	}
	return fmt.Errorf("key owned by a %s: %w", k, store.ErrKeyInUse)
}

// allocDeviceOffset picks max+1 in [first, last] when that is free, else the
// lowest gap. The caller holds lockDeviceOffsets.
func allocDeviceOffset(ctx context.Context, tx pgx.Tx, first, last uint32) (uint32, error) {
	var hi *int64
	if err := tx.QueryRow(ctx, `SELECT max(address_offset) FROM devices WHERE address_offset BETWEEN $1 AND $2`, int64(first), int64(last)).Scan(&hi); err != nil {
		return 0, err
	}
	if hi == nil {
		return first, nil
	}
	if *hi < int64(last) {
		return uint32(*hi + 1), nil
	}
	return lowestFree(ctx, tx, `
		SELECT $1::bigint WHERE NOT EXISTS (SELECT 1 FROM devices WHERE address_offset = $1)
		UNION ALL
		SELECT d.address_offset + 1 FROM devices d
		WHERE d.address_offset >= $1 AND d.address_offset < $2
		  AND NOT EXISTS (SELECT 1 FROM devices e WHERE e.address_offset = d.address_offset + 1)
		ORDER BY 1 LIMIT 1`, first, last)
}

// allocClientOffset picks the lowest offset in [first, last] free among open
// sessions. The caller holds lockSessions.
func allocClientOffset(ctx context.Context, tx pgx.Tx, first, last uint32) (uint32, error) {
	return lowestFree(ctx, tx, `
		SELECT $1::bigint WHERE NOT EXISTS (SELECT 1 FROM sessions WHERE client_offset = $1 AND closed_at IS NULL)
		UNION ALL
		SELECT s.client_offset + 1 FROM sessions s
		WHERE s.closed_at IS NULL AND s.client_offset >= $1 AND s.client_offset < $2
		  AND NOT EXISTS (SELECT 1 FROM sessions e WHERE e.client_offset = s.client_offset + 1 AND e.closed_at IS NULL)
		ORDER BY 1 LIMIT 1`, first, last)
}

func lowestFree(ctx context.Context, tx pgx.Tx, query string, first, last uint32) (uint32, error) {
	var off int64
	err := tx.QueryRow(ctx, query, int64(first), int64(last)).Scan(&off)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("no free offset in [%d, %d]: %w", first, last, store.ErrExhausted)
	}
	if err != nil {
		return 0, err
	}
	return uint32(off), nil
}

// Admit writes one successful login, all or nothing: the device's row is
// locked for the transaction, so concurrent logins of one device queue, and
// a device without an address takes one under lockDeviceOffsets.
func (s *Store) Admit(ctx context.Context, a store.Admission) (d store.Device, err error) {
	if err := store.CheckAdmission(a); err != nil {
		return store.Device{}, fmt.Errorf("store: Admit: %w", err)
	}
	err = s.write(ctx, "Admit", func(tx pgx.Tx) error {
		var err error
		d, err = admitTx(ctx, tx, a)
		return err
	})
	if err != nil {
		return store.Device{}, err
	}
	return d, nil
}

// The device token's INSERT of an admission, and the same sending the
// ChangeDevice of the device ($2) with its new home ($4).
var (
	admitTokenSQL       = `INSERT INTO device_tokens (hash, device_id, expires_at) VALUES ($1, $2, $3)`
	admitTokenNotifySQL = `WITH n AS (SELECT pg_notify('` + Channel + `', ` + payloadSQL(`'device'`, `$2::bigint`, `''`, `$4::text`) + `))
		INSERT INTO device_tokens (hash, device_id, expires_at) SELECT $1, $2, $3 FROM n`
)

func admitTx(ctx context.Context, tx pgx.Tx, a store.Admission) (store.Device, error) {
	d, err := deviceForUpdate(ctx, tx, a.DeviceID)
	if err != nil {
		return store.Device{}, err
	}
	if d.Revoked {
		return store.Device{}, fmt.Errorf("device %d: %w", d.ID, store.ErrRevoked)
	}
	before := d
	owner := ownerID(d.ID)
	if !d.KeyPinned || d.Key != a.Key {
		if d.KeyPinned && !a.ReplaceKey {
			return store.Device{}, fmt.Errorf("device %d: %w", d.ID, store.ErrKeyPinned)
		}
		if d.KeyPinned {
			if _, err := tx.Exec(ctx, `DELETE FROM wg_keys WHERE key = $1 AND owner_kind = 'device' AND owner_id = $2`, d.Key[:], owner); err != nil {
				return store.Device{}, err
			}
		}
		if err := claimKey(ctx, tx, a.Key, store.OwnerDevice, owner); err != nil {
			return store.Device{}, fmt.Errorf("device %d: %w", d.ID, err)
		}
		d.Key, d.KeyPinned = a.Key, true
	}
	if d.Offset == 0 {
		if err := lock(ctx, tx, lockDeviceOffsets); err != nil {
			return store.Device{}, err
		}
		off, err := allocDeviceOffset(ctx, tx, a.First, a.Last)
		if err != nil {
			return store.Device{}, fmt.Errorf("device %d: %w", d.ID, err)
		}
		d.Offset = off
	}
	d.LastLoginDay, d.Home = a.Day, a.Gateway
	if _, err := tx.Exec(ctx, `UPDATE devices SET pinned_key = $1, address_offset = $2, last_login_day = $3, home_gateway = $4 WHERE id = $5`,
		d.Key[:], int64(d.Offset), d.LastLoginDay, d.Home, d.ID); err != nil {
		return store.Device{}, err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM device_tokens WHERE device_id = $1`, d.ID); err != nil {
		return store.Device{}, err
	}
	// The token's INSERT sends the change notification too, when there is
	// one: a statement less per admission in a boot storm, where most of
	// notify's cost was its own round trip.
	insertToken, args := admitTokenSQL, []any{a.TokenHash[:], d.ID, nanos(a.TokenExpires)}
	if store.AdmitChanged(before, d) {
		insertToken, args = admitTokenNotifySQL, append(args, d.Home)
	}
	if _, err := tx.Exec(ctx, insertToken, args...); err != nil {
		return store.Device{}, err
	}
	return d, nil
}

// RevokeDevice marks the device revoked, unpins and releases its key,
// closes its open sessions and deletes its tokens and binding codes. Its
// address offset stays reserved.
func (s *Store) RevokeDevice(ctx context.Context, id int64) error {
	at := nanos(s.opt.now())
	return s.write(ctx, "RevokeDevice", func(tx pgx.Tx) error {
		if err := unpin(ctx, tx, id, true); err != nil {
			return err
		}
		if _, err := closeSessions(ctx, tx, at, `device_id = $2`, id); err != nil {
			return err
		}
		for _, q := range []string{`DELETE FROM device_tokens WHERE device_id = $1`, `DELETE FROM binding_codes WHERE device_id = $1`} {
			if _, err := tx.Exec(ctx, q, id); err != nil {
				return err
			}
		}
		return nil
	})
}

// ResetDeviceKey unpins the device's key and releases it.
func (s *Store) ResetDeviceKey(ctx context.Context, id int64) error {
	return s.write(ctx, "ResetDeviceKey", func(tx pgx.Tx) error { return unpin(ctx, tx, id, false) })
}

func unpin(ctx context.Context, tx pgx.Tx, id int64, revoke bool) error {
	q := `UPDATE devices SET pinned_key = NULL WHERE id = $1`
	if revoke {
		q = `UPDATE devices SET pinned_key = NULL, revoked = true WHERE id = $1`
	}
	var home string
	err := tx.QueryRow(ctx, q+` RETURNING coalesce(home_gateway, '')`, id).Scan(&home)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("device %d: %w", id, store.ErrNotFound)
	} else if err != nil {
		return err
	}
	if _, err = tx.Exec(ctx, `DELETE FROM wg_keys WHERE owner_kind = 'device' AND owner_id = $1`, ownerID(id)); err != nil {
		return err
	}
	return notify(ctx, tx, store.Change{Kind: store.ChangeDevice, DeviceID: id, Gateway: home})
}

// DeviceByToken finds the device holding an unexpired token (expires_at > now).
func (s *Store) DeviceByToken(ctx context.Context, hash [32]byte, now time.Time) (d store.Device, err error) {
	err = s.read(ctx, "DeviceByToken", func(q querier) error {
		d, err = store.ScanDevice(q.QueryRow(ctx, `SELECT `+store.DeviceCols+` FROM device_tokens t JOIN devices d ON d.id = t.device_id
			WHERE t.hash = $1 AND t.expires_at > $2`, hash[:], nanos(now)))
		return err
	})
	return d, err
}

// DeleteDeviceTokens deletes every token of the device.
func (s *Store) DeleteDeviceTokens(ctx context.Context, deviceID int64) error {
	return s.write(ctx, "DeleteDeviceTokens", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM device_tokens WHERE device_id = $1`, deviceID)
		return err
	})
}

// ReserveKey reserves key for owner (a gateway's own key): idempotent for
// the same owner kind, ErrKeyInUse when anyone else holds it.
func (s *Store) ReserveKey(ctx context.Context, key store.Key, owner store.KeyOwner) error {
	switch {
	case key == store.Key{}:
		return fmt.Errorf("store: ReserveKey: %w", store.Invalid("key", "must not be zero"))
	case owner != store.OwnerGateway && owner != store.OwnerDevice && owner != store.OwnerClient:
		return fmt.Errorf("store: ReserveKey: %w", store.Invalid("owner", fmt.Sprintf("unknown owner kind %q", owner)))
	}
	return s.write(ctx, "ReserveKey", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO wg_keys (key, owner_kind, owner_id) VALUES ($1, $2, '') ON CONFLICT (key) DO NOTHING`, key[:], string(owner))
		if err != nil || tag.RowsAffected() == 1 {
			return err
		}
		var k string
		if err := tx.QueryRow(ctx, `SELECT owner_kind FROM wg_keys WHERE key = $1`, key[:]).Scan(&k); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return &pgconn.PgError{Code: "40001", Message: "wg_keys row vanished while reserving it"}
			}
			return err
		}
		if store.KeyOwner(k) == owner {
			return nil
		}
		return fmt.Errorf("key owned by a %s: %w", k, store.ErrKeyInUse)
	})
}

// --- auth failures ---

// RecordAuthFailure records one failed login for idx at the given time.
func (s *Store) RecordAuthFailure(ctx context.Context, idx privacy.BlindIndex, at time.Time) error {
	if err := store.CheckTime("at", at); err != nil {
		return fmt.Errorf("store: RecordAuthFailure: %w", err)
	}
	return s.write(ctx, "RecordAuthFailure", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO auth_failures (blind_index, at) VALUES ($1, $2)`, idx[:], nanos(at))
		return err
	})
}

// CountAuthFailures counts the failures for idx at or after since.
func (s *Store) CountAuthFailures(ctx context.Context, idx privacy.BlindIndex, since time.Time) (n int, err error) {
	err = s.read(ctx, "CountAuthFailures", func(q querier) error {
		return q.QueryRow(ctx, `SELECT count(*) FROM auth_failures WHERE blind_index = $1 AND at >= $2`, idx[:], nanos(since)).Scan(&n)
	})
	return n, err
}

// ClearAuthFailures deletes every failure recorded for idx.
func (s *Store) ClearAuthFailures(ctx context.Context, idx privacy.BlindIndex) error {
	return s.write(ctx, "ClearAuthFailures", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM auth_failures WHERE blind_index = $1`, idx[:])
		return err
	})
}

// --- meta ---

// Meta reads a value of the store's own metadata ("" when unset).
func (s *Store) Meta(ctx context.Context, key string) (v string, err error) {
	err = s.read(ctx, "Meta", func(q querier) error {
		err := q.QueryRow(ctx, `SELECT value FROM meta WHERE key = $1`, key).Scan(&v)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	return v, err
}

// SetMeta writes a metadata value.
func (s *Store) SetMeta(ctx context.Context, key, value string) error {
	return s.write(ctx, "SetMeta", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
		return err
	})
}
