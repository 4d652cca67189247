package wg

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// item is one peer change of a request.
type item struct {
	add  bool   // add/update peer; otherwise remove peer.PublicKey
	peer Peer   // the peer (for a removal, only its key)
	ent  *entry // add: the desired-state entry it installed
	prev *entry // the entry it replaced or removed (nil if none)
	err  error  // set by a failed per-peer retry
}

// request is one caller's change: AddPeer and RemovePeer make one item,
// AddPeers and Reconcile many. A request is never split across IpcSets.
type request struct {
	reconcile bool // items are the whole desired set
	items     []item
	done      chan struct{}
	err       error // valid after done is closed
}

func newRequest(reconcile bool, n int) *request {
	return &request{reconcile: reconcile, items: make([]item, 0, n), done: make(chan struct{})}
}

// enqueueLocked queues r for the batcher. Called with d.mu held, in the same
// critical section that changed the desired state, so the queue applies
// changes in the order the desired state saw them.
func (d *Device) enqueueLocked(r *request) {
	d.queue = append(d.queue, r)
	d.queued += len(r.items)
	select {
	case d.wake <- struct{}{}:
	default:
	}
	if d.queued >= d.cfg.MaxBatch || r.reconcile {
		select {
		case d.full <- struct{}{}:
		default:
		}
	}
}

// run is the batcher: it waits for a first change, lets others join it for
// BatchWindow (or until MaxBatch changes are queued), and applies them.
func (d *Device) run() {
	defer close(d.stopped)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-d.stop:
			d.failQueued()
			return
		case <-d.wake:
		}
		d.mu.Lock()
		empty := len(d.queue) == 0
		d.mu.Unlock()
		if empty {
			continue
		}
		timer.Reset(d.cfg.BatchWindow)
		select {
		case <-d.stop:
			timer.Stop()
			d.failQueued()
			return
		case <-d.full:
		case <-timer.C:
		}
		timer.Stop()
		for {
			batch := d.take()
			if len(batch) == 0 {
				break
			}
			d.apply(batch)
			select {
			case <-d.stop:
				d.failQueued()
				return
			default:
			}
		}
	}
}

// take removes the next batch from the queue: a reconcile alone, or whole
// requests until MaxBatch items (at least one request).
func (d *Device) take() []*request {
	d.mu.Lock()
	defer d.mu.Unlock()
	var batch []*request
	n := 0
	for len(d.queue) > 0 {
		r := d.queue[0]
		if len(batch) > 0 && (r.reconcile || n+len(r.items) > d.cfg.MaxBatch) {
			break
		}
		d.queue[0] = nil
		d.queue = d.queue[1:]
		batch = append(batch, r)
		n += len(r.items)
		if r.reconcile {
			break
		}
	}
	d.queued -= n
	if len(d.queue) == 0 {
		d.queue = nil
	}
	if d.queued < d.cfg.MaxBatch {
		select { // drop a stale "full" signal
		case <-d.full:
		default:
		}
	}
	return batch
}

// failQueued fails every queued request with ErrClosed.
func (d *Device) failQueued() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.queue {
		r.err = ErrClosed
		close(r.done)
	}
	d.queue, d.queued = nil, 0
}

func writeItem(b *strings.Builder, it *item) {
	if it.add {
		writePeer(b, &it.peer)
	} else {
		writeRemove(b, it.peer.PublicKey)
	}
}

// apply applies a batch with one IpcSet. If that fails, it retries each
// change alone so one bad peer cannot fail the others, rolls back the
// changes that still fail, and reconciles the device with the desired state
// (a failed IpcSet may have applied part of its lines).
func (d *Device) apply(batch []*request) {
	if batch[0].reconcile {
		d.applyReconcile(batch[0])
		return
	}
	var b strings.Builder
	n := 0
	for _, r := range batch {
		for i := range r.items {
			writeItem(&b, &r.items[i])
			n++
		}
	}
	start := time.Now()
	err := d.set(b.String())
	if err == nil {
		d.log.Debug("applied peer batch", "changes", n, "requests", len(batch), "took", time.Since(start))
		d.finish(batch)
		return
	}
	d.log.Warn("batched peer update failed; retrying peer by peer", "changes", n, "err", err)
	failed := 0
	for _, r := range batch {
		for i := range r.items {
			it := &r.items[i]
			b.Reset()
			writeItem(&b, it)
			if it.err = d.set(b.String()); it.err != nil {
				failed++
			}
		}
	}
	d.mu.Lock()
	for _, r := range batch {
		for i := range r.items {
			if it := &r.items[i]; it.err != nil {
				d.rollbackLocked(it)
			}
		}
	}
	d.mu.Unlock()
	if err := d.repair(); err != nil {
		d.log.Error("reconciling the device with the desired peer set failed", "err", err)
	}
	d.log.Warn("peer-by-peer retry done", "changes", n, "failed", failed)
	d.finish(batch)
}

