package store

import (
	"context"
	"fmt"
)

// checkGateway validates a gateway record before it is written.
func checkGateway(g Gateway) error {
	if err := checkInstanceID("instance_id", g.InstanceID); err != nil {
		return err
	}
	switch {
	case g.PublicKey == Key{}:
		return invalid("public_key", "must not be zero")
	case len(g.Endpoint) > 255:
		return invalid("endpoint", "must be at most 255 bytes")
	}
	if err := checkTime("started_at", g.StartedAt); err != nil {
		return err
	}
	return checkTime("heartbeat_at", g.HeartbeatAt)
}

// checkInstanceID validates a gateway instance id named field (a gateway's
// own, a device's home).
func checkInstanceID(field, id string) error {
	switch {
	case id == "":
		return invalid(field, "must not be empty")
	case len(id) > 64:
		return invalid(field, "must be at most 64 bytes")
	}
	return nil
}

// CheckInstanceID validates a gateway instance id named field (a device's
// home in Admission.Gateway and SetHome) as every backend does.
func CheckInstanceID(field, id string) error { return checkInstanceID(field, id) }

// CheckGateway validates a gateway record as every backend does.
func CheckGateway(g Gateway) error { return checkGateway(g) }

// Heartbeat records g, replacing the gateway's previous record.
func (s *SQLite) Heartbeat(ctx context.Context, g Gateway) error {
	if err := checkGateway(g); err != nil {
		return fmt.Errorf("store: Heartbeat: %w", err)
	}
	return s.write(ctx, "Heartbeat", func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO gateways (instance_id, public_key, endpoint, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (instance_id) DO UPDATE SET public_key = excluded.public_key, endpoint = excluded.endpoint,
			started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at`,
			g.InstanceID, g.PublicKey[:], g.Endpoint, nanos(g.StartedAt), nanos(g.HeartbeatAt))
		return err
	})
}

// Gateways lists every gateway, by instance id.
func (s *SQLite) Gateways(ctx context.Context) (out []Gateway, err error) {
	err = s.read(ctx, "Gateways", func(db *rdb) error {
		rows, err := db.QueryContext(ctx, `SELECT `+GatewayCols+` FROM gateways ORDER BY instance_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			g, err := ScanGateway(rows)
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
// force.
func (s *SQLite) ClaimMeta(ctx context.Context, key, value string) (v string, err error) {
	err = s.write(ctx, "ClaimMeta", func(tx *wtx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`, key, value); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
	})
	return v, err
}
