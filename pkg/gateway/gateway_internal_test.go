package gateway

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type countObs struct {
	rejected atomic.Int32
	depth    atomic.Int32
}

func (o *countObs) Login(string, time.Duration) {}
func (o *countObs) AdmissionQueue(d int)        { o.depth.Store(int32(d)) }
func (o *countObs) AdmissionRejected()          { o.rejected.Add(1) }

// TestAdmissionQueue: a bounded number of logins run, a bounded number
// wait, the rest are refused at once (rate limited) and counted.
func TestAdmissionQueue(t *testing.T) {
	obs := &countObs{}
	g := &Gateway{slots: make(chan struct{}, 2), queued: make(chan struct{}, 1), obs: obs}
	ctx := context.Background()
	r1, err := g.acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := g.acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan error, 1)
	go func() {
		r, err := g.acquire(ctx, false)
		if err == nil {
			r()
		}
		waiting <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for obs.depth.Load() != 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if obs.depth.Load() != 1 {
		t.Fatal("third login is not waiting in the queue")
	}
	if _, err := g.acquire(ctx, false); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("fourth login with a full queue: %v, want ErrRateLimited", err)
	}
	if obs.rejected.Load() != 1 {
		t.Fatalf("rejections counted: %d", obs.rejected.Load())
	}
	r1()
	select {
	case err := <-waiting:
		if err != nil {
			t.Fatalf("queued login: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("queued login did not get the freed slot")
	}
	r2()
	// A waiting login whose caller gives up leaves at once.
	g2 := &Gateway{slots: make(chan struct{}, 1), queued: make(chan struct{}, 1), obs: obs}
	r, _ := g2.acquire(ctx, false)
	defer r()
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := g2.acquire(cctx, false); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("cancelled wait: %v", err)
	}
}

// TestPinnedLane: with the open lanes full (every slot taken, the queue
// full, further logins refused), a login carrying an admitted device's
// pinned key still gets a slot of its own; an unknown key does not.
func TestPinnedLane(t *testing.T) {
	obs := &countObs{}
	g := &Gateway{
		slots: make(chan struct{}, 1), queued: make(chan struct{}),
		pinnedSlots: make(chan struct{}, 1), pinnedQueued: make(chan struct{}),
		obs: obs, plane: newPlane(),
	}
	g.plane.setDevice(7, [32]byte{1}, 1)
	ctx := context.Background()
	stranger, err := g.acquire(ctx, g.pinnedKey([32]byte{9}))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger()
	if _, err := g.acquire(ctx, g.pinnedKey([32]byte{9})); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("second stranger with the open lane full: %v, want ErrRateLimited", err)
	}
	if obs.rejected.Load() != 1 {
		t.Fatalf("rejections counted: %d, want 1", obs.rejected.Load())
	}
	if !g.pinnedKey([32]byte{1}) {
		t.Fatal("the admitted device's key is not known as pinned")
	}
	device, err := g.acquire(ctx, g.pinnedKey([32]byte{1}))
	if err != nil {
		t.Fatalf("device with its pinned key while strangers fill the open lane: %v", err)
	}
	device()
}

func TestOutcomeOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Outcome
	}{
		{newErr(ErrInvalid, nil, "x"), OutcomeInvalid},
		{newErr(ErrRateLimited, nil, "x"), OutcomeRateLimited},
		{newErr(ErrUnauthenticated, nil, "x"), OutcomeDenied},
		{newErr(ErrConflict, nil, "x"), OutcomeDenied},
	} {
		if got := outcomeOf(tc.err); got != tc.want {
			t.Errorf("outcomeOf(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
	if len(Outcomes()) != 5 {
		t.Fatalf("Outcomes() = %v", Outcomes())
	}
}

func TestBindingCodes(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 200; i++ {
		code, hash, err := newBindingCode()
		if err != nil {
			t.Fatal(err)
		}
		if len(code) != bindLen || seen[code] {
			t.Fatalf("code %q (len %d, repeated %v)", code, len(code), seen[code])
		}
		seen[code] = true
		// Typed back with dashes, spaces and lower case: same hash.
		typed := strings.ToLower(code[:5]) + "-" + code[5:7] + " " + code[7:]
		h2, err := hashBindingCode(typed)
		if err != nil || h2 != hash {
			t.Fatalf("hash of %q = %x, %v; want %x", typed, h2, err, hash)
		}
	}
	for _, bad := range []string{"", "ABC", "0123456789AB", "01234567IL", "0123456789\x00"} {
		if _, err := hashBindingCode(bad); err == nil {
			t.Errorf("hashBindingCode(%q) accepted", bad)
		}
	}
}

func TestPublicMessageHidesCause(t *testing.T) {
	err := newErr(ErrUnavailable, errors.New("sqlite: disk I/O error at /var/lib/x"), "storing admission failed")
	if PublicMessage(err) != "storing admission failed" {
		t.Fatalf("PublicMessage = %q", PublicMessage(err))
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Fatal("kind lost")
	}
}
