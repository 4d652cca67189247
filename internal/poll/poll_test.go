package poll

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestUntilReturnsOnSuccess(t *testing.T) {
	n := 0
	err := Until(context.Background(), time.Minute, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("Until: %v after %d calls, want nil after 3", err, n)
	}
}

func TestUntilIsBounded(t *testing.T) {
	want := errors.New("never")
	n := 0
	err := Until(context.Background(), 10*time.Millisecond, time.Millisecond, func() error { n++; return want })
	if !errors.Is(err, want) {
		t.Fatalf("Until: %v, want the last error wrapped", err)
	}
	if n < 1 || n > 12 {
		t.Fatalf("fn called %d times, want 1..12 (within/interval+2)", n)
	}
}

func TestUntilStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Until(ctx, time.Hour, time.Hour, func() error { return errors.New("no") })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Until with a cancelled context: %v", err)
	}
}
