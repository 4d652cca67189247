package agent

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff is exponential backoff with "equal jitter": each delay is drawn
// from [d/2, d), and d doubles up to max.
type backoff struct {
	min, max, cur time.Duration
	rnd           *rand.Rand // nil: the global source
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, cur: min}
}

func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur *= 2
	if b.cur > b.max {
		b.cur = b.max
	}
	half := d / 2
	if half <= 0 {
		return d
	}
	if b.rnd != nil {
		return half + time.Duration(b.rnd.Int64N(int64(half)))
	}
	return half + rand.N(half)
}

func (b *backoff) reset() { b.cur = b.min }

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
