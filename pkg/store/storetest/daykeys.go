package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// wrappedKey is a stand-in for a wrapped day key (the store never looks
// inside).
func wrappedKey(tag byte) []byte { return bytes.Repeat([]byte{tag}, 72) }

func (t *h) wantDayKeys(what, horizon string, keys map[string][]byte) {
	t.Helper()
	gotH, got, err := t.s.DayKeys(t.ctx)
	t.must(err, what+": DayKeys")
	if gotH != horizon || !maps.EqualFunc(got, keys, bytes.Equal) {
		t.Fatalf("%s: horizon %q, keys %v; want %q, %v", what, gotH, got, horizon, keys)
	}
}

// testDayKeys: the first key recorded for a day stays in force; destroying
// raises the horizon (never lowers it) and deletes the keys before it; a
// day before the horizon gets no key again; bad input is refused, naming
// the field, and changes nothing.
func testDayKeys(t *h) {
	t.wantDayKeys("empty", "", map[string][]byte{})
	const d1, d2, d3 = "2030-01-01", "2030-01-02", "2030-01-03"
	for _, c := range []struct {
		day     string
		wrapped []byte
		want    []byte
	}{
		{d1, wrappedKey(1), wrappedKey(1)},
		{d1, wrappedKey(2), wrappedKey(1)}, // the first stays in force
		{d2, wrappedKey(3), wrappedKey(3)},
		{d3, wrappedKey(4), wrappedKey(4)},
	} {
		got, h, err := t.s.EnsureDayKey(t.ctx, c.day, c.wrapped)
		t.must(err, "EnsureDayKey "+c.day)
		if !bytes.Equal(got, c.want) || h != "" {
			t.Fatalf("EnsureDayKey(%s, %x): %x, horizon %q; want %x, no horizon", c.day, c.wrapped[0], got, h, c.want)
		}
	}
	t.wantDayKeys("three days", "", map[string][]byte{d1: wrappedKey(1), d2: wrappedKey(3), d3: wrappedKey(4)})

	n, h, err := t.s.DestroyDayKeysBefore(t.ctx, d3)
	t.must(err, "DestroyDayKeysBefore")
	if n != 2 || h != d3 {
		t.Fatalf("DestroyDayKeysBefore(%s): %d deleted, horizon %q; want 2, %s", d3, n, h, d3)
	}
	t.wantDayKeys("after destruction", d3, map[string][]byte{d3: wrappedKey(4)})
	got, h, err := t.s.EnsureDayKey(t.ctx, d1, wrappedKey(5))
	t.must(err, "EnsureDayKey before the horizon")
	if got != nil || h != d3 {
		t.Fatalf("EnsureDayKey before the horizon: %x, horizon %q; want no key, %s", got, h, d3)
	}
	n, h, err = t.s.DestroyDayKeysBefore(t.ctx, d1)
	t.must(err, "DestroyDayKeysBefore a lower day")
	if n != 0 || h != d3 {
		t.Fatalf("DestroyDayKeysBefore(%s) after %s: %d deleted, horizon %q; want 0 and the horizon kept", d1, d3, n, h)
	}

	for name, call := range map[string]func() error{
		"day":      func() error { _, _, err := t.s.EnsureDayKey(t.ctx, "2030-1-04", wrappedKey(6)); return err },
		"day ":     func() error { _, _, err := t.s.EnsureDayKey(t.ctx, "2030-02-30", wrappedKey(6)); return err },
		"wrapped":  func() error { _, _, err := t.s.EnsureDayKey(t.ctx, "2030-01-04", nil); return err },
		"wrapped ": func() error { _, _, err := t.s.EnsureDayKey(t.ctx, "2030-01-04", make([]byte, 257)); return err },
		"day  ":    func() error { _, _, err := t.s.DestroyDayKeysBefore(t.ctx, "yesterday"); return err },
	} {
		err := call()
		var fe *privacy.FieldError
		if !errors.Is(err, privacy.ErrInvalid) || !errors.As(err, &fe) || fe.Field != strings.TrimSpace(name) {
			t.Fatalf("bad %s: error %v, want ErrInvalid naming %q", name, err, strings.TrimSpace(name))
		}
	}
	t.wantDayKeys("after bad input", d3, map[string][]byte{d3: wrappedKey(4)})

	// Rewrapping swaps only the value it was read as.
	for _, c := range []struct {
		day      string
		old, new []byte
		want     bool
	}{
		{d3, wrappedKey(9), wrappedKey(7), false}, // not the value in force
		{d1, wrappedKey(1), wrappedKey(7), false}, // destroyed: no row
		{d3, wrappedKey(4), wrappedKey(7), true},
		{d3, wrappedKey(4), wrappedKey(8), false}, // swapped already
	} {
		done, err := t.s.RewrapDayKey(t.ctx, c.day, c.old, c.new)
		t.must(err, "RewrapDayKey")
		if done != c.want {
			t.Fatalf("RewrapDayKey(%s, %x → %x): %v, want %v", c.day, c.old[0], c.new[0], done, c.want)
		}
	}
	if _, err := t.s.RewrapDayKey(t.ctx, "2030-01-4", wrappedKey(7), wrappedKey(8)); !errors.Is(err, privacy.ErrInvalid) {
		t.Fatalf("RewrapDayKey with a bad day: %v, want ErrInvalid", err)
	}
	t.wantDayKeys("after rewrapping", d3, map[string][]byte{d3: wrappedKey(7)})
}

// testDayKeysConcurrent: gateways needing one day's key at once all get the
// same one (one of theirs), while another destroys older days.
func testDayKeysConcurrent(t *h) {
	_, _, err := t.s.EnsureDayKey(t.ctx, "2030-01-01", wrappedKey(99))
	t.must(err, "EnsureDayKey")
	const n = 8
	got := make([][]byte, n)
	errs := make([]error, n+1)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { got[i], _, errs[i] = t.s.EnsureDayKey(t.ctx, "2030-01-02", wrappedKey(byte(i))) })
	}
	wg.Go(func() { _, _, errs[n] = t.s.DestroyDayKeysBefore(t.ctx, "2030-01-02") })
	wg.Wait()
	for i := range n + 1 {
		t.must(errs[i], fmt.Sprint("call ", i))
	}
	for i := range n {
		if !bytes.Equal(got[i], got[0]) || len(got[0]) != 72 || got[0][0] >= n {
			t.Fatalf("concurrent EnsureDayKey saw %x and %x: want one winner for all", got[0], got[i])
		}
	}
	t.wantDayKeys("after the race", "2030-01-02", map[string][]byte{"2030-01-02": got[0]})
}
