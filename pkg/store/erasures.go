package store

import (
	"context"
	"fmt"
)

// RecordErasures inserts the erasures whose tombstone is new and moves
// the time of those erased again later, in one transaction.
func (s *SQLite) RecordErasures(ctx context.Context, es []Erasure) error {
	for i, e := range es {
		if err := CheckErasure(e); err != nil {
			return fmt.Errorf("store: RecordErasures: erasure %d: %w", i, err)
		}
	}
	if len(es) == 0 {
		return nil
	}
	return s.write(ctx, "RecordErasures", func(tx *wtx) error {
		for _, e := range es {
			if _, err := tx.ExecContext(ctx, `INSERT INTO erasures (tombstone, kind, sealed_index, erased_at) VALUES (?, ?, ?, ?)
				ON CONFLICT (tombstone) DO UPDATE SET sealed_index = excluded.sealed_index, erased_at = excluded.erased_at
				WHERE excluded.erased_at > erasures.erased_at`, e.Tombstone[:], e.Kind, e.SealedIndex, nanos(e.ErasedAt)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Erasures lists every recorded erasure, by tombstone.
func (s *SQLite) Erasures(ctx context.Context) (out []Erasure, err error) {
	err = s.read(ctx, "Erasures", func(db *rdb) error {
		rows, err := db.QueryContext(ctx, `SELECT tombstone, kind, sealed_index, erased_at FROM erasures ORDER BY tombstone`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				e  Erasure
				tb []byte
				at int64
			)
			if err := rows.Scan(&tb, &e.Kind, &e.SealedIndex, &at); err != nil {
				return err
			}
			if err := to32(&e.Tombstone, tb, "tombstone"); err != nil {
				return err
			}
			e.ErasedAt = fromNanos(at)
			out = append(out, e)
		}
		return rows.Err()
	})
	return out, err
}
