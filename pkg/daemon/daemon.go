// Package daemon wires the gateway together: config → keystore, store, data
// plane, domain, gRPC and HTTP listeners → run until the context ends. It is
// the body of `dasset-gateway serve`, kept out of package main so tests can
// run the real daemon in process (netstack mode, ephemeral ports).
package daemon

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/planetxlabs/dasset-gateway/internal/atomicfile"
	"github.com/planetxlabs/dasset-gateway/pkg/api"
	"github.com/planetxlabs/dasset-gateway/pkg/audit"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/connlog"
	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/identity"
	"github.com/planetxlabs/dasset-gateway/pkg/ipam"
	"github.com/planetxlabs/dasset-gateway/pkg/metrics"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/retention"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres"
	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
	"github.com/planetxlabs/dasset-gateway/tunnel/link"
	"github.com/planetxlabs/dasset-gateway/tunnel/router"
	"github.com/planetxlabs/dasset-gateway/tunnel/wg"
)

// Version is set by the build (-ldflags -X).
var Version = "dev"

// Daemon is a running gateway.
type Daemon struct {
	cfg config.Config
	now func() time.Time
	// instance is the gateway's stable instance id (data_dir/instance_id),
	// started when this run began: its row in the gateways table.
	instance string
	started  time.Time
	log      *slog.Logger
	keys     *privacy.Keystore
	st       store.Store
	plan     *ipam.Allocator
	dev      *wg.Device
	rt       *router.Router
	ns       *link.Netstack
	gw       *gateway.Gateway
	cl       *connlog.Recorder
	reg      *prometheus.Registry
	m        *metrics.Gateway

	policy *privacy.Policy
	ledger *privacy.Ledger
	audit  *audit.Log
	pruner *retention.Pruner
	limits *limits

	grpcLis, adminLis, httpLis     net.Listener
	grpcSrv, adminSrv, adminTCPSrv *grpc.Server
	endStreams                     func() // ends the public listener's streams (shutdown)
	// unwritable says why the registry could not be written at the last
	// check (checkWritable, every writeCheckInterval); nil: it could.
	unwritable  atomic.Pointer[string]
	adminTCPLis net.Listener
	httpSrv     *http.Server
	uapi        interface{ Close() error }
	fingerprint string
	closers     []func() error
}

// Options are test hooks; the zero value is production.
type Options struct {
	Logger *slog.Logger
	Now    func() time.Time
	// DayKeyRefresh is how often a fleet gateway re-reads the day keys
	// shared through PostgreSQL at the latest (0: dayKeyRefresh).
	DayKeyRefresh time.Duration
}

// dayKeyRefresh bounds how long a gateway of a fleet may go on using a day
// key that another gateway destroyed (exports and erasures re-read the
// shared day keys every time).
const dayKeyRefresh = 30 * time.Second

// DataPlaneError is a failure to set up the tunnel, with the one-line hint an
// operator needs (e.g. missing privilege).
type DataPlaneError struct{ Err error }

func (e *DataPlaneError) Error() string { return e.Err.Error() }
func (e *DataPlaneError) Unwrap() error { return e.Err }

