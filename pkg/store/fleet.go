package store

import (
	"context"
	"fmt"
	"time"
)

// HomePeers is the desired data-plane state of one gateway (Store.HomePeers).
type HomePeers struct {
	Devices  []Device        // admitted, unrevoked devices homed there, by id
	Sessions []HostedSession // open sessions of devices homed there, oldest first
}

// HostedSession is an open session with what its host gateway needs of the
// device: its address offset and pinned key (0 and zero when the device has
// none at the moment).
type HostedSession struct {
	Session
	DeviceOffset uint32
	DeviceKey    Key
}

// GatewayLoad is what one gateway hosts (Store.GatewayLoads).
type GatewayLoad struct{ Devices, Sessions int }

// The queries of HomePeers and GatewayLoads, in SQL both dialects run (with
// their own placeholder): "admitted" is a pinned key and an address, not
// revoked (revoked is 0/1 in SQLite, a boolean in PostgreSQL: NOT works on
// both).
const (
	admittedWhere    = `d.pinned_key IS NOT NULL AND d.address_offset IS NOT NULL AND NOT d.revoked`
	homeDevicesQuery = `SELECT ` + DeviceCols + ` FROM devices d WHERE d.home_gateway = %s AND ` + admittedWhere + ` ORDER BY d.id`
	homeSessionQuery = `SELECT ` + HostedSessionCols + ` FROM sessions s JOIN devices d ON d.id = s.device_id
		WHERE s.closed_at IS NULL AND d.home_gateway = %s ORDER BY s.opened_at, s.id`
	loadDevicesQuery = `SELECT d.home_gateway, count(*) FROM devices d WHERE d.home_gateway IS NOT NULL AND ` + admittedWhere + ` GROUP BY d.home_gateway`
	loadSessionQuery = `SELECT d.home_gateway, count(*) FROM sessions s JOIN devices d ON d.id = s.device_id
		WHERE s.closed_at IS NULL AND d.home_gateway IS NOT NULL GROUP BY d.home_gateway`
)

// HomePeersQueries are the two queries of HomePeers (devices, sessions),
// given the dialect's placeholder for the gateway ("?", "$1").
func HomePeersQueries(param string) (devices, sessions string) {
	return fmt.Sprintf(homeDevicesQuery, param), fmt.Sprintf(homeSessionQuery, param)
}

// GatewayLoadsQueries are the two queries of GatewayLoads (devices,
// sessions), each giving rows of (gateway, count).
const (
	GatewayLoadsDevicesQuery  = loadDevicesQuery
	GatewayLoadsSessionsQuery = loadSessionQuery
)

// SetHome moves a device's home to gateway; nothing is written when it is
// home there already.
func (s *SQLite) SetHome(ctx context.Context, deviceID int64, gateway string) error {
	if err := checkInstanceID("gateway", gateway); err != nil {
		return fmt.Errorf("store: SetHome: %w", err)
	}
	return s.write(ctx, "SetHome", func(tx *wtx) error {
		changed, err := setHomeTx(ctx, tx, deviceID, gateway)
		if changed {
			tx.emit(Change{Kind: ChangeDevice, DeviceID: deviceID, Gateway: gateway})
		}
		return err
	})
}

// setHomeTx sets the device's home in tx and reports whether it changed.
func setHomeTx(ctx context.Context, tx *wtx, deviceID int64, gateway string) (bool, error) {
	d, err := deviceByID(ctx, tx, deviceID)
	if err != nil {
		return false, err
	}
	if d.Revoked {
		return false, fmt.Errorf("device %d: %w", d.ID, ErrRevoked)
	}
	if d.Home == gateway {
		return false, nil
	}
	_, err = tx.ExecContext(ctx, `UPDATE devices SET home_gateway = ? WHERE id = ?`, gateway, deviceID)
	return err == nil, err
}

// HomePeers reads the gateway's admitted devices and their open sessions in
// one read transaction (one snapshot).
func (s *SQLite) HomePeers(ctx context.Context, gateway string) (hp HomePeers, err error) {
	if err := checkInstanceID("gateway", gateway); err != nil {
		return HomePeers{}, fmt.Errorf("store: HomePeers: %w", err)
	}
	devQ, sessQ := HomePeersQueries("?")
	defer s.observe("HomePeers", time.Now(), &err)
	tx, err := s.r.BeginTx(ctx, nil)
	if err != nil {
		return HomePeers{}, wrap("HomePeers", err)
	}
	defer func() { _ = tx.Rollback() }()
	if hp.Devices, err = queryDevices(ctx, tx, devQ, gateway); err != nil {
		return HomePeers{}, wrap("HomePeers", err)
	}
	rows, err := tx.QueryContext(ctx, sessQ, gateway)
	if err != nil {
		return HomePeers{}, wrap("HomePeers", err)
	}
	defer rows.Close()
	for rows.Next() {
		h, err := ScanHostedSession(rows)
		if err != nil {
			return HomePeers{}, wrap("HomePeers", err)
		}
		hp.Sessions = append(hp.Sessions, h)
	}
	if err := rows.Err(); err != nil {
		return HomePeers{}, wrap("HomePeers", err)
	}
	return hp, nil
}

// GatewayLoads counts each gateway's admitted devices and their open
// sessions, in one read transaction.
func (s *SQLite) GatewayLoads(ctx context.Context) (out map[string]GatewayLoad, err error) {
	defer s.observe("GatewayLoads", time.Now(), &err)
	devQ, sessQ := GatewayLoadsDevicesQuery, GatewayLoadsSessionsQuery
	tx, err := s.r.BeginTx(ctx, nil)
	if err != nil {
		return nil, wrap("GatewayLoads", err)
	}
	defer func() { _ = tx.Rollback() }()
	out = map[string]GatewayLoad{}
	for i, q := range []string{devQ, sessQ} {
		rows, err := tx.QueryContext(ctx, q)
		if err != nil {
			return nil, wrap("GatewayLoads", err)
		}
		for rows.Next() {
			var (
				gw string
				n  int
			)
			if err := rows.Scan(&gw, &n); err != nil {
				rows.Close()
				return nil, wrap("GatewayLoads", err)
			}
			l := out[gw]
			if i == 0 {
				l.Devices = n
			} else {
				l.Sessions = n
			}
			out[gw] = l
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, wrap("GatewayLoads", err)
		}
	}
	return out, nil
}
