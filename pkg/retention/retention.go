// Package retention is the pruner: on an interval it deletes expired personal
// data from the registry in bounded batches (each its own short transaction,
// so logins never wait long behind it), destroys the daily pseudonym keys
// older than the connection-log retention (crypto-shredding), and forgets
// the WireGuard endpoints of idle peers. It reports what it did as
// Prometheus metrics; it logs counts only, never personal data.
package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// Store is the part of the registry the pruner uses.
type Store interface {
	// Prune deletes at most limit rows of table older than before, in one
	// transaction, and returns how many it deleted.
	Prune(ctx context.Context, table string, before time.Time, limit int) (int, error)
	// OldestRecord is the time of the oldest prunable row of table (zero
	// when there is none).
	OldestRecord(ctx context.Context, table string) (time.Time, error)
	// Checkpoint folds the store's write-ahead log back into the database
	// file and truncates it, so deleted rows do not linger in the log.
	Checkpoint(ctx context.Context) error
}

// Keys destroys daily pseudonym keys (privacy.Keystore).
type Keys interface {
	// DestroyKeysBefore destroys the keys of the UTC days before day and
	// returns how many it destroyed.
	DestroyKeysBefore(day time.Time) (int, error)
}

// Endpoints forgets the WireGuard endpoints (source address and port) of
// peers that have been idle for at least idle, returning how many it forgot.
type Endpoints interface {
	ForgetIdleEndpoints(ctx context.Context, idle time.Duration) (int, error)
}

// Defaults and bounds.
const (
	// DefaultInterval is how often Run prunes when Config.Interval is 0.
	DefaultInterval = time.Minute
	// MaxBatchSize is the default and the largest number of rows one Prune
	// call may delete.
	MaxBatchSize = 5000
	// MaxBatchesPerRun bounds the Prune calls per table in one run; what is
	// left is pruned by the next run (and shows in the oldest-age gauge).
	MaxBatchesPerRun = 10000
	// DefaultIdleTimeout is Config.IdleTimeout when it is 0: WireGuard
	// rejects a session after 180 s without a handshake, so a peer silent
	// for longer than this has no live session.
	DefaultIdleTimeout = 5 * time.Minute
)

// Config configures a Pruner.
type Config struct {
	// Interval between runs of Run. 0 means DefaultInterval.
	Interval time.Duration
	// BatchSize is the most rows one Prune call deletes (1..MaxBatchSize).
	// 0 means MaxBatchSize.
	BatchSize int
	// Tables maps each table to prune to how long its rows are kept past
	// their age column (e.g. connection_log: 720h). 0 prunes a row as soon as
	// its age column has passed: right for tokens and codes, which are
	// pruned by their expiry time.
	Tables map[string]time.Duration
	// KeyRetention is how long a daily pseudonym key is kept after its UTC
	// day ends; it should equal the connection-log retention. 0 means
	// Tables["connection_log"]; it must then be set when Keys is not nil.
	KeyRetention time.Duration
	// IdleTimeout is how long a peer must be silent before its endpoint is
	// forgotten. 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Now is the clock. nil means time.Now.
	Now func() time.Time
	// Logger receives one summary line per run. nil means slog.Default().
	Logger *slog.Logger
}

// Result is what one run did.
type Result struct {
	// Pruned counts the rows deleted per table (every configured table has
	// an entry, 0 included).
	Pruned             map[string]int64
	KeysDestroyed      int
	EndpointsForgotten int
	// RanAt is the run's clock reading: rows older than RanAt minus their
	// table's retention were deleted.
	RanAt time.Time
}

// Total is the number of rows deleted over all tables.
func (r Result) Total() int64 {
	var n int64
	for _, v := range r.Pruned {
		n += v
	}
	return n
}

// Pruner deletes expired data. Its methods are safe for concurrent use; runs
// are serialized.
type Pruner struct {
	st     Store
	keys   Keys
	ep     Endpoints
	cfg    Config
	tables []string // sorted, for a stable order and log lines
	log    *slog.Logger
	m      metrics
	sem    chan struct{} // one run at a time
}

type metrics struct {
	pruned      *prometheus.CounterVec
	oldestAge   *prometheus.GaugeVec
	limit       *prometheus.GaugeVec
	keys        prometheus.Counter
	lastRun     prometheus.Gauge
	lastSuccess prometheus.Gauge
	duration    prometheus.Histogram
}