// New builds everything and binds every listener, but serves nothing yet.
// On error, whatever was built is closed again.
func New(ctx context.Context, cfg config.Config, opt Options) (_ *Daemon, err error) {
	d := &Daemon{cfg: cfg, log: opt.Logger}
	if d.log == nil {
		lvl := slog.LevelInfo
		_ = lvl.UnmarshalText([]byte(cfg.Log.Level))
		d.log = privacy.NewLogger(os.Stderr, lvl, cfg.Log.Format)
	}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	now := opt.Now
	if now == nil {
		now = time.Now
	}

	if d.policy, err = loadPolicy(cfg); err != nil {
		return nil, err
	}
	if err := checkLegacyKeystore(cfg); err != nil {
		return nil, err
	}
	if cfg.Store.Driver == config.DriverPostgres && cfg.Tunnel.Endpoint == "" {
		d.log.Warn(msgNoFleetEndpoint)
	}
	if err := checkDatabaseFile(ctx, cfg); err != nil {
		return nil, err
	}
	if d.keys, err = privacy.OpenKeystore(cfg.KeystorePath()); err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	// Recorded with the keys so that keystore backups expire their day keys.
	if err := d.keys.SetDayKeyRetention(cfg.Retention.ConnectionLog); err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	d.reg = prometheus.NewRegistry()
	d.m = metrics.New(d.reg, outcomeNames(), Version)

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	d.now, d.started = now, now()
	if d.instance, err = loadInstanceID(cfg.DataDir); err != nil {
		return nil, err
	}
	if d.st, err = openStore(ctx, cfg, d.m.ObserveStore); err != nil {
		return nil, err
	}
	d.closers = append(d.closers, d.st.Close)

	if err := checkKeystoreID(ctx, d.st, d.keys); err != nil {
		return nil, err
	}
	if cfg.Store.Driver == config.DriverPostgres {
		// A fleet: every gateway pseudonymises a day with the same key,
		// kept wrapped in the registry (a single SQLite gateway keeps its
		// day keys in its keystore).
		if err := d.keys.ShareDayKeys(ctx, d.st, cmp.Or(opt.DayKeyRefresh, dayKeyRefresh)); err != nil {
			return nil, fmt.Errorf("keystore: %w", err)
		}
	}
	if err := upgradeVerifiers(ctx, d.st, d.keys, d.log); err != nil {
		return nil, err
	}
	if d.ledger, err = privacy.OpenLedger(d.keys.Dir()); err != nil {
		return nil, err
	}
	auditPath, err := moveAuditLog(cfg.DataDir, d.keys.Dir())
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	if d.audit, err = audit.Open(auditPath, filepath.Join(d.keys.Dir(), privacy.AuditHeadFile)); err != nil {
		return nil, fmt.Errorf("audit log: %w (dassetctl audit verify explains; restore the keystore backup, which holds the log and its head)", err)
	}

	if d.plan, err = ipam.New(cfg.Network.IPAM()); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if err := d.buildDataPlane(); err != nil {
		return nil, &DataPlaneError{Err: err}
	}

	d.cl = connlog.New(d.st, d.keys, connlog.Options{Logger: d.log, OnDrop: func(n int) { d.m.ConnLogDropped.Add(float64(n)) }})
	d.limits = newLimits(cfg, now, d.m.Throttled)
	verifier := identity.NewVerifier(d.keys, d.st, identity.Config{
		Devices: d.limits.devices, Accounts: d.limits.accounts, Passwords: d.limits.passwords,
	})
	instance := make([]byte, 8)
	_, _ = rand.Read(instance)
	d.gw, err = gateway.New(gateway.Config{
		Rekey:         cfg.Device.Rekey == "allow",
		TokenTTL:      cfg.Device.TokenTTL,
		IdleTimeout:   cfg.Device.IdleTimeout,
		Keepalive:     cfg.Tunnel.PersistentKeepalive,
		MTU:           cfg.Tunnel.MTU,
		Endpoint:      cfg.Tunnel.Endpoint,
		ListenPort:    d.dev.ListenPort(),
		MaxConcurrent: cfg.GRPC.MaxConcurrentLogins,
		Now:           now,
		InstanceID:    d.instance,
		RunID:         hex.EncodeToString(instance),
		HomeStale:     3 * heartbeatInterval,
		Sole:          cfg.Store.Driver == config.DriverSQLite,
		Writable:      d.writable,
		SessionOptions: gateway.SessionOptions{
			MaxPerAccount:  cfg.Client.MaxSessionsPerAccount,
			Duration:       cfg.Client.SessionDuration,
			IdleTimeout:    cfg.Client.IdleTimeout,
			BindingCodeTTL: cfg.Client.BindingCodeTTL,
			TokenTTL:       cfg.Client.TokenTTL,
		},
	}, gateway.Deps{
		Registry: d.st, Sessions: d.st, Verifier: verifier, Keys: d.keys, Accounts: d.keys,
		Plan: d.plan, Tunnel: tunnelAdapter{d.dev}, ACL: aclAdapter{d.rt}, ConnLog: d.cl,
		Homes: d.st, Reconciles: metrics.ReconcileObserver{M: d.m},
		Observer: metrics.LoginObserver{M: d.m}, Logger: d.log,
		BindThrottle: d.limits.binds, CodeThrottle: d.limits.codes,
		Subjects: d.st, Pseudonyms: d.keys, Ledger: d.ledger,
	})
	if err != nil {
		return nil, err
	}
	if err := d.replayErasures(ctx, true); err != nil {
		return nil, err
	}
	n, err := d.gw.Start(ctx)
	if err != nil {
		return nil, err
	}
	d.log.Info("peers restored from the store", "devices", n)
	if err := d.heartbeat(ctx); err != nil {
		return nil, fmt.Errorf("store: recording this gateway (instance %s): %w", d.instance, err)
	}
	metrics.RegisterState(d.reg, d.state, router.Reasons())

	r := cfg.Retention
	if d.pruner, err = retention.New(d.st, d.keys, &endpointForgetter{d: d.dev, now: now}, retention.Config{
		Interval:  r.Interval,
		BatchSize: r.BatchSize,
		Tables: map[string]time.Duration{
			store.TableConnLog:      r.ConnectionLog,
			store.TableSessions:     r.Sessions,
			store.TableBindingCodes: r.BindingCodes,
			store.TableAuthFailures: r.AuthFailures,
			store.TableDeviceTokens: 0, // pruned as soon as expired
			store.TableAccessTokens: 0,
		},
		KeyRetention: r.ConnectionLog,
		IdleTimeout:  cfg.Device.IdleTimeout,
		Now:          now,
		Logger:       d.log.With("component", "retention"),
	}, d.reg); err != nil {
		return nil, fmt.Errorf("retention: %w", err)
	}

	if err := d.listen(); err != nil {
		return nil, err
	}
	return d, nil
}

