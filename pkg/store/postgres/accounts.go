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

// --- accounts ---

// CreateAccount adds an account (ErrConflict if the name exists) and returns
// it with its id (and CreatedAt, when zero, set to now).
func (s *Store) CreateAccount(ctx context.Context, a store.Account) (store.Account, error) {
	switch {
	case a.NameIndex == privacy.BlindIndex{}:
		return store.Account{}, fmt.Errorf("store: CreateAccount: %w", store.Invalid("name_index", "must not be zero"))
	case len(a.SealedName) == 0:
		return store.Account{}, fmt.Errorf("store: CreateAccount: %w", store.Invalid("sealed_name", "must not be empty"))
	case a.PasswordHash == "":
		return store.Account{}, fmt.Errorf("store: CreateAccount: %w", store.Invalid("password_hash", "must not be empty"))
	}
	if a.CreatedAt.IsZero() {
		a.CreatedAt = s.opt.now()
	}
	a.CreatedAt = fromNanos(nanos(a.CreatedAt))
	err := s.write(ctx, "CreateAccount", func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `INSERT INTO accounts (name_index, sealed_name, password_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id`,
			a.NameIndex[:], a.SealedName, a.PasswordHash, nanos(a.CreatedAt)).Scan(&a.ID)
	})
	if err != nil {
		return store.Account{}, err
	}
	return a, nil
}

// AccountByName finds an account by its name index.
func (s *Store) AccountByName(ctx context.Context, nameIndex privacy.BlindIndex) (a store.Account, err error) {
	err = s.read(ctx, "AccountByName", func(q querier) error {
		a, err = store.ScanAccount(q.QueryRow(ctx, `SELECT `+store.AccountCols+` FROM accounts a WHERE a.name_index = $1`, nameIndex[:]))
		return err
	})
	return a, err
}

// AccountByID finds an account by id.
func (s *Store) AccountByID(ctx context.Context, id int64) (a store.Account, err error) {
	err = s.read(ctx, "AccountByID", func(q querier) error {
		a, err = store.ScanAccount(q.QueryRow(ctx, `SELECT `+store.AccountCols+` FROM accounts a WHERE a.id = $1`, id))
		return err
	})
	return a, err
}

// SetPasswordHash replaces the account's password hash.
func (s *Store) SetPasswordHash(ctx context.Context, accountID int64, hash string) error {
	if hash == "" {
		return fmt.Errorf("store: SetPasswordHash: %w", store.Invalid("password_hash", "must not be empty"))
	}
	return s.write(ctx, "SetPasswordHash", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE accounts SET password_hash = $1 WHERE id = $2`, hash, accountID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("account %d: %w", accountID, store.ErrNotFound)
		}
		return nil
	})
}

func execCount(ctx context.Context, tx pgx.Tx, q string, args ...any) (int64, error) {
	tag, err := tx.Exec(ctx, q, args...)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// closeSessions closes the open sessions matching where (a condition on
// sessions using $2, $3, ...) and releases their client keys; it returns
// how many it closed.
func closeSessions(ctx context.Context, tx pgx.Tx, at int64, where string, args ...any) (int64, error) {
	rows, err := tx.Query(ctx, `UPDATE sessions SET closed_at = $1 WHERE closed_at IS NULL AND `+where+` RETURNING id, device_id`, append([]any{at}, args...)...)
	if err != nil {
		return 0, err
	}
	cs, err := collectSessionChanges(rows)
	if err != nil {
		return 0, err
	}
	if len(cs) == 0 {
		return 0, nil
	}
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.SessionID
	}
	if _, err := tx.Exec(ctx, `DELETE FROM wg_keys WHERE owner_kind = 'client' AND owner_id = ANY($1)`, ids); err != nil {
		return 0, err
	}
	if err := notify(ctx, tx, cs...); err != nil {
		return 0, err
	}
	return int64(len(ids)), nil
}

// DeleteAccount deletes the account with its access tokens and bindings and
// closes its open sessions (releasing their keys and offsets). The receipt
// counts rows per table; "sessions" counts the sessions closed.
func (s *Store) DeleteAccount(ctx context.Context, id int64) (map[string]int64, error) {
	receipt := map[string]int64{}
	at := nanos(s.opt.now())
	err := s.write(ctx, "DeleteAccount", func(tx pgx.Tx) error {
		var one int
		if err := tx.QueryRow(ctx, `SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE`, id).Scan(&one); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("account %d: %w", id, store.ErrNotFound)
			}
			return err
		}
		var err error
		if receipt[store.TableSessions], err = closeSessions(ctx, tx, at, `account_id = $2`, id); err != nil {
			return err
		}
		if receipt[store.TableAccessTokens], err = execCount(ctx, tx, `DELETE FROM access_tokens WHERE account_id = $1`, id); err != nil {
			return err
		}
		if receipt[store.TableBindings], err = execCount(ctx, tx, `DELETE FROM bindings WHERE account_id = $1`, id); err != nil {
			return err
		}
		receipt[store.TableAccounts], err = execCount(ctx, tx, `DELETE FROM accounts WHERE id = $1`, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return receipt, nil
}

// CreateAccessToken stores an access token hash for the account
// (ErrNotFound for an unknown account, ErrConflict for a duplicate hash).
func (s *Store) CreateAccessToken(ctx context.Context, hash [32]byte, accountID int64, expires time.Time) error {
	if err := store.CheckTime("expires", expires); err != nil {
		return fmt.Errorf("store: CreateAccessToken: %w", err)
	}
	return s.write(ctx, "CreateAccessToken", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO access_tokens (hash, account_id, expires_at) VALUES ($1, $2, $3)`, hash[:], accountID, nanos(expires))
		return err
	})
}

