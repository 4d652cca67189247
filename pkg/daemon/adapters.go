package daemon

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/api"
	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/ipam"
	"github.com/planetxlabs/dasset-gateway/pkg/metrics"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	"github.com/planetxlabs/dasset-gateway/tunnel/router"
	"github.com/planetxlabs/dasset-gateway/tunnel/wg"
)

// tunnelAdapter lets the domain drive tunnel/wg without importing it.
type tunnelAdapter struct{ d *wg.Device }

func (t tunnelAdapter) CheckKey(key [32]byte) error {
	k := wg.Key(key)
	if err := k.Validate(); err != nil {
		return err
	}
	if k == t.d.PublicKey() {
		return wg.ErrOwnKey
	}
	return nil
}

func (t tunnelAdapter) AddPeer(ctx context.Context, key [32]byte, allowed []netip.Prefix) error {
	return t.d.AddPeer(ctx, wg.Peer{PublicKey: wg.Key(key), AllowedIPs: allowed})
}

func (t tunnelAdapter) AddPeers(ctx context.Context, ps []gateway.PeerSpec) error {
	peers := make([]wg.Peer, len(ps))
	for i, p := range ps {
		peers[i] = wg.Peer{PublicKey: wg.Key(p.Key), AllowedIPs: p.Allowed}
	}
	return t.d.AddPeers(ctx, peers)
}

func (t tunnelAdapter) RemovePeer(ctx context.Context, key [32]byte) error {
	return t.d.RemovePeer(ctx, wg.Key(key))
}

func (t tunnelAdapter) RemovePeers(ctx context.Context, keys [][32]byte) error {
	ks := make([]wg.Key, len(keys))
	for i, k := range keys {
		ks[i] = wg.Key(k)
	}
	return t.d.RemovePeers(ctx, ks)
}

// Peers reads the device's peers from an IpcGet made now.
func (t tunnelAdapter) Peers(ctx context.Context) ([]gateway.PeerSpec, error) {
	ps, err := t.d.PeersNow(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]gateway.PeerSpec, len(ps))
	for i, p := range ps {
		out[i] = gateway.PeerSpec{Key: p.PublicKey, Allowed: p.AllowedIPs}
	}
	return out, nil
}

func (t tunnelAdapter) SetPeers(ctx context.Context, ps []gateway.PeerSpec) error {
	peers := make([]wg.Peer, len(ps))
	for i, p := range ps {
		peers[i] = wg.Peer{PublicKey: wg.Key(p.Key), AllowedIPs: p.Allowed}
	}
	return t.d.Reconcile(ctx, peers)
}

func (t tunnelAdapter) LastHandshakes(ctx context.Context) (map[[32]byte]time.Time, error) {
	return t.d.LastHandshakes(ctx)
}

func (t tunnelAdapter) LastHandshake(ctx context.Context, key [32]byte) (time.Time, error) {
	hs, _, err := t.d.LastHandshake(ctx, wg.Key(key))
	return hs, err
}

func (t tunnelAdapter) PublicKey() [32]byte { return t.d.PublicKey() }

// changeFeed turns the registry's change notifications into the
// domain's. It passes back-pressure on: while the reconciler is busy the
// store's queue fills, and past its bound the store sends one resync.
type changeFeed struct{ st store.Store }

var changeKinds = map[store.ChangeKind]gateway.ChangeKind{
	store.ChangeDevice:  gateway.ChangeDevice,
	store.ChangeSession: gateway.ChangeSession,
	store.ChangeResync:  gateway.ChangeResync,
}