// msgNoFleetEndpoint warns a gateway of a fleet that the others cannot name
// it: a session to a device homed here, opened on another gateway, needs
// this gateway's WireGuard endpoint from the gateways table.
const msgNoFleetEndpoint = "store.driver is postgres but tunnel.endpoint is empty: other gateways of the fleet cannot name this one to clients, so sessions opened elsewhere to devices homed here fail with Unavailable; set tunnel.endpoint to the host:port devices and clients dial"

// replayErasures merges the erasure ledger kept with the keys and the
// database's copy both ways, then erases again whatever the database still
// holds of an erased subject. At start it always replays (one look-up per
// ledger entry); afterwards only when the merge changed something: an
// erasure another gateway recorded, or erasures missing from the database
// (an older copy restored under the running gateway).
func (d *Daemon) replayErasures(ctx context.Context, always bool) error {
	learnt, restored, err := d.gw.SyncErasures(ctx)
	if err != nil {
		return fmt.Errorf("merging the erasure ledger with the database: %w", err)
	}
	if learnt > 0 || restored > 0 {
		d.log.Info("erasure ledger merged with the database", "learnt", learnt, "written_back", restored)
	} else if !always {
		return nil
	}
	n, err := d.gw.ReplayErasures(ctx)
	if err != nil {
		return fmt.Errorf("replaying the erasure ledger: %w", err)
	}
	if n.Devices+n.Accounts > 0 {
		d.log.Warn("erased subjects found in the database (an older copy restored?) and erased again", "devices", n.Devices, "accounts", n.Accounts)
	}
	return nil
}

// checkLegacyKeystore refuses to start beside a keystore left inside the
// data directory (the old default, <data_dir>/keystore) when the keystore
// directory does not exist yet: a new, empty keystore would be made and the
// database refused for want of its keys. The operator moves it out.
func checkLegacyKeystore(cfg config.Config) error {
	legacy := cfg.LegacyKeystorePath()
	if _, err := os.Stat(filepath.Join(legacy, "keystore.id")); err != nil {
		return nil
	}
	keys := cfg.KeystorePath()
	if _, err := os.Stat(keys); err == nil {
		return fmt.Errorf("keystore_dir: a keystore is inside data_dir (%s) and another at %s; keep only the one the database was written with, outside data_dir", legacy, keys)
	}
	return fmt.Errorf("keystore_dir: the keystore is inside data_dir (%s), where a copy of the data directory would hold the keys; "+
		"stop the gateway and move it out: mv %s %s (or set keystore_dir to another directory outside data_dir)", legacy, legacy, keys)
}