// New validates cfg, fills in its defaults and registers the pruner's
// metrics on reg. keys and ep may be nil (no key destruction, no endpoint
// forgetting).
func New(st Store, keys Keys, ep Endpoints, cfg Config, reg prometheus.Registerer) (*Pruner, error) {
	if st == nil {
		return nil, errors.New("retention: store is nil")
	}
	if reg == nil {
		return nil, errors.New("retention: prometheus registerer is nil")
	}
	if err := cfg.fill(keys != nil); err != nil {
		return nil, fmt.Errorf("retention: config: %w", err)
	}
	p := &Pruner{
		st:     st,
		keys:   keys,
		ep:     ep,
		cfg:    cfg,
		tables: slices.Sorted(maps.Keys(cfg.Tables)),
		log:    cfg.Logger,
		sem:    make(chan struct{}, 1),
	}
	if err := p.m.register(reg); err != nil {
		return nil, err
	}
	for _, t := range p.tables {
		p.m.pruned.WithLabelValues(t)
		p.m.oldestAge.WithLabelValues(t)
		p.m.limit.WithLabelValues(t).Set(cfg.Tables[t].Seconds())
	}
	return p, nil
}

func (c *Config) fill(haveKeys bool) error {
	if c.Interval < 0 {
		return &privacy.FieldError{Field: "interval", Reason: fmt.Sprintf("must not be negative, got %s", c.Interval)}
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.BatchSize < 0 || c.BatchSize > MaxBatchSize {
		return &privacy.FieldError{Field: "batch_size", Reason: fmt.Sprintf("must be between 1 and %d, got %d", MaxBatchSize, c.BatchSize)}
	}
	if c.BatchSize == 0 {
		c.BatchSize = MaxBatchSize
	}
	tables := make(map[string]time.Duration, len(c.Tables))
	for t, d := range c.Tables {
		if t == "" {
			return &privacy.FieldError{Field: "tables", Reason: "table name must not be empty"}
		}
		if d < 0 {
			return &privacy.FieldError{Field: "tables." + t, Reason: fmt.Sprintf("retention must not be negative, got %s", d)}
		}
		tables[t] = d
	}
	c.Tables = tables // a copy: the caller's map may change later
	if c.KeyRetention < 0 {
		return &privacy.FieldError{Field: "key_retention", Reason: fmt.Sprintf("must not be negative, got %s", c.KeyRetention)}
	}
	if c.KeyRetention == 0 {
		c.KeyRetention = c.Tables["connection_log"]
	}
	if haveKeys && c.KeyRetention == 0 {
		// 0 would destroy today's key too: every pseudonym would be
		// unlinkable at once and every login would fail to log.
		return &privacy.FieldError{Field: "key_retention", Reason: "must be positive (or tables.connection_log set) when keys are destroyed"}
	}
	if c.IdleTimeout < 0 {
		return &privacy.FieldError{Field: "idle_timeout", Reason: fmt.Sprintf("must not be negative, got %s", c.IdleTimeout)}
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

const namespace = "dasset_gateway"

func (m *metrics) register(reg prometheus.Registerer) error {
	m.pruned = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "retention_pruned_total",
		Help: "Rows deleted by the retention pruner, by table.",
	}, []string{"table"})
	m.oldestAge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "retention_oldest_record_age_seconds",
		Help: "Age of the oldest prunable row after the last run, by table (0 when none); compare with retention_limit_seconds.",
	}, []string{"table"})
	m.limit = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "retention_limit_seconds",
		Help: "Configured retention, by table.",
	}, []string{"table"})
	m.keys = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "retention_keys_destroyed_total",
		Help: "Daily pseudonym keys destroyed (crypto-shredding).",
	})
	m.lastRun = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "retention_last_run_timestamp_seconds",
		Help: "Unix time of the last retention run.",
	})
	m.lastSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "retention_last_run_success",
		Help: "1 if the last retention run completed without error, else 0.",
	})
	m.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "retention_run_duration_seconds",
		Help:    "Duration of retention runs.",
		Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300},
	})
	for _, c := range []prometheus.Collector{m.pruned, m.oldestAge, m.limit, m.keys, m.lastRun, m.lastSuccess, m.duration} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("retention: register metrics: %w", err)
		}
	}
	return nil
}

// Interval is the configured interval between runs.
func (p *Pruner) Interval() time.Duration { return p.cfg.Interval }

