package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

func querySessions(ctx context.Context, q querier, query string, args ...any) ([]store.Session, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Session
	for rows.Next() {
		s, err := store.ScanSession(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// OpenSession records a new open session with the caller's ID, reserves the
// client key (ErrKeyInUse), allocates the lowest client offset in
// [first, last] free among open sessions (ErrExhausted) and holds the
// account to MaxPerAccount open sessions (ErrLimit), all under
// lockSessions, so gateways opening sessions at once cannot both take the
// last place. OpenedAt, when zero, is now.
func (s *Store) OpenSession(ctx context.Context, sess store.Session, first, last uint32) (store.Session, error) {
	if sess.OpenedAt.IsZero() {
		sess.OpenedAt = s.opt.now()
	}
	switch {
	case sess.ID == "":
		return store.Session{}, fmt.Errorf("store: OpenSession: %w", store.Invalid("id", "must not be empty"))
	case sess.ClientKey == store.Key{}:
		return store.Session{}, fmt.Errorf("store: OpenSession: %w", store.Invalid("client_key", "must not be zero"))
	case first == 0:
		return store.Session{}, fmt.Errorf("store: OpenSession: %w", store.Invalid("first", "must be at least 1"))
	case first > last:
		return store.Session{}, fmt.Errorf("store: OpenSession: %w", store.Invalid("last", "must not be below first"))
	case sess.MaxPerAccount < 0:
		return store.Session{}, fmt.Errorf("store: OpenSession: %w", store.Invalid("max_per_account", "must not be negative"))
	}
	for _, c := range []struct {
		f string
		t time.Time
	}{{"opened_at", sess.OpenedAt}, {"expires_at", sess.ExpiresAt}} {
		if err := store.CheckTime(c.f, c.t); err != nil {
			return store.Session{}, fmt.Errorf("store: OpenSession: %w", err)
		}
	}
	sess.OpenedAt, sess.ExpiresAt, sess.ClosedAt = fromNanos(nanos(sess.OpenedAt)), fromNanos(nanos(sess.ExpiresAt)), time.Time{}
	err := s.write(ctx, "OpenSession", func(tx pgx.Tx) error {
		if err := lock(ctx, tx, lockSessions); err != nil {
			return err
		}
		var one int
		if err := tx.QueryRow(ctx, `SELECT 1 FROM sessions WHERE id = $1`, sess.ID).Scan(&one); err == nil {
			return fmt.Errorf("session id: %w", store.ErrConflict)
		} else if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		// The binding and the device's standing are checked in this
		// transaction, their rows locked FOR SHARE: a concurrent Unbind
		// (which deletes the binding) or RevokeDevice (which updates the
		// device) on any gateway commits wholly before, and this is
		// refused, or after, and then finds this session to close.
		if err := store.CheckSessionBinding(tx.QueryRow(ctx, `SELECT d.revoked FROM bindings b JOIN devices d ON d.id = b.device_id
			WHERE b.account_id = $1 AND b.device_id = $2 FOR SHARE`, sess.AccountID, sess.DeviceID), sess); err != nil {
			return err
		}
		if sess.MaxPerAccount > 0 {
			var n int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM sessions WHERE account_id = $1 AND closed_at IS NULL`, sess.AccountID).Scan(&n); err != nil {
				return err
			}
			if n >= sess.MaxPerAccount {
				return fmt.Errorf("account %d has %d open sessions (limit %d): %w", sess.AccountID, n, sess.MaxPerAccount, store.ErrLimit)
			}
		}
		if err := claimKey(ctx, tx, sess.ClientKey, store.OwnerClient, sess.ID); err != nil {
			return err
		}
		off, err := allocClientOffset(ctx, tx, first, last)
		if err != nil {
			return err
		}
		sess.ClientOffset = off
		if _, err = tx.Exec(ctx, `INSERT INTO sessions (id, account_id, device_id, client_key, client_offset, opened_at, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, sess.ID, sess.AccountID, sess.DeviceID, sess.ClientKey[:], int64(off), nanos(sess.OpenedAt), nanos(sess.ExpiresAt)); err != nil {
			return err
		}
		return notify(ctx, tx, store.Change{Kind: store.ChangeSession, SessionID: sess.ID, DeviceID: sess.DeviceID})
	})
	if err != nil {
		return store.Session{}, err
	}
	sess.MaxPerAccount = 0
	return sess, nil
}

// CloseSession closes an open session at the given time (now when zero),
// releasing its client key and offset. Closing a closed session returns it
// unchanged.
func (s *Store) CloseSession(ctx context.Context, id string, at time.Time) (store.Session, error) {
	if at.IsZero() {
		at = s.opt.now()
	}
	if err := store.CheckTime("at", at); err != nil {
		return store.Session{}, fmt.Errorf("store: CloseSession: %w", err)
	}
	var sess store.Session
	err := s.write(ctx, "CloseSession", func(tx pgx.Tx) error {
		var err error
		sess, err = store.ScanSession(tx.QueryRow(ctx, `SELECT `+store.SessionCols+` FROM sessions WHERE id = $1 FOR UPDATE`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("session: %w", store.ErrNotFound)
		}
		if err != nil || !sess.ClosedAt.IsZero() {
			return err
		}
		if _, err := closeSessions(ctx, tx, nanos(at), `id = $2`, id); err != nil {
			return err
		}
		sess.ClosedAt = fromNanos(nanos(at))
		return nil
	})
	if err != nil {
		return store.Session{}, err
	}
	return sess, nil
}

// SessionByID finds a session, open or closed.
func (s *Store) SessionByID(ctx context.Context, id string) (sess store.Session, err error) {
	err = s.read(ctx, "SessionByID", func(q querier) error {
		sess, err = store.ScanSession(q.QueryRow(ctx, `SELECT `+store.SessionCols+` FROM sessions WHERE id = $1`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("session: %w", store.ErrNotFound)
		}
		return err
	})
	return sess, err
}

// OpenSessions lists the sessions not closed, oldest first.
func (s *Store) OpenSessions(ctx context.Context) (out []store.Session, err error) {
	err = s.read(ctx, "OpenSessions", func(q querier) error {
		out, err = querySessions(ctx, q, `SELECT `+store.SessionCols+` FROM sessions WHERE closed_at IS NULL ORDER BY opened_at, id`)
		return err
	})
	return out, err
}

// SessionsOf lists every stored session (open and closed) of a device or an
// account: pass deviceID > 0 or accountID > 0.
func (s *Store) SessionsOf(ctx context.Context, deviceID, accountID int64) (out []store.Session, err error) {
	where, arg := `device_id = $1`, deviceID
	if deviceID <= 0 {
		where, arg = `account_id = $1`, accountID
	}
	err = s.read(ctx, "SessionsOf", func(q querier) error {
		out, err = querySessions(ctx, q, `SELECT `+store.SessionCols+` FROM sessions WHERE `+where+` ORDER BY opened_at, id`, arg)
		return err
	})
	return out, err
}

// --- erasure ---

type eraseStep struct {
	table string // "" = not counted in the receipt
	q     string
	args  []any
}

func (s *Store) erase(ctx context.Context, op string, steps func(tx pgx.Tx) ([]eraseStep, error), pseudonyms []privacy.Pseudonym) (map[string]int64, error) {
	receipt := map[string]int64{}
	err := s.write(ctx, op, func(tx pgx.Tx) error {
		clear(receipt)
		st, err := steps(tx)
		if err != nil {
			return err
		}
		for _, step := range st {
			n, err := execCount(ctx, tx, step.q, step.args...)
			if err != nil {
				return err
			}
			if step.table != "" {
				receipt[step.table] = n
			}
		}
		receipt[store.TableConnLog], err = execCount(ctx, tx, `DELETE FROM connection_log WHERE pseudonym = ANY($1)`, pseudonymArgs(pseudonyms))
		return err
	})
	if err != nil {
		return nil, err
	}
	return receipt, nil
}

func pseudonymArgs(ps []privacy.Pseudonym) [][]byte {
	out := make([][]byte, len(ps))
	for i := range ps {
		out[i] = ps[i][:]
	}
	return out
}

// openSessionChanges is a ChangeSession for each open session matching
// where (an erasure deletes them: they close).
func openSessionChanges(ctx context.Context, tx pgx.Tx, where string, args ...any) ([]store.Change, error) {
	rows, err := tx.Query(ctx, `SELECT id, device_id FROM sessions WHERE closed_at IS NULL AND `+where, args...)
	if err != nil {
		return nil, err
	}
	return collectSessionChanges(rows)
}

// collectSessionChanges reads rows of (session id, device id).
func collectSessionChanges(rows pgx.Rows) ([]store.Change, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Change, error) {
		c := store.Change{Kind: store.ChangeSession}
		return c, r.Scan(&c.SessionID, &c.DeviceID)
	})
}

// EraseDevice deletes everything stored about a device in one transaction
// (see store.Store); the receipt counts rows per table.
func (s *Store) EraseDevice(ctx context.Context, id int64, pseudonyms []privacy.Pseudonym) (map[string]int64, error) {
	return s.erase(ctx, "EraseDevice", func(tx pgx.Tx) ([]eraseStep, error) {
		var (
			idx  []byte
			home string
		)
		if err := tx.QueryRow(ctx, `SELECT blind_index, coalesce(home_gateway, '') FROM devices WHERE id = $1 FOR UPDATE`, id).Scan(&idx, &home); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return nil, fmt.Errorf("device %d: %w", id, store.ErrNotFound)
			}
			return nil, err
		}
		cs, err := openSessionChanges(ctx, tx, `device_id = $1`, id)
		if err != nil {
			return nil, err
		}
		if err := notify(ctx, tx, append(cs, store.Change{Kind: store.ChangeDevice, DeviceID: id, Gateway: home})...); err != nil {
			return nil, err
		}
		return []eraseStep{
			{"", `DELETE FROM wg_keys WHERE owner_kind = 'client' AND owner_id IN (SELECT id FROM sessions WHERE device_id = $1)`, []any{id}},
			{"", `DELETE FROM wg_keys WHERE owner_kind = 'device' AND owner_id = $1`, []any{ownerID(id)}},
			{store.TableSessions, `DELETE FROM sessions WHERE device_id = $1`, []any{id}},
			{store.TableBindings, `DELETE FROM bindings WHERE device_id = $1`, []any{id}},
			{store.TableBindingCodes, `DELETE FROM binding_codes WHERE device_id = $1`, []any{id}},
			{store.TableDeviceTokens, `DELETE FROM device_tokens WHERE device_id = $1`, []any{id}},
			{store.TableAuthFailures, `DELETE FROM auth_failures WHERE blind_index = $1`, []any{idx}},
			{store.TableDevices, `DELETE FROM devices WHERE id = $1`, []any{id}},
		}, nil
	}, pseudonyms)
}

// EraseAccount deletes an account with its tokens, bindings, sessions (open
// and closed), auth-failure records and the connection-log rows under the
// given pseudonyms, in one transaction.
func (s *Store) EraseAccount(ctx context.Context, id int64, pseudonyms []privacy.Pseudonym) (map[string]int64, error) {
	return s.erase(ctx, "EraseAccount", func(tx pgx.Tx) ([]eraseStep, error) {
		var idx []byte
		if err := tx.QueryRow(ctx, `SELECT name_index FROM accounts WHERE id = $1 FOR UPDATE`, id).Scan(&idx); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return nil, fmt.Errorf("account %d: %w", id, store.ErrNotFound)
			}
			return nil, err
		}
		cs, err := openSessionChanges(ctx, tx, `account_id = $1`, id)
		if err != nil {
			return nil, err
		}
		if err := notify(ctx, tx, cs...); err != nil {
			return nil, err
		}
		return []eraseStep{
			{"", `DELETE FROM wg_keys WHERE owner_kind = 'client' AND owner_id IN (SELECT id FROM sessions WHERE account_id = $1)`, []any{id}},
			{store.TableSessions, `DELETE FROM sessions WHERE account_id = $1`, []any{id}},
			{store.TableBindings, `DELETE FROM bindings WHERE account_id = $1`, []any{id}},
			{store.TableAccessTokens, `DELETE FROM access_tokens WHERE account_id = $1`, []any{id}},
			{store.TableAuthFailures, `DELETE FROM auth_failures WHERE blind_index = $1`, []any{idx}},
			{store.TableAccounts, `DELETE FROM accounts WHERE id = $1`, []any{id}},
		}, nil
	}, pseudonyms)
}
