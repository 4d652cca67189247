package throttle

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock               { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func addr(s string) netip.Addr           { return netip.MustParseAddr(s) }
func subj(b byte) (s [32]byte)           { s[0] = b; return s }

func TestPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.77":           "192.0.2.0/24",
		"::ffff:192.0.2.77":    "192.0.2.0/24",
		"2001:db8:1:2:3::4":    "2001:db8:1::/48",
		"2001:db8:1:ffff::abc": "2001:db8:1::/48",
	} {
		if got := Prefix(addr(in)); got.String() != want {
			t.Errorf("Prefix(%s) = %s, want %s", in, got, want)
		}
	}
	if Prefix(netip.Addr{}).IsValid() {
		t.Error("invalid address gave a valid prefix")
	}
}

func TestBucketsBurstWaitRefillAndCap(t *testing.T) {
	c := newClock()
	b := NewBuckets[string](Rate{PerSecond: 2, Burst: 3}, 2)
	for i := range 3 {
		if _, ok := b.Take("a", c.now()); !ok {
			t.Fatalf("take %d within the burst refused", i)
		}
	}
	w, ok := b.Take("a", c.now())
	if ok || w != 500*time.Millisecond {
		t.Fatalf("4th take = (%v, %v), want refused with 500ms", w, ok)
	}
	if got := b.Wait("a", c.now()); got != 500*time.Millisecond {
		t.Fatalf("Wait = %v", got)
	}
	if _, ok := b.Take("b", c.now()); !ok {
		t.Fatal("another key is limited by a's bucket")
	}
	c.add(500 * time.Millisecond)
	if _, ok := b.Take("a", c.now()); !ok {
		t.Fatal("refilled token refused")
	}
	b.Take("c", c.now())
	b.Take("d", c.now())
	if n := b.Len(); n != 2 {
		t.Fatalf("table holds %d keys, cap 2", n)
	}
}

func TestBackoffGrowsAndRefusalsDoNotCount(t *testing.T) {
	c := newClock()
	b := NewBackoff[string](BackoffConfig{Free: 2, Base: time.Second, Max: 8 * time.Second, Entries: 10})
	for i := range 2 {
		if _, ok := b.Take("k", c.now()); !ok {
			t.Fatalf("free attempt %d refused", i)
		}
	}
	// After the free ones: wait 1s; the 3rd attempt then waits 2s, the 4th 4s, then 8s (max), 8s.
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second} {
		for range 5 { // refused attempts do not lengthen the wait
			if w, ok := b.Take("k", c.now()); ok || w != want {
				t.Fatalf("after attempt %d: Take = (%v, %v), want refused for %v", i+2, w, ok, want)
			}
		}
		c.add(want)
		if _, ok := b.Take("k", c.now()); !ok {
			t.Fatalf("attempt %d refused at its time", i+3)
		}
	}
	b.Forget("k")
	if w := b.Wait("k", c.now()); w != 0 {
		t.Fatalf("forgotten key waits %v", w)
	}
	// Stale entries restart with free attempts.
	b.Take("s", c.now())
	b.Take("s", c.now())
	c.add(17 * time.Second) // Forget defaults to 2*Max
	for i := range 2 {
		if _, ok := b.Take("s", c.now()); !ok {
			t.Fatalf("stale key: free attempt %d refused", i)
		}
	}
}

func guardCfg(c *fakeClock) GuardConfig {
	return GuardConfig{
		Source: Rate{PerSecond: 1, Burst: 50}, Sources: 100,
		Global:  Rate{PerSecond: 1, Burst: 1000},
		Pair:    BackoffConfig{Free: 3, Base: time.Second, Max: time.Minute, Entries: 1000},
		Subject: BackoffConfig{Free: 20, Base: time.Second, Max: time.Minute, Entries: 1000},
		Now:     c.now,
	}
}

