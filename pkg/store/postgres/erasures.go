package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// RecordErasures inserts the erasures whose tombstone is new and moves
// the time of those erased again later, in one transaction: every gateway of the fleet records its own and those it
// learnt, and none overwrites another's.
func (s *Store) RecordErasures(ctx context.Context, es []store.Erasure) error {
	if err := store.CheckErasures(es); err != nil {
		return fmt.Errorf("store: RecordErasures: %w", err)
	}
	if len(es) == 0 {
		return nil
	}
	return s.write(ctx, "RecordErasures", func(tx pgx.Tx) error {
		for _, e := range es {
			if _, err := tx.Exec(ctx, `INSERT INTO erasures (tombstone, kind, sealed_index, erased_at) VALUES ($1, $2, $3, $4)
				ON CONFLICT (tombstone) DO UPDATE SET sealed_index = excluded.sealed_index, erased_at = excluded.erased_at
				WHERE excluded.erased_at > erasures.erased_at`, e.Tombstone[:], e.Kind, e.SealedIndex, nanos(e.ErasedAt)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Erasures lists every recorded erasure, by tombstone.
func (s *Store) Erasures(ctx context.Context) (out []store.Erasure, err error) {
	err = s.read(ctx, "Erasures", func(q querier) error {
		rows, err := q.Query(ctx, `SELECT `+store.ErasureCols+` FROM erasures ORDER BY tombstone`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			e, err := store.ScanErasure(rows)
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return rows.Err()
	})
	return out, err
}
