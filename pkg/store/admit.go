package store

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Admissions are group-committed: Admit queues its admission for one
// goroutine owned by the store (admitLoop), which takes whatever is queued
// when the writer is free (at most maxAdmitBatch, with no added wait) and
// runs it in one write transaction, each admission inside its own
// SAVEPOINT. An admission that fails rolls back to its savepoint, so it
// writes nothing and gets its own error, while the others in the batch
// commit. In a boot storm the commit (WAL frames, locks) is paid once per
// batch instead of once per login.

// maxAdmitBatch bounds how many admissions share one write transaction, and
// so how long a batch holds the writer.
const maxAdmitBatch = 128

// errClosed is returned by Admit once Close has been called.
var errClosed = errors.New("store closed")

// States of an admitReq: the batcher moves it from pending to running right
// before its savepoint; a caller whose context ends first moves it to
// cancelled, and the batcher then skips it.
const (
	reqPending int32 = iota
	reqRunning
	reqCancelled
)

// admitReq is one queued Admit call.
type admitReq struct {
	ctx   context.Context
	a     Admission
	state atomic.Int32
	done  chan struct{} // closed once d and err are set
	d     Device
	err   error
}

func (r *admitReq) finish(d Device, err error) {
	r.d, r.err = d, err
	close(r.done)
}

// admitQueue is the queue of pending admissions and the batcher's state.
type admitQueue struct {
	mu     sync.Mutex
	q      []*admitReq
	closed bool
	wake   chan struct{} // capacity 1: "the queue may have grown or closed"
	exited chan struct{} // closed when admitLoop returns
	// onBatch, when set (tests), is called after each batch's transaction
	// with the number of admissions that ran in it, before any of their
	// callers is answered: once an Admit has returned, the hook call of its
	// batch is over, and a test may swap the hook without a data race.
	onBatch func(ran int)
}

func newAdmitQueue() *admitQueue {
	return &admitQueue{wake: make(chan struct{}, 1), exited: make(chan struct{})}
}

func (q *admitQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// push queues r; false once the queue is closed.
func (q *admitQueue) push(r *admitReq) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.q = append(q.q, r)
	q.mu.Unlock()
	q.signal()
	return true
}

// take removes and returns up to n queued requests, and whether the queue
// is closed.
func (q *admitQueue) take(n int) ([]*admitReq, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n = min(n, len(q.q))
	if n == 0 {
		return nil, q.closed
	}
	batch := make([]*admitReq, n)
	copy(batch, q.q)
	rest := copy(q.q, q.q[n:])
	clear(q.q[rest:])
	q.q = q.q[:rest]
	return batch, q.closed
}

// close stops new admissions and waits until every queued one has been
// handled.
func (q *admitQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
	<-q.exited
}

// admitLoop runs the queued admissions batch after batch until the queue is
// closed and empty. The batch forms while the previous one holds the
// writer: the natural group commit.
func (s *SQLite) admitLoop() {
	defer close(s.aq.exited)
	for {
		batch, closed := s.aq.take(maxAdmitBatch)
		if len(batch) > 0 {
			s.admitBatch(batch)
			continue
		}
		if closed {
			return
		}
		<-s.aq.wake
		// Let the goroutines already runnable (callers on their way to
		// Admit) queue before the batch is taken: bigger batches for no
		// timed wait. With nothing else runnable this returns at once.
		runtime.Gosched()
	}
}

// Admit records one successful device login: pins the key, allocates the
// address offset once, sets the login day and the home gateway and replaces
// the device's tokens, all or nothing. Concurrent calls share one write transaction (see
// admitLoop); each one's result is committed, or nothing of it is written,
// when Admit returns. A caller whose ctx ends while its admission is still
// queued returns the context's error and nothing of it is written; once
// its admission has started, Admit waits for the rest of its batch (at most
// maxAdmitBatch admissions and one commit) and returns the admission's own
// outcome.
func (s *SQLite) Admit(ctx context.Context, a Admission) (d Device, err error) {
	if err := CheckAdmission(a); err != nil {
		return Device{}, fmt.Errorf("store: Admit: %w", err)
	}
	defer s.observe("Admit", time.Now(), &err)
	if err := ctx.Err(); err != nil {
		return Device{}, fmt.Errorf("store: Admit: %w", err)
	}
	r := &admitReq{ctx: ctx, a: a, done: make(chan struct{})}
	if !s.aq.push(r) {
		return Device{}, fmt.Errorf("store: Admit: %w", errClosed)
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqPending, reqCancelled) {
			return Device{}, fmt.Errorf("store: Admit: %w", ctx.Err())
		}
		<-r.done
	}
	return r.d, r.err
}