// moveAuditLog returns where the audit log lives: in the keystore directory,
// beside its head hash and the erasure ledger, so that the keystore backup
// carries all three and restoring an older data directory can neither lose
// audited reveals and erasures nor break the chain. A log left in the data
// directory by an older version is moved there first.
func moveAuditLog(dataDir, keysDir string) (string, error) {
	path := filepath.Join(keysDir, privacy.AuditLogFile)
	old := filepath.Join(dataDir, privacy.AuditLogFile)
	if _, err := os.Lstat(path); err == nil {
		return path, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	b, err := os.ReadFile(old)
	if errors.Is(err, os.ErrNotExist) {
		return path, nil
	}
	if err != nil {
		return "", err
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return "", fmt.Errorf("moving %s into the keystore directory: %w", old, err)
	}
	return path, os.Remove(old)
}

// CheckConfig makes the checks New makes before it changes anything (today:
// the privacy policy loads and allows the configured retention), so that
// dasset-gateway check-config accepts exactly what serve accepts.
func CheckConfig(cfg config.Config) error {
	_, err := loadPolicy(cfg)
	return err
}

// loadPolicy loads the privacy policy and refuses a configuration that asks
// for more than it allows, naming the key.
func loadPolicy(cfg config.Config) (*privacy.Policy, error) {
	p := privacy.DefaultPolicy()
	if cfg.Privacy.PolicyFile != "" {
		var err error
		if p, err = privacy.LoadPolicy(cfg.Privacy.PolicyFile); err != nil {
			return nil, fmt.Errorf("privacy.policy_file: %w", err)
		}
	}
	r := cfg.Retention
	if err := p.Check(privacy.Requested{Retention: map[string]time.Duration{
		privacy.RetentionConnectionLog: r.ConnectionLog,
		privacy.RetentionSessions:      r.Sessions,
		privacy.RetentionBindingCodes:  r.BindingCodes,
		privacy.RetentionAuthFailures:  r.AuthFailures,
		privacy.RetentionAuditLog:      r.AuditLog,
		privacy.RetentionDeviceTokens:  cfg.Device.TokenTTL,
		privacy.RetentionAccessTokens:  cfg.Client.TokenTTL,
	}}); err != nil {
		return nil, &PolicyError{Err: err}
	}
	return p, nil
}

// upgradeVerifiers wraps the HMAC-only HWID verifiers of an older database
// into the current memory-hard ones (no HWID needed), then checkpoints so no
// old verifier stays in the WAL or the database file.
func upgradeVerifiers(ctx context.Context, st store.Store, ks *privacy.Keystore, log *slog.Logger) error {
	start := time.Now()
	n, err := st.UpgradeVerifiers(ctx, ks.UpgradeVerifier)
	if err != nil {
		return fmt.Errorf("store: upgrading HWID verifiers: %w", err)
	}
	if n == 0 {
		return nil
	}
	if err := st.Checkpoint(ctx); err != nil {
		return fmt.Errorf("store: after upgrading HWID verifiers: %w", err)
	}
	log.Info("HWID verifiers upgraded to the memory-hard version", "devices", n, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// openStore opens the registry store.driver names: the embedded SQLite
// file in data_dir, or the PostgreSQL database of store.dsn (or
// store.dsn_file), migrated at open.
func openStore(ctx context.Context, cfg config.Config, observe func(op string, d time.Duration, err error)) (store.Store, error) {
	switch cfg.Store.Driver {
	case config.DriverSQLite:
		st, err := store.OpenSQLite(ctx, filepath.Join(cfg.DataDir, store.DBFile), store.WithObserver(observe))
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		return st, nil
	case config.DriverPostgres:
		dsn, err := cfg.Store.ResolveDSN()
		if err != nil {
			return nil, err
		}
		st, err := postgres.Open(ctx, dsn, postgres.WithObserver(observe))
		if err != nil {
			return nil, fmt.Errorf("store (postgres): %w", err)
		}
		return st, nil
	}
	return nil, fmt.Errorf("store.driver: unknown driver %q", cfg.Store.Driver)
}

// ErrNotTheRegistry is a database file that cannot be the registry the
// keystore was used with.
var ErrNotTheRegistry = errors.New("the database is not the registry of this keystore")

// checkDatabaseFile refuses, before anything is created or changed, an
// SQLite database that is empty (0 bytes), has no gateway schema, or was
// written with another keystore, while a keystore already exists: starting
// would silently serve an empty registry (every device refused) or bind the
// keys to the wrong data. A missing file with an existing keystore is a new
// registry (e.g. a data directory set up again), which is allowed.
func checkDatabaseFile(ctx context.Context, cfg config.Config) error {
	if cfg.Store.Driver != config.DriverSQLite {
		return nil
	}
	ksDir := cfg.KeystorePath()
	id, ok, err := privacy.KeystoreID(ksDir)
	if err != nil || !ok {
		return err
	}
	path := filepath.Join(cfg.DataDir, store.DBFile)
	f, err := store.InspectSQLite(ctx, path)
	var problem string
	switch {
	case err != nil:
		problem = "is not a readable SQLite database (" + err.Error() + ")"
	case !f.Exists:
		return nil
	case f.Size == 0:
		problem = "is empty (0 bytes)"
	case !f.Schema:
		problem = "has no gateway schema"
	case f.KeystoreID != "" && f.KeystoreID != id:
		problem = "was written with keystore " + f.KeystoreID
	default:
		return nil
	}
	return fmt.Errorf("%w: database %s %s, but keystore %s (id %s) belongs to a database written before. "+
		"Nothing was changed. Restore the database from its backup (dassetctl backup), or, to start a new registry on purpose, "+
		"move the keystore directory away", ErrNotTheRegistry, path, problem, ksDir, id)
}

// checkKeystoreID refuses a database written with another keystore: its
// sealed values and blind indexes would be unreadable.
func checkKeystoreID(ctx context.Context, st store.Store, ks *privacy.Keystore) error {
	// Claimed, not read then written: of gateways starting at once on one
	// new database with different keystores, exactly one is accepted.
	id, err := st.ClaimMeta(ctx, "keystore_id", ks.ID())
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	switch id {
	case ks.ID():
		return nil
	default:
		return fmt.Errorf("the database was written with keystore %s but keystore_dir %s holds keystore %s: "+
			"its keys are missing. Restore the keystore from its backup (dassetctl keys restore) or point keystore_dir at it", id, ks.Dir(), ks.ID())
	}
}

// PolicyError is a configuration that asks for more than the privacy policy
// allows.
type PolicyError struct{ Err error }

func (e *PolicyError) Error() string {
	return "configuration exceeds the privacy policy:\n" + e.Err.Error()
}
func (e *PolicyError) Unwrap() error { return e.Err }

func operators(a config.Admin) api.Operators {
	ops := api.Operators{ByUID: map[uint32]api.Operator{}, ByName: map[string]api.Operator{}}
	for _, o := range a.EffectiveOperators() {
		op := api.Operator{Name: o.Name}
		for _, r := range o.Roles {
			op.Roles = append(op.Roles, api.Role(r))
		}
		ops.ByUID[uint32(o.UID)] = op
		ops.ByName[o.Name] = op
	}
	return ops
}

func outcomeNames() []string {
	var out []string
	for _, o := range gateway.Outcomes() {
		out = append(out, string(o))
	}
	return out
}

func (d *Daemon) buildDataPlane() error {
	cfg := d.cfg
	v4, v6 := d.plan.Gateway()
	switch cfg.Tunnel.Mode {
	case "netstack":
		ns, err := link.CreateNetstack([]netip.Addr{v4, v6}, cfg.Tunnel.MTU)
		if err != nil {
			return err
		}
		d.ns = ns
		rt, err := router.New(ns.Device, routerConfig(d.plan))
		if err != nil {
			ns.Device.Close()
			return err
		}
		d.rt = rt
	default:
		dev, err := link.CreateTUN(link.Config{Name: cfg.Tunnel.Interface, MTU: cfg.Tunnel.MTU, Addresses: d.plan.GatewayPrefixes()})
		if err != nil {
			return err
		}
		rt, err := router.New(dev, routerConfig(d.plan))
		if err != nil {
			dev.Close()
			return err
		}
		d.rt = rt
	}
	dev, err := wg.New(d.rt, nil, wg.Config{
		PrivateKey:  wg.Key(d.keys.GatewayPrivateKey()),
		ListenPort:  cfg.Tunnel.ListenPort,
		Logger:      d.log.With("component", "wireguard"),
		BatchWindow: cfg.Tunnel.BatchWindow,
	})
	if err != nil {
		d.rt.Close()
		return fmt.Errorf("wireguard: %w", err)
	}
	d.dev = dev
	d.closers = append(d.closers, dev.Close)
	if cfg.Tunnel.UAPI {
		c, err := dev.ServeUAPI(cfg.Tunnel.Interface, wg.UAPIOptions{FullEndpoints: cfg.Tunnel.UAPIEndpoints == config.UAPIEndpointsFull})
		if err != nil {
			return fmt.Errorf("wireguard UAPI socket: %w", err)
		}
		d.uapi = c
		d.closers = append(d.closers, c.Close)
	}
	return nil
}

func routerConfig(plan *ipam.Allocator) router.Config {
	v4, v6 := plan.Gateway()
	return router.Config{Gateway: []netip.Addr{v4, v6}, Network: plan.Network(), ClientPrefixes: plan.ClientNetworks()}
}

func (d *Daemon) listen() error {
	cfg := d.cfg
	sm := api.ServerMetrics(d.reg)

	// Device and client gRPC.
	var creds credentials.TransportCredentials
	if cfg.GRPC.Insecure {
		d.log.Warn("grpc.insecure is true: device and client gRPC is served WITHOUT TLS; credentials and tokens cross the network in the clear")
		creds = insecure.NewCredentials()
	} else {
		certFile, keyFile := cfg.GRPC.CertFile, cfg.GRPC.KeyFile
		if certFile == "" {
			var fp string
			var err error
			certFile, keyFile, fp, err = tlsutil.EnsureSelfSigned(cfg.DataDir, cfg.GRPC.Hosts, time.Now())
			if err != nil {
				return fmt.Errorf("grpc TLS certificate: %w", err)
			}
			d.fingerprint = fp
			d.log.Info("serving gRPC with the gateway's own certificate; agents trust it with --pin", "sha256", fp, "cert_file", certFile)
		}
		tc, err := tlsutil.ServerConfig(certFile, keyFile, "")
		if err != nil {
			return fmt.Errorf("grpc TLS: %w", err)
		}
		if len(tc.Certificates) > 0 {
			if leaf, err := x509.ParseCertificate(tc.Certificates[0].Certificate[0]); err == nil {
				d.m.CertExpiry.Set(float64(leaf.NotAfter.Unix()))
			}
		}
		creds = credentials.NewTLS(tc)
	}
	var err error
	if d.grpcLis, err = net.Listen("tcp", cfg.GRPC.Listen); err != nil {
		return fmt.Errorf("grpc.listen %s: %w", cfg.GRPC.Listen, err)
	}
	d.grpcLis = d.limits.listener(d.grpcLis)
	// Devices and apps are on the open network: bound the handshake, the
	// message size and the streams per connection, and ping idle
	// connections so dead devices' streams end.
	pubGuard := api.Guard{Table: api.PublicTable(), Tokens: d.gw}
	streamsEnd := make(chan struct{})
	d.endStreams = sync.OnceFunc(func() { close(streamsEnd) })
	d.grpcSrv = api.NewServer(d.log.With("listener", "grpc"), sm, creds, pubGuard, api.EndStreamsOn(streamsEnd),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.MaxRecvMsgSize(64<<10),
		grpc.MaxConcurrentStreams(16),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	gatewayv1.RegisterDeviceServiceServer(d.grpcSrv, &api.DeviceServer{GW: d.gw, Log: d.log, Instance: d.instance})
	gatewayv1.RegisterClientServiceServer(d.grpcSrv, &api.ClientServer{GW: d.gw, Audit: d.audit})
	h := api.Finish(d.grpcSrv, sm)
	if m := pubGuard.Missing(d.grpcSrv); len(m) > 0 {
		return fmt.Errorf("gRPC methods without an access entry (pkg/api PublicTable): %v", m)
	}
	h.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)

	// Admin: the unix socket (operators by uid) and, optionally, TCP with
	// mutual TLS (operators by certificate common name).
	admin := &api.AdminServer{
		GW: d.gw, Peers: peerSource{d.dev, d.plan}, Policy: d.policy.YAML(), Audit: d.audit,
		Retention: retentionRunner{d}, Fleet: d.st, Instance: d.instance,
	}
	adminGuard := api.Guard{Table: api.AdminTable(), Operators: operators(cfg.Admin)}
	newAdmin := func(creds credentials.TransportCredentials, name string) *grpc.Server {
		s := api.NewServer(d.log.With("listener", name), sm, creds, adminGuard)
		gatewayv1.RegisterAdminServiceServer(s, admin)
		api.Finish(s, sm).SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		return s
	}
	if m := adminGuard.Missing(newAdmin(insecure.NewCredentials(), "admin-check")); len(m) > 0 {
		return fmt.Errorf("admin gRPC methods without an access entry (pkg/api AdminTable): %v", m)
	}
	if cfg.Admin.Socket != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.Admin.Socket), 0o750); err != nil {
			return fmt.Errorf("admin.socket: %w", err)
		}
		if err := removeStaleSocket(cfg.Admin.Socket); err != nil {
			return fmt.Errorf("admin.socket: %w", err)
		}
		if d.adminLis, err = net.Listen("unix", cfg.Admin.Socket); err != nil {
			return fmt.Errorf("admin.socket %s: %w", cfg.Admin.Socket, err)
		}
		if err := os.Chmod(cfg.Admin.Socket, 0o660); err != nil {
			return fmt.Errorf("admin.socket: %w", err)
		}
		d.adminSrv = newAdmin(api.UnixPeerCredentials(), "admin")
	}
	if cfg.Admin.Listen != "" {
		tc, err := tlsutil.ServerConfig(cfg.Admin.CertFile, cfg.Admin.KeyFile, cfg.Admin.ClientCAFile)
		if err != nil {
			return fmt.Errorf("admin TLS: %w", err)
		}
		if d.adminTCPLis, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
			return fmt.Errorf("admin.listen %s: %w", cfg.Admin.Listen, err)
		}
		d.adminTCPSrv = newAdmin(credentials.NewTLS(tc), "admin-tls")
	}

	// Metrics and health.
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", d.readyz)
	if d.httpLis, err = net.Listen("tcp", cfg.Metrics.Listen); err != nil {
		return fmt.Errorf("metrics.listen %s: %w", cfg.Metrics.Listen, err)
	}
	d.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return nil
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use: is another dasset-gateway running?", path)
	}
	return os.Remove(path)
}