// AccountByToken finds the account holding an unexpired access token.
func (s *Store) AccountByToken(ctx context.Context, hash [32]byte, now time.Time) (a store.Account, err error) {
	err = s.read(ctx, "AccountByToken", func(q querier) error {
		a, err = store.ScanAccount(q.QueryRow(ctx, `SELECT `+store.AccountCols+` FROM access_tokens t JOIN accounts a ON a.id = t.account_id
			WHERE t.hash = $1 AND t.expires_at > $2`, hash[:], nanos(now)))
		return err
	})
	return a, err
}

// DeleteAccessTokens deletes every access token of the account.
func (s *Store) DeleteAccessTokens(ctx context.Context, accountID int64) error {
	return s.write(ctx, "DeleteAccessTokens", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE account_id = $1`, accountID)
		return err
	})
}

// --- bindings ---

// CreateBindingCode stores a binding code hash for the device.
func (s *Store) CreateBindingCode(ctx context.Context, hash [32]byte, deviceID int64, expires time.Time) error {
	if err := store.CheckTime("expires", expires); err != nil {
		return fmt.Errorf("store: CreateBindingCode: %w", err)
	}
	return s.write(ctx, "CreateBindingCode", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO binding_codes (hash, device_id, expires_at) VALUES ($1, $2, $3)`, hash[:], deviceID, nanos(expires))
		return err
	})
}

// RedeemBindingCode deletes the code and binds its device to the account in
// one transaction. Unknown or expired codes give ErrNotFound (an expired
// code is deleted); a revoked device gives ErrRevoked.
func (s *Store) RedeemBindingCode(ctx context.Context, hash [32]byte, accountID int64, now time.Time) (store.Device, error) {
	var (
		d       store.Device
		expired bool
	)
	err := s.write(ctx, "RedeemBindingCode", func(tx pgx.Tx) error {
		expired = false
		var deviceID, expires int64
		err := tx.QueryRow(ctx, `DELETE FROM binding_codes WHERE hash = $1 RETURNING device_id, expires_at`, hash[:]).Scan(&deviceID, &expires)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("binding code: %w", store.ErrNotFound)
		} else if err != nil {
			return err
		}
		if expires <= nanos(now) {
			expired = true // commit the deletion, then report
			return nil
		}
		if d, err = deviceForUpdate(ctx, tx, deviceID); err != nil {
			return err
		}
		if d.Revoked {
			return fmt.Errorf("device %d: %w", d.ID, store.ErrRevoked)
		}
		tag, err := tx.Exec(ctx, `INSERT INTO bindings (account_id, device_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, accountID, deviceID)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		// A new owner: the device's other owners are told on their next ListDevices.
		_, err = tx.Exec(ctx, `UPDATE bindings SET other_bound_at = $1 WHERE device_id = $2 AND account_id <> $3`, nanos(now), deviceID, accountID)
		return err
	})
	if err != nil {
		return store.Device{}, err
	}
	if expired {
		return store.Device{}, fmt.Errorf("store: RedeemBindingCode: binding code expired: %w", store.ErrNotFound)
	}
	return d, nil
}

// IsBound reports whether the device is bound to the account.
func (s *Store) IsBound(ctx context.Context, accountID, deviceID int64) (ok bool, err error) {
	err = s.read(ctx, "IsBound", func(q querier) error {
		return q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM bindings WHERE account_id = $1 AND device_id = $2)`, accountID, deviceID).Scan(&ok)
	})
	return ok, err
}

// BoundDevices lists the devices bound to the account, by id.
func (s *Store) BoundDevices(ctx context.Context, accountID int64) (ds []store.Device, err error) {
	err = s.read(ctx, "BoundDevices", func(q querier) error {
		ds, err = queryDevices(ctx, q, `SELECT `+store.DeviceCols+` FROM bindings b JOIN devices d ON d.id = b.device_id
			WHERE b.account_id = $1 ORDER BY d.id`, accountID)
		return err
	})
	return ds, err
}

