package store

import (
	"context"
	"fmt"
)

// RecordErasures inserts the erasures whose tombstone is new and moves
// the time of those erased again later, in one transaction.
func (s *SQLite) RecordErasures(ctx context.Context, es []Erasure) error {
	if err := CheckErasures(es); err != nil {
		return fmt.Errorf("store: RecordErasures: %w", err)
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
		rows, err := db.QueryContext(ctx, `SELECT `+ErasureCols+` FROM erasures ORDER BY tombstone`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			e, err := ScanErasure(rows)
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return rows.Err()
	})
	return out, err
}
