package metrics

import (
	"time"
)

// LoginObserver adapts Gateway to the domain's Observer interface. Outcomes
// are strings from the domain's fixed list.
type LoginObserver struct{ M *Gateway }

// Login counts a login and its latency.
func (o LoginObserver) Login(outcome string, d time.Duration) {
	o.M.Logins.WithLabelValues(outcome).Inc()
	if d > 0 {
		o.M.LoginDuration.Observe(d.Seconds())
	}
}

// AdmissionQueue sets the queue depth.
func (o LoginObserver) AdmissionQueue(depth int) { o.M.AdmissionQueue.Set(float64(depth)) }

// AdmissionRejected counts a rejection.
func (o LoginObserver) AdmissionRejected() { o.M.AdmissionRejected.Inc() }
