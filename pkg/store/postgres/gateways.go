package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// Heartbeat records g, replacing the gateway's previous record.
func (s *Store) Heartbeat(ctx context.Context, g store.Gateway) error {
	if err := store.CheckGateway(g); err != nil {
		return fmt.Errorf("store: Heartbeat: %w", err)
	}
	return s.write(ctx, "Heartbeat", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO gateways (instance_id, public_key, endpoint, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (instance_id) DO UPDATE SET public_key = excluded.public_key, endpoint = excluded.endpoint,
			started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at`,
			g.InstanceID, g.PublicKey[:], g.Endpoint, nanos(g.StartedAt), nanos(g.HeartbeatAt))
		return err
	})
}

// Gateways lists every gateway, by instance id.
func (s *Store) Gateways(ctx context.Context) (out []store.Gateway, err error) {
	err = s.read(ctx, "Gateways", func(q querier) error {
		rows, err := q.Query(ctx, `SELECT `+store.GatewayCols+` FROM gateways ORDER BY instance_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			g, err := store.ScanGateway(rows)
			if err != nil {
				return err
			}
			out = append(out, g)
		}
		return rows.Err()
	})
	return out, err
}

// ClaimMeta sets key to value unless it is set, and returns the value in
// force (the insert waits for a concurrent one of the same key to commit).
func (s *Store) ClaimMeta(ctx context.Context, key, value string) (v string, err error) {
	err = s.write(ctx, "ClaimMeta", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, key, value); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT value FROM meta WHERE key = $1`, key).Scan(&v)
	})
	return v, err
}