func (f changeFeed) Changes(ctx context.Context) (<-chan gateway.Change, error) {
	in, err := f.st.Changes(ctx)
	if err != nil {
		return nil, err
	}
	out := make(chan gateway.Change)
	go func() {
		defer close(out)
		for c := range in {
			kind, ok := changeKinds[c.Kind]
			if !ok {
				kind = gateway.ChangeResync // unknown to this version: re-read everything
			}
			select {
			case out <- gateway.Change{Kind: kind, DeviceID: c.DeviceID, SessionID: c.SessionID, Gateway: c.Gateway}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// aclAdapter feeds the domain's session pairs to the hub's filter.
type aclAdapter struct{ r *router.Router }

func (a aclAdapter) SetSessions(pairs []gateway.Pair) {
	rp := make([]router.Pair, len(pairs))
	for i, p := range pairs {
		rp[i] = router.Pair{Client: p.Client, Device: p.Device}
	}
	a.r.SetSessions(rp)
}

// peerSource gives AdminService the live WireGuard view, with each peer's
// kind told by its address.
type peerSource struct {
	d    *wg.Device
	plan *ipam.Allocator
}

func (s peerSource) PeerStatuses(ctx context.Context) ([]api.PeerStatus, error) {
	ps, err := s.d.Peers(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.PeerStatus, len(ps))
	for i, p := range ps {
		kind := "unknown"
		if len(p.AllowedIPs) > 0 {
			switch s.plan.Kind(p.AllowedIPs[0].Addr()) {
			case ipam.KindDevice:
				kind = "device"
			case ipam.KindClient:
				kind = "client"
			}
		}
		out[i] = api.PeerStatus{Key: p.PublicKey, Kind: kind, AllowedIPs: p.AllowedIPs, LastHandshake: p.LastHandshake, RxBytes: p.RxBytes, TxBytes: p.TxBytes}
	}
	return out, nil
}

// state is read by the metrics collector at every scrape. The router's
// counters are atomics and the counts are in memory; the WireGuard figures
// come from the device's cached IpcGet (tunnel/wg, StatsMaxAge).
func (d *Daemon) state(ctx context.Context) metrics.Snapshot {
	online, _ := d.gw.OnlineCount(ctx)
	rs := d.rt.Stats()
	s := metrics.Snapshot{
		AdmittedDevices: d.gw.AdmittedCount(),
		OnlineDevices:   online,
		OpenSessions:    d.gw.OpenSessionCount(),
		RouterDropped:   rs.Dropped,
		Hairpinned:      rs.Hairpinned,
	}
	st, err := d.dev.Stats(ctx)
	if err != nil {
		d.log.Warn("reading WireGuard stats for metrics failed", "err", err)
		return s
	}
	s.WireGuard = &metrics.WireGuardStats{
		Peers: st.Peers,
		HandshakeAges: map[string]int{
			"le_2m": st.HandshakeAges.Under2m, "le_5m": st.HandshakeAges.Under5m,
			"le_1h": st.HandshakeAges.Under1h, "older": st.HandshakeAges.OlderOrNever,
		},
		RxBytes: st.RxBytes,
		TxBytes: st.TxBytes,
	}
	return s
}

// endpointForgetter clears the remembered WireGuard endpoint of peers idle
// longer than the idle timeout (the policy keeps endpoints in memory only
// while needed). wireguard-go cannot unset an endpoint, so the peer is
// removed and re-added with the same allowed IPs, which also drops its
// session keys: a peer in use must never be taken for an idle one. So the
// peers are read from an IpcGet made now (a cached one may predate the
// last handshake), and a peer with an endpoint but no handshake yet (one
// mid-handshake has exactly that) is forgotten only when the previous run
// saw it so too.
type endpointForgetter struct {
	d   *wg.Device
	now func() time.Time

	mu        sync.Mutex
	unhandled map[wg.Key]bool // endpoint and no handshake at the last run
}

func (e *endpointForgetter) ForgetIdleEndpoints(ctx context.Context, idle time.Duration) (int, error) {
	ps, err := e.d.PeersNow(ctx)
	if err != nil {
		return 0, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	seen := e.unhandled
	e.unhandled = map[wg.Key]bool{}
	n := 0
	now := e.now()
	for _, p := range ps {
		if !p.Endpoint.IsValid() {
			continue
		}
		if p.LastHandshake.IsZero() {
			if !seen[p.PublicKey] {
				e.unhandled[p.PublicKey] = true
				continue
			}
		} else if now.Sub(p.LastHandshake) < idle {
			continue
		}
		if err := e.d.RemovePeer(ctx, p.PublicKey); err != nil {
			return n, err
		}
		if err := e.d.AddPeer(ctx, wg.Peer{PublicKey: p.PublicKey, AllowedIPs: p.AllowedIPs}); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// retentionRunner runs the pruner (and the audit log's own pruning) for
// AdminService.RunRetention.
type retentionRunner struct{ d *Daemon }

func (r retentionRunner) RunNow(ctx context.Context) (map[string]int64, int, time.Time, error) {
	res, err := r.d.pruner.RunOnce(ctx)
	if n := r.d.pruneAudit(); n > 0 {
		if res.Pruned == nil {
			res.Pruned = map[string]int64{}
		}
		res.Pruned[store.TableAudit] = int64(n)
	}
	return res.Pruned, res.KeysDestroyed, res.RanAt, err
}

// pruneAudit drops audit entries past their retention, keeping the chain's
// anchor.
func (d *Daemon) pruneAudit() int {
	n, err := d.audit.Prune(d.now().Add(-d.cfg.Retention.AuditLog))
	if err != nil {
		d.log.Error("pruning the audit log failed", "err", err)
	}
	return n
}