func (d *Daemon) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var problems []string
	if err := d.st.Ping(ctx); err != nil {
		problems = append(problems, "store: "+err.Error())
	}
	if _, err := d.dev.Peers(ctx); err != nil {
		problems = append(problems, "tunnel: "+err.Error())
	}
	if d.keys == nil {
		problems = append(problems, "keystore: not loaded")
	}
	if p := d.unwritable.Load(); p != nil {
		problems = append(problems, "store: not writable: "+*p+" (admitted devices still log in; new admissions are refused)")
	}
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, p := range problems {
			_, _ = fmt.Fprintln(w, p)
		}
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// Run serves until ctx is done, then shuts everything down gracefully.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.close()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.cl.Run(gctx) })
	g.Go(func() error { return d.pruner.Run(gctx) })
	g.Go(func() error {
		t := time.NewTicker(d.pruner.Interval())
		defer t.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
				d.pruneAudit()
				// Erasures other gateways of a fleet recorded, or a
				// database restored under a running gateway.
				if err := d.replayErasures(gctx, false); err != nil && gctx.Err() == nil {
					d.log.Error("replaying the erasure ledger failed", "err", err)
				}
			}
		}
	})
	g.Go(func() error { return d.heartbeats(gctx) })
	g.Go(func() error { return d.gw.RunReconciler(gctx, changeFeed{d.st}, d.cfg.Tunnel.ReconcileInterval) })
	g.Go(func() error {
		t := time.NewTicker(writeCheckInterval)
		defer t.Stop()
		for {
			d.checkWritable(gctx)
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	g.Go(func() error { return serveGRPC(d.grpcSrv, d.grpcLis) })
	if d.adminSrv != nil {
		g.Go(func() error { return serveGRPC(d.adminSrv, d.adminLis) })
	}
	if d.adminTCPSrv != nil {
		g.Go(func() error { return serveGRPC(d.adminTCPSrv, d.adminTCPLis) })
	}
	g.Go(func() error {
		if err := d.httpSrv.Serve(d.httpLis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("metrics listener: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
				d.gw.ReapSessions(gctx)
			}
		}
	})
	g.Go(func() error {
		<-gctx.Done()
		d.log.Info("shutting down")
		d.endStreams() // Sync streams return now: nothing waits for them
		var wg sync.WaitGroup
		for _, s := range []*grpc.Server{d.grpcSrv, d.adminSrv, d.adminTCPSrv} {
			if s != nil {
				wg.Go(func() { stopGRPC(s) })
			}
		}
		wg.Wait()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = d.httpSrv.Shutdown(sctx)
		return nil
	})
	d.log.Info("dasset-gateway serving",
		"version", Version, "instance", d.instance, "grpc", d.grpcLis.Addr().String(), "metrics", d.httpLis.Addr().String(),
		"wireguard_port", d.dev.ListenPort(), "mode", d.cfg.Tunnel.Mode, "interface", d.cfg.Tunnel.Interface)
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func serveGRPC(s *grpc.Server, l net.Listener) error {
	if err := s.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("gRPC listener %s: %w", l.Addr(), err)
	}
	return nil
}

// stopGRPC stops gracefully, but does not wait on Sync streams for ever.
// writeCheckInterval is how often the daemon checks that the registry can
// be written; minFreeBytes is the free space below which an SQLite data
// directory counts as full (a write may still fit in the WAL, but the next
// checkpoint or a growing table would not).
const (
	writeCheckInterval = 2 * time.Second
	minFreeBytes       = 4 << 20
)

// checkWritable probes the registry: free space in an SQLite data
// directory, then a small write. The result feeds /readyz, the
// store_writable metric and the gateway (new admissions wait for it).
func (d *Daemon) checkWritable(ctx context.Context) {
	problem := ""
	if d.cfg.Store.Driver == config.DriverSQLite {
		var st unix.Statfs_t
		if err := unix.Statfs(d.cfg.DataDir, &st); err != nil {
			problem = "data_dir: " + err.Error()
		} else if free := st.Bavail * uint64(st.Bsize); free < minFreeBytes {
			problem = fmt.Sprintf("data_dir %s has %d bytes free (needs %d)", d.cfg.DataDir, free, minFreeBytes)
		}
	}
	if problem == "" {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := d.st.SetMeta(pctx, "write_probe", d.now().UTC().Format(time.RFC3339))
		cancel()
		if err != nil && ctx.Err() == nil {
			problem = "write probe: " + err.Error()
		}
	}
	was := d.writable()
	if problem == "" {
		d.unwritable.Store(nil)
	} else {
		d.unwritable.Store(&problem)
	}
	switch {
	case problem == "" && !was:
		d.log.Info("registry writable again: new admissions resume")
		d.m.StoreWritable.Set(1)
	case problem != "" && was:
		d.log.Error("registry not writable: admitted devices still log in, new admissions are refused", "problem", problem)
		d.m.StoreWritable.Set(0)
	}
}

// writable reports whether the registry could be written at the last check.
func (d *Daemon) writable() bool { return d.unwritable.Load() == nil }

// stopGRPC lets calls in flight finish (streams have been ended by then),
// for at most a second.
func stopGRPC(s *grpc.Server) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		s.Stop()
	}
}

