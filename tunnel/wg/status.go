package wg

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// statusCache holds the last parsed IpcGet. IpcGet locks every peer while it
// renders, so all status reads share one (never one per peer or per scrape).
type statusCache struct {
	lock  chan struct{} // cap 1: held while reading or refreshing
	valid bool
	at    time.Time
	gen   uint64 // Device.gen when read
	peers []PeerStatus
	byKey map[Key]int // index into peers
}

// status returns the cached peer list, refreshing it when older than
// StatsMaxAge, or (if fresh is set) when a change was applied since, or
// (if uncached is set) always. The returned slice is shared: callers must
// not modify it.
func (d *Device) status(ctx context.Context, fresh, uncached bool) ([]PeerStatus, map[Key]int, error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil, nil, ErrClosed
	}
	c := &d.stats
	select {
	case c.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	defer func() { <-c.lock }()
	gen := d.gen.Load()
	if c.valid && time.Since(c.at) < d.cfg.StatsMaxAge && (!fresh || c.gen == gen) && !uncached {
		return c.peers, c.byKey, nil
	}
	st, err := d.get()
	if err != nil {
		return nil, nil, err
	}
	byKey := make(map[Key]int, len(st.peers))
	for i := range st.peers {
		byKey[st.peers[i].PublicKey] = i
	}
	c.valid, c.at, c.gen, c.peers, c.byKey = true, time.Now(), gen, st.peers, byKey
	return c.peers, c.byKey, nil
}

// LastHandshake returns one peer's last handshake (zero: never) from the
// same cached IpcGet as Peers, without copying the peer list; ok is false
// when k is not a peer.
func (d *Device) LastHandshake(ctx context.Context, k Key) (t time.Time, ok bool, err error) {
	peers, byKey, err := d.status(ctx, true, false)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("wg: last handshake: %w", err)
	}
	i, ok := byKey[k]
	if !ok {
		return time.Time{}, false, nil
	}
	return peers[i].LastHandshake, true, nil
}

// LastHandshakes returns each peer's last handshake (zero: never) by public
// key, from the same cached IpcGet as Peers, without copying the peer list
// (online counts read it at every metrics scrape).
func (d *Device) LastHandshakes(ctx context.Context) (map[[KeySize]byte]time.Time, error) {
	peers, _, err := d.status(ctx, true, false)
	if err != nil {
		return nil, fmt.Errorf("wg: last handshakes: %w", err)
	}
	out := make(map[[KeySize]byte]time.Time, len(peers))
	for i := range peers {
		out[peers[i].PublicKey] = peers[i].LastHandshake
	}
	return out, nil
}

// Peers returns every peer as the device reports it, from one IpcGet that
// is reused for up to Config.StatsMaxAge unless peers were changed since.
func (d *Device) Peers(ctx context.Context) ([]PeerStatus, error) {
	return d.peerCopies(ctx, false)
}

// PeersNow is Peers from an IpcGet made now, not a cached one: for a
// decision that a handshake a moment ago must change (forgetting the
// endpoint of an idle peer).
func (d *Device) PeersNow(ctx context.Context) ([]PeerStatus, error) {
	return d.peerCopies(ctx, true)
}

// peerCopies returns a copy of the peer list the caller may modify.
func (d *Device) peerCopies(ctx context.Context, uncached bool) ([]PeerStatus, error) {
	peers, _, err := d.status(ctx, true, uncached)
	if err != nil {
		return nil, fmt.Errorf("wg: peers: %w", err)
	}
	out := make([]PeerStatus, len(peers))
	for i, p := range peers {
		out[i] = p
		out[i].AllowedIPs = slices.Clone(p.AllowedIPs)
	}
	return out, nil
}

// HandshakeAges counts peers by the age of their last handshake. Each peer
// is in exactly one bucket.
type HandshakeAges struct {
	Under2m      int // handshake less than 2 minutes ago (a live session)
	Under5m      int // 2 to 5 minutes ago
	Under1h      int // 5 minutes to 1 hour ago
	OlderOrNever int // longer ago, or never
}

// Stats are device totals for metrics.
type Stats struct {
	Peers            int
	RxBytes, TxBytes uint64
	HandshakeAges    HandshakeAges
}

// Stats returns totals over all peers, from the same cached IpcGet as Peers
// (at most one IpcGet per Config.StatsMaxAge, whatever the scrape rate).
func (d *Device) Stats(ctx context.Context) (Stats, error) {
	peers, _, err := d.status(ctx, false, false)
	if err != nil {
		return Stats{}, fmt.Errorf("wg: stats: %w", err)
	}
	return summarize(peers, time.Now()), nil
}

func summarize(peers []PeerStatus, now time.Time) Stats {
	s := Stats{Peers: len(peers)}
	for i := range peers {
		p := &peers[i]
		s.RxBytes += p.RxBytes
		s.TxBytes += p.TxBytes
		age := now.Sub(p.LastHandshake)
		switch {
		case p.LastHandshake.IsZero():
			s.HandshakeAges.OlderOrNever++
		case age < 2*time.Minute:
			s.HandshakeAges.Under2m++
		case age < 5*time.Minute:
			s.HandshakeAges.Under5m++
		case age < time.Hour:
			s.HandshakeAges.Under1h++
		default:
			s.HandshakeAges.OlderOrNever++
		}
	}
	return s
}
