package store

import (
	"context"
	"database/sql"
	"time"
)

// DayKeys keeps the pseudonym day keys of a fleet in the registry, so that
// every gateway on one database pseudonymises a day alike and a day key
// destroyed by one gateway is gone for all. The store only ever holds keys
// wrapped (AEAD) under a key-encryption key that lives in the keystores:
// the database alone links no pseudonym to its subject.
//
// Days are UTC days "YYYY-MM-DD". The horizon is the first day whose key
// may exist ("" while none was destroyed); it is never lowered.
type DayKeys interface {
	// EnsureDayKey records wrapped as the key of day unless the day has a
	// key already (the first gateway to need a day's key wins), and
	// returns the wrapped key in force. When day lies before the horizon
	// it records nothing and returns a nil key and the horizon.
	EnsureDayKey(ctx context.Context, day string, wrapped []byte) (inForce []byte, horizon string, err error)
	// DayKeys returns the horizon and the wrapped key of every day at or
	// after it, read at one point in time.
	DayKeys(ctx context.Context) (horizon string, keys map[string][]byte, err error)
	// DestroyDayKeysBefore raises the horizon to day (a lower day leaves
	// it) and deletes the key of every day before the horizon in force,
	// in one transaction. It returns how many keys it deleted and the
	// horizon in force.
	DestroyDayKeysBefore(ctx context.Context, day string) (deleted int, horizon string, err error)
	// RewrapDayKey replaces day's wrapped key by rewrapped if it is still
	// old (the same key wrapped under a new key-encryption key, when the
	// fleet rotates it); false when the row is gone or holds another value.
	RewrapDayKey(ctx context.Context, day string, old, rewrapped []byte) (bool, error)
}

// MaxWrappedDayKey bounds a wrapped day key (nonce, key and tag are 72
// bytes with XChaCha20-Poly1305).
const MaxWrappedDayKey = 256

// CheckDayKey validates EnsureDayKey's input (every backend).
func CheckDayKey(day string, wrapped []byte) error {
	if err := CheckDay(day); err != nil {
		return err
	}
	if len(wrapped) == 0 || len(wrapped) > MaxWrappedDayKey {
		return invalid("wrapped", "must be 1 to 256 bytes")
	}
	return nil
}

// CheckDay validates a UTC day "YYYY-MM-DD".
func CheckDay(day string) error {
	if t, err := time.Parse(time.DateOnly, day); err != nil || t.Format(time.DateOnly) != day {
		return invalid("day", "must be a UTC day YYYY-MM-DD")
	}
	return nil
}

// EnsureDayKey records wrapped as day's key unless it has one (DayKeys).
func (s *SQLite) EnsureDayKey(ctx context.Context, day string, wrapped []byte) (inForce []byte, horizon string, err error) {
	if err := CheckDayKey(day, wrapped); err != nil {
		return nil, "", err
	}
	err = s.write(ctx, "EnsureDayKey", func(tx *wtx) error {
		inForce = nil
		if err := tx.QueryRowContext(ctx, `SELECT horizon FROM day_key_horizon WHERE id = 1`).Scan(&horizon); err != nil {
			return err
		}
		if day < horizon {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO day_keys (day, wrapped) VALUES (?, ?) ON CONFLICT (day) DO NOTHING`, day, wrapped); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT wrapped FROM day_keys WHERE day = ?`, day).Scan(&inForce)
	})
	if err != nil {
		return nil, "", err
	}
	return inForce, horizon, nil
}

// DayKeys returns the horizon and every retained wrapped day key.
func (s *SQLite) DayKeys(ctx context.Context) (horizon string, keys map[string][]byte, err error) {
	err = s.read(ctx, "DayKeys", func(db *rdb) error {
		rows, err := db.QueryContext(ctx, `SELECT h.horizon, k.day, k.wrapped FROM day_key_horizon h
			LEFT JOIN day_keys k ON k.day >= h.horizon WHERE h.id = 1`)
		if err != nil {
			return err
		}
		defer rows.Close()
		keys = make(map[string][]byte)
		for rows.Next() {
			var day sql.NullString
			var wrapped []byte
			if err := rows.Scan(&horizon, &day, &wrapped); err != nil {
				return err
			}
			if day.Valid {
				keys[day.String] = wrapped
			}
		}
		return rows.Err()
	})
	if err != nil {
		return "", nil, err
	}
	return horizon, keys, nil
}

// DestroyDayKeysBefore raises the horizon and deletes the keys before it.
func (s *SQLite) DestroyDayKeysBefore(ctx context.Context, day string) (deleted int, horizon string, err error) {
	if err := CheckDay(day); err != nil {
		return 0, "", err
	}
	err = s.write(ctx, "DestroyDayKeysBefore", func(tx *wtx) error {
		if err := tx.QueryRowContext(ctx, `UPDATE day_key_horizon SET horizon = max(horizon, ?) WHERE id = 1 RETURNING horizon`, day).Scan(&horizon); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM day_keys WHERE day < ?`, horizon)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		deleted = int(n)
		return err
	})
	if err != nil {
		return 0, "", err
	}
	return deleted, horizon, nil
}

// RewrapDayKey swaps day's wrapped key from old to rewrapped (DayKeys).
func (s *SQLite) RewrapDayKey(ctx context.Context, day string, old, rewrapped []byte) (done bool, err error) {
	if err := CheckDayKey(day, rewrapped); err != nil {
		return false, err
	}
	err = s.write(ctx, "RewrapDayKey", func(tx *wtx) error {
		res, err := tx.ExecContext(ctx, `UPDATE day_keys SET wrapped = ? WHERE day = ? AND wrapped = ?`, rewrapped, day, old)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		done = n == 1
		return err
	})
	return done, err
}
