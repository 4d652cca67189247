package throttle

import (
	"math"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// Buckets is one token bucket per key (a source prefix, a device) in a table
// of at most max entries; the least recently used bucket is dropped when the
// table is full (a dropped bucket starts full again). It is safe for
// concurrent use.
type Buckets[K comparable] struct {
	r   Rate
	mu  sync.Mutex
	lru *simplelru.LRU[K, *rate.Limiter]
}

// NewBuckets makes a table of buckets of rate r holding at most max keys.
func NewBuckets[K comparable](r Rate, max int) *Buckets[K] {
	if max <= 0 {
		max = 1
	}
	l, _ := simplelru.NewLRU[K, *rate.Limiter](max, nil) // fails only for size <= 0
	return &Buckets[K]{r: r, lru: l}
}

// Wait is how long k must wait for a token at now (0: one is there). It
// takes nothing.
func (b *Buckets[K]) Wait(k K, now time.Time) time.Duration {
	if b.r.Unlimited() {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.lru.Peek(k)
	if !ok {
		return 0
	}
	return waitFor(l, b.r, now)
}

// Take takes a token for k at now, or returns how long to wait for one.
func (b *Buckets[K]) Take(k K, now time.Time) (time.Duration, bool) {
	if b.r.Unlimited() {
		return 0, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.lru.Get(k)
	if !ok {
		l = rate.NewLimiter(rate.Limit(b.r.PerSecond), b.r.Burst)
		b.lru.Add(k, l)
	}
	if l.AllowN(now, 1) {
		return 0, true
	}
	return waitFor(l, b.r, now), false
}

// Len is the number of keys held.
func (b *Buckets[K]) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lru.Len()
}

func waitFor(l *rate.Limiter, r Rate, now time.Time) time.Duration {
	t := l.TokensAt(now)
	if t >= 1 {
		return 0
	}
	return time.Duration(math.Ceil((1 - t) / r.PerSecond * float64(time.Second)))
}

// Global is a single token bucket (no key).
type Global struct {
	r Rate
	l *rate.Limiter
}

// NewGlobal makes one bucket of rate r.
func NewGlobal(r Rate) *Global {
	return &Global{r: r, l: rate.NewLimiter(rate.Limit(r.PerSecond), max(r.Burst, 1))}
}

// Wait is how long to wait for a token at now (0: one is there).
func (g *Global) Wait(now time.Time) time.Duration {
	if g.r.Unlimited() {
		return 0
	}
	return waitFor(g.l, g.r, now)
}

// Take takes a token at now, or returns how long to wait for one.
func (g *Global) Take(now time.Time) (time.Duration, bool) {
	if g.r.Unlimited() {
		return 0, true
	}
	if g.l.AllowN(now, 1) {
		return 0, true
	}
	return waitFor(g.l, g.r, now), false
}