// admitBatch runs batch in one write transaction and hands every request
// its result.
func (s *SQLite) admitBatch(batch []*admitReq) {
	// failPending hands err to the requests not run because the
	// transaction failed. Those whose callers' contexts have ended are left
	// to their callers, who return the context's error.
	failPending := func(err error) {
		for _, r := range batch {
			if r.ctx.Err() == nil && r.state.CompareAndSwap(reqPending, reqRunning) {
				r.finish(Device{}, wrap("Admit", err))
			}
		}
	}
	live := 0
	for _, r := range batch {
		if r.state.Load() == reqPending {
			live++
		}
	}
	if live == 0 {
		return
	}
	// The batch serves many callers: no single caller's context may
	// interrupt it (an interrupted statement rolls back the whole
	// transaction). Callers leave on their own contexts instead.
	ctx := context.Background()
	sqlTx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		failPending(fmt.Errorf("begin batch transaction: %w", err))
		return
	}
	tx := &wtx{tx: sqlTx, cache: s.ws}
	defer tx.warm(ctx)

	type result struct {
		r       *admitReq
		d       Device
		changed bool
		err     error
	}
	results := make([]result, 0, len(batch))
	var (
		fatal error // the transaction itself failed: nothing commits
		abort bool  // the only admission failed: nothing to commit
	)
	for _, r := range batch {
		if r.ctx.Err() != nil || !r.state.CompareAndSwap(reqPending, reqRunning) {
			continue // its caller has left or is leaving: nothing written for it
		}
		if live == 1 {
			// Alone in its transaction: no savepoint needed, its failure
			// rolls back the transaction.
			d, changed, err := admitTx(ctx, tx, r.a)
			results = append(results, result{r: r, d: d, changed: changed, err: err})
			abort = err != nil
			break
		}
		d, changed, err, txErr := admitSavepoint(ctx, tx, r.a)
		if txErr != nil {
			fatal = txErr
			results = append(results, result{r: r, err: txErr})
			break
		}
		results = append(results, result{r: r, d: d, changed: changed, err: err})
	}
	if fatal == nil && !abort {
		fatal = sqlTx.Commit()
	} else {
		_ = sqlTx.Rollback()
	}
	if fatal == nil && !abort {
		var cs []Change
		for _, res := range results {
			if res.err == nil && res.changed {
				cs = append(cs, Change{Kind: ChangeDevice, DeviceID: res.d.ID, Gateway: res.d.Home})
			}
		}
		s.ch.Publish(cs...)
	}
	if s.aq.onBatch != nil {
		s.aq.onBatch(len(results))
	}
	for _, res := range results {
		switch {
		case res.err != nil:
			// Failed within its savepoint (its own error), or the
			// transaction failed at it: either way nothing of it is written.
			res.r.finish(Device{}, wrap("Admit", res.err))
		case fatal != nil:
			res.r.finish(Device{}, wrap("Admit", fmt.Errorf("device %d: batch transaction: %w", res.r.a.DeviceID, fatal)))
		default:
			res.r.finish(res.d, nil)
		}
	}
	if fatal != nil {
		failPending(fmt.Errorf("not run, batch transaction failed: %w", fatal))
	}
}

// admitSavepoint runs one admission inside a savepoint of tx: err is the
// admission's own failure (rolled back to the savepoint, nothing of it
// written); txErr means the transaction itself is no longer usable.
func admitSavepoint(ctx context.Context, tx *wtx, a Admission) (d Device, changed bool, err, txErr error) {
	if _, err := tx.ExecContext(ctx, `SAVEPOINT admit`); err != nil {
		return Device{}, false, nil, fmt.Errorf("savepoint: %w", err)
	}
	d, changed, err = admitTx(ctx, tx, a)
	if err != nil {
		if _, rerr := tx.ExecContext(ctx, `ROLLBACK TO admit`); rerr != nil {
			return Device{}, false, nil, fmt.Errorf("rollback to savepoint after %w: %w", err, rerr)
		}
	}
	if _, rerr := tx.ExecContext(ctx, `RELEASE admit`); rerr != nil {
		return Device{}, false, nil, fmt.Errorf("release savepoint: %w", rerr)
	}
	return d, changed, err, nil
}

// admitTx writes one admission in tx; changed reports whether the device's
// data-plane state (pinned key, address, home) changed, which is what
// emits a ChangeDevice (a repeated login only replaces its token and day).
func admitTx(ctx context.Context, tx *wtx, a Admission) (Device, bool, error) {
	d, err := deviceByID(ctx, tx, a.DeviceID)
	if err != nil {
		return Device{}, false, err
	}
	if d.Revoked {
		return Device{}, false, fmt.Errorf("device %d: %w", d.ID, ErrRevoked)
	}
	before := d
	owner := ownerID(d.ID)
	if !d.KeyPinned || d.Key != a.Key {
		if d.KeyPinned && !a.ReplaceKey {
			return Device{}, false, fmt.Errorf("device %d: %w", d.ID, ErrKeyPinned)
		}
		if d.KeyPinned {
			if _, err := tx.ExecContext(ctx, `DELETE FROM wg_keys WHERE key = ? AND owner_kind = 'device' AND owner_id = ?`, d.Key[:], owner); err != nil {
				return Device{}, false, err
			}
		}
		if err := claimKey(ctx, tx, a.Key, OwnerDevice, owner); err != nil {
			return Device{}, false, fmt.Errorf("device %d: %w", d.ID, err)
		}
		d.Key, d.KeyPinned = a.Key, true
	}
	if d.Offset == 0 {
		off, err := allocDeviceOffset(ctx, tx, a.First, a.Last)
		if err != nil {
			return Device{}, false, fmt.Errorf("device %d: %w", d.ID, err)
		}
		d.Offset = off
	}
	d.LastLoginDay, d.Home = a.Day, a.Gateway
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET pinned_key = ?, address_offset = ?, last_login_day = ?, home_gateway = ? WHERE id = ?`,
		d.Key[:], d.Offset, d.LastLoginDay, d.Home, d.ID); err != nil {
		return Device{}, false, err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM device_tokens WHERE device_id = ?`, d.ID); err != nil {
		return Device{}, false, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO device_tokens (hash, device_id, expires_at) VALUES (?, ?, ?)`, a.TokenHash[:], d.ID, nanos(a.TokenExpires)); err != nil {
		return Device{}, false, err
	}
	return d, AdmitChanged(before, d), nil
}
