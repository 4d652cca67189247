package wg

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// entry is one peer of the desired state.
type entry struct {
	peer Peer
	// req is the queued request that installed this entry; nil once applied.
	// Guarded by Device.mu.
	req *request
}

// checkPeer validates p on its own (not against other peers) and returns a
// copy whose slices the caller cannot change under us.
func (d *Device) checkPeer(p Peer) (Peer, error) {
	if err := p.PublicKey.Validate(); err != nil {
		return Peer{}, fmt.Errorf("public_key: %w", err)
	}
	if p.PublicKey == d.pub {
		return Peer{}, fmt.Errorf("public_key %s: %w", p.PublicKey, ErrOwnKey)
	}
	for i, pfx := range p.AllowedIPs {
		if !pfx.IsValid() {
			return Peer{}, fmt.Errorf("allowed_ips[%d]: %w: not a valid prefix", i, ErrInvalidPeer)
		}
		if pfx.Addr().Zone() != "" {
			return Peer{}, fmt.Errorf("allowed_ips[%d] %s: %w: has an IPv6 zone", i, pfx, ErrInvalidPeer)
		}
		if pfx.Addr().Is4In6() {
			return Peer{}, fmt.Errorf("allowed_ips[%d] %s: %w: IPv4-mapped IPv6 prefix; use the IPv4 form", i, pfx, ErrInvalidPeer)
		}
		if m := pfx.Masked(); m != pfx {
			return Peer{}, fmt.Errorf("allowed_ips[%d] %s: %w: host bits set (the prefix is %s)", i, pfx, ErrInvalidPeer, m)
		}
		for j := range i {
			if p.AllowedIPs[j].Overlaps(pfx) {
				return Peer{}, fmt.Errorf("allowed_ips[%d] %s: %w: overlaps allowed_ips[%d] %s of the same peer",
					i, pfx, ErrInvalidPeer, j, p.AllowedIPs[j])
			}
		}
	}
	if p.Endpoint.Addr().IsValid() || p.Endpoint.Port() != 0 {
		// The endpoint is personal data: never echo it in an error.
		switch a := p.Endpoint.Addr(); {
		case !a.IsValid():
			return Peer{}, fmt.Errorf("endpoint: %w: port without an address", ErrInvalidPeer)
		case a.IsUnspecified() || a.IsMulticast():
			return Peer{}, fmt.Errorf("endpoint: %w: unspecified or multicast address", ErrInvalidPeer)
		case a.Zone() != "":
			return Peer{}, fmt.Errorf("endpoint: %w: has an IPv6 zone", ErrInvalidPeer)
		case p.Endpoint.Port() == 0:
			return Peer{}, fmt.Errorf("endpoint: %w: port 0", ErrInvalidPeer)
		}
	}
	if ka := p.PersistentKeepalive; ka < 0 || ka > maxKeepalive || ka%time.Second != 0 {
		return Peer{}, fmt.Errorf("persistent_keepalive %v: %w: must be whole seconds from 0 to %v", ka, ErrInvalidPeer, maxKeepalive)
	}
	p.AllowedIPs = slices.Clone(p.AllowedIPs)
	return p, nil
}

// samePeer reports whether a and b configure the device identically
// (allowed IPs compared as sets).
func samePeer(a, b *Peer) bool {
	return a.PublicKey == b.PublicKey && a.Endpoint == b.Endpoint &&
		a.PersistentKeepalive == b.PersistentKeepalive && samePrefixes(a.AllowedIPs, b.AllowedIPs)
}

// samePrefixes reports whether a and b hold the same prefixes, in any order.
// Neither holds duplicates (checkPeer refuses overlaps within a peer).
func samePrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for _, p := range a {
		if !slices.Contains(b, p) {
			return false
		}
	}
	return true
}

// checkFree returns ErrAllowedIPInUse if an allowed IP of p overlaps one
// held by a peer that skip does not exclude. Called with d.mu held.
func (d *Device) checkFree(p *Peer, skip func(Key) bool) error {
	for i, pfx := range p.AllowedIPs {
		if q, owner, ok := d.index.overlap(pfx, skip); ok {
			return fmt.Errorf("allowed_ips[%d] %s: %w: overlaps %s of peer %s", i, pfx, ErrAllowedIPInUse, q, owner)
		}
	}
	return nil
}