// rollbackLocked undoes a failed add in the desired state: the peer goes
// back to its previous configuration if its allowed IPs are still free,
// otherwise it is removed. A failed removal stays removed (repair retries
// it on the device). Called with d.mu held.
func (d *Device) rollbackLocked(it *item) {
	if !it.add {
		return
	}
	k := it.peer.PublicKey
	if d.peers[k] != it.ent {
		return // changed again since; that change decides
	}
	d.uninstall(k)
	if it.prev == nil {
		return
	}
	if d.checkFree(&it.prev.peer, func(o Key) bool { return o == k }) == nil {
		d.install(it.prev.peer, nil)
	}
}

// finish marks the batch's entries applied and wakes its callers.
func (d *Device) finish(batch []*request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range batch {
		var errs []error
		if r.err != nil {
			errs = append(errs, r.err)
		}
		for i := range r.items {
			it := &r.items[i]
			if it.err != nil {
				errs = append(errs, fmt.Errorf("peer %s: %w", it.peer.PublicKey, it.err))
				continue
			}
			if it.add && it.ent.req == r {
				it.ent.req = nil
			}
		}
		r.err = errors.Join(errs...)
		close(r.done)
	}
	d.gen.Add(1)
}

// applyReconcile makes the device's peers exactly the request's set.
func (d *Device) applyReconcile(r *request) {
	want := make([]Peer, len(r.items))
	for i := range r.items {
		want[i] = r.items[i].peer
	}
	if err := d.syncPeers(want); err != nil {
		d.log.Warn("reconcile by difference failed; replacing all peers", "peers", len(want), "err", err)
		if err2 := d.replacePeers(want); err2 != nil {
			r.err = errors.Join(err, err2)
		}
	}
	d.finish([]*request{r})
}

// repair reconciles the device with the current desired state.
func (d *Device) repair() error {
	d.mu.Lock()
	want := make([]Peer, 0, len(d.peers))
	for _, e := range d.peers {
		want = append(want, e.peer)
	}
	d.mu.Unlock()
	if err := d.syncPeers(want); err != nil {
		if err2 := d.replacePeers(want); err2 != nil {
			return errors.Join(err, err2)
		}
	}
	return nil
}

// syncPeers reads the device once and applies, with one IpcSet, only what
// differs from want: extra peers removed, missing or different ones set.
// Peers already right keep their sessions. A configured endpoint is not
// compared: the endpoint a peer roamed to is kept.
func (d *Device) syncPeers(want []Peer) error {
	st, err := d.get()
	if err != nil {
		return err
	}
	have := make(map[Key]*PeerStatus, len(st.peers))
	for i := range st.peers {
		have[st.peers[i].PublicKey] = &st.peers[i]
	}
	wanted := make(map[Key]struct{}, len(want))
	for i := range want {
		wanted[want[i].PublicKey] = struct{}{}
	}
	var b strings.Builder
	for _, h := range st.peers {
		if _, ok := wanted[h.PublicKey]; !ok {
			writeRemove(&b, h.PublicKey)
		}
	}
	for i := range want {
		p := &want[i]
		if h, ok := have[p.PublicKey]; ok && h.PersistentKeepalive == p.PersistentKeepalive &&
			samePrefixes(h.AllowedIPs, p.AllowedIPs) {
			continue
		}
		writePeer(&b, p)
	}
	if b.Len() == 0 {
		return nil
	}
	return d.set(b.String())
}

// replacePeers sets the device's peers to want with replace_peers=true.
// Every existing session is dropped: it is the last resort.
func (d *Device) replacePeers(want []Peer) error {
	var b strings.Builder
	b.WriteString("replace_peers=true\n")
	for i := range want {
		writePeer(&b, &want[i])
	}
	return d.set(b.String())
}
