package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// EnsureDayKey records wrapped as day's key unless it has one (store.DayKeys).
// The horizon row is read FOR SHARE, so a concurrent DestroyDayKeysBefore
// (which updates it) runs wholly before or after: a key is never recorded
// for a day the other has just destroyed.
func (s *Store) EnsureDayKey(ctx context.Context, day string, wrapped []byte) (inForce []byte, horizon string, err error) {
	if err := store.CheckDayKey(day, wrapped); err != nil {
		return nil, "", err
	}
	err = s.write(ctx, "EnsureDayKey", func(tx pgx.Tx) error {
		inForce = nil
		if err := tx.QueryRow(ctx, `SELECT horizon FROM day_key_horizon WHERE id = 1 FOR SHARE`).Scan(&horizon); err != nil {
			return err
		}
		if day < horizon {
			return nil
		}
		if _, err := tx.Exec(ctx, `INSERT INTO day_keys (day, wrapped) VALUES ($1, $2) ON CONFLICT (day) DO NOTHING`, day, wrapped); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT wrapped FROM day_keys WHERE day = $1`, day).Scan(&inForce)
	})
	if err != nil {
		return nil, "", err
	}
	return inForce, horizon, nil
}

// DayKeys returns the horizon and every retained wrapped day key, from one
// statement (one snapshot).
func (s *Store) DayKeys(ctx context.Context) (horizon string, keys map[string][]byte, err error) {
	err = s.read(ctx, "DayKeys", func(q querier) error {
		rows, err := q.Query(ctx, `SELECT h.horizon, k.day, k.wrapped FROM day_key_horizon h
			LEFT JOIN day_keys k ON k.day >= h.horizon WHERE h.id = 1`)
		if err != nil {
			return err
		}
		defer rows.Close()
		keys = make(map[string][]byte)
		for rows.Next() {
			var day *string
			var wrapped []byte
			if err := rows.Scan(&horizon, &day, &wrapped); err != nil {
				return err
			}
			if day != nil {
				keys[*day] = wrapped
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
func (s *Store) DestroyDayKeysBefore(ctx context.Context, day string) (deleted int, horizon string, err error) {
	if err := store.CheckDay(day); err != nil {
		return 0, "", err
	}
	err = s.write(ctx, "DestroyDayKeysBefore", func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `UPDATE day_key_horizon SET horizon = GREATEST(horizon, $1) WHERE id = 1 RETURNING horizon`, day).Scan(&horizon); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM day_keys WHERE day < $1`, horizon)
		deleted = int(tag.RowsAffected())
		return err
	})
	if err != nil {
		return 0, "", err
	}
	return deleted, horizon, nil
}

// RewrapDayKey swaps day's wrapped key from old to rewrapped (store.DayKeys).
func (s *Store) RewrapDayKey(ctx context.Context, day string, old, rewrapped []byte) (done bool, err error) {
	if err := store.CheckDayKey(day, rewrapped); err != nil {
		return false, err
	}
	err = s.write(ctx, "RewrapDayKey", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE day_keys SET wrapped = $1 WHERE day = $2 AND wrapped = $3`, rewrapped, day, old)
		done = tag.RowsAffected() == 1
		return err
	})
	return done, err
}