func (d *Daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		if err := d.closers[i](); err != nil {
			d.log.Warn("close", "err", err)
		}
	}
	d.closers = nil
	if d.cfg.Admin.Socket != "" && d.adminLis != nil {
		_ = os.Remove(d.cfg.Admin.Socket)
	}
}

// GRPCAddr is the bound device/client gRPC address.
func (d *Daemon) GRPCAddr() net.Addr { return d.grpcLis.Addr() }

// InstanceID is the gateway's stable instance id (its row in the gateways
// table, named in Login responses).
func (d *Daemon) InstanceID() string { return d.instance }

// HTTPAddr is the bound metrics address.
func (d *Daemon) HTTPAddr() net.Addr { return d.httpLis.Addr() }

// WireGuardPort is the bound WireGuard UDP port.
func (d *Daemon) WireGuardPort() int { return d.dev.ListenPort() }

// Fingerprint is the SHA-256 of the self-made TLS certificate ("" otherwise).
func (d *Daemon) Fingerprint() string { return d.fingerprint }

// Netstack is the gateway's userspace stack in netstack mode (nil otherwise).
func (d *Daemon) Netstack() *link.Netstack { return d.ns }

// RouterStats are the hub's counters.
func (d *Daemon) RouterStats() router.Stats { return d.rt.Stats() }
