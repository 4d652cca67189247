// Package connlog writes the minimal connection log: one row per login,
// refusal, logout and session open/close, holding only what pkg/privacy
// produces — minute-precision time, event, outcome, the subject's daily
// pseudonym and the source address truncated to /24 or /48. Never the
// virtual address: it never changes and would link the daily pseudonyms.
package connlog

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// Appender stores connection-log rows.
type Appender interface {
	AppendConnLog(ctx context.Context, entries []store.ConnLogEntry) error
}

// Pseudonymizer turns a blind index into the day's pseudonym.
type Pseudonymizer interface {
	Pseudonym(day time.Time, idx privacy.BlindIndex) (privacy.Pseudonym, error)
}

// Options tune the writer.
type Options struct {
	FlushInterval time.Duration // default 200ms
	FlushSize     int           // default 512 rows
	MaxBuffered   int           // default 100,000 rows; beyond it rows are counted as dropped
	Logger        *slog.Logger
	OnDrop        func(n int)
}

// Recorder buffers events and writes them in batches, so a login never waits
// on the database for its log row.
type Recorder struct {
	app  Appender
	keys Pseudonymizer
	opt  Options

	mu      sync.Mutex
	buf     []store.ConnLogEntry
	kick    chan struct{}
	done    chan struct{}
	stopped bool
}

// New makes a Recorder; call Run to write and Close to flush.
func New(app Appender, keys Pseudonymizer, opt Options) *Recorder {
	if opt.FlushInterval <= 0 {
		opt.FlushInterval = 200 * time.Millisecond
	}
	if opt.FlushSize <= 0 {
		opt.FlushSize = 512
	}
	if opt.MaxBuffered <= 0 {
		opt.MaxBuffered = 100_000
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	return &Recorder{app: app, keys: keys, opt: opt, kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// Entry turns an event into the row the policy allows.
func Entry(keys Pseudonymizer, e gateway.ConnEvent) (store.ConnLogEntry, error) {
	row := store.ConnLogEntry{
		Time:    e.At.UTC().Truncate(time.Minute),
		Event:   e.Event,
		Outcome: string(e.Outcome),
	}
	if p := e.Source.Truncated(); p.IsValid() {
		row.SourcePrefix = p.String()
	}
	if e.Index != (privacy.BlindIndex{}) {
		ps, err := keys.Pseudonym(e.At, e.Index)
		if err != nil {
			return store.ConnLogEntry{}, err
		}
		row.Pseudonym = ps
	}
	return row, nil
}

// Record queues an event; it never blocks on the database.
func (r *Recorder) Record(e gateway.ConnEvent) {
	row, err := Entry(r.keys, e)
	if err != nil {
		r.opt.Logger.Warn("connection log: no pseudonym for event", "event", e.Event, "err", err)
		return
	}
	r.mu.Lock()
	if r.stopped || len(r.buf) >= r.opt.MaxBuffered {
		r.mu.Unlock()
		if r.opt.OnDrop != nil {
			r.opt.OnDrop(1)
		}
		return
	}
	r.buf = append(r.buf, row)
	full := len(r.buf) >= r.opt.FlushSize
	r.mu.Unlock()
	if full {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// Run writes batches until ctx is done, then flushes what is left.
func (r *Recorder) Run(ctx context.Context) error {
	defer close(r.done)
	t := time.NewTicker(r.opt.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.stopped = true
			r.mu.Unlock()
			// The daemon is stopping: flush with a fresh deadline so nothing
			// queued is lost.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			return r.Flush(fctx)
		case <-t.C:
		case <-r.kick:
		}
		if err := r.Flush(ctx); err != nil && !errors.Is(err, context.Canceled) {
			r.opt.Logger.Error("connection log: write failed; will retry", "err", err)
		}
	}
}

// Flush writes everything buffered now. On error the rows stay buffered.
func (r *Recorder) Flush(ctx context.Context) error {
	r.mu.Lock()
	rows := r.buf
	r.buf = nil
	r.mu.Unlock()
	if len(rows) == 0 {
		return nil
	}
	if err := r.app.AppendConnLog(ctx, rows); err != nil {
		r.mu.Lock()
		r.buf = append(rows, r.buf...)
		r.mu.Unlock()
		return err
	}
	return nil
}

// Done is closed when Run has returned.
func (r *Recorder) Done() <-chan struct{} { return r.done }
