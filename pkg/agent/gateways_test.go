package agent

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func TestParseGateways(t *testing.T) {
	got, err := ParseGateways("a.example:8443, 192.0.2.1:8443,[2001:db8::1]:8443", "a.example:8443", "b.example:9443")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a.example:8443", "192.0.2.1:8443", "[2001:db8::1]:8443", "b.example:9443"}
	if !slices.Equal(got, want) {
		t.Fatalf("ParseGateways = %q, want %q", got, want)
	}
	for _, tc := range []struct{ in, want string }{
		{"", "empty"},
		{" , ", "empty"},
		{"a.example:8443,b.example", `"b.example": want host:port`},
		{"a.example:8443,:8443", `":8443": host is empty`},
		{"a.example:", `"a.example:": port is empty`},
	} {
		_, err := ParseGateways(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseGateways(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

// fakeLookup answers from a map; a missing name is an error.
func fakeLookup(m map[string][]string) lookupFunc {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		ss, ok := m[host]
		if !ok {
			return nil, errors.New("no such host")
		}
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out, nil
	}
}

func TestResolveCandidates(t *testing.T) {
	lookup := fakeLookup(map[string][]string{
		"fleet.example": {"192.0.2.1", "2001:db8::2", "::ffff:192.0.2.3"},
		"alias.example": {"192.0.2.1"},
	})
	got := resolveCandidates(context.Background(), lookup,
		[]string{"fleet.example:8443", "192.0.2.9:8443", "alias.example:8443", "gone.example:8443"})
	want := []candidate{
		{addr: "192.0.2.1:8443", serverName: "fleet.example", name: "fleet.example:8443 (address 1 of 3)"},
		{addr: "[2001:db8::2]:8443", serverName: "fleet.example", name: "fleet.example:8443 (address 2 of 3)"},
		{addr: "192.0.2.3:8443", serverName: "fleet.example", name: "fleet.example:8443 (address 3 of 3)"},
		{addr: "192.0.2.9:8443", serverName: "192.0.2.9", name: "#2"},
		// alias.example is 192.0.2.1 again: one candidate per address.
		// A name that does not resolve is dialled by name.
		{addr: "gone.example:8443", serverName: "gone.example", name: "gone.example:8443"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("candidates:\n got %+v\nwant %+v", got, want)
	}
}

// TestGatewayListSpread: first logins spread evenly over the candidates
// (each agent has its own random source).
func TestGatewayListSpread(t *testing.T) {
	gws := []string{"192.0.2.1:8443", "192.0.2.2:8443", "192.0.2.3:8443"}
	count := map[string]int{}
	const agents = 3000
	for i := range agents {
		l := newGatewayList(context.Background(), gws, fakeLookup(nil), rand.New(rand.NewPCG(uint64(i), 42)))
		count[l.current().addr]++
	}
	for _, g := range gws {
		if c := count[g]; c < agents/3*8/10 || c > agents/3*12/10 {
			t.Errorf("%s is the first gateway of %d of %d agents, want about %d: %v", g, c, agents, agents/3, count)
		}
	}
}

// TestGatewayListFailoverOrder: failover visits every candidate once per
// round, never retries the one that just failed first, and resolves the
// names again after each round.
func TestGatewayListFailoverOrder(t *testing.T) {
	records := map[string][]string{"fleet.example": {"192.0.2.1", "192.0.2.2", "192.0.2.3"}}
	ctx := context.Background()
	l := newGatewayList(ctx, []string{"fleet.example:8443", "198.51.100.1:8443"}, fakeLookup(records), rand.New(rand.NewPCG(1, 2)))
	if l.len() != 4 {
		t.Fatalf("%d candidates, want 4", l.len())
	}
	prev := l.current()
	for round := range 20 {
		seen := map[string]bool{prev.addr: true}
		for range l.len() - 1 {
			c := l.next(ctx)
			if seen[c.addr] {
				t.Fatalf("round %d: %s twice before every candidate was tried", round, c.addr)
			}
			seen[c.addr] = true
			prev = c
		}
		if len(seen) != 4 {
			t.Fatalf("round %d tried %v", round, seen)
		}
		c := l.next(ctx) // a new round
		if c.addr == prev.addr {
			t.Fatalf("round %d: the gateway that just failed (%s) is tried first again", round, c.addr)
		}
		prev = c
	}
	// A record added to the name is a candidate from the next round on.
	records["fleet.example"] = append(records["fleet.example"], "192.0.2.4")
	for range l.len() {
		l.next(ctx)
	}
	if l.len() != 5 || !slices.ContainsFunc(l.cands, func(c candidate) bool { return c.addr == "192.0.2.4:8443" }) {
		t.Fatalf("after re-resolving: %+v", l.cands)
	}
}

// TestFailoverBackoff: failover delays are jittered in [d/2, d), d doubling
// up to max, and sleep waits exactly that long (on synctest's fake clock).
func TestFailoverBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bo := newBackoff(100*time.Millisecond, time.Second)
		bo.rnd = rand.New(rand.NewPCG(7, 7))
		d := 100 * time.Millisecond
		var delays []time.Duration
		for range 8 {
			got := bo.next()
			if got < d/2 || got >= d {
				t.Fatalf("delay %v outside [%v, %v)", got, d/2, d)
			}
			delays = append(delays, got)
			start := time.Now()
			if err := sleep(t.Context(), got); err != nil {
				t.Fatal(err)
			}
			if slept := time.Since(start); slept != got {
				t.Fatalf("slept %v, want %v", slept, got)
			}
			d = min(2*d, time.Second)
		}
		// Jitter: not every capped delay is the same.
		if slices.Min(delays[4:]) == slices.Max(delays[4:]) {
			t.Fatalf("no jitter: %v", delays)
		}
		// The same seed gives the same delays (the source is injected).
		bo2 := newBackoff(100*time.Millisecond, time.Second)
		bo2.rnd = rand.New(rand.NewPCG(7, 7))
		for i := range delays {
			if got := bo2.next(); got != delays[i] {
				t.Fatalf("delay %d: %v with the same seed, want %v", i, got, delays[i])
			}
		}
		bo.reset()
		if got := bo.next(); got >= 100*time.Millisecond {
			t.Fatalf("after reset: %v, want < 100ms", got)
		}
		// A cancelled wait returns at once.
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
			t.Fatalf("sleep after cancel = %v", err)
		}
	})
}

