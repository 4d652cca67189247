package throttle

import (
	"net/netip"
	"sync"
	"time"
)

// GuardConfig tunes a Guard.
type GuardConfig struct {
	// Source is each source prefix's bucket; Sources caps how many prefixes
	// are tracked.
	Source  Rate
	Sources int
	// Global is one bucket shared by every unproven attempt.
	Global Rate
	// Pair slows attempts on one (subject, source prefix).
	Pair BackoffConfig
	// Subject slows unproven attempts on one subject from all sources
	// together (guessing spread over many prefixes). Free <= 0 turns it off.
	Subject BackoffConfig
	// Now is the clock (time.Now when nil).
	Now Clock
}

// Guard decides whether a login attempt on a subject (a serial number's or
// an account's blind index) from a source address may go ahead.
//
// An attempt is proven when it carries a secret only the subject holds
// beyond the credential being checked (a device's pinned WireGuard key): a
// proven attempt passes the source, global and subject limits, so nothing
// strangers do elsewhere slows it; only its own (subject, source prefix)
// pair can. An unproven attempt must pass the pair, the subject-wide
// backoff, its source's bucket and the global bucket, in that order; a
// refusal takes nothing from the later ones.
type Guard struct {
	cfg      GuardConfig
	mu       sync.Mutex
	sources  *Buckets[netip.Prefix]
	global   *Global
	pairs    *Backoff[pairKey]
	subjects *Backoff[[32]byte]
}

type pairKey struct {
	subject [32]byte
	src     netip.Prefix
}

// NewGuard makes a Guard.
func NewGuard(cfg GuardConfig) *Guard {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	g := &Guard{
		cfg:     cfg,
		sources: NewBuckets[netip.Prefix](cfg.Source, cfg.Sources),
		global:  NewGlobal(cfg.Global),
		pairs:   NewBackoff[pairKey](cfg.Pair),
	}
	if cfg.Subject.Free > 0 {
		g.subjects = NewBackoff[[32]byte](cfg.Subject)
	}
	return g
}

// Begin admits an attempt or says why not. An admitted attempt counts
// against its pair (and, unproven, against its subject) until Succeeded.
func (g *Guard) Begin(subject [32]byte, src netip.Addr, proven bool) *Refusal {
	now := g.cfg.Now()
	pfx := Prefix(src)
	pk := pairKey{subject: subject, src: pfx}
	g.mu.Lock()
	defer g.mu.Unlock()
	if w := g.pairs.Wait(pk, now); w > 0 {
		return &Refusal{Reason: "pair", RetryAfter: w}
	}
	if !proven {
		if g.subjects != nil {
			if w := g.subjects.Wait(subject, now); w > 0 {
				return &Refusal{Reason: "subject", RetryAfter: w}
			}
		}
		if w := g.sources.Wait(pfx, now); w > 0 {
			return &Refusal{Reason: "source", RetryAfter: w}
		}
		if w := g.global.Wait(now); w > 0 {
			return &Refusal{Reason: "global", RetryAfter: w}
		}
		g.sources.Take(pfx, now)
		g.global.Take(now)
		if g.subjects != nil {
			g.subjects.Take(subject, now)
		}
	}
	g.pairs.Take(pk, now)
	return nil
}

// Succeeded forgets the pair's attempts (and the subject's): the caller
// proved it holds the credential.
func (g *Guard) Succeeded(subject [32]byte, src netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pairs.Forget(pairKey{subject: subject, src: Prefix(src)})
	if g.subjects != nil {
		g.subjects.Forget(subject)
	}
}

// Entries is the number of entries held in every table (memory is bounded
// by the configured caps).
func (g *Guard) Entries() int {
	n := g.sources.Len() + g.pairs.Len()
	if g.subjects != nil {
		n += g.subjects.Len()
	}
	return n
}