// TakeBindingNotices returns and clears the account's binding notices; it
// writes only when there are some.
func (s *Store) TakeBindingNotices(ctx context.Context, accountID int64) (map[int64]time.Time, error) {
	out := map[int64]time.Time{}
	collect := func(rows pgx.Rows) error {
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
	err := s.read(ctx, "TakeBindingNotices", func(q querier) error {
		rows, err := q.Query(ctx, `SELECT device_id, other_bound_at FROM bindings WHERE account_id = $1 AND other_bound_at IS NOT NULL`, accountID)
		if err != nil {
			return err
		}
		return collect(rows)
	})
	if err != nil || len(out) == 0 {
		return out, err
	}
	err = s.write(ctx, "TakeBindingNotices", func(tx pgx.Tx) error {
		clear(out)
		rows, err := tx.Query(ctx, `SELECT device_id, other_bound_at FROM bindings WHERE account_id = $1 AND other_bound_at IS NOT NULL FOR UPDATE`, accountID)
		if err != nil {
			return err
		}
		if err := collect(rows); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE bindings SET other_bound_at = NULL WHERE account_id = $1 AND other_bound_at IS NOT NULL`, accountID)
		return err
	})
	return out, err
}

// Unbind removes the binding and closes the account's open sessions to the
// device. The receipt counts the rows removed ("bindings") and the sessions
// closed ("sessions"); ErrNotFound when the device was not bound.
func (s *Store) Unbind(ctx context.Context, accountID, deviceID int64) (map[string]int64, error) {
	receipt := map[string]int64{}
	at := nanos(s.opt.now())
	err := s.write(ctx, "Unbind", func(tx pgx.Tx) error {
		n, err := execCount(ctx, tx, `DELETE FROM bindings WHERE account_id = $1 AND device_id = $2`, accountID, deviceID)
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("binding of device %d to account %d: %w", deviceID, accountID, store.ErrNotFound)
		}
		receipt[store.TableBindings] = n
		receipt[store.TableSessions], err = closeSessions(ctx, tx, at, `account_id = $2 AND device_id = $3`, accountID, deviceID)
		return err
	})
	if err != nil {
		return nil, err
	}
	return receipt, nil
}

// BindingCount counts the accounts a device is bound to.
func (s *Store) BindingCount(ctx context.Context, deviceID int64) (n int, err error) {
	err = s.read(ctx, "BindingCount", func(q querier) error {
		return q.QueryRow(ctx, `SELECT count(*) FROM bindings WHERE device_id = $1`, deviceID).Scan(&n)
	})
	return n, err
}

// Verifier versions in meta "verifier_version" (see store.Store).
const (
	metaVerifierVersion = "verifier_version"
	verifierV1          = "1"
	verifierV2          = "2"
)

// UpgradeVerifiers rewrites every stored HWID verifier v as upgrade(v) in
// one transaction when the database still holds version-1 verifiers, and
// records version 2. The meta row is locked first, so of several gateways
// starting at once one upgrades and the others find nothing to do.
func (s *Store) UpgradeVerifiers(ctx context.Context, upgrade func(privacy.Verifier) privacy.Verifier) (n int, err error) {
	err = s.write(ctx, "UpgradeVerifiers", func(tx pgx.Tx) error {
		n = 0
		var v string
		err := tx.QueryRow(ctx, `SELECT value FROM meta WHERE key = $1 FOR UPDATE`, metaVerifierVersion).Scan(&v)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if v != verifierV1 {
			return nil
		}
		rows, err := tx.Query(ctx, `SELECT id, verifier FROM devices ORDER BY id FOR UPDATE`)
		if err != nil {
			return err
		}
		var (
			ids  []int64
			vers []privacy.Verifier
		)
		for rows.Next() {
			var (
				id  int64
				b   []byte
				ver privacy.Verifier
			)
			if err := rows.Scan(&id, &b); err != nil {
				rows.Close()
				return err
			}
			if err := to32((*[32]byte)(&ver), b, "verifier"); err != nil {
				rows.Close()
				return err
			}
			ids, vers = append(ids, id), append(vers, ver)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if err := store.UpgradeAll(ctx, vers, upgrade); err != nil {
			return err
		}
		col := make([][]byte, len(vers))
		for i := range vers {
			col[i] = vers[i][:]
		}
		if _, err := tx.Exec(ctx, `UPDATE devices d SET verifier = u.v FROM unnest($1::bigint[], $2::bytea[]) AS u(id, v) WHERE d.id = u.id`, ids, col); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE meta SET value = $1 WHERE key = $2`, verifierV2, metaVerifierVersion); err != nil {
			return err
		}
		n = len(ids)
		return nil
	})
	return n, err
}