// RunOnce prunes every configured table, checkpoints the store, destroys expired pseudonym keys and forgets idle endpoints.
// A failure in one step does not stop the others; the errors are joined and
// the run counts as unsuccessful. A call made while another run is in
// progress waits for it (or for ctx).
func (p *Pruner) RunOnce(ctx context.Context) (Result, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return Result{}, fmt.Errorf("retention: waiting for a run in progress: %w", ctx.Err())
	}
	defer func() { <-p.sem }()

	start := time.Now()
	now := p.cfg.Now()
	res := Result{Pruned: make(map[string]int64, len(p.tables)), RanAt: now}
	var errs []error

	for _, t := range p.tables {
		n, err := p.pruneTable(ctx, t, now.Add(-p.cfg.Tables[t]))
		res.Pruned[t] = n
		if err != nil {
			errs = append(errs, err)
		}
	}

	// Every run ends with a checkpoint, so the rows it deleted (and those
	// deleted since the last run) leave the write-ahead log too.
	if err := p.st.Checkpoint(ctx); err != nil {
		errs = append(errs, fmt.Errorf("retention: checkpoint: %w", err))
	}

	if p.keys != nil {
		n, err := p.keys.DestroyKeysBefore(keyCut(now, p.cfg.KeyRetention))
		res.KeysDestroyed = n
		p.m.keys.Add(float64(n))
		if err != nil {
			errs = append(errs, fmt.Errorf("retention: destroy pseudonym keys: %w", err))
		}
	}

	if p.ep != nil {
		n, err := p.ep.ForgetIdleEndpoints(ctx, p.cfg.IdleTimeout)
		res.EndpointsForgotten = n
		if err != nil {
			errs = append(errs, fmt.Errorf("retention: forget idle endpoints: %w", err))
		}
	}

	for _, t := range p.tables {
		oldest, err := p.st.OldestRecord(ctx, t)
		if err != nil {
			errs = append(errs, fmt.Errorf("retention: oldest record of %s: %w", t, err))
			continue
		}
		age := 0.0
		if !oldest.IsZero() && now.After(oldest) {
			age = now.Sub(oldest).Seconds()
		}
		p.m.oldestAge.WithLabelValues(t).Set(age)
	}

	err := errors.Join(errs...)
	p.m.lastRun.Set(float64(now.UnixNano()) / 1e9)
	if err != nil {
		p.m.lastSuccess.Set(0)
	} else {
		p.m.lastSuccess.Set(1)
	}
	p.m.duration.Observe(time.Since(start).Seconds())
	return res, err
}

// pruneTable deletes the rows of table older than before, in batches of at
// most BatchSize rows, each its own transaction, yielding between them so
// other writers interleave. It stops when a batch comes back short, after
// MaxBatchesPerRun batches, on error or when ctx is done.
func (p *Pruner) pruneTable(ctx context.Context, table string, before time.Time) (int64, error) {
	var total int64
	counter := p.m.pruned.WithLabelValues(table)
	for range MaxBatchesPerRun {
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("retention: prune %s: %w", table, err)
		}
		start := time.Now()
		n, err := p.st.Prune(ctx, table, before, p.cfg.BatchSize)
		took := time.Since(start)
		if n > 0 {
			total += int64(n)
			counter.Add(float64(n))
		}
		if err != nil {
			return total, fmt.Errorf("retention: prune %s: %w", table, err)
		}
		if n < p.cfg.BatchSize {
			return total, nil
		}
		// Leave the single writer free for as long as the batch held it, so
		// logins queued behind a batch go first and wait at most one batch:
		// the pruner takes at most half the writer's time.
		if err := sleepCtx(ctx, max(took, time.Millisecond)); err != nil {
			return total, fmt.Errorf("retention: prune %s: %w", table, err)
		}
	}
	p.log.Warn("retention: batch limit reached; the rest is pruned next run",
		"table", table, "batches", MaxBatchesPerRun, "pruned", total)
	return total, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// keyCut is the UTC day before which pseudonym keys are destroyed: the key
// of day D goes once D has ended at least keep ago.
func keyCut(now time.Time, keep time.Duration) time.Time {
	y, m, d := now.Add(-keep).UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// Run runs RunOnce at once and then every Interval until ctx is done; it
// returns nil then. Failed runs are logged and retried at the next tick.
func (p *Pruner) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		res, err := p.RunOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		p.report(res, err)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// report logs one summary line: counts only.
func (p *Pruner) report(res Result, err error) {
	if err != nil {
		p.log.Error("retention run failed; retrying next interval", "err", err,
			"pruned", res.Total(), "keys_destroyed", res.KeysDestroyed, "endpoints_forgotten", res.EndpointsForgotten)
		return
	}
	if res.Total() == 0 && res.KeysDestroyed == 0 && res.EndpointsForgotten == 0 {
		return
	}
	attrs := make([]any, 0, 2*len(p.tables)+6)
	attrs = append(attrs, "pruned", res.Total())
	for _, t := range p.tables {
		if n := res.Pruned[t]; n > 0 {
			attrs = append(attrs, "pruned_"+t, n)
		}
	}
	attrs = append(attrs, "keys_destroyed", res.KeysDestroyed, "endpoints_forgotten", res.EndpointsForgotten)
	p.log.Info("retention run", attrs...)
}