// TestSilentGatewayFailsOverAtOnce: a gateway whose Sync stream goes silent
// (gone without closing the connection) is left for the next gateway after
// one SyncIdleTimeout, without a reconnect on the dead transport; the agent
// logs in there with the same key and pings through it.
func TestSilentGatewayFailsOverAtOnce(t *testing.T) {
	silent := newFakeGateway(t, nil) // one keepalive, then nothing
	live := newFakeGateway(t, nil)
	live.syncFn = func(_ int, stream gatewayv1.DeviceService_SyncServer) error {
		for {
			if err := stream.Send(keepalive("live")); err != nil {
				return err
			}
			select {
			case <-stream.Context().Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	cfg := testConfig(t, silent, t.TempDir())
	cfg.Gateway = silent.addr + "," + live.addr
	cfg.SyncIdleTimeout = 300 * time.Millisecond
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A source whose first permutation starts on the silent gateway.
	seed := uint64(0)
	for rand.New(rand.NewPCG(seed, 0)).Perm(2)[0] != 0 {
		seed++
	}
	a.rnd = rand.New(rand.NewPCG(seed, 0))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitFor(t, 10*time.Second, "a login on the live gateway", func() bool { return live.loginCount() >= 1 })
	if n, s := silent.loginCount(), silent.syncCount(); n != 1 || s != 1 {
		t.Fatalf("silent gateway: %d logins, %d Sync streams; want 1 and 1 (no reconnect on a silent gateway)", n, s)
	}
	pingEventually(t, a)
	var keys [][]byte
	for _, g := range []*fakeGateway{silent, live} {
		g.mu.Lock()
		keys = append(keys, g.logins[0].GetPublicKey())
		g.mu.Unlock()
	}
	if pk := a.PublicKey(); !bytes.Equal(keys[0], pk[:]) || !bytes.Equal(keys[1], pk[:]) {
		t.Fatal("the agent logged in to the second gateway with another key")
	}
}
