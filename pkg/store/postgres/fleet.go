package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// SetHome moves a device's home to gateway; nothing is written when it is
// home there already. The device's row is locked, so a concurrent Admit or
// RevokeDevice of it waits.
func (s *Store) SetHome(ctx context.Context, deviceID int64, gateway string) error {
	if err := store.CheckInstanceID("gateway", gateway); err != nil {
		return fmt.Errorf("store: SetHome: %w", err)
	}
	return s.write(ctx, "SetHome", func(tx pgx.Tx) error {
		changed, err := setHomeTx(ctx, tx, deviceID, gateway)
		if changed {
			return notify(ctx, tx, store.Change{Kind: store.ChangeDevice, DeviceID: deviceID, Gateway: gateway})
		}
		return err
	})
}

// setHomeTx sets the device's home in tx and reports whether it changed.
func setHomeTx(ctx context.Context, tx pgx.Tx, deviceID int64, gateway string) (bool, error) {
	d, err := deviceForUpdate(ctx, tx, deviceID)
	if err != nil {
		return false, err
	}
	if d.Revoked {
		return false, fmt.Errorf("device %d: %w", d.ID, store.ErrRevoked)
	}
	if d.Home == gateway {
		return false, nil
	}
	_, err = tx.Exec(ctx, `UPDATE devices SET home_gateway = $1 WHERE id = $2`, gateway, deviceID)
	return err == nil, err
}

// snapshot runs fn in one read-only REPEATABLE READ transaction: every
// query in it sees the same snapshot.
func (s *Store) snapshot(ctx context.Context, op string, fn func(tx pgx.Tx) error) (err error) {
	defer s.observe(op, time.Now(), &err)
	err = pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
	if err != nil {
		return wrap(op, err)
	}
	return nil
}

// HomePeers reads the gateway's admitted devices and their open sessions in
// one snapshot.
func (s *Store) HomePeers(ctx context.Context, gateway string) (hp store.HomePeers, err error) {
	if err := store.CheckInstanceID("gateway", gateway); err != nil {
		return store.HomePeers{}, fmt.Errorf("store: HomePeers: %w", err)
	}
	devQ, sessQ := store.HomePeersQueries("$1")
	err = s.snapshot(ctx, "HomePeers", func(tx pgx.Tx) error {
		var err error
		if hp.Devices, err = queryDevices(ctx, tx, devQ, gateway); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, sessQ, gateway)
		if err != nil {
			return err
		}
		hp.Sessions, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.HostedSession, error) { return store.ScanHostedSession(r) })
		return err
	})
	if err != nil {
		return store.HomePeers{}, err
	}
	return hp, nil
}

// GatewayLoads counts each gateway's admitted devices and their open
// sessions, in one snapshot.
func (s *Store) GatewayLoads(ctx context.Context) (out map[string]store.GatewayLoad, err error) {
	err = s.snapshot(ctx, "GatewayLoads", func(tx pgx.Tx) error {
		out = map[string]store.GatewayLoad{}
		for i, q := range []string{store.GatewayLoadsDevicesQuery, store.GatewayLoadsSessionsQuery} {
			rows, err := tx.Query(ctx, q)
			if err != nil {
				return err
			}
			var (
				gw string
				n  int
			)
			_, err = pgx.ForEachRow(rows, []any{&gw, &n}, func() error {
				l := out[gw]
				if i == 0 {
					l.Devices = n
				} else {
					l.Sessions = n
				}
				out[gw] = l
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
