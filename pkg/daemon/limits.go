package daemon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/throttle"
)

// limits are the gateway's defences against hostile callers, built from the
// throttle, device and client configuration. All of it is memory in this
// process: each gateway of a fleet keeps its own.
type limits struct {
	cfg       config.Throttle
	devices   countedGuard
	accounts  countedGuard
	binds     countedGuard
	codes     countedGuard
	passwords countedPool
	refused   *prometheus.CounterVec
}

// countedPool is the password pool whose "busy" refusals are counted.
type countedPool struct {
	p *throttle.Pool
	c prometheus.Counter
}

func (c countedPool) Do(ctx context.Context, fn func()) error {
	err := c.p.Do(ctx, fn)
	if errors.Is(err, throttle.ErrBusy) {
		c.c.Inc()
	}
	return err
}

func newLimits(cfg config.Config, now func() time.Time, refused *prometheus.CounterVec) *limits {
	th := cfg.Throttle
	guard := func(attempts int, window time.Duration) *throttle.Guard {
		return throttle.NewGuard(throttle.GuardConfig{
			Source:  throttle.Rate{PerSecond: float64(th.SourceRate), Burst: th.SourceBurst},
			Sources: th.MaxEntries,
			Global:  throttle.Rate{PerSecond: float64(th.GlobalRate), Burst: th.GlobalBurst},
			Pair:    throttle.BackoffConfig{Free: attempts, Base: time.Second, Max: window, Entries: th.MaxEntries},
			Subject: throttle.BackoffConfig{Free: th.SubjectAttempts, Base: time.Second, Max: window, Entries: th.MaxEntries},
			Now:     now,
		})
	}
	for _, call := range []string{"device_login", "client_login", "bind_device", "binding_code"} {
		for _, r := range throttle.Reasons() {
			refused.WithLabelValues(call, r)
		}
	}
	for _, r := range []string{"source", "total"} {
		refused.WithLabelValues("connection", r)
	}
	return &limits{
		cfg:      th,
		devices:  countedGuard{g: guard(cfg.Device.LockoutAttempts, cfg.Device.LockoutWindow), c: refused, call: "device_login"},
		accounts: countedGuard{g: guard(cfg.Client.LockoutAttempts, cfg.Client.LockoutWindow), c: refused, call: "client_login"},
		binds:    countedGuard{g: guard(cfg.Client.LockoutAttempts, cfg.Client.LockoutWindow), c: refused, call: "bind_device"},
		// A device shows a code now and then: 5 back to back, then 10s
		// between codes, doubling up to 5 minutes (per device; the source
		// buckets apply too). Nothing forgets a device's codes but time.
		codes: countedGuard{g: throttle.NewGuard(throttle.GuardConfig{
			Source:  throttle.Rate{PerSecond: float64(th.SourceRate), Burst: th.SourceBurst},
			Sources: th.MaxEntries,
			Global:  throttle.Rate{PerSecond: float64(th.GlobalRate), Burst: th.GlobalBurst},
			Pair:    throttle.BackoffConfig{Free: 1 << 30, Entries: 1},
			Subject: throttle.BackoffConfig{Free: codesPerDevice, Base: 10 * time.Second, Max: 5 * time.Minute, Entries: th.MaxEntries},
			Now:     now,
		}), c: refused, call: "binding_code"},
		passwords: countedPool{p: throttle.NewPool(th.PasswordWorkers, th.PasswordQueue), c: refused.WithLabelValues("password", "busy")},
		refused:   refused,
	}
}

// codesPerDevice binding codes a device may create back to back.
const codesPerDevice = 5

// listener caps the live connections of the device and client listener.
func (l *limits) listener(inner net.Listener) net.Listener {
	return throttle.NewListener(inner, throttle.ListenerConfig{
		PerSource: l.cfg.MaxConnsPerSource,
		Total:     l.cfg.MaxConns,
		OnRefuse:  func(reason string) { l.refused.WithLabelValues("connection", reason).Inc() },
	})
}

// countedGuard is a Guard whose refusals are counted.
type countedGuard struct {
	g    *throttle.Guard
	c    *prometheus.CounterVec
	call string
}

func (c countedGuard) Begin(subject [32]byte, src netip.Addr, proven bool) *throttle.Refusal {
	r := c.g.Begin(subject, src, proven)
	if r != nil {
		c.c.WithLabelValues(c.call, r.Reason).Inc()
	}
	return r
}

func (c countedGuard) Succeeded(subject [32]byte, src netip.Addr) { c.g.Succeeded(subject, src) }
