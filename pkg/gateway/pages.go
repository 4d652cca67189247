package gateway

import (
	"context"
	"sort"
	"time"
)

// DevicesPage lists at most limit devices with an id above afterID, by id,
// each with its state (keyset pagination for fleets of any size).
func (g *Gateway) DevicesPage(ctx context.Context, afterID int64, limit int) ([]DeviceView, error) {
	devs, err := g.reg.DevicesAfter(ctx, afterID, limit)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "listing devices failed")
	}
	online := g.onlineSet(ctx) // one map for the page, not a look-up per device
	g.fleet.refresh(ctx)       // devices homed on other gateways: their heartbeats
	out := make([]DeviceView, 0, len(devs))
	for _, d := range devs {
		v, err := g.view(d, func(k [32]byte) bool { return online[k] })
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// DeviceCounts are the allow-list's counts.
type DeviceCounts struct {
	Enrolled, Online, Revoked int
}

// CountDevices counts enrolled, online and revoked devices without listing
// them.
func (g *Gateway) CountDevices(ctx context.Context) (DeviceCounts, error) {
	total, revoked, err := g.reg.CountDevices(ctx)
	if err != nil {
		return DeviceCounts{}, newErr(ErrUnavailable, err, "counting devices failed")
	}
	online, err := g.OnlineCount(ctx)
	if err != nil {
		return DeviceCounts{}, newErr(ErrUnavailable, err, "counting online devices failed")
	}
	return DeviceCounts{Enrolled: total, Online: online, Revoked: revoked}, nil
}

// SessionCursor is where a page of sessions starts: after the session
// opened at OpenedAt with ID (sessions are listed oldest first, then by id).
type SessionCursor struct {
	OpenedAt time.Time
	ID       string
}

func (c SessionCursor) before(v SessionView) bool {
	if !c.OpenedAt.Equal(v.OpenedAt) {
		return c.OpenedAt.Before(v.OpenedAt)
	}
	return c.ID < v.ID
}

// SessionsPage lists at most limit open sessions after the cursor (the
// zero cursor: from the start), oldest first, with each device's serial.
func (g *Gateway) SessionsPage(ctx context.Context, after SessionCursor, limit int) []SessionView {
	s := g.sess
	s.mu.Lock()
	out := make([]SessionView, 0, min(limit, len(s.open)))
	for _, os := range s.open {
		v := SessionView{ID: os.ID, DeviceID: os.DeviceID, AccountID: os.AccountID, ClientAddrs: os.clientAddrs, DeviceAddrs: os.deviceAddrs, OpenedAt: os.OpenedAt, ExpiresAt: os.ExpiresAt}
		if after == (SessionCursor{}) || after.before(v) {
			out = append(out, v)
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return SessionCursor{out[i].OpenedAt, out[i].ID}.before(out[j]) })
	if len(out) > limit {
		out = out[:limit]
	}
	for i := range out {
		if d, err := g.reg.DeviceByID(ctx, out[i].DeviceID); err == nil {
			out[i].Serial, _ = g.openSerial(d)
		}
	}
	return out
}
