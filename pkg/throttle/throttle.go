// Package throttle holds the gateway's defences against hostile callers, as
// pure, bounded data structures: token buckets per source prefix and global
// (Buckets), growing delays per (subject, source prefix) (Backoff), the two
// combined for a login (Guard), a fixed pool for expensive checks (Pool) and
// a listener that caps live connections per source prefix (Listener).
//
// Nothing here keys a limit on an identity alone: a stranger's failures count
// against the stranger's own source prefix, so nobody can aim a limit at a
// device or an account they do not control. Every table has a hard cap on
// entries (least recently used entries go first), so memory stays bounded
// whatever callers send. State is per process (per gateway).
package throttle

import (
	"net/netip"
	"time"
)

// Prefix is the source a caller is judged by: its address truncated to /24
// (IPv4) or /48 (IPv6), the unit a single customer or NAT usually holds. An
// IPv4-mapped IPv6 address counts as IPv4; an invalid address is the zero
// prefix (one shared source).
func Prefix(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	switch {
	case a.Is4():
		p, _ := a.Prefix(24)
		return p
	case a.Is6():
		p, _ := a.Prefix(48)
		return p
	}
	return netip.Prefix{}
}

// Rate is a token bucket: PerSecond tokens are added each second up to
// Burst. A zero Rate means no limit.
type Rate struct {
	PerSecond float64
	Burst     int
}

// Unlimited reports whether r sets no limit.
func (r Rate) Unlimited() bool { return r.PerSecond <= 0 || r.Burst <= 0 }

// Refusal says why an attempt was refused and when the caller may try again.
type Refusal struct {
	// Reason is a metric label: "source", "global", "pair" or "subject".
	Reason string
	// RetryAfter is the earliest time the same attempt could succeed.
	RetryAfter time.Duration
}

// Reasons lists every Refusal reason (for metrics created up front).
func Reasons() []string { return []string{"source", "global", "pair", "subject"} }

// Clock is the time source (time.Now in production).
type Clock func() time.Time
