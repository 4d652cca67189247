package throttle

import (
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// BackoffConfig tunes a Backoff.
type BackoffConfig struct {
	// Free attempts are allowed back to back; after them each attempt
	// waits Base, then twice as long as the last wait, up to Max.
	Free int
	Base time.Duration
	Max  time.Duration
	// Forget drops a key whose last attempt is older than this (default
	// 2×Max): it starts again with Free attempts.
	Forget time.Duration
	// Entries caps the table (least recently used keys go first).
	Entries int
}

// Backoff slows repeated attempts on one key with a growing delay. Every
// allowed attempt counts, as if it failed; a success calls Forget. Counting
// when the attempt starts (not when it fails) means concurrent attempts
// cannot slip past the limit together. It is safe for concurrent use.
type Backoff[K comparable] struct {
	cfg BackoffConfig
	mu  sync.Mutex
	lru *simplelru.LRU[K, *backoffEntry]
}

type backoffEntry struct {
	attempts int
	next     time.Time // no attempt before this
	last     time.Time
}

// NewBackoff makes a Backoff.
func NewBackoff[K comparable](cfg BackoffConfig) *Backoff[K] {
	if cfg.Base <= 0 {
		cfg.Base = time.Second
	}
	if cfg.Max < cfg.Base {
		cfg.Max = cfg.Base
	}
	if cfg.Forget <= 0 {
		cfg.Forget = 2 * cfg.Max
	}
	if cfg.Entries <= 0 {
		cfg.Entries = 1
	}
	l, _ := simplelru.NewLRU[K, *backoffEntry](cfg.Entries, nil)
	return &Backoff[K]{cfg: cfg, lru: l}
}

// Wait is how long k must wait at now before its next attempt (0: now).
func (b *Backoff[K]) Wait(k K, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.lru.Peek(k)
	if !ok || b.stale(e, now) || !now.Before(e.next) {
		return 0
	}
	return e.next.Sub(now)
}

// Take counts an attempt on k at now if it may happen, or returns how long
// to wait. A refused attempt does not count (nor lengthen the delay).
func (b *Backoff[K]) Take(k K, now time.Time) (time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.lru.Get(k)
	if !ok || b.stale(e, now) {
		e = &backoffEntry{}
		b.lru.Add(k, e)
	}
	if now.Before(e.next) {
		return e.next.Sub(now), false
	}
	e.attempts++
	e.last = now
	e.next = now.Add(b.delay(e.attempts))
	return 0, true
}

// Forget drops k (after a success).
func (b *Backoff[K]) Forget(k K) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lru.Remove(k)
}

// Len is the number of keys held.
func (b *Backoff[K]) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lru.Len()
}

func (b *Backoff[K]) stale(e *backoffEntry, now time.Time) bool {
	return now.Sub(e.last) > b.cfg.Forget
}

// delay is the wait after the n-th attempt: none between the free ones,
// then Base after the last free one, doubling up to Max.
func (b *Backoff[K]) delay(n int) time.Duration {
	over := n - b.cfg.Free + 1
	if over <= 0 {
		return 0
	}
	d := b.cfg.Base
	for i := 1; i < over && d < b.cfg.Max; i++ {
		d *= 2
	}
	return min(d, b.cfg.Max)
}