// install makes p part of the desired state, replacing any entry with the
// same key, and returns the new entry and the one it replaced. Called with
// d.mu held, after checkFree.
func (d *Device) install(p Peer, r *request) (ent, prev *entry) {
	prev = d.peers[p.PublicKey]
	if prev != nil {
		for _, pfx := range prev.peer.AllowedIPs {
			d.index.remove(pfx, p.PublicKey)
		}
	}
	ent = &entry{peer: p, req: r}
	d.peers[p.PublicKey] = ent
	for _, pfx := range p.AllowedIPs {
		d.index.add(pfx, p.PublicKey)
	}
	return ent, prev
}

// uninstall removes k from the desired state. Called with d.mu held.
func (d *Device) uninstall(k Key) *entry {
	prev := d.peers[k]
	if prev == nil {
		return nil
	}
	for _, pfx := range prev.peer.AllowedIPs {
		d.index.remove(pfx, k)
	}
	delete(d.peers, k)
	return prev
}

// AddPeer adds a peer, or updates the peer with the same public key. It
// validates p first (key, not the device's own key, allowed IPs valid,
// masked and not overlapping another peer's), then queues the change; changes
// queued by concurrent callers within Config.BatchWindow are applied with one
// IpcSet. AddPeer returns when its batch is applied. If ctx ends first it
// returns ctx's error and the change stays queued (HasPeer reports it).
// Adding a peer identical to the current one changes nothing.
func (d *Device) AddPeer(ctx context.Context, p Peer) error {
	p, err := d.checkPeer(p)
	if err != nil {
		return fmt.Errorf("wg: add peer: %w", err)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("wg: add peer %s: %w", p.PublicKey, ErrClosed)
	}
	if cur := d.peers[p.PublicKey]; cur != nil && samePeer(&cur.peer, &p) {
		pending := cur.req
		d.mu.Unlock()
		if pending == nil {
			return nil
		}
		return d.wait(ctx, pending, "add peer "+p.PublicKey.String())
	}
	self := p.PublicKey
	if err := d.checkFree(&p, func(k Key) bool { return k == self }); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("wg: add peer %s: %w", p.PublicKey, err)
	}
	r := newRequest(false, 1)
	ent, prev := d.install(p, r)
	r.items = append(r.items, item{add: true, peer: p, ent: ent, prev: prev})
	d.enqueueLocked(r)
	d.mu.Unlock()
	return d.wait(ctx, r, "add peer "+p.PublicKey.String())
}

// checkSet validates a set of peers on their own and against each other:
// no key twice, no allowed IP overlapping between them.
func (d *Device) checkSet(peers []Peer) ([]Peer, map[Key]int, error) {
	out := make([]Peer, len(peers))
	pos := make(map[Key]int, len(peers))
	set := newPrefixIndex()
	for i, p := range peers {
		p, err := d.checkPeer(p)
		if err != nil {
			return nil, nil, fmt.Errorf("peers[%d]: %w", i, err)
		}
		if j, dup := pos[p.PublicKey]; dup {
			return nil, nil, fmt.Errorf("peers[%d]: public_key %s: %w: same key as peers[%d]", i, p.PublicKey, ErrInvalidPeer, j)
		}
		for k, pfx := range p.AllowedIPs {
			if q, owner, ok := set.overlap(pfx, func(Key) bool { return false }); ok {
				return nil, nil, fmt.Errorf("peers[%d]: allowed_ips[%d] %s: %w: overlaps %s of peers[%d]",
					i, k, pfx, ErrAllowedIPInUse, q, pos[owner])
			}
		}
		for _, pfx := range p.AllowedIPs {
			set.add(pfx, p.PublicKey)
		}
		pos[p.PublicKey] = i
		out[i] = p
	}
	return out, pos, nil
}

