package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// SessionsOf lists every stored session (open and closed) of a device or an
// account: pass deviceID > 0 or accountID > 0.
func (s *SQLite) SessionsOf(ctx context.Context, deviceID, accountID int64) (out []Session, err error) {
	where, arg := `device_id = ?`, deviceID
	if deviceID <= 0 {
		where, arg = `account_id = ?`, accountID
	}
	err = s.read(ctx, "SessionsOf", func(db *rdb) error {
		rows, err := db.QueryContext(ctx, `SELECT `+SessionCols+` FROM sessions WHERE `+where+` ORDER BY opened_at, id`, arg)
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

// BindingCount counts the accounts a device is bound to (an export of a
// device says how many, never who).
func (s *SQLite) BindingCount(ctx context.Context, deviceID int64) (n int, err error) {
	err = s.read(ctx, "BindingCount", func(db *rdb) error {
		return db.QueryRowContext(ctx, `SELECT count(*) FROM bindings WHERE device_id = ?`, deviceID).Scan(&n)
	})
	return n, err
}

func deleteConnLog(ctx context.Context, tx *wtx, ps []privacy.Pseudonym) (int64, error) {
	var total int64
	const chunk = 500
	for start := 0; start < len(ps); start += chunk {
		part := ps[start:min(start+chunk, len(ps))]
		args := make([]any, len(part))
		for i := range part {
			args[i] = part[i][:]
		}
		n, err := execCount(ctx, tx, `DELETE FROM connection_log WHERE pseudonym IN (?`+strings.Repeat(", ?", len(part)-1)+`)`, args...)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// eraseStep is one DELETE of an erasure; table "" is not counted in the
// receipt (bookkeeping rows such as reserved keys).
type eraseStep struct {
	table string
	q     string
	args  []any
}

// eraseSteps runs the steps and then deletes the connection-log rows under
// the pseudonyms, filling the receipt.
func eraseSteps(ctx context.Context, tx *wtx, steps []eraseStep, pseudonyms []privacy.Pseudonym, receipt map[string]int64) error {
	for _, st := range steps {
		n, err := execCount(ctx, tx, st.q, st.args...)
		if err != nil {
			return err
		}
		if st.table != "" {
			receipt[st.table] = n
		}
	}
	n, err := deleteConnLog(ctx, tx, pseudonyms)
	receipt[TableConnLog] = n
	return err
}

// emitOpenSessions emits a ChangeSession for each open session matching
// where (an erasure deletes them: they close).
func emitOpenSessions(ctx context.Context, tx *wtx, where string, args ...any) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, device_id FROM sessions WHERE closed_at IS NULL AND `+where, args...)
	if err != nil {
		return err
	}
	_, err = emitSessions(tx, rows)
	return err
}

// EraseDevice deletes everything stored about a device in one transaction:
// its row, tokens, binding codes, bindings, sessions (open and closed, with
// their client keys), its auth-failure records and the connection-log rows
// under the given pseudonyms. The receipt counts rows per table.
func (s *SQLite) EraseDevice(ctx context.Context, id int64, pseudonyms []privacy.Pseudonym) (map[string]int64, error) {
	receipt := map[string]int64{}
	err := s.write(ctx, "EraseDevice", func(tx *wtx) error {
		var (
			idx  []byte
			home string
		)
		if err := tx.QueryRowContext(ctx, `SELECT blind_index, coalesce(home_gateway, '') FROM devices WHERE id = ?`, id).Scan(&idx, &home); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("device %d: %w", id, ErrNotFound)
			}
			return err
		}
		if err := emitOpenSessions(ctx, tx, `device_id = ?`, id); err != nil {
			return err
		}
		tx.emit(Change{Kind: ChangeDevice, DeviceID: id, Gateway: home})
		steps := []eraseStep{
			{"", `DELETE FROM wg_keys WHERE owner_kind = 'client' AND owner_id IN (SELECT id FROM sessions WHERE device_id = ?)`, []any{id}},
			{"", `DELETE FROM wg_keys WHERE owner_kind = 'device' AND owner_id = ?`, []any{ownerID(id)}},
			{TableSessions, `DELETE FROM sessions WHERE device_id = ?`, []any{id}},
			{TableBindings, `DELETE FROM bindings WHERE device_id = ?`, []any{id}},
			{TableBindingCodes, `DELETE FROM binding_codes WHERE device_id = ?`, []any{id}},
			{TableDeviceTokens, `DELETE FROM device_tokens WHERE device_id = ?`, []any{id}},
			{TableAuthFailures, `DELETE FROM auth_failures WHERE blind_index = ?`, []any{idx}},
			{TableDevices, `DELETE FROM devices WHERE id = ?`, []any{id}},
		}
		return eraseSteps(ctx, tx, steps, pseudonyms, receipt)
	})
	if err != nil {
		return nil, err
	}
	return receipt, nil
}

// EraseAccount deletes an account with its tokens, bindings, sessions (open
// and closed), auth-failure records and the connection-log rows under the
// given pseudonyms, in one transaction.
func (s *SQLite) EraseAccount(ctx context.Context, id int64, pseudonyms []privacy.Pseudonym) (map[string]int64, error) {
	receipt := map[string]int64{}
	err := s.write(ctx, "EraseAccount", func(tx *wtx) error {
		var idx []byte
		if err := tx.QueryRowContext(ctx, `SELECT name_index FROM accounts WHERE id = ?`, id).Scan(&idx); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("account %d: %w", id, ErrNotFound)
			}
			return err
		}
		if err := emitOpenSessions(ctx, tx, `account_id = ?`, id); err != nil {
			return err
		}
		steps := []eraseStep{
			{"", `DELETE FROM wg_keys WHERE owner_kind = 'client' AND owner_id IN (SELECT id FROM sessions WHERE account_id = ?)`, []any{id}},
			{TableSessions, `DELETE FROM sessions WHERE account_id = ?`, []any{id}},
			{TableBindings, `DELETE FROM bindings WHERE account_id = ?`, []any{id}},
			{TableAccessTokens, `DELETE FROM access_tokens WHERE account_id = ?`, []any{id}},
			{TableAuthFailures, `DELETE FROM auth_failures WHERE blind_index = ?`, []any{idx}},
			{TableAccounts, `DELETE FROM accounts WHERE id = ?`, []any{id}},
		}
		return eraseSteps(ctx, tx, steps, pseudonyms, receipt)
	})
	if err != nil {
		return nil, err
	}
	return receipt, nil
}

// Meta reads a value of the store's own metadata ("" when unset).
func (s *SQLite) Meta(ctx context.Context, key string) (v string, err error) {
	err = s.read(ctx, "Meta", func(db *rdb) error {
		err := db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		return err
	})
	return v, err
}

// SetMeta writes a metadata value.
func (s *SQLite) SetMeta(ctx context.Context, key, value string) error {
	return s.write(ctx, "SetMeta", func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
		return err
	})
}

// Verifier versions recorded in meta "verifier_version".
const (
	metaVerifierVersion = "verifier_version"
	verifierV1          = "1"
	verifierV2          = "2"
)

// UpgradeAll replaces every verifier v of vs by upgrade(v), spread over
// the CPUs (upgrade is a memory-hard KDF): the computation of every
// backend's UpgradeVerifiers.
func UpgradeAll(ctx context.Context, vs []privacy.Verifier, upgrade func(privacy.Verifier) privacy.Verifier) error {
	var wg sync.WaitGroup
	workers := min(runtime.GOMAXPROCS(0), max(1, len(vs)))
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(vs); i += workers {
				vs[i] = upgrade(vs[i])
			}
		})
	}
	wg.Wait()
	return ctx.Err()
}

// UpgradeVerifiers rewrites version-1 verifiers (see Store). The upgrade
// function is computed for all rows in parallel (it is a memory-hard KDF),
// inside the write transaction, so a crash leaves either every old verifier
// or every new one, with the version that says which.
func (s *SQLite) UpgradeVerifiers(ctx context.Context, upgrade func(privacy.Verifier) privacy.Verifier) (n int, err error) {
	err = s.write(ctx, "UpgradeVerifiers", func(tx *wtx) error {
		n = 0
		var v string
		err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaVerifierVersion).Scan(&v)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if v != verifierV1 {
			return nil
		}
		type row struct {
			id  int64
			ver privacy.Verifier
		}
		var todo []row
		rows, err := tx.tx.QueryContext(ctx, `SELECT id, verifier FROM devices ORDER BY id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var r row
			var b []byte
			if err := rows.Scan(&r.id, &b); err != nil {
				rows.Close()
				return err
			}
			if err := to32((*[32]byte)(&r.ver), b, "verifier"); err != nil {
				rows.Close()
				return err
			}
			todo = append(todo, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}

		vers := make([]privacy.Verifier, len(todo))
		for i, r := range todo {
			vers[i] = r.ver
		}
		if err := UpgradeAll(ctx, vers, upgrade); err != nil {
			return err
		}
		for i := range todo {
			todo[i].ver = vers[i]
		}

		upd, err := tx.tx.PrepareContext(ctx, `UPDATE devices SET verifier = ? WHERE id = ?`)
		if err != nil {
			return err
		}
		defer upd.Close()
		for _, r := range todo {
			if _, err := upd.ExecContext(ctx, r.ver[:], r.id); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE meta SET value = ? WHERE key = ?`, verifierV2, metaVerifierVersion); err != nil {
			return err
		}
		n = len(todo)
		return nil
	})
	return n, err
}
