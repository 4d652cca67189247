package throttle

import (
	"context"
	"errors"
)

// ErrBusy is returned when a Pool's queue is full.
var ErrBusy = errors.New("throttle: too many expensive checks waiting")

// Pool runs expensive work (argon2id checks) on a fixed number of workers
// with a bounded queue: beyond Workers+Queue callers, Do refuses at once, so
// the memory and CPU such work can take is fixed whatever callers send.
type Pool struct {
	slots  chan struct{}
	queued chan struct{}
}

// NewPool makes a pool of workers running at once and queue waiting.
func NewPool(workers, queue int) *Pool {
	return &Pool{slots: make(chan struct{}, max(workers, 1)), queued: make(chan struct{}, max(queue, 0))}
}

// Do runs fn on a worker: at once when one is free, after waiting in the
// queue otherwise. A full queue is ErrBusy; a context that ends while
// waiting returns its error.
func (p *Pool) Do(ctx context.Context, fn func()) error {
	select {
	case p.slots <- struct{}{}:
	default:
		select {
		case p.queued <- struct{}{}:
		default:
			return ErrBusy
		}
		select {
		case p.slots <- struct{}{}:
			<-p.queued
		case <-ctx.Done():
			<-p.queued
			return ctx.Err()
		}
	}
	defer func() { <-p.slots }()
	fn()
	return nil
}

// Running and Waiting are the pool's current load (for metrics).
func (p *Pool) Running() int { return len(p.slots) }

// Waiting is the number of callers in the queue.
func (p *Pool) Waiting() int { return len(p.queued) }