// AddPeers adds or updates many peers with one IpcSet (a bulk load, such as
// every known device on restart). All peers are validated first, against
// each other and the current peers; if any is invalid nothing is changed.
func (d *Device) AddPeers(ctx context.Context, peers []Peer) error {
	if len(peers) == 0 {
		return nil
	}
	peers, pos, err := d.checkSet(peers)
	if err != nil {
		return fmt.Errorf("wg: add peers: %w", err)
	}
	inSet := func(k Key) bool { _, ok := pos[k]; return ok }
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("wg: add peers: %w", ErrClosed)
	}
	for i := range peers {
		if err := d.checkFree(&peers[i], inSet); err != nil {
			d.mu.Unlock()
			return fmt.Errorf("wg: add peers: peers[%d]: %w", i, err)
		}
	}
	// The peers being updated give up their old allowed IPs first, so that
	// IPs moving between peers of the same set are not reported as taken.
	r := newRequest(false, len(peers))
	prevs := make([]*entry, len(peers))
	for i := range peers {
		prevs[i] = d.uninstall(peers[i].PublicKey)
	}
	for i, p := range peers {
		ent, _ := d.install(p, r)
		r.items = append(r.items, item{add: true, peer: p, ent: ent, prev: prevs[i]})
	}
	d.enqueueLocked(r)
	d.mu.Unlock()
	return d.wait(ctx, r, fmt.Sprintf("add %d peers", len(peers)))
}

// RemovePeer removes the peer with public key k. Removing an unknown key
// is not an error.
func (d *Device) RemovePeer(ctx context.Context, k Key) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("wg: remove peer %s: %w", k, ErrClosed)
	}
	prev := d.uninstall(k)
	if prev == nil {
		d.mu.Unlock()
		return nil
	}
	r := newRequest(false, 1)
	r.items = append(r.items, item{peer: Peer{PublicKey: k}, prev: prev})
	d.enqueueLocked(r)
	d.mu.Unlock()
	return d.wait(ctx, r, "remove peer "+k.String())
}

// RemovePeers removes the peers with the given public keys with one IpcSet
// (a gateway dropping the peers of many devices that moved away). Unknown
// keys are skipped.
func (d *Device) RemovePeers(ctx context.Context, keys []Key) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("wg: remove peers: %w", ErrClosed)
	}
	r := newRequest(false, len(keys))
	for _, k := range keys {
		if prev := d.uninstall(k); prev != nil {
			r.items = append(r.items, item{peer: Peer{PublicKey: k}, prev: prev})
		}
	}
	if len(r.items) == 0 {
		d.mu.Unlock()
		return nil
	}
	d.enqueueLocked(r)
	d.mu.Unlock()
	return d.wait(ctx, r, fmt.Sprintf("remove %d peers", len(r.items)))
}

// Reconcile makes the device's peer set exactly peers: peers not listed are
// removed, listed ones added or updated. The set is validated first (nothing
// changes if it is invalid). It reads the device once and applies only the
// difference, so unchanged peers keep their sessions; if that fails it falls
// back to replace_peers=true with the whole set.
func (d *Device) Reconcile(ctx context.Context, peers []Peer) error {
	peers, _, err := d.checkSet(peers)
	if err != nil {
		return fmt.Errorf("wg: reconcile: %w", err)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("wg: reconcile: %w", ErrClosed)
	}
	r := newRequest(true, len(peers))
	d.peers = make(map[Key]*entry, len(peers))
	d.index = newPrefixIndex()
	for _, p := range peers {
		ent, _ := d.install(p, r)
		r.items = append(r.items, item{add: true, peer: p, ent: ent})
	}
	d.enqueueLocked(r)
	d.mu.Unlock()
	return d.wait(ctx, r, fmt.Sprintf("reconcile %d peers", len(peers)))
}

// HasPeer reports whether k is in the peer set (applied, or queued by a call
// that has not returned yet).
func (d *Device) HasPeer(k Key) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.peers[k]
	return ok
}

// wait waits for r to be applied or ctx to end.
func (d *Device) wait(ctx context.Context, r *request, what string) error {
	select {
	case <-r.done:
		if r.err != nil {
			return fmt.Errorf("wg: %s: %w", what, r.err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wg: %s: %w (the change stays queued)", what, ctx.Err())
	}
}
