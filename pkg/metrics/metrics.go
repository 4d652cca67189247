// Package metrics builds the gateway's Prometheus metrics. Every constructor
// takes a prometheus.Registerer; nothing here is global. No label ever holds a
// per-device or per-person value: labels are outcomes, reasons, tables and
// operation names, all from fixed lists.
package metrics

import (
	"context"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every metric: dasset_gateway_.
const Namespace = "dasset_gateway"

// Gateway holds the metrics the gateway updates as things happen.
type Gateway struct {
	Logins            *prometheus.CounterVec
	LoginDuration     prometheus.Histogram
	AdmissionQueue    prometheus.Gauge
	AdmissionRejected prometheus.Counter
	StoreTx           *prometheus.HistogramVec
	ConnLogDropped    prometheus.Counter
	CertExpiry        prometheus.Gauge
	// Throttled counts attempts refused before their credentials were
	// checked, by call (device_login, client_login, bind_device,
	// binding_code, password, connection) and reason (source, global, pair,
	// subject, busy, total).
	Throttled *prometheus.CounterVec
	// StoreWritable is 1 while the registry can be written, 0 while it
	// cannot (disk full or read-only): new admissions are refused then.
	StoreWritable prometheus.Gauge
	// Reconciles counts reconcile passes of the data plane against the
	// registry, by pass (full, changes) and result (ok, error).
	Reconciles *prometheus.CounterVec
	// ReconcileRepairs counts WireGuard peers a full reconcile pass found
	// wrong although no change had told the gateway (a missed
	// notification, a failed peer change, a peer removed behind its back).
	ReconcileRepairs prometheus.Counter
}

// New registers the gateway's event metrics, build info, and the Go and
// process collectors on reg.
func New(reg prometheus.Registerer, outcomes []string, version string) *Gateway {
	m := &Gateway{
		Logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "logins_total",
			Help: "Device logins by outcome (ok, denied, invalid, rate_limited, rekeyed).",
		}, []string{"outcome"}),
		LoginDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "login_duration_seconds",
			Help:    "Time to handle a device login, from request to answer.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		AdmissionQueue: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "admission_queue_depth",
			Help: "Logins waiting for an admission slot.",
		}),
		AdmissionRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "admission_rejections_total",
			Help: "Logins refused at once because the admission queue was full.",
		}),
		StoreTx: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "store_transaction_duration_seconds",
			Help:    "Store transaction latency by operation.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"op"}),
		ConnLogDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "connection_log_dropped_total",
			Help: "Connection-log rows dropped because the write buffer was full.",
		}),
		CertExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "tls_certificate_expiry_timestamp_seconds",
			Help: "When the device/client gRPC TLS certificate expires (Unix time).",
		}),
		Throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "throttled_total",
			Help: "Attempts refused before their credentials were checked, and connections closed over a cap, by call and reason.",
		}, []string{"call", "reason"}),
		StoreWritable: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "store_writable",
			Help: "1 while the registry can be written, 0 while it cannot (disk full or read-only; new admissions are refused).",
		}),
		Reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "reconciles_total",
			Help: "Reconcile passes of the WireGuard peers and hub ACL against the registry, by pass (full, changes) and result (ok, error).",
		}, []string{"pass", "result"}),
		ReconcileRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "reconcile_repairs_total",
			Help: "WireGuard peers a full reconcile pass found wrong (missing, extra or with other allowed IPs) and repaired.",
		}),
	}
	m.StoreWritable.Set(1)
	for _, pass := range []string{"full", "changes"} {
		for _, res := range []string{"ok", "error"} {
			m.Reconciles.WithLabelValues(pass, res)
		}
	}
	for _, o := range outcomes {
		m.Logins.WithLabelValues(o)
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help: "Build information; the value is 1.",
	}, []string{"version", "goversion"})
	gov := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		gov = bi.GoVersion
	}
	build.WithLabelValues(version, gov).Set(1)
	reg.MustRegister(m.Logins, m.LoginDuration, m.AdmissionQueue, m.AdmissionRejected, m.StoreTx, m.ConnLogDropped, m.CertExpiry, m.Throttled, m.StoreWritable, m.Reconciles, m.ReconcileRepairs, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveStore records one store transaction (pkg/store's observer hook).
func (m *Gateway) ObserveStore(op string, d time.Duration, _ error) {
	m.StoreTx.WithLabelValues(op).Observe(d.Seconds())
}

// Snapshot is the gateway's live state, read at every scrape. The counts
// and the router's counters are cheap reads; the WireGuard figures come from
// the device's cached status (one IpcGet serves several scrapes), never from
// a cache here.
type Snapshot struct {
	AdmittedDevices int
	OnlineDevices   int
	OpenSessions    int
	RouterDropped   map[string]uint64
	Hairpinned      uint64
	// WireGuard is nil when the device's status could not be read; its
	// series are then left out of the scrape.
	WireGuard *WireGuardStats
}

// WireGuardStats are totals over the WireGuard device's peers.
type WireGuardStats struct {
	Peers int
	// HandshakeAges counts peers per last-handshake age bucket
	// (le_2m, le_5m, le_1h, older: longer ago or never).
	HandshakeAges map[string]int
	RxBytes       uint64
	TxBytes       uint64
}

// HandshakeBuckets are the age buckets of HandshakeAges, in order.
var HandshakeBuckets = []string{"le_2m", "le_5m", "le_1h", "older"}

// StateFunc reads the live state.
type StateFunc func(ctx context.Context) Snapshot

// stateCollector reads the state at every scrape: a packet the hub drops
// shows in the very next scrape.
type stateCollector struct {
	fn      StateFunc
	reasons []string

	admitted, online, sessions, peers, hairpin *prometheus.Desc
	ages, bytes, drops                         *prometheus.Desc
}

// RegisterState registers the live-state collector. reasons are all router
// drop reasons, so every series exists from the first scrape.
func RegisterState(reg prometheus.Registerer, fn StateFunc, reasons []string) {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
	}
	reg.MustRegister(&stateCollector{
		fn: fn, reasons: reasons,
		admitted: d("admitted_devices", "Devices with a pinned key and an address (not revoked)."),
		online:   d("online_devices", "Devices with a live Sync stream or a recent handshake."),
		sessions: d("open_sessions", "Open remote-control sessions."),
		peers:    d("wireguard_peers", "Active WireGuard peers."),
		hairpin:  d("router_hairpinned_packets_total", "Client↔device packets the hub forwarded."),
		ages:     d("wireguard_peers_by_handshake_age", "WireGuard peers by age of their last handshake.", "age"),
		bytes:    d("wireguard_bytes_total", "WireGuard bytes over all peers.", "direction"),
		drops:    d("router_dropped_packets_total", "Packets the hub dropped, by reason.", "reason"),
	})
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.admitted, c.online, c.sessions, c.peers, c.hairpin, c.ages, c.bytes, c.drops} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	s := c.fn(ctx)
	cancel()
	ch <- prometheus.MustNewConstMetric(c.admitted, prometheus.GaugeValue, float64(s.AdmittedDevices))
	ch <- prometheus.MustNewConstMetric(c.online, prometheus.GaugeValue, float64(s.OnlineDevices))
	ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(s.OpenSessions))
	ch <- prometheus.MustNewConstMetric(c.hairpin, prometheus.CounterValue, float64(s.Hairpinned))
	for _, r := range c.reasons {
		ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(s.RouterDropped[r]), r)
	}
	if w := s.WireGuard; w != nil {
		ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(w.Peers))
		for _, b := range HandshakeBuckets {
			ch <- prometheus.MustNewConstMetric(c.ages, prometheus.GaugeValue, float64(w.HandshakeAges[b]), b)
		}
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(w.RxBytes), "rx")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(w.TxBytes), "tx")
	}
}
