package store

import (
	"context"
	"fmt"
	"sync"
)

// ChangeKind says what a Change is about.
type ChangeKind string

// Change kinds.
const (
	ChangeDevice  ChangeKind = "device"  // admitted, home moved, revoked, key reset, erased (DeviceID)
	ChangeSession ChangeKind = "session" // opened or closed (SessionID, DeviceID)
	ChangeResync  ChangeKind = "resync"  // re-read everything
)

// Change is one change of the registry (Store.Changes). It carries ids
// only, never personal data.
type Change struct {
	Kind      ChangeKind
	DeviceID  int64
	SessionID string
	Gateway   string // for ChangeDevice: the device's home after the change, when known
}

// ChangeBuffer is how far a consumer of Changes may fall behind: beyond
// this many undelivered changes they are dropped and replaced by one
// ChangeResync. A write that would emit more than this many changes at once
// emits one ChangeResync instead.
const ChangeBuffer = 256

// Broker fans changes out to subscribers without ever blocking the
// publisher: each subscriber has a bounded queue (ChangeBuffer) and its own
// goroutine feeding its channel; a subscriber whose queue overflows loses
// its queue and gets one ChangeResync instead.
type Broker struct {
	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	closed bool
	quit   chan struct{}
	wg     sync.WaitGroup
}

type subscriber struct {
	mu     sync.Mutex
	q      []Change
	resync bool          // the queue overflowed (or a resync was published): send one ChangeResync next
	wake   chan struct{} // capacity 1
	out    chan Change
}

// NewBroker makes an empty broker.
func NewBroker() *Broker {
	return &Broker{subs: map[*subscriber]struct{}{}, quit: make(chan struct{})}
}

// Subscribe returns a channel of every change published from now on, closed
// when ctx ends or the broker is closed.
func (b *Broker) Subscribe(ctx context.Context) (<-chan Change, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := &subscriber{wake: make(chan struct{}, 1), out: make(chan Change)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("changes: %w", errClosed)
	}
	b.subs[s] = struct{}{}
	b.wg.Add(1)
	go b.feed(ctx, s)
	return s.out, nil
}

// feed moves s's queue to its channel until ctx ends or the broker closes.
func (b *Broker) feed(ctx context.Context, s *subscriber) {
	defer b.wg.Done()
	defer close(s.out)
	defer func() {
		b.mu.Lock()
		delete(b.subs, s)
		b.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.quit:
			return
		case <-s.wake:
		}
		for {
			s.mu.Lock()
			batch := s.q
			s.q = nil
			if s.resync {
				s.resync = false
				batch = append(batch[:0], Change{Kind: ChangeResync})
			}
			s.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for _, c := range batch {
				select {
				case s.out <- c:
				case <-ctx.Done():
					return
				case <-b.quit:
					return
				}
			}
		}
	}
}

// Publish hands cs to every subscriber, in order, without waiting for any
// of them. More than ChangeBuffer changes at once, or any ChangeResync among
// them, are published as one ChangeResync.
func (b *Broker) Publish(cs ...Change) {
	if len(cs) == 0 {
		return
	}
	resync := len(cs) > ChangeBuffer
	for _, c := range cs {
		resync = resync || c.Kind == ChangeResync
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		s.mu.Lock()
		switch {
		case s.resync:
			// A ChangeResync is pending: it covers these too.
		case resync || len(s.q)+len(cs) > ChangeBuffer:
			s.q, s.resync = nil, true
		default:
			s.q = append(s.q, cs...)
		}
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Close ends every subscription (their channels are closed) and refuses
// new ones; it waits for the subscribers' goroutines.
func (b *Broker) Close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.quit)
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// AdmitChanged reports whether an admission changed what the data plane
// holds of a device (its pinned key, address or home), the admissions
// that emit a ChangeDevice: a repeated login only replaces its token and
// login day.
func AdmitChanged(before, after Device) bool {
	return before.KeyPinned != after.KeyPinned || before.Key != after.Key || before.Offset != after.Offset || before.Home != after.Home
}