// A stranger's failures on a subject from one prefix never slow the same
// subject from another prefix, proven or not.
func TestGuardStrangerCannotAimAtVictim(t *testing.T) {
	c := newClock()
	g := NewGuard(guardCfg(c))
	victim := subj(1)
	refused := 0
	for range 40 {
		if r := g.Begin(victim, addr("198.51.100.9"), false); r != nil {
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("40 back-to-back attempts on one pair were never refused")
	}
	if r := g.Begin(victim, addr("203.0.113.5"), false); r != nil {
		t.Fatalf("victim from its own prefix refused: %+v", r)
	}
	if r := g.Begin(victim, addr("198.51.100.77"), false); r == nil || r.Reason != "pair" {
		t.Fatalf("same /24 as the stranger: %+v, want a pair refusal", r)
	}
}

// A proven attempt passes the source, global and subject limits.
func TestGuardProvenPassesSourceGlobalAndSubject(t *testing.T) {
	c := newClock()
	cfg := guardCfg(c)
	cfg.Global = Rate{PerSecond: 1, Burst: 60}
	g := NewGuard(cfg)
	victim := subj(2)
	// Guessing spread over 30 prefixes: the subject-wide backoff and the
	// global bucket run out; each pair is still within its free attempts.
	var last *Refusal
	for i := range 30 {
		for range 2 {
			src := netip.AddrFrom4([4]byte{10, byte(i), 0, 1})
			if r := g.Begin(victim, src, false); r != nil {
				last = r
			}
		}
	}
	if last == nil {
		t.Fatal("60 guesses spread over 30 prefixes were never refused")
	}
	if r := g.Begin(victim, addr("203.0.113.5"), false); r == nil {
		t.Fatal("unproven attempt after spread guessing was not slowed")
	}
	if r := g.Begin(victim, addr("203.0.113.5"), true); r != nil {
		t.Fatalf("proven attempt refused: %+v", r)
	}
	// The source bucket: a prefix that used up its burst still gets proven attempts through.
	for i := range 60 {
		g.Begin(subj(byte(100+i)), addr("192.0.2.1"), false)
	}
	if r := g.Begin(subj(3), addr("192.0.2.1"), false); r == nil || (r.Reason != "source" && r.Reason != "global") {
		t.Fatalf("exhausted source: %+v, want a source or global refusal", r)
	}
	if r := g.Begin(subj(3), addr("192.0.2.1"), true); r != nil {
		t.Fatalf("proven attempt from an exhausted source refused: %+v", r)
	}
}

func TestGuardSucceededResetsPair(t *testing.T) {
	c := newClock()
	g := NewGuard(guardCfg(c))
	s, src := subj(4), addr("192.0.2.1")
	for range 3 {
		if r := g.Begin(s, src, false); r != nil {
			t.Fatal(r)
		}
	}
	if r := g.Begin(s, src, false); r == nil || r.RetryAfter <= 0 {
		t.Fatalf("want a pair refusal with a retry hint, got %+v", r)
	}
	g.Succeeded(s, src)
	if r := g.Begin(s, src, false); r != nil {
		t.Fatalf("after success: %+v", r)
	}
}

func TestGuardMemoryBounded(t *testing.T) {
	c := newClock()
	cfg := guardCfg(c)
	cfg.Source = Rate{}
	cfg.Global = Rate{}
	cfg.Pair.Entries, cfg.Subject.Entries, cfg.Sources = 100, 100, 100
	g := NewGuard(cfg)
	for i := range 10000 {
		g.Begin(subj(byte(i)), netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), false)
	}
	if n := g.Entries(); n > 300 {
		t.Fatalf("%d entries after 10,000 distinct attempts; caps total 300", n)
	}
}

func TestPoolBoundsWork(t *testing.T) {
	p := NewPool(2, 3)
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(2)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = p.Do(context.Background(), func() { started.Done(); <-release })
		}()
	}
	started.Wait()
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- p.Do(ctx, func() {}) }()
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Waiting() != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("queue never filled: %d waiting", p.Waiting())
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.Do(context.Background(), func() { t.Error("ran beyond the bound") }); !errors.Is(err, ErrBusy) {
		t.Fatalf("6th caller: %v, want ErrBusy", err)
	}
	cancel()
	for range 3 {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("queued caller: %v, want Canceled", err)
		}
	}
	close(release)
	wg.Wait()
	if p.Running() != 0 || p.Waiting() != 0 {
		t.Fatalf("pool not drained: %d running, %d waiting", p.Running(), p.Waiting())
	}
}

// Real sockets: 127.0.0.2 and 127.0.0.3 are in one /24, so a listener on
// 127.0.0.1 sees them as one source; a second /24 (127.0.1.x) is another.
func TestListenerCapsPerSourceAndTotal(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	refused := map[string]int{}
	l := NewListener(inner, ListenerConfig{PerSource: 2, Total: 3, OnRefuse: func(r string) { mu.Lock(); refused[r]++; mu.Unlock() }})
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	closedByServer := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err != nil && !errors.Is(err, ErrBusy) && !isTimeout(err)
	}
	a1, a2 := dial("127.0.0.2"), dial("127.0.0.3")
	<-accepted
	s2 := <-accepted
	a3 := dial("127.0.0.4") // third from the same /24: closed at once
	if !closedByServer(a3) {
		t.Fatal("3rd connection from one /24 was not closed")
	}
	b1 := dial("127.0.1.2") // another /24: fits (total 3)
	<-accepted
	b2 := dial("127.0.1.3") // total cap
	if !closedByServer(b2) {
		t.Fatal("connection over the total cap was not closed")
	}
	mu.Lock()
	if refused["source"] != 1 || refused["total"] != 1 {
		t.Fatalf("refusals %v, want one of each", refused)
	}
	mu.Unlock()
	// Closing one frees its place.
	s2.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if tot, _ := l.Live(addr("127.0.0.2")); tot == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("closed connection still counted")
		}
		time.Sleep(time.Millisecond)
	}
	a4 := dial("127.0.0.5")
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("connection after a close was not accepted")
	}
	for _, c := range []net.Conn{a1, a2, a3, b1, b2, a4} {
		c.Close()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
