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

// ReconcileObserver adapts Gateway to the domain's ReconcileObserver.
type ReconcileObserver struct{ M *Gateway }

// Reconciled counts a reconcile pass and the peers it repaired.
func (o ReconcileObserver) Reconciled(full bool, repairs int, err error) {
	pass, res := "changes", "ok"
	if full {
		pass = "full"
	}
	if err != nil {
		res = "error"
	}
	o.M.Reconciles.WithLabelValues(pass, res).Inc()
	if repairs > 0 {
		o.M.ReconcileRepairs.Add(float64(repairs))
	}
}
