// Package poll waits for a condition with a bound in count and time. Tests
// use it instead of sleeping a fixed time and hoping the thing has happened.
package poll

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// Until calls fn every interval until it returns nil, within has passed or
// ctx is done, and then returns nil or the last error. It calls fn at most
// within/interval+2 times.
func Until(ctx context.Context, within, interval time.Duration, fn func() error) error {
	if interval <= 0 {
		return errors.New("poll: interval must be positive")
	}
	deadline := time.Now().Add(within)
	maxTries := int(within/interval) + 2
	t := time.NewTimer(interval)
	defer t.Stop()
	var err error
	for i := 0; i < maxTries; i++ {
		if err = fn(); err == nil {
			return nil
		}
		if !time.Now().Before(deadline) {
			break
		}
		t.Reset(interval)
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %v: %w (%w)", within, err, ctx.Err())
		case <-t.C:
		}
	}
	return fmt.Errorf("not within %v: %w", within, err)
}

// Must is Until with a 20 ms interval that fails the test when fn has not
// succeeded within the bound.
func Must(t testing.TB, within time.Duration, what string, fn func() error) {
	t.Helper()
	if err := Until(context.Background(), within, 20*time.Millisecond, fn); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
